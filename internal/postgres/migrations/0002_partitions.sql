-- Range-partitions notifications on created_at (docs/architecture.md,
-- "Storage"). The ordinary table of schema 1 becomes the partition
-- notifications_past in place: no row is copied. The runner has built the
-- helper indexes notifications_past_id_created_at and
-- notifications_upgrade_created_at concurrently (preSteps in migrate.go) and
-- set notifyd.partition_interval (seconds) and notifyd.now (its clock).
-- Regular partitions are made
-- after this transaction by Store.Maintain, which splits
-- notifications_future.
DO $$
DECLARE
    step bigint := current_setting('notifyd.partition_interval')::bigint;
    b    timestamptz;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'notifications'::regclass) = 'p' THEN
        RETURN;
    END IF;
    LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE;
    -- A multiple of the interval since the epoch: the start of the current
    -- interval for an empty table, else its end (so that the rows of today
    -- stay where they are).
    b := to_timestamp((floor(extract(epoch FROM current_setting('notifyd.now')::timestamptz) / step)::bigint
        + CASE WHEN EXISTS (SELECT FROM notifications) THEN 1 ELSE 0 END) * step);

    ALTER TABLE notifications RENAME TO notifications_past;
    ALTER INDEX notifications_user_latest RENAME TO notifications_past_user_latest;
    ALTER TABLE notifications_past DROP CONSTRAINT notifications_pkey;
    ALTER TABLE notifications_past ADD CONSTRAINT notifications_past_pkey
        PRIMARY KEY USING INDEX notifications_past_id_created_at;

    CREATE TABLE notifications (
        id         uuid        NOT NULL,
        user_id    uuid        NOT NULL,
        event_type text        NOT NULL,
        title      text        NOT NULL,
        body       text        NOT NULL,
        data       jsonb,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (id, created_at)
    ) PARTITION BY RANGE (created_at);
    -- Serves "a user's latest notifications", in every partition.
    CREATE INDEX notifications_user_latest ON notifications (user_id, created_at DESC);
    EXECUTE format('CREATE TABLE notifications_future PARTITION OF notifications FOR VALUES FROM (%L) TO (MAXVALUE)', b);

    -- Rows of schema 1 dated after b (clock skew, far-future dates) leave
    -- for notifications_future; the helper index finds them without a scan.
    WITH moved AS (
        DELETE FROM notifications_past WHERE created_at >= b
        RETURNING id, user_id, event_type, title, body, data, created_at
    )
    INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
    SELECT id, user_id, event_type, title, body, data, created_at FROM moved;
    DROP INDEX notifications_upgrade_created_at;

    -- The check is the one scan of the old table; with it the attach skips
    -- its own.
    EXECUTE format('ALTER TABLE notifications_past ADD CONSTRAINT notifications_past_bound CHECK (created_at < %L)', b);
    EXECUTE format('ALTER TABLE notifications ATTACH PARTITION notifications_past FOR VALUES FROM (MINVALUE) TO (%L)', b);
    ALTER TABLE notifications_past DROP CONSTRAINT notifications_past_bound;
END $$;
