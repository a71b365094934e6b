-- oncely MySQL/MariaDB schema, version 4: rows the broker keeps refusing are parked. Applied on
-- first use (tracked in oncely_schema_version); shipped as plain SQL for users who run their
-- own migrations.

-- attempts counts the broker's refusals of the row (a message too large, a destination that
-- does not exist), not its outages; at the relay's limit the row is parked: parked_at set,
-- last_error kept, no longer published until `oncely outbox retry` (or dropped by
-- `oncely outbox drop`).
ALTER TABLE oncely_outbox
    ADD COLUMN attempts   INT         NOT NULL DEFAULT 0,
    ADD COLUMN last_error TEXT        NULL,
    ADD COLUMN parked_at  DATETIME(6) NULL,
    ADD INDEX oncely_outbox_parked (aggregate, parked_at, id);
