package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/pgtest"
	"github.com/notifyd/notifyd/internal/postgres"
)

// env is a test's world: a kfake cluster with the input and dead-letter
// topics, and a migrated store on a schema of its own.
type env struct {
	t       testing.TB
	cluster *kfake.Cluster
	addrs   []string
	url     string
	store   *postgres.Store
	prod    *kgo.Client
	cfg     Config
}

const testTopic = "notifications"

func newEnv(t testing.TB, opts ...kfake.Opt) *env {
	t.Helper()
	return newEnvTopics(t, []string{testTopic, testTopic + ".dlq"}, opts...)
}

// newEnvTopics is newEnv with only the given topics made beforehand, with
// 3 partitions each.
func newEnvTopics(t testing.TB, topics []string, opts ...kfake.Opt) *env {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, topics...)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	e := &env{t: t, cluster: c, addrs: c.ListenAddrs()}
	e.url = pgtest.Schema(t)
	e.store = e.openStore()
	prod, err := kgo.NewClient(kgo.SeedBrokers(e.addrs...), kgo.DefaultProduceTopic(testTopic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Close)
	e.prod = prod
	e.cfg = Config{Topic: testTopic, Group: "g", FlushInterval: 200 * time.Millisecond}
	return e
}

func (e *env) openStore() *postgres.Store {
	e.t.Helper()
	st, err := postgres.Open(context.Background(), postgres.Config{URL: e.url})
	if err != nil {
		e.t.Fatalf("open store: %v", err)
	}
	e.t.Cleanup(st.Close)
	if _, err := st.Migrate(context.Background()); err != nil {
		e.t.Fatalf("migrate: %v", err)
	}
	return st
}

