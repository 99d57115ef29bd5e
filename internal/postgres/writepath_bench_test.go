package postgres

// The write-path benchmark: which bulk write method should Store use?
//
// Every measured operation is one whole transaction as the write path runs
// it: BEGIN; the fenced offsets UPDATE; the rows; COMMIT. Rows are idempotent
// on id (ON CONFLICT (id) DO NOTHING), except for the plain COPY baseline,
// which shows the physical limit. Every transaction writes fresh random ids so
// the table and its indexes grow as in production; the dup10pct variants make
// every tenth row a copy of an id already stored.
//
// Run it with
//
//	go test -run='^$' -bench='WritePath$' -count=5 ./internal/postgres/ > /tmp/writepath.txt
//	benchstat -row /method -col /rows /tmp/writepath.txt
//	go test -run='^$' -bench=WritePathInterleaved -benchtime=20s -count=3 ./internal/postgres/
//	go test -run='^$' -bench=WritePathEncode -benchtime=0.5s -count=10 ./internal/postgres/
//
// On a shared machine, trust the ratios of WritePathInterleaved over those of
// separate WritePath cases.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/notifyd/notifyd/internal/pgtest"
)

// wpSchema is the production table plus a one-row offsets table for the
// fencing UPDATE.
const wpSchema = `
CREATE TABLE notifications (
	id uuid PRIMARY KEY,
	user_id uuid NOT NULL,
	event_type text NOT NULL,
	title text NOT NULL,
	body text NOT NULL,
	data jsonb,
	created_at timestamptz NOT NULL
);
CREATE INDEX notifications_user_latest ON notifications (user_id, created_at DESC);
CREATE TABLE notifyd_offsets (partition int PRIMARY KEY, next_offset bigint NOT NULL);
INSERT INTO notifyd_offsets VALUES (0, 0);
`

// wpStagingDDL runs once per connection (pgxpool.Config.AfterConnect). LIKE
// copies no index or constraint, so COPY into it only appends to a heap, and
// ON COMMIT DELETE ROWS truncates it at every commit.
const wpStagingDDL = `CREATE TEMP TABLE notifications_staging (LIKE notifications) ON COMMIT DELETE ROWS`

const wpAdvance = `UPDATE notifyd_offsets SET next_offset = $1 WHERE partition = $2 AND next_offset = $3`

const wpInsertUnnest = `INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::timestamptz[])
ON CONFLICT (id) DO NOTHING`

// wpInsertUnnestTlist zips the arrays with set-returning functions in the
// select list (a ProjectSet node, which streams) instead of unnest in FROM (a
// Function Scan, which first materializes all rows into a tuplestore that
// spills to disk once it outgrows work_mem: at about 10,000 rows here).
// PostgreSQL 10 and later run select-list SRFs in lockstep, so arrays of
// equal length give the same rows as the multi-argument unnest.
const wpInsertUnnestTlist = `INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
SELECT unnest($1::uuid[]), unnest($2::uuid[]), unnest($3::text[]), unnest($4::text[]), unnest($5::text[]), unnest($6::jsonb[]), unnest($7::timestamptz[])
ON CONFLICT (id) DO NOTHING`

const wpInsertStaged = `INSERT INTO notifications SELECT * FROM notifications_staging ON CONFLICT (id) DO NOTHING`

var wpColumns = []string{"id", "user_id", "event_type", "title", "body", "data", "created_at"}

// wpMaxValuesRows keeps a multi-row VALUES statement under PostgreSQL's limit
// of 65535 bind parameters.
const wpMaxValuesRows = 65535 / 7

// wpPrefill is how many rows each case's table holds before timing starts;
// the dup10pct variants draw their duplicates from them.
const wpPrefill = 20000

// wpBatch holds a batch column by column, in Go types that pgx v5 encodes
// directly (see BenchmarkWritePathEncode): [16]byte for uuid, string for
// text, []byte for jsonb (nil is SQL NULL), time.Time for timestamptz. Never
// github.com/google/uuid's UUID: pgx encodes it through its driver.Valuer as
// a string it then parses, some 25 times slower, in arrays and in COPY alike.
type wpBatch struct {
	ids     [][16]byte
	users   [][16]byte
	types   []string
	titles  []string
	bodies  []string
	data    [][]byte
	created []time.Time
}

