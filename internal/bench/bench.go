// Package bench is notifyd's end-to-end benchmark: in one run on one machine
// it measures the database's raw COPY rate for the benchmark's rows (the
// physical limit of the sink), the drain rate and peak memory of a real
// `notifyd run` process, and end-to-end latency at a steady offered load.
package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/broker"
	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/loadgen"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pipeline"
	"github.com/notifyd/notifyd/internal/postgres"
)

// Config configures a benchmark run.
type Config struct {
	Messages    int           // preloaded messages drained end to end; 0 means 500,000
	Rate        int           // offered load of the latency phase, msg/s; 0 means 1,000
	Duration    time.Duration // length of the latency phase; 0 means 10 s
	Brokers     []string      // empty: an embedded broker
	DatabaseURL string        // empty: the local server
	Executable  string        // the notifyd binary run for the drain phase
	// KafkaOpts are the clients' connection options (TLS, SASL) for
	// --brokers; ChildArgs and ChildEnv give the same to the drain's
	// `notifyd run`.
	KafkaOpts []kgo.Opt
	ChildArgs []string
	ChildEnv  []string
	Log       *slog.Logger
	// History is how many rows of history (spread over the HistorySpan
	// before now, in partitions of PartitionInterval) are loaded after the empty-table
	// drain, before a second drain of Messages new messages; 0 skips it.
	History int
	// PartitionInterval is the partition interval of the benchmark's table
	// and of its drains' notifyd run; 0 means notifyd's default.
	PartitionInterval time.Duration
}

// HistorySpan is how far back the history of Config.History reaches.
const HistorySpan = 8 * 7 * 24 * time.Hour

