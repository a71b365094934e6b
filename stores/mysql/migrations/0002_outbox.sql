-- oncely MySQL/MariaDB schema, version 2: the transactional outbox. Applied on first use
-- (tracked in oncely_schema_version); shipped as plain SQL for users who run their own
-- migrations.

-- One row per message enqueued in a caller's transaction (oncely_mysql::outbox). The relay
-- publishes the unsent rows in id order per aggregate and sets sent_at once the broker has
-- confirmed them; purge deletes rows sent longer ago than the retention.
CREATE TABLE IF NOT EXISTS oncely_outbox (
    id          BIGINT         NOT NULL AUTO_INCREMENT PRIMARY KEY,
    aggregate   VARBINARY(512) NOT NULL, -- order is kept per aggregate
    destination VARCHAR(255)   NULL,     -- subject / routing key; NULL: the relay's default
    payload     LONGBLOB       NOT NULL,
    headers     LONGTEXT       NOT NULL, -- JSON [[name, value], ...]
    created_at  DATETIME(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    sent_at     DATETIME(6)    NULL,     -- NULL until the broker confirmed it
    INDEX oncely_outbox_unsent (sent_at, aggregate, id), -- the relay's work list; purge too
    INDEX oncely_outbox_aggregate (aggregate, id)
) ENGINE = InnoDB;

-- One row per aggregate ever enqueued: enqueue locks its aggregate's row until the transaction
-- ends, so one aggregate's rows commit in id order.
CREATE TABLE IF NOT EXISTS oncely_outbox_aggregates (
    aggregate VARBINARY(512) NOT NULL PRIMARY KEY
) ENGINE = InnoDB;

-- This outbox's name, random, the prefix of its rows' message ids (ORIGIN-ID).
CREATE TABLE IF NOT EXISTS oncely_outbox_origin (origin VARCHAR(64) NOT NULL) ENGINE = InnoDB;
INSERT INTO oncely_outbox_origin (origin)
    SELECT SUBSTR(MD5(CONCAT(RAND(), NOW(6))), 1, 12) FROM DUAL
    WHERE NOT EXISTS (SELECT 1 FROM oncely_outbox_origin);
