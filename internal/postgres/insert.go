package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/notifyd/notifyd/internal/notification"
)

// The primary key of notifications is (id, created_at): ON CONFLICT and the
// COPY path's unique violation catch a duplicate with the same created_at
// (a producer's retry, a redelivery), and screen catches the others.

// insertSQL inserts a whole batch as one statement of column arrays: one
// round trip, binary parameters, and ON CONFLICT for duplicates by id.
//
// It is the path for small batches, for batches holding duplicate ids and
// for isolating bad rows; larger batches try copyRows first. Chosen by
// BenchmarkWritePath (whole transactions, medians, this
// repository's 2-core machine; ratio to plain COPY without dedupe in
// brackets): at 1, 100, 1,000 and 10,000 rows this statement took 0.48 ms
// (1.13), 1.80 ms (0.91), 15.0 ms (0.83) and 141 ms (0.74). COPY into a
// staging table then INSERT … SELECT took 1.01, 2.60, 16.5 and 124 ms: it
// only wins from about 5,000 rows, by under 10 %, and needs a temporary
// table per session, which transaction-pooling proxies do not keep.
// Multi-row VALUES was slower at every size past 100 rows. unnest in the
// select list streams; FROM unnest(…) materialises the rows first and
// spills past work_mem on large batches.
const insertSQL = `
INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
SELECT unnest($1::uuid[]), unnest($2::uuid[]), unnest($3::text[]), unnest($4::text[]), unnest($5::text[]), unnest($6::jsonb[]), unnest($7::timestamptz[])
ON CONFLICT DO NOTHING`

// columnArrays are the rows as the seven column arrays of insertSQL (and of
// notifyd_insert_each), in the types pgx encodes fastest: uuid.UUID would
// go through its string form, twenty times slower.
func columnArrays(rows []notification.Notification) []any {
	ids := make([][16]byte, len(rows))
	users := make([][16]byte, len(rows))
	types := make([]string, len(rows))
	titles := make([]string, len(rows))
	bodies := make([]string, len(rows))
	data := make([][]byte, len(rows))
	created := make([]pgtype.Timestamptz, len(rows))
	for i := range rows {
		r := &rows[i]
		ids[i], users[i], types[i], titles[i], bodies[i], data[i] =
			r.ID, r.UserID, r.EventType, r.Title, r.Body, r.Data
		created[i] = pgtype.Timestamptz{Time: r.CreatedAt, Valid: true}
	}
	return []any{ids, users, types, titles, bodies, data, created}
}

// The dedupe window's probe names each partition that the window reaches
// (probeSQL), so that a partition holding no row costs a look at its first
// heap page instead of a descent of its primary key for every id: with the
// default window that is most of them on a young table, and the partitions
// made ahead always (docs/architecture.md, "Identity and the dedupe
// window"). Its answer carries the partitions' oids as the server has them
// when it runs, which the store compares with those it built the
// statement from.

// probeParts is the partitions of notifications as the probe knows them.
type probeParts struct {
	key   string // their oids, ascending, comma-separated, as probeKeySQL gives them
	parts []Partition
}

// probeKeySQL is the partitions' oids as probeParts.key has them.
const probeKeySQL = `(SELECT string_agg(inhrelid::text, ',' ORDER BY inhrelid) FROM pg_inherits WHERE inhparent = to_regclass('notifications'))`

// loadProbeParts reads the partitions on q and makes them the probe's; the
// filters of partitions gone go with them.
func (s *Store) loadProbeParts(ctx context.Context, q querier) (*probeParts, error) {
	parts, key, err := listPartitions(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("dedupe probe: %w", err)
	}
	pp := &probeParts{key: key, parts: parts}
	s.probeParts.Store(pp)
	s.pruneFilters(parts)
	return pp, nil
}

// parentProbeSQL is the probe through the table, for a role that may not
// read its partitions by name: it reads every partition the window
// reaches, those without rows included. Its answer has no row of oids.
const parentProbeSQL = `SELECT id, created_at, NULL::text, NULL::text FROM notifications
WHERE id = ANY($1::uuid[]) AND created_at >= $2 AND created_at <= $3`

// probePlan is one probe: its statement over the partitions that the span
// reaches, its parameters and their formats, and the filters it catches
// up, in the order of its parameters.
type probePlan struct {
	sql      string
	params   [][]byte
	formats  []int16
	filtered []filtered
}

