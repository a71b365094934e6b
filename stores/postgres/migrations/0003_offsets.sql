-- oncely PostgreSQL schema, version 3: consumer offsets kept with the effects. Applied on first
-- use (tracked in oncely_schema_version), in either layout; shipped as plain SQL for users who
-- run their own migrations.

-- The next offset to read, per consumer group and partition, written by a handler in the
-- transaction of its effect (oncely_postgres::offsets) and read by the Kafka consumer when a
-- partition is assigned to it.
CREATE TABLE IF NOT EXISTS oncely_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
