package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
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
	// ch brings the events of one hub query at a time; bounding it in
	// queries, not rows, lets a large batch through whole.
	ch chan []event
	// after is the client's Last-Event-ID, if any: the hub starts the
	// stream only at a snapshot that covers it.
	after *position
	// start receives the snapshot from which the hub feeds ch.
	start   chan snapshot
	dropped chan struct{}
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
	sb := &sub{user: user, after: after, ch: make(chan []event, h.s.cfg.StreamBuffer), start: make(chan snapshot, 1), dropped: make(chan struct{})}
	h.mu.Lock()
	h.pending[sb] = struct{}{}
	h.mu.Unlock()
	h.poke()
	return sb
}

func (h *hub) unsubscribe(sb *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.pending, sb)
	if m := h.active[sb.user]; m != nil {
		delete(m, sb)
		if len(m) == 0 {
			delete(h.active, sb.user)
		}
	}
}

// send hands evs to sb or, when sb's buffer is full, drops sb. Called with
// h.mu held.
func (h *hub) send(sb *sub, evs []event) {
	select {
	case sb.ch <- evs:
	default:
		close(sb.dropped)
		delete(h.active[sb.user], sb)
		if len(h.active[sb.user]) == 0 {
			delete(h.active, sb.user)
		}
		h.s.metrics.dropped.Inc()
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
// notification, and after each reconnection (notifications may have been
// missed meanwhile).
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
	h.poke()
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

// poll reads, in one snapshot, that snapshot and the rows of the users with
// open streams that it shows and the previous one did not, then hands them
// on. See docs/architecture.md.
func (h *hub) poll(ctx context.Context) error {
	h.mu.Lock()
	prev, started := h.snap, h.started
	users := make([]uuid.UUID, 0, len(h.active))
	for u := range h.active {
		users = append(users, u)
	}
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, h.s.cfg.QueryTimeout)
	defer cancel()
	var cur snapshot
	var rows []streamRow
	err := readOnly(ctx, h.s, func(tx pgx.Tx) error {
		var text string
		if err := tx.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&text); err != nil {
			return err
		}
		var err error
		if cur, err = parseSnapshot(text); err != nil {
			return err
		}
		if !started || len(users) == 0 {
			return nil
		}
		r, err := tx.Query(ctx, `SELECT `+streamColumns+` FROM notifications n
WHERE n.commit_xid >= $1::text::xid8 AND n.user_id = ANY($3)
UNION ALL
SELECT `+streamColumns+` FROM notifications n
WHERE n.commit_xid = ANY($2::text[]::xid8[]) AND n.user_id = ANY($3)
ORDER BY 1, 3`, strconv.FormatUint(prev.xmax, 10), prev.xipText(), users)
		if err != nil {
			return err
		}
		rows, err = pgx.CollectRows(r, scanStreamRow)
		return err
	})
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
	rc := http.NewResponseController(w)
	sb := s.hub.subscribe(user, last)
	defer s.hub.unsubscribe(sb)

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
	pos := position{base: start}
	if last != nil {
		pos = *last
	}
	s.metrics.open.Inc()
	defer s.metrics.open.Dec()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	write := func(ev event) error {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteDeadline))
		if _, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.pos, ev.name, ev.data); err != nil {
			return err
		}
		s.metrics.events.WithLabelValues(ev.name).Inc()
		return nil
	}
	// Retry hint for EventSource clients, then what was missed.
	_, _ = io.WriteString(w, "retry: 2000\n\n")
	if last != nil {
		// What was missed: the rest of the snapshot difference the client
		// was in, then everything up to this stream's start.
		var phases [][2]snapshot
		if pos.row {
			phases = append(phases, [2]snapshot{pos.base, pos.upto})
		}
		phases = append(phases, [2]snapshot{pos.until(), start})
		for i, ph := range phases {
			var after *streamRow
			if i == 0 && pos.row {
				after = &streamRow{xid: pos.xid, n: Notification{ID: pos.id}}
			}
			for {
				ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
				rows, err := s.replay(ctx, user, ph[0], ph[1], after)
				cancel()
				if err != nil {
					// The client reconnects with the last id it got.
					s.log.Warn("inbox stream: replay failed", "err", err)
					return
				}
				evs := events(rows, ph[0], ph[1])
				if len(rows) == replayPage {
					// More may follow: the last is a row position too.
					end := rows[len(rows)-1]
					evs[len(evs)-1].pos = position{base: ph[0], row: true, upto: ph[1], xid: end.xid, id: end.n.ID}
					after = &end
				}
				for _, ev := range evs {
					if err := write(ev); err != nil {
						return
					}
					pos = ev.pos
				}
				if len(rows) < replayPage {
					break
				}
			}
		}
		pos = position{base: start}
	}
	_ = rc.Flush()

	// emit writes a live event: the hub feeds this stream from start on,
	// which the replay reached, so nothing is sent twice.
	emit := func(ev event) error {
		if err := write(ev); err != nil {
			return err
		}
		pos = ev.pos
		return nil
	}
	beat := time.NewTicker(s.cfg.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-sb.dropped:
			return
		case <-s.stopped:
			return
		case <-beat.C:
			_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteDeadline))
			if _, err := io.WriteString(w, ": heartbeat\n\n"); err != nil {
				return
			}
		case evs := <-sb.ch:
			// Write what is queued, then flush once.
			for more := true; more; {
				for _, ev := range evs {
					if err := emit(ev); err != nil {
						return
					}
				}
				select {
				case evs = <-sb.ch:
				default:
					more = false
				}
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
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
