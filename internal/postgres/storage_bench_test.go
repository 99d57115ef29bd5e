package postgres

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
)

// writeLoop writes batches of n new rows, created now, as fast as it can
// until stop closes, and records when each write started and how long it
// took.
type writeLoop struct {
	// schema1 writes as the notifyd of schema 1 did (rows and the offset
	// move, no writer token): the writers that run while an upgrade does.
	schema1 bool

	mu     sync.Mutex
	starts []time.Time
	took   []time.Duration
	err    error
}

func (w *writeLoop) run(ctx context.Context, st *Store, n int, stop <-chan struct{}) {
	rows := testRows(n)
	from := NoOffset
	if _, err := st.Claim(ctx, "bench", "t", []int32{0}); err != nil {
		w.err = err
		return
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		c := st.now().Truncate(time.Microsecond)
		for i := range rows {
			rows[i].ID, rows[i].CreatedAt = uuid.New(), c
		}
		to := max(from, 0) + int64(n)
		t := time.Now()
		var err error
		if w.schema1 {
			err = writeAsSchema1(ctx, st, from, to, rows)
		} else {
			_, err = st.Write(ctx, &Batch{Group: "bench", Topic: "t", Ranges: []Range{{0, from, to}}, Rows: rows})
		}
		d := time.Since(t)
		w.mu.Lock()
		w.starts, w.took = append(w.starts, t), append(w.took, d)
		if err != nil && w.err == nil {
			w.err = err
		}
		w.mu.Unlock()
		if err != nil {
			return
		}
		from = to
	}
}

