// Package postgres is notifyd's PostgreSQL store: the schema and its
// migrations, the consumer positions, and the bulk write path that commits
// rows and positions in one transaction.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/retry"
)

// DefaultMaxConns is the pool size when Config.MaxConns is 0: room for
// the default writers (pipeline.DefaultWriters), each with a connection,
// and for positions, readiness and the dead-letter relay beside them.
const DefaultMaxConns = 6

// Config configures a Store. The zero value uses the local server as libpq
// finds it, with user postgres when none is given.
type Config struct {
	// URL is a libpq connection string or URL. Empty means the PG*
	// environment variables and libpq's defaults.
	URL string
	// MaxConns bounds the pool; 0 means DefaultMaxConns.
	MaxConns int32
	// PartitionInterval is the time range of one partition of
	// notifications; 0 means DefaultPartitionInterval. At least an hour,
	// in whole minutes.
	PartitionInterval time.Duration
	// Retention is how long rows are kept: partitions older than it are
	// dropped and messages older than it skipped. 0 keeps everything.
	Retention time.Duration
	// DedupeWindow is how far apart two created_at of one id may be and
	// still be found a duplicate; 0 means DefaultDedupeWindow.
	DedupeWindow time.Duration
	// Now is the clock of partition maintenance and retention; nil means
	// time.Now.
	Now func() time.Time
	// Params are run-time parameters set on every connection of the pool
	// (the inbox API's pool sets api.SessionParams), unless the URL sets
	// the same parameter itself.
	Params map[string]string
}

// Defaults of Config.
const (
	DefaultPartitionInterval = 24 * time.Hour
	DefaultDedupeWindow      = 168 * time.Hour
)

func (c Config) partitionInterval() time.Duration {
	if c.PartitionInterval == 0 {
		return DefaultPartitionInterval
	}
	return c.PartitionInterval
}

func (c Config) dedupeWindow() time.Duration {
	if c.DedupeWindow == 0 {
		return DefaultDedupeWindow
	}
	return c.DedupeWindow
}

// Validate reports every setting that cannot work, naming it by its
// command-line flag.
func (c Config) Validate() error {
	var errs []error
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("--db-max-conns: must be at least 1, got %d", c.MaxConns))
	}
	errs = append(errs, c.validateStorage()...)
	if _, err := c.poolConfig(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c Config) poolConfig() (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(c.URL)
	if err != nil {
		return nil, fmt.Errorf("--database-url: %s (want postgres://user@host:port/db or key=value pairs)", parseCause(err))
	}
	if c.URL == "" && os.Getenv("PGUSER") == "" {
		pc.ConnConfig.User = "postgres"
		if os.Getenv("PGDATABASE") == "" {
			pc.ConnConfig.Database = "postgres"
		}
	}
	pc.MaxConns = c.MaxConns
	if pc.MaxConns == 0 {
		pc.MaxConns = DefaultMaxConns
	}
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	for k, v := range c.Params {
		if _, set := pc.ConnConfig.RuntimeParams[k]; !set {
			pc.ConnConfig.RuntimeParams[k] = v
		}
	}
	return pc, nil
}

// parseCause is why pgx could not parse a connection string, without the
// string itself: pgx's message quotes it with the password masked only on a
// best-effort basis, and a URL error inside it quotes it unmasked.
func parseCause(err error) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return "cannot be parsed"
	}
	// pgx writes "cannot parse `<masked string>`: <reason>[ (<cause>)]".
	msg := pe.Error()
	if i := strings.Index(msg, "`: "); i >= 0 {
		msg = msg[i+len("`: "):]
	} else {
		return "cannot be parsed"
	}
	if inner := pe.Unwrap(); inner != nil {
		cause := inner.Error()
		var ue *url.Error
		if errors.As(inner, &ue) {
			cause = ue.Err.Error()
		}
		msg = strings.Replace(msg, "("+inner.Error()+")", "("+cause+")", 1)
	}
	return "cannot be parsed: " + msg
}

