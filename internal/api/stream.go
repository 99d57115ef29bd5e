package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// The channels the migration's trigger and the read-state changes notify.
const (
	channelRows  = "notifyd_inbox"
	channelMarks = "notifyd_inbox_marks"
)

// event is one SSE event, encoded once for every stream that gets it.
type event struct {
	name string // notification or counts
	pos  position
	data []byte
}

// sub is one open stream.
type sub struct {
	user uuid.UUID
	// queue holds the events of one hub query per element, bounded by
	// Config.StreamBuffer; bounding it in queries, not rows, lets a large
	// batch through whole. It is a slice rather than a buffered channel so
	// that an idle stream holds no buffer. qmu guards it and the fields up
	// to hangup; ready has a token while it is not empty.
	qmu   sync.Mutex
	queue [][]event
	ready chan struct{}
	// conn is the connection taken over from net/http, once the stream
	// is served on it. beat says a heartbeat comment is due, writing that
	// a writer runs (writeConn), ended that the stream has ended
	// (hub.endLocked): wakes no longer start writers.
	conn    net.Conn
	beat    bool
	writing bool
	ended   bool
	timer   *time.Timer // the heartbeat
	hangup  uint64      // its registration with Server.hangups; 0: none
	// after is the client's Last-Event-ID, if any: the hub starts the
	// stream only at a snapshot that covers it.
	after *position
	// start receives the snapshot from which the hub feeds ch.
	start   chan snapshot
	dropped chan struct{}
	// counts is the data of the last counts event handed to the stream,
	// guarded by hub.mu: counts are sent when they change (SPEC §6), and
	// the counter's rounds for a user whose counts came out the same send
	// nothing.
	counts []byte
}

// hub feeds the open streams of this process. docs/architecture.md
// ("Goroutines and what each owns") describes its two goroutines.
type hub struct {
	s    *Server
	wake chan struct{}
	// countWake wakes the counter.
	countWake chan struct{}

	// mu guards everything below.
	mu      sync.Mutex
	snap    snapshot // of the last query: its visible rows have been handed on
	started bool     // snap is set
	active  map[uuid.UUID]map[*sub]struct{}
	pending map[*sub]struct{}
	due     map[uuid.UUID]struct{} // users whose counts may have changed, for the counter
}

func newHub(s *Server) *hub {
	return &hub{
		s: s, wake: make(chan struct{}, 1),
		countWake: make(chan struct{}, 1),
		active:    map[uuid.UUID]map[*sub]struct{}{}, pending: map[*sub]struct{}{}, due: map[uuid.UUID]struct{}{},
	}
}

func (h *hub) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *hub) subscribe(user uuid.UUID, after *position) *sub {
	sb := &sub{user: user, after: after, ready: make(chan struct{}, 1), start: make(chan snapshot, 1), dropped: make(chan struct{})}
	h.mu.Lock()
	h.pending[sb] = struct{}{}
	h.mu.Unlock()
	h.poke()
	return sb
}

func (h *hub) unsubscribe(sb *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unsubscribeLocked(sb)
}

func (h *hub) unsubscribeLocked(sb *sub) {
	delete(h.pending, sb)
	if m := h.active[sb.user]; m != nil {
		delete(m, sb)
		if len(m) == 0 {
			delete(h.active, sb.user)
		}
	}
}

// take empties sb's queue and returns what it held.
func (sb *sub) take() [][]event {
	sb.qmu.Lock()
	defer sb.qmu.Unlock()
	q := sb.queue
	sb.queue = nil
	return q
}

// wake tells sb's writer that its queue, its dropped channel or the
// server's stopped has news: a token in ready for a stream served by its
// handler; for one on a taken-over connection, a writer (writeConn) unless
// one runs, which loops until it finds nothing to write.
func (sb *sub) wake(s *Server) {
	select {
	case sb.ready <- struct{}{}:
	default:
	}
	sb.qmu.Lock()
	defer sb.qmu.Unlock()
	if sb.conn == nil || sb.writing || sb.ended {
		return
	}
	sb.writing = s.goStream(func() { s.writeConn(sb) })
}

