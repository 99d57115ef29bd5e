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
