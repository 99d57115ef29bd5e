package pipeline

import (
	"context"
	"testing"
	"time"
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
