package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"golang.org/x/sync/errgroup"

	"github.com/notifyd/notifyd/internal/admin"
	"github.com/notifyd/notifyd/internal/broker"
	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pipeline"
	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/retry"
)

type logFlags struct {
	LogLevel  string `name:"log-level" env:"NOTIFYD_LOG_LEVEL" default:"info" enum:"debug,info,warn,error" help:"Log level: debug, info, warn or error."`
	LogFormat string `name:"log-format" env:"NOTIFYD_LOG_FORMAT" default:"text" enum:"text,json" help:"Log format: text or json."`
}

func (f logFlags) logFormat() string { return f.LogFormat }

func (f logFlags) logger() *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(f.LogLevel))
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: durationsAsText}
	if f.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// durationsAsText writes durations as Go durations ("1.5s"), which both
// handlers then print alike, rather than the JSON handler's nanoseconds.
func durationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

type kafkaFlags struct {
	Brokers []string `name:"brokers" env:"NOTIFYD_BROKERS" sep:"," help:"Kafka bootstrap brokers, comma-separated; empty starts the embedded broker on 127.0.0.1:9092."`
	Topic   string   `name:"topic" env:"NOTIFYD_TOPIC" default:"${topic}" help:"Input topic."`
	kafkaAuthFlags
}

type runCmd struct {
	kafkaFlags
	dbFlags
	storageFlags
	logFlags
	apiFlags

	Group         string        `name:"group" env:"NOTIFYD_GROUP" default:"${group}" help:"Consumer group."`
	DLQTopic      string        `name:"dlq-topic" env:"NOTIFYD_DLQ_TOPIC" help:"Dead-letter topic; empty means <topic>.dlq."`
	BatchSize     int           `name:"batch-size" env:"NOTIFYD_BATCH_SIZE" default:"${batch_size}" nonzero:"true" help:"Buffered messages that trigger a write; ready batches coalesce while a write runs."`
	FlushInterval time.Duration `name:"flush-interval" env:"NOTIFYD_FLUSH_INTERVAL" default:"${flush_interval}" nonzero:"true" help:"Longest a message waits for its batch to fill; a batch is written sooner once the consumer has caught up."`
	MetricsAddr   string        `name:"metrics-addr" env:"NOTIFYD_METRICS_ADDR" default:"${metrics_addr}" help:"Address of /metrics, /healthz and /readyz; empty disables them."`
	APIAddr       string        `name:"api-addr" env:"NOTIFYD_API_ADDR" help:"Address of the inbox API (and its demo page at /), served by this process too; empty serves none (see notifyd serve)."`
	Pprof         bool          `name:"pprof" env:"NOTIFYD_PPROF" help:"Also serve /debug/pprof on --metrics-addr (profiles show internals and cost CPU while taken)."`
	DataDir       string        `name:"data-dir" env:"NOTIFYD_DATA_DIR" default:"./notifyd-data" help:"Where the embedded broker keeps its data."`

	InstanceID       string        `name:"instance-id" env:"NOTIFYD_INSTANCE_ID" help:"Static group membership id (stable per instance, e.g. the pod name): a restarted instance takes its partitions back without a rebalance."`
	RebalanceTimeout time.Duration `name:"rebalance-timeout" env:"NOTIFYD_REBALANCE_TIMEOUT" default:"15s" help:"How long a rebalance waits for every member to rejoin; a member that died mid-rebalance holds the group this long."`
	SessionTimeout   time.Duration `name:"session-timeout" env:"NOTIFYD_SESSION_TIMEOUT" default:"6s" help:"Group session timeout: how long a crashed instance's partitions wait before moving."`
	StartOffset      string        `name:"start-offset" env:"NOTIFYD_START_OFFSET" default:"${start_offset}" enum:"earliest,latest" help:"Where a partition with no stored position starts: earliest or latest."`

	MaxBufferedRows  int           `name:"max-buffered-rows" env:"NOTIFYD_MAX_BUFFERED_ROWS" default:"${max_buffered_rows}" nonzero:"true" help:"Messages read but not yet taken by a write, at most; fetching pauses at the bound."`
	MaxBufferedBytes int           `name:"max-buffered-bytes" env:"NOTIFYD_MAX_BUFFERED_BYTES" default:"${max_buffered_bytes}" nonzero:"true" help:"Key and value bytes read but not yet taken by a write, at most."`
	MemoryLimit      int64         `name:"memory-limit" env:"NOTIFYD_MEMORY_LIMIT" default:"33554432" help:"Soft limit of the Go heap in bytes (the GC works harder near it); 0 leaves it to GOMEMLIMIT or unset. Ignored when GOMEMLIMIT is set."`
	ShutdownTimeout  time.Duration `name:"shutdown-timeout" env:"NOTIFYD_SHUTDOWN_TIMEOUT" default:"${shutdown_timeout}" nonzero:"true" help:"Longest the final write may take on shutdown."`
	WriteTimeout     time.Duration `name:"write-timeout" env:"NOTIFYD_WRITE_TIMEOUT" default:"${write_timeout}" nonzero:"true" help:"Longest one write attempt may take before it counts as failed and is retried."`
	Writers          int           `name:"writers" env:"NOTIFYD_WRITERS" default:"${writers}" nonzero:"true" help:"Parallel writers, each with its own database connection and its own share of the partitions (partition id modulo N); needs --db-max-conns above N."`
	AllowOtherGroups bool          `name:"allow-other-groups" env:"NOTIFYD_ALLOW_OTHER_GROUPS" help:"Start even when another consumer group has written this topic into this database (every message would be stored by both: deduplicated by id, dead-lettered twice); logs a warning. To rename a group, see docs/operations.md."`
	StatusInterval   time.Duration `name:"status-interval" env:"NOTIFYD_STATUS_INTERVAL" default:"30s" help:"How often to log a one-line status (rate, rows, dead letters, lag); 0 disables it."`

	RetryMaxRetries  int           `name:"retry-max-retries" env:"NOTIFYD_RETRY_MAX_RETRIES" default:"${retry_max_retries}" help:"Retries of a failed write before the breaker counts a failure; 0 for none."`
	RetryInitial     time.Duration `name:"retry-initial-backoff" env:"NOTIFYD_RETRY_INITIAL_BACKOFF" default:"${retry_initial_backoff}" nonzero:"true" help:"First wait before a retry; doubles each retry."`
	RetryMax         time.Duration `name:"retry-max-backoff" env:"NOTIFYD_RETRY_MAX_BACKOFF" default:"${retry_max_backoff}" nonzero:"true" help:"Longest wait between retries."`
	BreakerThreshold int           `name:"breaker-threshold" env:"NOTIFYD_BREAKER_THRESHOLD" default:"${breaker_threshold}" nonzero:"true" help:"Consecutive failed writes that open the database circuit breaker."`
	BreakerTimeout   time.Duration `name:"breaker-timeout" env:"NOTIFYD_BREAKER_TIMEOUT" default:"${breaker_timeout}" nonzero:"true" help:"How long the breaker stays open before it lets a probe through."`

	MaxEventTypeBytes int `name:"max-event-type-bytes" env:"NOTIFYD_MAX_EVENT_TYPE_BYTES" default:"${max_event_type_bytes}" nonzero:"true" help:"Longest event_type, in bytes."`
	MaxTitleChars     int `name:"max-title-chars" env:"NOTIFYD_MAX_TITLE_CHARS" default:"${max_title_chars}" nonzero:"true" help:"Longest title, in characters."`
	MaxBodyChars      int `name:"max-body-chars" env:"NOTIFYD_MAX_BODY_CHARS" default:"${max_body_chars}" nonzero:"true" help:"Longest body, in characters."`
	MaxDataBytes      int `name:"max-data-bytes" env:"NOTIFYD_MAX_DATA_BYTES" default:"${max_data_bytes}" nonzero:"true" help:"Largest data object, in bytes as sent."`
}

