-- Dead letters, written in the same transaction that moves their
-- partition's offset past them (a transactional outbox): the relay
-- publishes each to the dead-letter topic and deletes it once the broker
-- has it. A letter the topic refuses for good (too large for it, not
-- authorised, an invalid topic, a policy) stays here with kept_reason set.
--
-- Locks: CREATE TABLE takes no lock on existing tables. ADD COLUMN without
-- a default only changes the catalog; it holds notifyd_offsets' ACCESS
-- EXCLUSIVE lock for that instant.
CREATE TABLE IF NOT EXISTS notifyd_dead_letters (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group   text        NOT NULL,
    dlq_topic        text        NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    source_timestamp timestamptz NOT NULL,
    class            text        NOT NULL,
    reason           text        NOT NULL,
    -- NULL is a record without key (or value), distinct from an empty one.
    key              bytea,
    value            bytea,
    -- The original record's headers: [{"key": base64, "value": base64}].
    headers          jsonb       NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Publish attempts so far; a letter is published again only when an
    -- earlier attempt is not known to have succeeded.
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    kept_reason      text
);

-- What the relay takes next: pending letters of one topic, oldest first.
CREATE INDEX IF NOT EXISTS notifyd_dead_letters_pending
    ON notifyd_dead_letters (dlq_topic, id) WHERE kept_reason IS NULL;

-- Written by every advance of the partition's position: a writer that lost
-- the acknowledgement of its COMMIT finds its own token and knows the
-- transaction committed.
ALTER TABLE notifyd_offsets ADD COLUMN IF NOT EXISTS writer_token uuid;

-- Inserts rows one at a time, each in a subtransaction of its own, as the
-- write path's insertSQL does (the same columns, ON CONFLICT DO NOTHING),
-- and returns the rows the database refused for their data (SQLSTATE
-- classes 22 and 23) with the reason, then one row with idx NULL and the
-- number of rows inserted. A batch the database refuses is thus isolated in
-- one round trip, whatever its size. The INSERT is static, not insertSQL
-- run by EXECUTE: a cached plan instead of one planned per row (about 3
-- times as fast; BenchmarkAllRefused). Creating a function locks nothing.
CREATE OR REPLACE FUNCTION notifyd_insert_each(ids uuid[], users uuid[], types text[],
    titles text[], bodies text[], datas jsonb[], created timestamptz[])
RETURNS TABLE (idx integer, inserted bigint, state text, message text)
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    total bigint := 0;
BEGIN
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        BEGIN
            INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
            VALUES (ids[i], users[i], types[i], titles[i], bodies[i], datas[i], created[i])
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            total := total + n;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
            idx := i - 1;
            inserted := NULL;
            state := SQLSTATE;
            message := SQLERRM;
            RETURN NEXT;
        END;
    END LOOP;
    idx := NULL;
    inserted := total;
    state := NULL;
    message := NULL;
    RETURN NEXT;
END
$$;
