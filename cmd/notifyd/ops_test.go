package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/pgtest"
)

// runCommand runs `notifyd args...` in process, as main does, until it
// returns or ctx ends. What the dlq commands report goes to out.
func runCommand(ctx context.Context, out io.Writer, args ...string) error {
	var c cli
	c.DLQ.List.out, c.DLQ.Show.out, c.DLQ.Replay.out = out, out, out
	c.Health.out = out
	k, err := newParser(&c,
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.Exit(func(int) {}),
	)
	if err != nil {
		return err
	}
	kctx, err := k.Parse(args)
	if err != nil {
		return fmt.Errorf("parse %q: %w", args, err)
	}
	return kctx.Run()
}

// opsEnv is what a test runs notifyd against in process: a kfake cluster
// with the input and dead-letter topics (3 partitions each), a schema of its
// own, and a producer that writes to the partition each record names.
type opsEnv struct {
	t       *testing.T
	brokers string
	url     string
	pool    *pgxpool.Pool
	prod    *kgo.Client
}

func newOpsEnv(t *testing.T) *opsEnv {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "notifications", "notifications.dlq"))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	e := &opsEnv{t: t, brokers: strings.Join(c.ListenAddrs(), ",")}
	e.pool, e.url = pgtest.Pool(t)
	e.prod, err = kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("notifications"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.prod.Close)
	return e
}

// running is `notifyd run` running in process.
type running struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the command has returned
	err    error         // what it returned, once done is closed
}

// startRun runs `notifyd run` against e with args; the test's cleanup stops
// it if the test has not.
func (e *opsEnv) startRun(args ...string) *running {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	args = append([]string{"run",
		"--brokers", e.brokers,
		"--database-url", e.url,
		"--log-level", "warn",
		"--flush-interval", "200ms",
	}, args...)
	go func() {
		defer close(r.done)
		r.err = runCommand(ctx, io.Discard, args...)
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(60 * time.Second):
			e.t.Errorf("notifyd run did not stop within 60s of its context ending")
		}
	})
	return r
}

// send produces records to the input topic and returns them with their
// offsets.
func (e *opsEnv) send(recs ...*kgo.Record) []*kgo.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
	return recs
}

// endOffsets returns the end offset of each partition of topic.
func (e *opsEnv) endOffsets(topic string) map[int32]int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(e.prod).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		e.t.Fatalf("list end offsets of %s: %v", topic, err)
	}
	out := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// waitDrained waits until group has stored every message now in the input
// topic: each partition's position in the database is its end offset.
func (e *opsEnv) waitDrained(group string) {
	e.t.Helper()
	ends := e.endOffsets("notifications")
	waitUntil(e.t, 60*time.Second, func() (bool, string) {
		rows, err := e.pool.Query(context.Background(),
			"SELECT partition, next_offset FROM notifyd_offsets WHERE consumer_group = $1 AND topic = 'notifications'", group)
		if err != nil {
			return false, err.Error()
		}
		stored := map[int32]int64{}
		for rows.Next() {
			var p int32
			var o int64
			if err := rows.Scan(&p, &o); err != nil {
				return false, err.Error()
			}
			stored[p] = o
		}
		if err := rows.Err(); err != nil {
			return false, err.Error()
		}
		for p, end := range ends {
			if end > 0 && stored[p] != end {
				return false, fmt.Sprintf("stored positions %v, want end offsets %v", stored, ends)
			}
		}
		// Dead letters are published after the commit that records them.
		var pending int
		if err := e.pool.QueryRow(context.Background(),
			"SELECT count(*) FROM notifyd_dead_letters WHERE kept_reason IS NULL").Scan(&pending); err != nil {
			return false, err.Error()
		}
		if pending > 0 {
			return false, fmt.Sprintf("%d dead letters not yet published", pending)
		}
		return true, ""
	})
}

// waitUntil polls cond until it holds, failing the test with cond's last
// explanation after d.
func waitUntil(t testing.TB, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not so after %s: %s", d, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeMetricsAddr returns a local address nothing listens on now.
func freeMetricsAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// get returns the status and body of GET http://addr/path.
func get(addr, path string) (int, string, error) {
	resp, err := httpClient.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// exposition is a /metrics response.
type exposition string

// value is the sum of the samples of name whose labels include labels
// (`k="v"` each), and whether there is any.
func (x exposition) value(name string, labels ...string) (float64, bool) {
	sum, found := 0.0, false
	sc := bufio.NewScanner(strings.NewReader(string(x)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		metric, labelSet, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(labelSet, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			continue
		}
		sum, found = sum+f, true
	}
	return sum, found
}

// families are the metric names the exposition declares (# TYPE lines).
func (x exposition) families() map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(string(x), "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, _, _ := strings.Cut(rest, " ")
			out[name] = true
		}
	}
	return out
}

func scrape(t testing.TB, addr string) exposition {
	t.Helper()
	code, body, err := get(addr, "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: got %d, %v, want 200", code, err)
	}
	return exposition(body)
}