// writeAsSchema1 is one write of the notifyd of schema 1: the offset moved
// from its expected value and the rows inserted, in one transaction.
func writeAsSchema1(ctx context.Context, st *Store, from, to int64, rows []notification.Notification) error {
	return pgx.BeginFunc(ctx, st.Pool(), func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE notifyd_offsets SET next_offset = $2 WHERE consumer_group = 'bench' AND topic = 't' AND partition = 0 AND next_offset = $1`, from, to)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("offset of bench/t/0 is not %d", from)
		}
		_, err = tx.Exec(ctx, `INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
			SELECT unnest($1::uuid[]), unnest($2::uuid[]), unnest($3::text[]), unnest($4::text[]), unnest($5::text[]), unnest($6::jsonb[]), unnest($7::timestamptz[])
			ON CONFLICT DO NOTHING`, columnArrays(rows)...)
		return err
	})
}

// stats are the max and p99 of the writes that overlapped [from, to).
func (w *writeLoop) stats(from, to time.Time) (n int, p50, p99, mx time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ds []time.Duration
	for i, s := range w.starts {
		if s.Add(w.took[i]).After(from) && s.Before(to) {
			ds = append(ds, w.took[i])
		}
	}
	if len(ds) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(ds)
	return len(ds), ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)], ds[len(ds)-1]
}

// BenchmarkMaintenanceUnderIngest writes 1,000-row batches at full speed
// and, after a quiet phase, runs rounds of maintenance that each make a
// partition ahead and drop one for retention (the clock moves a day per
// round). It reports the writes' p50/p99/max in both phases and the
// longest time a maintenance transaction held the lock writers wait for.
func BenchmarkMaintenanceUnderIngest(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		st, err := Open(ctx, Config{URL: pgtest.Schema(b), Retention: 72 * time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		var mu sync.Mutex
		now := time.Now()
		st.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		if _, err := st.Migrate(ctx); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Maintain(ctx); err != nil {
			b.Fatal(err)
		}
		var w writeLoop
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { w.run(ctx, st, 1000, stop) })
		q0 := time.Now()
		time.Sleep(3 * time.Second)
		m0 := time.Now()
		var held time.Duration
		var rounds int
		for range 20 {
			mu.Lock()
			now = now.Add(24 * time.Hour)
			mu.Unlock()
			created, _, h1, err := st.makeAhead(ctx)
			if err != nil {
				b.Fatal(err)
			}
			_, h2, err := st.dropExpired(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if len(created) > 0 {
				rounds++
			}
			b.Logf("held: split %v, retention %v", h1, h2)
			held = max(held, h1, h2)
			time.Sleep(150 * time.Millisecond)
		}
		m1 := time.Now()
		close(stop)
		wg.Wait()
		if w.err != nil {
			b.Fatal(w.err)
		}
		n, p50, p99, mx := w.stats(q0, m0)
		b.Logf("quiet: %d writes, p50 %v p99 %v max %v", n, p50, p99, mx)
		b.ReportMetric(float64(mx.Microseconds())/1000, "quiet-max-ms")
		n, p50, p99, mx = w.stats(m0, m1)
		b.Logf("maintenance (%d rounds made partitions): %d writes, p50 %v p99 %v max %v; longest lock held %v", rounds, n, p50, p99, mx, held)
		b.ReportMetric(float64(p99.Microseconds())/1000, "maint-p99-ms")
		b.ReportMetric(float64(mx.Microseconds())/1000, "maint-max-ms")
		b.ReportMetric(float64(held.Microseconds())/1000, "lock-held-max-ms")
		st.Close()
	}
}

// BenchmarkUpgradeFromSchema1 fills a schema-1 table with
// NOTIFYD_BENCH_UPGRADE_ROWS rows (default 200,000) over 58 days, then
// migrates it while a writer writes 100-row batches into it, and reports
// the migration's time and the longest write (how long ingest was held).
func BenchmarkUpgradeFromSchema1(b *testing.B) {
	n := 200_000
	if v := os.Getenv("NOTIFYD_BENCH_UPGRADE_ROWS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	for b.Loop() {
		url := pgtest.Schema(b)
		st, err := Open(ctx, Config{URL: url, MaxConns: 8})
		if err != nil {
			b.Fatal(err)
		}
		ms, _ := migrations()
		t0 := time.Now()
		for _, q := range []string{ms[0].sql,
			`CREATE TABLE notifyd_schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
			`INSERT INTO notifyd_schema_version (version, name) VALUES (1, '0001_notifications.sql')`,
		} {
			if _, err := st.Pool().Exec(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		// Rows of the size loadgen makes (a title of ~40 and a body of ~250
		// characters, a small data object), in created_at order.
		if _, err := st.Pool().Exec(ctx, `
			INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
			SELECT gen_random_uuid(), ('00000000-0000-4000-8000-' || lpad(to_hex(i % 10000), 12, '0'))::uuid, 'comment.created',
			       'New comment on your post ' || i, repeat('lorem ipsum dolor sit amet ', 9) || i,
			       jsonb_build_object('url', 'https://example.com/p/' || i),
			       now() - interval '58 days' + i * interval '58 days' / $1
			FROM generate_series(1, $1) AS i`, n); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Pool().Exec(ctx, "VACUUM ANALYZE notifications"); err != nil {
			b.Fatal(err)
		}
		b.Logf("schema 1 with %d rows made in %v", n, time.Since(t0).Round(time.Second))

		w := writeLoop{schema1: true}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { w.run(ctx, st, 100, stop) })
		time.Sleep(2 * time.Second)
		m0 := time.Now()
		if _, err := st.Migrate(ctx); err != nil {
			b.Fatal(err)
		}
		m1 := time.Now()
		if _, err := st.Maintain(ctx); err != nil {
			b.Fatal(err)
		}
		m2 := time.Now()
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		if w.err != nil {
			b.Fatal(w.err)
		}
		var rows int
		if err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM notifications").Scan(&rows); err != nil {
			b.Fatal(err)
		}
		wn, _, _, _ := w.stats(time.Time{}, time.Now())
		if rows != n+wn*100 {
			b.Fatalf("rows after the upgrade: got %d, want %d", rows, n+wn*100)
		}
		cnt, p50, _, mx := w.stats(m0, m1)
		b.Logf("migrate of %d rows: %v; first maintenance %v; %d writes during it, p50 %v, longest %v",
			n, m1.Sub(m0).Round(time.Millisecond), m2.Sub(m1).Round(time.Millisecond), cnt, p50, mx)
		b.ReportMetric(m1.Sub(m0).Seconds(), "migrate-s")
		b.ReportMetric(float64(mx.Milliseconds()), "longest-write-ms")
		st.Close()
	}
}