func (c *runCmd) Help() string {
	return `notifyd run consumes the input topic, validates each message, and writes
batches to PostgreSQL with exactly-once effect; bad messages go to the
dead-letter topic with the reason.

Examples:
  notifyd run                                     # embedded broker, local PostgreSQL
  notifyd run --brokers kafka1:9092,kafka2:9092 --database-url postgres://notifyd@db/app
  NOTIFYD_BATCH_SIZE=500 notifyd run --log-format json`
}

func (c *runCmd) pipelineConfig() pipeline.Config {
	return pipeline.Config{
		Topic: c.Topic, DLQTopic: c.DLQTopic, Group: c.Group,
		BatchSize: c.BatchSize, FlushInterval: c.FlushInterval,
		MaxBufferedRows: c.MaxBufferedRows, MaxBufferedBytes: c.MaxBufferedBytes,
		StartOffset: c.StartOffset, ShutdownTimeout: c.ShutdownTimeout, StatusInterval: c.StatusInterval, WriteTimeout: c.WriteTimeout,
		Writers: c.Writers, AllowOtherGroups: c.AllowOtherGroups,
		Limits: notification.Limits{
			MaxEventTypeBytes: c.MaxEventTypeBytes, MaxTitleChars: c.MaxTitleChars,
			MaxBodyChars: c.MaxBodyChars, MaxDataBytes: c.MaxDataBytes,
		},
		Retry:   retry.Policy{Retries: retriesSetting(c.RetryMaxRetries), Initial: c.RetryInitial, Max: c.RetryMax},
		Breaker: retry.BreakerConfig{Threshold: c.BreakerThreshold, Timeout: c.BreakerTimeout},
	}
}

