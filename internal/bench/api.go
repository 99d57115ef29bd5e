package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/api"
	"github.com/notifyd/notifyd/internal/broker"
	"github.com/notifyd/notifyd/internal/loadgen"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/postgres"
)

// APIConfig configures the inbox API benchmark. Zero fields mean the
// defaults of issue 10's targets.
type APIConfig struct {
	DatabaseURL string        // empty: the local server
	Executable  string        // the notifyd binary: `serve` and `run` are run from it
	History     int           // rows loaded before anything is measured; 0 means 5,000,000
	Users       int           // recipients of the history; 0 means 10,000
	Rate        int           // feed and counts requests per second; 0 means 500
	Duration    time.Duration // length of each timed phase; 0 means 10 s
	Streams     int           // open streams; 0 means 1,000
	StreamRate  int           // rows per second written during the stream phase; 0 means 1,000
	Ingest      int           // messages of each ingest drain; 0 means 200,000
	MarkRate    int           // mark-read requests per second during the busy drain; 0 means 100
	// PartitionInterval is the partition interval of the API phase's table
	// (its history, and the ingest drains' notifyd run); 0 means notifyd's
	// default.
	PartitionInterval time.Duration
	Log               *slog.Logger
}

func (c APIConfig) withDefaults() APIConfig {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.History, 5_000_000)
	def(&c.Users, 10_000)
	def(&c.Rate, 500)
	def(&c.Streams, 1000)
	def(&c.StreamRate, 1000)
	def(&c.Ingest, 200_000)
	def(&c.MarkRate, 100)
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

// APIResult is what the inbox API benchmark measured.
type APIResult struct {
	HistoryRows      int       `json:"history_rows"`
	Users            int       `json:"users"`
	OfferedRate      int       `json:"feed_counts_offered_rps"`
	FeedMs           Quantiles `json:"feed_first_page_ms"`
	CountsMs         Quantiles `json:"counts_ms"`
	RequestErrors    int64     `json:"request_errors"`
	Streams          int       `json:"streams"`
	StreamRate       int       `json:"stream_rows_per_sec"`
	DeliveryMs       Quantiles `json:"stream_delivery_ms"`
	Delivered        int64     `json:"stream_events_delivered"`
	Undelivered      int64     `json:"stream_rows_undelivered"`
	IdleStreamKB     float64   `json:"memory_per_idle_stream_kb"`
	IdleStreamGoKB   float64   `json:"memory_per_idle_stream_go_kb"`
	IdleStreamGoGCKB float64   `json:"memory_per_idle_stream_go_kb_after_gc"`
	// IdleStreamSettledKB is the resident set per stream once the streams
	// have been idle for idleSettle: what opening them left behind has
	// been collected and its pages returned by then.
	IdleStreamSettledKB float64   `json:"memory_per_idle_stream_kb_settled"`
	IngestIdle          float64   `json:"ingest_msgs_per_sec_api_idle"`
	IngestBusy          float64   `json:"ingest_msgs_per_sec_api_busy"`
	IngestRatio         float64   `json:"ingest_ratio_api_busy_to_idle"`
	MarkRate            int       `json:"mark_read_offered_rps"`
	MarkMs              Quantiles `json:"mark_read_ms"`
	MarkRequestsDone    int64     `json:"mark_read_requests"`
	// Cost is the CPU time of one request of each kind, measured alone.
	Cost map[string]RequestCost `json:"cpu_ms_per_request"`
}

// RequestCost is the CPU time (user + system) one request cost, in ms:
// serve's, and the database server's (the sum over its processes, when
// they run on this machine; else absent), over costRequests requests sent
// at costRate a second with nothing else running.
type RequestCost struct {
	Serve    float64  `json:"serve"`
	Database *float64 `json:"database,omitempty"`
}

const (
	costRequests = 500
	costRate     = 100
)

// benchSecret signs the benchmark's tokens; it never leaves the run.
var benchSecret = []byte("notifyd-bench-" + randHex() + randHex())

