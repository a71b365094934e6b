-- oncely SQLite schema, version 5: each scope stored once, records narrower. Applied on first
-- use (tracked in PRAGMA user_version); shipped as plain SQL for users who run their own
-- migrations.
--
-- A record named its scope by its text, in the table and again in the expires_at index: every
-- record of scope "payments" paid 2 x 8 bytes for it. Each scope's name is now stored once, in
-- oncely_scopes; records hold its id, which SQLite stores in 0 or 1 byte for the first 127
-- scopes. And a completed record keeps its creation time as its lifetime before expires_at: 4
-- bytes for retentions under 24 days (the default is 7), where a time since 1970 takes 6.
-- Together a record of the default scope with a UUID key shrinks from ~103 to ~85 bytes on disk
-- (BENCHMARKS.md).
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
    lifetime    INTEGER NOT NULL,   -- ms from creation to expires_at: created_at = expires_at - lifetime
    expires_at  INTEGER NOT NULL,   -- ms since the Unix epoch
    outcome     BLOB    NOT NULL,
    PRIMARY KEY (scope_id, key)
) WITHOUT ROWID;
INSERT INTO oncely_records_v5
    SELECT s.id, r.key, r.token, r.attempt, r.fingerprint, r.expires_at - r.created_at,
           r.expires_at, r.outcome
    FROM oncely_records r JOIN oncely_scopes s ON s.name = r.scope;
DROP TABLE oncely_records;
ALTER TABLE oncely_records_v5 RENAME TO oncely_records;

-- Purge walks this index oldest-first. New values are near "now + retention", so inserts land on
-- the right edge of the index and share its last few pages. (Indexed by the second, its entries
-- would be 2 bytes smaller, but a second's entries then sort by key: each transaction wrote
-- hundreds of its pages instead of a few, and claims ran ~15 % slower.)
CREATE INDEX oncely_records_expires_at ON oncely_records (expires_at);

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
