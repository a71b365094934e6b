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
-- Two layouts oncely's PostgreSQL store could move to (not built; BENCHMARKS.md measures them).
-- hot: the index purge needs is on a column the completion leaves alone (purge_after, set at
-- the claim to lease + retention), and pages keep room (fillfactor 40: at 70 only ~40 % of the
-- completions found room on their page), so a completion is a HOT update.
CREATE TABLE floor.oncely_hot (
    scope bytea NOT NULL, key bytea NOT NULL, completed boolean NOT NULL, token bigint NOT NULL,
    attempt integer NOT NULL, fingerprint bytea, created_at bigint NOT NULL,
    expires_at bigint NOT NULL, purge_after bigint NOT NULL, outcome bytea,
    PRIMARY KEY (scope, key)) WITH (fillfactor = 40);
CREATE INDEX ON floor.oncely_hot (purge_after);
-- split: claims in a table of their own, moved to the records table at completion (as SQLite).
CREATE TABLE floor.split_claims (
    scope bytea NOT NULL, key bytea NOT NULL, token bigint NOT NULL, attempt integer NOT NULL,
    fingerprint bytea, created_at bigint NOT NULL, expires_at bigint NOT NULL,
    PRIMARY KEY (scope, key));
CREATE TABLE floor.split_records (
    scope bytea NOT NULL, key bytea NOT NULL, token bigint NOT NULL, attempt integer NOT NULL,
    fingerprint bytea, created_at bigint NOT NULL, expires_at bigint NOT NULL, outcome bytea,
    PRIMARY KEY (scope, key));
CREATE INDEX ON floor.split_records (expires_at);
