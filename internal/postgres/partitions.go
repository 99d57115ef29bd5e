package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The partitions of notifications that catch the rows outside the regular
// ones (docs/architecture.md, "Storage").
const (
	pastPartition   = "notifications_past"
	futurePartition = "notifications_future"
)

// committedCheck is the constraint of every partition that holds no row
// written before migration 0003 (whose commit_xid is NULL): with it the
// planner leaves the partition out of the inbox API's scans for such rows
// (migration 0005, docs/architecture.md "Schema (migrations 0003 and 0005)").
const committedCheck = "notifyd_committed"

// addCommittedCheck is the statement that gives table committedCheck:
// instant on a new, empty table; on one with rows it scans them.
func addCommittedCheck(table string) string {
	return "ALTER TABLE " + table + " ADD CONSTRAINT " + committedCheck + " CHECK (commit_xid IS NOT NULL)"
}

// maintenanceLockTimeout bounds how long a maintenance transaction waits for
// a lock on notifications, and so how long writers queue behind it.
const maintenanceLockTimeout = 20 * time.Millisecond

// maxCatchUp is the most regular partitions one round makes; a gap longer
// than that (a database left unmaintained for years) gets one partition.
const maxCatchUp = 1000

// ErrNoPrivilege reports maintenance that the database role may not do.
var ErrNoPrivilege = errors.New("the database role may not create or drop partitions of notifications (needs to own the table)")

func (c Config) validateStorage() []error {
	var errs []error
	iv := c.partitionInterval()
	if iv < time.Hour || iv%time.Minute != 0 {
		errs = append(errs, fmt.Errorf("--partition-interval: must be at least 1h and a whole number of minutes, got %s", iv))
	}
	if c.Retention < 0 || (c.Retention > 0 && c.Retention < iv) {
		errs = append(errs, fmt.Errorf("--retention: must be 0 (keep everything) or at least --partition-interval (%s), got %s", iv, c.Retention))
	}
	if c.DedupeWindow < 0 {
		errs = append(errs, fmt.Errorf("--dedupe-window: must be positive, got %s", c.DedupeWindow))
	}
	return errs
}

// Ahead is how far past now partitions are made: 7 days, and at least 4
// intervals.
func (c Config) Ahead() time.Duration {
	return max(7*24*time.Hour, 4*c.partitionInterval())
}

// Partition is one partition of notifications: rows with From <= created_at
// < To. A zero From is MINVALUE, a zero To MAXVALUE.
type Partition struct {
	Name     string
	From, To time.Time
	schema   string // where it is, which the dedupe probe names it in
	oid      uint32 // which the dedupe probe's filters know it by
}

