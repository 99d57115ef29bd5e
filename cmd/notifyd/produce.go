package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/loadgen"
)

type produceCmd struct {
	Brokers  []string      `name:"brokers" env:"NOTIFYD_BROKERS" sep:"," default:"${embedded_broker}" help:"Kafka bootstrap brokers; the default is the embedded broker of a running 'notifyd run'."`
	Topic    string        `name:"topic" env:"NOTIFYD_TOPIC" default:"${topic}" help:"Topic to produce to."`
	Count    int           `name:"count" help:"Messages to send; 0 with --duration sends until the duration ends." default:"0"`
	Rate     int           `name:"rate" help:"Messages per second; 0 sends as fast as the broker takes them." default:"0"`
	Duration time.Duration `name:"duration" help:"How long to send; 0 means until --count is reached." default:"0"`
	Invalid  float64       `name:"invalid" help:"Share of invalid messages, 0 to 1 (half fail to decode, half fail validation)." default:"0"`
	Users    int           `name:"users" help:"Distinct recipients." default:"10000"`
	User     string        `name:"user" help:"Send every message to this user (a UUID), such as the development user whose token 'make run' prints; overrides --users."`
	Seed     uint64        `name:"seed" help:"Random seed; the same seed makes the same messages (and ids, which notifyd then skips as duplicates). 0 picks a new one." default:"0"`
	Quiet    bool          `name:"quiet" help:"No progress line."`
	kafkaAuthFlags
}

func (c *produceCmd) Help() string {
	return `Sends synthetic notifications: varied users, lengths, optional fields and
Unicode; optionally a share of invalid ones.

Examples:
  notifyd produce --count 100000                 # as fast as possible
  notifyd produce --rate 1000 --duration 30s     # steady load
  notifyd produce --count 1000 --invalid 0.05    # 5 % bad messages
  notifyd produce --count 1 --user 6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11   # one for make run's demo user`
}

func (c *produceCmd) validate() error {
	var errs []error
	if c.Count < 0 {
		errs = append(errs, fmt.Errorf("--count: must be 0 or more, got %d", c.Count))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("--rate: must be 0 or more, got %d", c.Rate))
	}
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("--duration: must not be negative, got %s", c.Duration))
	}
	if c.Count == 0 && c.Duration == 0 {
		errs = append(errs, errors.New("--count or --duration: give at least one"))
	}
	if c.Invalid < 0 || c.Invalid > 1 {
		errs = append(errs, fmt.Errorf("--invalid: must be between 0 and 1, got %g", c.Invalid))
	}
	if c.Users < 1 {
		errs = append(errs, fmt.Errorf("--users: must be at least 1, got %d", c.Users))
	}
	if c.User != "" {
		if _, err := uuid.Parse(c.User); err != nil {
			errs = append(errs, fmt.Errorf("--user: want a UUID, got %q", c.User))
		}
	}
	if c.Topic == "" {
		errs = append(errs, errors.New("--topic: must not be empty"))
	}
	errs = append(errs, c.kafkaAuthFlags.validate()...)
	errs = append(errs, checkBrokers(c.Brokers)...)
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("--brokers: must not be empty"))
	}
	return errors.Join(errs...)
}

func (c *produceCmd) Run(ctx context.Context) error {
	auth, err := c.kafkaAuthFlags.opts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.Brokers...), kgo.DefaultProduceTopic(c.Topic),
		kgo.ProducerLinger(5 * time.Millisecond), kgo.MaxBufferedRecords(50_000),
		// A broker that goes away mid-run fails the records instead of
		// holding them (and the command) for ever.
		kgo.RecordDeliveryTimeout(produceDeliveryTimeout)}, auth...)...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	if err := pingBrokers(ctx, cl, c.Brokers); err != nil {
		return err
	}
	// Records are sent under rctx: the first signal ends the sending loop
	// and leaves produceGrace for what is buffered to be acknowledged, then
	// fails the rest, so that one signal is enough to stop.
	rctx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	stopAfterSignal := context.AfterFunc(ctx, func() { time.AfterFunc(produceGrace, abort) })
	defer stopAfterSignal()
	if c.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Duration)
		defer cancel()
	}
	seed := c.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	gen := loadgen.New(seed, c.Users)
	if c.User != "" {
		gen = loadgen.NewFor(seed, []uuid.UUID{uuid.MustParse(c.User)})
	}
	gen.InvalidShare = c.Invalid

	var sent, acked, failed, invalid atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	stopProgress := c.progress(start, &acked, &failed)
	defer stopProgress()

	var tick <-chan time.Time
	perTick := 0
	if c.Rate > 0 {
		// Send in small bursts every 10 ms: smooth enough, cheap on timers.
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		tick = t.C
	}
	credit := 0.0