type filtered struct {
	f    *partFilter
	part Partition
}

// planProbe is the probe over the partitions of pp that hold rows of
// created_at in [lo, hi] ($2, $3; ids in $1):
//   - first a row with the partitions' oids as the server has them
//     (probeKeySQL) and its snapshot;
//   - for a partition with a filter (filterOf), a primary-key lookup of
//     only the ids the filter may hold, and the rows committed there that
//     the filter's snapshot does not see (through the (commit_xid) index:
//     at or above its xmin, below the statement's xmax), tagged with the
//     filter's place in plan.filtered;
//   - for any other, a primary-key lookup of the ids, behind a one-time
//     check that the partition holds a row at all.
//
// Its sql is empty when no partition covers the span. The filters'
// snapshots are read before their bits (docs/architecture.md, "Filters of
// closed partitions").
func (s *Store) planProbe(pp *probeParts, lo, hi time.Time, ids [][16]byte, idArray, from, to []byte) probePlan {
	var b strings.Builder
	plan := probePlan{params: [][]byte{idArray, from, to},
		formats: []int16{pgx.BinaryFormatCode, pgx.BinaryFormatCode, pgx.BinaryFormatCode}}
	var hashes []uint64
	for _, p := range pp.parts {
		if !inSpan(p, lo, hi) {
			continue
		}
		if b.Len() == 0 {
			// $1 is named here too, for a statement whose partitions all
			// have filters: the server must know every parameter's type.
			b.WriteString(`SELECT NULL::uuid, NULL::timestamptz, ` + probeKeySQL + `, pg_current_snapshot()::text FROM (SELECT $1::uuid[]) AS typed`)
		}
		t := pgx.Identifier{p.schema, p.Name}.Sanitize()
		f := s.filterOf(p)
		if f == nil {
			b.WriteString("\nUNION ALL SELECT id, created_at, NULL, NULL FROM ONLY " + t +
				" WHERE (SELECT EXISTS (SELECT FROM ONLY " + t + ")) AND id = ANY($1::uuid[]) AND created_at >= $2 AND created_at <= $3")
			continue
		}
		sn := f.snap.Load()
		if hashes == nil {
			hashes = make([]uint64, len(ids))
			for i, id := range ids {
				hashes[i] = filterHash(id)
			}
		}
		var maybe [][16]byte
		for i, h := range hashes {
			if f.has(h) {
				maybe = append(maybe, ids[i])
			}
		}
		j := len(plan.filtered)
		n := len(plan.params)
		fmt.Fprintf(&b, "\nUNION ALL SELECT id, created_at, NULL, NULL FROM ONLY %s WHERE id = ANY($%d::uuid[]) AND created_at >= $2 AND created_at <= $3", t, n+1)
		// Bounded on both sides, the range is estimated narrow, and the
		// generic plan keeps to the index.
		fmt.Fprintf(&b, "\nUNION ALL SELECT id, created_at, '%[1]d', NULL FROM ONLY %[2]s WHERE commit_xid >= pg_snapshot_xmin($%[3]d::pg_snapshot)"+
			" AND commit_xid < pg_snapshot_xmax(pg_current_snapshot()) AND NOT pg_visible_in_snapshot(commit_xid, $%[3]d::pg_snapshot)", j, t, n+2)
		plan.params = append(plan.params, uuidArray(maybe), []byte(sn.text))
		plan.formats = append(plan.formats, pgx.BinaryFormatCode, pgx.TextFormatCode)
		plan.filtered = append(plan.filtered, filtered{f: f, part: p})
	}
	plan.sql = b.String()
	return plan
}

// uuidOID is the type oid of uuid, which a binary uuid[] names.
const uuidOID = 2950

// uuidArray is ids as the binary form of uuid[]: dimensions, has-nulls
// flag, element type, then the one dimension's length and lower bound,
// then each element as its length and its 16 bytes. No ids is the empty
// array, of no dimension.
func uuidArray(ids [][16]byte) []byte {
	if len(ids) == 0 {
		return binary.BigEndian.AppendUint32(make([]byte, 8, 12), uuidOID)
	}
	b := make([]byte, 0, 20+20*len(ids))
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uuidOID)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	b = binary.BigEndian.AppendUint32(b, 1)
	for _, id := range ids {
		b = binary.BigEndian.AppendUint32(b, 16)
		b = append(b, id[:]...)
	}
	return b
}