// running is a pipeline running in the background.
type running struct {
	t      testing.TB
	p      *Pipeline
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// start runs a pipeline with e.cfg, stopped when the test ends.
func (e *env) start(opts ...kgo.Opt) *running {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	opts = append([]kgo.Opt{kgo.SeedBrokers(e.addrs...), kgo.SessionTimeout(6 * time.Second),
		kgo.HeartbeatInterval(500 * time.Millisecond)}, opts...)
	p, err := New(e.cfg, e.store, testLogger(e.t), reg, opts...)
	if err != nil {
		e.t.Fatalf("new pipeline: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: e.t, p: p, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// stop shuts the pipeline down and returns Run's error.
func (r *running) stop(t testing.TB) error {
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("pipeline did not stop within 60s")
		return nil
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NOTIFYD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// msg is a valid message's fields, as the test sends them.
type msg struct {
	ID        string          `json:"id,omitempty"`
	UserID    string          `json:"user_id"`
	EventType string          `json:"event_type"`
	Title     string          `json:"title"`
	Body      string          `json:"body"`
	Data      json.RawMessage `json:"data,omitempty"`
	CreatedAt string          `json:"created_at,omitempty"`
}

func newMsg(i int) msg {
	return msg{
		ID:        uuid.NewString(),
		UserID:    uuid.NewString(),
		EventType: "comment.created",
		Title:     fmt.Sprintf("title %d ✓", i),
		Body:      fmt.Sprintf("body of message %d — ünïcödé", i),
		Data:      json.RawMessage(fmt.Sprintf(`{"n": %d, "tags": ["a", "b"]}`, i)),
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, i*1000, time.UTC).Format(time.RFC3339Nano),
	}
}

func (m msg) value() []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// produce sends values to partition part and waits for the acks.
func (e *env) produce(part int32, values ...[]byte) {
	e.t.Helper()
	recs := make([]*kgo.Record, len(values))
	for i, v := range values {
		recs[i] = &kgo.Record{Topic: testTopic, Partition: part, Value: v}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
}

// produceMsgs sends msgs round-robin over the 3 partitions.
func (e *env) produceMsgs(msgs []msg) {
	e.t.Helper()
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		recs[i] = &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Value: m.value()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
}

func (e *env) count() int {
	e.t.Helper()
	var n int
	if err := e.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM notifications").Scan(&n); err != nil {
		e.t.Fatalf("count: %v", err)
	}
	return n
}

// waitRows waits until the table holds want rows, and fails if it does not
// within d.
func (e *env) waitRows(want int, d time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := e.count()
		if n == want {
			return
		}
		if n > want {
			e.t.Fatalf("table holds %d rows, want %d", n, want)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("table holds %d rows after %s, want %d", n, d, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// row is a stored notification, read back for comparison.
type row struct {
	ID, UserID, EventType, Title, Body string
	Data                               *string
	CreatedAt                          time.Time
}

// checkTable asserts that the table holds exactly msgs, field by field.
func (e *env) checkTable(msgs []msg) {
	e.t.Helper()
	rows, err := e.store.Pool().Query(context.Background(),
		"SELECT id::text, user_id::text, event_type, title, body, data::text, created_at FROM notifications")
	if err != nil {
		e.t.Fatal(err)
	}
	got := map[string]row{}
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.ID, &r.UserID, &r.EventType, &r.Title, &r.Body, &r.Data, &r.CreatedAt); err != nil {
			e.t.Fatal(err)
		}
		got[r.ID] = r
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	if len(got) != len(msgs) {
		e.t.Fatalf("table holds %d rows, want %d", len(got), len(msgs))
	}
	for _, m := range msgs {
		r, ok := got[m.ID]
		if !ok {
			e.t.Fatalf("row %s missing", m.ID)
		}
		if r.UserID != m.UserID || r.EventType != m.EventType || r.Title != m.Title || r.Body != m.Body {
			e.t.Fatalf("row %s: got %+v, want %+v", m.ID, r, m)
		}
		want, _ := time.Parse(time.RFC3339Nano, m.CreatedAt)
		if !r.CreatedAt.Equal(want.Truncate(time.Microsecond)) {
			e.t.Fatalf("row %s created_at: got %s, want %s", m.ID, r.CreatedAt, want)
		}
		if !sameJSON(r.Data, m.Data) {
			e.t.Fatalf("row %s data: got %v, want %s", m.ID, r.Data, m.Data)
		}
	}
}

func sameJSON(got *string, want json.RawMessage) bool {
	if got == nil || len(want) == 0 {
		return got == nil && len(want) == 0
	}
	var a, b any
	if json.Unmarshal([]byte(*got), &a) != nil || json.Unmarshal(want, &b) != nil {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// storedOffsets reads the positions committed in the database.
func (e *env) storedOffsets() map[int32]int64 {
	e.t.Helper()
	rows, err := e.store.Pool().Query(context.Background(),
		"SELECT partition, next_offset FROM notifyd_offsets WHERE topic = $1", testTopic)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[int32]int64{}
	for rows.Next() {
		var p int32
		var o int64
		if err := rows.Scan(&p, &o); err != nil {
			e.t.Fatal(err)
		}
		out[p] = o
	}
	return out
}

// metric reads one counter or gauge value (a histogram's count) from the
// registry. A series that is not there fails the test, so that an
// assertion of 0 cannot pass on a renamed metric or label. It uses Errorf,
// not Fatal, because samplers call it from goroutines of their own.
func (r *running) metric(name string, labels ...string) float64 {
	r.t.Helper()
	v, ok := r.lookup(name, labels...)
	if !ok {
		r.t.Errorf("metric %s%v: no such series", name, labels)
		return math.NaN()
	}
	return v
}

// lookup reads one series from the registry, and whether it is there.
func (r *running) lookup(name string, labels ...string) (float64, bool) {
	mfs, err := r.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// recordingTB records what a helper reports, in place of failing the test.
type recordingTB struct {
	testing.TB
	errors []string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// TestMetricFailsOnAMissingSeries checks that the helper reports a series
// that is not there instead of reading it as 0.
func TestMetricFailsOnAMissingSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	newMetrics(reg, func() float64 { return 0 }, func() postgres.FilterStats { return postgres.FilterStats{} })
	rec := &recordingTB{TB: t}
	r := &running{t: rec, reg: reg}
	if got := r.metric("notifyd_rows_stored_total"); got != 0 || len(rec.errors) != 0 {
		t.Fatalf("existing series: got %v and errors %q, want 0 and none", got, rec.errors)
	}
	if got := r.metric("notifyd_batch_writes_total", "trigger", "age"); got != 0 || len(rec.errors) != 0 {
		t.Fatalf("pre-created label: got %v and errors %q, want 0 and none", got, rec.errors)
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"notifyd_rows_written_total", nil},
		{"notifyd_dead_letters_total", []string{"class", "decoding"}},
	} {
		rec.errors = nil
		if got := r.metric(c.name, c.labels...); !math.IsNaN(got) || len(rec.errors) != 1 {
			t.Errorf("%s%v: got %v and errors %q, want NaN and one error", c.name, c.labels, got, rec.errors)
		}
	}
}

// pendingLetters counts the dead letters recorded and not yet published.
func (e *env) pendingLetters() int {
	e.t.Helper()
	var n int
	if err := e.store.Pool().QueryRow(context.Background(),
		"SELECT count(*) FROM notifyd_dead_letters WHERE kept_reason IS NULL").Scan(&n); err != nil {
		e.t.Fatalf("count pending dead letters: %v", err)
	}
	return n
}

// waitRelayed waits until the relay has published (or kept) every
// recorded dead letter.
func (e *env) waitRelayed(d time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := e.pendingLetters()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("dead letters still pending after %s: %d", d, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
