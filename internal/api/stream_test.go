package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/notifyd/notifyd/internal/notification"
)

func sameIDs(t *testing.T, label string, got []Notification, want []notification.Notification) {
	t.Helper()
	g := map[uuid.UUID]int{}
	for _, n := range got {
		g[n.ID]++
	}
	if len(got) != len(want) {
		t.Fatalf("%s: got %d rows, want %d", label, len(got), len(want))
	}
	for _, w := range want {
		if g[w.ID] != 1 {
			t.Fatalf("%s: row %s (%s) arrived %d times, want once", label, w.ID, w.Title, g[w.ID])
		}
	}
}

func TestStreamDeliversEachCommittedRowOnce(t *testing.T) {
	e := newEnv(t, Config{}, "")
	alice, bob := uuid.New(), uuid.New()
	a1, a2, b1 := e.openStream(alice, ""), e.openStream(alice, ""), e.openStream(bob, "")
	for _, s := range []*stream{a1, a2, b1} {
		s.next(t, "counts", 5*time.Second)
	}
	var aRows, bRows []notification.Notification
	for i := range 3 { // three transactions
		var batch []notification.Notification
		for j := range 40 {
			r := row(alice, time.Now().Add(-time.Duration(j)*time.Hour), fmt.Sprint("a", i, j))
			aRows, batch = append(aRows, r), append(batch, r)
		}
		b := row(bob, time.Now(), fmt.Sprint("b", i))
		bRows, batch = append(bRows, b), append(batch, b)
		e.write(batch...)
	}
	for _, s := range []*stream{a1, a2} {
		got := s.notifications(t, len(aRows), 10*time.Second)
		sameIDs(t, "alice", got, aRows)
		s.quiet(t, 300*time.Millisecond)
	}
	sameIDs(t, "bob", b1.notifications(t, 3, 10*time.Second), bRows)
	b1.quiet(t, 100*time.Millisecond)
	// Counts come along, after the rows of their query: the last says 120.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ev sseEvent
		if len(a1.skippedCounts) > 0 {
			ev, a1.skippedCounts = a1.skippedCounts[0], a1.skippedCounts[1:]
		} else {
			ev = a1.next(t, "counts", time.Until(deadline))
		}
		if ev.id == "" {
			t.Fatalf("counts event without an id: %+v", ev)
		}
		if ev.data == `{"unread":120,"unseen":120,"capped":false}` {
			break
		}
	}
}

// A transaction left open does not hold back rows committed after it
// started, and its own row arrives once it commits: nothing skipped,
// nothing twice, also for a client that resumes in between.
func TestStreamDeliversAroundOpenTransactions(t *testing.T) {
	e := newEnv(t, Config{PollInterval: 50 * time.Millisecond}, "")
	user := uuid.New()
	s := e.openStream(user, "")
	s.next(t, "counts", 5*time.Second)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := row(user, time.Now(), "first")
	if _, err := tx.Exec(ctx, `INSERT INTO notifications (id, user_id, event_type, title, body, created_at) VALUES ($1, $2, 'x', $3, '', $4)`,
		first.ID, user, first.Title, first.CreatedAt); err != nil {
		t.Fatal(err)
	}
	second := row(user, time.Now(), "second")
	e.write(second)
	ev := s.next(t, "notification", 5*time.Second)
	if !strings.Contains(ev.data, `"second"`) {
		t.Fatalf("got %s, want the second row while the first's transaction is open", ev.data)
	}
	s.quiet(t, 300*time.Millisecond)
	s.close()
	// Resume from the id of "second", then the first commits.
	r := e.openStream(user, ev.id)
	r.next(t, "counts", 5*time.Second)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	sameIDs(t, "after commit", r.notifications(t, 1, 5*time.Second), []notification.Notification{first})
	r.quiet(t, 300*time.Millisecond)
	// And from the very start: both, once.
	all := e.openStream(user, "0:0:")
	sameIDs(t, "from the start", all.notifications(t, 2, 5*time.Second), []notification.Notification{first, second})
	all.quiet(t, 300*time.Millisecond)
}

func TestStreamResumesFromLastEventID(t *testing.T) {
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	s := e.openStream(user, "")
	first := s.next(t, "counts", 5*time.Second)
	var early []notification.Notification
	for i := range 3 {
		early = append(early, row(user, time.Now(), fmt.Sprint("early", i)))
	}
	e.write(early...)
	s.notifications(t, 3, 5*time.Second)
	// The id of the last event of any kind is where the client resumes.
	last := s.next(t, "counts", 5*time.Second).id
	s.close()

	var missed []notification.Notification
	for i := range 5 {
		r := row(user, time.Now(), fmt.Sprint("missed", i))
		missed = append(missed, r)
		e.write(r)
	}
	r := e.openStream(user, last)
	sameIDs(t, "resumed", r.notifications(t, 5, 5*time.Second), missed)
	r.quiet(t, 300*time.Millisecond)
	live := row(user, time.Now(), "live")
	e.write(live)
	sameIDs(t, "live after resume", r.notifications(t, 1, 5*time.Second), []notification.Notification{live})

	// From the very first id: everything since, once.
	all := e.openStream(user, first.id)
	sameIDs(t, "from the start", all.notifications(t, 9, 5*time.Second), append(append(early, missed...), live))
	all.quiet(t, 300*time.Millisecond)
}