// screenWindow marks in drop the rows that may carry another created_at
// than an earlier copy (CreatedAtMayDiffer) and whose id is stored, or
// earlier in the batch, within the dedupe window; it returns how many it
// marked. A batch without such rows costs nothing.
//
// It is on the path of every write that has such rows, so it costs the
// usual batch (none of its ids stored, none twice in it) one round trip
// and little more: the ids go to the server as the binary form of uuid[]
// built here, not through pgx's type map (which boxes every element), and
// the batch's other rows are told apart from the probed ids by a bit
// filter before any map lookup (BenchmarkScreen).
func (s *Store) screenWindow(ctx context.Context, rows []notification.Notification, drop []bool, out *screened) error {
	n := 0
	var lo, hi time.Time
	for i := range rows {
		if r := &rows[i]; r.CreatedAtMayDiffer && !drop[i] {
			if n == 0 {
				lo, hi = r.CreatedAt, r.CreatedAt
			}
			n++
			lo, hi = minTime(lo, r.CreatedAt), maxTime(hi, r.CreatedAt)
		}
	}
	if n == 0 {
		return nil
	}
	ids := make([][16]byte, 0, n)
	var filter idFilter
	probed := make(map[[16]byte]int, n) // copies of each probed id in the batch
	for i := range rows {
		if r := &rows[i]; r.CreatedAtMayDiffer && !drop[i] {
			if _, ok := probed[r.ID]; !ok {
				ids = append(ids, r.ID)
			}
			filter.add(r.ID)
			probed[r.ID] = 0
		}
	}
	w := s.cfg.dedupeWindow()
	start := time.Now()
	stored, err := s.probeWindow(ctx, ids, probed, lo.Add(-w), hi.Add(w))
	out.probe = time.Since(start)
	if err != nil {
		return fmt.Errorf("look for duplicates within the dedupe window: %w", err)
	}
	// The usual batch: nothing stored, and each probed id once in it.
	again := false
	for i := range rows {
		if id := rows[i].ID; !drop[i] && filter.has(id) {
			if c, ok := probed[id]; ok {
				probed[id] = c + 1
				again = again || c > 0
			}
		}
	}
	if len(stored) == 0 && !again {
		return nil
	}

	within := func(a, b time.Time) bool { d := a.Sub(b); return d <= w && d >= -w }
	// earlier holds the created_at of the copies of each probed id that
	// come first: stored, then kept in this batch. Only a probed row can be
	// dropped, so only probed ids need their copies known.
	earlier := stored
	if earlier == nil {
		earlier = make(map[[16]byte][]time.Time)
	}
	for i := range rows {
		r := &rows[i]
		if drop[i] || !filter.has(r.ID) {
			continue
		}
		if _, ok := probed[r.ID]; !ok {
			continue
		}
		copies := earlier[r.ID]
		if r.CreatedAtMayDiffer {
			for _, c := range copies {
				// The same created_at is left to the primary key, which counts it.
				if !c.Equal(r.CreatedAt) && within(c, r.CreatedAt) {
					drop[i] = true
					out.windowed++
					break
				}
			}
		}
		if !drop[i] {
			earlier[r.ID] = append(copies, r.CreatedAt)
		}
	}
	return nil
}