// Partitions lists the partitions of notifications, oldest first. It needs
// only catalog reads.
func (s *Store) Partitions(ctx context.Context) ([]Partition, error) {
	parts, _, err := listPartitions(ctx, s.pool)
	return parts, err
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// listPartitions lists the partitions of notifications, oldest first, and
// their oids as probeKeySQL gives them, read together.
func listPartitions(ctx context.Context, q querier) ([]Partition, string, error) {
	// The bounds are read back through the session's own timestamptz input,
	// so the session's time zone does not matter.
	rows, err := q.Query(ctx, `
		SELECT c.relname::text, n.nspname::text, c.oid, `+probeKeySQL+`,
		       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'))[1]::timestamptz,
		       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE i.inhparent = to_regclass('notifications')
		ORDER BY 5 NULLS FIRST`)
	if err != nil {
		return nil, "", fmt.Errorf("list partitions: %w", err)
	}
	var out []Partition
	var p Partition
	var key string
	var from, to *time.Time
	_, err = pgx.ForEachRow(rows, []any{&p.Name, &p.schema, &p.oid, &key, &from, &to}, func() error {
		q := Partition{Name: p.Name, schema: p.schema, oid: p.oid}
		if from != nil {
			q.From = from.UTC()
		}
		if to != nil {
			q.To = to.UTC()
		}
		out = append(out, q)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list partitions: %w", err)
	}
	return out, key, nil
}

// alignDown is t rounded down to a multiple of iv since the Unix epoch.
func alignDown(t time.Time, iv time.Duration) time.Time {
	s := int64(iv / time.Second)
	u := t.Unix()
	r := u % s
	if r < 0 {
		r += s
	}
	return time.Unix(u-r, 0).UTC()
}

// partitionName names the regular partition starting at from.
func partitionName(from time.Time) string {
	return "notifications_p" + from.UTC().Format("20060102_1504")
}

// bound is a timestamptz literal for DDL.
func bound(t time.Time) string {
	return "'" + t.UTC().Format("2006-01-02 15:04:05.999999Z07:00") + "'"
}

// aheadPlan returns the ranges to make so that regular partitions reach
// past now+ahead: contiguous from the start of notifications_future, one
// interval each (the first may be shorter, to get back onto the interval's
// bounds).
func aheadPlan(parts []Partition, now time.Time, iv, ahead time.Duration) ([][2]time.Time, error) {
	if len(parts) == 0 || !parts[len(parts)-1].To.IsZero() || parts[len(parts)-1].Name != futurePartition {
		return nil, fmt.Errorf("notifications has no partition %s up to MAXVALUE: the schema is not the one this notifyd made", futurePartition)
	}
	start := parts[len(parts)-1].From
	target := alignDown(now.Add(ahead), iv).Add(iv)
	var out [][2]time.Time
	if !start.Before(target) {
		return nil, nil
	}
	if target.Sub(start)/iv > maxCatchUp {
		catchUpTo := alignDown(now, iv)
		out = append(out, [2]time.Time{start, catchUpTo})
		start = catchUpTo
	}
	for start.Before(target) {
		end := alignDown(start, iv).Add(iv)
		out = append(out, [2]time.Time{start, end})
		start = end
	}
	return out, nil
}

// retentionPlan returns the partitions to drop for retention (the past
// partition and the regular ones above it that ended at or before cutoff)
// and the new upper bound of the past partition; nothing when no regular
// partition has expired.
func retentionPlan(parts []Partition, cutoff time.Time) (drop []string, pastTo time.Time) {
	if len(parts) < 2 || parts[0].Name != pastPartition {
		return nil, time.Time{}
	}
	for _, p := range parts[1:] {
		if p.To.IsZero() || p.To.After(cutoff) {
			break
		}
		drop = append(drop, p.Name)
		pastTo = p.To
	}
	if len(drop) == 0 {
		return nil, time.Time{}
	}
	return append([]string{pastPartition}, drop...), pastTo
}

// MaintainResult is what one round of maintenance did and found.
type MaintainResult struct {
	Created []string // partitions made ahead
	Dropped []string // partitions dropped for retention
	// AheadUntil is the start of notifications_future: rows up to it have a
	// regular partition.
	AheadUntil time.Time
	// Held is the longest time a transaction of this round held the
	// exclusive lock on notifications that makes writers wait (from its
	// DETACH or DROP to its commit).
	Held time.Duration
}

// Maintain makes the partitions ahead and applies the retention. It reads
// the catalog first and runs DDL only when something is to change; the DDL
// runs in short transactions that wait at most maintenanceLockTimeout for
// their lock and are tried again. A role that may not do it gets an error
// wrapping ErrNoPrivilege, with AheadUntil still filled in.
func (s *Store) Maintain(ctx context.Context) (MaintainResult, error) {
	var res MaintainResult
	parts, err := s.Partitions(ctx)
	if err != nil {
		return res, err
	}
	iv, ahead := s.cfg.partitionInterval(), s.cfg.Ahead()
	plan, err := aheadPlan(parts, s.now(), iv, ahead)
	if err != nil {
		return res, err
	}
	res.AheadUntil = parts[len(parts)-1].From
	if len(plan) > 0 {
		created, until, held, err := s.makeAhead(ctx)
		res.Created, res.Held = created, held
		if !until.IsZero() {
			res.AheadUntil = until
		}
		if err != nil {
			return res, err
		}
	}
	if s.cfg.Retention > 0 {
		if drop, _ := retentionPlan(parts, s.now().Add(-s.cfg.Retention)); len(drop) > 0 {
			dropped, held, err := s.dropExpired(ctx)
			res.Dropped, res.Held = dropped, max(res.Held, held)
			if err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

// maintenanceTx runs fn in a transaction that holds the maintenance
// advisory lock of this notifications table and a short lock_timeout,
// trying again on lock timeouts.
func (s *Store) maintenanceTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	err := retryLockTimeout(ctx, maintenanceLockTimeout, func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			// Maintainers of one table (several runs, a scheduled migrate)
			// take turns; the lock is the table's, so that other schemas
			// are not held.
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('notifyd maintenance ' || 'notifications'::regclass::oid::text, 0))"); err != nil {
				return err
			}
			// The commit does not wait for its WAL flush: the lock goes as
			// soon as the catalog work is done. A crash loses the whole
			// transaction or nothing, and the next round does it again.
			if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true), set_config('synchronous_commit', 'off', true)",
				strconv.FormatInt(maintenanceLockTimeout.Milliseconds(), 10)); err != nil {
				return err
			}
			return fn(tx)
		})
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" {
		return fmt.Errorf("%w: %s", ErrNoPrivilege, pe.Message)
	}
	return err
}

