package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Notification is a row of the inbox as the API shows it (SPEC §6).
type Notification struct {
	ID         uuid.UUID       `json:"id"`
	EventType  string          `json:"event_type"`
	Title      string          `json:"title"`
	Body       string          `json:"body"`
	Data       json.RawMessage `json:"data"`
	CreatedAt  time.Time       `json:"created_at"`
	ReadAt     *time.Time      `json:"read_at"`
	SeenAt     *time.Time      `json:"seen_at"`
	ArchivedAt *time.Time      `json:"archived_at"`
}

// Counts are a user's unread and unseen rows among those not archived,
// exact up to the cap.
type Counts struct {
	Unread int  `json:"unread"`
	Unseen int  `json:"unseen"`
	Capped bool `json:"capped"`
}

// kind is one of the three read states.
type kind int

const (
	kindRead kind = iota
	kindSeen
	kindArchived
)

var kindColumn = [...]string{kindRead: "read", kindSeen: "seen", kindArchived: "archived"}

// watermark is a user's "all up to now" for one kind: rows visible in snap
// are set (at non-nil) or unset (at nil, an undo of everything), unless
// changed by id at a later version.
type watermark struct {
	exists  bool
	snap    string
	at      *time.Time
	version int64
}

// marks is a user's row of notifyd_inbox_users.
type marks struct {
	version int64
	kinds   [3]watermark
}

const marksColumns = `version,
	read_all_snap::text, read_all_at, read_all_version,
	seen_all_snap::text, seen_all_at, seen_all_version,
	archived_all_snap::text, archived_all_at, archived_all_version`

func scanMarks(row pgx.Row) (marks, error) {
	var m marks
	var snaps [3]*string
	var vers [3]*int64
	err := row.Scan(&m.version,
		&snaps[0], &m.kinds[0].at, &vers[0],
		&snaps[1], &m.kinds[1].at, &vers[1],
		&snaps[2], &m.kinds[2].at, &vers[2])
	m.fill(snaps, vers)
	return m, err
}

func (m *marks) fill(snaps [3]*string, vers [3]*int64) {
	for k := range m.kinds {
		if snaps[k] != nil {
			m.kinds[k].exists, m.kinds[k].snap, m.kinds[k].version = true, *snaps[k], *vers[k]
		} else {
			m.kinds[k].at = nil
		}
	}
}

// SessionParams are the run-time parameters of the API's connections.
//
// plan_cache_mode: the API's statements read a user's rows in every
// partition (rows are partitioned by time, not by user), so planning one
// opens every partition and its indexes. Left to choose, PostgreSQL planned
// the statements that take ids, a snapshot or a cursor afresh at every
// execution; over 39 daily partitions and 5M rows (bench --api) that was
// a large part of a mark-read's database time, and at 500 feed and counts
// requests a second it took their p95 over 100 ms.
// Their generic plans are as good for any user. The stream's poll is the
// exception: its plan depends on how recent its snapshot bound is, and it
// asks for a custom plan in its own transaction (hub.poll).
var SessionParams = map[string]string{"plan_cache_mode": "force_generic_plan"}

// query builds a statement and its arguments together.
type query struct {
	sql  strings.Builder
	args []any
}

func (q *query) arg(v any) string {
	// pgx encodes a uuid.UUID through its driver.Valuer, as text that the
	// server parses again; [16]byte is sent as it is.
	switch u := v.(type) {
	case uuid.UUID:
		v = [16]byte(u)
	case []uuid.UUID:
		b := make([][16]byte, len(u))
		for i := range u {
			b[i] = u[i]
		}
		v = b
	}
	q.args = append(q.args, v)
	return "$" + strconv.Itoa(len(q.args))
}

func (q *query) add(s ...string) {
	for _, x := range s {
		q.sql.WriteString(x)
	}
}

