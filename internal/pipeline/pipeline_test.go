package pipeline

import (
	"testing"
	"time"
)

func TestFullFlowStoresEveryMessageExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.start()
	msgs := make([]msg, 1000)
	for i := range msgs {
		msgs[i] = newMsg(i)
	}
	e.produceMsgs(msgs)
	e.waitRows(len(msgs), 30*time.Second)
	e.checkTable(msgs)
	if err := r.stop(t); err != nil {
		t.Fatalf("stop: got %v, want nil", err)
	}
	got := e.storedOffsets()
	want := map[int32]int64{0: 334, 1: 333, 2: 333}
	for p, o := range want {
		if got[p] != o {
			t.Fatalf("stored offset of partition %d: got %d, want %d", p, got[p], o)
		}
	}
}