func (bt *wpBatch) len() int { return len(bt.ids) }

// wpSource gives CopyFrom the batch row by row, reusing one []any: pgx
// encodes each row before asking for the next.
func (bt *wpBatch) wpSource() pgx.CopyFromSource {
	row := make([]any, 7)
	return pgx.CopyFromSlice(bt.len(), func(i int) ([]any, error) {
		row[0], row[1], row[2], row[3] = bt.ids[i], bt.users[i], bt.types[i], bt.titles[i]
		row[4], row[5], row[6] = bt.bodies[i], bt.data[i], bt.created[i]
		return row, nil
	})
}

var wpEventTypes = []string{
	"comment.created", "comment.replied", "mention.created", "follow.created",
	"reaction.added", "order.shipped", "invoice.paid", "security.login",
}

// wpWords mixes ASCII with two-, three- and four-byte UTF-8.
var wpWords = []string{
	"the", "your", "order", "has", "been", "shipped", "comment", "on", "post", "new", "reply",
	"from", "Anna", "to", "review", "please", "check", "update", "weekly", "summary", "account",
	"café", "naïve", "Grüße", "señor", "Zürich", "Ελλάδα", "Привет", "日本語", "東京", "🎉", "👍", "straße",
}

func wpText(r *rand.Rand, minLen, maxLen int) string {
	want := minLen + r.IntN(maxLen-minLen+1)
	var sb strings.Builder
	n := 0
	for n < want {
		w := wpWords[r.IntN(len(wpWords))]
		if n > 0 {
			sb.WriteByte(' ')
			n++
		}
		for _, c := range w {
			if n == want {
				break
			}
			sb.WriteRune(c)
			n++
		}
	}
	return sb.String()
}

func wpRandomID(r *rand.Rand) (id [16]byte) {
	binary.LittleEndian.PutUint64(id[:8], r.Uint64())
	binary.LittleEndian.PutUint64(id[8:], r.Uint64())
	id[6] = id[6]&0x0f | 0x40 // version 4
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	return id
}

// wpData returns a JSON object of 100 to 300 bytes.
func wpData(r *rand.Rand) []byte {
	type actor struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	id := wpRandomID(r)
	v := struct {
		PostID  int64  `json:"post_id"`
		Actor   actor  `json:"actor"`
		URL     string `json:"url"`
		Preview string `json:"preview"`
	}{
		PostID: r.Int64N(1 << 40),
		Actor:  actor{ID: fmt.Sprintf("%x", id), Name: wpText(r, 5, 20)},
		URL:    "https://example.com/p/" + strconv.FormatUint(r.Uint64(), 36),
	}
	want := 100 + r.IntN(201)
	base, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	if pad := want - len(base); pad > 0 {
		v.Preview = strings.Repeat("x", pad)
	}
	out, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return out
}

// wpNewBatch generates n realistic rows: ~10k users, title 20–80 and body
// 50–600 characters with some non-ASCII, data on half the rows. The ids are
// replaced before every transaction.
func wpNewBatch(r *rand.Rand, users [][16]byte, n int) *wpBatch {
	bt := &wpBatch{
		ids:     make([][16]byte, n),
		users:   make([][16]byte, n),
		types:   make([]string, n),
		titles:  make([]string, n),
		bodies:  make([]string, n),
		data:    make([][]byte, n),
		created: make([]time.Time, n),
	}
	now := time.Now()
	for i := range n {
		bt.ids[i] = wpRandomID(r)
		bt.users[i] = users[r.IntN(len(users))]
		bt.types[i] = wpEventTypes[r.IntN(len(wpEventTypes))]
		bt.titles[i] = wpText(r, 20, 80)
		bt.bodies[i] = wpText(r, 50, 600)
		if r.IntN(2) == 0 {
			bt.data[i] = wpData(r)
		}
		bt.created[i] = now.Add(time.Duration(i) * time.Microsecond)
	}
	return bt
}

// wpIDs hands out fresh random ids, generated in bulk with the timer
// stopped.
type wpIDs struct {
	r   *rand.Rand
	buf [][16]byte
	pos int
}