// effective is the SQL of a row's effective time for kind k: n is the
// notification (id, commit_xid), s its LEFT JOINed exception row.
func (q *query) effective(k kind, w watermark, n, s string) string {
	col := kindColumn[k]
	if !w.exists {
		return s + "." + col + "_at"
	}
	covered := fmt.Sprintf("coalesce(%s.%s_version, 0) <= %s AND (%s.commit_xid IS NULL OR pg_visible_in_snapshot(%s.commit_xid, %s::text::pg_snapshot))",
		s, col, q.arg(w.version), n, n, q.arg(w.snap))
	then := "NULL::timestamptz"
	if w.at != nil {
		// An older exception that set the row keeps its own time.
		then = fmt.Sprintf("coalesce(%s.%s_at, %s::timestamptz)", s, col, q.arg(*w.at))
	}
	return fmt.Sprintf("(CASE WHEN %s THEN %s ELSE %s.%s_at END)", covered, then, s, col)
}

// feedOptions are the filters and page of GET /v1/inbox.
type feedOptions struct {
	limit    int
	after    *cursor
	status   string // all, unread, read
	archived string // false, true, all
}

func readOnly(ctx context.Context, s *Server, f func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, f)
}

// beginReadOnly opens the API's read transactions: one snapshot for all
// their statements.
const beginReadOnly = `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`

// beginRead starts a read-only repeatable-read transaction on conn and
// loads the user's read state in it, in one round trip. A feed or a count
// then sends its statements and COMMIT together: two round trips, where
// BEGIN, the read state, the statements and COMMIT each took one. A
// connection that an error leaves inside the transaction is closed by the
// pool on release, not reused.
func beginRead(ctx context.Context, conn *pgx.Conn, user uuid.UUID) (marks, error) {
	var b pgx.Batch
	b.Queue(beginReadOnly)
	b.Queue(`SELECT `+marksColumns+` FROM notifyd_inbox_users WHERE user_id = $1`, user)
	res := conn.SendBatch(ctx, &b)
	_, err := res.Exec()
	var m marks
	if err == nil {
		if m, err = scanMarks(res.QueryRow()); err == pgx.ErrNoRows {
			m, err = marks{}, nil
		}
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return marks{}, fmt.Errorf("load read state: %w", err)
	}
	return m, nil
}

func (s *Server) feed(ctx context.Context, user uuid.UUID, o feedOptions) (rows []Notification, next *cursor, err error) {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer pc.Release()
	conn := pc.Conn()
	m, err := beginRead(ctx, conn, user)
	if err != nil {
		return nil, nil, err
	}
	// The candidates come from the (user_id, created_at) index alone,
	// newest first, a chunk at a time (with the ties of the last
	// created_at, so that a chunk ends between keys); their read state is
	// joined to the chunk only. Joining it in the same scan would make the
	// planner read the user's whole inbox to sort it. The first chunk,
	// which is the whole page unless filters drop rows, goes with COMMIT;
	// further chunks each read a snapshot of their own, with the read
	// state of the first: keyset paging needs nothing more to never repeat
	// or skip a row.
	after := o.after
	chunk := o.limit + 1
	for first := true; len(rows) <= o.limit; first = false {
		cands, err := s.feedChunk(ctx, conn, user, m, after, chunk, first)
		if err != nil {
			return nil, nil, err
		}
		for _, n := range cands {
			if o.keep(n) && len(rows) <= o.limit {
				rows = append(rows, n)
			}
		}
		if len(cands) < chunk {
			break // the inbox has no more
		}
		last := cands[len(cands)-1]
		after = &cursor{createdAt: last.CreatedAt, id: last.ID}
		chunk = min(chunk*2, 1000)
	}
	if len(rows) > o.limit {
		rows = rows[:o.limit]
		last := rows[len(rows)-1]
		next = &cursor{createdAt: last.CreatedAt, id: last.ID}
	}
	return rows, next, nil
}

// keep reports whether n passes the feed's filters.
func (o feedOptions) keep(n Notification) bool {
	switch {
	case o.status == "unread" && n.ReadAt != nil, o.status == "read" && n.ReadAt == nil:
		return false
	case o.archived == "false" && n.ArchivedAt != nil, o.archived == "true" && n.ArchivedAt == nil:
		return false
	}
	return true
}