// String names the database the Config connects to, without credentials,
// for logs; "" when the URL cannot be parsed.
func (c Config) String() string {
	pc, err := c.poolConfig()
	if err != nil {
		return ""
	}
	return describe(pc)
}

// describe names pc's database as libpq key=value pairs, without the
// password: the string goes to logs.
func describe(pc *pgxpool.Config) string {
	cc := pc.ConnConfig
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s", cc.Host, cc.Port, cc.Database, cc.User)
}

// Store writes notifications and consumer positions to PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
	desc string
	cfg  Config
	now  func() time.Time
	// smallTable is the size below which migration 0002 indexes the
	// schema-1 table without CONCURRENTLY (smallTableBytes; tests lower it).
	smallTable int64
	// upsertOnly counts down the writes that skip the COPY path after a
	// batch held a duplicate id, so that a stream full of duplicates does
	// not pay for a refused COPY on every write.
	upsertOnly atomic.Int32
	// probeParts is the partitions the dedupe window's probe names, as it
	// last read them; replaced whole when the probe finds they changed
	// (probeWindow). Writers read it concurrently.
	probeParts atomic.Pointer[probeParts]
	// probeViaParent is set once the role proved unable to read the
	// partitions by name: the probe then asks the table (parentProbeSQL).
	probeViaParent atomic.Bool
	// filters are the probe's filters of closed partitions by oid, a map
	// never changed once stored; filtersMu serialises replacing it, and
	// building lets one filter be built at a time (filter.go).
	filters      atomic.Pointer[map[uint32]*partFilter]
	filtersMu    sync.Mutex
	building     atomic.Bool
	filterBudget int // bytes (filterBudget; tests lower it)
}

// Open connects a pool and checks that the server answers.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := errors.Join(cfg.validateStorage()...); err != nil {
		return nil, err
	}
	pc, err := cfg.poolConfig()
	if err != nil {
		return nil, err
	}
	desc := describe(pc)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", desc, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", desc, err)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Store{pool: pool, desc: desc, cfg: cfg, now: now, smallTable: smallTableBytes, filterBudget: filterBudget}, nil
}

// String names the database without credentials, for logs.
func (s *Store) String() string { return s.desc }

// Pool is the connection pool, for metrics and health checks.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// NoOffset is the stored position of a partition none of whose records has
// been written yet.
const NoOffset int64 = -1