// RunAPI measures the inbox API of a real `notifyd serve` over a history
// of rows: feed and counts latency under an open-loop load, stream
// delivery time with many streams open (commit to event), memory per idle
// stream, and the ingest rate of `notifyd run` with and without mark-read
// load. It works in a schema of its own and drops it.
func RunAPI(ctx context.Context, cfg APIConfig) (*APIResult, error) {
	cfg = cfg.withDefaults()
	log := cfg.Log
	res := &APIResult{HistoryRows: cfg.History, Users: cfg.Users, OfferedRate: cfg.Rate, Streams: cfg.Streams,
		StreamRate: cfg.StreamRate, MarkRate: cfg.MarkRate}
	schema := "notifyd_bench_api_" + randHex()
	adm, err := postgres.Open(ctx, postgres.Config{URL: cfg.DatabaseURL, MaxConns: 1})
	if err != nil {
		return nil, err
	}
	defer adm.Close()
	if _, err := adm.Pool().Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return nil, fmt.Errorf("create schema %s: %w", schema, err)
	}
	defer adm.Pool().Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+schema+" CASCADE") //nolint:errcheck // best effort
	url := withSearchPath(adm.Pool().Config().ConnConfig, schema)
	store, err := openWithHistory(ctx, url, apiHistorySpan, cfg.PartitionInterval, 8)
	if err != nil {
		return nil, err
	}
	defer store.Close()

	users := make([]uuid.UUID, cfg.Users)
	for i := range users {
		users[i] = uuid.NewSHA1(uuid.NameSpaceOID, []byte("notifyd-bench-user-"+strconv.Itoa(i)))
	}
	log.Info("loading history", "rows", cfg.History, "users", cfg.Users)
	if err := loadAPIHistory(ctx, store, users, cfg.History); err != nil {
		return nil, fmt.Errorf("load history: %w", err)
	}

	srv, err := startServe(ctx, cfg.Executable, url)
	if err != nil {
		return nil, err
	}
	defer srv.stop()

	log.Info("feed and counts under load", "rate", cfg.Rate, "duration", cfg.Duration)
	if err := feedLoad(ctx, cfg, res, srv, users); err != nil {
		return nil, err
	}

	log.Info("CPU per request", "requests", costRequests, "rate", costRate)
	if res.Cost, err = requestCosts(ctx, srv, store, users); err != nil {
		return nil, fmt.Errorf("cost per request: %w", err)
	}

	log.Info("streams", "streams", cfg.Streams, "rows_per_sec", cfg.StreamRate)
	if err := streamLoad(ctx, cfg, res, srv, store, users); err != nil {
		return nil, fmt.Errorf("streams: %w", err)
	}

	log.Info("ingest with the API idle, then busy", "messages", cfg.Ingest, "mark_read_rps", cfg.MarkRate)
	if err := ingestRatio(ctx, cfg, res, srv, url, store, users); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	return res, nil
}

// apiHistorySpan is how far back the history of APIConfig.History reaches.
const apiHistorySpan = 28 * 24 * time.Hour

// openWithHistory migrates the schema of url as a database that has run
// for span would be, with a partition for each interval of it (migrated
// with the clock set back, so that the fresh table's regular partitions
// start there; span 0 skips that; interval 0 is notifyd's default),
// maintains it to today and ahead, and opens it with a pool of maxConns
// (0: the default).
func openWithHistory(ctx context.Context, url string, span, interval time.Duration, maxConns int32) (*postgres.Store, error) {
	if span > 0 {
		back := time.Now().Add(-span - 24*time.Hour)
		early, err := postgres.Open(ctx, postgres.Config{URL: url, MaxConns: 1, Now: func() time.Time { return back }, PartitionInterval: interval})
		if err != nil {
			return nil, err
		}
		_, err = early.Migrate(ctx)
		early.Close()
		if err != nil {
			return nil, err
		}
	}
	store, err := postgres.Open(ctx, postgres.Config{URL: url, MaxConns: maxConns, PartitionInterval: interval})
	if err != nil {
		return nil, err
	}
	_, err = store.Migrate(ctx)
	if err == nil {
		_, err = store.Maintain(ctx)
	}
	if err != nil {
		store.Close()
		return nil, err
	}
	return store, nil
}

