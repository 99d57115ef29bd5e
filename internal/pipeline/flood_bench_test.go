package pipeline

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkDeadLetterFlood measures input made only of invalid messages,
// end to end against kfake and the real PostgreSQL: from the start of the
// pipeline until every source position is stored and every dead letter is
// in the dead-letter topic. It reports invalid messages per second, and
// the rate at which their positions were stored (the input's pace).
func BenchmarkDeadLetterFlood(b *testing.B) {
	const n = 20_000
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b)
		e.cfg.BatchSize = 500
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Key: []byte("bad/" + strconv.Itoa(i)),
				Value: []byte(`{"user_id": "not a uuid", "n": ` + strconv.Itoa(i) + `}`)}
		}
		e.produceRecs(recs...)
		want := e.endOffsets(testTopic)
		b.StartTimer()
		start := time.Now()
		r := e.start()
		e.waitStoredOffsets(want, 5*time.Minute)
		stored := time.Since(start)
		for {
			total := int64(0)
			for _, o := range e.endOffsets(dlqTopic) {
				total += o
			}
			if total >= n {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(start)
		b.StopTimer()
		writes := r.metric("notifyd_batch_size")
		_ = r.stop(b)
		_ = context.Background()
		b.ReportMetric(float64(n)/took.Seconds(), "msgs/s")
		b.ReportMetric(float64(n)/stored.Seconds(), "stored-msgs/s")
		b.ReportMetric(writes, "writes")
		b.StartTimer()
	}
}
