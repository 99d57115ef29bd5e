-- The inbox table the user-facing service reads, and the consumer positions
-- that are committed in the same transaction as the rows they cover.
CREATE TABLE IF NOT EXISTS notifications (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL,
    event_type text        NOT NULL,
    title      text        NOT NULL,
    body       text        NOT NULL,
    data       jsonb,
    created_at timestamptz NOT NULL
);

-- Serves "a user's latest notifications".
CREATE INDEX IF NOT EXISTS notifications_user_latest
    ON notifications (user_id, created_at DESC);

-- next_offset is the offset of the next record to read; -1 means no record
-- of the partition has been written yet.
CREATE TABLE IF NOT EXISTS notifyd_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