// probeWindow runs the probe over the partitions that [lo, hi] reaches
// (planProbe) for ids, each a key of probed, and returns the created_at of
// each id of probed it found; nil when it found none. It first gives a
// filter to one closed partition that has none (buildFilter). When the
// partitions are not those the statement names (made or dropped since the
// store read them; the first probe has read none), it reads them again and
// probes again; twice at most.
func (s *Store) probeWindow(ctx context.Context, ids [][16]byte, probed map[[16]byte]int, lo, hi time.Time) (map[[16]byte][]time.Time, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	idArray := uuidArray(ids)
	from := binary.BigEndian.AppendUint64(nil, uint64(pgMicros(lo)))
	to := binary.BigEndian.AppendUint64(nil, uint64(pgMicros(hi)))
	if s.probeViaParent.Load() {
		return s.probeOnce(ctx, conn.Conn(), parentPlan(idArray, from, to), probed, "")
	}
	pp := s.probeParts.Load()
	for attempt := 0; ; attempt++ {
		if pp == nil {
			// On the probe's own connection: writers that all read them
			// at once never wait for each other's connections.
			if pp, err = s.loadProbeParts(ctx, conn); err != nil {
				return nil, err
			}
		}
		if attempt == 0 {
			if err := s.buildFilter(ctx, conn.Conn(), pp, lo, hi); err != nil {
				return nil, err
			}
		}
		plan := s.planProbe(pp, lo, hi, ids, idArray, from, to)
		if plan.sql == "" {
			return nil, nil // no partition covers the span: no row can be there
		}
		found, err := s.probeOnce(ctx, conn.Conn(), plan, probed, pp.key)
		var pe *pgconn.PgError
		switch {
		case err == nil:
			return found, nil
		case attempt == 2:
			if errors.Is(err, errPartitionsChanged) {
				err = errors.New("the partitions of notifications changed during each of three probes")
			}
			return nil, err
		case errors.Is(err, errPartitionsChanged), errors.As(err, &pe) && pe.Code == "42P01": // undefined_table: a partition dropped
			pp = nil
		case errors.As(err, &pe) && pe.Code == "42501": // insufficient_privilege
			// Partitions need no grants of their own (docs/operations.md,
			// "Least privilege"): a role that may read only the table
			// probes through it, as the probe did before it named them.
			s.probeViaParent.Store(true)
			return s.probeOnce(ctx, conn.Conn(), parentPlan(idArray, from, to), probed, "")
		default:
			return nil, err
		}
	}
}

// parentPlan is the probe through the table (parentProbeSQL).
func parentPlan(idArray, from, to []byte) probePlan {
	return probePlan{sql: parentProbeSQL, params: [][]byte{idArray, from, to},
		formats: []int16{pgx.BinaryFormatCode, pgx.BinaryFormatCode, pgx.BinaryFormatCode}}
}

// errPartitionsChanged is a probe's answer over partitions other than
// those its statement names.
var errPartitionsChanged = errors.New("the partitions of notifications changed")

// probeOnce runs plan on conn, prepared under a name of its own (one per
// statement; pgx returns the one it has), and returns the created_at of
// each id of probed it found. When the partitions' oids on the server are
// not key (unless key is empty), it returns errPartitionsChanged and leaves
// the filters as they were; otherwise it adds the rows the filters' catch-up
// read to them, and then gives them the statement's snapshot.
func (s *Store) probeOnce(ctx context.Context, conn *pgx.Conn, plan probePlan, probed map[[16]byte]int, key string) (map[[16]byte][]time.Time, error) {
	sd, err := conn.Prepare(ctx, fmt.Sprintf("notifyd_window_probe_%016x", fnv64(plan.sql)), plan.sql)
	if err != nil {
		return nil, err
	}
	rr := conn.PgConn().ExecPrepared(ctx, sd.Name, plan.params, plan.formats,
		[]int16{pgx.BinaryFormatCode, pgx.BinaryFormatCode, pgx.TextFormatCode, pgx.TextFormatCode})
	var found map[[16]byte][]time.Time
	addFound := func(id [16]byte, at time.Time) {
		if found == nil {
			found = make(map[[16]byte][]time.Time)
		}
		found[id] = append(found[id], at)
	}
	type caught struct {
		id [16]byte
		at time.Time
	}
	var catchUp [][]caught
	var serverKey string
	var snap *filterSnap
	var bad error
	for rr.NextRow() {
		v := rr.Values()
		switch {
		case len(v) != 4:
			bad = fmt.Errorf("the server answered the probe with a row of %d columns, not 4", len(v))
		case v[0] == nil && v[3] != nil:
			serverKey = string(v[2])
			if snap, err = parseSnap(string(v[3])); err != nil {
				bad = fmt.Errorf("the server answered the probe with %w", err)
			}
		case len(v[0]) == 16 && len(v[1]) == 8 && v[2] == nil:
			addFound([16]byte(v[0]), pgTime(v[1]))
		case len(v[0]) == 16 && len(v[1]) == 8:
			j, err := strconv.Atoi(string(v[2]))
			if err != nil || j < 0 || j >= len(plan.filtered) {
				bad = fmt.Errorf("the server answered the probe with a row of filter %q", v[2])
				continue
			}
			if catchUp == nil {
				catchUp = make([][]caught, len(plan.filtered))
			}
			catchUp[j] = append(catchUp[j], caught{[16]byte(v[0]), pgTime(v[1])})
		default:
			bad = errors.New("the server answered the probe with a row it should not have")
		}
	}
	if _, err := rr.Close(); err != nil {
		return nil, err
	}
	if bad == nil && len(plan.filtered) > 0 && snap == nil {
		bad = errors.New("the server answered the probe without its snapshot")
	}
	if bad != nil {
		return nil, bad
	}
	if key != "" && serverKey != key {
		return nil, errPartitionsChanged
	}
	for j, fp := range plan.filtered {
		if catchUp != nil {
			for _, r := range catchUp[j] {
				fp.f.add(filterHash(r.id))
				if _, ok := probed[r.id]; ok {
					addFound(r.id, r.at)
				}
			}
		}
		fp.f.advance(snap)
	}
	return found, nil
}