func (s *wpIDs) take(b *testing.B, n int) [][16]byte {
	if s.pos+n > len(s.buf) {
		b.StopTimer()
		if s.buf == nil {
			s.buf = make([][16]byte, max(1<<18, 64*n))
		}
		for i := range s.buf {
			s.buf[i] = wpRandomID(s.r)
		}
		s.pos = 0
		b.StartTimer()
	}
	ids := s.buf[s.pos : s.pos+n : s.pos+n]
	s.pos += n
	return ids
}

// wpOffset is the fencing state of partition 0.
type wpOffset struct{ next int64 }

// wpAdvanced checks that the fencing UPDATE matched its row.
func wpAdvanced(rowsAffected int64) error {
	if rowsAffected != 1 {
		return fmt.Errorf("offsets update matched %d rows, want 1", rowsAffected)
	}
	return nil
}

// wpMethod writes one batch in one transaction and returns how many rows it
// inserted.
type wpMethod func(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error)

func wpTx(ctx context.Context, conn *pgx.Conn, off *wpOffset, n int, rows func(pgx.Tx) (int64, error)) (int64, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	tag, err := tx.Exec(ctx, wpAdvance, off.next+int64(n), 0, off.next)
	if err != nil {
		return 0, err
	}
	if err := wpAdvanced(tag.RowsAffected()); err != nil {
		return 0, err
	}
	inserted, err := rows(tx)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	off.next += int64(n)
	return inserted, nil
}

func wpUnnestArgs(bt *wpBatch) []any {
	return []any{bt.ids, bt.users, bt.types, bt.titles, bt.bodies, bt.data, bt.created}
}

// wpUnnest: BEGIN; UPDATE; INSERT … SELECT FROM unnest(arrays); COMMIT —
// four round trips.
func wpUnnest(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error) {
	return wpTx(ctx, conn, off, bt.len(), func(tx pgx.Tx) (int64, error) {
		tag, err := tx.Exec(ctx, wpInsertUnnest, wpUnnestArgs(bt)...)
		return tag.RowsAffected(), err
	})
}

// wpUnnestTlist is wpUnnest with wpInsertUnnestTlist.
func wpUnnestTlist(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error) {
	return wpTx(ctx, conn, off, bt.len(), func(tx pgx.Tx) (int64, error) {
		tag, err := tx.Exec(ctx, wpInsertUnnestTlist, wpUnnestArgs(bt)...)
		return tag.RowsAffected(), err
	})
}

// wpUnnestBatch pipelines the offsets UPDATE and the INSERT in one
// pgx.Batch: three round trips.
func wpUnnestBatch(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error) {
	return wpBatchTx(ctx, conn, off, bt.len(), nil, wpInsertUnnest, wpUnnestArgs(bt)...)
}

// wpBatchTx runs BEGIN; before (if any); one pgx.Batch of the offsets UPDATE
// and insert; COMMIT.
func wpBatchTx(ctx context.Context, conn *pgx.Conn, off *wpOffset, n int, before func(pgx.Tx) error, insert string, args ...any) (int64, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if before != nil {
		if err := before(tx); err != nil {
			return 0, err
		}
	}
	var batch pgx.Batch
	batch.Queue(wpAdvance, off.next+int64(n), 0, off.next)
	batch.Queue(insert, args...)
	br := tx.SendBatch(ctx, &batch)
	adv, err := br.Exec()
	if err != nil {
		_ = br.Close()
		return 0, err
	}
	ins, err := br.Exec()
	if err != nil {
		_ = br.Close()
		return 0, err
	}
	if err := br.Close(); err != nil {
		return 0, err
	}
	// The insert has already run; a failed fence rolls it back.
	if err := wpAdvanced(adv.RowsAffected()); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	off.next += int64(n)
	return ins.RowsAffected(), nil
}

// wpCopyStaging: BEGIN; UPDATE; COPY into the per-connection temp table;
// INSERT … SELECT FROM it; COMMIT — five round trips.
func wpCopyStaging(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error) {
	return wpTx(ctx, conn, off, bt.len(), func(tx pgx.Tx) (int64, error) {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"notifications_staging"}, wpColumns, bt.wpSource()); err != nil {
			return 0, err
		}
		tag, err := tx.Exec(ctx, wpInsertStaged)
		return tag.RowsAffected(), err
	})
}