// A serve replica (its own hub and pool) gets the rows another process
// writes through the write path.
func TestStreamOnReplicaGetsRowsOfAnotherWriter(t *testing.T) {
	e := newEnv(t, Config{}, "")
	_, replica, _ := startAPI(t, Config{}, e.url)
	user := uuid.New()
	s := openStreamAt(t, replica.URL, user, "")
	s.next(t, "counts", 5*time.Second)
	var rows []notification.Notification
	for i := range 150 { // COPY path
		rows = append(rows, row(user, time.Now(), fmt.Sprint(i)))
	}
	e.write(rows...)
	sameIDs(t, "replica", s.notifications(t, 150, 10*time.Second), rows)
}

// The database goes away under open streams; rows written meanwhile (by a
// writer that still reaches it) arrive once it is back, without a reconnect
// of the client.
func TestStreamRidesOutDatabaseOutage(t *testing.T) {
	url := schemaFor(t)
	proxy, purl := proxied(t, url)
	e := newEnvOn(t, url, Config{QueryTimeout: time.Second, PollInterval: 100 * time.Millisecond}, purl)
	user := uuid.New()
	s := e.openStream(user, "")
	s.next(t, "counts", 5*time.Second)
	proxy.Cut()
	var rows []notification.Notification
	for i := range 3 {
		r := row(user, time.Now(), fmt.Sprint(i))
		rows = append(rows, r)
		e.write(r)
	}
	time.Sleep(time.Second)
	proxy.Restore()
	sameIDs(t, "after the outage", s.notifications(t, 3, 15*time.Second), rows)
	after := row(user, time.Now(), "after")
	e.write(after)
	sameIDs(t, "live after the outage", s.notifications(t, 1, 10*time.Second), []notification.Notification{after})
}

func TestSlowStreamIsDropped(t *testing.T) {
	e := newEnv(t, Config{StreamBuffer: 2}, "")
	user := uuid.New()
	sb := e.api.hub.subscribe(user, nil)
	defer e.api.hub.unsubscribe(sb)
	select {
	case <-sb.start:
	case <-time.After(5 * time.Second):
		t.Fatal("stream never started")
	}
	// One write per hub query: each brings the stream one more batch.
	dropped := false
	for i := 0; i < 50 && !dropped; i++ {
		e.write(row(user, time.Now(), fmt.Sprint(i)))
		select {
		case <-sb.dropped:
			dropped = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !dropped {
		t.Fatal("a stream that reads nothing was not dropped")
	}
	if n := sb.pending(); n != 2 {
		t.Fatalf("dropped stream holds %d batches, want its buffer of 2", n)
	}
	e.api.hub.mu.Lock()
	_, still := e.api.hub.active[user]
	e.api.hub.mu.Unlock()
	if still {
		t.Fatal("dropped stream still registered")
	}
}

// A client that stops reading a stream served on its taken-over
// connection is dropped, whichever comes first: its queue fills up (the
// hub drops it, and the write it is stuck in ends at once) or a write
// outlives the write deadline (its writer drops it). Either way the
// connection is closed within a second, the stream unregistered and
// counted as dropped once, and the server holds no more of its events
// than the stream buffer.
func TestStalledClientIsDroppedFromItsConnection(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"full queue", Config{StreamBuffer: 2, WriteDeadline: time.Minute}},
		{"write deadline", Config{StreamBuffer: 1000, WriteDeadline: 300 * time.Millisecond}},
	} {
		t.Run(c.name, func(t *testing.T) { stallStream(t, c.cfg) })
	}
}

func stallStream(t *testing.T, cfg Config) {
	e := newEnv(t, cfg, "")
	user := uuid.New()
	// A receive buffer of a few KB fills after a few events.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(e.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/inbox/stream HTTP/1.1\r\nHost: notifyd\r\nAuthorization: Bearer %s\r\n\r\n", token(t, user))
	br := bufio.NewReader(conn)
	if status, err := br.ReadString('\n'); err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("stream answered %q, %v", status, err)
	}
	active := func() bool {
		e.api.hub.mu.Lock()
		defer e.api.hub.mu.Unlock()
		return len(e.api.hub.active[user]) > 0
	}
	for deadline := time.Now().Add(5 * time.Second); !active(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("stream never started")
		}
	}
	pending := func() int {
		e.api.hub.mu.Lock()
		defer e.api.hub.mu.Unlock()
		n := 0
		for sb := range e.api.hub.active[user] {
			n = max(n, sb.pending())
		}
		return n
	}

	// From here on the client reads nothing. Rows of 64 KB, one write
	// each, until the stream is gone.
	big := strings.Repeat("x", 64<<10)
	for i := 0; active(); i++ {
		if i == 200 {
			t.Fatal("a client that reads nothing still has its stream after 200 rows")
		}
		r := row(user, time.Now(), fmt.Sprint(i))
		r.Body = big
		e.write(r)
		if n := pending(); n > cfg.StreamBuffer {
			t.Fatalf("the server holds %d batches for the stalled client, want at most its buffer of %d", n, cfg.StreamBuffer)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The stream's writer ends by itself, before the client reads again
	// (a read would let a stuck write complete).
	for deadline := time.Now().Add(time.Second); testutil.ToFloat64(e.api.metrics.open) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stalled client's stream is still open a second after it was dropped")
		}
	}
	if n := testutil.ToFloat64(e.api.metrics.dropped); n != 1 {
		t.Fatalf("notifyd_api_streams_dropped_total %v, want 1", n)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, br); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server did not close the stalled client's connection")
	}
}

