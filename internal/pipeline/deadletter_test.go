package pipeline

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
)

// setTopicConfig sets one config of topic on the cluster.
func (e *env) setTopicConfig(topic, key, value string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(e.prod).AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: key, Value: &value}}, topic)
	if err == nil {
		_, err = resp.On(topic, nil)
	}
	if err == nil {
		for _, r := range resp {
			if r.Err != nil {
				err = r.Err
			}
		}
	}
	if err != nil {
		e.t.Fatalf("set %s of %s to %s: %v", key, topic, value, err)
	}
}

// bigProducer is a producer that may send records of up to limit bytes.
func (e *env) bigProducer(limit int32) *kgo.Client {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.addrs...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(limit))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(cl.Close)
	return cl
}

// poison sends, on every partition, valid messages around one invalid
// record of size bytes on partition 0, and returns the valid messages and
// the invalid record.
func (e *env) poison(cl *kgo.Client, size int) ([]msg, *kgo.Record) {
	e.t.Helper()
	value := append([]byte(`{"user_id": "`), bytes.Repeat([]byte("x"), size-15)...)
	value = append(value, `"}`...) // valid JSON, not a UUID
	bad := &kgo.Record{Topic: testTopic, Partition: 0, Key: []byte("poison"), Value: value}
	var valid []msg
	var recs []*kgo.Record
	for i := range 60 {
		if i == 10 {
			recs = append(recs, bad)
		}
		m := newMsg(i)
		valid = append(valid, m)
		recs = append(recs, &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Value: m.value()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, r := range recs {
		// One at a time: the large record alone fills a batch.
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			e.t.Fatalf("produce %d bytes: %v", len(r.Value), err)
		}
	}
	return valid, bad
}

// deadLetteredOnce asserts that src was dead-lettered exactly once, in the
// topic or kept in the table, with its exact bytes and a first attempt,
// and returns where.
func (e *env) deadLetteredOnce(src *kgo.Record) string {
	e.t.Helper()
	e.waitRelayed(60 * time.Second)
	var where []string
	for _, l := range e.readTopic(dlqTopic) {
		if !bytes.Equal(l.Key, src.Key) {
			continue
		}
		where = append(where, "topic")
		if !bytes.Equal(l.Value, src.Value) {
			e.t.Fatalf("dead letter in the topic: got %d bytes, want the %d bytes unchanged", len(l.Value), len(src.Value))
		}
		if a, _ := dlq.Header(l, dlq.HeaderAttempts); a != "1" {
			e.t.Fatalf("dead letter header %s: got %q, want 1", dlq.HeaderAttempts, a)
		}
		if o, _ := dlq.Header(l, dlq.HeaderSourceOffset); o != strconv.FormatInt(src.Offset, 10) {
			e.t.Fatalf("dead letter header %s: got %q, want %d", dlq.HeaderSourceOffset, o, src.Offset)
		}
	}
	rows, err := e.store.Pool().Query(context.Background(),
		"SELECT value, source_offset, kept_reason FROM notifyd_dead_letters WHERE key = $1", src.Key)
	if err != nil {
		e.t.Fatal(err)
	}
	for rows.Next() {
		var v []byte
		var off int64
		var why *string
		if err := rows.Scan(&v, &off, &why); err != nil {
			e.t.Fatal(err)
		}
		where = append(where, "table")
		if !bytes.Equal(v, src.Value) || off != src.Offset || why == nil {
			e.t.Fatalf("dead letter in the table: got %d bytes at %d (kept: %v), want the %d bytes at %d, kept with a reason",
				len(v), off, why != nil, len(src.Value), src.Offset)
		}
	}
	if len(where) != 1 {
		e.t.Fatalf("dead letters of the %d-byte record: got %v, want exactly one, in the topic or the table", len(src.Value), where)
	}
	return where[0]
}

// Behaviour 1: an invalid record as large as the input topic takes is
// dead-lettered with its exact bytes, once, and stops nothing.
func TestPoisonRecordAsLargeAsTheTopicTakesStopsNothing(t *testing.T) {
	t.Parallel()
	t.Run("just under the broker default", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		quickFailure(&e.cfg)
		r := e.start()
		// The broker's default max.message.bytes is 1,048,588; a record
		// batch adds about 80 bytes to the value.
		valid, bad := e.poison(e.bigProducer(2<<20), 1_048_588-200)
		e.waitStoredOffsets(e.endOffsets(testTopic), 60*time.Second)
		e.checkTable(valid)
		t.Logf("the %d-byte invalid record went to the %s", len(bad.Value), e.deadLetteredOnce(bad))
		if err := r.p.Ready(context.Background()); err != nil {
			t.Fatalf("ready: got %v, want nil", err)
		}
		stillRunning(t, r)
	})
	t.Run("5 MB on a topic that takes it", func(t *testing.T) {
		t.Parallel()
		e := newEnvTopics(t, []string{testTopic})
		quickFailure(&e.cfg)
		e.setTopicConfig(testTopic, "max.message.bytes", strconv.Itoa(6<<20))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := dlq.EnsureTopic(ctx, kadm.NewClient(e.prod), slog.New(slog.NewTextHandler(io.Discard, nil)), dlqTopic, testTopic, 3); err != nil {
			t.Fatalf("ensure the dead-letter topic: %v", err)
		}
		r := e.start()
		valid, bad := e.poison(e.bigProducer(8<<20), 5<<20)
		e.waitStoredOffsets(e.endOffsets(testTopic), 60*time.Second)
		e.checkTable(valid)
		// The topic notifyd made takes what the input topic took.
		if where := e.deadLetteredOnce(bad); where != "topic" {
			t.Fatalf("the 5 MB dead letter went to the %s, want the topic", where)
		}
		if err := r.p.Ready(context.Background()); err != nil {
			t.Fatalf("ready: got %v, want nil", err)
		}
		stillRunning(t, r)
	})
}

// Behaviour 2: a dead-letter topic that refuses every letter holds back
// no partition: the letters are kept in notifyd_dead_letters.
func TestDeadLetterTopicRefusingEveryLetterStopsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quickFailure(&e.cfg)
	e.setTopicConfig(dlqTopic, "max.message.bytes", "64")
	r := e.start()
	sent := &mixed{bad: map[string]*kgo.Record{}, per: map[int32]int64{}}
	e.sendMixed(sent, 0, 200, 7)
	e.waitStoredOffsets(sent.per, 30*time.Second)
	e.waitRelayed(30 * time.Second)
	e.checkTable(sent.valid)
	e.checkKept(sent.bad)
	for p, o := range e.endOffsets(dlqTopic) {
		if o != 0 {
			t.Fatalf("dead-letter partition %d: got end offset %d, want 0", p, o)
		}
	}
	r.waitMetric(t, 10*time.Second, float64(len(sent.bad)), "notifyd_dead_letters_kept_total")
	rows, err := e.store.Pool().Query(context.Background(), "SELECT kept_reason FROM notifyd_dead_letters")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var why string
		if err := rows.Scan(&why); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(why, "MESSAGE_TOO_LARGE") {
			t.Fatalf("kept reason: got %q, want it to name MESSAGE_TOO_LARGE", why)
		}
	}
	stillRunning(t, r)
}