// wpCopyStagingBatch pipelines the UPDATE and the INSERT after the COPY:
// four round trips.
func wpCopyStagingBatch(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error) {
	return wpBatchTx(ctx, conn, off, bt.len(), func(tx pgx.Tx) error {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"notifications_staging"}, wpColumns, bt.wpSource())
		return err
	}, wpInsertStaged)
}

// wpValuesSQL returns the multi-row INSERT … VALUES for n rows.
func wpValuesSQL(n int) string {
	var sb strings.Builder
	sb.WriteString("INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at) VALUES ")
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		p := i * 7
		fmt.Fprintf(&sb, "($%d,$%d,$%d,$%d,$%d,$%d,$%d)", p+1, p+2, p+3, p+4, p+5, p+6, p+7)
	}
	sb.WriteString(" ON CONFLICT (id) DO NOTHING")
	return sb.String()
}

// wpValuesChunks splits n rows into the fewest equal chunks under the
// parameter limit.
func wpValuesChunks(n int) []int {
	k := (n + wpMaxValuesRows - 1) / wpMaxValuesRows
	var sizes []int
	for i := range k {
		sizes = append(sizes, n/k+min(1, max(0, n%k-i)))
	}
	return sizes
}

// wpValues returns the multi-row VALUES method with its statements built
// ahead, as a real implementation would cache them per chunk size.
func wpValues(n int) wpMethod {
	sqls := map[int]string{}
	for _, size := range wpValuesChunks(n) {
		sqls[size] = wpValuesSQL(size)
	}
	return func(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error) {
		return wpTx(ctx, conn, off, bt.len(), func(tx pgx.Tx) (int64, error) {
			var inserted int64
			start := 0
			for _, size := range wpValuesChunks(bt.len()) {
				args := make([]any, 0, 7*size)
				for i := start; i < start+size; i++ {
					args = append(args, bt.ids[i], bt.users[i], bt.types[i], bt.titles[i], bt.bodies[i], bt.data[i], bt.created[i])
				}
				tag, err := tx.Exec(ctx, sqls[size], args...)
				if err != nil {
					return 0, err
				}
				inserted += tag.RowsAffected()
				start += size
			}
			return inserted, nil
		})
	}
}

// wpCopy is the baseline: binary COPY straight into the table, no dedupe.
func wpCopy(ctx context.Context, conn *pgx.Conn, bt *wpBatch, off *wpOffset) (int64, error) {
	return wpTx(ctx, conn, off, bt.len(), func(tx pgx.Tx) (int64, error) {
		return tx.CopyFrom(ctx, pgx.Identifier{"notifications"}, wpColumns, bt.wpSource())
	})
}

