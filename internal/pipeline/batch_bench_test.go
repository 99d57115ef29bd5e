package pipeline

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/loadgen"
)

// BenchmarkBatch measures the consume side of a batch without Kafka or
// PostgreSQL: decoding fetched records into partition buffers (add) and
// turning the buffers into a write batch (take), per message.
func BenchmarkBatch(b *testing.B) {
	const perFetch = 1000
	gen := loadgen.New(1, 0)
	recs := make([]*kgo.Record, perFetch)
	for i := range recs {
		v, _ := gen.Next()
		recs[i] = &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Offset: int64(i / 3), Value: v, Timestamp: time.Now()}
	}
	byPart := map[int32][]*kgo.Record{}
	for _, r := range recs {
		byPart[r.Partition] = append(byPart[r.Partition], r)
	}
	var ft kgo.FetchTopic
	ft.Topic = testTopic
	for p, rs := range byPart {
		ft.Partitions = append(ft.Partitions, kgo.FetchPartition{Partition: p, Records: rs, HighWatermark: rs[len(rs)-1].Offset + 1})
	}
	fetches := kgo.Fetches{{Topics: []kgo.FetchTopic{ft}}}

	c := bare(map[int32]*partition{0: {}, 1: {}, 2: {}})
	w := c.p.writers[0]
	b.ReportAllocs()
	for b.Loop() {
		if n := c.add(fetches); n != perFetch {
			b.Fatalf("add kept %d records, want %d", n, perFetch)
		}
		bt := c.take(w, true, false, time.Now())
		if bt == nil || len(c.p.sql(w, bt).Rows) != perFetch {
			b.Fatal("take returned a short batch")
		}
		w.release()
		c.p.gate.end(bt.ids())
		w.batch = nil
	}
	b.ReportMetric(float64(perFetch*b.N)/b.Elapsed().Seconds(), "msgs/s")
}
