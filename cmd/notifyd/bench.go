package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/notifyd/notifyd/internal/bench"
)

type benchCmd struct {
	Brokers              []string      `name:"brokers" env:"NOTIFYD_BROKERS" sep:"," help:"Kafka brokers to benchmark against; empty uses an embedded broker."`
	DatabaseURL          string        `name:"database-url" env:"NOTIFYD_DATABASE_URL,DATABASE_URL" help:"PostgreSQL to benchmark against; empty uses the local server. The benchmark works in a schema of its own and drops it."`
	Messages             int           `name:"messages" default:"500000" help:"Preloaded messages drained end to end."`
	Rate                 int           `name:"rate" default:"1000" help:"Offered load of the latency phase, msg/s."`
	Duration             time.Duration `name:"duration" default:"10s" help:"Length of the latency phase."`
	History              int           `name:"history" default:"0" help:"Rows of history (spread over 8 weeks, in partitions of --partition-interval) loaded after the empty-table drain, before a second drain of --messages into the table holding them; 0 skips it."`
	JSON                 bool          `name:"json" help:"Print the result as one JSON object."`
	API                  bool          `name:"api" help:"Also measure the inbox API of a real 'notifyd serve' over --api-history rows: feed and counts latency at 500 req/s over 10,000 users, stream delivery with 1,000 open streams at 1,000 rows/s, memory per idle stream, and the ingest rate while 100 mark-read req/s run (result under \"api\")."`
	APIHistory           int           `name:"api-history" default:"5000000" help:"Rows of history loaded before the API is measured."`
	PartitionInterval    time.Duration `name:"partition-interval" default:"${partition_interval}" help:"Partition interval of the main and --history phases' table (its history, and their drains' notifyd run)."`
	APIPartitionInterval time.Duration `name:"api-partition-interval" default:"${partition_interval}" help:"Partition interval of the API phase's table (its history and its ingest drains' notifyd run)."`
	logFlags
	kafkaAuthFlags
}

func (c *benchCmd) Help() string {
	return `Measures, in one run on this machine: the raw binary COPY rate of the
benchmark's rows (the sink's limit); the drain rate and peak memory of a real
'notifyd run' over --messages preloaded notifications with default settings;
and end-to-end latency (record timestamp to commit) at --rate msg/s. With
--history N, it then loads N rows of history over 8 weeks and drains again
into the table holding them, and times "a user's latest 20" reads.

Examples:
  notifyd bench
  notifyd bench --json --messages 500000
  notifyd bench --history 5000000
  notifyd bench --brokers kafka:9092 --database-url postgres://bench@db/bench`
}

func (c *benchCmd) validate() error {
	var errs []error
	if c.Messages < 1 {
		errs = append(errs, fmt.Errorf("--messages: must be at least 1, got %d", c.Messages))
	}
	if c.Rate < 1 || c.Rate > 1_000_000 {
		errs = append(errs, fmt.Errorf("--rate: must be between 1 and 1000000, got %d", c.Rate))
	}
	if c.History < 0 {
		errs = append(errs, fmt.Errorf("--history: must be 0 or more rows, got %d", c.History))
	}
	if c.API && c.APIHistory < 1000 {
		errs = append(errs, fmt.Errorf("--api-history: must be at least 1000, got %d", c.APIHistory))
	}
	for _, f := range []struct {
		name string
		iv   time.Duration
		on   bool
	}{{"--partition-interval", c.PartitionInterval, true}, {"--api-partition-interval", c.APIPartitionInterval, c.API}} {
		if f.on && (f.iv < time.Hour || f.iv%time.Minute != 0) {
			errs = append(errs, fmt.Errorf("%s: must be at least 1h and a whole number of minutes, got %s", f.name, f.iv))
		}
	}
	if c.Duration < time.Second {
		errs = append(errs, fmt.Errorf("--duration: must be at least 1s, got %s", c.Duration))
	}
	errs = append(errs, c.kafkaAuthFlags.validate()...)
	errs = append(errs, checkBrokers(c.Brokers)...)
	return errors.Join(errs...)
}

