package pipeline

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
)

// floodSize is how many messages a flood benchmark sends.
const floodSize = 20_000

// BenchmarkDeadLetterFlood measures input made only of invalid messages,
// end to end against kfake and the real PostgreSQL: from the start of the
// pipeline until every source position is stored and every dead letter is
// in the dead-letter topic. It reports invalid messages per second, and
// the rate at which their positions were stored (the input's pace).
func BenchmarkDeadLetterFlood(b *testing.B) {
	flood(b, nil, func(i int) []byte {
		return []byte(`{"user_id": "not a uuid", "n": ` + strconv.Itoa(i) + `}`)
	})
}

// BenchmarkRefusedByTheDatabaseFlood is the same for valid messages that
// the database refuses, every one (a CHECK constraint): each batch is
// isolated row by row inside the server (notifyd_insert_each) and every
// row becomes a dead letter of class store.
func BenchmarkRefusedByTheDatabaseFlood(b *testing.B) {
	flood(b, func(e *env) {
		if _, err := e.store.Pool().Exec(context.Background(),
			"ALTER TABLE notifications ADD CONSTRAINT no_bad CHECK (title <> 'BAD')"); err != nil {
			b.Fatal(err)
		}
	}, func(i int) []byte {
		return fmt.Appendf(nil, `{"id":%q,"user_id":%q,"event_type":"e","title":"BAD","body":"b %d"}`,
			uuid.NewString(), uuid.NewString(), i)
	})
}

// flood runs the pipeline over floodSize messages made by value, every one
// of which must become a dead letter, after prepare (if any) has changed
// the fresh database.
func flood(b *testing.B, prepare func(*env), value func(i int) []byte) {
	var took, stored time.Duration
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b)
		e.cfg.BatchSize = 500
		if prepare != nil {
			prepare(e)
		}
		recs := make([]*kgo.Record, floodSize)
		for i := range recs {
			recs[i] = &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Key: []byte("bad/" + strconv.Itoa(i)), Value: value(i)}
		}
		e.produceRecs(recs...)
		want := e.endOffsets(testTopic)
		b.StartTimer()
		start := time.Now()
		r := e.start()
		e.waitStoredOffsets(want, 5*time.Minute)
		stored += time.Since(start)
		for {
			total := int64(0)
			for _, o := range e.endOffsets(dlqTopic) {
				total += o
			}
			if total >= floodSize {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		took += time.Since(start)
		b.StopTimer()
		_ = r.stop(b)
		b.StartTimer()
	}
	n := float64(floodSize * b.N)
	b.ReportMetric(n/took.Seconds(), "msgs/s")
	b.ReportMetric(n/stored.Seconds(), "stored-msgs/s")
}