// Quantiles are latency percentiles in milliseconds.
type Quantiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// Result is the benchmark's output (SPEC section 5).
type Result struct {
	Messages            int       `json:"messages"`
	Seconds             float64   `json:"seconds"`
	MsgsPerSec          float64   `json:"msgs_per_sec"`
	CopyLimitRowsPerSec float64   `json:"copy_limit_rows_per_sec"`
	RatioToCopyLimit    float64   `json:"ratio_to_copy_limit"`
	E2ELatencyMs        Quantiles `json:"e2e_latency_ms"`
	FlushMs             Quantiles `json:"flush_ms"`
	PeakRSSMB           float64   `json:"peak_rss_mb"`
	// CPUMicrosPerMsg is the user + system CPU time of the drain's
	// `notifyd run`, over its whole life (start, drain, shutdown), per
	// message drained.
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`

	LatencyOfferedRate int       `json:"latency_offered_msgs_per_sec"`
	LatencyMessages    int       `json:"latency_messages"`
	SteadyFlushMs      Quantiles `json:"steady_flush_ms"`
	DrainBatches       float64   `json:"drain_batches"`
	DrainMeanBatchSize float64   `json:"drain_mean_batch_size"`
	// DedupeProbeShare is the drain's time in the dedupe window's probe
	// over its time in writes (notifyd_dedupe_probe_duration_seconds and
	// notifyd_flush_duration_seconds of the child, summed).
	DedupeProbeShare float64 `json:"dedupe_probe_share"`

	// With Config.History: the drain into the table holding the history,
	// and "a user's latest 20" (postgres.LatestQuery) read from it.
	HistoryRows           int     `json:"history_rows,omitempty"`
	HistoryLoadRowsPerSec float64 `json:"history_load_rows_per_sec,omitempty"`
	HistoryMsgsPerSec     float64 `json:"history_msgs_per_sec,omitempty"`
	// EmptyAfterMsgsPerSec is a third drain, into the emptied table after
	// the drain with history; HistoryRatioToEmpty is HistoryMsgsPerSec to
	// the mean of it and MsgsPerSec (the empty-table drains before and
	// after).
	EmptyAfterMsgsPerSec    float64    `json:"empty_after_msgs_per_sec,omitempty"`
	HistoryRatioToEmpty     float64    `json:"history_ratio_to_empty,omitempty"`
	HistoryRatioToCopyLimit float64    `json:"history_ratio_to_copy_limit,omitempty"`
	HistoryFlushMs          *Quantiles `json:"history_flush_ms,omitempty"`
	// HistoryCPUMicrosPerMsg is CPUMicrosPerMsg of the second drain: the
	// measure of the two drains that other work on the machine disturbs
	// least.
	HistoryCPUMicrosPerMsg float64 `json:"history_cpu_us_per_msg,omitempty"`
	// HistoryDedupeProbeShare is DedupeProbeShare of the second drain.
	HistoryDedupeProbeShare float64    `json:"history_dedupe_probe_share,omitempty"`
	HistoryPartitions       int        `json:"history_partitions,omitempty"`
	ReadLatest20Ms          *Quantiles `json:"read_latest20_ms,omitempty"`
	ReadPlan                []string   `json:"read_plan,omitempty"` // EXPLAIN ANALYZE of one read, as a prepared statement
	// ReadPlanCache is "generic" when the server runs the prepared read's
	// one generic plan, "custom" when it plans every execution.
	ReadPlanCache string `json:"read_plan_cache,omitempty"`
	CPUs          int    `json:"cpus"`
	GoVersion     string `json:"go_version"`
	Date          string `json:"date"`
}

func (c Config) withDefaults() Config {
	if c.Messages == 0 {
		c.Messages = 500_000
	}
	if c.Rate == 0 {
		c.Rate = 1000
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

// Run runs the benchmark.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	log := cfg.Log
	res := &Result{Messages: cfg.Messages, CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Date: time.Now().UTC().Format(time.DateOnly), LatencyOfferedRate: cfg.Rate}

	// A schema of its own keeps the benchmark's rows out of the real table.
	suffix := randHex()
	schema := "notifyd_bench_" + suffix
	// The same connection defaults as notifyd run (the local server, user
	// postgres, when no URL is given).
	admin, err := postgres.Open(ctx, postgres.Config{URL: cfg.DatabaseURL, MaxConns: 1})
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	if _, err := admin.Pool().Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return nil, fmt.Errorf("create schema %s: %w", schema, err)
	}
	defer admin.Pool().Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+schema+" CASCADE") //nolint:errcheck // best effort
	url := withSearchPath(admin.Pool().Config().ConnConfig, schema)
	var span time.Duration
	if cfg.History > 0 {
		span = HistorySpan
	}
	store, err := openWithHistory(ctx, url, span, cfg.PartitionInterval, 0)
	if err != nil {
		return nil, err
	}
	defer store.Close()

	brokers := cfg.Brokers
	if len(brokers) == 0 {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3))
		if err != nil {
			return nil, fmt.Errorf("start embedded broker: %w", err)
		}
		defer c.Close()
		brokers = c.ListenAddrs()
	}
	drainTopic, latTopic := "notifyd-bench-"+suffix, "notifyd-bench-latency-"+suffix
	cl, err := kgo.NewClient(append(cfg.KafkaOpts, kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond),
		kgo.MaxBufferedRecords(100_000))...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	inputs := []string{drainTopic, latTopic}
	if cfg.History > 0 {
		inputs = append(inputs, drainTopic+"-history", drainTopic+"-history-empty")
	}
	// The drains' notifyd run creates each dead-letter topic, sized for the
	// input's largest letters, as it does in service.
	if err := broker.EnsureTopics(ctx, adm, 3, inputs...); err != nil {
		return nil, err
	}
	if len(cfg.Brokers) > 0 {
		topics := slices.Clone(inputs)
		for _, t := range inputs {
			topics = append(topics, dlq.DefaultTopic(t))
		}
		defer adm.DeleteTopics(context.WithoutCancel(ctx), topics...) //nolint:errcheck // best effort
	}

	log.Info("measuring the COPY limit", "rows", cfg.Messages)
	res.CopyLimitRowsPerSec, err = copyLimit(ctx, store, cfg.Messages)
	if err != nil {
		return nil, fmt.Errorf("copy limit: %w", err)
	}

	log.Info("preloading", "messages", cfg.Messages, "topic", drainTopic)
	if err := preload(ctx, cl, drainTopic, 1, cfg.Messages); err != nil {
		return nil, fmt.Errorf("preload: %w", err)
	}

	log.Info("draining with notifyd run", "executable", cfg.Executable)
	checkpoint(ctx, store)
	d, err := drain(ctx, cfg, brokers, url, drainTopic, store)
	if err != nil {
		return nil, fmt.Errorf("drain: %w", err)
	}
	res.Seconds, res.PeakRSSMB, res.FlushMs, res.DrainBatches, res.DrainMeanBatchSize = d.seconds, d.peakRSSMB, d.flush, d.batches, d.meanBatch
	res.CPUMicrosPerMsg = d.cpuSeconds * 1e6 / float64(cfg.Messages)
	res.DedupeProbeShare = d.probeShare
	res.MsgsPerSec = float64(cfg.Messages) / res.Seconds
	res.RatioToCopyLimit = res.MsgsPerSec / res.CopyLimitRowsPerSec

	if cfg.History > 0 {
		if err := history(ctx, cfg, res, cl, brokers, url, drainTopic+"-history", store); err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
	}

	log.Info("measuring latency", "rate", cfg.Rate, "duration", cfg.Duration)
	// The latency phase's producer sends each record at once (no linger),
	// so that the measure is notifyd's, not the load generator's batching.
	lcl, err := kgo.NewClient(append(cfg.KafkaOpts, kgo.SeedBrokers(brokers...), kgo.ProducerLinger(0))...)
	if err != nil {
		return nil, err
	}
	defer lcl.Close()
	// The latency phase runs the pipeline in this process, so it makes the
	// dead-letter topic as notifyd run would.
	if err := dlq.EnsureTopic(ctx, adm, log, dlq.DefaultTopic(latTopic), latTopic, 3); err != nil {
		return nil, err
	}
	if err := latency(ctx, cfg, res, brokers, store, lcl, latTopic); err != nil {
		return nil, fmt.Errorf("latency: %w", err)
	}
	return res, nil
}

// withSearchPath makes a connection string for the benchmark's stores and
// the drain process that reaches the same server and database, with the
// benchmark's schema first on the path. A connection without TLS
// (sslmode=disable) stays without: left out, the default would encrypt.
func withSearchPath(cc *pgx.ConnConfig, schema string) string {
	q := func(v string) string { return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'" }
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s search_path=%s", q(cc.Host), cc.Port, q(cc.User), q(cc.Database), schema)
	if cc.Password != "" {
		s += " password=" + q(cc.Password)
	}
	if cc.TLSConfig == nil {
		s += " sslmode=disable"
	}
	return s
}

func randHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// rowsOf decodes the benchmark's messages as notifyd would.
func rowsOf(seed uint64, n int, fn func([]notification.Notification) error) error {
	gen := loadgen.New(seed, 0)
	const chunk = 10_000
	rows := make([]notification.Notification, 0, chunk)
	for i := 0; i < n; i++ {
		v, _ := gen.Next()
		r, err := notification.Decode(v, notification.Source{Topic: "copy", Offset: int64(i), Timestamp: time.Now()}, notification.Limits{})
		if err != nil {
			return err
		}
		rows = append(rows, r)
		if len(rows) == chunk || i == n-1 {
			if err := fn(rows); err != nil {
				return err
			}
			rows = rows[:0]
		}
	}
	return nil
}

// copyLimit is the rate of binary COPY of the benchmark's rows into a table
// shaped like notifications (same keys and index), 10,000 rows a
// transaction. Decoding is not timed.
func copyLimit(ctx context.Context, store *postgres.Store, n int) (float64, error) {
	pool := store.Pool()
	if _, err := pool.Exec(ctx, "CREATE TABLE copy_limit (LIKE notifications INCLUDING ALL)"); err != nil {
		return 0, err
	}
	cols := []string{"id", "user_id", "event_type", "title", "body", "data", "created_at"}
	var spent time.Duration
	err := rowsOf(1, n, func(rows []notification.Notification) error {
		src := make([][]any, len(rows))
		for i, r := range rows {
			var data any
			if r.Data != nil {
				data = string(r.Data)
			}
			// [16]byte, not uuid.UUID: pgx would encode the latter through
			// its string form, understating the limit.
			src[i] = []any{[16]byte(r.ID), [16]byte(r.UserID), r.EventType, r.Title, r.Body, data,
				pgtype.Timestamptz{Time: r.CreatedAt, Valid: true}}
		}
		start := time.Now()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"copy_limit"}, cols, pgx.CopyFromRows(src))
			return err
		})
		spent += time.Since(start)
		return err
	})
	if err != nil {
		return 0, err
	}
	return float64(n) / spent.Seconds(), nil
}

func preload(ctx context.Context, cl *kgo.Client, topic string, seed uint64, n int) error {
	gen := loadgen.New(seed, 0)
	var firstErr error
	for i := 0; i < n; i++ {
		v, _ := gen.Next()
		cl.Produce(ctx, &kgo.Record{Topic: topic, Value: v}, func(_ *kgo.Record, err error) {
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	return firstErr
}

// drained is what one drain measured.
type drained struct {
	seconds, peakRSSMB, batches, meanBatch float64
	cpuSeconds                             float64 // user + system of the child
	flush                                  Quantiles
	probeShare                             float64 // time in the dedupe probe over time in writes
}

// drain runs `notifyd run` over the preloaded topic with default settings
// and times it until every message is stored.
func drain(ctx context.Context, cfg Config, brokers []string, url, topic string, store *postgres.Store) (drained, error) {
	var d drained
	var before int
	if err := store.Pool().QueryRow(ctx, "SELECT count(*) FROM notifications").Scan(&before); err != nil {
		return d, err
	}
	metricsAddr, err := freeAddr()
	if err != nil {
		return d, err
	}
	args := append([]string{"run",
		"--brokers", strings.Join(brokers, ","), "--topic", topic, "--group", "bench",
		"--database-url", url, "--metrics-addr", metricsAddr, "--log-level", "warn"}, cfg.ChildArgs...)
	if cfg.PartitionInterval > 0 {
		args = append(args, "--partition-interval", cfg.PartitionInterval.String())
	}
	cmd := exec.CommandContext(ctx, cfg.Executable, args...)
	cmd.Env = append(os.Environ(), cfg.ChildEnv...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return d, err
	}
	// One goroutine waits for the child; everyone else learns that it
	// exited from exited being closed, and reads waitErr only after that.
	// (cmd.ProcessState is written by Wait and must not be read meanwhile.)
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	want := int64(cfg.Messages)
	for {
		var got int64
		err := store.Pool().QueryRow(ctx,
			"SELECT coalesce(sum(next_offset), 0) FROM notifyd_offsets WHERE topic = $1 AND next_offset > 0", topic).Scan(&got)
		if err != nil {
			return d, err
		}
		if got >= want {
			break
		}
		select {
		case <-exited:
			return d, fmt.Errorf("notifyd run exited early: %v", waitErr)
		case <-ctx.Done():
			return d, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	d.seconds = time.Since(start).Seconds()
	d.peakRSSMB, err = peakRSSMB(cmd.Process.Pid)
	if err != nil {
		return d, err
	}
	if err := scrapeFlush(ctx, metricsAddr, &d); err != nil {
		return d, err
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			return d, fmt.Errorf("notifyd run did not stop cleanly: %w", waitErr)
		}
		d.cpuSeconds = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	case <-time.After(60 * time.Second):
		return d, errors.New("notifyd run did not stop within 60s of SIGTERM")
	}
	var rows int
	if err := store.Pool().QueryRow(ctx, "SELECT count(*) FROM notifications").Scan(&rows); err != nil {
		return d, err
	}
	if rows-before != cfg.Messages {
		return d, fmt.Errorf("the drain added %d rows to the table, want %d", rows-before, cfg.Messages)
	}
	return d, nil
}

// checkpoint writes out the dirty pages before a drain, so that both drains
// start at the same point of the checkpoint cycle: the first change of a
// page after a checkpoint writes the whole page to the WAL, so where in the
// cycle a drain starts changes what it writes, and when the next
// checkpoint comes. Best effort: a role without the right skips it.
func checkpoint(ctx context.Context, store *postgres.Store) {
	_, _ = store.Pool().Exec(ctx, "CHECKPOINT")
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// peakRSSMB reads the process's peak resident set (VmHWM).
func peakRSSMB(pid int) (float64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// scrapeFlush reads the flush-duration histogram of the drain process and
// interpolates its quantiles.
func scrapeFlush(ctx context.Context, addr string, res *drained) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return err
	}
	if mf := mfs["notifyd_flush_duration_seconds"]; mf != nil && len(mf.GetMetric()) > 0 {
		h := mf.GetMetric()[0].GetHistogram()
		var bounds []float64
		var counts []uint64
		for _, b := range h.GetBucket() {
			bounds = append(bounds, b.GetUpperBound())
			counts = append(counts, b.GetCumulativeCount())
		}
		q := func(p float64) float64 { return 1000 * histQuantile(p, bounds, counts, h.GetSampleCount()) }
		res.flush = Quantiles{P50: q(0.50), P95: q(0.95), P99: q(0.99)}
		res.batches = float64(h.GetSampleCount())
		if mf := mfs["notifyd_dedupe_probe_duration_seconds"]; mf != nil && len(mf.GetMetric()) > 0 && h.GetSampleSum() > 0 {
			res.probeShare = mf.GetMetric()[0].GetHistogram().GetSampleSum() / h.GetSampleSum()
		}
	}
	if mf := mfs["notifyd_batch_size"]; mf != nil && len(mf.GetMetric()) > 0 {
		h := mf.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() > 0 {
			res.meanBatch = h.GetSampleSum() / float64(h.GetSampleCount())
		}
	}
	return nil
}

// histQuantile interpolates linearly inside the bucket holding quantile p,
// as Prometheus' histogram_quantile does.
func histQuantile(p float64, bounds []float64, cum []uint64, total uint64) float64 {
	if total == 0 {
		return math.NaN()
	}
	rank := p * float64(total)
	lower, below := 0.0, uint64(0)
	for i, ub := range bounds {
		if float64(cum[i]) >= rank {
			inBucket := cum[i] - below
			if inBucket == 0 {
				return ub
			}
			return lower + (ub-lower)*(rank-float64(below))/float64(inBucket)
		}
		lower, below = ub, cum[i]
	}
	return lower
}

// latency offers a steady load to an in-process pipeline with default
// settings and records, for every message, the time from its record
// timestamp to the commit of its row.
func latency(ctx context.Context, cfg Config, res *Result, brokers []string, store *postgres.Store, cl *kgo.Client, topic string) error {
	samples := make([]float64, 0, cfg.Rate*int(cfg.Duration/time.Second+1))
	var flushes []float64
	var total atomic.Int64
	p, err := pipeline.New(pipeline.Config{
		Topic: topic, Group: "bench-latency",
		OnCommit: func(stamps []time.Time, took time.Duration) {
			now := time.Now()
			for _, ts := range stamps {
				samples = append(samples, float64(now.Sub(ts).Microseconds())/1000)
			}
			flushes = append(flushes, float64(took.Microseconds())/1000)
			total.Add(int64(len(stamps)))
		},
	}, store, cfg.Log, nil, append(cfg.KafkaOpts, kgo.SeedBrokers(brokers...))...)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(pctx) }()

	// Let the group settle before offering load.
	deadline := time.Now().Add(15 * time.Second)
	for p.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			return errors.New("pipeline not ready within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	gen := loadgen.New(2, 0)
	interval := time.Second / time.Duration(cfg.Rate)
	n := int(cfg.Duration / interval)
	next := time.Now()
	for i := 0; i < n; i++ {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		v, _ := gen.Next()
		cl.Produce(ctx, &kgo.Record{Topic: topic, Value: v, Timestamp: time.Now()}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	deadline = time.Now().Add(30 * time.Second)
	for total.Load() < int64(n) {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d messages committed 30s after the load ended", total.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-runErr; err != nil {
		return err
	}
	res.LatencyMessages = n
	res.E2ELatencyMs = quantiles(samples)
	res.SteadyFlushMs = quantiles(flushes)
	return nil
}

func quantiles(xs []float64) Quantiles {
	if len(xs) == 0 {
		return Quantiles{}
	}
	slices.Sort(xs)
	at := func(p float64) float64 {
		return xs[min(len(xs)-1, int(math.Ceil(p*float64(len(xs))))-1)]
	}
	return Quantiles{P50: at(0.50), P95: at(0.95), P99: at(0.99)}
}
