package pipeline

import (
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/postgres"
)

// bare is a consume goroutine's state with no Kafka client or store, for
// the buffer alone, with one writer.
func bare(parts map[int32]*partition) *core {
	p := &Pipeline{
		cfg: Config{Topic: testTopic, Writers: 1}.withDefaults(),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		m:   newMetrics(nil, func() float64 { return 0 }, func() postgres.FilterStats { return postgres.FilterStats{} }),
	}
	p.gate.init()
	p.writers = []*writer{{in: make(chan *batch, 1)}}
	c := newCore(p)
	c.parts = parts
	return c
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
	if r := p.room(); r != p.p.cfg.MaxBufferedRows-3 {
		t.Fatalf("room: got %d, want %d", r, p.p.cfg.MaxBufferedRows-3)
	}
	w := p.p.writers[0]
	if b := p.take(w, false, false, time.Now()); b != nil {
		t.Fatalf("take with partitions not caught up and below the batch size: got a batch (%s), want none", b.trigger)
	}
	b := p.take(w, false, true, time.Now())
	if b == nil {
		t.Fatal("take at shutdown returned nothing")
	}
	sb := p.p.sql(w, b)
	if len(sb.Rows) != 2 || len(sb.Dead) != 1 || b.messages() != 3 {
		t.Fatalf("batch: got %d rows, %d dead letters, %d messages, want 2, 1, 3", len(sb.Rows), len(sb.Dead), b.messages())
	}
	want := []postgres.Range{{Partition: 0, From: 10, To: 12}, {Partition: 1, From: postgres.NoOffset, To: 1}}
	if !slices.Equal(sb.Ranges, want) {
		t.Fatalf("ranges: got %v, want %v (in partition order)", sb.Ranges, want)
	}
	if d := sb.Dead[0]; d.Class != "decode" || d.Partition != 0 || d.Offset != 11 || string(d.Value) != "not json" || d.Reason == "" {
		t.Fatalf("dead letter: got %+v, want class decode, 0/11, the value unchanged and a reason", d)
	}
	if p.rows != 0 || p.bytes != 0 {
		t.Fatalf("buffer after take: got %d rows, %d bytes, want 0", p.rows, p.bytes)
	}
	if p.take(w, true, true, time.Now()) != nil {
		t.Fatal("second take of an empty buffer returned a batch")
	}
}

// A partition being re-read after a fenced write drops what it fetched
// until the fetch position has moved; the buffer bound counts rows and
// bytes.
func TestBatchDropsReseekingPartitionAndHonoursBounds(t *testing.T) {
	t.Parallel()
	p := bare(map[int32]*partition{0: {gen: 1, stored: 0, reseek: true}, 1: {gen: 1, stored: 0}})
	p.p.cfg.MaxBufferedRows = 2
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
	p.p.cfg.MaxBufferedRows, p.p.cfg.MaxBufferedBytes = 100, p.bytes
	if r := p.room(); r != 0 {
		t.Fatalf("room at the byte bound: got %d, want 0", r)
	}
}