// loadAPIHistory COPYs n rows for users, created over apiHistorySpan, in
// transactions of 100,000 rows (each row's commit_xid is its
// transaction's, as for rows notifyd writes), then vacuums the table.
func loadAPIHistory(ctx context.Context, store *postgres.Store, users []uuid.UUID, n int) error {
	pool := store.Pool()
	cols := []string{"id", "user_id", "event_type", "title", "body", "data", "created_at"}
	rng := rand.New(rand.NewPCG(7, 7))
	now := time.Now()
	const chunk = 100_000
	for done := 0; done < n; done += chunk {
		m := min(chunk, n-done)
		src := make([][]any, m)
		for i := range src {
			at := now.Add(-time.Duration(rng.Int64N(int64(apiHistorySpan))))
			src[i] = []any{[16]byte(uuid.New()), [16]byte(users[rng.IntN(len(users))]), "bench.history",
				"Someone commented on your post", "A body of a typical length for an in-app notification.",
				`{"post": 1}`, pgtype.Timestamptz{Time: at, Valid: true}}
		}
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"notifications"}, cols, pgx.CopyFromRows(src)); err != nil {
			return err
		}
	}
	// A table that has held its history for a while has been vacuumed:
	// its visibility map lets counts read the indexes alone; and its pages
	// were written out long ago, not while the API is measured (the
	// checkpoint of the load's gigabytes stalled reads for seconds).
	if _, err := pool.Exec(ctx, "VACUUM (ANALYZE) notifications"); err != nil {
		return err
	}
	checkpoint(ctx, store)
	return nil
}

type serveProc struct {
	cmd           *exec.Cmd
	base, metrics string
	exited        chan error
	stopOnce      sync.Once
	client        *http.Client
	streamClient  *http.Client
	tokenCache    sync.Map
}

func startServe(ctx context.Context, exe, url string) (*serveProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	maddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "serve", "--api-addr", addr, "--metrics-addr", maddr,
		"--database-url", url, "--log-level", "warn", "--db-max-conns", "16", "--pprof")
	cmd.Env = append(os.Environ(), "NOTIFYD_API_SECRET="+string(benchSecret))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 0}
	p := &serveProc{cmd: cmd, base: "http://" + addr, metrics: maddr, exited: make(chan error, 1),
		client:       &http.Client{Transport: tr, Timeout: 10 * time.Second},
		streamClient: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4096}}}
	go func() { p.exited <- cmd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		select {
		case err := <-p.exited:
			return nil, fmt.Errorf("notifyd serve exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, errors.New("notifyd serve not ready within 30s")
		}
	}
}

func (p *serveProc) stop() {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
		}
	})
}

// goMemKB is the Go heap and stacks in use of the serve process, from its
// /metrics: less noisy than its resident set, which moves with the
// collector's pace. With gc, serve first runs a full collection (its
// /debug/pprof/heap?gc=1), so that the heap holds only live objects (and
// the free space of their spans): stable from run to run, and no more
// than what the process holds right after each of its own collections.
func (p *serveProc) goMemKB(ctx context.Context, gc bool) (float64, error) {
	if gc {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+p.metrics+"/debug/pprof/heap?gc=1", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("serve's /debug/pprof/heap: status %d", resp.StatusCode)
		}
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+p.metrics+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	found := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for _, name := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes "} {
			if v, ok := strings.CutPrefix(sc.Text(), name); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return 0, err
				}
				sum += f
				found++
			}
		}
	}
	if found != 2 {
		return 0, errors.New("serve's /metrics lacks go_memstats_heap_inuse_bytes or go_memstats_stack_inuse_bytes")
	}
	return sum / 1024, sc.Err()
}

// weigh is the serve process's resident set, then its Go heap and stacks
// as they are, then after a full collection (in that order: the forced
// collection does not shrink the other two).
func (p *serveProc) weigh(ctx context.Context) (rss, goNow, goGC float64, err error) {
	if rss, err = rssKB(p.cmd.Process.Pid); err != nil {
		return 0, 0, 0, err
	}
	if goNow, err = p.goMemKB(ctx, false); err != nil {
		return 0, 0, 0, err
	}
	goGC, err = p.goMemKB(ctx, true)
	return rss, goNow, goGC, err
}

func (p *serveProc) token(u uuid.UUID) string {
	if t, ok := p.tokenCache.Load(u); ok {
		return t.(string)
	}
	t, _ := api.Token(benchSecret, u, 2*time.Hour, time.Now())
	p.tokenCache.Store(u, t)
	return t
}

func (p *serveProc) do(ctx context.Context, user uuid.UUID, method, path, body string) error {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequestWithContext(ctx, method, p.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+p.token(user))
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: status %d", method, path, resp.StatusCode)
	}
	return nil
}

