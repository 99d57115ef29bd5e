package pipeline

import (
	"testing"
	"time"
)

// lockOffsetRow holds the lock of partition part's offset row in a
// connection of its own, so that every write of that partition blocks (and
// only of that one); the returned function releases it.
func (e *env) lockOffsetRow(part int32) (release func()) {
	e.t.Helper()
	return e.holdInTx(`SELECT 1 FROM notifyd_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE`,
		e.cfg.Group, testTopic, part)
}

// A partition whose writes keep failing is set aside: its buffer is kept
// and retried alone, while the other partitions, those of its own writer
// included, go on being written. Once it can be written, it is, and every
// message is stored once.
func TestPartitionThatCannotBeWrittenIsSetAsideWhileTheOthersFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quickFailure(&e.cfg)
	e.cfg.WriteTimeout = 300 * time.Millisecond
	e.cfg.Writers = 2 // partitions 0 and 2 share writer 0
	r := e.start()
	sent := makeMsgs(0, 30)
	e.produceMsgs(sent)
	e.waitRows(30, 30*time.Second)

	release := e.lockOffsetRow(0)
	stuck := e.storedOffsets()[0]
	// Rounds of new messages on every partition: partitions 1 and 2 are
	// stored round after round while partition 0 cannot be.
	for round := range 4 {
		more := makeMsgs(100+30*round, 30)
		e.produceMsgs(more)
		sent = append(sent, more...)
		end := e.endOffsets(testTopic)
		pollUntil(t, 20*time.Second, "partitions 1 and 2 stored while partition 0 is locked", func() bool {
			got := e.storedOffsets()
			return got[1] == end[1] && got[2] == end[2]
		})
		if got := e.storedOffsets()[0]; got != stuck {
			t.Fatalf("partition 0 moved from %d to %d while its offset row is locked", stuck, got)
		}
	}
	// Partition 0 alone fails for a while, with nothing else to write.
	time.Sleep(4 * time.Second)
	more := makeMsgs(500, 30)
	e.produceMsgs(more)
	sent = append(sent, more...)
	end := e.endOffsets(testTopic)
	began := time.Now()
	pollUntil(t, 20*time.Second, "partitions 1 and 2 stored after partition 0 failed alone", func() bool {
		got := e.storedOffsets()
		return got[1] == end[1] && got[2] == end[2]
	})
	t.Logf("partitions 1 and 2 stored %s after partition 0 failed alone for 4 s", time.Since(began).Round(time.Millisecond))
	if n := r.metric("notifyd_partitions_set_aside_total"); n < 1 {
		t.Fatalf("notifyd_partitions_set_aside_total: got %v, want at least 1", n)
	}
	stillRunning(t, r)

	release()
	// A dead letter too, which the relay publishes although its round
	// (2 × the write timeout) is shorter than franz-go's least delivery
	// timeout.
	e.produce(1, []byte("not json"))
	pollUntil(t, 10*time.Second, "the dead letter in the dead-letter topic", func() bool {
		n := int64(0)
		for _, o := range e.endOffsets(dlqTopic) {
			n += o
		}
		return n == 1
	})
	e.waitRows(len(sent), 30*time.Second)
	e.checkTable(sent)
	e.waitStoredOffsets(e.endOffsets(testTopic), 10*time.Second)
}
