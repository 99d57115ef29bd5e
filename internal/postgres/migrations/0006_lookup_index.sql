-- One user's committed rows with their whole primary key (id, created_at),
-- replacing migration 0003's (user_id, commit_xid) INCLUDE (id): 8 bytes
-- more an entry. A mark by ids (the inbox API) then finds the caller's rows,
-- and the created_at its read state keeps, among that user's entries of each
-- partition, from the index alone; before, it probed every partition's
-- primary key for every id (docs/architecture.md, "Schema").
--
-- Locks: the pre-step (prepareLookupIndex in migrate.go) has built the index
-- with CREATE INDEX CONCURRENTLY on every partition of 16 MB or more, which
-- writers do not wait for; this CREATE INDEX attaches those and builds only
-- the small partitions' under a SHARE lock (writes wait for that moment).
-- DROP INDEX takes ACCESS EXCLUSIVE on notifications for a catalog change.
CREATE INDEX IF NOT EXISTS notifications_user_commit_xid_at
    ON notifications (user_id, commit_xid) INCLUDE (id, created_at) WHERE commit_xid IS NOT NULL;
DROP INDEX IF EXISTS notifications_user_commit_xid;