// makeAhead splits notifications_future: it makes the regular partitions
// that the plan asks for (read again under the lock) and attaches
// notifications_future again above them, moving into the new partitions
// any row it held below its new bound.
func (s *Store) makeAhead(ctx context.Context) (created []string, until time.Time, held time.Duration, err error) {
	iv, ahead := s.cfg.partitionInterval(), s.cfg.Ahead()
	var locked time.Time
	err = s.maintenanceTx(ctx, func(tx pgx.Tx) error {
		created, until = nil, time.Time{}
		parts, _, err := listPartitions(ctx, tx)
		if err != nil {
			return err
		}
		plan, err := aheadPlan(parts, s.now(), iv, ahead)
		if err != nil || len(plan) == 0 {
			return err
		}
		// Made standalone first: that takes only an ACCESS SHARE lock on
		// notifications, so writers go on.
		for _, r := range plan {
			if _, err := tx.Exec(ctx, "CREATE TABLE "+partitionName(r[0])+" (LIKE notifications INCLUDING ALL);\n"+
				addCommittedCheck(partitionName(r[0]))); err != nil {
				return fmt.Errorf("create partition %s: %w", partitionName(r[0]), err)
			}
		}
		// From here to the commit writers wait: catalog work on empty
		// tables, sent as one round trip so that the wait does not include
		// this process's scheduling between statements.
		newFrom := plan[len(plan)-1][1]
		q := "ALTER TABLE notifications DETACH PARTITION " + futurePartition + ";\n"
		for _, r := range plan {
			q += "ALTER TABLE notifications ATTACH PARTITION " + partitionName(r[0]) +
				" FOR VALUES FROM (" + bound(r[0]) + ") TO (" + bound(r[1]) + ");\n"
		}
		q += "WITH moved AS (DELETE FROM " + futurePartition + " WHERE created_at < " + bound(newFrom) + " RETURNING *)\n" +
			"INSERT INTO notifications SELECT * FROM moved;\n" +
			"ALTER TABLE notifications ATTACH PARTITION " + futurePartition + " FOR VALUES FROM (" + bound(newFrom) + ") TO (MAXVALUE)"
		locked = time.Now()
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("split %s: %w", futurePartition, err)
		}
		for _, r := range plan {
			created = append(created, partitionName(r[0]))
		}
		until = newFrom
		return nil
	})
	if !locked.IsZero() {
		held = time.Since(locked)
	}
	if err != nil {
		return nil, time.Time{}, held, fmt.Errorf("make partitions ahead: %w", err)
	}
	return created, until, held, nil
}

// dropExpired detaches, in one transaction, notifications_past and the
// regular partitions above it that ended before the retention cutoff, and
// attaches in their place a new, empty notifications_past up to the lowest
// regular bound left, so that no range is ever without a partition. The
// detached tables are dropped after the commit, without holding writers.
func (s *Store) dropExpired(ctx context.Context) (dropped []string, held time.Duration, err error) {
	const next, old = pastPartition + "_next", pastPartition + "_old"
	var locked, pastTo time.Time
	var detached []string
	err = s.maintenanceTx(ctx, func(tx pgx.Tx) error {
		dropped, detached = nil, nil
		parts, _, err := listPartitions(ctx, tx)
		if err != nil {
			return err
		}
		var drop []string
		drop, pastTo = retentionPlan(parts, s.now().Add(-s.cfg.Retention))
		if len(drop) == 0 {
			return nil
		}
		// Leftovers of a round killed after its commit.
		if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+old+", "+next); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE "+next+" (LIKE notifications INCLUDING ALL);\n"+addCommittedCheck(next)); err != nil {
			return fmt.Errorf("create %s: %w", next, err)
		}
		q := ""
		for _, n := range drop {
			q += "ALTER TABLE notifications DETACH PARTITION " + n + ";\n"
		}
		q += "ALTER TABLE " + pastPartition + " RENAME TO " + old + ";\n" +
			"ALTER TABLE " + next + " RENAME TO " + pastPartition + ";\n" +
			"ALTER TABLE notifications ATTACH PARTITION " + pastPartition + " FOR VALUES FROM (MINVALUE) TO (" + bound(pastTo) + ")"
		// One round trip, as in makeAhead.
		locked = time.Now()
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("swap %s: %w", pastPartition, err)
		}
		dropped = drop[1:]
		detached = append([]string{old}, dropped...)
		return nil
	})
	if !locked.IsZero() {
		held = time.Since(locked)
	}
	if err != nil {
		return nil, held, fmt.Errorf("apply retention: %w", err)
	}
	for _, n := range detached {
		if _, err := s.pool.Exec(ctx, "DROP TABLE IF EXISTS "+n); err != nil {
			return dropped, held, fmt.Errorf("apply retention: drop detached %s: %w", n, err)
		}
	}
	// The inbox's read state of the rows that are gone (the table holds no
	// row created before pastTo now). Rows of a side table, deleted after
	// the swap, so writers never wait for them; a round killed before this
	// leaves them for the next round, which deletes them all the same.
	if !pastTo.IsZero() {
		if _, err := s.pool.Exec(ctx, "DELETE FROM notifyd_inbox_state WHERE created_at < $1", pastTo); err != nil {
			return dropped, held, fmt.Errorf("apply retention: read state of the dropped rows: %w", err)
		}
	}
	return dropped, held, nil
}