// feedChunk reads at least chunk of the user's rows after the cursor (all
// of them if fewer), in feed order, with their effective read state, on
// conn; with commit, the COMMIT of the transaction beginRead opened goes
// with it.
func (s *Server) feedChunk(ctx context.Context, conn *pgx.Conn, user uuid.UUID, m marks, after *cursor, chunk int, commit bool) ([]Notification, error) {
	var q query
	u := q.arg(user)
	q.add(`WITH c AS MATERIALIZED (SELECT n.id, n.event_type, n.title, n.body, n.data, n.created_at, n.commit_xid
FROM notifications n WHERE n.user_id = `, u)
	if after != nil {
		c, id := q.arg(after.createdAt), q.arg(after.id)
		q.add(` AND n.created_at <= `, c, ` AND (n.created_at, n.id) < (`, c, `, `, id, `)`)
	}
	q.add(` ORDER BY n.created_at DESC FETCH FIRST (`, q.arg(chunk), `) ROWS WITH TIES)
SELECT c.id, c.event_type, c.title, c.body, c.data, c.created_at, `,
		q.effective(kindRead, m.kinds[kindRead], "c", "s"), `, `,
		q.effective(kindSeen, m.kinds[kindSeen], "c", "s"), `, `,
		q.effective(kindArchived, m.kinds[kindArchived], "c", "s"), `
FROM c LEFT JOIN notifyd_inbox_state s ON s.user_id = `, u, ` AND s.notification_id = c.id
ORDER BY c.created_at DESC, c.id DESC`)
	var b pgx.Batch
	b.Queue(q.sql.String(), q.args...)
	if commit {
		b.Queue(`COMMIT`)
	}
	res := conn.SendBatch(ctx, &b)
	r, err := res.Query()
	var rows []Notification
	if err == nil {
		rows, err = pgx.CollectRows(r, scanNotification)
	}
	if err == nil && commit {
		_, err = res.Exec()
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("read feed: %w", err)
	}
	return rows, nil
}

func scanNotification(r pgx.CollectableRow) (Notification, error) {
	var n Notification
	var data []byte
	err := r.Scan(&n.ID, &n.EventType, &n.Title, &n.Body, &data, &n.CreatedAt, &n.ReadAt, &n.SeenAt, &n.ArchivedAt)
	n.Data = jsonOrNull(data)
	n.CreatedAt = n.CreatedAt.UTC()
	for _, t := range []*time.Time{n.ReadAt, n.SeenAt, n.ArchivedAt} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return n, err
}

func jsonOrNull(b []byte) json.RawMessage {
	if b == nil {
		return json.RawMessage("null")
	}
	return json.RawMessage(b)
}

// countsOf counts users' unread and unseen rows, each scan stopping at
// cap+1 rows found. The rows scanned are those that can still count: all
// the user's rows when no watermark covers them, else only the rows the
// chosen watermark does not cover and the exceptions newer than it.
//
// It counts for several users in one round trip (one or two
// statements a user, sent as one batch), and a second one for the few users
// whose single pass found more rows than the cap (see queueCounts).
func (s *Server) countsOf(ctx context.Context, tx querier, users []uuid.UUID, ms map[uuid.UUID]marks) (map[uuid.UUID]Counts, error) {
	var b pgx.Batch
	plans := s.queueCounts(&b, users, ms)
	res := tx.SendBatch(ctx, &b)
	out, redo, err := s.readCounts(res, plans)
	if err != nil {
		res.Close()
		return nil, err
	}
	if err := res.Close(); err != nil {
		return nil, err
	}
	return s.recount(ctx, tx, out, redo, ms)
}

// countPlan is how one user's counts were queued: one statement for both
// (single), or one for each.
type countPlan struct {
	user   uuid.UUID
	single bool
}

