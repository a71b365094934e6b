-- oncely MySQL/MariaDB schema, version 1. Applied on first use (tracked in oncely_schema_version);
-- shipped as plain SQL for users who run their own migrations. Needs InnoDB (row locks) and
-- MySQL 8.0+ or MariaDB 10.6+ (SKIP LOCKED).

-- One row per (scope, key). VARBINARY: keys compare byte for byte, as in every other store,
-- whatever the table's collation.
CREATE TABLE IF NOT EXISTS oncely_records (
    scope       VARBINARY(255) NOT NULL,
    `key`       VARBINARY(512) NOT NULL,
    completed   BOOLEAN        NOT NULL, -- false: in progress, expires_at is the lease deadline
    token       BIGINT         NOT NULL, -- fencing token of the current holder
    attempt     INT            NOT NULL,
    fingerprint BINARY(32)     NULL,     -- SHA-256 of the payload, or NULL
    created_at  BIGINT         NOT NULL, -- ms since the Unix epoch
    expires_at  BIGINT         NOT NULL, -- ms since the Unix epoch
    outcome     LONGBLOB       NULL,
    PRIMARY KEY (scope, `key`),
    INDEX oncely_records_expires_at (expires_at) -- purge walks it oldest-first
) ENGINE = InnoDB;

-- The version guard: highest version seen per (scope, entity), u64 stored bit-for-bit.
CREATE TABLE IF NOT EXISTS oncely_versions (
    scope   VARBINARY(255) NOT NULL,
    entity  VARBINARY(512) NOT NULL,
    version BIGINT         NOT NULL,
    PRIMARY KEY (scope, entity)
) ENGINE = InnoDB;