loop:
	for c.Count == 0 || int(sent.Load()) < c.Count {
		if tick != nil {
			if perTick == 0 {
				select {
				case <-ctx.Done():
					break loop
				case <-tick:
				}
				credit += float64(c.Rate) / 100
				perTick = int(credit)
				credit -= float64(perTick)
				continue
			}
			perTick--
		} else if ctx.Err() != nil {
			break
		}
		v, bad := gen.Next()
		if bad != "" {
			invalid.Add(1)
		}
		sent.Add(1)
		cl.Produce(rctx, &kgo.Record{Value: v, Timestamp: time.Now()}, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			acked.Add(1)
		})
	}
	if err := cl.Flush(rctx); err != nil {
		// Given up after a signal: what is still buffered or in flight
		// fails now. The client is closed right after, so the sequence
		// numbers this abandons are never reused.
		cl.UnsafeAbortBufferedRecords()
	}
	stopProgress()
	secs := time.Since(start).Seconds()
	// Records abandoned after a signal may not have reached their callback.
	notAcked := sent.Load() - acked.Load()
	fmt.Fprintf(os.Stderr, "produced %d messages (%d invalid) to %s in %.1fs: %.0f msg/s, %d not acknowledged\n",
		acked.Load(), invalid.Load(), c.Topic, secs, float64(acked.Load())/secs, notAcked)
	if notAcked > 0 {
		if err, ok := firstErr.Load().(error); ok {
			return fmt.Errorf("%d messages not acknowledged: %w", notAcked, err)
		}
		return fmt.Errorf("%d messages not acknowledged (given up %s after the signal)", notAcked, produceGrace)
	}
	return nil
}

const (
	// produceConnectTimeout bounds the wait for a first broker to answer.
	produceConnectTimeout = 6 * time.Second
	// produceDeliveryTimeout is how long a record may wait to be
	// acknowledged.
	produceDeliveryTimeout = 30 * time.Second
	// produceGrace is how long buffered records may take to be
	// acknowledged after a signal.
	produceGrace = 3 * time.Second
)

// pingBrokers waits, at most produceConnectTimeout, for a broker to answer.
func pingBrokers(ctx context.Context, cl *kgo.Client, brokers []string) error {
	pctx, cancel := context.WithTimeout(ctx, produceConnectTimeout)
	defer cancel()
	err := cl.Ping(pctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted while waiting for --brokers %s to answer", strings.Join(brokers, ","))
	case pctx.Err() != nil:
		return fmt.Errorf("--brokers %s: no broker answered within %s (is `notifyd run` with its embedded broker, or the cluster, running?)",
			strings.Join(brokers, ","), produceConnectTimeout)
	default:
		return fmt.Errorf("--brokers %s: no broker answered: %w (is `notifyd run` with its embedded broker, or the cluster, running?)",
			strings.Join(brokers, ","), err)
	}
}

// progress prints a progress line every second until the returned func is
// called.
func (c *produceCmd) progress(start time.Time, acked, failed *atomic.Int64) func() {
	if c.Quiet {
		return func() {}
	}
	done := make(chan struct{})
	var once atomic.Bool
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				secs := time.Since(start).Seconds()
				fmt.Fprintf(os.Stderr, "\r%8d sent  %8.0f msg/s  %d failed ", acked.Load(), float64(acked.Load())/secs, failed.Load())
			}
		}
	}()
	return func() {
		if once.CompareAndSwap(false, true) {
			close(done)
			fmt.Fprintln(os.Stderr)
		}
	}
}