// queueCounts queues each user's counts. When both counts would scan the
// same candidates (the user has no watermark of read or seen that leaves
// fewer, which is the case of every user who never marked all), one
// statement reads them once and counts both, up to cap+1 rows that are
// unread or unseen; else (or when that pass stops at its limit with a
// count not above the cap, which readCounts reports for recount) there is
// one capped statement for each.
func (s *Server) queueCounts(b *pgx.Batch, users []uuid.UUID, ms map[uuid.UUID]marks) []countPlan {
	plans := make([]countPlan, 0, len(users))
	for _, u := range users {
		if q := s.countBothQuery(u, ms[u], s.cfg.CountCap+1); q != nil {
			b.Queue(q.sql.String(), q.args...)
			plans = append(plans, countPlan{user: u, single: true})
			continue
		}
		s.queueSeparate(b, u, ms[u])
		plans = append(plans, countPlan{user: u})
	}
	return plans
}

func (s *Server) queueSeparate(b *pgx.Batch, u uuid.UUID, m marks) {
	for _, k := range []kind{kindRead, kindSeen} {
		q := s.countUnsetQuery(u, m, k, true, s.cfg.CountCap+1)
		b.Queue(q.sql.String(), q.args...)
	}
}

// readCounts reads the results of queueCounts; redo are the users whose
// single pass could not tell their counts up to the cap.
func (s *Server) readCounts(res pgx.BatchResults, plans []countPlan) (out map[uuid.UUID]Counts, redo []uuid.UUID, err error) {
	out = make(map[uuid.UUID]Counts, len(plans))
	limit := s.cfg.CountCap + 1
	for _, p := range plans {
		var c Counts
		if p.single {
			var found int
			if err := res.QueryRow().Scan(&c.Unread, &c.Unseen, &found); err != nil {
				return nil, nil, fmt.Errorf("count: %w", err)
			}
			if found == limit && (c.Unread <= s.cfg.CountCap || c.Unseen <= s.cfg.CountCap) {
				// More rows may follow the ones this pass read.
				redo = append(redo, p.user)
				continue
			}
		} else {
			for _, n := range []*int{&c.Unread, &c.Unseen} {
				if err := res.QueryRow().Scan(n); err != nil {
					return nil, nil, fmt.Errorf("count: %w", err)
				}
			}
		}
		for _, n := range []*int{&c.Unread, &c.Unseen} {
			if *n > s.cfg.CountCap {
				*n, c.Capped = s.cfg.CountCap, true
			}
		}
		out[p.user] = c
	}
	return out, redo, nil
}

// recount counts the users of redo with one capped statement for each
// count, into out.
func (s *Server) recount(ctx context.Context, tx querier, out map[uuid.UUID]Counts, redo []uuid.UUID, ms map[uuid.UUID]marks) (map[uuid.UUID]Counts, error) {
	if len(redo) == 0 {
		return out, nil
	}
	var b pgx.Batch
	plans := make([]countPlan, len(redo))
	for i, u := range redo {
		s.queueSeparate(&b, u, ms[u])
		plans[i] = countPlan{user: u}
	}
	res := tx.SendBatch(ctx, &b)
	more, _, err := s.readCounts(res, plans)
	if err != nil {
		res.Close()
		return nil, err
	}
	for u, c := range more {
		out[u] = c
	}
	return out, res.Close()
}

// marksOf loads the read state of several users.
func marksOf(ctx context.Context, tx pgx.Tx, users []uuid.UUID) (map[uuid.UUID]marks, error) {
	r, err := tx.Query(ctx, `SELECT user_id, `+marksColumns+` FROM notifyd_inbox_users WHERE user_id = ANY($1)`, users)
	if err != nil {
		return nil, fmt.Errorf("load read state: %w", err)
	}
	out := make(map[uuid.UUID]marks, len(users))
	for r.Next() {
		var u uuid.UUID
		var m marks
		var snaps [3]*string
		var vers [3]*int64
		if err := r.Scan(&u, &m.version,
			&snaps[0], &m.kinds[0].at, &vers[0],
			&snaps[1], &m.kinds[1].at, &vers[1],
			&snaps[2], &m.kinds[2].at, &vers[2]); err != nil {
			r.Close()
			return nil, fmt.Errorf("load read state: %w", err)
		}
		m.fill(snaps, vers)
		out[u] = m
	}
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("load read state: %w", err)
	}
	return out, nil
}

