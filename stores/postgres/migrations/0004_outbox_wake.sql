-- oncely PostgreSQL schema, version 4: relays are woken when rows are enqueued. Applied on first
-- use (tracked in oncely_schema_version), in either layout; shipped as plain SQL for users who
-- run their own migrations.

-- Each statement that inserts into oncely_outbox notifies the channel `oncely_outbox.SCHEMA`
-- when its transaction commits (a rolled-back insert notifies nobody). A relay listening there
-- takes the new rows at once instead of at its next poll; polling stays, for a relay that
-- missed a notification (its listening connection was lost for a moment). PostgreSQL folds
-- repeated identical notifications of one transaction into one.
CREATE OR REPLACE FUNCTION oncely_outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('oncely_outbox.' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS oncely_outbox_wake ON oncely_outbox;
CREATE TRIGGER oncely_outbox_wake AFTER INSERT ON oncely_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION oncely_outbox_wake();
