package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/notifyd/notifyd/internal/notification"
)

// The primary key of notifications is (id, created_at): ON CONFLICT and the
// COPY path's unique violation catch a duplicate with the same created_at
// (a producer's retry, a redelivery), and screen catches the others.

// insertSQL inserts a whole batch as one statement of column arrays: one
// round trip, binary parameters, and ON CONFLICT for duplicates by id.
//
// It is the path for small batches, for batches holding duplicate ids and
// for isolating bad rows; larger batches try copyRows first. Chosen by
// BenchmarkWritePath (whole transactions, medians, this
// repository's 2-core machine; ratio to plain COPY without dedupe in
// brackets): at 1, 100, 1,000 and 10,000 rows this statement took 0.48 ms
// (1.13), 1.80 ms (0.91), 15.0 ms (0.83) and 141 ms (0.74). COPY into a
// staging table then INSERT … SELECT took 1.01, 2.60, 16.5 and 124 ms: it
// only wins from about 5,000 rows, by under 10 %, and needs a temporary
// table per session, which transaction-pooling proxies do not keep.
// Multi-row VALUES was slower at every size past 100 rows. unnest in the
// select list streams; FROM unnest(…) materialises the rows first and
// spills past work_mem on large batches.
const insertSQL = `
INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
SELECT unnest($1::uuid[]), unnest($2::uuid[]), unnest($3::text[]), unnest($4::text[]), unnest($5::text[]), unnest($6::jsonb[]), unnest($7::timestamptz[])
ON CONFLICT DO NOTHING`

// columnArrays are the rows as the seven column arrays of insertSQL (and of
// notifyd_insert_each), in the types pgx encodes fastest: uuid.UUID would
// go through its string form, twenty times slower.
func columnArrays(rows []notification.Notification) []any {
	ids := make([][16]byte, len(rows))
	users := make([][16]byte, len(rows))
	types := make([]string, len(rows))
	titles := make([]string, len(rows))
	bodies := make([]string, len(rows))
	data := make([][]byte, len(rows))
	created := make([]pgtype.Timestamptz, len(rows))
	for i := range rows {
		r := &rows[i]
		ids[i], users[i], types[i], titles[i], bodies[i], data[i] =
			r.ID, r.UserID, r.EventType, r.Title, r.Body, r.Data
		created[i] = pgtype.Timestamptz{Time: r.CreatedAt, Valid: true}
	}
	return []any{ids, users, types, titles, bodies, data, created}
}

// windowProbeSQL finds the rows of a batch whose id is already stored with
// a different created_at no further away than the window: through the
// primary-key index of each partition the window reaches.
const windowProbeSQL = `
SELECT id, created_at FROM notifications
WHERE id = ANY($1::uuid[]) AND created_at >= $2 AND created_at <= $3`

// screenWindow marks in drop the rows that may carry another created_at
// than an earlier copy (CreatedAtMayDiffer) and whose id is stored, or
// earlier in the batch, within the dedupe window. A batch without such rows
// costs nothing.
func (s *Store) screenWindow(ctx context.Context, rows []notification.Notification, drop map[int]bool, out *screened) error {
	var ids [][16]byte
	var lo, hi time.Time
	for i := range rows {
		if r := &rows[i]; r.CreatedAtMayDiffer && !drop[i] {
			if len(ids) == 0 {
				lo, hi = r.CreatedAt, r.CreatedAt
			}
			ids = append(ids, r.ID)
			lo, hi = minTime(lo, r.CreatedAt), maxTime(hi, r.CreatedAt)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	w := s.cfg.dedupeWindow()
	within := func(a, b time.Time) bool { d := a.Sub(b); return d <= w && d >= -w }
	dbRows, err := s.pool.Query(ctx, windowProbeSQL, ids, lo.Add(-w), hi.Add(w))
	if err != nil {
		return fmt.Errorf("look for duplicates within the dedupe window: %w", err)
	}
	// earlier holds the created_at of the copies of each probed id that
	// come first: stored, then kept in this batch. Only a probed row can be
	// dropped, so only probed ids need their copies known.
	earlier := make(map[[16]byte][]time.Time, len(ids))
	for _, id := range ids {
		earlier[id] = nil
	}
	var id [16]byte
	var c time.Time
	_, err = pgx.ForEachRow(dbRows, []any{&id, &c}, func() error {
		earlier[id] = append(earlier[id], c)
		return nil
	})
	if err != nil {
		return fmt.Errorf("look for duplicates within the dedupe window: %w", err)
	}
	for i := range rows {
		r := &rows[i]
		copies, probed := earlier[r.ID]
		if drop[i] || !probed {
			continue
		}
		if r.CreatedAtMayDiffer {
			for _, c := range copies {
				// The same created_at is left to the primary key, which counts it.
				if !c.Equal(r.CreatedAt) && within(c, r.CreatedAt) {
					drop[i] = true
					out.windowed++
					break
				}
			}
		}
		if !drop[i] {
			earlier[r.ID] = append(copies, r.CreatedAt)
		}
	}
	return nil
}

// screened is a batch's rows less those screen took out.
type screened struct {
	rows     []notification.Notification
	orig     []int // index in the batch of each kept row; nil when all were kept
	expired  int   // older than the retention
	windowed int   // duplicates of another created_at within the dedupe window
}

// screen takes out of rows the ones older than the retention (not stored,
// not an error) and the ones whose id is already stored, or earlier in the
// batch, with another created_at within the dedupe window. It reads only
// committed rows: two writers inserting one id with two created_at at the
// same moment may both succeed.
func (s *Store) screen(ctx context.Context, rows []notification.Notification) (screened, error) {
	out := screened{rows: rows}
	drop := make(map[int]bool)
	if s.cfg.Retention > 0 {
		cutoff := s.now().Add(-s.cfg.Retention)
		for i := range rows {
			if rows[i].CreatedAt.Before(cutoff) {
				drop[i] = true
				out.expired++
			}
		}
	}
	if err := s.screenWindow(ctx, rows, drop, &out); err != nil {
		return out, err
	}
	if len(drop) == 0 {
		return out, nil
	}
	out.rows = make([]notification.Notification, 0, len(rows)-len(drop))
	out.orig = make([]int, 0, len(rows)-len(drop))
	for i := range rows {
		if !drop[i] {
			out.rows = append(out.rows, rows[i])
			out.orig = append(out.orig, i)
		}
	}
	return out, nil
}

// LatestQuery is "a user's latest 20" as the user-facing service should ask
// it ($1 the user), as a prepared statement: it reads the partitions newest
// first through notifications_user_latest and stops once it has 20 rows
// (docs/architecture.md, "Reads").
//
// The limit is a constant, not a parameter: planning the query costs more
// than running it (every partition is planned), and with a constant limit
// the server keeps one generic plan for the prepared statement after its
// fifth run (plan_cache_mode auto). With LIMIT $2 the generic plan's cost
// is estimated for an unknown limit, the server finds it dearer than a
// custom plan and plans every execution again.
const LatestQuery = `SELECT id, event_type, title, body, data, created_at FROM notifications
WHERE user_id = $1 ORDER BY created_at DESC LIMIT 20`

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
