-- oncely SQLite schema, version 2: the transactional outbox. Applied on first use (tracked in
-- PRAGMA user_version), by the store, the inbox or the outbox; shipped as plain SQL for users who
-- run their own migrations.

-- One row per message enqueued in a caller's transaction (oncely_sqlite::outbox). The relay
-- publishes the unsent rows in id order and sets sent_at once the broker has confirmed them;
-- purge deletes rows sent longer ago than the retention. AUTOINCREMENT: an id is never handed
-- out twice, even after the newest rows were purged, so a message id (ORIGIN-ID) never repeats.
CREATE TABLE IF NOT EXISTS oncely_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate   TEXT    NOT NULL,              -- order is kept per aggregate
    destination TEXT,                          -- subject / routing key; NULL: the relay's default
    payload     BLOB    NOT NULL,
    headers     TEXT    NOT NULL DEFAULT '[]', -- JSON [[name, value], ...]
    created_at  INTEGER NOT NULL,              -- ms since the Unix epoch
    sent_at     INTEGER                        -- ms since the Unix epoch; NULL until confirmed
);

-- The relay's work list: the unsent rows, in id order.
CREATE INDEX IF NOT EXISTS oncely_outbox_unsent ON oncely_outbox (id) WHERE sent_at IS NULL;
-- Purge walks this index oldest-first.
CREATE INDEX IF NOT EXISTS oncely_outbox_sent ON oncely_outbox (sent_at) WHERE sent_at IS NOT NULL;

-- This outbox's name, random, the prefix of its rows' message ids (ORIGIN-ID): two databases'
-- outboxes publishing to one stream never share a message id.
CREATE TABLE IF NOT EXISTS oncely_outbox_origin (origin TEXT NOT NULL);
INSERT INTO oncely_outbox_origin (origin)
    SELECT lower(hex(randomblob(6)))
    WHERE NOT EXISTS (SELECT 1 FROM oncely_outbox_origin);

-- The relays' lease: one relay at a time publishes this file's outbox. A relay takes the lease
-- once it has expired, adding one to token (its fencing token); it renews it while it works, and
-- marks rows sent only while token is still the one it took.
CREATE TABLE IF NOT EXISTS oncely_outbox_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    token      INTEGER NOT NULL,  -- + 1 at every takeover
    holder     TEXT,              -- the holding relay, for people reading the table
    expires_at INTEGER NOT NULL   -- ms since the Unix epoch
);
INSERT OR IGNORE INTO oncely_outbox_lease (id, token, holder, expires_at) VALUES (1, 0, NULL, 0);