func TestStreamHeartbeat(t *testing.T) {
	e := newEnv(t, Config{Heartbeat: 50 * time.Millisecond}, "")
	s := e.openStream(uuid.New(), "")
	select {
	case l := <-s.lines:
		if l != ": heartbeat" {
			t.Fatalf("comment %q", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat")
	}
}

// Changing read state elsewhere (another replica) sends fresh counts.
func TestStreamSendsCountsWhenReadStateChanges(t *testing.T) {
	e := newEnv(t, Config{}, "")
	_, replica, _ := startAPI(t, Config{}, e.url)
	user := uuid.New()
	e.write(row(user, time.Now(), "x"), row(user, time.Now(), "y"))
	s := openStreamAt(t, replica.URL, user, "")
	if ev := s.next(t, "counts", 5*time.Second); ev.data != `{"unread":2,"unseen":2,"capped":false}` {
		t.Fatalf("first counts %s", ev.data)
	}
	e.do(user, "POST", "/v1/inbox/read", map[string]bool{"all": true}, nil)
	if ev := s.next(t, "counts", 5*time.Second); ev.data != `{"unread":0,"unseen":2,"capped":false}` {
		t.Fatalf("counts after read all %s", ev.data)
	}
}

// Read state changed while a replica could not listen (its database
// connection cut) reaches that replica's streams as fresh counts once it
// is back: the notifications sent meanwhile are lost, so the replica
// counts its streams' users again when it listens again.
func TestStreamCountsReadStateChangedWhileNotListening(t *testing.T) {
	url := schemaFor(t)
	proxy, purl := proxied(t, url)
	e := newEnvOn(t, url, Config{QueryTimeout: time.Second, PollInterval: 100 * time.Millisecond}, purl)
	_, direct, _ := startAPI(t, Config{}, url)
	user := uuid.New()
	e.write(row(user, time.Now(), "x"), row(user, time.Now(), "y"))
	s := e.openStream(user, "")
	if ev := s.next(t, "counts", 5*time.Second); ev.data != `{"unread":2,"unseen":2,"capped":false}` {
		t.Fatalf("first counts %s", ev.data)
	}
	proxy.Cut()
	time.Sleep(300 * time.Millisecond)
	if code := doAt(t, direct.URL, user, "POST", "/v1/inbox/read", map[string]bool{"all": true}, nil); code != 200 {
		t.Fatalf("read all through the other replica: status %d", code)
	}
	time.Sleep(300 * time.Millisecond)
	proxy.Restore()
	if ev := s.next(t, "counts", 15*time.Second); ev.data != `{"unread":0,"unseen":2,"capped":false}` {
		t.Fatalf("counts after the outage %s", ev.data)
	}
}

// TestIdleStreamsHoldNoGoroutine opens streams from raw connections (the
// client side has no goroutine either), waits until each has had its
// first event and its writer has ended, and checks that the server holds
// no goroutine for them; then the clients hang up, and every stream ends.
func TestIdleStreamsHoldNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the hangup watcher uses epoll; elsewhere each stream waits in a read of its own")
	}
	e := newEnv(t, Config{}, "")
	const n = 50
	addr := strings.TrimPrefix(e.http.URL, "http://")
	base := runtime.NumGoroutine()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		fmt.Fprintf(c, "GET /v1/inbox/stream HTTP/1.1\r\nHost: notifyd\r\nAuthorization: Bearer %s\r\n\r\n", token(t, uuid.New()))
		br := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("stream %d: %v before its first counts event", i, err)
			}
			if l == "event: counts\n" {
				break
			}
		}
	}
	open := func() float64 { return testutil.ToFloat64(e.api.metrics.open) }
	if got := open(); got != n {
		t.Fatalf("open streams %v, want %d", got, n)
	}
	// Handlers and writers end shortly after the first event.
	var extra int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if extra = runtime.NumGoroutine() - base; extra < n/10 || time.Now().After(deadline) {
			break
		}
	}
	if extra >= n/10 {
		t.Fatalf("%d idle streams hold %d goroutines, want none", n, extra)
	}
	for _, c := range conns {
		c.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); open() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v streams still open 5 s after their clients hung up", open())
		}
	}
}