// countUnset counts, up to limit, the user's rows whose kind k is unset
// (and, with notArchived, that are not archived).
func (s *Server) countUnset(ctx context.Context, tx querier, user uuid.UUID, m marks, k kind, notArchived bool, limit int) (int, error) {
	q := s.countUnsetQuery(user, m, k, notArchived, limit)
	var n int
	err := tx.QueryRow(ctx, q.sql.String(), q.args...).Scan(&n)
	return n, err
}

func (s *Server) countUnsetQuery(user uuid.UUID, m marks, k kind, notArchived bool, limit int) *query {
	q := &query{}
	u := q.arg(user)
	choices := []kind{k}
	if notArchived {
		choices = append(choices, kindArchived)
	}
	q.add(`SELECT count(*) FROM (SELECT 1 FROM (`, q.candidates(u, m, choices), `) c
LEFT JOIN notifyd_inbox_state s ON s.user_id = `, u, ` AND s.notification_id = c.id
WHERE `, q.effective(k, m.kinds[k], "c", "s"), ` IS NULL`)
	if notArchived {
		q.add(` AND `, q.effective(kindArchived, m.kinds[kindArchived], "c", "s"), ` IS NULL`)
	}
	q.add(` LIMIT `, q.arg(limit), `) x`)
	return q
}

// countBothQuery counts in one pass, among the first limit rows not
// archived that are unread or unseen, the unread ones, the unseen ones and
// all of them; nil when the two counts would not scan the same candidates.
func (s *Server) countBothQuery(user uuid.UUID, m marks, limit int) *query {
	read, seen := bestWatermark(m, kindRead, kindArchived), bestWatermark(m, kindSeen, kindArchived)
	if read != seen {
		return nil
	}
	q := &query{}
	u := q.arg(user)
	rEff, sEff := q.effective(kindRead, m.kinds[kindRead], "c", "s"), q.effective(kindSeen, m.kinds[kindSeen], "c", "s")
	q.add(`SELECT count(*) FILTER (WHERE x.r IS NULL), count(*) FILTER (WHERE x.se IS NULL), count(*) FROM (SELECT `,
		rEff, ` AS r, `, sEff, ` AS se
FROM (`, q.candidates(u, m, []kind{kindArchived}), `) c
LEFT JOIN notifyd_inbox_state s ON s.user_id = `, u, ` AND s.notification_id = c.id
WHERE `, q.effective(kindArchived, m.kinds[kindArchived], "c", "s"), ` IS NULL AND (`, rEff, ` IS NULL OR `, sEff, ` IS NULL)
LIMIT `, q.arg(limit), `) x`)
	return q
}

// bestWatermark is the kind, among choices, whose watermark leaves the
// fewest candidates for a count (a row it covers is set, for that kind,
// unless an exception newer than it says not), or -1 for none.
func bestWatermark(m marks, choices ...kind) kind {
	var w watermark
	wk := kind(-1)
	for _, c := range choices {
		if cw := m.kinds[c]; cw.exists && cw.at != nil && (!w.exists || snapXmin(cw.snap) > snapXmin(w.snap)) {
			w, wk = cw, c
		}
	}
	return wk
}

// candidates is the SQL of the user's (id, commit_xid) rows that a count
// must look at: all of them when no watermark among choices covers rows,
// else those the best one does not cover and the exceptions newer than it.
func (q *query) candidates(u string, m marks, choices []kind) string {
	wk := bestWatermark(m, choices...)
	if wk < 0 {
		return allRows(u)
	}
	w := m.kinds[wk]
	snap, ver := q.arg(w.snap), q.arg(w.version)
	return `SELECT n.id, n.commit_xid FROM notifications n WHERE n.user_id = ` + u +
		` AND n.commit_xid >= pg_snapshot_xmin(` + snap + `::text::pg_snapshot)
UNION ALL
SELECT n.id, n.commit_xid FROM notifyd_inbox_state e
JOIN notifications n ON n.user_id = ` + u + ` AND n.id = e.notification_id AND n.created_at = e.created_at
WHERE e.user_id = ` + u + ` AND e.` + kindColumn[wk] + `_version > ` + ver + `
  AND (n.commit_xid IS NULL OR n.commit_xid < pg_snapshot_xmin(` + snap + `::text::pg_snapshot))`
}

