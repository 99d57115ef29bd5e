package pipeline

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/postgres"
)

// bare is a pipeline with no Kafka client or store, for the buffer alone.
func bare(parts map[int32]*partition) *Pipeline {
	return &Pipeline{
		cfg:   Config{Topic: testTopic}.withDefaults(),
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		m:     newMetrics(nil),
		ready: make(chan struct{}, 1),
		space: make(chan struct{}, 1),
		parts: parts,
	}
}

func fetchOf(hwm int64, recs ...*kgo.Record) kgo.Fetches {
	byPart := map[int32][]*kgo.Record{}
	var order []int32
	for _, r := range recs {
		if byPart[r.Partition] == nil {
			order = append(order, r.Partition)
		}
		byPart[r.Partition] = append(byPart[r.Partition], r)
	}
	ft := kgo.FetchTopic{Topic: testTopic}
	for _, p := range order {
		ft.Partitions = append(ft.Partitions, kgo.FetchPartition{Partition: p, Records: byPart[p], HighWatermark: hwm})
	}
	return kgo.Fetches{{Topics: []kgo.FetchTopic{ft}}}
}

func rec(part int32, off int64, value []byte) *kgo.Record {
	return &kgo.Record{Topic: testTopic, Partition: part, Offset: off, Value: value, Timestamp: time.Now()}
}

// TestBatchAddAndTake: records are decoded into their partitions' buffers
// (bad ones kept as dead letters), counted against the bounds, and taken
// as one batch whose ranges run from each partition's stored position to
// the offset after its last record.
func TestBatchAddAndTake(t *testing.T) {
	t.Parallel()
	p := bare(map[int32]*partition{0: {gen: 1, stored: 10, floor: 10}, 1: {gen: 1, stored: postgres.NoOffset, floor: postgres.NoOffset}, 2: {gen: 1, stored: 5, floor: 5}})
	got := p.add(fetchOf(100,
		rec(0, 8, newMsg(0).value()),  // below the stored position: dropped
		rec(0, 10, newMsg(1).value()), // kept
		rec(0, 11, []byte("not json")),
		rec(1, 0, newMsg(2).value()),
		rec(7, 0, newMsg(3).value()), // a partition not held: dropped
	))
	if got != 3 {
		t.Fatalf("add kept %d records, want 3", got)
	}
	if p.rows != 3 || p.bytes == 0 {
		t.Fatalf("buffer: got %d rows, %d bytes, want 3 rows and some bytes", p.rows, p.bytes)
	}
	if r := p.room(); r != p.cfg.MaxBufferedRows-3 {
		t.Fatalf("room: got %d, want %d", r, p.cfg.MaxBufferedRows-3)
	}
	if trig := p.trigger(false); trig != "" {
		t.Fatalf("trigger with partitions not caught up: got %q, want none", trig)
	}
	b := p.take("size")
	if b == nil {
		t.Fatal("take returned nothing")
	}
	defer p.endWrite()
	if len(b.rows) != 2 || len(b.dead) != 1 || len(b.stamps) != 3 {
		t.Fatalf("batch: got %d rows, %d dead letters, %d stamps, want 2, 1, 3", len(b.rows), len(b.dead), len(b.stamps))
	}
	want := map[int32]postgres.Range{0: {Partition: 0, From: 10, To: 12}, 1: {Partition: 1, From: postgres.NoOffset, To: 1}}
	if len(b.ranges) != len(want) {
		t.Fatalf("ranges: got %v, want %v", b.ranges, want)
	}
	for _, r := range b.ranges {
		if r != want[r.Partition] {
			t.Fatalf("range of partition %d: got %+v, want %+v", r.Partition, r, want[r.Partition])
		}
	}
	if c, _ := dlq.Header(b.dead[0], dlq.HeaderClass); c != "decode" {
		t.Fatalf("dead letter class: got %q, want decode", c)
	}
	if p.rows != 0 || p.bytes != 0 {
		t.Fatalf("buffer after take: got %d rows, %d bytes, want 0", p.rows, p.bytes)
	}
	if p.take("size") != nil {
		t.Fatal("second take of an empty buffer returned a batch")
	}
}

// A partition being re-read after a fenced write drops what it fetched
// until the fetch position has moved; the buffer bound counts rows and
// bytes.
func TestBatchDropsReseekingPartitionAndHonoursBounds(t *testing.T) {
	t.Parallel()
	p := bare(map[int32]*partition{0: {gen: 1, stored: 0, reseek: true}, 1: {gen: 1, stored: 0}})
	p.cfg.MaxBufferedRows = 2
	if got := p.add(fetchOf(10, rec(0, 0, newMsg(0).value()), rec(1, 0, newMsg(1).value()))); got != 1 {
		t.Fatalf("add kept %d records, want 1 (partition 0 is re-seeking)", got)
	}
	if r := p.room(); r != 1 {
		t.Fatalf("room with 1 of 2 rows: got %d, want 1", r)
	}
	p.add(fetchOf(10, rec(1, 1, newMsg(2).value())))
	if r := p.room(); r != 0 {
		t.Fatalf("room with 2 of 2 rows: got %d, want 0", r)
	}
	p.cfg.MaxBufferedRows, p.cfg.MaxBufferedBytes = 100, p.bytes
	if r := p.room(); r != 0 {
		t.Fatalf("room at the byte bound: got %d, want 0", r)
	}
}
