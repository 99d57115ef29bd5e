package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLock seeds the advisory lock key that serialises migrations of
// one schema when several instances start at once ("notifyd" in ASCII).
const migrationLock = 0x6e6f7469667964

type migration struct {
	version int
	name    string
	sql     string
}

// preSteps are the parts of a migration that cannot run in a transaction
// (CREATE INDEX CONCURRENTLY), run before that version's .sql file, outside
// a transaction. Each must be idempotent: a run killed halfway is run again.
var preSteps = map[int]func(s *Store, ctx context.Context, conn *pgxpool.Conn) error{
	2: (*Store).preparePartitioning,
	3: (*Store).prepareInboxIndexes,
	5: (*Store).prepareCommittedChecks,
	6: (*Store).prepareLookupIndex,
}

func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %q: name must start with a version number and '_'", name)
		}
		body, err := fs.ReadFile(migrationFiles, "migrations/"+name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// LatestVersion is the schema version this build of notifyd migrates to.
func LatestVersion() int {
	ms, err := migrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// SchemaVersion reads the version of the database's schema, 0 when notifyd
// has never migrated it. It needs only SELECT.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var exists bool
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass('notifyd_schema_version') IS NOT NULL").Scan(&exists); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var applied []int32
	if err := s.pool.QueryRow(ctx, "SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM notifyd_schema_version").Scan(&applied); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if len(applied) == 0 {
		return 0, nil
	}
	// Versions are applied in order, so the applied ones are 1..v. A gap
	// means a build that lacked a migration went past it; the versions
	// above the gap assumed a schema this database does not have.
	for i, v := range applied {
		if int(v) != i+1 {
			return 0, fmt.Errorf("read schema version: versions %v are applied but not %d: this database was migrated by a notifyd built without migration %d, and its schema cannot be trusted; recreate it, or restore it from before that run", applied, i+1, i+1)
		}
	}
	return int(applied[len(applied)-1]), nil
}

// Migrate brings the schema to the latest version, each migration in its own
// transaction, and returns the version reached. Concurrent callers wait for
// each other on an advisory lock, so several instances may start at once. A
// schema already current costs one read and no DDL, so a role without DDL
// privilege may call it.
func (s *Store) Migrate(ctx context.Context) (int, error) {
	ms, err := migrations()
	if err != nil {
		return 0, err
	}
	latest := ms[len(ms)-1].version
	current, err := s.SchemaVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if current > latest {
		return current, fmt.Errorf("migrate: database schema is at version %d, newer than this notifyd (%d): upgrade notifyd", current, latest)
	}
	if current == latest {
		return current, nil
	}

	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()

	// The lock is the schema's. It is polled, not waited for in a
	// statement: CREATE INDEX CONCURRENTLY in the holder's pre-step waits
	// for every running statement, a waiting pg_advisory_lock included,
	// which would deadlock.
	var schema *string
	var searchPath string
	if err := conn.QueryRow(ctx, "SELECT current_schema(), current_setting('search_path')").Scan(&schema, &searchPath); err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if schema == nil {
		// Nothing could be created: name the setting to fix.
		return 0, fmt.Errorf("--database-url: no schema of its search_path (%s) exists in the database; create it, or name one that exists", searchPath)
	}
	var key int64
	if err := conn.QueryRow(ctx, "SELECT hashtextextended('notifyd migrate ' || $2::text, $1)", migrationLock, *schema).Scan(&key); err != nil {
		return 0, fmt.Errorf("migrate: take lock: %w", err)
	}
	for {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil {
			return 0, fmt.Errorf("migrate: take lock: %w", err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("migrate: wait for another migration: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key) //nolint:errcheck // released with the session anyway

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS notifyd_schema_version (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, fmt.Errorf("migrate: create version table: %w", err)
	}
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM notifyd_schema_version").Scan(&current); err != nil {
		return 0, fmt.Errorf("migrate: read version: %w", err)
	}
	if current > latest {
		return current, fmt.Errorf("migrate: database schema is at version %d, newer than this notifyd (%d): upgrade notifyd", current, latest)
	}
	interval := strconv.FormatInt(int64(s.cfg.partitionInterval()/time.Second), 10)
	for _, m := range ms {
		if m.version <= current {
			continue
		}
		if pre := preSteps[m.version]; pre != nil {
			if err := pre(s, ctx, conn); err != nil {
				return current, fmt.Errorf("migrate: prepare %s: %w", m.name, err)
			}
		}
		err := retryLockTimeout(ctx, migrationLockTimeout, func() error {
			return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				// A migration waiting for a table lock holds every writer
				// queued behind it: the wait is bounded and tried again.
				if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true), set_config('notifyd.partition_interval', $2, true),
					        set_config('notifyd.now', $3, true)`,
					strconv.FormatInt(migrationLockTimeout.Milliseconds(), 10), interval, s.now().UTC().Format(time.RFC3339Nano)); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, m.sql); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "INSERT INTO notifyd_schema_version (version, name) VALUES ($1, $2)", m.version, m.name)
				return err
			})
		})
		if err != nil {
			return current, fmt.Errorf("migrate: apply %s: %w", m.name, err)
		}
		current = m.version
	}
	return current, nil
}

// migrationLockTimeout bounds how long a migration waits for a table lock
// (and so how long it queues writers) before it rolls back and tries again.
const migrationLockTimeout = time.Second

// lockAttempts is how many times a transaction refused for a lock timeout is
// tried in all.
const lockAttempts = 40

// retryLockTimeout runs fn until it does not fail for a lock timeout
// (SQLSTATE 55P03), at most lockAttempts times, pausing a jittered 1–5
// lock timeouts between attempts so that the writers queued behind each
// attempt get through.
func retryLockTimeout(ctx context.Context, timeout time.Duration, fn func() error) error {
	var err error
	for range lockAttempts {
		err = fn()
		if !isLockTimeout(err) {
			return err
		}
		pause := timeout + time.Duration(rand.Int64N(int64(4*timeout)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
	}
	return fmt.Errorf("gave up after %d lock timeouts: %w", lockAttempts, err)
}

func isLockTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}

// smallTableBytes is the size under which preparePartitioning builds its
// indexes without CONCURRENTLY: about 50,000 rows, indexed in well under a
// second.
const smallTableBytes = 16 << 20

// preparePartitioning builds, without blocking writers, the indexes the
// switch of migration 0002 needs on the schema-1 table: its future primary
// key (id, created_at), and an index on created_at that finds the rows it
// must move. An index left invalid by a killed run is dropped and built
// again. A small table gets them the quick way.
func (s *Store) preparePartitioning(ctx context.Context, conn *pgxpool.Conn) error {
	if kind, err := notificationsKind(ctx, conn); err != nil || kind != "r" {
		return err // already partitioned, or no table: 0002 knows what to do
	}
	// CONCURRENTLY waits for every older transaction of the database, of
	// any table; a small table is indexed at once instead, holding its
	// writers for a moment.
	var small bool
	if err := conn.QueryRow(ctx, "SELECT pg_total_relation_size('notifications') < $1", s.smallTable).Scan(&small); err != nil {
		return err
	}
	how := "CONCURRENTLY"
	if small {
		how = ""
	}
	for _, ix := range []struct{ name, def string }{
		{"notifications_past_id_created_at", "UNIQUE INDEX %s notifications_past_id_created_at ON notifications (id, created_at)"},
		{"notifications_upgrade_created_at", "INDEX %s notifications_upgrade_created_at ON notifications (created_at)"},
	} {
		if err := ensureIndex(ctx, conn, ix.name, how, "CREATE "+fmt.Sprintf(ix.def, how)); err != nil {
			return err
		}
	}
	return nil
}

// ensureIndex builds the index name with create (its CREATE INDEX
// statement) unless a valid one exists; an invalid one, left by a build
// that was interrupted, is dropped first, how ("CONCURRENTLY" or "") as it
// was built.
func ensureIndex(ctx context.Context, conn *pgxpool.Conn, name, how, create string) error {
	var valid *bool
	err := conn.QueryRow(ctx, "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name).Scan(&valid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return err
	case *valid:
		return nil
	default:
		if _, err := conn.Exec(ctx, "DROP INDEX "+how+" "+name); err != nil {
			return fmt.Errorf("drop invalid index %s: %w", name, err)
		}
	}
	if _, err := conn.Exec(ctx, create); err != nil {
		return fmt.Errorf("build index %s: %w", name, err)
	}
	return nil
}

// inboxIndexes are the partial indexes migration 0003 declares on
// notifications, as suffix of each partition's index name and definition.
// They must stay identical to the migration's, so that its CREATE INDEX on
// the parent attaches the ones built here instead of building its own.
var inboxIndexes = []partitionIndex{
	{"commit_xid", "(commit_xid) WHERE commit_xid IS NOT NULL"},
	{"user_commit_xid", "(user_id, commit_xid) INCLUDE (id) WHERE commit_xid IS NOT NULL"},
	{"user_before_commit_xid", "(user_id) INCLUDE (id) WHERE commit_xid IS NULL"},
}

// prepareInboxIndexes builds, without blocking writers, migration 0003's
// indexes on every partition of notifications too large to index in a
// moment (after an upgrade from schema 1, notifications_past holds every old
// row). It first adds the column they index, a catalog change taken with a
// bounded lock wait. The migration's CREATE INDEX on the parent then finds
// them and attaches them; only the small partitions are indexed under its
// lock.
func (s *Store) prepareInboxIndexes(ctx context.Context, conn *pgxpool.Conn) error {
	if kind, err := notificationsKind(ctx, conn); err != nil || kind != "p" {
		return err // no table yet, or not partitioned: 0003 knows what to do
	}
	large, err := s.largePartitions(ctx, conn)
	if err != nil || len(large) == 0 {
		return err
	}
	err = retryLockTimeout(ctx, migrationLockTimeout, func() error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, strconv.FormatInt(migrationLockTimeout.Milliseconds(), 10))
			if err == nil {
				_, err = tx.Exec(ctx, `ALTER TABLE notifications ADD COLUMN IF NOT EXISTS commit_xid xid8`)
			}
			if err == nil {
				_, err = tx.Exec(ctx, `ALTER TABLE notifications ALTER COLUMN commit_xid SET DEFAULT pg_current_xact_id()`)
			}
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("add column commit_xid: %w", err)
	}
	return buildConcurrently(ctx, conn, large, inboxIndexes)
}

// largePartitions are the partitions of notifications too large to index
// in a moment under a lock writers wait for.
func (s *Store) largePartitions(ctx context.Context, conn *pgxpool.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'notifications'::regclass AND pg_total_relation_size(c.oid) >= $1
		ORDER BY c.relname`, s.smallTable)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// partitionIndex is an index a migration declares on notifications, as
// the suffix of each partition's index name and its definition, which must
// stay identical to the migration's so that its CREATE INDEX on the parent
// attaches the ones built before it instead of building its own.
type partitionIndex struct{ suffix, def string }

// buildConcurrently builds indexes on the given partitions with CREATE
// INDEX CONCURRENTLY (SHARE UPDATE EXCLUSIVE: writers go on), keeping the
// ones already built and building again the ones a killed run left invalid.
func buildConcurrently(ctx context.Context, conn *pgxpool.Conn, parts []string, indexes []partitionIndex) error {
	for _, part := range parts {
		for _, ix := range indexes {
			name := pgx.Identifier{part + "_" + ix.suffix}.Sanitize()
			if err := ensureIndex(ctx, conn, name, "CONCURRENTLY",
				"CREATE INDEX CONCURRENTLY "+name+" ON "+pgx.Identifier{part}.Sanitize()+" "+ix.def); err != nil {
				return err
			}
		}
	}
	return nil
}

// lookupIndexes are migration 0006's: the user's committed rows with their
// whole primary key, from which a mark by ids finds the caller's rows
// (and their created_at) in each partition's entries of that user, and the
// counts read the rows, both from the index alone. It replaces 0003's
// (user_id, commit_xid) INCLUDE (id).
var lookupIndexes = []partitionIndex{
	{"user_commit_xid_at", "(user_id, commit_xid) INCLUDE (id, created_at) WHERE commit_xid IS NOT NULL"},
}

// prepareLookupIndex builds migration 0006's index on every large
// partition without blocking writers, as prepareInboxIndexes does for 0003.
func (s *Store) prepareLookupIndex(ctx context.Context, conn *pgxpool.Conn) error {
	if kind, err := notificationsKind(ctx, conn); err != nil || kind != "p" {
		return err
	}
	large, err := s.largePartitions(ctx, conn)
	if err != nil {
		return err
	}
	return buildConcurrently(ctx, conn, large, lookupIndexes)
}

// prepareCommittedChecks gives every partition of notifications whose rows
// all have a commit_xid the constraint committedCheck, one partition at a
// time and without holding writers: the constraint is added NOT VALID (a
// catalog change under the partition's ACCESS EXCLUSIVE lock, waited for at
// most maintenanceLockTimeout and tried again), then validated, which scans
// the partition under a SHARE UPDATE EXCLUSIVE lock that writers do not
// wait for. Where validation finds rows written before migration 0003
// (after an upgrade, notifications_past, or partitions written at schema
// 2), the constraint is dropped again and the planner keeps scanning that
// partition for them. A run killed halfway leaves constraints valid or NOT
// VALID, which the next run validates or drops.
func (s *Store) prepareCommittedChecks(ctx context.Context, conn *pgxpool.Conn) error {
	if kind, err := notificationsKind(ctx, conn); err != nil || kind != "p" {
		return err
	}
	rows, err := conn.Query(ctx, `
		SELECT c.relname, k.convalidated FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.conname = $1
		WHERE i.inhparent = 'notifications'::regclass ORDER BY c.relname`, committedCheck)
	if err != nil {
		return err
	}
	type part struct {
		Name      string
		Validated *bool
	}
	parts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[part])
	if err != nil {
		return err
	}
	for _, p := range parts {
		if p.Validated != nil && *p.Validated {
			continue
		}
		table := pgx.Identifier{p.Name}.Sanitize()
		if p.Validated == nil {
			if err := execShortLock(ctx, conn, addCommittedCheck(table)+" NOT VALID"); err != nil {
				return fmt.Errorf("add %s to %s: %w", committedCheck, p.Name, err)
			}
		}
		_, err := conn.Exec(ctx, "ALTER TABLE "+table+" VALIDATE CONSTRAINT "+committedCheck)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23514" { // check_violation: rows older than 0003
			err = execShortLock(ctx, conn, "ALTER TABLE "+table+" DROP CONSTRAINT "+committedCheck)
		}
		if err != nil {
			return fmt.Errorf("validate %s of %s: %w", committedCheck, p.Name, err)
		}
	}
	return nil
}

// notificationsKind is the relkind of the table notifications ("r" at
// schema 1, "p" once partitioned), or "" when there is none yet.
func notificationsKind(ctx context.Context, conn *pgxpool.Conn) (string, error) {
	var kind string
	err := conn.QueryRow(ctx, "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('notifications')").Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return kind, err
}

// execShortLock runs a statement in a transaction of its own that waits at
// most maintenanceLockTimeout for its locks, tried again on a lock timeout:
// writers queue behind it for no longer than that.
func execShortLock(ctx context.Context, conn *pgxpool.Conn, sql string) error {
	return retryLockTimeout(ctx, maintenanceLockTimeout, func() error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true)", strconv.FormatInt(maintenanceLockTimeout.Milliseconds(), 10))
			if err == nil {
				_, err = tx.Exec(ctx, sql)
			}
			return err
		})
	})
}
