-- oncely SQLite schema, version 3: consumer offsets kept with the effects. Applied on first use
-- (tracked in PRAGMA user_version), by the store, the inbox, the outbox or the offsets; shipped as
-- plain SQL for users who run their own migrations.

-- The next offset to read, per consumer group and partition, written by a handler in the
-- transaction of its effect (oncely_sqlite::offsets) and read by the Kafka consumer when a
-- partition is assigned to it. WITHOUT ROWID: the primary key is the table.
CREATE TABLE IF NOT EXISTS oncely_offsets (
    consumer_group TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL, -- ms since the Unix epoch
    PRIMARY KEY (consumer_group, topic, partition)
) WITHOUT ROWID;