// Claim makes sure each partition has a position row and returns the stored
// positions: the offset of the next record to read, or NoOffset.
func (s *Store) Claim(ctx context.Context, group, topic string, partitions []int32) (map[int32]int64, error) {
	rows, err := s.pool.Query(ctx, `
		WITH ins AS (
			INSERT INTO notifyd_offsets (consumer_group, topic, partition, next_offset)
			SELECT $1, $2, p, -1 FROM unnest($3::int[]) AS p
			ON CONFLICT DO NOTHING
		)
		SELECT partition, next_offset FROM notifyd_offsets
		WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)`,
		group, topic, partitions)
	if err != nil {
		return nil, fmt.Errorf("load offsets of %s: %w", topic, err)
	}
	out := make(map[int32]int64, len(partitions))
	var p int32
	var off int64
	_, err = pgx.ForEachRow(rows, []any{&p, &off}, func() error {
		out[p] = off
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load offsets of %s: %w", topic, err)
	}
	for _, p := range partitions {
		if _, ok := out[p]; !ok {
			// The row was inserted by this statement's CTE, which the
			// outer SELECT's snapshot cannot see.
			out[p] = NoOffset
		}
	}
	return out, nil
}

// Range is the part of one partition that a batch covers: the stored
// position it expects (From) and the position it stores (To).
type Range struct {
	Partition int32
	From, To  int64
}

// Batch is one transaction's worth of work.
type Batch struct {
	Group, Topic string
	Ranges       []Range
	Rows         []notification.Notification
	// Dead are the batch's dead letters, recorded in notifyd_dead_letters
	// for DLQTopic in the same transaction.
	Dead     []DeadLetter
	DLQTopic string
	// Refused builds the dead letter of Rows[i], which the database refused
	// for its data with err; it is recorded beside Dead. Nil means that a
	// refused row fails the write.
	Refused func(i int, err error) DeadLetter

	// token identifies this batch's transactions in the offset rows they
	// move (writer_token); every attempt to write the batch uses the same
	// one. If an attempt's COMMIT succeeded but its acknowledgement was
	// lost, the next attempt finds the token instead of its From position
	// and knows the batch is written: no false fencing.
	token uuid.UUID
	// last is the result of the latest attempt that reached COMMIT.
	last *Result
	// expired and windowed are the rows the screen took out before the
	// write: too old for the retention, or already stored within the
	// dedupe window. They count in the result.
	expired, windowed int
}

// Rejected is a row the database refused for its data.
type Rejected struct {
	Index int   // into Batch.Rows
	Err   error // the database's reason
}

// Result is what a committed write did.
type Result struct {
	Inserted   int // rows stored
	Duplicates int // rows skipped because their id was already stored
	Rejected   int // rows refused by the database, recorded as dead letters
	Statements int // insert statements run, including isolation of bad rows
	// Expired counts valid rows not stored because they were older than the
	// retention: neither rows nor dead letters.
	Expired int
	// Probe is how long the dedupe window's probe took, before the
	// transaction: 0 when the batch had no row sent with an id and without
	// a created_at.
	Probe time.Duration
}

// FencedError reports partitions whose stored position was not the one the
// batch expected: another writer has moved them since they were loaded.
// Nothing was written.
type FencedError struct {
	Partitions []int32
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("partitions %v moved by another writer since they were loaded", e.Partitions)
}

// Write commits the batch's rows, its dead letters and its ranges'
// positions in one transaction. Rows whose id is already stored are
// skipped. If the database rejects rows for their data, Write finds them
// inside the transaction, records them as dead letters (Batch.Refused) and
// commits the rest. A range whose stored position is not its From fails the
// whole write with *FencedError, and nothing is written.
func (s *Store) Write(ctx context.Context, b *Batch) (Result, error) {
	sc, err := s.screen(ctx, b.Rows)
	if err != nil {
		return Result{}, err
	}
	if b.token == uuid.Nil {
		b.token = uuid.New()
	}
	wb := b
	if sc.orig != nil {
		// The rest of the write sees only the rows to insert; refused rows
		// are reported by their index in the caller's batch.
		wb = &Batch{Group: b.Group, Topic: b.Topic, Ranges: b.Ranges, Rows: sc.rows,
			Dead: b.Dead, DLQTopic: b.DLQTopic, token: b.token, last: b.last}
		if b.Refused != nil {
			wb.Refused = func(i int, err error) DeadLetter { return b.Refused(sc.orig[i], err) }
		}
	}
	wb.expired, wb.windowed = sc.expired, sc.windowed
	res, err := s.writeRows(ctx, wb)
	b.last = wb.last // what an attempt that reached COMMIT did, for the next attempt
	res.Probe = sc.probe
	return res, err
}

func (s *Store) writeRows(ctx context.Context, b *Batch) (Result, error) {
	m := modeUpsert
	if len(b.Rows) >= copyMinRows && s.upsertOnly.Load() <= 0 {
		m = modeCopy
	} else if s.upsertOnly.Load() > 0 {
		s.upsertOnly.Add(-1)
	}
	res, err := s.write(ctx, b, m)
	wasted := 0
	if err != nil && m == modeCopy && isUniqueViolation(err) {
		// The batch holds an id already stored (or twice): COPY cannot
		// skip it, the upsert can.
		s.upsertOnly.Store(upsertAfterDuplicate)
		wasted++
		res, err = s.write(ctx, b, modeUpsert)
	}
	if err != nil && retry.IsDataError(err) {
		// A row the database refuses aborts the transaction; run it again,
		// this time isolating the bad rows, in one round trip. The common
		// path pays for no subtransactions.
		wasted++
		res, err = s.write(ctx, b, modeIsolate)
	}
	res.Statements += wasted
	return res, err
}

// mode is how a write inserts its rows.
type mode int

const (
	modeCopy    mode = iota // binary COPY into the table: fastest, refuses any duplicate id
	modeUpsert              // one INSERT … ON CONFLICT (id) DO NOTHING of column arrays
	modeIsolate             // each row in a subtransaction of its own, on the server (insertEach)
)

// copyMinRows is the batch size from which writes try COPY first, and
// upsertAfterDuplicate how many writes skip it after a duplicate id.
const (
	copyMinRows          = 100
	upsertAfterDuplicate = 16
)

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func (s *Store) write(ctx context.Context, b *Batch, m mode) (res Result, err error) {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("acquire a connection: %w", err)
	}
	defer pc.Release()
	conn := pc.Conn()
	defer func() {
		// A transaction left open (a failed write) is rolled back; if that
		// fails too, the pool discards the connection on Release.
		if conn.PgConn().TxStatus() != 'I' {
			_, _ = conn.Exec(context.WithoutCancel(ctx), "rollback")
		}
	}()
	if b.token == uuid.Nil {
		b.token = uuid.New()
	}
	// One round trip: BEGIN, the advance and, for the upsert, the insert
	// are sent together. COMMIT is sent only once the advance is known to
	// have moved every partition: a fenced write's insert is rolled back.
	parts, froms, tos := b.ranges()
	pipe := &pgx.Batch{}
	pipe.Queue("begin")
	pipe.Queue(advanceSQL, b.Group, b.Topic, parts, froms, tos, b.token)
	pipelined := m == modeUpsert && len(b.Rows) > 0
	if pipelined {
		pipe.Queue(insertSQL, columnArrays(b.Rows)...)
	}
	br := conn.SendBatch(ctx, pipe)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		// The server answers the pipeline's statements together: a wait
		// for BEGIN's answer is the advance waiting (for an offset row's
		// lock, say), so the error names both.
		return res, fmt.Errorf("begin and advance offsets: %w", err)
	}
	moved, err := pgx.CollectRows(mustQuery(br), pgx.RowTo[int32])
	if err != nil {
		_ = br.Close()
		return res, fmt.Errorf("advance offsets: %w", err)
	}
	var insertErr error
	if pipelined {
		tag, err := br.Exec()
		res.Statements++
		res.Inserted, insertErr = int(tag.RowsAffected()), err
	}
	if err := br.Close(); err != nil && insertErr == nil {
		insertErr = err
	}
	if len(moved) < len(parts) {
		if _, err := conn.Exec(ctx, "rollback"); err != nil {
			return res, fmt.Errorf("rollback: %w", err)
		}
		// Nothing of this attempt was written.
		err := s.notMoved(ctx, conn, b, parts, tos, moved)
		if errors.Is(err, errWritten) {
			return *b.last, nil
		}
		return Result{}, err
	}
	var bad []Rejected
	switch {
	case pipelined:
		err = insertErr
	case insertErr != nil:
		return res, fmt.Errorf("advance offsets: %w", insertErr)
	case m == modeIsolate:
		// The whole batch is known to fail: the write before this one said so.
		bad, err = insertEach(ctx, conn, b.Rows, &res)
	case m == modeCopy:
		var n int64
		n, err = copyRows(ctx, conn.PgConn(), b.Rows)
		res.Statements++
		res.Inserted = int(n)
	}
	if err != nil {
		return res, fmt.Errorf("insert %d rows: %w", len(b.Rows), err)
	}
	dead := b.Dead
	if len(bad) > 0 {
		if b.Refused == nil {
			return res, fmt.Errorf("insert %d rows: %d refused: %w", len(b.Rows), len(bad), bad[0].Err)
		}
		dead = append(slices.Clip(dead), make([]DeadLetter, 0, len(bad))...)
		for _, r := range bad {
			dead = append(dead, b.Refused(r.Index, r.Err))
		}
		res.Rejected = len(bad)
	}
	if err := insertDeadLetters(ctx, conn, b.Group, b.DLQTopic, dead); err != nil {
		return res, err
	}
	res.Duplicates = len(b.Rows) - res.Rejected - res.Inserted + b.windowed
	res.Expired = b.expired
	last := res
	b.last = &last
	tag, err := conn.Exec(ctx, "commit")
	if err != nil {
		return res, fmt.Errorf("commit: %w", err)
	}
	if tag.String() != "COMMIT" {
		return res, fmt.Errorf("commit: %w", pgx.ErrTxCommitRollback)
	}
	return res, nil
}

