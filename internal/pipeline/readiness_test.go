package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/pgtest"
	"github.com/notifyd/notifyd/internal/postgres"
)

// lagSum is notifyd_consumer_lag summed over the partitions that have it.
func (r *running) lagSum() float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		panic(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "notifyd_consumer_lag" {
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// Behaviour 3: a database that hangs (a lock held on the table, or a
// server that accepts and never answers) makes the instance unready within
// 2 × --write-timeout; the lag keeps rising from the brokers' end offsets
// while fetching is paused; the age of the oldest unwritten message shows.
func TestHungDatabaseIsUnreadyAndLagKeepsRising(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		hang func(e *env, proxy *pgtest.Proxy) (release func())
	}{
		{"table lock", func(e *env, _ *pgtest.Proxy) func() { return e.lockTable() }},
		{"server that never answers", func(_ *env, proxy *pgtest.Proxy) func() { proxy.Hang(); return proxy.Restore }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			quickFailure(&e.cfg)
			e.cfg.WriteTimeout = time.Second
			proxy, proxied := pgtest.Proxied(t, e.url)
			st, err := postgres.Open(context.Background(), postgres.Config{URL: proxied})
			if err != nil {
				t.Fatalf("open store through the proxy: %v", err)
			}
			t.Cleanup(st.Close)
			r := e.startWith(e.cfg, st)
			sent := makeMsgs(0, 30)
			e.produceMsgs(sent)
			e.waitRows(30, 30*time.Second)
			pollUntil(t, 10*time.Second, "ready", func() bool { return r.p.Ready(context.Background()) == nil })

			release := tt.hang(e, proxy)
			hungAt := time.Now()
			more := makeMsgs(100, 30)
			e.produceMsgs(more)
			sent = append(sent, more...)
			var unready error
			for unready == nil {
				ctx, cancel := context.WithTimeout(context.Background(), e.cfg.WriteTimeout)
				unready = r.p.Ready(ctx)
				cancel()
				if unready == nil && time.Since(hungAt) > 2*e.cfg.WriteTimeout {
					t.Fatalf("still ready %s after the database hung (2 × write timeout %s)", time.Since(hungAt), e.cfg.WriteTimeout)
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("unready %s after the database hung: %v", time.Since(hungAt).Round(time.Millisecond), unready)

			// Lag from the brokers' end offsets, while nothing is written.
			pollUntil(t, 10*time.Second, "lag of the 30 unwritten messages", func() bool { return r.lagSum() >= 30 })
			more = makeMsgs(200, 60)
			e.produceMsgs(more)
			sent = append(sent, more...)
			pollUntil(t, 10*time.Second, "lag rising to 90 while the database hangs", func() bool { return r.lagSum() >= 90 })
			age := r.metric("notifyd_oldest_unwritten_message_seconds")
			if age <= 0 {
				t.Fatalf("age of the oldest unwritten message: got %v, want above 0", age)
			}
			pollUntil(t, 10*time.Second, "the age rising", func() bool { return r.metric("notifyd_oldest_unwritten_message_seconds") > age })
			// (The table itself cannot be read while it is locked.)
			if n := r.metric("notifyd_rows_stored_total"); n != 30 {
				t.Fatalf("rows stored while the database hangs: got %v, want 30", n)
			}

			release()
			e.waitRows(len(sent), 60*time.Second)
			e.checkTable(sent)
			pollUntil(t, 30*time.Second, "ready again", func() bool { return r.p.Ready(context.Background()) == nil })
			pollUntil(t, 10*time.Second, "lag back to 0", func() bool { return r.lagSum() == 0 })
			if age := r.metric("notifyd_oldest_unwritten_message_seconds"); age != 0 {
				t.Fatalf("age of the oldest unwritten message once written: got %v, want 0", age)
			}
			stillRunning(t, r)
		})
	}
}

// Behaviour 4: partitions added to the topic are consumed within 30 s,
// without a restart.
func TestAddedPartitionsAreConsumedWithoutRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.start()
	first := makeMsgs(0, 30)
	e.produceMsgs(first)
	e.waitRows(30, 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(e.prod).CreatePartitions(ctx, 2, testTopic)
	if err == nil {
		_, err = resp.On(testTopic, nil)
	}
	if err != nil {
		t.Fatalf("add partitions: %v", err)
	}
	addedAt := time.Now()
	// A producer that knows the new partitions.
	prod, err := kgo.NewClient(kgo.SeedBrokers(e.addrs...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	msgs := makeMsgs(100, 20)
	var recs []*kgo.Record
	for i, m := range msgs {
		recs = append(recs, &kgo.Record{Topic: testTopic, Partition: int32(3 + i%2), Value: m.value()})
	}
	if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce to the new partitions: %v", err)
	}
	e.waitStoredOffsets(map[int32]int64{0: 10, 1: 10, 2: 10, 3: 10, 4: 10}, 30*time.Second-time.Since(addedAt))
	t.Logf("new partitions stored %s after they were added", time.Since(addedAt).Round(time.Millisecond))
	e.checkTable(append(first, msgs...))
	stillRunning(t, r)
}

// Behaviour 8: a revocation waits for the write in flight of its
// partitions, as long as a write may legally take (write timeout ×
// attempts plus backoff), so that the next owner loads the position that
// write stored and is not fenced by it.
func TestRevocationWaitsForTheWriteInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.WriteTimeout = 3 * time.Second // budget: 4 × 3 s plus backoff, well past the lock below
	a := e.start()
	waitAssigned(t, 10*time.Second, []int{3}, a)
	release := e.lockTable()
	msgs := makeMsgs(0, 30)
	e.produceMsgs(msgs)
	pollUntil(t, 10*time.Second, "a write in flight", func() bool {
		for _, w := range a.p.writers {
			if w.attempt.Load() != 0 {
				return true
			}
		}
		return false
	})
	b := e.startWith(e.cfg, e.openStore())
	// The rebalance waits on a's revocation, which waits on its write.
	time.Sleep(time.Second)
	release()
	waitSplit(t, 30*time.Second, a, b)
	more := makeMsgs(100, 30)
	e.produceMsgs(more)
	e.waitStoredOffsets(map[int32]int64{0: 20, 1: 20, 2: 20}, 30*time.Second)
	e.checkTable(append(msgs, more...))
	for name, r := range map[string]*running{"a": a, "b": b} {
		if got := r.metric("notifyd_fenced_partitions_total"); got != 0 {
			t.Errorf("fenced partitions of %s: got %v, want 0 (the revocation waited for the write)", name, got)
		}
	}
	if got := a.metric("notifyd_duplicates_skipped_total") + b.metric("notifyd_duplicates_skipped_total"); got != 0 {
		t.Errorf("duplicates skipped: got %v, want 0", got)
	}
}
