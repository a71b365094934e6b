-- oncely SQLite schema, version 1.
-- Applied automatically on first use (tracked in PRAGMA user_version); shipped as plain SQL for
-- users who run their own migrations.
--
-- A key lives in exactly one of two tables. In-progress claims sit in the small, hot
-- `oncely_claims`; completing one moves it into the large `oncely_records`. A random key then
-- costs one random page write in the large table (at completion) instead of two (insert at
-- claim, update at completion), while the claim's own writes land on the few pages of a table
-- that holds only what is in flight.

-- `key` holds a canonical lower-case hyphenated UUID as its 16 bytes (a BLOB), any other key as
-- TEXT: UUID keys are the common case, and 16 bytes instead of 36 shrink both the table and the
-- expires_at index. Query by UUID with unhex(replace(?, '-', '')).
--
-- Completed records, kept until expires_at (end of retention). WITHOUT ROWID: the primary key is
-- the table, so a completion is one B-tree insert, not a rowid insert plus an index insert.
CREATE TABLE IF NOT EXISTS oncely_records (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    token       INTEGER NOT NULL,   -- fencing token of the holder that completed it
    attempt     INTEGER NOT NULL,
    fingerprint BLOB,               -- 32-byte SHA-256 of the payload, or NULL
    created_at  INTEGER NOT NULL,   -- ms since the Unix epoch
    expires_at  INTEGER NOT NULL,   -- ms since the Unix epoch
    outcome     BLOB    NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

-- Purge walks this index oldest-first. New values are near "now + retention", so inserts land on
-- the right edge of the index and share its last few pages.
CREATE INDEX IF NOT EXISTS oncely_records_expires_at ON oncely_records (expires_at);

-- In-progress claims; expires_at is the lease deadline. Small (what is in flight, plus leases of
-- holders that died), so purge scans it without an index.
CREATE TABLE IF NOT EXISTS oncely_claims (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    token       INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    fingerprint BLOB,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

-- The version guard (apply_if_newer): highest version seen per (scope, entity).
CREATE TABLE IF NOT EXISTS oncely_versions (
    scope   TEXT    NOT NULL,
    entity  TEXT    NOT NULL,
    version INTEGER NOT NULL,       -- u64 stored bit-for-bit in a signed 64-bit integer
    PRIMARY KEY (scope, entity)
) WITHOUT ROWID;