// countSet counts, up to limit, the user's rows whose kind k is set: all
// rows are candidates while a watermark sets them, else only the rows set
// by id.
func (s *Server) countSet(ctx context.Context, tx querier, user uuid.UUID, m marks, k kind, limit int) (int, error) {
	var q query
	u := q.arg(user)
	cand := allRows(u)
	if w := m.kinds[k]; !w.exists || w.at == nil {
		cand = `SELECT n.id, n.commit_xid FROM notifyd_inbox_state e
JOIN notifications n ON n.user_id = ` + u + ` AND n.id = e.notification_id AND n.created_at = e.created_at
WHERE e.user_id = ` + u + ` AND e.` + kindColumn[k] + `_at IS NOT NULL`
	}
	q.add(`SELECT count(*) FROM (SELECT 1 FROM (`, cand, `) c
LEFT JOIN notifyd_inbox_state s ON s.user_id = `, u, ` AND s.notification_id = c.id
WHERE `, q.effective(k, m.kinds[k], "c", "s"), ` IS NOT NULL LIMIT `, q.arg(limit), `) x`)
	var n int
	err := tx.QueryRow(ctx, q.sql.String(), q.args...).Scan(&n)
	return n, err
}

// allRows selects (id, commit_xid) of all the rows of user u from the
// indexes alone (migration 0003), without reading table pages.
func allRows(u string) string {
	return `SELECT n.id, n.commit_xid FROM notifications n WHERE n.user_id = ` + u + ` AND n.commit_xid IS NOT NULL
UNION ALL
SELECT n.id, NULL::xid8 FROM notifications n WHERE n.user_id = ` + u + ` AND n.commit_xid IS NULL`
}

// snapXmin is the xmin of a pg_snapshot's text form, xmin:xmax:xip.
func snapXmin(snap string) uint64 {
	x, _, _ := strings.Cut(snap, ":")
	v, _ := strconv.ParseUint(x, 10, 64)
	return v
}

// userCounts counts the user's rows in two round trips: BEGIN with the
// read state, then the counts with COMMIT. The rare user whose single pass
// cannot tell (countBothQuery) is counted again in a transaction of its
// own (countAgain).
func (s *Server) userCounts(ctx context.Context, user uuid.UUID) (Counts, error) {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return Counts{}, err
	}
	defer pc.Release()
	conn := pc.Conn()
	m, err := beginRead(ctx, conn, user)
	if err != nil {
		return Counts{}, err
	}
	return s.countsAndEnd(ctx, conn, &pgx.Batch{}, user, m, `COMMIT`)
}

// countsAndEnd sends the statements already in b, the user's counts with
// read state m and end (COMMIT or ROLLBACK) in one round trip, and returns
// the counts. A user whose single pass cannot tell is counted again after
// end, in a transaction of its own (countAgain).
func (s *Server) countsAndEnd(ctx context.Context, conn *pgx.Conn, b *pgx.Batch, user uuid.UUID, m marks, end string) (Counts, error) {
	before := b.Len()
	plans := s.queueCounts(b, []uuid.UUID{user}, map[uuid.UUID]marks{user: m})
	b.Queue(end)
	res := conn.SendBatch(ctx, b)
	var err error
	for range before {
		if _, err = res.Exec(); err != nil {
			break
		}
	}
	var cs map[uuid.UUID]Counts
	var redo []uuid.UUID
	if err == nil {
		cs, redo, err = s.readCounts(res, plans)
	}
	if err == nil {
		_, err = res.Exec()
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Counts{}, err
	}
	if len(redo) > 0 {
		return s.countAgain(ctx, conn, user)
	}
	return cs[user], nil
}

// countAgain counts the user's rows, with one capped statement for each
// count, in a read-only transaction of its own on conn.
func (s *Server) countAgain(ctx context.Context, conn *pgx.Conn, user uuid.UUID) (Counts, error) {
	m, err := beginRead(ctx, conn, user)
	if err != nil {
		return Counts{}, err
	}
	out, err := s.recount(ctx, conn, map[uuid.UUID]Counts{}, []uuid.UUID{user}, map[uuid.UUID]marks{user: m})
	if err != nil {
		return Counts{}, err
	}
	if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
		return Counts{}, err
	}
	return out[user], nil
}