// openLoop calls f at rate per second for d, each call in its own
// goroutine, and returns each call's latency in ms measured from its
// scheduled start (so that a slow server is not hidden by a waiting
// client), and the number of failed calls.
func openLoop(ctx context.Context, rate int, d time.Duration, f func(ctx context.Context, i int) error) (lat []float64, failed int64) {
	n := int(d.Seconds() * float64(rate))
	lat = make([]float64, n)
	var wg sync.WaitGroup
	var fails atomic.Int64
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			select {
			case <-ctx.Done():
				wg.Wait() // the requests in flight write into lat
				return lat[:i], fails.Load()
			case <-time.After(w):
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A request cut off by the end of its phase is not the
			// server's failure.
			if err := f(ctx, i); err != nil && ctx.Err() == nil {
				fails.Add(1)
			}
			lat[i] = float64(time.Since(at).Microseconds()) / 1000
		}()
	}
	wg.Wait()
	return lat, fails.Load()
}

func feedLoad(ctx context.Context, cfg APIConfig, res *APIResult, srv *serveProc, users []uuid.UUID) error {
	call := func(ctx context.Context, i int) error {
		u := users[(i*7919)%len(users)]
		if i%2 == 0 {
			return srv.do(ctx, u, "GET", "/v1/inbox?limit=20", "")
		}
		return srv.do(ctx, u, "GET", "/v1/inbox/counts", "")
	}
	// Warm the pools and caches first; that second is not counted.
	openLoop(ctx, cfg.Rate, time.Second, call)
	lat, failed := openLoop(ctx, cfg.Rate, cfg.Duration, call)
	var feed, counts []float64
	for i, l := range lat {
		if i%2 == 0 {
			feed = append(feed, l)
		} else {
			counts = append(counts, l)
		}
	}
	res.FeedMs, res.CountsMs, res.RequestErrors = quantiles(feed), quantiles(counts), failed
	return ctx.Err()
}

