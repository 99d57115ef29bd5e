// Package broker runs the embedded Kafka-compatible broker that notifyd
// starts when no cluster is configured, and makes sure topics exist.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultPort is where the embedded broker listens when Config.Port is 0;
// the other commands' --brokers default points there.
const DefaultPort = 9092

// Config configures the embedded broker.
type Config struct {
	// Port to listen on, on 127.0.0.1; 0 means DefaultPort.
	Port int
	// DataDir keeps the broker's logs and group state across restarts.
	// Empty keeps everything in memory.
	DataDir string
	// Topics are created with Partitions partitions on first start.
	Topics     []string
	Partitions int32
	Logger     *slog.Logger
}

// Embedded is a running in-process broker.
type Embedded struct {
	c *kfake.Cluster
}

// Start starts the broker.
func Start(cfg Config) (*Embedded, error) {
	port := cfg.Port
	if port == 0 {
		port = DefaultPort
	}
	parts := cfg.Partitions
	if parts == 0 {
		parts = 3
	}
	opts := []kfake.Opt{
		kfake.Ports(port),
		kfake.SeedTopics(parts, cfg.Topics...),
		kfake.DefaultNumPartitions(int(parts)),
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if cfg.Logger != nil {
		opts = append(opts, kfake.WithLogger(logger{cfg.Logger}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start embedded broker on 127.0.0.1:%d: %w", port, err)
	}
	return &Embedded{c: c}, nil
}

// Addrs are the broker's listen addresses.
func (e *Embedded) Addrs() []string { return e.c.ListenAddrs() }

// Close stops the broker, persisting its state.
func (e *Embedded) Close() { e.c.Close() }

// EnsureTopics creates the topics that do not exist yet, with partitions
// partitions and the cluster's default replication.
func EnsureTopics(ctx context.Context, adm *kadm.Client, partitions int32, topics ...string) error {
	resp, err := adm.CreateTopics(ctx, partitions, -1, nil, topics...)
	if err != nil {
		return fmt.Errorf("create topics %s: %w", strings.Join(topics, ", "), err)
	}
	for _, t := range resp.Sorted() {
		if t.Err != nil && !errors.Is(t.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t.Topic, t.Err)
		}
	}
	return nil
}

type logger struct{ l *slog.Logger }

func (l logger) Logf(level kfake.LogLevel, msg string, args ...any) {
	var lv slog.Level
	switch level {
	case kfake.LogLevelError:
		lv = slog.LevelError
	case kfake.LogLevelWarn:
		lv = slog.LevelWarn
	case kfake.LogLevelInfo:
		lv = slog.LevelDebug // the broker's info is per request: too chatty for notifyd's info
	default:
		lv = slog.LevelDebug - 4
	}
	if !l.l.Enabled(context.Background(), lv) {
		return
	}
	l.l.Log(context.Background(), lv, fmt.Sprintf(msg, args...), "component", "broker")
}
