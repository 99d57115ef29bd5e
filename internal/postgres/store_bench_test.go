package postgres

import (
	"context"
	"encoding/binary"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
)

// BenchmarkStoreWrite measures the production write path, Store.Write, as
// the pipeline calls it: one transaction moving one partition's offset and
// writing n new rows. ms/tx at 1,000 and 10,000 rows are the task's batch
// flush goals (under 50 ms and 200 ms).
func BenchmarkStoreWrite(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("rows=%d", n), func(b *testing.B) {
			ctx := context.Background()
			st, err := Open(ctx, Config{URL: pgtest.Schema(b)})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Migrate(ctx); err != nil {
				b.Fatal(err)
			}
			if _, err := st.Claim(ctx, "bench", "t", []int32{0}); err != nil {
				b.Fatal(err)
			}
			rows := testRows(n)
			from, seq := NoOffset, uint64(0)
			for b.Loop() {
				for i := range rows {
					seq++
					binary.BigEndian.PutUint64(rows[i].ID[8:], seq) // a new id each time
				}
				to := max(from, 0) + int64(n)
				res, err := st.Write(ctx, &Batch{Group: "bench", Topic: "t", Ranges: []Range{{0, from, to}}, Rows: rows})
				if err != nil || res.Inserted != n {
					b.Fatalf("write: %+v, %v", res, err)
				}
				from = to
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/tx")
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkStoreWriteHistory measures Store.Write of new rows (created now,
// new ids) into a table holding a week of history, 100,000 rows a day in
// daily partitions, and, apart, the dedupe-window probe that screen runs
// before each write (the share of the write it costs) when one row in five
// carries an id but no created_at, as loadgen makes them.
func BenchmarkStoreWriteHistory(b *testing.B) {
	ctx := context.Background()
	st, err := Open(ctx, Config{URL: pgtest.Schema(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	st.now = func() time.Time { return now.Add(-8 * 24 * time.Hour) }
	if _, err := st.Maintain(ctx); err != nil {
		b.Fatal(err)
	}
	st.now = func() time.Time { return now }
	if _, err := st.Maintain(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `
		INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
		SELECT gen_random_uuid(), gen_random_uuid(), 'comment.created', 'title', 'body of the notification', '{"k": 1}',
		       now() - (i * interval '7 days' / 700000)
		FROM generate_series(1, 700000) AS i`); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, "VACUUM ANALYZE notifications"); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Claim(ctx, "bench", "t", []int32{0}); err != nil {
		b.Fatal(err)
	}
	from := NoOffset
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("rows=%d", n), func(b *testing.B) {
			rows := testRows(n)
			var probe time.Duration
			for b.Loop() {
				for i := range rows {
					rows[i].ID = uuid.New()
					rows[i].CreatedAt = time.Now().Truncate(time.Microsecond)
					rows[i].CreatedAtMayDiffer = i%5 == 0
				}
				start := time.Now()
				if _, err := st.screen(ctx, rows); err != nil {
					b.Fatal(err)
				}
				probe += time.Since(start)
				to := max(from, 0) + int64(n)
				res, err := st.Write(ctx, &Batch{Group: "bench", Topic: "t", Ranges: []Range{{0, from, to}}, Rows: rows})
				if err != nil || res.Inserted != n {
					b.Fatalf("write: %+v, %v", res, err)
				}
				from = to
			}
			b.ReportMetric(float64(probe.Microseconds())/1000/float64(b.N), "probe-ms/tx")
			b.ReportMetric((float64(b.Elapsed().Microseconds())/1000-float64(probe.Microseconds())/1000)/float64(b.N), "write-ms/tx")
		})
	}
}

// BenchmarkAllRefused measures a write whose every row the database
// refuses: each row isolated and recorded as a dead letter. It reports
// rows per second.
func BenchmarkAllRefused(b *testing.B) {
	url := pgtest.Schema(b)
	st, err := Open(context.Background(), Config{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, "ALTER TABLE notifications ADD CONSTRAINT no_bad CHECK (title <> 'BAD')"); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Claim(ctx, "bench", "t", []int32{0}); err != nil {
		b.Fatal(err)
	}
	const n = 2500
	from := NoOffset
	rows := 0
	for b.Loop() {
		batch := make([]notification.Notification, n)
		for i := range batch {
			batch[i] = notification.Notification{ID: uuid.New(), UserID: uuid.New(), EventType: "e", Title: "BAD", Body: "b",
				CreatedAt: time.Now()}
		}
		to := max(from, 0) + n
		res, err := st.Write(ctx, &Batch{Group: "bench", Topic: "t", DLQTopic: "d", Ranges: []Range{{0, from, to}}, Rows: batch,
			Refused: func(i int, err error) DeadLetter {
				return DeadLetter{Topic: "t", Offset: int64(i), Class: "store", Reason: err.Error(), Value: []byte("v")}
			}})
		if err != nil || res.Rejected != n {
			b.Fatalf("write: %+v, %v", res, err)
		}
		from = to
		rows += n
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkScreen measures screen, the dedupe-window probe a write runs
// first, for a batch of the drain's mean size (1,700 rows, one in five
// marked CreatedAtMayDiffer, as loadgen makes them) against a table holding
// none of their ids: what it costs this process (cpu-us/op, user and system
// time of the whole process over the loop) beside the round trip.
func BenchmarkScreen(b *testing.B) {
	ctx := context.Background()
	st, err := Open(ctx, Config{URL: pgtest.Schema(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	rows := testRows(1700)
	now := time.Now().Truncate(time.Microsecond)
	for i := range rows {
		rows[i].CreatedAt = now
		rows[i].CreatedAtMayDiffer = i%5 == 0
	}
	cpu0 := processCPU(b)
	for b.Loop() {
		sc, err := st.screen(ctx, rows)
		if err != nil || len(sc.rows) != len(rows) {
			b.Fatalf("screen: %d rows kept of %d, %v", len(sc.rows), len(rows), err)
		}
	}
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}

// processCPU is the user and system time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