// end ends sb, if it is served on a taken-over connection (endLocked).
func (h *hub) end(sb *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.endLocked(sb)
}

// endLocked ends sb, once, if it is served on a connection taken over from
// net/http: it unregisters sb, stops its heartbeat and closes the
// connection, which ends a write in progress at once. A stream still in
// its handler ends by its channels instead. Called with h.mu held.
func (h *hub) endLocked(sb *sub) {
	sb.qmu.Lock()
	c, tok := sb.conn, sb.hangup
	if c == nil || sb.ended {
		sb.qmu.Unlock()
		return
	}
	sb.ended = true
	sb.timer.Stop()
	sb.qmu.Unlock()
	h.unsubscribeLocked(sb)
	h.s.hangups.forget(tok)
	_ = c.Close()
	h.s.metrics.open.Dec()
}

// pending is how many batches sb's queue holds.
func (sb *sub) pending() int {
	sb.qmu.Lock()
	defer sb.qmu.Unlock()
	return len(sb.queue)
}

// send hands evs to sb or, when sb's buffer is full, drops sb. Called with
// h.mu held.
func (h *hub) send(sb *sub, evs []event) {
	sb.qmu.Lock()
	full := len(sb.queue) >= h.s.cfg.StreamBuffer
	if !full {
		sb.queue = append(sb.queue, evs)
	}
	sb.qmu.Unlock()
	if full {
		h.dropLocked(sb)
		return
	}
	sb.wake(h.s)
}

// drop ends sb because its client does not keep up: its queue is full
// (send), or a write to it outlived the write deadline (its writer).
// Either way the stream is counted once.
func (h *hub) drop(sb *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(sb)
}

// dropLocked is drop with h.mu held.
func (h *hub) dropLocked(sb *sub) {
	select {
	case <-sb.dropped:
		return
	default:
	}
	close(sb.dropped)
	// A write the client does not read ends now, not at its deadline:
	// what it holds is freed with the stream.
	h.endLocked(sb)
	h.unsubscribeLocked(sb) // a stream still in its handler
	h.s.metrics.dropped.Inc()
}

// writeFailed ends sb's stream after a failed write: a write that outlived the
// deadline drops it as too slow; any other failure is the client gone.
func (h *hub) writeFailed(sb *sub, err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		h.drop(sb)
		return
	}
	h.end(sb)
}

// endAll ends every open stream on a taken-over connection: the server is
// stopping (the streams still in their handlers see stopped).
func (h *hub) endAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.active {
		for sb := range m {
			h.endLocked(sb)
		}
	}
}

func (h *hub) run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		h.listen(ctx)
	}()
	go func() {
		defer wg.Done()
		h.count(ctx)
	}()
	defer wg.Wait()
	t := time.NewTicker(h.s.cfg.PollInterval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.wake:
		case <-t.C:
		}
		if h.idle() {
			// No stream to feed: a commit's wake-up costs no query. The
			// first stream to open wakes the hub, whose next query takes
			// a fresh snapshot to start it from.
			continue
		}
		if err := h.poll(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			h.s.metrics.polls.WithLabelValues("error").Inc()
			if failures == 0 {
				h.s.log.Warn("inbox stream: cannot read committed rows; streams wait and resume without loss", "err", err)
			}
			failures++
			if !sleep(ctx, backoff(failures)) {
				return nil
			}
			h.poke()
			continue
		}
		if failures > 0 {
			h.s.log.Info("inbox stream: reading committed rows again", "failed_attempts", failures)
			failures = 0
		}
		h.s.metrics.polls.WithLabelValues("ok").Inc()
	}
}

func backoff(n int) time.Duration {
	d := 100 * time.Millisecond << min(n-1, 6)
	d = min(d, 5*time.Second)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// listen keeps a connection LISTENing and pokes the hub on each
// notification; after each (re)connection it pokes the hub and has the
// counter count every open stream's user again (notifications may have
// been missed meanwhile).
func (h *hub) listen(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		err := h.listenOnce(ctx, func() { failures = 0 })
		if ctx.Err() != nil {
			return
		}
		failures++
		if failures == 1 {
			h.s.log.Warn("inbox stream: listen connection lost; reconnecting (the timed poll goes on)", "err", err)
		}
		if !sleep(ctx, backoff(failures)) {
			return
		}
	}
}

