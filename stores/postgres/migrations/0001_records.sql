-- oncely PostgreSQL schema, version 1. Applied on first use (tracked in oncely_schema_version);
-- shipped as plain SQL for users who run their own migrations.

-- One row per (scope, key). Scope and key are bytea: they are UTF-8, but may contain NUL, which
-- text cannot hold.
CREATE TABLE IF NOT EXISTS oncely_records (
    scope       bytea   NOT NULL,
    key         bytea   NOT NULL,
    completed   boolean NOT NULL,   -- false: in progress, expires_at is the lease deadline
    token       bigint  NOT NULL,   -- fencing token of the current holder
    attempt     integer NOT NULL,
    fingerprint bytea,              -- 32-byte SHA-256 of the payload, or NULL
    created_at  bigint  NOT NULL,   -- ms since the Unix epoch
    expires_at  bigint  NOT NULL,   -- ms since the Unix epoch
    outcome     bytea,
    PRIMARY KEY (scope, key)
);

-- Purge walks this index oldest-first.
CREATE INDEX IF NOT EXISTS oncely_records_expires_at ON oncely_records (expires_at);

-- The version guard: highest version seen per (scope, entity), u64 stored bit-for-bit.
CREATE TABLE IF NOT EXISTS oncely_versions (
    scope   bytea  NOT NULL,
    entity  bytea  NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (scope, entity)
);
