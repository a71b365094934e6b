DROP SCHEMA IF EXISTS floor CASCADE;
CREATE SCHEMA floor;
CREATE TABLE floor.limit_keys (key text PRIMARY KEY);
CREATE TABLE floor.two (key text PRIMARY KEY, done boolean NOT NULL);
-- As stores/postgres/migrations/0001_records.sql.
CREATE TABLE floor.oncely_records (
    scope bytea NOT NULL, key bytea NOT NULL, completed boolean NOT NULL, token bigint NOT NULL,
    attempt integer NOT NULL, fingerprint bytea, created_at bigint NOT NULL,
    expires_at bigint NOT NULL, outcome bytea, PRIMARY KEY (scope, key));
CREATE INDEX ON floor.oncely_records (expires_at);