// mustQuery is the next result of br as rows; an error is reported by the
// rows themselves.
func mustQuery(br pgx.BatchResults) pgx.Rows {
	rows, _ := br.Query()
	return rows
}

// errWritten says that an earlier attempt of the batch committed.
var errWritten = errors.New("batch already written")

// advanceSQL moves the batch's partitions from From to To, taking their
// row locks in partition order (so that two writers sharing partitions
// never wait on each other in a cycle): a concurrent writer of the same
// partition waits and then finds the position moved. It writes the batch's
// token into the rows, and returns the partitions it moved.
const advanceSQL = `
		WITH locked AS MATERIALIZED (
			SELECT partition FROM notifyd_offsets
			WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
			ORDER BY partition FOR UPDATE
		)
		UPDATE notifyd_offsets o SET next_offset = v.to_off, updated_at = now(), writer_token = $6
		FROM unnest($3::int[], $4::bigint[], $5::bigint[]) AS v(p, from_off, to_off), locked l
		WHERE l.partition = v.p AND o.consumer_group = $1 AND o.topic = $2 AND o.partition = v.p AND o.next_offset = v.from_off
		RETURNING o.partition`

// ranges are the batch's ranges as the column arrays of advanceSQL.
func (b *Batch) ranges() (parts []int32, froms, tos []int64) {
	parts = make([]int32, len(b.Ranges))
	froms = make([]int64, len(b.Ranges))
	tos = make([]int64, len(b.Ranges))
	for i, r := range b.Ranges {
		parts[i], froms[i], tos[i] = r.Partition, r.From, r.To
	}
	return parts, froms, tos
}

// notMoved explains an advance that did not move every partition of the
// batch (moved are the ones it did; its transaction is rolled back). A
// transaction moves all its partitions or none: if every one is at To with
// the batch's token, an earlier attempt committed, and it returns
// errWritten. Otherwise another writer moved them: *FencedError.
func (s *Store) notMoved(ctx context.Context, conn *pgx.Conn, b *Batch, parts []int32, tos []int64, moved []int32) error {
	if len(moved) == 0 && b.last != nil {
		var ours int
		if err := conn.QueryRow(ctx, `
			SELECT count(*) FROM notifyd_offsets o, unnest($3::int[], $4::bigint[]) AS v(p, to_off)
			WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = v.p AND o.next_offset = v.to_off AND o.writer_token = $5`,
			b.Group, b.Topic, parts, tos, b.token).Scan(&ours); err != nil {
			return fmt.Errorf("advance offsets: %w", err)
		}
		if ours == len(parts) {
			return errWritten
		}
	}
	ok := make(map[int32]bool, len(moved))
	for _, p := range moved {
		ok[p] = true
	}
	fe := &FencedError{}
	for _, p := range parts {
		if !ok[p] {
			fe.Partitions = append(fe.Partitions, p)
		}
	}
	return fe
}
