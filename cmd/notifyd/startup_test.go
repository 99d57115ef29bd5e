package main

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/pgtest"
)

// silentBroker listens on a local port, accepts every connection and never
// answers: a broker address that is wrong in the worst way.
func silentBroker(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// jsonLines parses every line of out as a JSON log record.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for line := range strings.Lines(out) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON log line: %q", line)
			continue
		}
		if m["level"] == nil || m["msg"] == nil {
			t.Errorf("JSON line without level or msg: %q", line)
		}
		recs = append(recs, m)
	}
	return recs
}

// TestSilentBrokerIsNamedWhileWaiting starts notifyd against a broker that
// accepts connections and never answers: it must say what it waits for
// (waitNotice, 5 s) long before the client's own timeouts end the wait, and
// stop at the first signal.
func TestSilentBrokerIsNamedWhileWaiting(t *testing.T) {
	addr := silentBroker(t)
	d := startDaemon(t, "notifyd", childEnv(), "run", "--brokers", addr, "--database-url", pgtest.Schema(t),
		"--metrics-addr", "", "--log-format", "json")
	l, ok := d.out.waitFor("still waiting for the Kafka brokers", 30*time.Second)
	if !ok {
		t.Fatalf("no line about waiting for the brokers within 30s:\n%s", d.out.tail(20))
	}
	t.Logf("waiting notice %s after start", l.at.Sub(d.started).Round(100*time.Millisecond))
	if !strings.Contains(l.text, addr) {
		t.Errorf("the notice does not name the broker %s: %s", addr, l.text)
	}
	if !d.running() {
		t.Fatalf("exited instead of waiting:\n%s", d.out.tail(20))
	}
	d.signal(syscall.SIGTERM)
	code, ok := d.wait(15 * time.Second)
	if !ok {
		t.Fatalf("still running 15s after the first signal:\n%s", d.out.tail(20))
	}
	if code != 0 {
		t.Fatalf("exit code after one signal during start-up: got %d, want 0 (a clean stop)\n%s", code, d.out.tail(10))
	}
}

// TestUnknownTopicWarnsAndIsNotReady runs notifyd with a --topic that does
// not exist: a warning says so, /readyz is not ready and says why, and once
// the topic is created notifyd becomes ready.
func TestUnknownTopicWarnsAndIsNotReady(t *testing.T) {
	e := newOpsEnv(t)
	const typo = "notifcations"
	d := startDaemon(t, "notifyd", childEnv(), "run", "--brokers", e.brokers, "--database-url", e.url,
		"--topic", typo, "--metrics-addr", "127.0.0.1:0", "--log-format", "json")
	addr := d.jsonAttr("serving /metrics, /healthz and /readyz", "addr", 60*time.Second)
	l, ok := d.out.waitFor("the input topic does not exist", 30*time.Second)
	if !ok {
		t.Fatalf("no warning about the missing topic:\n%s", d.out.tail(20))
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(l.text), &rec); err != nil || rec["level"] != "WARN" || rec["topic"] != typo {
		t.Errorf("got %s, want a WARN line naming topic %s", l.text, typo)
	}
	code, body, err := get(addr, "/readyz")
	if err != nil || code != 503 || !strings.Contains(body, "topic "+typo+" does not exist") {
		t.Fatalf("/readyz: got %d %q %v, want 503 naming the missing topic", code, body, err)
	}
	if v, ok := scrape(t, addr).value("notifyd_ready"); !ok || v != 0 {
		t.Errorf("notifyd_ready: got %v (present %v), want 0 while the topic is missing", v, ok)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 3, -1, nil, typo); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, func() (bool, string) {
		code, body, err := get(addr, "/readyz")
		return err == nil && code == 200, body
	})
	if v, ok := scrape(t, addr).value("notifyd_ready"); !ok || v != 1 {
		t.Errorf("notifyd_ready: got %v (present %v), want 1 once ready", v, ok)
	}
	if _, ok := d.out.waitFor("the input topic exists now", 5*time.Second); !ok {
		t.Errorf("no line saying the topic exists now:\n%s", d.out.tail(10))
	}
}