// retriesSetting maps the flag (0 means none) to the policy (0 means the
// default, -1 none); validate refuses a negative flag.
func retriesSetting(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// validate checks every setting before anything starts, naming each bad
// one: first what only the command knows, then each package's Config.
func (c *runCmd) validate() error {
	var errs []error
	if c.RetryMaxRetries < 0 {
		errs = append(errs, fmt.Errorf("--retry-max-retries: must be 0 (none) or more, got %d", c.RetryMaxRetries))
	}
	if c.MemoryLimit < 0 {
		errs = append(errs, fmt.Errorf("--memory-limit: must be 0 or more bytes, got %d", c.MemoryLimit))
	}
	if c.SessionTimeout < 6*time.Second || c.SessionTimeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("--session-timeout: must be between 6s and 5m (the brokers' usual bounds), got %s", c.SessionTimeout))
	}
	if c.RebalanceTimeout < 10*time.Second || c.RebalanceTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--rebalance-timeout: must be between 10s and 10m, got %s", c.RebalanceTimeout))
	}
	if c.Topic == "" {
		errs = append(errs, errors.New("--topic: must not be empty"))
	}
	if c.Group == "" {
		errs = append(errs, errors.New("--group: must not be empty"))
	}
	if c.Writers > 0 && c.DBMaxConns > 0 && int(c.DBMaxConns) <= c.Writers {
		errs = append(errs, fmt.Errorf("--writers: %d writers need --db-max-conns of at least %d (a connection each, and one for positions, readiness and the dead-letter relay), got %d",
			c.Writers, c.Writers+1, c.DBMaxConns))
	}
	errs = append(errs, checkBrokers(c.Brokers)...)
	errs = append(errs, c.kafkaAuthFlags.validate()...)
	errs = append(errs, c.apiFlags.validate(c.APIAddr)...)
	if len(c.Brokers) == 0 && (c.TLS || c.TLSCAFile != "" || c.TLSCertFile != "" || c.SASLMechanism != "") {
		errs = append(errs, errors.New("--tls and --sasl-*: need --brokers (the embedded broker speaks plain text)"))
	}
	if c.MetricsAddr != "" {
		if err := checkListenAddr(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("--metrics-addr: %w", err))
		}
	} else if c.Pprof {
		errs = append(errs, errors.New("--pprof: needs --metrics-addr, where it is served"))
	}
	if len(c.Brokers) == 0 {
		if fi, err := os.Stat(c.DataDir); err == nil && !fi.IsDir() {
			errs = append(errs, fmt.Errorf("--data-dir: %s is not a directory", c.DataDir))
		}
	}
	if err := c.pipelineConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.with(c.config()).Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Run starts notifyd; its settings were checked when they were parsed