// wpPool opens a pool on a fresh schema holding wpSchema, whose connections
// each carry the staging temp table.
func wpPool(b *testing.B) *pgxpool.Pool {
	b.Helper()
	ctx := context.Background()
	setup, url := pgtest.Pool(b)
	if _, err := setup.Exec(ctx, wpSchema); err != nil {
		b.Fatalf("create schema: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatalf("parse %s: %v", url, err)
	}
	// A temp table lives as long as its session, so it is created when the
	// pool opens a connection, never per transaction (that would churn the
	// catalog). It does not survive a session reset such as PgBouncer's
	// transaction pooling.
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, wpStagingDDL)
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatalf("open pool: %v", err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// wpMethods lists the methods measured. dups marks the variants in which
// every tenth row repeats a stored id.
func wpMethods() []struct {
	name   string
	method func(n int) wpMethod
	dups   bool
} {
	return []struct {
		name   string
		method func(n int) wpMethod
		dups   bool
	}{
		{"unnest", func(int) wpMethod { return wpUnnest }, false},
		{"unnest-tlist", func(int) wpMethod { return wpUnnestTlist }, false},
		{"unnest-batch", func(int) wpMethod { return wpUnnestBatch }, false},
		{"unnest-dup10pct", func(int) wpMethod { return wpUnnest }, true},
		{"copy-staging", func(int) wpMethod { return wpCopyStaging }, false},
		{"copy-staging-batch", func(int) wpMethod { return wpCopyStagingBatch }, false},
		{"copy-staging-dup10pct", func(int) wpMethod { return wpCopyStaging }, true},
		{"values", wpValues, false},
		{"copy", func(int) wpMethod { return wpCopy }, false},
	}
}

// wpSizes are the batch sizes measured; the write path sees 1 to ~10,000.
var wpSizes = []int{1, 100, 1000, 10000}

// BenchmarkWritePath measures whole write-path transactions per method and
// batch size, reporting rows/s and ms/tx.
func BenchmarkWritePath(b *testing.B) {
	for _, m := range wpMethods() {
		for _, n := range wpSizes {
			if m.dups && n < 100 {
				continue // a tenth of one row
			}
			b.Run(fmt.Sprintf("method=%s/rows=%d", m.name, n), func(b *testing.B) {
				w := wpSetup(b, n)
				method := m.method(n)
				for b.Loop() {
					w.next(b, m.dups)
					w.write(b, method)
				}
				sec := b.Elapsed().Seconds()
				b.ReportMetric(float64(n*b.N)/sec, "rows/s")
				b.ReportMetric(sec*1e3/float64(b.N), "ms/tx")
				b.ReportMetric(0, "ns/op") // ms/tx says it
			})
		}
	}
}

// BenchmarkWritePathInterleaved runs every method once per iteration, in a
// random order, on one table, and reports each method's median ms/tx. On a
// shared machine whose load changes over seconds, this compares the methods
// under the same conditions, which BenchmarkWritePath, timing one method
// after another, cannot. Give it time: -benchtime=20s.
func BenchmarkWritePathInterleaved(b *testing.B) {
	for _, n := range wpSizes {
		b.Run(fmt.Sprintf("rows=%d", n), func(b *testing.B) {
			w := wpSetup(b, n)
			all := wpMethods()
			methods := make([]wpMethod, len(all))
			for i, m := range all {
				methods[i] = m.method(n)
			}
			times := make([][]time.Duration, len(all))
			for b.Loop() {
				for _, i := range w.r.Perm(len(all)) {
					if all[i].dups && n < 100 {
						continue
					}
					w.next(b, all[i].dups)
					start := time.Now()
					w.write(b, methods[i])
					times[i] = append(times[i], time.Since(start))
				}
			}
			for i, m := range all {
				if len(times[i]) > 0 {
					b.ReportMetric(float64(wpMedian(times[i]))/1e6, m.name+"-ms/tx")
				}
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

func wpMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// wpBench is one case's table, connection and batch.
type wpBench struct {
	conn    *pgx.Conn
	r       *rand.Rand
	n       int
	bt      *wpBatch
	ids     *wpIDs
	prefill *wpBatch
	off     wpOffset
	skipped int // rows each write must skip as duplicates
}

// wpSetup creates a fresh table holding wpPrefill rows and a batch of n rows.
func wpSetup(b *testing.B, n int) *wpBench {
	ctx := context.Background()
	pool := wpPool(b)
	pc, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatalf("acquire: %v", err)
	}
	b.Cleanup(pc.Release)

	r := rand.New(rand.NewPCG(1, uint64(n)))
	users := make([][16]byte, 10000)
	for i := range users {
		users[i] = wpRandomID(r)
	}
	w := &wpBench{conn: pc.Conn(), r: r, n: n, ids: &wpIDs{r: r}}
	w.prefill = wpNewBatch(r, users, wpPrefill)
	if _, err := wpCopy(ctx, w.conn, w.prefill, &w.off); err != nil {
		b.Fatalf("prefill: %v", err)
	}
	if _, err := w.conn.Exec(ctx, "VACUUM ANALYZE notifications"); err != nil {
		b.Fatalf("vacuum: %v", err)
	}
	w.bt = wpNewBatch(r, users, n)
	return w
}

// next gives the batch fresh ids; with dups, every tenth row instead repeats
// a distinct stored id.
func (w *wpBench) next(b *testing.B, dups bool) {
	w.bt.ids = w.ids.take(b, w.n)
	w.skipped = 0
	if !dups {
		return
	}
	start := w.r.IntN(wpPrefill - (w.n+9)/10)
	for i, j := 0, start; i < w.n; i, j = i+10, j+1 {
		w.bt.ids[i] = w.prefill.ids[j]
		w.skipped++
	}
}

// write runs one transaction and checks that exactly the duplicates were
// skipped.
func (w *wpBench) write(b *testing.B, method wpMethod) {
	inserted, err := method(context.Background(), w.conn, w.bt, &w.off)
	if err != nil {
		b.Fatalf("write %d rows: %v", w.n, err)
	}
	if skipped := w.n - int(inserted); skipped != w.skipped {
		b.Fatalf("skipped %d rows, want %d", skipped, w.skipped)
	}
}

// BenchmarkWritePathEncode compares the cost for pgx v5 to encode one
// 10,000-element binary array parameter from different Go types, with no
// server involved: the choice of type for each unnest argument.
func BenchmarkWritePathEncode(b *testing.B) {
	const n = 10000
	r := rand.New(rand.NewPCG(2, 2))
	users := [][16]byte{wpRandomID(r)}
	bt := wpNewBatch(r, users, n)

	googleUUIDs := make([]uuid.UUID, n)
	uuids := make([]pgtype.UUID, n)
	for i, id := range bt.ids {
		googleUUIDs[i] = id
		uuids[i] = pgtype.UUID{Bytes: id, Valid: true}
	}
	bodyBytes := make([][]byte, n)
	texts := make([]pgtype.Text, n)
	for i, s := range bt.bodies {
		bodyBytes[i] = []byte(s)
		texts[i] = pgtype.Text{String: s, Valid: true}
	}
	dataStrings := make([]string, n)
	dataPtrs := make([]*string, n)
	dataRaw := make([]json.RawMessage, n)
	for i, d := range bt.data {
		if d != nil {
			s := string(d)
			dataStrings[i], dataPtrs[i], dataRaw[i] = s, &s, d
		}
	}
	stamps := make([]pgtype.Timestamptz, n)
	for i, t := range bt.created {
		stamps[i] = pgtype.Timestamptz{Time: t, Valid: true}
	}

	cases := []struct {
		name  string
		oid   uint32
		value any
	}{
		{"col=uuid/type=[][16]byte", pgtype.UUIDArrayOID, bt.ids},
		{"col=uuid/type=[]uuid.UUID", pgtype.UUIDArrayOID, googleUUIDs},
		{"col=uuid/type=[]pgtype.UUID", pgtype.UUIDArrayOID, uuids},
		{"col=text/type=[]string", pgtype.TextArrayOID, bt.bodies},
		{"col=text/type=[][]byte", pgtype.TextArrayOID, bodyBytes},
		{"col=text/type=[]pgtype.Text", pgtype.TextArrayOID, texts},
		// Half NULL. []string cannot say NULL to jsonb[]; it would need text[]
		// and NULLIF(…, '')::jsonb on the server.
		{"col=jsonb/type=[][]byte", pgtype.JSONBArrayOID, bt.data},
		{"col=jsonb/type=[]json.RawMessage", pgtype.JSONBArrayOID, dataRaw},
		{"col=jsonb/type=[]*string", pgtype.JSONBArrayOID, dataPtrs},
		{"col=jsonb/type=[]string-as-text[]", pgtype.TextArrayOID, dataStrings},
		{"col=timestamptz/type=[]time.Time", pgtype.TimestamptzArrayOID, bt.created},
		{"col=timestamptz/type=[]pgtype.Timestamptz", pgtype.TimestamptzArrayOID, stamps},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			m := pgtype.NewMap()
			buf, err := m.Encode(c.oid, pgtype.BinaryFormatCode, c.value, nil)
			if err != nil {
				b.Fatalf("encode %T: %.200v", c.value, err)
			}
			b.ReportAllocs()
			for b.Loop() {
				buf, err = m.Encode(c.oid, pgtype.BinaryFormatCode, c.value, buf[:0])
				if err != nil {
					b.Fatalf("encode %T: %.200v", c.value, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/elem")
		})
	}
}
