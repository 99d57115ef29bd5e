-- The inbox API (docs/architecture.md, "Inbox API"): a commit position for
-- the live stream, a wake-up for its listeners, and read state kept beside
-- the inbox rather than in it.

-- The transaction that wrote each row. Added nullable, then given its
-- default: both are catalog changes, neither rewrites the table (a volatile
-- default in ADD COLUMN would). Rows written before this migration keep NULL.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS commit_xid xid8;
ALTER TABLE notifications ALTER COLUMN commit_xid SET DEFAULT pg_current_xact_id();

-- "Rows committed since a snapshot" (the stream), and one user's rows by
-- commit (counts, resume), with the id so that counting reads no table
-- pages. Rows written before this migration are in neither; the last index
-- holds only them, so counting reads no table pages for them either, and
-- new rows never enter it.
CREATE INDEX IF NOT EXISTS notifications_commit_xid
    ON notifications (commit_xid) WHERE commit_xid IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_user_commit_xid
    ON notifications (user_id, commit_xid) INCLUDE (id) WHERE commit_xid IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_user_before_commit_xid
    ON notifications (user_id) INCLUDE (id) WHERE commit_xid IS NULL;

-- Tells listening API processes, at commit, that rows were written. It
-- carries no rows: they read them with SQL, so a missed wake-up costs
-- latency, never a row.
CREATE OR REPLACE FUNCTION notifyd_inbox_wake() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifyd_inbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS notifyd_inbox_wake ON notifications;
CREATE TRIGGER notifyd_inbox_wake
    AFTER INSERT ON notifications
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd_inbox_wake();

-- Per user: a version that orders the user's changes, and for each kind a
-- "mark all up to now" watermark (the snapshot of that moment, its time and
-- the version it was given).
CREATE TABLE IF NOT EXISTS notifyd_inbox_users (
    user_id              uuid        PRIMARY KEY,
    version              bigint      NOT NULL,
    read_all_snap        pg_snapshot,
    read_all_at          timestamptz,
    read_all_version     bigint,
    seen_all_snap        pg_snapshot,
    seen_all_at          timestamptz,
    seen_all_version     bigint,
    archived_all_snap    pg_snapshot,
    archived_all_at      timestamptz,
    archived_all_version bigint
);

-- Per notification changed by id (with its created_at, which finds its
-- partition): for each kind its time (NULL after an
-- undo) and the version of the change; a NULL version means "not set by id".
CREATE TABLE IF NOT EXISTS notifyd_inbox_state (
    user_id          uuid        NOT NULL,
    notification_id  uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    read_at          timestamptz,
    read_version     bigint,
    seen_at          timestamptz,
    seen_version     bigint,
    archived_at      timestamptz,
    archived_version bigint,
    PRIMARY KEY (user_id, notification_id)
);