// TestJSONLogsAreAllJSON runs notifyd with --log-format json through start,
// work and a signal: every line is a JSON record, durations are Go
// duration strings, the signal notice is a record too, and the Kafka
// client's info lines are not at info.
func TestJSONLogsAreAllJSON(t *testing.T) {
	w := newWorld(t, 7)
	d, _ := w.startServing(t, "g")
	w.mustProduce(20, 0.2)
	w.waitDrained("g", 60*time.Second)
	d.signal(syscall.SIGTERM)
	if code, ok := d.wait(30 * time.Second); !ok || code != 0 {
		t.Fatalf("after SIGTERM: exited %v with code %d, want 0:\n%s", ok, code, d.out.tail(20))
	}
	var sawSignal, sawDuration bool
	for _, m := range jsonLines(t, d.out.String()) {
		if m["component"] == "kafka" && m["level"] == "INFO" {
			t.Errorf("a Kafka client line at info: %v", m)
		}
		if m["msg"] == "shutting down; send the signal again to exit at once" && m["signal"] == "terminated" {
			sawSignal = true
		}
		if m["msg"] == "consuming" {
			s, ok := m["flush_interval"].(string)
			if _, err := time.ParseDuration(s); !ok || err != nil {
				t.Errorf("flush_interval: got %#v, want a Go duration string", m["flush_interval"])
			}
			sawDuration = true
		}
	}
	t.Logf("%d JSON lines", len(jsonLines(t, d.out.String())))
	if !sawSignal {
		t.Errorf("no JSON record of the signal:\n%s", d.out.tail(10))
	}
	if !sawDuration {
		t.Errorf("no consuming line:\n%s", d.out.tail(40))
	}
}

// TestProduceWithoutABroker checks that `notifyd produce` fails, naming
// --brokers, when nothing listens there and when a listener never answers.
func TestProduceWithoutABroker(t *testing.T) {
	for name, addr := range map[string]string{
		"closed port":     "127.0.0.1:" + strconv.Itoa(closedPort(t)),
		"silent listener": silentBroker(t),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			code, _, stderr := runBinary(t, childEnv(), 30*time.Second, "produce", "--count", "10", "--brokers", addr)
			t.Logf("failed after %s", time.Since(start).Round(100*time.Millisecond))
			if code != exitFailure {
				t.Fatalf("exit code: got %d, want %d\n%s", code, exitFailure, stderr)
			}
			if !strings.Contains(stderr, "--brokers "+addr) {
				t.Fatalf("stderr does not name --brokers %s:\n%s", addr, stderr)
			}
		})
	}
}

// TestProduceStopsAtTheFirstSignal sends at a steady rate with no end and
// interrupts once: the command must end by itself, reporting what it sent.
func TestProduceStopsAtTheFirstSignal(t *testing.T) {
	e := newOpsEnv(t)
	d := startDaemon(t, "produce", childEnv(), "produce", "--brokers", e.brokers, "--rate", "200", "--duration", "1h")
	time.Sleep(1500 * time.Millisecond)
	d.signal(syscall.SIGINT)
	code, ok := d.wait(15 * time.Second)
	if !ok {
		t.Fatalf("still running 15s after the first signal:\n%s", d.out.tail(10))
	}
	if code != 0 || !strings.Contains(d.out.String(), "produced ") {
		t.Fatalf("exit code %d, want 0 with the summary:\n%s", code, d.out.tail(10))
	}
}

// TestProduceStopsAtTheFirstSignalWhenTheBrokerIsGone interrupts a produce
// whose broker went away mid-run: what is buffered cannot be acknowledged,
// and one signal must still end the command, reporting the failure.
func TestProduceStopsAtTheFirstSignalWhenTheBrokerIsGone(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "notifications"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := startDaemon(t, "produce", childEnv(), "produce", "--brokers", strings.Join(c.ListenAddrs(), ","),
		"--rate", "500", "--duration", "1h")
	time.Sleep(1500 * time.Millisecond)
	c.Close()
	time.Sleep(500 * time.Millisecond)
	d.signal(syscall.SIGINT)
	code, ok := d.wait(15 * time.Second)
	if !ok {
		t.Fatalf("still running 15s after the first signal:\n%s", d.out.tail(10))
	}
	if code != exitFailure || !strings.Contains(d.out.String(), "not acknowledged") {
		t.Fatalf("exit code %d, want %d saying what was not acknowledged:\n%s", code, exitFailure, d.out.tail(10))
	}
}

// TestProduceToOneUser sends with --user: every message is for that user,
// and a --user that is not a UUID is refused, named.
func TestProduceToOneUser(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "notifications"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := strings.Join(c.ListenAddrs(), ",")
	const user = "6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11"
	if code, _, stderr := runBinary(t, childEnv(), 30*time.Second, "produce", "--count", "20", "--user", user, "--brokers", brokers, "--quiet"); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, stderr)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("notifications"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := 0
	for got < 20 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			var m struct {
				UserID string `json:"user_id"`
			}
			if err := json.Unmarshal(r.Value, &m); err != nil || m.UserID != user {
				t.Errorf("record for user %q (%v), want %s: %s", m.UserID, err, user, r.Value)
			}
			got++
		})
	}
	if got != 20 {
		t.Fatalf("read %d records, want 20", got)
	}
	code, _, stderr := runBinary(t, childEnv(), 30*time.Second, "produce", "--count", "1", "--user", "not-a-uuid", "--brokers", brokers)
	if code == 0 || !strings.Contains(stderr, "--user") {
		t.Fatalf("exit code %d, want a refusal naming --user:\n%s", code, stderr)
	}
}
