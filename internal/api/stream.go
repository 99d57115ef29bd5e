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
	// start receives the horizon from which the hub feeds ch.
	start   chan uint64
	dropped chan struct{}
}

// hub feeds the open streams of this process. docs/architecture.md
// ("Goroutines and what each owns") describes its two goroutines.
type hub struct {
	s    *Server
	wake chan struct{}

	// mu guards everything below.
	mu      sync.Mutex
	horizon uint64 // every transaction below it has been delivered; 0 until the first query
	active  map[uuid.UUID]map[*sub]struct{}
	pending map[*sub]struct{}
	marked  map[uuid.UUID]struct{} // users whose read state changed since the last query
}

func newHub(s *Server) *hub {
	return &hub{
		s: s, wake: make(chan struct{}, 1),
		active: map[uuid.UUID]map[*sub]struct{}{}, pending: map[*sub]struct{}{}, marked: map[uuid.UUID]struct{}{},
	}
}

func (h *hub) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *hub) subscribe(user uuid.UUID) *sub {
	sb := &sub{user: user, ch: make(chan []event, h.s.cfg.StreamBuffer), start: make(chan uint64, 1), dropped: make(chan struct{})}
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
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.listen(ctx)
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
				h.mu.Lock()
				h.marked[u] = struct{}{}
				h.mu.Unlock()
			}
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

// poll reads, in one snapshot, the new horizon and the rows of the users
// with open streams committed between the old horizon and it, then hands
// them on and moves the horizon. See docs/architecture.md.
func (h *hub) poll(ctx context.Context) error {
	h.mu.Lock()
	from := h.horizon
	users := make([]uuid.UUID, 0, len(h.active))
	for u := range h.active {
		users = append(users, u)
	}
	marked := h.marked
	h.marked = map[uuid.UUID]struct{}{}
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, h.s.cfg.QueryTimeout)
	defer cancel()
	var to uint64
	var rows []streamRow
	counts := map[uuid.UUID]Counts{}
	err := readOnly(ctx, h.s, func(tx pgx.Tx) error {
		var x int64
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint`).Scan(&x); err != nil {
			return err
		}
		to = uint64(x)
		if from == 0 || len(users) == 0 || to <= from {
			return nil
		}
		r, err := tx.Query(ctx, `SELECT `+streamColumns+` FROM notifications n
WHERE n.commit_xid >= $1::text::xid8 AND n.commit_xid < $2::text::xid8 AND n.user_id = ANY($3)
ORDER BY n.commit_xid, n.id`, strconv.FormatUint(from, 10), strconv.FormatUint(to, 10), users)
		if err != nil {
			return err
		}
		if rows, err = pgx.CollectRows(r, scanStreamRow); err != nil {
			return err
		}
		// Counts change for the users that got rows or changed read state:
		// one computation per user, whatever their number of streams.
		for _, sr := range rows {
			marked[sr.user] = struct{}{}
		}
		for _, u := range users {
			if _, ok := marked[u]; !ok {
				continue
			}
			m, err := loadMarks(ctx, tx, u)
			if err != nil {
				return err
			}
			if counts[u], err = h.s.counts(ctx, tx, u, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// The marks are not lost: they are counted again next time.
		h.mu.Lock()
		for u := range marked {
			h.marked[u] = struct{}{}
		}
		h.mu.Unlock()
		return err
	}

	evs := make([]event, len(rows))
	for i, sr := range rows {
		data, _ := json.Marshal(sr.n)
		evs[i] = event{name: "notification", pos: position{xid: sr.xid, id: sr.n.ID, row: true}, data: data}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if from != 0 {
		byUser := map[uuid.UUID][]event{}
		for i, sr := range rows {
			byUser[sr.user] = append(byUser[sr.user], evs[i])
		}
		for u, c := range counts {
			data, _ := json.Marshal(c)
			byUser[u] = append(byUser[u], event{name: "counts", pos: position{xid: to}, data: data})
		}
		for u, evs := range byUser {
			for sb := range h.active[u] {
				h.send(sb, evs)
			}
		}
	}
	if to > h.horizon {
		h.horizon = to
	}
	for sb := range h.pending {
		delete(h.pending, sb)
		if h.active[sb.user] == nil {
			h.active[sb.user] = map[*sub]struct{}{}
		}
		h.active[sb.user][sb] = struct{}{}
		sb.start <- h.horizon
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
	sb := s.hub.subscribe(user)
	defer s.hub.unsubscribe(sb)

	var start uint64
	wait := time.NewTimer(s.cfg.QueryTimeout)
	select {
	case start = <-sb.start:
		wait.Stop()
	case <-wait.C:
		writeError(w, http.StatusServiceUnavailable, "the inbox database is unavailable; try again shortly")
		return
	case <-r.Context().Done():
		return
	case <-s.stopped:
		writeError(w, http.StatusServiceUnavailable, "the server is shutting down")
		return
	}
	pos := position{xid: start}
	if last != nil {
		pos = *last
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	c, err := s.userCounts(ctx, user)
	cancel()
	if err != nil {
		s.dbError(w, r, err)
		return
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
		for {
			ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
			evs, err := s.replay(ctx, user, pos, start)
			cancel()
			if err != nil {
				// The client reconnects with the last id it got.
				s.log.Warn("inbox stream: replay failed", "err", err)
				return
			}
			for _, ev := range evs {
				if err := write(ev); err != nil {
					return
				}
				pos = ev.pos
			}
			if len(evs) < replayPage {
				break
			}
		}
		if !pos.row || pos.xid < start {
			pos = position{xid: max(start, pos.xid)}
		}
	}
	data, _ := json.Marshal(c)
	if err := write(event{name: "counts", pos: pos, data: data}); err != nil {
		return
	}
	_ = rc.Flush()

	// emit writes a live event unless the replay already covered it; a
	// counts event carries the stream's position, which never moves back.
	emit := func(ev event) error {
		switch {
		case ev.name == "notification" && !pos.after(ev.pos.xid, ev.pos.id):
			return nil
		case ev.name == "counts" && ev.pos.xid <= pos.xid:
			ev.pos = pos
		}
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

// replay reads the user's rows after p and below the horizon to, in order.
func (s *Server) replay(ctx context.Context, user uuid.UUID, p position, to uint64) ([]event, error) {
	if p.xid >= to {
		return nil, nil
	}
	cond := `n.commit_xid >= $2::text::xid8`
	args := []any{user, strconv.FormatUint(p.xid, 10), strconv.FormatUint(to, 10), replayPage}
	if p.row {
		cond = `n.commit_xid >= $2::text::xid8 AND (n.commit_xid, n.id) > ($2::text::xid8, $5::uuid)`
		args = append(args, p.id)
	}
	r, err := s.pool.Query(ctx, `SELECT `+streamColumns+` FROM notifications n
WHERE n.user_id = $1 AND n.commit_xid IS NOT NULL AND `+cond+` AND n.commit_xid < $3::text::xid8
ORDER BY n.commit_xid, n.id LIMIT $4`, args...)
	if err != nil {
		return nil, err
	}
	rows, err := pgx.CollectRows(r, scanStreamRow)
	if err != nil {
		return nil, err
	}
	evs := make([]event, len(rows))
	for i, sr := range rows {
		data, _ := json.Marshal(sr.n)
		evs[i] = event{name: "notification", pos: position{xid: sr.xid, id: sr.n.ID, row: true}, data: data}
	}
	return evs, nil
}
