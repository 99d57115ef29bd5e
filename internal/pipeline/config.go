package pipeline

import (
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/retry"
)

// Defaults of Config, one per field; the command line shows these same
// values.
const (
	DefaultTopic            = "notifications"
	DefaultGroup            = "notifyd"
	DefaultBatchSize        = 100
	DefaultFlushInterval    = 5 * time.Second
	DefaultMaxBufferedRows  = 2_500
	DefaultMaxBufferedBytes = 4 << 20
	DefaultStartOffset      = "earliest"
	DefaultWriteTimeout     = 5 * time.Second
	DefaultShutdownTimeout  = 30 * time.Second
	// DefaultWriters is chosen by measurement: see the README's
	// performance section.
	DefaultWriters = 4
)

// Config configures a Pipeline. Zero fields mean the defaults. Validate
// names each setting by its command-line flag.
type Config struct {
	Topic    string // input topic; "" means DefaultTopic
	DLQTopic string // dead-letter topic; "" means dlq.DefaultTopic(Topic)
	Group    string // consumer group; "" means DefaultGroup

	// BatchSize is the number of buffered messages that triggers a write;
	// 0 means DefaultBatchSize. While a write is running, ready batches coalesce into
	// the next, larger write, up to MaxBufferedRows.
	BatchSize int
	// FlushInterval is the longest a message waits for its batch to fill;
	// 0 means DefaultFlushInterval. A batch is written sooner when the consumer has caught
	// up with every partition it holds: nothing more is coming to fill it.
	FlushInterval time.Duration
	// MaxBufferedRows and MaxBufferedBytes bound what is read but not yet
	// taken by a write; at the bound, fetching stops until a writer takes
	// from the buffer. Each writer holds at most one batch besides. 0 means 2,500 messages and 4 MiB of keys and values: with
	// COPY a write of 2,500 rows costs little more per row than one of
	// 10,000 (BenchmarkWritePath), and memory stays under 50 MB.
	MaxBufferedRows  int
	MaxBufferedBytes int

	// Writers is the number of writing goroutines, each with its own
	// connection and its own partitions (partition id modulo Writers); 0
	// means DefaultWriters.
	Writers int

	// StartOffset is where a partition with no stored position starts:
	// "earliest" (the default) or "latest".
	StartOffset string

	// WriteTimeout bounds one write attempt, so that a database that hangs
	// without failing counts as a failure; 0 means DefaultWriteTimeout.
	WriteTimeout time.Duration

	// ShutdownTimeout bounds the final write on shutdown; 0 means
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// StatusInterval is how often a one-line status is logged at info
	// level; 0 means never.
	StatusInterval time.Duration

	Limits  notification.Limits
	Retry   retry.Policy
	Breaker retry.BreakerConfig

	// AllowOtherGroups lets Run start although another consumer group
	// holds positions of Topic in the same database (it logs a warning);
	// otherwise Run refuses to start, naming the other group.
	AllowOtherGroups bool

	// Hooks are given to the consuming Kafka client only (the client
	// metrics): a hook such as kprom's registers its metrics once, and the
	// dead-letter relay's clients must not register them again.
	Hooks []kgo.Hook

	// OnCommit, if not nil, is called after each committed write with the
	// timestamps of the batch's records and how long the write took. It
	// runs on the writer's goroutine, one call at a time: keep it short.
	// For benchmarks.
	OnCommit func(stamps []time.Time, took time.Duration)
}

func (c Config) withDefaults() Config {
	if c.Topic == "" {
		c.Topic = DefaultTopic
	}
	if c.DLQTopic == "" {
		c.DLQTopic = dlq.DefaultTopic(c.Topic)
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.MaxBufferedRows == 0 {
		c.MaxBufferedRows = max(DefaultMaxBufferedRows, 2*c.BatchSize)
	}
	if c.MaxBufferedBytes == 0 {
		c.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
	if c.StartOffset == "" {
		c.StartOffset = DefaultStartOffset
	}
	if c.Writers == 0 {
		c.Writers = DefaultWriters
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	return c
}

// Validate reports settings that cannot work, naming them as the command
// line does.
func (c Config) Validate() error {
	var errs []error
	if c.BatchSize < 0 {
		errs = append(errs, fmt.Errorf("--batch-size: must be at least 1, got %d", c.BatchSize))
	}
	if c.FlushInterval < 0 {
		errs = append(errs, fmt.Errorf("--flush-interval: must be positive, got %s", c.FlushInterval))
	}
	if c.MaxBufferedRows < 0 {
		errs = append(errs, fmt.Errorf("--max-buffered-rows: must be at least 1, got %d", c.MaxBufferedRows))
	}
	if c.MaxBufferedBytes < 0 {
		errs = append(errs, fmt.Errorf("--max-buffered-bytes: must be at least 1, got %d", c.MaxBufferedBytes))
	}
	if d := c.withDefaults(); d.MaxBufferedRows < d.BatchSize {
		errs = append(errs, fmt.Errorf("--max-buffered-rows: %d is below --batch-size %d", d.MaxBufferedRows, d.BatchSize))
	}
	if c.Writers < 0 {
		errs = append(errs, fmt.Errorf("--writers: must be at least 1, got %d", c.Writers))
	}
	if c.StartOffset != "" && c.StartOffset != "earliest" && c.StartOffset != "latest" {
		errs = append(errs, fmt.Errorf("--start-offset: must be earliest or latest, got %q", c.StartOffset))
	}
	if c.WriteTimeout < 0 {
		errs = append(errs, fmt.Errorf("--write-timeout: must be positive, got %s", c.WriteTimeout))
	}
	if c.StatusInterval < 0 {
		errs = append(errs, fmt.Errorf("--status-interval: must not be negative, got %s", c.StatusInterval))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("--shutdown-timeout: must be positive, got %s", c.ShutdownTimeout))
	}
	if d := c.withDefaults(); d.DLQTopic == d.Topic {
		errs = append(errs, fmt.Errorf("--dlq-topic: must differ from --topic %q", d.Topic))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Retry.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Breaker.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
