-- oncely MySQL/MariaDB schema, version 3: consumer offsets kept with the effects. Applied on first
-- use (tracked in oncely_schema_version); shipped as plain SQL for users who run their own
-- migrations.

-- The next offset to read, per consumer group and partition, written by a handler in the
-- transaction of its effect (oncely_mysql::offsets) and read by the Kafka consumer when a
-- partition is assigned to it. VARBINARY: group and topic names compare byte for byte (Kafka's
-- are case-sensitive), whatever the table's collation.
CREATE TABLE IF NOT EXISTS oncely_offsets (
    consumer_group VARBINARY(512) NOT NULL,
    topic          VARBINARY(255) NOT NULL,
    `partition`    INT            NOT NULL,
    next_offset    BIGINT         NOT NULL,
    updated_at     DATETIME(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer_group, topic, `partition`)
) ENGINE = InnoDB;