func (h *hub) listenOnce(ctx context.Context, connected func()) error {
	cfg := h.s.pool.Config().ConnConfig.Copy()
	cctx, cancel := context.WithTimeout(ctx, h.s.cfg.QueryTimeout)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+channelRows+"; LISTEN "+channelMarks); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	connected()
	// Rows or read state may have changed while nothing listened (before
	// the first connection too: a stream can open before it): the poll
	// finds the rows, and every open stream's user is counted again.
	h.poke()
	h.mu.Lock()
	users := h.activeUsers()
	h.mu.Unlock()
	h.markDue(users)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == channelMarks {
			if u, err := uuid.Parse(n.Payload); err == nil {
				h.markDue([]uuid.UUID{u})
			}
			continue
		}
		h.poke()
	}
}

// streamRow is a committed row as the hub reads it.
type streamRow struct {
	xid  uint64
	user uuid.UUID
	n    Notification
}

const streamColumns = `n.commit_xid::text::bigint, n.user_id, n.id, n.event_type, n.title, n.body, n.data, n.created_at`

func scanStreamRow(r pgx.CollectableRow) (streamRow, error) {
	var sr streamRow
	var xid int64
	var data []byte
	err := r.Scan(&xid, &sr.user, &sr.n.ID, &sr.n.EventType, &sr.n.Title, &sr.n.Body, &data, &sr.n.CreatedAt)
	sr.xid, sr.n.Data, sr.n.CreatedAt = uint64(xid), jsonOrNull(data), sr.n.CreatedAt.UTC()
	return sr, err
}

// newSince is the SQL condition "not visible in snapshot $a" for a row,
// as an index can serve it: written by a transaction that had not started
// ($a's xmax, as text) or was running ($b, its xip as text[]).
const newSince = `(n.commit_xid >= %s::text::xid8 OR n.commit_xid = ANY(%s::text[]::xid8[]))`

// events makes the events of rows (in order) that a stream at base
// receives on reaching upto: each carries its position, the last the plain
// upto.
func events(rows []streamRow, base, upto snapshot) []event {
	evs := make([]event, len(rows))
	for i, sr := range rows {
		data, _ := json.Marshal(sr.n)
		pos := position{base: base, row: true, upto: upto, xid: sr.xid, id: sr.n.ID}
		if i == len(rows)-1 {
			pos = position{base: upto}
		}
		evs[i] = event{name: "notification", pos: pos, data: data}
	}
	return evs
}

// idle says that no stream is open or waiting to start.
func (h *hub) idle() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.active) == 0 && len(h.pending) == 0
}

// activeUsers lists the users with open streams; h.mu must be held.
func (h *hub) activeUsers() []uuid.UUID {
	users := make([]uuid.UUID, 0, len(h.active))
	for u := range h.active {
		users = append(users, u)
	}
	return users
}

