package pipeline

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/pgtest"
	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/retry"
)

// Failure tests run the pipeline against a real kfake cluster and a real
// PostgreSQL while one of them fails, and check afterwards that every row is
// stored exactly once and every dead letter is where it belongs. Recovery
// times are logged, never asserted: timing goals live in benchmarks.

const dlqTopic = testTopic + ".dlq"

// quickFailure makes retries and the breaker fast enough for a test: a
// failed write is retried after 20, 40 and 80 ms, three such failures in a
// row open the breaker, and it probes again after 500 ms.
func quickFailure(cfg *Config) {
	cfg.Retry = retry.Policy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	cfg.Breaker = retry.BreakerConfig{Threshold: 3, Timeout: 500 * time.Millisecond}
}

// pollUntil waits until cond holds, and fails the test if it does not
// within d.
func pollUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stillRunning fails the test if Run has returned.
func stillRunning(t testing.TB, r *running) {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup's stop
		t.Fatalf("Run returned early: %v", err)
	default:
	}
}

// dlqEmpty fails the test if anything was dead-lettered.
func (e *env) dlqEmpty(r *running) {
	e.t.Helper()
	if n := e.pendingLetters(); n != 0 {
		e.t.Fatalf("dead letters recorded: got %d, want 0", n)
	}
	for p, o := range e.endOffsets(dlqTopic) {
		if o != 0 {
			e.t.Fatalf("dead-letter partition %d: got end offset %d, want 0", p, o)
		}
	}
	for _, class := range []string{"decode", "validate", "store"} {
		if got := r.metric("notifyd_dead_letters_total", "class", class); got != 0 {
			e.t.Fatalf("dead letters of class %s: got %v, want 0", class, got)
		}
	}
}

// load sends messages at a steady rate in the background.
type load struct {
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	sent mixed
}

