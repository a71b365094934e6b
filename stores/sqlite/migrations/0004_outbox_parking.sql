-- oncely SQLite schema, version 4: rows the broker keeps refusing are parked. Applied on first
-- use (tracked in PRAGMA user_version); shipped as plain SQL for users who run their own
-- migrations.

-- attempts counts the broker's refusals of the row (a message too large, a destination that
-- does not exist), not its outages; at the relay's limit the row is parked: parked_at set (ms
-- since the Unix epoch), last_error kept, no longer published until `oncely outbox retry` (or
-- dropped by `oncely outbox drop`).
ALTER TABLE oncely_outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE oncely_outbox ADD COLUMN last_error TEXT;
ALTER TABLE oncely_outbox ADD COLUMN parked_at INTEGER;

-- The parked rows, by aggregate: what holds an aggregate back, and `oncely outbox list`.
CREATE INDEX IF NOT EXISTS oncely_outbox_parked ON oncely_outbox (aggregate, id)
    WHERE parked_at IS NOT NULL;