// read is the poll's one round trip: BEGIN, the snapshot, the rows of
// users that it shows and prev did not (once started, for users with open
// streams) and COMMIT, sent together.
func (h *hub) read(ctx context.Context, prev snapshot, started bool, users []uuid.UUID) (cur snapshot, rows []streamRow, err error) {
	pc, err := h.s.pool.Acquire(ctx)
	if err != nil {
		return cur, nil, err
	}
	defer pc.Release()
	var b pgx.Batch
	b.Queue(beginReadOnly)
	// A custom plan for the poll, in this transaction only (the API's
	// connections default to generic plans, SessionParams): with its
	// actual bound, the planner reads the few rows committed since through
	// each partition's commit_xid index; the generic plan probed every
	// partition for each user with an open stream, and delivery fell far
	// behind. The setting is made before the next statement is planned:
	// the server takes a pipeline's messages in order.
	b.Queue(`SELECT pg_current_snapshot()::text, set_config('plan_cache_mode', 'force_custom_plan', true)`)
	query := started && len(users) > 0
	if query {
		b.Queue(`SELECT `+streamColumns+` FROM notifications n
WHERE n.commit_xid >= $1::text::xid8 AND n.user_id = ANY($3)
UNION ALL
SELECT `+streamColumns+` FROM notifications n
WHERE n.commit_xid = ANY($2::text[]::xid8[]) AND n.user_id = ANY($3)
ORDER BY 1, 3`, strconv.FormatUint(prev.xmax, 10), prev.xipText(), users)
	}
	b.Queue(`COMMIT`)
	res := pc.Conn().SendBatch(ctx, &b)
	var text string
	_, err = res.Exec()
	if err == nil {
		err = res.QueryRow().Scan(&text, nil)
	}
	if err == nil {
		cur, err = parseSnapshot(text)
	}
	if err == nil && query {
		var r pgx.Rows
		if r, err = res.Query(); err == nil {
			rows, err = pgx.CollectRows(r, scanStreamRow)
		}
	}
	if err == nil {
		_, err = res.Exec()
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	return cur, rows, err
}

// poll reads, in one snapshot, that snapshot and the rows of the users with
// open streams that it shows and the previous one did not, then hands them
// on. See docs/architecture.md.
func (h *hub) poll(ctx context.Context) error {
	h.mu.Lock()
	prev, started := h.snap, h.started
	users := h.activeUsers()
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, h.s.cfg.QueryTimeout)
	defer cancel()
	cur, rows, err := h.read(ctx, prev, started, users)
	if err != nil {
		return err
	}

	byUser := map[uuid.UUID][]streamRow{}
	for _, sr := range rows {
		byUser[sr.user] = append(byUser[sr.user], sr)
	}
	h.mu.Lock()
	for u, rs := range byUser {
		evs := events(rs, prev, cur)
		for sb := range h.active[u] {
			h.send(sb, evs)
		}
	}
	h.snap, h.started = cur, true
	waiting := false
	var opened []uuid.UUID
	for sb := range h.pending {
		if sb.after != nil && !cur.covers(sb.after.until()) {
			// The client was further on (another replica); wait until
			// this snapshot covers where it was.
			waiting = true
			continue
		}
		delete(h.pending, sb)
		if h.active[sb.user] == nil {
			h.active[sb.user] = map[*sub]struct{}{}
		}
		h.active[sb.user][sb] = struct{}{}
		sb.start <- cur
		opened = append(opened, sb.user)
	}
	h.mu.Unlock()
	// A new stream's first counts come from the counter too: a thousand
	// streams opening at once cost it a few rounds, not a thousand queries.
	h.markDue(opened)
	if waiting {
		time.AfterFunc(20*time.Millisecond, h.poke)
	}
	got := make([]uuid.UUID, 0, len(byUser))
	for u := range byUser {
		got = append(got, u)
	}
	h.markDue(got)
	return nil
}

// markDue has the counter count users again.
func (h *hub) markDue(users []uuid.UUID) {
	if len(users) == 0 {
		return
	}
	h.mu.Lock()
	for _, u := range users {
		h.due[u] = struct{}{}
	}
	h.mu.Unlock()
	select {
	case h.countWake <- struct{}{}:
	default:
	}
}

// count is the counter: it computes the counts of the users that got rows
// or changed read state and have open streams, all of them in one
// transaction and one round trip, and hands them on; rows never wait for
// it, and changes that arrive while it works fold into its next round.
func (h *hub) count(ctx context.Context) {
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.countWake:
		}
		h.mu.Lock()
		var users []uuid.UUID
		for u := range h.due {
			if h.active[u] != nil {
				users = append(users, u)
			}
		}
		h.due = map[uuid.UUID]struct{}{}
		h.mu.Unlock()
		if len(users) == 0 {
			continue
		}
		// In rounds of at most countRound users, so that one round's
		// transaction stays short however many users are due.
		for len(users) > 0 {
			n := min(len(users), countRound)
			if err := h.countRound(ctx, users[:n]); err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				if failures == 1 {
					h.s.log.Warn("inbox stream: cannot count; retrying", "err", err)
				}
				h.markDue(users)
				if !sleep(ctx, backoff(failures)) {
					return
				}
				break
			}
			failures = 0
			users = users[n:]
		}
	}
}

// countRound is how many users one round of the counter counts.
const countRound = 100

