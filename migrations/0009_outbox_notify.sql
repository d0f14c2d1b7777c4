-- The relay's wake-up: one NOTIFY per inserting statement, sent by PostgreSQL itself when the transaction commits
-- (so the producer spends no round trip on it).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gitfleet_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