// pgTime is a timestamptz in binary.
func pgTime(b []byte) time.Time {
	return time.UnixMicro(int64(binary.BigEndian.Uint64(b)) + pgEpochMicros)
}

// fnv64 is the 64-bit FNV-1a hash of s.
func fnv64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// idFilter is a set of ids that may answer "yes" for an id not in it, but
// never "no" for one in it: one bit of 4,096 an id, from its bytes (random
// in the usual ids; ids made to collide only cost the map lookup it saves).
type idFilter [64]uint64

func (f *idFilter) bit(id [16]byte) (int, uint64) {
	h := (binary.LittleEndian.Uint64(id[:8]) ^ binary.LittleEndian.Uint64(id[8:])) * 0x9e3779b97f4a7c15
	b := h >> 52 // 12 bits
	return int(b >> 6), 1 << (b & 63)
}

func (f *idFilter) add(id [16]byte) { w, m := f.bit(id); f[w] |= m }

func (f *idFilter) has(id [16]byte) bool { w, m := f.bit(id); return f[w]&m != 0 }

// screened is a batch's rows less those screen took out.
type screened struct {
	rows     []notification.Notification
	orig     []int         // index in the batch of each kept row; nil when all were kept
	expired  int           // older than the retention
	windowed int           // duplicates of another created_at within the dedupe window
	probe    time.Duration // the dedupe window's probe, 0 when there was none
}

// screen takes out of rows the ones older than the retention (not stored,
// not an error) and the ones whose id is already stored, or earlier in the
// batch, with another created_at within the dedupe window. It reads only
// committed rows: two writers inserting one id with two created_at at the
// same moment may both succeed.
func (s *Store) screen(ctx context.Context, rows []notification.Notification) (screened, error) {
	out := screened{rows: rows}
	drop := make([]bool, len(rows))
	if s.cfg.Retention > 0 {
		cutoff := s.now().Add(-s.cfg.Retention)
		for i := range rows {
			if rows[i].CreatedAt.Before(cutoff) {
				drop[i] = true
				out.expired++
			}
		}
	}
	if err := s.screenWindow(ctx, rows, drop, &out); err != nil {
		return out, err
	}
	dropped := out.expired + out.windowed
	if dropped == 0 {
		return out, nil
	}
	out.rows = make([]notification.Notification, 0, len(rows)-dropped)
	out.orig = make([]int, 0, len(rows)-dropped)
	for i := range rows {
		if !drop[i] {
			out.rows = append(out.rows, rows[i])
			out.orig = append(out.orig, i)
		}
	}
	return out, nil
}

// LatestQuery is "a user's latest 20" as the user-facing service should ask
// it ($1 the user), as a prepared statement: it reads the partitions newest
// first through notifications_user_latest and stops once it has 20 rows
// (docs/architecture.md, "Reads").
//
// The limit is a constant, not a parameter: planning the query costs more
// than running it (every partition is planned), and with a constant limit
// the server keeps one generic plan for the prepared statement after its
// fifth run (plan_cache_mode auto). With LIMIT $2 the generic plan's cost
// is estimated for an unknown limit, the server finds it dearer than a
// custom plan and plans every execution again.
const LatestQuery = `SELECT id, event_type, title, body, data, created_at FROM notifications
WHERE user_id = $1 ORDER BY created_at DESC LIMIT 20`

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
