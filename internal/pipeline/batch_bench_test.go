package pipeline

import (
	"io"
	"log/slog"
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

	p := &Pipeline{
		cfg:   Config{}.withDefaults(),
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		m:     newMetrics(nil),
		ready: make(chan struct{}, 1),
		space: make(chan struct{}, 1),
		parts: map[int32]*partition{0: {}, 1: {}, 2: {}},
	}
	b.ReportAllocs()
	for b.Loop() {
		if n := p.add(fetches); n != perFetch {
			b.Fatalf("add kept %d records, want %d", n, perFetch)
		}
		if bt := p.take("size"); bt == nil || len(bt.stamps) != perFetch {
			b.Fatal("take returned a short batch")
		}
		p.endWrite()
	}
	b.ReportMetric(float64(perFetch*b.N)/b.Elapsed().Seconds(), "msgs/s")
}