// rssKB reads a process's resident set (VmRSS) in kB.
func rssKB(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// idleSettle is how long the streams stay idle before their settled
// resident set is weighed. Opening a thousand at once leaves each
// connection's net/http buffers and handler stack as garbage, and the Go
// runtime collects it and returns its pages to the system over the
// following seconds (a process that allocates nothing waits for the
// scavenger, or for a collection the next allocations start).
const idleSettle = 30 * time.Second

// weighAfter is how long after the streams opened they are first weighed.
const weighAfter = 3 * time.Second

func streamLoad(ctx context.Context, cfg APIConfig, res *APIResult, srv *serveProc, store *postgres.Store, users []uuid.UUID) error {
	n := min(cfg.Streams, len(users))
	time.Sleep(weighAfter) // settle after the feed load, as after opening the streams
	before, goBefore, goGCBefore, err := srv.weigh(ctx)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var lat []float64
	var delivered atomic.Int64
	var ready, done sync.WaitGroup
	var openErr atomic.Value
	for i := range n {
		ready.Add(1)
		done.Add(1)
		go func(u uuid.UUID) {
			defer done.Done()
			started := false
			defer func() {
				if !started {
					ready.Done()
				}
			}()
			req, _ := http.NewRequestWithContext(sctx, "GET", srv.base+"/v1/inbox/stream", nil)
			req.Header.Set("Authorization", "Bearer "+srv.token(u))
			resp, err := srv.streamClient.Do(req)
			if err != nil {
				openErr.Store(err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				openErr.Store(fmt.Errorf("stream: status %d", resp.StatusCode))
				return
			}
			_ = api.ReadEvents(resp.Body, func(ev api.Event) error {
				switch {
				case ev.Name == "counts" && !started:
					started = true
					ready.Done()
				case ev.Name == "notification":
					var n struct {
						Data struct {
							T int64 `json:"t"`
						} `json:"data"`
					}
					if json.Unmarshal([]byte(ev.Data), &n) == nil && n.Data.T > 0 {
						ms := float64(time.Now().UnixNano()-n.Data.T) / 1e6
						mu.Lock()
						lat = append(lat, ms)
						mu.Unlock()
						delivered.Add(1)
					}
				}
				return nil
			})
		}(users[i])
	}
	ready.Wait()
	if err, _ := openErr.Load().(error); err != nil {
		return err
	}
	time.Sleep(weighAfter) // let the server settle before weighing it
	after, goAfter, goGCAfter, err := srv.weigh(ctx)
	if err != nil {
		return err
	}
	res.IdleStreamKB = (after - before) / float64(n)
	res.IdleStreamGoKB = (goAfter - goBefore) / float64(n)
	res.IdleStreamGoGCKB = (goGCAfter - goGCBefore) / float64(n)
	time.Sleep(idleSettle - weighAfter)
	settled, err := rssKB(srv.cmd.Process.Pid)
	if err != nil {
		return err
	}
	res.IdleStreamSettledKB = (settled - before) / float64(n)

	// Rows for the streams' users, through the real write path, in
	// transactions every 10 ms.
	perTick := max(1, cfg.StreamRate/100)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var written int64
	rng := rand.New(rand.NewPCG(9, 9))
	for end := time.Now().Add(cfg.Duration); time.Now().Before(end); {
		<-tick.C
		rows := make([]notification.Notification, perTick)
		t := time.Now()
		for i := range rows {
			rows[i] = notification.Notification{ID: uuid.New(), UserID: users[rng.IntN(n)], EventType: "bench.stream",
				Title: "Live", Body: "delivered over the stream", Data: []byte(fmt.Sprintf(`{"t": %d}`, t.UnixNano())), CreatedAt: t}
		}
		if _, err := store.Write(ctx, &postgres.Batch{Group: "bench-stream", Topic: "bench-stream", Rows: rows}); err != nil {
			return err
		}
		written += int64(len(rows))
	}
	for deadline := time.Now().Add(10 * time.Second); delivered.Load() < written && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	done.Wait()
	res.Delivered, res.Undelivered = delivered.Load(), written-delivered.Load()
	mu.Lock()
	res.DeliveryMs = quantiles(lat)
	mu.Unlock()
	return nil
}

func ingestRatio(ctx context.Context, cfg APIConfig, res *APIResult, srv *serveProc, url string, store *postgres.Store, users []uuid.UUID) error {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3))
	if err != nil {
		return fmt.Errorf("start embedded broker: %w", err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(100_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	// notifyd run creates each dead-letter topic, sized for the input's
	// largest letters, as it does in service.
	topics := []string{"bench-idle-1", "bench-busy", "bench-idle-2"}
	if err := broker.EnsureTopics(ctx, kadm.NewClient(cl), 3, topics...); err != nil {
		return err
	}
	for i, t := range topics {
		if err := preloadSeed(ctx, cl, t, cfg.Ingest, uint64(100+i)); err != nil {
			return err
		}
	}
	mark, err := markRead(ctx, srv, store, users)
	if err != nil {
		return err
	}
	var rates [3]float64
	for i, t := range topics {
		if i != 1 {
			if rates[i], err = drainRate(ctx, cfg, brokers, url, t, store); err != nil {
				return err
			}
			continue
		}
		mctx, stop := context.WithCancel(ctx)
		var lat []float64
		var failed int64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat, failed = openLoop(mctx, cfg.MarkRate, time.Hour, mark)
		}()
		rates[i], err = drainRate(ctx, cfg, brokers, url, t, store)
		stop()
		wg.Wait()
		if err != nil {
			return err
		}
		res.MarkMs, res.MarkRequestsDone = quantiles(lat), int64(len(lat))
		res.RequestErrors += failed
	}
	res.IngestIdle = (rates[0] + rates[2]) / 2
	res.IngestBusy = rates[1]
	res.IngestRatio = res.IngestBusy / res.IngestIdle
	return nil
}

// markTargets is how many users markRead's requests go to, in turn.
const markTargets = 5000

// markRead returns the benchmark's mark-read request: call i marks read by
// id the ten newest rows of a user of the history (what a client shows on
// its first page, and marks as the user opens them), one call in ten all
// of the user's rows.
func markRead(ctx context.Context, srv *serveProc, store *postgres.Store, users []uuid.UUID) (func(ctx context.Context, i int) error, error) {
	type target struct {
		user uuid.UUID
		ids  []string
	}
	var targets []target
	rows, err := store.Pool().Query(ctx, `SELECT u, ARRAY(SELECT n.id::text FROM notifications n
		WHERE n.user_id = u ORDER BY n.created_at DESC LIMIT 10) FROM unnest($1::uuid[]) u`, users[:min(len(users), markTargets)])
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var t target
		if err := rows.Scan(&t.user, &t.ids); err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, errors.New("no history rows to mark")
	}
	return func(ctx context.Context, i int) error {
		t := targets[(i*7919)%len(targets)]
		body := `{"all": true}`
		if i%10 != 0 { // one in ten is "mark all"
			ids := t.ids[:min(10, len(t.ids))]
			b, _ := json.Marshal(map[string][]string{"ids": ids})
			body = string(b)
		}
		return srv.do(ctx, t.user, "POST", "/v1/inbox/read", body)
	}, nil
}

// requestCosts measures the CPU time of a feed's first page, a counts
// request and the benchmark's mark-read, each kind alone.
func requestCosts(ctx context.Context, srv *serveProc, store *postgres.Store, users []uuid.UUID) (map[string]RequestCost, error) {
	mark, err := markRead(ctx, srv, store, users)
	if err != nil {
		return nil, err
	}
	kinds := []struct {
		name string
		call func(ctx context.Context, i int) error
	}{
		{"feed", func(ctx context.Context, i int) error {
			return srv.do(ctx, users[(i*7919+13)%len(users)], "GET", "/v1/inbox?limit=20", "")
		}},
		{"counts", func(ctx context.Context, i int) error {
			return srv.do(ctx, users[(i*7919+17)%len(users)], "GET", "/v1/inbox/counts", "")
		}},
		{"mark_read", mark},
	}
	out := map[string]RequestCost{}
	for _, k := range kinds {
		serve0, err := cpuOf(srv.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		db0, dbOK := databaseCPU()
		_, failed := openLoop(ctx, costRate, costRequests*time.Second/costRate, k.call)
		if failed > 0 {
			return nil, fmt.Errorf("%s: %d of %d requests failed", k.name, failed, costRequests)
		}
		serve1, err := cpuOf(srv.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		c := RequestCost{Serve: float64(serve1-serve0) / float64(time.Millisecond) / costRequests}
		if db1, ok := databaseCPU(); ok && dbOK {
			d := float64(db1-db0) / float64(time.Millisecond) / costRequests
			c.Database = &d
		}
		out[k.name] = c
	}
	return out, ctx.Err()
}

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuOf is a process's CPU time (user + system) from /proc/<pid>/stat.
func cpuOf(pid int) (time.Duration, error) {
	own, _, err := procCPU(pid)
	return own, err
}

// procCPU is a process's own CPU time (user + system) and that of its
// children it has waited for, from /proc/<pid>/stat.
func procCPU(pid int) (own, reaped time.Duration, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, 0, errors.New("unreadable /proc stat")
	}
	var t [4]int64 // utime, stime, cutime, cstime
	for j := range t {
		if t[j], err = strconv.ParseInt(f[11+j], 10, 64); err != nil {
			return 0, 0, err
		}
	}
	return time.Duration(t[0]+t[1]) * clockTick, time.Duration(t[2]+t[3]) * clockTick, nil
}

// databaseCPU is the CPU time of every process named postgres on this
// machine, and whether there is any.
func databaseCPU() (time.Duration, bool) {
	procs, _ := os.ReadDir("/proc")
	var sum time.Duration
	found := false
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + p.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		// A backend that exits between two readings takes its CPU time
		// out of the processes' sum and into the postmaster's reaped
		// children's: the total of both only grows.
		if own, reaped, err := procCPU(pid); err == nil {
			sum, found = sum+own+reaped, true
		}
	}
	return sum, found
}

func preloadSeed(ctx context.Context, cl *kgo.Client, topic string, n int, seed uint64) error {
	gen := loadgen.New(seed, 0)
	var firstErr error
	var mu sync.Mutex
	for range n {
		v, _ := gen.Next()
		cl.Produce(ctx, &kgo.Record{Topic: topic, Value: v}, func(_ *kgo.Record, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	return firstErr
}

// drainRate runs `notifyd run` (no API) over a preloaded topic and returns
// its rate, from process start to the last stored offset.
func drainRate(ctx context.Context, cfg APIConfig, brokers []string, url, topic string, store *postgres.Store) (float64, error) {
	metricsAddr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	args := []string{"run", "--brokers", strings.Join(brokers, ","), "--topic", topic,
		"--group", "bench-" + topic, "--database-url", url, "--metrics-addr", metricsAddr, "--log-level", "warn"}
	if cfg.PartitionInterval > 0 {
		args = append(args, "--partition-interval", cfg.PartitionInterval.String())
	}
	cmd := exec.CommandContext(ctx, cfg.Executable, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	checkpoint(ctx, store) // each drain from the same point of the checkpoint cycle
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	for {
		var got int64
		if err := store.Pool().QueryRow(ctx, "SELECT coalesce(sum(next_offset), 0) FROM notifyd_offsets WHERE topic = $1 AND next_offset > 0", topic).Scan(&got); err != nil {
			return 0, err
		}
		if got >= int64(cfg.Ingest) {
			return float64(cfg.Ingest) / time.Since(start).Seconds(), nil
		}
		select {
		case err := <-exited:
			return 0, fmt.Errorf("notifyd run exited early: %v", err)
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