// (validate). What can still fail only when tried, binding the metrics
// address and creating the data dir, is tried before anything else starts.
func (c *runCmd) Run(ctx context.Context) error {
	log := c.logger()
	if c.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(c.MemoryLimit)
	}
	cfg := c.pipelineConfig()
	dlqTopic := cfg.DLQTopic
	if dlqTopic == "" {
		dlqTopic = dlq.DefaultTopic(c.Topic)
	}
	auth, err := c.kafkaAuthFlags.opts()
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kp := kprom.NewMetrics("notifyd_kafka", kprom.Registerer(reg), kprom.Gatherer(reg))
	// p and watch are set before the server serves, so /readyz never sees
	// them nil.
	var p *pipeline.Pipeline
	var watch *topicWatch
	ready := func(ctx context.Context) error {
		if err := watch.ready(); err != nil {
			return err
		}
		return p.Ready(ctx)
	}
	var srv *admin.Server
	if c.MetricsAddr != "" {
		srv, err = admin.Listen(admin.Config{Addr: c.MetricsAddr, Pprof: c.Pprof}, reg, ready)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	var apiLn net.Listener
	if c.APIAddr != "" {
		if apiLn, err = listenAPI(c.APIAddr); err != nil {
			return err
		}
		defer apiLn.Close()
	}

	brokers := c.Brokers
	if len(brokers) == 0 {
		if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
			return fmt.Errorf("--data-dir: %w", err)
		}
		emb, err := broker.Start(broker.Config{
			DataDir: c.DataDir, Topics: []string{c.Topic}, Partitions: 3,
			Logger: log.With("component", "broker"),
		})
		if err != nil {
			return fmt.Errorf("%w (without --brokers notifyd starts its own broker: is another one running?)", err)
		}
		defer emb.Close()
		brokers = emb.Addrs()
		log.Info("embedded broker started; any Kafka client can produce to it",
			"addr", strings.Join(brokers, ","), "data_dir", c.DataDir,
			"try", fmt.Sprintf(`echo '{"user_id":"%s","event_type":"comment.created","title":"Hi","body":"Hello"}' | kcat -P -b %s -t %s`,
				"6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11", brokers[0], c.Topic))
	}

	var store *postgres.Store
	var v int
	err = whileWaiting(ctx, log, "the database to answer", func(ctx context.Context) error {
		var err error
		if store, err = postgres.Open(ctx, c.with(c.config())); err != nil {
			return fmt.Errorf("--database-url: %w", err)
		}
		v, err = store.Migrate(ctx)
		return err
	}, "database", c.config().String())
	if store != nil {
		defer store.Close()
	}
	if err != nil {
		return stoppedDuringStart(ctx, log, err)
	}
	// Partitions ahead before the first write; DDL only when due.
	maint := postgres.NewMaintainer(store, log.With("component", "partitions"), reg)
	maint.Once(ctx)
	log.Info("database ready", "database", store.String(), "schema_version", v)

	opts := []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.WithLogger(newKafkaLogger(log)),
		kgo.SessionTimeout(c.SessionTimeout),
		kgo.HeartbeatInterval(c.SessionTimeout / 4),
		kgo.RebalanceTimeout(c.RebalanceTimeout),
	}
	if c.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(c.InstanceID))
	}
	opts = append(opts, auth...)
	adm, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.WithLogger(newKafkaLogger(log))}, auth...)...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	// The input topic is the producers' business when a cluster is given;
	// the embedded broker's data dir may predate this --topic. The
	// dead-letter topic must exist before a bad message arrives, and take
	// any record the input topic takes.
	defer adm.Close()
	watch = &topicWatch{adm: kadm.NewClient(adm), topic: c.Topic, log: log}
	err = whileWaiting(ctx, log, "the Kafka brokers to answer", func(ctx context.Context) error {
		if len(c.Brokers) == 0 {
			if err := broker.EnsureTopics(ctx, watch.adm, 3, c.Topic); err != nil {
				return err
			}
		}
		if err := dlq.EnsureTopic(ctx, watch.adm, log, dlqTopic, c.Topic, 3); err != nil {
			return err
		}
		return watch.check(ctx)
	}, "brokers", strings.Join(brokers, ","))
	if err != nil {
		if len(c.Brokers) > 0 {
			err = fmt.Errorf("--brokers %s: %w", strings.Join(brokers, ","), err)
		}
		return stoppedDuringStart(ctx, log, err)
	}

	cfg.Hooks = []kgo.Hook{kp}
	p, err = pipeline.New(cfg, store, log, reg, opts...)
	if err != nil {
		return err
	}
	poolStats := newPoolCollector(store)
	reg.MustRegister(poolStats)

	g, gctx := errgroup.WithContext(ctx)
	// Maintenance stops with the pipeline, as the HTTP server does.
	mctx, stopMaint := context.WithCancel(gctx)
	defer stopMaint()
	g.Go(func() error { return maint.Run(mctx) })
	// The inbox API too: its streams end, then its server drains.
	actx, stopAPI := context.WithCancel(gctx)
	defer stopAPI()
	if apiLn != nil {
		if err := startAPI(actx, g, apiLn, c.config(), c.apiFlags, log, reg); err != nil {
			return err
		}
	}
	if srv != nil {
		log.Info("serving /metrics, /healthz and /readyz", "addr", srv.Addr(), "pprof", c.Pprof)
		g.Go(srv.Serve)
	}
	wctx, stopWatch := context.WithCancel(gctx)
	g.Go(func() error { return watch.run(wctx) })
	g.Go(func() error {
		defer stopWatch()
		defer stopMaint()
		defer stopAPI()
		defer func() {
			if srv != nil {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
			}
		}()
		log.Info("consuming", "topic", c.Topic, "group", c.Group, "dlq_topic", dlqTopic,
			"batch_size", c.BatchSize, "flush_interval", c.FlushInterval)
		return p.Run(gctx)
	})
	err = g.Wait()
	if err == nil {
		log.Info("stopped cleanly")
	}
	return err
}

// stoppedDuringStart is err, or nil when a signal ended the start-up step
// that failed: stopping before anything was consumed is a clean stop.
func stoppedDuringStart(ctx context.Context, log *slog.Logger, err error) error {
	if ctx.Err() != nil {
		log.Info("stopped cleanly during start-up")
		return nil
	}
	return err
}