// steadyLoad sends about perSecond messages a second, round-robin over the
// partitions, until end is called; every badEvery-th is invalid (none if 0).
func (e *env) steadyLoad(perSecond, badEvery int) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{}),
		sent: mixed{bad: map[string]*kgo.Record{}, per: map[int32]int64{}}}
	const tick = 10 * time.Millisecond
	each := max(1, perSecond/int(time.Second/tick))
	go func() {
		defer close(l.done)
		t := time.NewTicker(tick)
		defer t.Stop()
		for i := 0; ; {
			select {
			case <-l.stop:
				return
			case <-t.C:
			}
			var valid []msg
			recs := make([]*kgo.Record, each)
			for j := range recs {
				m := newMsg(i)
				recs[j] = &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Value: m.value()}
				if badEvery > 0 && i%badEvery == badEvery-1 {
					recs[j].Key = []byte("bad/" + strconv.Itoa(i))
					recs[j].Value = []byte(`{"not json` + strconv.Itoa(i))
				} else {
					valid = append(valid, m)
				}
				i++
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := e.prod.ProduceSync(ctx, recs...).FirstErr()
			cancel()
			if err != nil {
				e.t.Errorf("steady load: produce: %v", err)
				return
			}
			l.mu.Lock()
			l.sent.valid = append(l.sent.valid, valid...)
			for _, r := range recs {
				l.sent.per[r.Partition]++
				if r.Key != nil {
					l.sent.bad[string(r.Key)] = r
				}
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// end stops the load and returns what it sent.
func (l *load) end() *mixed {
	select {
	case <-l.done:
	default:
		close(l.stop)
		<-l.done
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return &l.sent
}

func TestFailureDatabaseOutageUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quickFailure(&e.cfg)
	e.cfg.BatchSize = 50
	proxy, proxied := pgtest.Proxied(t, e.url)
	st, err := postgres.Open(context.Background(), postgres.Config{URL: proxied})
	if err != nil {
		t.Fatalf("open store through the proxy: %v", err)
	}
	t.Cleanup(st.Close)
	// The pipeline writes through the proxy; the test reads directly.
	r := e.startWith(e.cfg, st)
	// One message in 25 is invalid: those, and only those, are dead
	// letters, outage or not.
	l := e.steadyLoad(200, 25)
	defer l.end()

	pollUntil(t, 30*time.Second, "rows stored before the outage", func() bool { return e.count() >= 100 })
	pollUntil(t, 10*time.Second, "ready before the outage", func() bool { return r.p.Ready(context.Background()) == nil })

	proxy.Cut()
	cutAt := time.Now()
	pollUntil(t, 10*time.Second, "breaker open (notifyd_breaker_state 2) during the outage", func() bool {
		return r.metric("notifyd_breaker_state") == 2
	})
	t.Logf("breaker opened %s after the cut", time.Since(cutAt).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := r.p.Ready(ctx); err == nil {
		t.Errorf("Ready during the outage: got nil, want an error")
	} else {
		t.Logf("Ready during the outage: %v", err)
	}
	cancel()
	time.Sleep(time.Until(cutAt.Add(3 * time.Second)))
	stalled := e.count()
	if r.metric("notifyd_retries_total", "target", "database") == 0 {
		t.Errorf("database retries during the outage: got 0, want some")
	}

	proxy.Restore()
	restoredAt := time.Now()
	pollUntil(t, 30*time.Second, "a new row after the database came back", func() bool { return e.count() > stalled })
	t.Logf("database outage of %s under load: first new row %s after restore (%d rows before)",
		restoredAt.Sub(cutAt).Round(time.Millisecond), time.Since(restoredAt).Round(time.Millisecond), stalled)

	sent := l.end()
	e.waitStoredOffsets(sent.per, 60*time.Second)
	e.checkTable(sent.valid)
	e.checkDeadLetters(sent.bad, func(string) string { return "decode" })
	r.waitMetric(t, 10*time.Second, float64(len(sent.bad)), "notifyd_dead_letters_total", "class", "decode")
	if got := r.metric("notifyd_dead_letters_total", "class", "store"); got != 0 {
		t.Errorf("dead letters of class store: got %v, want 0: an outage is no reason to dead-letter", got)
	}
	r.waitMetric(t, 10*time.Second, 0, "notifyd_breaker_state")
	pollUntil(t, 10*time.Second, "ready after the outage", func() bool { return r.p.Ready(context.Background()) == nil })
	if got := r.metric("notifyd_duplicates_skipped_total"); got != 0 {
		t.Errorf("duplicates skipped: got %v, want 0 (a message was written twice)", got)
	}
	stillRunning(t, r)
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestFailureBrokerRestart(t *testing.T) {
	t.Parallel()
	port, dir := freePort(t), t.TempDir()
	e := newEnv(t, kfake.Ports(port), kfake.DataDir(dir))
	quickFailure(&e.cfg)
	r := e.start()

	msgs := makeMsgs(0, 900)
	e.produceMsgs(msgs[:300])
	e.waitRows(300, 30*time.Second)
	// These are acknowledged, so on disk, but possibly not yet consumed
	// when the broker goes.
	e.produceMsgs(msgs[300:600])
	e.cluster.Close()
	// Let the clients notice, and the pipeline write what it had read, so
	// that the next new row can only come from the new broker.
	stalled, since := e.count(), time.Now()
	for time.Since(since) < time.Second {
		if n := e.count(); n != stalled {
			stalled, since = n, time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The same port and data directory: the broker comes back with its log.
	var c *kfake.Cluster
	var err error
	for range 50 {
		c, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir))
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		time.Sleep(20 * time.Millisecond) // a client's socket briefly took the port
	}
	if err != nil {
		t.Fatalf("restart kfake: %v", err)
	}
	startedAt := time.Now()
	t.Cleanup(c.Close)
	e.cluster = c
	e.produceMsgs(msgs[600:])
	pollUntil(t, 30*time.Second, "a new row after the broker came back", func() bool { return e.count() > stalled })
	t.Logf("broker restart: first new row %s after the new broker started (%d rows before)",
		time.Since(startedAt).Round(time.Millisecond), stalled)

	e.waitRows(len(msgs), 60*time.Second)
	e.checkTable(msgs)
	e.waitStoredOffsets(map[int32]int64{0: 300, 1: 300, 2: 300}, 10*time.Second)
	if got := r.metric("notifyd_duplicates_skipped_total"); got != 0 {
		t.Errorf("duplicates skipped: got %v, want 0 (a message was written twice)", got)
	}
	e.dlqEmpty(r)
	stillRunning(t, r)
}

// mixed is records sent to the input topic: valid messages and invalid
// ones, the invalid ones keyed by "bad/<n>".
type mixed struct {
	valid []msg
	bad   map[string]*kgo.Record // by key, with offsets once produced
	per   map[int32]int64
}

// sendMixed sends n records to each partition; every step-th is invalid,
// alternately undecodable and failing validation.
func (e *env) sendMixed(into *mixed, first, n, step int) {
	e.t.Helper()
	var recs []*kgo.Record
	for p := int32(0); p < 3; p++ {
		for i := range n {
			k := first + int(p)*n + i
			if i%step == step-1 {
				key := "bad/" + strconv.Itoa(k)
				v := []byte(`{"not json` + strconv.Itoa(k))
				if k%2 == 0 {
					m := newMsg(k)
					m.UserID = "not-a-uuid-" + strconv.Itoa(k)
					v = m.value()
				}
				r := &kgo.Record{Topic: testTopic, Partition: p, Key: []byte(key), Value: v}
				into.bad[key] = r
				recs = append(recs, r)
				continue
			}
			m := newMsg(k)
			into.valid = append(into.valid, m)
			recs = append(recs, &kgo.Record{Topic: testTopic, Partition: p, Value: m.value()})
		}
		into.per[p] += int64(n)
	}
	e.produceRecs(recs...)
}

// checkDeadLetters reads the dead-letter topic and checks that it holds
// exactly the bad records, each at least once (a duplicate is recognisable
// by its source headers), with the original value and the right class. It
// returns the letters by key.
func (e *env) checkDeadLetters(bad map[string]*kgo.Record, class func(key string) string) map[string]*kgo.Record {
	e.t.Helper()
	e.waitRelayed(30 * time.Second)
	got := map[string]*kgo.Record{}
	for _, l := range e.readTopic(dlqTopic) {
		key := string(l.Key)
		src, ok := bad[key]
		if !ok {
			e.t.Fatalf("dead letter with key %q value %q: want only the bad messages", l.Key, l.Value)
		}
		if !bytes.Equal(l.Value, src.Value) {
			e.t.Fatalf("%s value: got %q, want %q", key, l.Value, src.Value)
		}
		for _, h := range []struct{ name, want string }{
			{dlq.HeaderClass, class(key)},
			{dlq.HeaderSourceTopic, testTopic},
			{dlq.HeaderSourcePartition, strconv.Itoa(int(src.Partition))},
			{dlq.HeaderSourceOffset, strconv.FormatInt(src.Offset, 10)},
		} {
			if v, _ := dlq.Header(l, h.name); v != h.want {
				reason, _ := dlq.Header(l, dlq.HeaderError)
				e.t.Fatalf("%s header %s: got %q, want %q (error %q)", key, h.name, v, h.want, reason)
			}
		}
		if reason, _ := dlq.Header(l, dlq.HeaderError); reason == "" {
			e.t.Fatalf("%s header %s: got empty, want a reason", key, dlq.HeaderError)
		}
		got[key] = l
	}
	for key := range bad {
		if got[key] == nil {
			e.t.Fatalf("dead letter of %s: got none, want one", key)
		}
	}
	return got
}

func badClass(bad map[string]*kgo.Record) func(string) string {
	return func(key string) string {
		if bytes.HasPrefix(bad[key].Value, []byte(`{"not json`)) {
			return "decode"
		}
		return "validate"
	}
}

func TestFailureDeadLetterProduceErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quickFailure(&e.cfg)
	// The client retries a retriable produce error after a metadata
	// refresh, at most every MetadataMinAge (default 5 s): shortened here
	// so that five of them do not take 25 s.
	r := e.start(kgo.MetadataMinAge(250 * time.Millisecond))
	sent := &mixed{bad: map[string]*kgo.Record{}, per: map[int32]int64{}}

	// Errors the Kafka client retries by itself.
	start := time.Now()
	retriable := e.cluster.Fault(kfake.Fault{
		Keys: []kmsg.Key{kmsg.Produce}, Topic: dlqTopic, Err: kerr.NotEnoughReplicas, Count: 5,
	})
	e.sendMixed(sent, 0, 100, 10)
	e.waitStoredOffsets(sent.per, 30*time.Second)
	e.waitRelayed(30 * time.Second)
	if retriable.Hits() == 0 {
		t.Fatalf("retriable produce fault never fired")
	}
	t.Logf("%d retriable dead-letter produce errors: all stored and dead-lettered in %s",
		retriable.Hits(), time.Since(start).Round(time.Millisecond))

	// Errors the client gives up on, that may pass: the relay retries them
	// with backoff while every partition keeps flowing, the letters safe
	// in the table meanwhile.
	transient := e.cluster.Fault(kfake.Fault{
		Keys: []kmsg.Key{kmsg.Produce}, Topic: dlqTopic, Err: kerr.UnknownServerError, Count: -1,
	})
	e.sendMixed(sent, 1000, 50, 10)
	e.waitStoredOffsets(sent.per, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := transient.Wait(ctx, 3); err != nil {
		t.Fatalf("transient produce fault: got %d hits, want 3: %v", transient.Hits(), err)
	}
	if n := e.pendingLetters(); n != 15 {
		t.Fatalf("dead letters pending while the topic fails: got %d, want 15", n)
	}
	if r.metric("notifyd_retries_total", "target", "dlq") == 0 {
		t.Errorf("dlq retries: got 0, want some")
	}
	transient.Remove()
	e.waitRelayed(30 * time.Second)

	// Errors that say the topic will never take the letter: kept in the
	// table, and nothing waits for them.
	refused := e.cluster.Fault(kfake.Fault{
		Keys: []kmsg.Key{kmsg.Produce}, Topic: dlqTopic, Err: kerr.PolicyViolation, Count: -1,
	})
	kept := &mixed{bad: map[string]*kgo.Record{}, per: map[int32]int64{}}
	e.sendMixed(kept, 2000, 50, 10)
	for p, n := range kept.per {
		sent.per[p] += n
	}
	sent.valid = append(sent.valid, kept.valid...)
	e.waitStoredOffsets(sent.per, 30*time.Second)
	e.waitRelayed(30 * time.Second)
	refused.Remove()
	r.waitMetric(t, 10*time.Second, float64(len(kept.bad)), "notifyd_dead_letters_kept_total")
	e.checkKept(kept.bad)

	e.checkTable(sent.valid)
	letters := e.checkDeadLetters(sent.bad, badClass(sent.bad))
	// A letter is sent again only when its earlier send is not known to
	// have succeeded: here only the ones the topic failed for a while.
	for key, l := range letters {
		a, _ := dlq.Header(l, dlq.HeaderAttempts)
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 {
			t.Fatalf("%s header %s: got %q, want a count of at least 1", key, dlq.HeaderAttempts, a)
		}
		k, _ := strconv.Atoi(strings.TrimPrefix(key, "bad/"))
		if k < 1000 && n != 1 {
			t.Fatalf("%s header %s: got %d, want 1 (its first send succeeded)", key, dlq.HeaderAttempts, n)
		}
		if k >= 1000 && n < 2 {
			t.Fatalf("%s header %s: got %d, want at least 2 (its first sends failed)", key, dlq.HeaderAttempts, n)
		}
	}
	stillRunning(t, r)
}

// checkKept asserts that the dead-letter table keeps exactly the bad
// records, each once, with their exact key and value, as refused by the
// dead-letter topic.
func (e *env) checkKept(bad map[string]*kgo.Record) {
	e.t.Helper()
	rows, err := e.store.Pool().Query(context.Background(),
		`SELECT key, value, source_partition, source_offset, kept_reason FROM notifyd_dead_letters WHERE kept_reason IS NOT NULL`)
	if err != nil {
		e.t.Fatal(err)
	}
	seen := map[string]bool{}
	for rows.Next() {
		var key, value []byte
		var part int32
		var off int64
		var why string
		if err := rows.Scan(&key, &value, &part, &off, &why); err != nil {
			e.t.Fatal(err)
		}
		src, ok := bad[string(key)]
		if !ok || seen[string(key)] {
			e.t.Fatalf("kept dead letter %q (%d/%d): want each refused bad message once", key, part, off)
		}
		seen[string(key)] = true
		if !bytes.Equal(value, src.Value) || part != src.Partition || off != src.Offset {
			e.t.Fatalf("kept dead letter %q: got %d/%d %d bytes, want %d/%d %d bytes, unchanged",
				key, part, off, len(value), src.Partition, src.Offset, len(src.Value))
		}
		if why == "" {
			e.t.Fatalf("kept dead letter %q: no reason", key)
		}
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	if len(seen) != len(bad) {
		e.t.Fatalf("kept dead letters: got %d, want %d", len(seen), len(bad))
	}
}

func TestFailureFetchErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quickFailure(&e.cfg)
	// Each NOT_LEADER answer costs the client a metadata round and a
	// backoff of about 1.5 s here (kfake keeps naming the same leader),
	// hence only two.
	faults := e.cluster.Fault(
		kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: testTopic, Err: kerr.NotLeaderForPartition, Count: 2},
		kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: testTopic, Err: kerr.UnknownServerError, Count: 5},
		kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: testTopic, Partitions: []int32{1}, Err: kerr.KafkaStorageError, Count: 5},
	)
	sent := &mixed{bad: map[string]*kgo.Record{}, per: map[int32]int64{}}
	e.sendMixed(sent, 0, 200, 50)
	start := time.Now()
	// As in TestFailureDeadLetterProduceErrors: a fetch error waits for a
	// metadata refresh, at most every MetadataMinAge.
	r := e.start(kgo.MetadataMinAge(250 * time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := faults.Wait(ctx, 12); err != nil {
		t.Fatalf("fetch faults: got %d hits, want 12: %v", faults.Hits(), err)
	}
	e.sendMixed(sent, 1000, 100, 50)
	e.waitStoredOffsets(sent.per, 30*time.Second)
	t.Logf("%d fetch errors: all stored in %s", faults.Hits(), time.Since(start).Round(time.Millisecond))
	e.checkTable(sent.valid)
	e.checkDeadLetters(sent.bad, badClass(sent.bad))
	if got := r.metric("notifyd_duplicates_skipped_total"); got != 0 {
		t.Errorf("duplicates skipped: got %v, want 0", got)
	}
	stillRunning(t, r)
}

func TestFailureRowsRejectedByConstraint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quickFailure(&e.cfg)
	if _, err := e.store.Pool().Exec(context.Background(),
		`ALTER TABLE notifications ADD CONSTRAINT title_not_bad CHECK (title <> 'BAD')`); err != nil {
		t.Fatalf("add constraint: %v", err)
	}
	r := e.start()

	var good []msg
	bad := map[string]*kgo.Record{}
	var recs []*kgo.Record
	for i := range 600 {
		m := newMsg(i)
		rec := &kgo.Record{Topic: testTopic, Partition: int32(i % 3), Value: m.value()}
		if i%41 == 7 {
			m.Title = "BAD"
			rec.Value = m.value()
			rec.Key = []byte("bad/" + strconv.Itoa(i))
			bad[string(rec.Key)] = rec
		} else {
			good = append(good, m)
		}
		recs = append(recs, rec)
	}
	e.produceRecs(recs...)
	e.waitStoredOffsets(map[int32]int64{0: 200, 1: 200, 2: 200}, 30*time.Second)
	e.checkTable(good)
	letters := e.checkDeadLetters(bad, func(string) string { return "store" })
	for key, l := range letters {
		reason, _ := dlq.Header(l, dlq.HeaderError)
		for _, want := range []string{`violates check constraint "title_not_bad"`, "23514"} {
			if !strings.Contains(reason, want) {
				t.Fatalf("%s header %s: got %q, want it to contain %q", key, dlq.HeaderError, reason, want)
			}
		}
	}
	r.waitMetric(t, 10*time.Second, float64(len(bad)), "notifyd_dead_letters_total", "class", "store")
	if got, want := r.metric("notifyd_rows_stored_total"), float64(len(good)); got != want {
		t.Errorf("rows stored: got %v, want %v", got, want)
	}
	if got := r.metric("notifyd_breaker_state"); got != 0 {
		t.Errorf("breaker state: got %v, want 0: rejected rows are no database failure", got)
	}
	stillRunning(t, r)
}