// querier is what the statements of a change need: a pgx.Tx, or a
// connection whose transaction the change opened itself (change).
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// change sets (set) or unsets kind k of the user's rows with the given ids,
// or of all the user's rows committed now (all). It returns how many rows
// changed (for all, exact up to the cap) and the counts after it.
//
// Its transaction takes three round trips for ids (four when some are not
// among the recent rows, changeIDs; four for all): BEGIN
// goes with the version bump, and the streams' wake-up, the counts and
// COMMIT go together. A change that changed no row ends with ROLLBACK
// instead: a repeated request writes nothing (no version bump, no WAL to
// flush at commit) and wakes no stream. A connection that an error leaves
// inside the transaction is closed by the pool on release, not reused.
func (s *Server) change(ctx context.Context, user uuid.UUID, k kind, set bool, ids []uuid.UUID, all bool) (updated int, c Counts, err error) {
	col := kindColumn[k]
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, Counts{}, err
	}
	defer pc.Release()
	conn := pc.Conn()

	// The version bump takes the user's row lock: one user's changes are
	// ordered, and the statements below see the latest of them.
	var b pgx.Batch
	b.Queue(`BEGIN`)
	b.Queue(`INSERT INTO notifyd_inbox_users AS u (user_id, version) VALUES ($1, 1)
ON CONFLICT (user_id) DO UPDATE SET version = u.version + 1
RETURNING `+marksColumns, user)
	res := conn.SendBatch(ctx, &b)
	_, err = res.Exec()
	var m marks
	if err == nil {
		m, err = scanMarks(res.QueryRow())
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, Counts{}, fmt.Errorf("lock read state: %w", err)
	}
	if all {
		updated, m, err = s.changeAll(ctx, conn, user, m, k, set)
	} else {
		// A change by ids leaves the watermarks as they are: m holds the
		// read state the counts below need.
		updated, err = s.changeIDs(ctx, conn, user, m, k, set, ids)
	}
	if err != nil {
		return 0, Counts{}, fmt.Errorf("mark %s: %w", col, err)
	}

	b = pgx.Batch{}
	end := `COMMIT`
	if updated > 0 {
		b.Queue(`SELECT pg_notify('notifyd_inbox_marks', $1)`, user.String())
	} else {
		end = `ROLLBACK`
	}
	// The counts after the change; a user whose single pass cannot tell
	// is counted again after it, with the read state as it is then.
	c, err = s.countsAndEnd(ctx, conn, &b, user, m, end)
	if err != nil {
		return 0, Counts{}, err
	}
	return updated, c, nil
}

// recentRows is the SQL span of the rows that a change by ids looks in
// first: created in the last 48 hours or later (the partitions ahead and the
// far future included). A client marks what it shows, the newest first, so
// that is where the ids usually are, and with a partition a day that is 3
// daily partitions (and the empty ones ahead) instead of all of them
// (pgbench, 10 of a user's newest
// ids: 1.2 ms of database CPU through every partition, 0.4 ms through
// these; docs/architecture.md, "Read state"). Both lookups of a change run
// in its transaction, whose now() they share, so that a row is in exactly
// one of the two spans.
const (
	recentRows = `n.created_at >= now() - interval '48 hours'`
	olderRows  = `n.created_at < now() - interval '48 hours'`
)

// changeIDs sets (set) or unsets kind k of the user's rows with the given
// ids: first among the recent rows, then, for the ids not found there,
// among the older ones. It returns how many rows changed.
func (s *Server) changeIDs(ctx context.Context, tx querier, user uuid.UUID, m marks, k kind, set bool, ids []uuid.UUID) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	changed, found, err := s.changeIDsIn(ctx, tx, user, m, k, set, ids, recentRows)
	if err != nil {
		return 0, err
	}
	seen := make(map[[16]byte]bool, len(ids))
	for _, id := range found {
		seen[id] = true
	}
	var rest []uuid.UUID
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			rest = append(rest, id)
		}
	}
	if len(rest) == 0 {
		return changed, nil
	}
	more, _, err := s.changeIDsIn(ctx, tx, user, m, k, set, rest, olderRows)
	return changed + more, err
}