// valid returns a valid message with the given id ("" for none).
func validMessage(id, title string) []byte {
	idField := ""
	if id != "" {
		idField = fmt.Sprintf(`"id":%q,`, id)
	}
	return fmt.Appendf(nil, `{%s"user_id":%q,"event_type":"comment.created","title":%q,"body":"hello","data":{"n":1}}`,
		idField, uuid.NewString(), title)
}

func TestRunServesMetricsHealthAndReadiness(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t)
	addr := freeMetricsAddr(t)
	r := e.startRun("--group", "ops", "--metrics-addr", addr, "--status-interval", "1s")

	waitUntil(t, 60*time.Second, func() (bool, string) {
		code, body, err := get(addr, "/readyz")
		return code == http.StatusOK, fmt.Sprintf("GET /readyz: got %d %q, %v, want 200", code, body, err)
	})
	if code, body, err := get(addr, "/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz: got %d %q, %v, want 200", code, body, err)
	}
	if err := runCommand(context.Background(), io.Discard, "health", "--metrics-addr", addr); err != nil {
		t.Errorf("notifyd health of a ready notifyd: %v", err)
	}

	// Three valid messages (one without id), one of each invalid class, one
	// to each partition; then a producer's retry of the first.
	dupID := uuid.NewString()
	e.send(
		&kgo.Record{Partition: 0, Value: validMessage(dupID, "first")},
		&kgo.Record{Partition: 1, Value: validMessage("", "no id")},
		&kgo.Record{Partition: 2, Value: validMessage(uuid.NewString(), "third")},
		&kgo.Record{Partition: 0, Value: []byte(`{"user_id":`)},
		&kgo.Record{Partition: 1, Value: []byte(`{"user_id":"abc","event_type":"x","title":"t","body":"b"}`)},
	)
	waitUntil(t, 60*time.Second, func() (bool, string) {
		m := scrape(t, addr)
		stored, _ := m.value("notifyd_rows_stored_total")
		dead, _ := m.value("notifyd_dead_letters_total")
		return stored == 3 && dead == 2, fmt.Sprintf("rows stored %v, dead letters %v, want 3 and 2", stored, dead)
	})
	e.send(&kgo.Record{Partition: 2, Value: validMessage(dupID, "first")})
	waitUntil(t, 60*time.Second, func() (bool, string) {
		m := scrape(t, addr)
		consumed, _ := m.value("notifyd_messages_consumed_total")
		var lags []float64
		for p := range 3 {
			l, ok := m.value("notifyd_consumer_lag", fmt.Sprintf(`partition="%d"`, p))
			if !ok {
				l = -1
			}
			lags = append(lags, l)
		}
		return consumed == 6 && slices.Equal(lags, []float64{0, 0, 0}),
			fmt.Sprintf("consumed %v, lag per partition %v (-1: none), want 6 and [0 0 0]", consumed, lags)
	})

	m := scrape(t, addr)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"notifyd_messages_consumed_total", nil, 6},
		{"notifyd_rows_stored_total", nil, 3},
		{"notifyd_duplicates_skipped_total", nil, 1},
		{"notifyd_dead_letters_total", []string{`class="decode"`}, 1},
		{"notifyd_dead_letters_total", []string{`class="validate"`}, 1},
		{"notifyd_dead_letters_total", []string{`class="store"`}, 0},
		{"notifyd_batch_size_sum", nil, 6}, // every message in exactly one committed write
		{"notifyd_assigned_partitions", nil, 3},
		{"notifyd_ready", nil, 1},
		{"notifyd_breaker_state", nil, 0},
		{"notifyd_buffered_messages", nil, 0},
		{"notifyd_fenced_partitions_total", nil, 0},
		{"notifyd_stored_offset", []string{`partition="0"`}, 2},
		{"notifyd_stored_offset", []string{`partition="1"`}, 2},
		{"notifyd_stored_offset", []string{`partition="2"`}, 2},
	} {
		got, ok := m.value(c.name, c.labels...)
		if !ok || got != c.want {
			t.Errorf("%s%v: got %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for _, c := range []struct {
		name     string
		min, max float64
	}{
		{"notifyd_batch_size_count", 1, 6},
		{"notifyd_flush_duration_seconds_count", 1, 1e9},
		{"notifyd_batch_writes_total", 1, 1e9},
		// Every committed message has a latency: at least the rows and
		// the duplicate, at most everything consumed.
		{"notifyd_end_to_end_latency_seconds_count", 4, 6},
		{"notifyd_db_pool_connections", 1, 1e9},
		{"notifyd_db_pool_acquires_total", 1, 1e9},
		{"notifyd_kafka_connects_total", 1, 1e9},   // franz-go's kprom
		{"notifyd_kafka_read_bytes_total", 1, 1e9}, // franz-go's kprom
		{"go_goroutines", 1, 1e9},
	} {
		got, ok := m.value(c.name)
		if !ok || got < c.min || got > c.max {
			t.Errorf("%s: got %v (present %v), want between %v and %v", c.name, got, ok, c.min, c.max)
		}
	}
	if _, ok := m.value("notifyd_retries_total", `target="database"`); !ok {
		t.Errorf(`notifyd_retries_total{target="database"}: got none, want a series`)
	}
	var excerpt []string
	for _, line := range strings.Split(string(m), "\n") {
		if strings.HasPrefix(line, "notifyd_") && !strings.Contains(line, "_bucket{") {
			excerpt = append(excerpt, line)
		}
	}
	t.Logf("/metrics (notifyd_ samples, without buckets):\n%s", strings.Join(excerpt, "\n"))

	var list bytes.Buffer
	if err := runCommand(context.Background(), &list, "dlq", "list", "--brokers", e.brokers); err != nil {
		t.Fatalf("dlq list: %v", err)
	}
	t.Logf("notifyd dlq list:\n%s", list.String())
	if want := "2 dead letters in notifications.dlq (decode 1, validate 1, store 0)"; !strings.Contains(list.String(), want) {
		t.Errorf("dlq list: got\n%s\nwant a line %q", list.String(), want)
	}

	t.Run("the dashboard uses only exported metrics", func(t *testing.T) {
		dash, err := os.ReadFile("../../deploy/grafana/notifyd-dashboard.json")
		if err != nil {
			t.Fatal(err)
		}
		families := m.families()
		names := map[string]bool{}
		for _, n := range regexp.MustCompile(`notifyd_[a-z_]+`).FindAllString(string(dash), -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				n = strings.TrimSuffix(n, suffix)
			}
			names[n] = true
		}
		if len(names) < 10 {
			t.Fatalf("the dashboard names %d notifyd metrics, want at least 10: is the file what it should be?", len(names))
		}
		for n := range names {
			if !families[n] {
				t.Errorf("the dashboard queries %s: got no such metric in /metrics of a running notifyd", n)
			}
		}
	})

	t.Run("the alert rules use only exported metrics", func(t *testing.T) {
		rules, err := os.ReadFile("../../deploy/prometheus/alerts.yml")
		if err != nil {
			t.Fatal(err)
		}
		families := m.families()
		names := regexp.MustCompile(`notifyd_[a-z_]+`).FindAllString(string(rules), -1)
		if len(names) < 4 {
			t.Fatalf("the alert rules name %d notifyd metrics, want at least 4", len(names))
		}
		for _, n := range names {
			if !families[n] {
				t.Errorf("an alert rule queries %s: got no such metric in /metrics of a running notifyd", n)
			}
		}
	})

	t.Run("the contract lists every metric and only those", func(t *testing.T) {
		ts := tables(section(t, readContract(t), "## 6. Metrics and health"))
		if len(ts) != 1 || len(ts[0]) < 10 {
			t.Fatalf("section 6: got tables %v, want one table of the metrics", ts)
		}
		families := m.families()
		var prefixes []string
		listed := map[string]bool{}
		for _, n := range ts[0] {
			if p, ok := strings.CutSuffix(n, "*"); ok {
				prefixes = append(prefixes, p)
				found := false
				for f := range families {
					found = found || strings.HasPrefix(f, p)
				}
				if !found {
					t.Errorf("the contract lists %s: got no metric of that prefix in /metrics", n)
				}
				continue
			}
			listed[n] = true
			if !families[n] {
				t.Errorf("the contract lists %s: got no such metric in /metrics of a running notifyd", n)
			}
		}
	next:
		for f := range families {
			if !strings.HasPrefix(f, "notifyd_") || listed[f] {
				continue
			}
			for _, p := range prefixes {
				if strings.HasPrefix(f, p) {
					continue next
				}
			}
			t.Errorf("/metrics exports %s: got no row for it in the contract's section 6", f)
		}
	})

	// Shutdown: readiness must drop before the process is gone.
	if code, body, err := get(addr, "/readyz"); code != http.StatusOK {
		t.Fatalf("GET /readyz before shutdown: got %d %q, %v, want 200", code, body, err)
	}
	r.cancel()
	var notReady string
	deadline := time.Now().Add(30 * time.Second)
	for notReady == "" && time.Now().Before(deadline) {
		code, body, err := get(addr, "/readyz")
		switch {
		case err != nil:
			notReady = "server gone: " + err.Error()
		case code != http.StatusOK:
			notReady = fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
			if code != http.StatusServiceUnavailable {
				t.Errorf("GET /readyz during shutdown: got %d, want 503", code)
			}
		default:
			time.Sleep(time.Millisecond)
		}
	}
	if notReady == "" {
		t.Fatalf("GET /readyz: still 200 30s after shutdown began, want 503 or no server")
	}
	t.Logf("GET /readyz once shutdown began: %s", notReady)
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("notifyd run returned %v, want nil after a clean shutdown", r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("notifyd run still running 60s after shutdown began")
	}
	if code, _, err := get(addr, "/healthz"); err == nil {
		t.Errorf("GET /healthz after notifyd run returned: got %d, want the server gone", code)
	}
}