func (c *benchCmd) Run(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	log := c.logger()
	auth, err := c.kafkaAuthFlags.opts()
	if err != nil {
		return err
	}
	childArgs, childEnv := c.kafkaAuthFlags.childArgs()
	res, err := bench.Run(ctx, bench.Config{
		Messages: c.Messages, Rate: c.Rate, Duration: c.Duration,
		Brokers: c.Brokers, DatabaseURL: c.DatabaseURL, Executable: exe, Log: log,
		KafkaOpts: auth, ChildArgs: childArgs, ChildEnv: childEnv, History: c.History,
		PartitionInterval: c.PartitionInterval,
	})
	if err != nil {
		return err
	}
	var apiRes *bench.APIResult
	if c.API {
		apiRes, err = bench.RunAPI(ctx, bench.APIConfig{
			DatabaseURL: c.DatabaseURL, Executable: exe, History: c.APIHistory, Duration: c.Duration, Log: log,
			PartitionInterval: c.APIPartitionInterval,
		})
		if err != nil {
			return fmt.Errorf("inbox API: %w", err)
		}
	}
	if c.JSON {
		enc := json.NewEncoder(os.Stdout)
		return enc.Encode(struct {
			*bench.Result
			API *bench.APIResult `json:"api,omitempty"`
		}{res, apiRes})
	}
	fmt.Printf(`notifyd bench (%s, %d CPUs, %s)
  COPY limit (same rows, same database)  %10.0f rows/s
  end-to-end drain of %d messages    %10.0f msg/s  (%.2f × COPY limit, %.1f s)
  batches during the drain               %10.0f       (mean %.0f messages)
  batch flush during the drain           p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms
  end-to-end latency at %d msg/s       p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms
  batch flush at %d msg/s              p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms
  peak RSS of notifyd run                %10.1f MB
`, res.Date, res.CPUs, res.GoVersion,
		res.CopyLimitRowsPerSec,
		res.Messages, res.MsgsPerSec, res.RatioToCopyLimit, res.Seconds,
		res.DrainBatches, res.DrainMeanBatchSize,
		res.FlushMs.P50, res.FlushMs.P95, res.FlushMs.P99,
		res.LatencyOfferedRate, res.E2ELatencyMs.P50, res.E2ELatencyMs.P95, res.E2ELatencyMs.P99,
		res.LatencyOfferedRate, res.SteadyFlushMs.P50, res.SteadyFlushMs.P95, res.SteadyFlushMs.P99,
		res.PeakRSSMB)
	if res.HistoryRows > 0 {
		fmt.Printf(`  history loaded (%d rows, %d partitions) %10.0f rows/s
  drain of %d into the table with history %7.0f msg/s  (%.2f × empty-table drain, %.2f × COPY limit)
  drain of %d into the emptied table after %6.0f msg/s  (the ratio's baseline: mean of the two empty-table drains)
  batch flush with history               p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms
  a user's latest 20 with history        p50 %6.2f ms  p95 %6.2f ms  p99 %6.2f ms
  dedupe probe, share of write time      %10.2f empty, %.2f with history
`, res.HistoryRows, res.HistoryPartitions, res.HistoryLoadRowsPerSec,
			res.Messages, res.HistoryMsgsPerSec, res.HistoryRatioToEmpty, res.HistoryRatioToCopyLimit,
			res.Messages, res.EmptyAfterMsgsPerSec,
			res.HistoryFlushMs.P50, res.HistoryFlushMs.P95, res.HistoryFlushMs.P99,
			res.ReadLatest20Ms.P50, res.ReadLatest20Ms.P95, res.ReadLatest20Ms.P99,
			res.DedupeProbeShare, res.HistoryDedupeProbeShare)
	}
	if a := apiRes; a != nil {
		fmt.Printf(`inbox API (notifyd serve, %d rows of history, %d users)
  feed first page at %d req/s (with counts)  p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms
  counts at %d req/s (with the feed)         p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms
  stream delivery, %d streams, %d rows/s  p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms  (%d delivered, %d not)
  memory per idle stream                     %10.1f KB resident, %.1f KB Go heap and stacks (%.1f KB after a GC)
  ingest, API idle / with %d mark-read req/s  %8.0f / %.0f msg/s  (ratio %.2f; mark-read p95 %.1f ms)
  failed API requests                        %10d
`, a.HistoryRows, a.Users,
			a.OfferedRate, a.FeedMs.P50, a.FeedMs.P95, a.FeedMs.P99,
			a.OfferedRate, a.CountsMs.P50, a.CountsMs.P95, a.CountsMs.P99,
			a.Streams, a.StreamRate, a.DeliveryMs.P50, a.DeliveryMs.P95, a.DeliveryMs.P99, a.Delivered, a.Undelivered,
			a.IdleStreamKB, a.IdleStreamGoKB, a.IdleStreamGoGCKB, a.MarkRate, a.IngestIdle, a.IngestBusy, a.IngestRatio, a.MarkMs.P95, a.RequestErrors)
	}
	return nil
}
