package api

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	e.do(user, "GET", "/v1/inbox", nil, nil)
	e.do(user, "GET", "/v1/inbox?limit=0", nil, nil)
	e.do(uuid.Nil, "GET", "/v1/inbox/counts", nil, nil)
	m := e.api.metrics
	for _, c := range []struct {
		route, code string
		want        float64
	}{{"GET /v1/inbox", "200", 1}, {"GET /v1/inbox", "400", 1}, {"GET /v1/inbox/counts", "401", 1}} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues(c.route, c.code)); got != c.want {
			t.Errorf("requests{%s,%s}: got %v, want %v", c.route, c.code, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.latency); n != 2 {
		t.Errorf("latency series: got %d, want 2 (the two routes)", n)
	}
	s := e.openStream(user, "")
	s.next(t, "counts", 5*time.Second)
	if got := testutil.ToFloat64(m.open); got != 1 {
		t.Errorf("open streams: got %v, want 1", got)
	}
	e.write(row(user, time.Now(), "x"))
	s.notifications(t, 1, 5*time.Second)
	// The stream counts an event once its write has returned, which can
	// be after the client has read it.
	events := func() float64 { return testutil.ToFloat64(m.events.WithLabelValues("notification")) }
	for deadline := time.Now().Add(5 * time.Second); events() != 1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := events(); got != 1 {
		t.Errorf("notification events: got %v, want 1", got)
	}
	s.close()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.open) != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(m.open); got != 0 {
		t.Errorf("open streams after close: got %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.dropped); got != 0 {
		t.Errorf("dropped: got %v, want 0", got)
	}
}

// A hub with no stream open runs no query: commits wake it and its timer
// ticks, and it has nothing to feed. The first stream to open gets the rows
// committed after it, and the hub is idle again once it has closed.
func TestIdleHubRunsNoQuery(t *testing.T) {
	e := newEnv(t, Config{PollInterval: 50 * time.Millisecond}, "")
	polls := func() float64 { return testutil.ToFloat64(e.api.metrics.polls.WithLabelValues("ok")) }
	user := uuid.New()
	e.write(row(user, time.Now(), "before any stream"))
	time.Sleep(300 * time.Millisecond) // six of the timer's ticks, and the commit's wake-up
	if got := polls(); got != 0 {
		t.Fatalf("queries with no stream open: got %v, want 0", got)
	}

	s := e.openStream(user, "")
	s.next(t, "counts", 5*time.Second)
	e.write(row(user, time.Now(), "while open"))
	if got := s.notifications(t, 1, 5*time.Second); got[0].Title != "while open" {
		t.Fatalf("first row on the stream: got %q, want the row committed while it was open", got[0].Title)
	}
	s.close()
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(e.api.metrics.open) != 0; {
		if time.Now().After(deadline) {
			t.Fatal("the stream did not close")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a query that started before the close ends
	after := polls()
	if after == 0 {
		t.Fatal("no query while a stream was open")
	}
	e.write(row(user, time.Now(), "after the stream closed"))
	time.Sleep(300 * time.Millisecond)
	if got := polls(); got != after {
		t.Fatalf("queries after the last stream closed: got %v more, want none", got-after)
	}
}
