-- oncely SQLite schema, version 1.
-- Applied automatically on first use (tracked in PRAGMA user_version); shipped as plain SQL for
-- users who run their own migrations.

-- One row per (scope, key). WITHOUT ROWID: the primary key is the table, so a claim is a single
-- B-tree insert instead of a rowid insert plus an index insert.
CREATE TABLE IF NOT EXISTS oncely_records (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    completed   INTEGER NOT NULL,   -- 0: in progress (expires_at is the lease deadline); 1: completed
    token       INTEGER NOT NULL,   -- fencing token of the current holder
    attempt     INTEGER NOT NULL,
    fingerprint BLOB,               -- 32-byte SHA-256 of the payload, or NULL
    created_at  INTEGER NOT NULL,   -- ms since the Unix epoch
    expires_at  INTEGER NOT NULL,   -- ms since the Unix epoch
    outcome     BLOB,               -- stored outcome once completed
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

-- Purge walks this index oldest-first. New values are near "now + retention", so inserts land on
-- the right edge of the index and dirty few pages.
CREATE INDEX IF NOT EXISTS oncely_records_expires_at ON oncely_records (expires_at);

-- The version guard (apply_if_newer): highest version seen per (scope, entity).
CREATE TABLE IF NOT EXISTS oncely_versions (
    scope   TEXT    NOT NULL,
    entity  TEXT    NOT NULL,
    version INTEGER NOT NULL,       -- u64 stored bit-for-bit in a signed 64-bit integer
    PRIMARY KEY (scope, entity)
) WITHOUT ROWID;
