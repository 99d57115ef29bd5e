package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/pgtest"
	"github.com/notifyd/notifyd/internal/postgres"
)

// startWith runs a pipeline with cfg on store st, stopped when the test
// ends: e.start for a second instance with a pool of its own.
func (e *env) startWith(cfg Config, st *postgres.Store, opts ...kgo.Opt) *running {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	opts = append([]kgo.Opt{kgo.SeedBrokers(e.addrs...), kgo.SessionTimeout(6 * time.Second),
		kgo.HeartbeatInterval(500 * time.Millisecond)}, opts...)
	p, err := New(cfg, st, testLogger(e.t), reg, opts...)
	if err != nil {
		e.t.Fatalf("new pipeline: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: e.t, p: p, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// waitMetric waits until the metric equals want, and fails if it does not
// within d.
func (r *running) waitMetric(t testing.TB, d time.Duration, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got, ok := r.lookup(name, labels...)
		if !ok {
			t.Fatalf("metric %s%v: no such series", name, labels)
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v after %s: got %v, want %v", name, labels, d, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitAssigned waits until the running pipelines hold want partitions each.
func waitAssigned(t testing.TB, d time.Duration, want []int, rs ...*running) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := make([]int, len(rs))
		ok := true
		for i, r := range rs {
			got[i] = int(r.metric("notifyd_assigned_partitions"))
			if got[i] != want[i] {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions held after %s: got %v, want %v", d, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSplit waits until a and b both hold partitions, the 3 between them.
func waitSplit(t testing.TB, d time.Duration, a, b *running) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		na, nb := a.metric("notifyd_assigned_partitions"), b.metric("notifyd_assigned_partitions")
		if na > 0 && nb > 0 && na+nb == 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions held by two instances after %s: got %v and %v, want both some and 3 in all", d, na, nb)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// produceRecs sends recs and returns them with their offsets.
func (e *env) produceRecs(recs ...*kgo.Record) []*kgo.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
	return recs
}

// makeMsgs returns n new valid messages, numbered from first.
func makeMsgs(first, n int) []msg {
	msgs := make([]msg, n)
	for i := range msgs {
		msgs[i] = newMsg(first + i)
	}
	return msgs
}

// endOffsets returns the end offset of each partition of topic.
func (e *env) endOffsets(topic string) map[int32]int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := kadm.NewClient(e.prod).ListEndOffsets(ctx, topic)
	if err != nil {
		e.t.Fatalf("list end offsets: %v", err)
	}
	if err := l.Error(); err != nil {
		e.t.Fatalf("list end offsets: %v", err)
	}
	out := map[int32]int64{}
	l.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// waitStoredOffsets waits until the database positions equal want.
func (e *env) waitStoredOffsets(want map[int32]int64, d time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := e.storedOffsets()
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("stored offsets after %s: got %v, want %v", d, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readTopic reads every record of topic, from the start to the current end.
func (e *env) readTopic(topic string) []*kgo.Record {
	e.t.Helper()
	end := e.endOffsets(topic)
	want := 0
	for _, o := range end {
		want += int(o)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.addrs...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(20 * time.Second)
	for len(out) < want {
		if time.Now().After(deadline) {
			e.t.Fatalf("records read from %s: got %d, want %d", topic, len(out), want)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

// lockTable takes an ACCESS EXCLUSIVE lock on the notifications table in a
// connection of its own, so that every write blocks; the returned function
// releases it.
func (e *env) lockTable() (release func()) {
	e.t.Helper()
	return e.holdInTx("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
}

// holdInTx runs stmt (one that takes locks) in a transaction of a
// connection of its own and keeps the transaction open, and with it the
// locks; the returned function commits it.
func (e *env) holdInTx(stmt string, args ...any) (release func()) {
	e.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		e.t.Fatalf("connect: %v", err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		e.t.Fatalf("begin: %v", err)
	}
	if _, err := tx.Exec(ctx, stmt, args...); err != nil {
		e.t.Fatalf("%s: %v", stmt, err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := tx.Commit(ctx); err != nil {
				e.t.Errorf("release lock: %v", err)
			}
			conn.Close(ctx)
		})
	}
	e.t.Cleanup(release)
	return release
}

func TestPolicyTrigger(t *testing.T) {
	t.Parallel()
	pl := policy{size: 10, interval: time.Second}
	tests := []struct {
		name     string
		n        int
		age      time.Duration
		caughtUp bool
		want     string
	}{
		{"nothing buffered", 0, time.Hour, true, ""},
		{"size reached", 10, 0, false, "size"},
		{"size exceeded wins over age and idle", 25, time.Hour, true, "size"},
		{"age reached", 3, time.Second, false, "age"},
		{"age wins over idle", 3, 2 * time.Second, true, "age"},
		{"idle when caught up", 1, time.Millisecond, true, "idle"},
		{"keep buffering", 9, 999 * time.Millisecond, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pl.trigger(tt.n, tt.age, tt.caughtUp); got != tt.want {
				t.Fatalf("trigger(%d, %s, %v): got %q, want %q", tt.n, tt.age, tt.caughtUp, got, tt.want)
			}
		})
	}
}

func TestConsumesFromSubscribedTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, kfake.SeedTopics(1, "other"))
	// Messages on a topic the pipeline does not subscribe to are not its own.
	e.produceRecs(&kgo.Record{Topic: "other", Value: newMsg(-1).value()}, &kgo.Record{Topic: "other", Value: newMsg(-2).value()})
	r := e.start()
	waitAssigned(t, 10*time.Second, []int{3}, r)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := r.p.Ready(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ready after %s: got %v, want nil", 10*time.Second, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	msgs := makeMsgs(0, 30)
	e.produceMsgs(msgs)
	e.waitStoredOffsets(e.endOffsets(testTopic), 20*time.Second)
	e.checkTable(msgs)
	if got := r.metric("notifyd_messages_consumed_total"); got != 30 {
		t.Fatalf("consumed: got %v, want 30", got)
	}
}

// connectHook counts connection attempts and how many failed.
type connectHook struct{ attempts, failed atomic.Int64 }

func (h *connectHook) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	h.attempts.Add(1)
	if err != nil {
		h.failed.Add(1)
	}
}

func TestConnectionTimeoutHandling(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	st, err := postgres.Open(context.Background(), postgres.Config{URL: pgtest.Schema(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	hook := &connectHook{}
	p, err := New(Config{Topic: testTopic, Group: "g"}, st, testLogger(t), nil,
		kgo.SeedBrokers(closed), kgo.DialTimeout(time.Second), kgo.WithHooks(hook),
		kgo.MetadataMinAge(50*time.Millisecond), kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }))
	if err != nil {
		t.Fatalf("new pipeline: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()

	// The client keeps trying; the pipeline keeps running, not ready.
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("Run returned before cancel: got %v, want it to keep running", err)
		default:
		}
		ready := p.Ready(context.Background())
		if hook.failed.Load() >= 3 && ready != nil && strings.Contains(ready.Error(), "no partitions") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: got %d failed connection attempts and Ready %v, want at least 3 and no partitions assigned",
				hook.failed.Load(), ready)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: got %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return within 30s of cancel")
	}
	if n := hook.attempts.Load(); n != hook.failed.Load() {
		t.Fatalf("successful connections to a closed port: got %d, want 0", n-hook.failed.Load())
	}
}

func TestFlushesWhenBatchSizeIsReached(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.BatchSize = 10
	e.cfg.FlushInterval = time.Hour
	msgs := makeMsgs(0, 10)
	vals := make([][]byte, len(msgs))
	for i, m := range msgs {
		vals[i] = m.value()
	}
	// Produced before the start, the 10 messages arrive in one fetch.
	e.produce(0, vals...)
	r := e.start()
	e.waitRows(10, 20*time.Second)
	e.checkTable(msgs)
	r.waitMetric(t, 10*time.Second, 10, "notifyd_rows_stored_total")
	if got := r.metric("notifyd_batch_writes_total", "trigger", "size"); got < 1 {
		t.Fatalf(`notifyd_batch_writes_total{trigger="size"}: got %v, want at least 1`, got)
	}
	if got := r.metric("notifyd_batch_writes_total", "trigger", "age"); got != 0 {
		t.Fatalf(`notifyd_batch_writes_total{trigger="age"}: got %v, want 0`, got)
	}
}

func TestWritesPartialBatchPromptlyWhenIdle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.BatchSize = 100
	e.cfg.FlushInterval = time.Hour
	r := e.start()
	waitAssigned(t, 10*time.Second, []int{3}, r)
	msgs := makeMsgs(0, 3)
	e.produceMsgs(msgs)
	// Well within the hour of FlushInterval: the consumer has caught up, so
	// nothing is coming to fill the batch.
	e.waitRows(3, 20*time.Second)
	e.checkTable(msgs)
	r.waitMetric(t, 10*time.Second, 3, "notifyd_rows_stored_total")
	if got := r.metric("notifyd_batch_writes_total", "trigger", "idle"); got < 1 {
		t.Fatalf(`notifyd_batch_writes_total{trigger="idle"}: got %v, want at least 1`, got)
	}
	for _, trig := range []string{"size", "age"} {
		if got := r.metric("notifyd_batch_writes_total", "trigger", trig); got != 0 {
			t.Fatalf(`notifyd_batch_writes_total{trigger=%q}: got %v, want 0`, trig, got)
		}
	}
}

func TestSkipsDuplicateIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sameTwice, acrossParts, stored := newMsg(1), newMsg(2), newMsg(3)
	// stored is in the table before the pipeline sees it.
	_, err := e.store.Pool().Exec(context.Background(), `INSERT INTO notifications
		(id, user_id, event_type, title, body, data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		stored.ID, stored.UserID, stored.EventType, stored.Title, stored.Body, string(stored.Data), stored.CreatedAt)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := newMsg(4), newMsg(5), newMsg(6)
	e.produce(0, sameTwice.value(), sameTwice.value(), a.value())
	e.produce(1, acrossParts.value(), b.value())
	e.produce(2, acrossParts.value(), stored.value(), c.value())

	r := e.start()
	e.waitStoredOffsets(map[int32]int64{0: 3, 1: 2, 2: 3}, 20*time.Second)
	e.checkTable([]msg{sameTwice, acrossParts, stored, a, b, c})
	r.waitMetric(t, 10*time.Second, 3, "notifyd_duplicates_skipped_total")
	r.waitMetric(t, 10*time.Second, 5, "notifyd_rows_stored_total")
}

// The dedupe window's probe is timed for a write that has rows sent with an
// id and without a created_at, and a write without such rows runs none.
func TestDedupeProbeIsTimed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.start()
	e.produce(0, newMsg(1).value(), newMsg(2).value())
	e.waitStoredOffsets(map[int32]int64{0: 2, 1: -1, 2: -1}, 20*time.Second)
	if got := r.metric("notifyd_dedupe_probe_duration_seconds"); got != 0 {
		t.Fatalf("notifyd_dedupe_probe_duration_seconds: %v probes for rows that all carry created_at, want 0", got)
	}
	noTime := newMsg(3)
	noTime.CreatedAt = ""
	e.produce(0, noTime.value())
	e.waitStoredOffsets(map[int32]int64{0: 3, 1: -1, 2: -1}, 20*time.Second)
	r.waitMetric(t, 10*time.Second, 1, "notifyd_dedupe_probe_duration_seconds")
	// The filters' gauges read the store's filters as they are.
	fs := e.store.DedupeFilters()
	for name, want := range map[string]int{"notifyd_dedupe_filter_bytes": fs.Bytes,
		"notifyd_dedupe_filter_partitions": fs.Partitions, "notifyd_dedupe_filter_over_budget_partitions": fs.OverBudget} {
		if got := r.metric(name); got != float64(want) {
			t.Errorf("%s: %v, want %d as the store has it", name, got, want)
		}
	}
}

func TestDeadLettersInvalidMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	valid := newMsg(0)
	noUser := valid
	noUser.UserID = ""
	noUserJSON := bytes.Replace(noUser.value(), []byte(`"user_id":"",`), nil, 1)
	if bytes.Contains(noUserJSON, []byte("user_id")) {
		t.Fatalf("test value still has user_id: %s", noUserJSON)
	}
	longTitle := valid
	longTitle.Title = strings.Repeat("t", 257)
	nulBody := valid
	nulBody.Body = "before\x00after"
	bad := []struct {
		name  string
		value []byte
		class string
	}{
		{"not JSON", []byte("this is not JSON"), "decode"},
		{"tombstone", nil, "decode"},
		{"invalid UTF-8", []byte(`{"user_id":"` + uuid.NewString() + `","title":"caf` + "\xe9" + `"}`), "decode"},
		{"JSON array", []byte(`[1, 2, 3]`), "decode"},
		{"missing user_id", noUserJSON, "validate"},
		{"title too long", longTitle.value(), "validate"},
		{"NUL in body", nulBody.value(), "validate"},
	}
	base := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	var good []msg
	var sent []*kgo.Record
	badRecs := map[string]*kgo.Record{} // by key
	class := map[string]string{}        // by key
	for part := int32(0); part < 3; part++ {
		var recs []*kgo.Record
		for i, b := range bad {
			m := newMsg(int(part)*100 + i)
			good = append(good, m)
			recs = append(recs, &kgo.Record{Topic: testTopic, Partition: part, Value: m.value()})
			key := fmt.Sprintf("bad/%d/%s", part, b.name)
			rec := &kgo.Record{Topic: testTopic, Partition: part, Key: []byte(key), Value: b.value,
				Timestamp: base.Add(time.Duration(int(part)*100+i) * time.Millisecond),
				Headers:   []kgo.RecordHeader{{Key: "trace", Value: []byte(key)}}}
			recs = append(recs, rec)
			badRecs[key] = rec
			class[key] = b.class
		}
		if part != 2 { // partition 2 ends with a bad message
			m := newMsg(int(part)*100 + 99)
			good = append(good, m)
			recs = append(recs, &kgo.Record{Topic: testTopic, Partition: part, Value: m.value()})
		}
		sent = append(sent, e.produceRecs(recs...)...)
	}

	r := e.start()
	end := e.endOffsets(testTopic)
	e.waitStoredOffsets(end, 30*time.Second)
	e.checkTable(good)

	e.waitRelayed(30 * time.Second)
	letters := e.readTopic(testTopic + ".dlq")
	if len(letters) != len(badRecs) {
		t.Fatalf("dead letters: got %d, want %d", len(letters), len(badRecs))
	}
	seen := map[string]int{}
	for _, l := range letters {
		key := string(l.Key)
		src, ok := badRecs[key]
		if !ok {
			t.Fatalf("dead letter with key %q value %q: want only the bad messages", l.Key, l.Value)
		}
		seen[key]++
		if !bytes.Equal(l.Value, src.Value) {
			t.Fatalf("%s value: got %q, want %q", key, l.Value, src.Value)
		}
		h := func(name string) string {
			v, ok := dlq.Header(l, name)
			if !ok {
				t.Fatalf("%s header %s: got none, want one", key, name)
			}
			return v
		}
		if h(dlq.HeaderError) == "" {
			t.Fatalf("%s header %s: got empty, want a reason", key, dlq.HeaderError)
		}
		checks := []struct{ name, want string }{
			{dlq.HeaderClass, class[key]},
			{dlq.HeaderSourceTopic, testTopic},
			{dlq.HeaderSourcePartition, strconv.Itoa(int(src.Partition))},
			{dlq.HeaderSourceOffset, strconv.FormatInt(src.Offset, 10)},
			{"trace", key},
		}
		for _, c := range checks {
			if got := h(c.name); got != c.want {
				t.Fatalf("%s header %s: got %q, want %q (error %q)", key, c.name, got, c.want, h(dlq.HeaderError))
			}
		}
		ts, err := time.Parse(time.RFC3339Nano, h(dlq.HeaderSourceTimestamp))
		if err != nil || !ts.Equal(src.Timestamp) {
			t.Fatalf("%s header %s: got %q, want %s", key, dlq.HeaderSourceTimestamp, h(dlq.HeaderSourceTimestamp), src.Timestamp.Format(time.RFC3339Nano))
		}
		if n, err := strconv.Atoi(h(dlq.HeaderAttempts)); err != nil || n < 1 {
			t.Fatalf("%s header %s: got %q, want a count of at least 1", key, dlq.HeaderAttempts, h(dlq.HeaderAttempts))
		}
	}
	for key := range badRecs {
		if seen[key] != 1 {
			t.Fatalf("dead letters of %s: got %d, want 1", key, seen[key])
		}
	}
	r.waitMetric(t, 10*time.Second, 12, "notifyd_dead_letters_total", "class", "decode")
	r.waitMetric(t, 10*time.Second, 9, "notifyd_dead_letters_total", "class", "validate")
	if got, want := r.metric("notifyd_messages_consumed_total"), float64(len(sent)); got != want {
		t.Fatalf("consumed: got %v, want %v", got, want)
	}
}

// fetchedBelow counts records fetched below a partition's floor.
type fetchedBelow struct {
	floor map[int32]int64
	n     atomic.Int64
}

func (h *fetchedBelow) OnFetchRecordBuffered(r *kgo.Record) {
	if r.Topic == testTopic && r.Offset < h.floor[r.Partition] {
		h.n.Add(1)
	}
}

func TestRestartResumesFromStoredOffsets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	first := makeMsgs(0, 300)
	a := e.start()
	e.produceMsgs(first)
	e.waitRows(300, 30*time.Second)
	if err := a.stop(t); err != nil {
		t.Fatalf("stop: got %v, want nil", err)
	}
	e.waitStoredOffsets(map[int32]int64{0: 100, 1: 100, 2: 100}, 5*time.Second)

	second := makeMsgs(300, 300)
	e.produceMsgs(second)
	hook := &fetchedBelow{floor: map[int32]int64{0: 100, 1: 100, 2: 100}}
	b := e.start(kgo.WithHooks(hook))
	e.waitStoredOffsets(e.endOffsets(testTopic), 30*time.Second)
	e.checkTable(append(first, second...))
	b.waitMetric(t, 10*time.Second, 300, "notifyd_rows_stored_total")
	if got := b.metric("notifyd_messages_consumed_total"); got != 300 {
		t.Fatalf("consumed after restart: got %v, want 300", got)
	}
	if got := b.metric("notifyd_duplicates_skipped_total"); got != 0 {
		t.Fatalf("duplicates after restart: got %v, want 0", got)
	}
	if got := hook.n.Load(); got != 0 {
		t.Fatalf("records fetched below the stored positions: got %d, want 0", got)
	}
}

// commitKafkaOffsets sets the group's committed offsets in Kafka.
func (e *env) commitKafkaOffsets(group string, offs map[int32]int64) {
	e.t.Helper()
	var os kadm.Offsets
	for p, o := range offs {
		os.AddOffset(testTopic, p, o, -1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(e.prod).CommitOffsets(ctx, group, os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		e.t.Fatalf("commit kafka offsets: %v", err)
	}
}

func TestDatabasePositionWinsOverKafkaCommits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// kafka returns the offsets to commit in Kafka, given the database's.
		kafka func(db map[int32]int64) map[int32]int64
		// storeFirst runs a pipeline over the first messages before the
		// Kafka offsets are changed.
		storeFirst bool
	}{
		{"kafka behind", func(map[int32]int64) map[int32]int64 { return map[int32]int64{0: 0, 1: 0, 2: 0} }, true},
		{"kafka group deleted", nil, true},
		{"kafka ahead", func(db map[int32]int64) map[int32]int64 {
			return map[int32]int64{0: db[0] + 50, 1: db[1] + 50, 2: db[2] + 50}
		}, true},
		{"kafka ahead of an empty database", func(map[int32]int64) map[int32]int64 {
			return map[int32]int64{0: 50, 1: 50, 2: 50}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			first := makeMsgs(0, 300)
			e.produceMsgs(first)
			db := map[int32]int64{}
			if tt.storeFirst {
				a := e.start()
				e.waitRows(300, 30*time.Second)
				if err := a.stop(t); err != nil {
					t.Fatalf("stop: got %v, want nil", err)
				}
				db = e.storedOffsets()
			}
			if tt.kafka != nil {
				e.commitKafkaOffsets(e.cfg.Group, tt.kafka(db))
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				resp, err := kadm.NewClient(e.prod).DeleteGroups(ctx, e.cfg.Group)
				if err == nil {
					_, err = resp.On(e.cfg.Group, nil)
				}
				if err != nil {
					t.Fatalf("delete group: %v", err)
				}
			}
			second := makeMsgs(300, 300)
			e.produceMsgs(second)
			hook := &fetchedBelow{floor: db}
			b := e.start(kgo.WithHooks(hook))
			e.waitStoredOffsets(e.endOffsets(testTopic), 30*time.Second)
			e.checkTable(append(first, second...))
			want := 600
			if tt.storeFirst {
				want = 300
			}
			b.waitMetric(t, 10*time.Second, float64(want), "notifyd_rows_stored_total")
			if got := b.metric("notifyd_duplicates_skipped_total"); got != 0 {
				t.Fatalf("duplicates: got %v, want 0", got)
			}
			if got := hook.n.Load(); got != 0 {
				t.Fatalf("records fetched below the stored positions %v: got %d, want 0", db, got)
			}
		})
	}
}

func TestTwoInstancesSplitPartitionsExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.startWith(e.cfg, e.store)
	b := e.startWith(e.cfg, e.openStore())
	waitSplit(t, 20*time.Second, a, b)
	msgs := makeMsgs(0, 3000)
	e.produceMsgs(msgs)
	e.waitRows(3000, 60*time.Second)
	e.checkTable(msgs)
	for name, r := range map[string]*running{"a": a, "b": b} {
		if err := r.stop(t); err != nil {
			t.Fatalf("stop %s: got %v, want nil", name, err)
		}
	}
	waitSum(t, 10*time.Second, 3000, "notifyd_rows_stored_total", a, b)
	if got := a.metric("notifyd_duplicates_skipped_total") + b.metric("notifyd_duplicates_skipped_total"); got != 0 {
		t.Fatalf("duplicates skipped: got %v, want 0", got)
	}
	if a.metric("notifyd_rows_stored_total") == 0 || b.metric("notifyd_rows_stored_total") == 0 {
		t.Fatalf("rows stored per instance: got %v and %v, want both above 0",
			a.metric("notifyd_rows_stored_total"), b.metric("notifyd_rows_stored_total"))
	}
	e.waitStoredOffsets(map[int32]int64{0: 1000, 1: 1000, 2: 1000}, 5*time.Second)
}

func TestRebalanceMidStreamStoresEveryMessageOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.BatchSize = 50
	msgs := makeMsgs(0, 5000)
	a := e.start()

	const chunk = 100
	startB, stopA := 15, 35 // after these many chunks
	step := make(chan int)  // the producer reached a step
	resume := make(chan struct{})
	perr := make(chan error, 1)
	go func() {
		defer close(step)
		for c := 0; c*chunk < len(msgs); c++ {
			if c == startB || c == stopA {
				step <- c
				<-resume
			}
			recs := make([]*kgo.Record, 0, chunk)
			for i := c * chunk; i < (c+1)*chunk; i++ {
				recs = append(recs, &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Value: msgs[i].value()})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := e.prod.ProduceSync(ctx, recs...).FirstErr()
			cancel()
			if err != nil {
				perr <- err
				return
			}
		}
	}()
	var b *running
	for c := range step {
		switch c {
		case startB:
			b = e.startWith(e.cfg, e.openStore())
			waitSplit(t, 20*time.Second, a, b)
		case stopA:
			if err := a.stop(t); err != nil {
				t.Fatalf("stop a: got %v, want nil", err)
			}
			waitAssigned(t, 20*time.Second, []int{3}, b)
		}
		resume <- struct{}{}
	}
	select {
	case err := <-perr:
		t.Fatalf("produce: %v", err)
	default:
	}
	e.waitRows(len(msgs), 60*time.Second)
	e.checkTable(msgs)
	e.waitStoredOffsets(e.endOffsets(testTopic), 10*time.Second)
	waitSum(t, 10*time.Second, len(msgs), "notifyd_rows_stored_total", a, b)
	// No message was written twice: a batch read by an instance that lost
	// its partition is fenced, not stored as duplicates.
	if got := a.metric("notifyd_duplicates_skipped_total") + b.metric("notifyd_duplicates_skipped_total"); got != 0 {
		t.Fatalf("duplicates skipped: got %v, want 0", got)
	}
}

// waitSum waits until the metric summed over rs equals want.
func waitSum(t testing.TB, d time.Duration, want int, name string, rs ...*running) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var got float64
		for _, r := range rs {
			got += r.metric(name)
		}
		if got == float64(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s over %d instances after %s: got %v, want %d", name, len(rs), d, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGracefulShutdownWritesEverythingConsumedAndLeavesGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.BatchSize = 1000
	e.cfg.FlushInterval = time.Hour
	a := e.start()
	waitAssigned(t, 10*time.Second, []int{3}, a)
	msgs := makeMsgs(0, 50)
	e.produceMsgs(msgs)
	a.waitMetric(t, 10*time.Second, 50, "notifyd_messages_consumed_total")
	if err := a.stop(t); err != nil {
		t.Fatalf("Run after cancel: got %v, want nil", err)
	}
	// Run returned: what it consumed is committed, with no waiting.
	if n := e.count(); n != 50 {
		t.Fatalf("rows right after Run returned: got %d, want 50", n)
	}
	e.checkTable(msgs)
	if got, want := e.storedOffsets(), e.endOffsets(testTopic); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stored offsets: got %v, want %v", got, want)
	}

	// The old member left the group: a new one is not kept waiting for its
	// session (6 s) to expire.
	b := e.start()
	waitAssigned(t, 4*time.Second, []int{3}, b)
}

func TestShutdownWaitsForBlockedWriteAndFlushesBuffer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.BatchSize = 1000
	e.cfg.FlushInterval = time.Hour
	a := e.start()
	waitAssigned(t, 10*time.Second, []int{3}, a)
	release := e.lockTable()
	msgs := makeMsgs(0, 50)
	e.produceMsgs(msgs[:25])
	a.waitMetric(t, 10*time.Second, 25, "notifyd_messages_consumed_total")
	// The first write is blocked; these wait in the buffer.
	e.produceMsgs(msgs[25:])
	a.waitMetric(t, 10*time.Second, 50, "notifyd_messages_consumed_total")
	a.cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := a.p.Ready(context.Background())
		if err != nil && strings.Contains(err.Error(), "shutting down") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ready after cancel: got %v, want shutting down", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	release()
	if err := a.stop(t); err != nil {
		t.Fatalf("Run after cancel: got %v, want nil", err)
	}
	if n := e.count(); n != 50 {
		t.Fatalf("rows right after Run returned: got %d, want 50", n)
	}
	e.checkTable(msgs)
}

func TestBufferedMessagesStayBoundedWhileDatabaseIsBlocked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.BatchSize = 10
	e.cfg.MaxBufferedRows = 50
	r := e.start()
	waitAssigned(t, 10*time.Second, []int{3}, r)

	var peak atomic.Int64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			if v := int64(r.metric("notifyd_buffered_messages")); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	defer func() { close(stopSampling); sampler.Wait() }()

	release := e.lockTable()
	msgs := makeMsgs(0, 2000)
	e.produceMsgs(msgs)
	// Wait until consumption has stopped: the lock holds the write, and the
	// buffer is full.
	var consumed float64
	stableSince := time.Now()
	deadline := time.Now().Add(20 * time.Second)
	for time.Since(stableSince) < 500*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("consumption did not stop while the table was locked: consumed %v", consumed)
		}
		if c := r.metric("notifyd_messages_consumed_total"); c != consumed {
			consumed, stableSince = c, time.Now()
		}
		time.Sleep(5 * time.Millisecond)
	}
	blockedPeak := peak.Load()
	t.Logf("while blocked: consumed %v, peak buffered %d", consumed, blockedPeak)
	if blockedPeak > 50 {
		t.Fatalf("buffered messages while blocked: got %d, want at most 50", blockedPeak)
	}
	if blockedPeak == 0 {
		t.Fatalf("buffered messages while blocked: got 0, want some (the sampler saw nothing)")
	}
	// What was read is the buffer plus the one write in flight, each bounded.
	if consumed > 2*50 {
		t.Fatalf("messages read while the database was blocked: got %v, want at most %d", consumed, 2*50)
	}
	release()
	e.waitRows(len(msgs), 60*time.Second)
	e.checkTable(msgs)
	if got := peak.Load(); got > 50 {
		t.Fatalf("buffered messages: got peak %d, want at most 50", got)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("stop: got %v, want nil", err)
	}
}