func (h *hub) countRound(ctx context.Context, users []uuid.UUID) error {
	var counts map[uuid.UUID]Counts
	qctx, cancel := context.WithTimeout(ctx, h.s.cfg.QueryTimeout)
	defer cancel()
	err := readOnly(qctx, h.s, func(tx pgx.Tx) error {
		ms, err := marksOf(qctx, tx, users)
		if err != nil {
			return err
		}
		counts, err = h.s.countsOf(qctx, tx, users, ms)
		return err
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// The hub has handed on every row its snapshot shows: that is the
	// position these events carry.
	pos := position{base: h.snap}
	for _, u := range users {
		data, _ := json.Marshal(counts[u])
		ev := []event{{name: "counts", pos: pos, data: data}}
		for sb := range h.active[u] {
			if bytes.Equal(sb.counts, data) {
				continue
			}
			sb.counts = data
			h.send(sb, ev)
		}
	}
	return nil
}

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request, user uuid.UUID) {
	if _, err := queryParams(r); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var last *position
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		p, err := parsePosition(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		last = &p
	}
	sb := s.hub.subscribe(user, last)
	handedOff := false
	defer func() {
		if !handedOff {
			s.hub.unsubscribe(sb)
		}
	}()

	var start snapshot
	wait := time.NewTimer(s.cfg.QueryTimeout)
	select {
	case start = <-sb.start:
		wait.Stop()
	case <-wait.C:
		if last != nil && s.Ready(r.Context()) == nil {
			writeError(w, http.StatusBadRequest, "Last-Event-ID is not a position this database has reached")
			return
		}
		writeError(w, http.StatusServiceUnavailable, "the inbox database is unavailable; try again shortly")
		return
	case <-r.Context().Done():
		return
	case <-s.stopped:
		writeError(w, http.StatusServiceUnavailable, "the server is shutting down")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	out, err := s.takeOver(w)
	if err != nil {
		s.log.Warn("inbox stream: cannot take over the connection", "err", err)
		return
	}
	s.metrics.open.Inc()
	// Retry hint for EventSource clients, then what was missed.
	out.buf = append(out.buf, "retry: 2000\n\n"...)
	if last != nil {
		if err := s.replayMissed(r.Context(), out, user, *last, start); err != nil {
			out.close()
			s.metrics.open.Dec()
			return
		}
	}
	if err := out.flush(); err != nil {
		out.close()
		s.metrics.open.Dec()
		return
	}

	if out.conn == nil {
		// The connection cannot be taken over (HTTP/2): the stream lives
		// in this handler.
		defer s.metrics.open.Dec()
		s.pump(sb, out, r.Context().Done())
		return
	}
	// The database work above grew this goroutine's stack, and net/http
	// would keep its buffers for the connection: an idle stream holds
	// neither, nor any goroutine, once the hangup watcher has its
	// connection and a writer runs only while there is something to write
	// (docs/architecture.md, "Goroutines and what each owns").
	conn := out.conn
	handedOff = true
	sb.qmu.Lock()
	sb.conn = conn
	sb.timer = time.AfterFunc(s.cfg.Heartbeat, func() { s.heartbeat(sb) })
	sb.qmu.Unlock()
	// The client hanging up ends the stream: the hangup watcher sees it
	// without a goroutine of the stream's, or else a goroutine waits in a
	// read of the connection.
	if tok, err := s.hangups.watch(conn, func() { s.hub.end(sb) }); err == nil {
		sb.qmu.Lock()
		sb.hangup = tok
		sb.qmu.Unlock()
	} else if !s.goStream(func() { s.readConn(sb) }) {
		s.hub.end(sb)
	}
	select {
	case <-s.stopped:
		// Run may have ended the open streams before this one was
		// served on its connection.
		s.hub.end(sb)
		return
	default:
	}
	// What the hub queued since the start snapshot.
	sb.wake(s)
}

// readConn waits in a read of sb's connection, which fails when the client
// closes it or the stream ends (hub.endLocked closes it), and then ends
// the stream. Bytes the client sends (it has no reason to) are read and
// ignored. It serves where the hangup watcher cannot.
func (s *Server) readConn(sb *sub) {
	var b [1]byte
	for {
		if _, err := sb.conn.Read(b[:]); err != nil {
			break
		}
	}
	s.hub.end(sb)
}

// heartbeat marks a comment due on sb and wakes its writer; it runs every
// Config.Heartbeat from sb's timer.
func (s *Server) heartbeat(sb *sub) {
	sb.qmu.Lock()
	if sb.ended {
		sb.qmu.Unlock()
		return
	}
	sb.beat = true
	sb.timer.Reset(s.cfg.Heartbeat)
	sb.qmu.Unlock()
	sb.wake(s)
}

// writeConn writes what sb's queue holds and the heartbeat due, until it
// finds neither or the stream has ended; sb.writing (set by wake) makes it
// the stream's only writer. A failed write ends the stream.
func (s *Server) writeConn(sb *sub) {
	out := &sseOut{s: s, conn: sb.conn}
	for {
		sb.qmu.Lock()
		q, beat := sb.queue, sb.beat
		sb.queue, sb.beat = nil, false
		if sb.ended || len(q) == 0 && !beat {
			sb.writing = false
			sb.qmu.Unlock()
			return
		}
		sb.qmu.Unlock()
		for _, evs := range q {
			for _, ev := range evs {
				out.event(ev)
			}
		}
		if beat {
			out.buf = append(out.buf, ": heartbeat\n\n"...)
		}
		if err := out.flush(); err != nil {
			s.hub.writeFailed(sb, err)
			return
		}
	}
}

// goStream runs f in a goroutine that Run waits for, unless Run is already
// ending them; it reports whether f was started.
func (s *Server) goStream(f func()) bool {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	select {
	case <-s.stopped:
		return false
	default:
	}
	s.streams.Go(f)
	return true
}

// replayMissed writes what a client reconnecting at last missed: the rest
// of the snapshot difference it was in, then everything up to start.
func (s *Server) replayMissed(ctx context.Context, out *sseOut, user uuid.UUID, last position, start snapshot) error {
	var phases [][2]snapshot
	if last.row {
		phases = append(phases, [2]snapshot{last.base, last.upto})
	}
	phases = append(phases, [2]snapshot{last.until(), start})
	for i, ph := range phases {
		var after *streamRow
		if i == 0 && last.row {
			after = &streamRow{xid: last.xid, n: Notification{ID: last.id}}
		}
		for {
			qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
			rows, err := s.replay(qctx, user, ph[0], ph[1], after)
			cancel()
			if err != nil {
				// The client reconnects with the last id it got.
				s.log.Warn("inbox stream: replay failed", "err", err)
				return err
			}
			evs := events(rows, ph[0], ph[1])
			if len(rows) == replayPage {
				// More may follow: the last is a row position too.
				end := rows[len(rows)-1]
				evs[len(evs)-1].pos = position{base: ph[0], row: true, upto: ph[1], xid: end.xid, id: end.n.ID}
				after = &end
			}
			for _, ev := range evs {
				out.event(ev)
			}
			if err := out.flush(); err != nil {
				return err
			}
			if len(rows) < replayPage {
				break
			}
		}
	}
	return nil
}

// pump writes what sb's queue brings, and a comment every heartbeat,
// until the client is gone (gone closes), the hub drops sb or the server
// stops. The hub feeds sb from its start snapshot on, which the replay
// reached, so nothing is sent twice. It serves a stream that stays in its
// handler; serveConn does the same on a taken-over connection.
func (s *Server) pump(sb *sub, out *sseOut, gone <-chan struct{}) {
	beat := time.NewTicker(s.cfg.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-gone:
			return
		case <-sb.dropped:
			return
		case <-s.stopped:
			return
		case <-beat.C:
			out.buf = append(out.buf, ": heartbeat\n\n"...)
		case <-sb.ready:
			out.queued(sb)
		}
		if err := out.flush(); err != nil {
			s.hub.writeFailed(sb, err)
			return
		}
	}
}

// queued appends the events sb's queue holds.
func (o *sseOut) queued(sb *sub) {
	for _, evs := range sb.take() {
		for _, ev := range evs {
			o.event(ev)
		}
	}
}

// sseOut is where a stream's bytes go: the connection taken over from
// net/http, or (where that cannot be done) the ResponseWriter.
type sseOut struct {
	s    *Server
	conn net.Conn // nil: w
	w    http.ResponseWriter
	rc   *http.ResponseController
	// buf holds what the next flush writes, and counted what it holds.
	buf           []byte
	notifications int
	counts        int
}

// takeOver sends the response head (w's header, status 200) and returns
// the stream's output. Over HTTP/1 it hijacks the connection: the stream
// then needs neither the handler's goroutine nor net/http's buffers, and
// its body ends when the connection closes (Connection: close), which an
// EventSource client expects of a stream anyway.
func (s *Server) takeOver(w http.ResponseWriter) (*sseOut, error) {
	rc := http.NewResponseController(w)
	conn, rw, err := rc.Hijack()
	if errors.Is(err, http.ErrNotSupported) {
		w.WriteHeader(http.StatusOK)
		return &sseOut{s: s, w: w, rc: rc}, nil
	}
	if err != nil {
		return nil, err
	}
	h := w.Header().Clone()
	h.Set("Connection", "close")
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	_ = h.Write(&head)
	head.WriteString("\r\n")
	// Bytes the client sent after its request (it has no reason to) are
	// left unread in rw.
	_ = rw
	return &sseOut{s: s, conn: conn, buf: head.Bytes()}, nil
}

// event appends ev in SSE form.
func (o *sseOut) event(ev event) {
	o.buf = append(o.buf, "id: "...)
	o.buf = append(o.buf, ev.pos.String()...)
	o.buf = append(o.buf, "\nevent: "...)
	o.buf = append(o.buf, ev.name...)
	o.buf = append(o.buf, "\ndata: "...)
	o.buf = append(o.buf, ev.data...)
	o.buf = append(o.buf, "\n\n"...)
	if ev.name == "counts" {
		o.counts++
	} else {
		o.notifications++
	}
}

// flush writes what buf holds, within the write deadline: a stalled client
// frees the stream.
func (o *sseOut) flush() error {
	var err error
	deadline := time.Now().Add(o.s.cfg.WriteDeadline)
	if o.conn != nil {
		_ = o.conn.SetWriteDeadline(deadline)
		_, err = o.conn.Write(o.buf)
	} else {
		_ = o.rc.SetWriteDeadline(deadline)
		if _, err = o.w.Write(o.buf); err == nil {
			err = o.rc.Flush()
		}
	}
	if err == nil {
		o.s.metrics.events.WithLabelValues("notification").Add(float64(o.notifications))
		o.s.metrics.events.WithLabelValues("counts").Add(float64(o.counts))
	}
	o.notifications, o.counts = 0, 0
	// An idle stream keeps no large buffer.
	if o.buf = o.buf[:0]; cap(o.buf) > 1024 {
		o.buf = nil
	}
	return err
}

// close closes a taken-over connection.
func (o *sseOut) close() {
	if o.conn != nil {
		_ = o.conn.Close()
	}
}

// replayPage is how many missed rows one replay query reads.
const replayPage = 500

// replay reads, in order, the user's rows visible in to but not in from,
// after the row after (if any), at most replayPage of them.
func (s *Server) replay(ctx context.Context, user uuid.UUID, from, to snapshot, after *streamRow) ([]streamRow, error) {
	if from.covers(to) {
		return nil, nil
	}
	args := []any{user, strconv.FormatUint(from.xmax, 10), from.xipText(), to.String(), replayPage}
	cond := ""
	if after != nil {
		cond = ` AND (n.commit_xid, n.id) > ($6::text::xid8, $7::uuid)`
		args = append(args, strconv.FormatUint(after.xid, 10), after.n.ID)
	}
	r, err := s.pool.Query(ctx, `SELECT `+streamColumns+` FROM notifications n
WHERE n.user_id = $1 AND `+fmt.Sprintf(newSince, "$2", "$3")+`
  AND pg_visible_in_snapshot(n.commit_xid, $4::text::pg_snapshot)`+cond+`
ORDER BY n.commit_xid, n.id LIMIT $5`, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(r, scanStreamRow)
}
