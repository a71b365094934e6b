-- oncely SQLite schema, version 5: each scope stored once, records narrower. Applied on first
-- use (tracked in PRAGMA user_version); shipped as plain SQL for users who run their own
-- migrations.
--
-- A record named its scope by its text, in the table and again in the expires_at index: every
-- record of scope "payments" paid 2 x 8 bytes for it. Each scope's name is now stored once, in
-- oncely_scopes; records hold its id, which SQLite stores in 0 or 1 byte for the first 127
-- scopes. And purge's index holds expires_at in whole seconds (4 bytes, not 6): purge reads it to
-- find the oldest records, then checks the exact expiry. Together a record of the default scope
-- with a UUID key shrinks from ~103 to ~85 bytes on disk (BENCHMARKS.md).
--
-- The column is renamed (scope -> scope_id), so an older oncely opening this file fails loudly
-- ("no such column") instead of reading records it cannot find as absent.

-- Ids are never reused: a scope, once named here, keeps its id (no row is ever deleted).
CREATE TABLE IF NOT EXISTS oncely_scopes (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
INSERT OR IGNORE INTO oncely_scopes (name)
    SELECT scope FROM oncely_claims UNION SELECT scope FROM oncely_records ORDER BY 1;

-- Every statement finds a record by both columns of its primary key (a test in ops.rs holds the
-- plans to it: an untyped scope_id, or SQLite 3.40's planner, would look up by scope_id alone).
CREATE TABLE oncely_records_v5 (
    scope_id    INTEGER NOT NULL,   -- oncely_scopes.id
    key         TEXT    NOT NULL,   -- a canonical UUID as its 16 bytes (a BLOB), else the text
    token       INTEGER NOT NULL,   -- fencing token of the holder that completed it
    attempt     INTEGER NOT NULL,
    fingerprint BLOB,               -- 32-byte SHA-256 of the payload, or NULL
    created_at  INTEGER NOT NULL,   -- ms since the Unix epoch
    expires_at  INTEGER NOT NULL,   -- ms since the Unix epoch
    outcome     BLOB    NOT NULL,
    PRIMARY KEY (scope_id, key)
) WITHOUT ROWID;
INSERT INTO oncely_records_v5
    SELECT s.id, r.key, r.token, r.attempt, r.fingerprint, r.created_at, r.expires_at, r.outcome
    FROM oncely_records r JOIN oncely_scopes s ON s.name = r.scope;
DROP TABLE oncely_records;
ALTER TABLE oncely_records_v5 RENAME TO oncely_records;

-- Purge walks this index oldest-first, by the second (see above). New values are near
-- "now + retention", so inserts land on the right edge of the index and share its last pages.
CREATE INDEX oncely_records_expires_s ON oncely_records (expires_at / 1000);

CREATE TABLE oncely_claims_v5 (
    scope_id    INTEGER NOT NULL,   -- oncely_scopes.id
    key         TEXT    NOT NULL,
    token       INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    fingerprint BLOB,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,   -- the lease deadline
    PRIMARY KEY (scope_id, key)
) WITHOUT ROWID;
INSERT INTO oncely_claims_v5
    SELECT s.id, c.key, c.token, c.attempt, c.fingerprint, c.created_at, c.expires_at
    FROM oncely_claims c JOIN oncely_scopes s ON s.name = c.scope;
DROP TABLE oncely_claims;
ALTER TABLE oncely_claims_v5 RENAME TO oncely_claims;
