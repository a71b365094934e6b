-- oncely PostgreSQL schema, version 2: the transactional outbox. Applied on first use (tracked
-- in oncely_schema_version), in either layout; shipped as plain SQL for users who run their own
-- migrations.

-- One row per message enqueued in a caller's transaction (oncely_postgres::outbox). The relay
-- publishes the unsent rows in id order per aggregate and sets sent_at once the broker has
-- confirmed them; purge deletes rows sent longer ago than the retention.
CREATE TABLE IF NOT EXISTS oncely_outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate   text        NOT NULL,              -- order is kept per aggregate
    destination text,                              -- subject / routing key; NULL: the relay's default
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '[]', -- [[name, value], ...]
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz                        -- NULL until the broker confirmed it
);

-- The relay's work list: unsent rows by aggregate, in id order.
CREATE INDEX IF NOT EXISTS oncely_outbox_unsent ON oncely_outbox (aggregate, id)
    WHERE sent_at IS NULL;
-- Purge walks this index oldest-first.
CREATE INDEX IF NOT EXISTS oncely_outbox_sent ON oncely_outbox (sent_at)
    WHERE sent_at IS NOT NULL;

-- This outbox's name, random, the prefix of its rows' message ids (ORIGIN-ID): two databases'
-- outboxes publishing to one stream never share a message id.
CREATE TABLE IF NOT EXISTS oncely_outbox_origin (origin text NOT NULL);
INSERT INTO oncely_outbox_origin (origin)
    SELECT substr(md5(random()::text || clock_timestamp()::text), 1, 12)
    WHERE NOT EXISTS (SELECT 1 FROM oncely_outbox_origin);
