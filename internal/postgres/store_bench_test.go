package postgres

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"

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
			reject := func(context.Context, []Rejected) error { return fmt.Errorf("unexpected reject") }
			for b.Loop() {
				for i := range rows {
					seq++
					binary.BigEndian.PutUint64(rows[i].ID[8:], seq) // a new id each time
				}
				to := max(from, 0) + int64(n)
				res, err := st.Write(ctx, &Batch{Group: "bench", Topic: "t", Ranges: []Range{{0, from, to}}, Rows: rows}, reject)
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
