package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A stored position past the end of the log (the topic was deleted and
// created again, or the broker lost its data) must not make notifyd skip
// the new messages as "already stored": the partition is read again from
// the start offset and every new message is stored.
func TestStoredPositionPastLogEndReadsPartitionAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.store.Claim(ctx, e.cfg.Group, testTopic, []int32{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Pool().Exec(ctx, "UPDATE notifyd_offsets SET next_offset = 1000"); err != nil {
		t.Fatal(err)
	}
	msgs := make([]msg, 30)
	for i := range msgs {
		msgs[i] = newMsg(i)
	}
	e.produceMsgs(msgs)
	e.start()
	e.waitRows(len(msgs), 30*time.Second)
	e.checkTable(msgs)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := e.storedOffsets()
		if got[0] == 10 && got[1] == 10 && got[2] == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored offsets: got %v, want 10 for each partition", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Behaviour 6 (bounds): the check fails closed. While the brokers cannot
// answer for the partitions' offsets, the check is asked again rather than
// skipped, so a stored position past the end of the log still does not
// make notifyd skip the new messages.
func TestBoundsCheckFailsClosed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quickFailure(&e.cfg)
	ctx := context.Background()
	if _, err := e.store.Claim(ctx, e.cfg.Group, testTopic, []int32{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Pool().Exec(ctx, "UPDATE notifyd_offsets SET next_offset = 1000"); err != nil {
		t.Fatal(err)
	}
	msgs := makeMsgs(0, 30)
	e.produceMsgs(msgs)
	faults := e.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.ListOffsets}, Topic: testTopic, Err: kerr.UnknownServerError, Count: 4})
	r := e.start()
	e.waitRows(len(msgs), 30*time.Second)
	e.checkTable(msgs)
	if faults.Hits() == 0 {
		t.Fatalf("list offsets faults: got 0 hits, want some")
	}
	if got := r.metric("notifyd_retries_total", "target", "kafka"); got == 0 {
		t.Fatalf("retries of the bounds check: got 0, want some")
	}
	e.waitStoredOffsets(map[int32]int64{0: 10, 1: 10, 2: 10}, 10*time.Second)
}