// changeIDsIn is changeIDs among the user's rows in span (SQL on n): it
// returns how many rows changed and the ids found there, changed or not.
func (s *Server) changeIDsIn(ctx context.Context, tx querier, user uuid.UUID, m marks, k kind, set bool, ids []uuid.UUID, span string) (int, [][16]byte, error) {
	col := kindColumn[k]
	var q query
	u := q.arg(user)
	eff := q.effective(k, m.kinds[k], "t", "s")
	newAt, want := "NULL::timestamptz", "IS NOT NULL"
	if set {
		newAt, want = "now()", "IS NULL"
	}
	// Only the caller's own rows are looked up, so another user's ids are
	// ignored like unknown ones. They are found among the caller's entries
	// of the (user_id, commit_xid) INCLUDE (id, created_at) index of each
	// partition of the span (migration 0006), one short range of one leaf
	// page, from the index alone; probing each partition's primary key for
	// each id cost the database more than twice as much. The rows of
	// before migration 0003 are only in the partitions without the
	// committed check (migration 0005), where the second branch looks them
	// up.
	idsArg := q.arg(ids)
	q.add(`WITH t AS (SELECT DISTINCT ON (n.id) n.id, n.created_at, n.commit_xid
      FROM (SELECT n.id, n.created_at, n.commit_xid FROM notifications n
            WHERE n.user_id = `, u, ` AND n.commit_xid IS NOT NULL AND n.id = ANY(`, idsArg, `) AND `, span, `
            UNION ALL
            SELECT n.id, n.created_at, n.commit_xid FROM notifications n
            WHERE n.user_id = `, u, ` AND n.commit_xid IS NULL AND n.id = ANY(`, idsArg, `) AND `, span, `) n
      ORDER BY n.id, n.created_at DESC),
c AS (INSERT INTO notifyd_inbox_state AS x (user_id, notification_id, created_at, `, col, `_at, `, col, `_version)
SELECT `, u, `, t.id, t.created_at, `, newAt, `, `, q.arg(m.version), `
FROM t LEFT JOIN notifyd_inbox_state s ON s.user_id = `, u, ` AND s.notification_id = t.id
WHERE `, eff, ` `, want, `
ON CONFLICT (user_id, notification_id) DO UPDATE SET `, col, `_at = EXCLUDED.`, col, `_at, `, col, `_version = EXCLUDED.`, col, `_version
RETURNING 1)
SELECT (SELECT count(*) FROM c), ARRAY(SELECT t.id FROM t)`)
	var changed int
	var found [][16]byte
	if err := tx.QueryRow(ctx, q.sql.String(), q.args...).Scan(&changed, &found); err != nil {
		return 0, nil, err
	}
	return changed, found, nil
}

// changeAll moves kind k's watermark to now, unless no row would change;
// it returns how many rows change (up to the cap) and the read state after.
func (s *Server) changeAll(ctx context.Context, tx querier, user uuid.UUID, m marks, k kind, set bool) (int, marks, error) {
	col := kindColumn[k]
	// How many rows change, up to the cap, before the watermark moves.
	count := s.countSet
	if set {
		count = func(ctx context.Context, tx querier, user uuid.UUID, m marks, k kind, limit int) (int, error) {
			return s.countUnset(ctx, tx, user, m, k, false, limit)
		}
	}
	n, err := count(ctx, tx, user, m, k, s.cfg.CountCap)
	if err != nil || n == 0 {
		// Nothing to change: the rows keep the times they were set at.
		return 0, m, err
	}
	at := "now()"
	if !set {
		at = "NULL"
	}
	m, err = scanMarks(tx.QueryRow(ctx, `UPDATE notifyd_inbox_users SET `+col+`_all_snap = pg_current_snapshot(), `+
		col+`_all_at = `+at+`, `+col+`_all_version = version WHERE user_id = $1 RETURNING `+marksColumns, user))
	return n, m, err
}
