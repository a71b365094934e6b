-- oncely PostgreSQL schema, version 1, partitioned layout (`?oncely_partitions=daily|hourly`).
-- The same columns as 0001_records.sql; only one of the two is ever applied to a schema, and the
-- layout is fixed from then on. Applied on first use (tracked in oncely_schema_version); shipped
-- as plain SQL for users who run their own migrations. After running it by hand, record the
-- granularity the store will be opened with:
--     INSERT INTO oncely_partitioning (granularity) VALUES ('daily');  -- or 'hourly'
-- The store creates the time partitions themselves (oncely_records_YYYYMMDD or
-- oncely_records_YYYYMMDD_HH) ahead of time, on connect and on every purge.

-- Records, partitioned by RANGE on expires_at (ms since the Unix epoch). Completing a record or
-- taking it over moves expires_at forward, and PostgreSQL moves the row to its new partition, so
-- a partition whose upper bound has passed holds only expired records and can be dropped whole.
--
-- NOT a uniqueness guarantee: PostgreSQL requires a partitioned table's unique constraints to
-- include the partition key, so this primary key allows one (scope, key) in two partitions. The
-- store keeps (scope, key) unique itself: every writer of a key first takes
-- pg_advisory_xact_lock(hash of scope and key), then reads the key across all partitions.
CREATE TABLE IF NOT EXISTS oncely_records (
    scope       bytea   NOT NULL,
    key         bytea   NOT NULL,
    completed   boolean NOT NULL,   -- false: in progress, expires_at is the lease deadline
    token       bigint  NOT NULL,   -- fencing token of the current holder
    attempt     integer NOT NULL,
    fingerprint bytea,              -- 32-byte SHA-256 of the payload, or NULL
    created_at  bigint  NOT NULL,   -- ms since the Unix epoch
    expires_at  bigint  NOT NULL,   -- ms since the Unix epoch; the partition key
    outcome     bytea,
    PRIMARY KEY (scope, key, expires_at)
) PARTITION BY RANGE (expires_at);

-- Rows outside every time partition land here, so an insert never fails; the store moves them
-- into their partition when it creates it, and purge deletes expired ones row by row.
CREATE TABLE IF NOT EXISTS oncely_records_default PARTITION OF oncely_records DEFAULT;

-- Purge walks this index oldest-first in the partition that is only partly expired.
CREATE INDEX IF NOT EXISTS oncely_records_expires_at ON oncely_records (expires_at);

-- The granularity the layout was created with: 'daily' or 'hourly', one row.
CREATE TABLE IF NOT EXISTS oncely_partitioning (
    granularity text NOT NULL CHECK (granularity IN ('daily', 'hourly'))
);

-- The version guard, as in the plain layout: highest version seen per (scope, entity).
CREATE TABLE IF NOT EXISTS oncely_versions (
    scope   bytea  NOT NULL,
    entity  bytea  NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (scope, entity)
);
