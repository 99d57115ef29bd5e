package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
)

type dlqCmd struct {
	List   dlqListCmd   `cmd:"" help:"Count dead letters by class and reason, newest first."`
	Show   dlqShowCmd   `cmd:"" help:"Print dead letters with all their headers and value."`
	Replay dlqReplayCmd `cmd:"" help:"Send dead letters back onto the input topic."`
}

func (dlqCmd) Help() string {
	return `Dead letters are the messages notifyd could not store, with the reason in
their headers. Fix the cause, then replay them.

Examples:
  notifyd dlq list
  notifyd dlq show --class validate --last 3
  notifyd dlq replay --class store --dry-run`
}

type dlqFlags struct {
	Brokers  []string `name:"brokers" env:"NOTIFYD_BROKERS" sep:"," default:"${embedded_broker}" help:"Kafka bootstrap brokers; the default is the embedded broker of a running 'notifyd run'."`
	Topic    string   `name:"topic" env:"NOTIFYD_TOPIC" default:"${topic}" help:"Input topic."`
	DLQTopic string   `name:"dlq-topic" env:"NOTIFYD_DLQ_TOPIC" help:"Dead-letter topic; empty means <topic>.dlq."`

	Class       string    `name:"class" enum:",decode,validate,store" default:"" help:"Only dead letters of this class: decode, validate or store."`
	Since       time.Time `name:"since" format:"2006-01-02T15:04:05Z07:00" help:"Only dead letters written at or after this time (RFC 3339)."`
	Until       time.Time `name:"until" format:"2006-01-02T15:04:05Z07:00" help:"Only dead letters written before this time (RFC 3339)."`
	SourceRange string    `name:"source-offsets" help:"Only dead letters from these source offsets: PARTITION:FROM-TO (inclusive) or PARTITION:OFFSET."`
	kafkaAuthFlags

	// out receives the command's report; nil means standard output. Tests
	// set it to read what an operator would see.
	out io.Writer `kong:"-"`
}

// stdout is where the command's report goes.
func (f *dlqFlags) stdout() io.Writer {
	if f.out != nil {
		return f.out
	}
	return os.Stdout
}

func (f *dlqFlags) dlqTopic() string {
	if f.DLQTopic != "" {
		return f.DLQTopic
	}
	return dlq.DefaultTopic(f.Topic)
}

// validate checks the settings every dlq command shares.
func (f *dlqFlags) validate() error {
	errs := append(checkBrokers(f.Brokers), f.kafkaAuthFlags.validate()...)
	if _, err := f.filter(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// client connects to the cluster.
func (f *dlqFlags) client() (*kgo.Client, error) {
	auth, err := f.kafkaAuthFlags.opts()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(f.Brokers...)}, auth...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	return cl, nil
}

func (f *dlqFlags) filter() (dlq.Filter, error) {
	flt := dlq.Filter{Class: f.Class, Since: f.Since, Until: f.Until}
	if f.SourceRange == "" {
		return flt, nil
	}
	bad := fmt.Errorf("--source-offsets: %q: want PARTITION:FROM-TO or PARTITION:OFFSET", f.SourceRange)
	ps, rng, ok := strings.Cut(f.SourceRange, ":")
	if !ok {
		return flt, bad
	}
	p, err := strconv.ParseInt(ps, 10, 32)
	if err != nil || p < 0 {
		return flt, bad
	}
	from, to, isRange := strings.Cut(rng, "-")
	fo, err1 := strconv.ParseInt(from, 10, 64)
	to2 := fo
	var err2 error
	if isRange {
		to2, err2 = strconv.ParseInt(to, 10, 64)
	}
	if err1 != nil || err2 != nil || fo < 0 || to2 < fo {
		return flt, bad
	}
	flt.Partition, flt.From, flt.To, flt.HasOffsets = int32(p), fo, to2, true
	return flt, nil
}

// read returns the dead letters that pass the filter.
func (f *dlqFlags) read(ctx context.Context) ([]*kgo.Record, error) {
	flt, err := f.filter()
	if err != nil {
		return nil, err
	}
	cl, err := f.client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var out []*kgo.Record
	err = dlq.ReadAll(ctx, cl, f.dlqTopic(), func(r *kgo.Record) error {
		if flt.Match(r) {
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

type dlqListCmd struct {
	dlqFlags
}

func (c *dlqListCmd) Help() string {
	return `Examples:
  notifyd dlq list
  notifyd dlq list --class validate --since 2026-11-26T00:00:00Z`
}

func (c *dlqListCmd) Run(ctx context.Context) error {
	recs, err := c.read(ctx)
	if err != nil {
		return err
	}
	return printList(c.stdout(), c.dlqTopic(), recs)
}

func printList(w io.Writer, topic string, recs []*kgo.Record) error {
	byClass := map[string]int{}
	for _, r := range recs {
		cl, _ := dlq.Header(r, dlq.HeaderClass)
		byClass[cl]++
	}
	fmt.Fprintf(w, "%d dead letters in %s (decode %d, validate %d, store %d)\n\n",
		len(recs), topic, byClass["decode"], byClass["validate"], byClass["store"])
	if len(recs) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COUNT\tCLASS\tNEWEST\tREASON")
	for _, g := range dlq.Summarize(recs) {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", g.Count, g.Class, g.Newest.UTC().Format(time.RFC3339), g.Reason)
	}
	return tw.Flush()
}

type dlqShowCmd struct {
	dlqFlags
	Last int `name:"last" default:"10" help:"Show at most this many, the newest; 0 shows all."`
}

func (c *dlqShowCmd) Help() string {
	return `Values that are not printable text are shown as hex.

Examples:
  notifyd dlq show --last 5
  notifyd dlq show --source-offsets 2:1500`
}

func (c *dlqShowCmd) Run(ctx context.Context) error {
	if c.Last < 0 {
		return fmt.Errorf("--last: must be 0 or more, got %d", c.Last)
	}
	recs, err := c.read(ctx)
	if err != nil {
		return err
	}
	if c.Last > 0 && len(recs) > c.Last {
		// Newest last in each partition; order by time overall.
		sortByTime(recs)
		recs = recs[len(recs)-c.Last:]
	}
	for _, r := range recs {
		printLetter(c.stdout(), r)
	}
	if len(recs) == 0 {
		fmt.Fprintln(c.stdout(), "no dead letters match")
	}
	return nil
}

func sortByTime(recs []*kgo.Record) {
	slices.SortStableFunc(recs, func(a, b *kgo.Record) int { return a.Timestamp.Compare(b.Timestamp) })
}

func printLetter(w io.Writer, r *kgo.Record) {
	fmt.Fprintf(w, "dead letter %s/%d/%d at %s\n", r.Topic, r.Partition, r.Offset, r.Timestamp.UTC().Format(time.RFC3339Nano))
	for _, h := range r.Headers {
		fmt.Fprintf(w, "  %s: %s\n", h.Key, safe(h.Value))
	}
	if r.Key != nil {
		fmt.Fprintf(w, "  key: %s\n", safe(r.Key))
	}
	fmt.Fprintf(w, "  value (%d bytes): %s\n\n", len(r.Value), safe(r.Value))
}

// safe renders bytes for a terminal: printable UTF-8 as it is, anything
// else escaped, and values that are not text at all as hex.
func safe(b []byte) string {
	if b == nil {
		return "(null)"
	}
	if !utf8.Valid(b) {
		return "hex " + fmt.Sprintf("% x", b)
	}
	s := string(b)
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			q := strconv.Quote(s)
			return q
		}
	}
	return s
}

type dlqReplayCmd struct {
	dlqFlags
	DryRun     bool `name:"dry-run" help:"Show what would be replayed; send nothing."`
	MaxReplays int  `name:"max-replays" default:"3" help:"Do not replay a message that was replayed this many times already."`
}

func (c *dlqReplayCmd) Help() string {
	return `Replays the dead letters that match the filters onto the input topic,
with their original key, value and headers. Fix the cause first (a producer,
a limit, a table constraint): a message that fails again is dead-lettered
again with its replay count, and is not replayed past --max-replays.
A message without an id keeps the id derived from where it first arrived, so
replaying it twice still makes one row.

Examples:
  notifyd dlq replay --class store --dry-run
  notifyd dlq replay --class store
  notifyd dlq replay --source-offsets 0:100-200`
}

func (c *dlqReplayCmd) Run(ctx context.Context) error {
	if c.MaxReplays < 1 {
		return fmt.Errorf("--max-replays: must be at least 1, got %d", c.MaxReplays)
	}
	recs, err := c.read(ctx)
	if err != nil {
		return err
	}
	var out []*kgo.Record
	skipped := 0
	for _, d := range recs {
		r, err := dlq.ReplayRecord(c.Topic, d, c.MaxReplays)
		if errors.Is(err, dlq.ErrReplayLimit) {
			skipped++
			fmt.Fprintf(os.Stderr, "skipping %s/%d/%d: %v\n", d.Topic, d.Partition, d.Offset, err)
			continue
		}
		if err != nil {
			return err
		}
		out = append(out, r)
	}
	if c.DryRun {
		fmt.Fprintf(c.stdout(), "dry run: would replay %d dead letters onto %s (%d skipped at the replay limit)\n", len(out), c.Topic, skipped)
		return printList(c.stdout(), c.dlqTopic(), recs)
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	const chunk = 500
	done := 0
	for i := 0; i < len(out); i += chunk {
		part := out[i:min(i+chunk, len(out))]
		if err := cl.ProduceSync(ctx, part...).FirstErr(); err != nil {
			return fmt.Errorf("replayed %d of %d, then: %w", done, len(out), err)
		}
		done += len(part)
		fmt.Fprintf(os.Stderr, "\rreplayed %d/%d", done, len(out))
	}
	if len(out) > 0 {
		fmt.Fprintln(os.Stderr)
	}
	fmt.Fprintf(c.stdout(), "replayed %d dead letters onto %s; %d skipped at the replay limit\n", done, c.Topic, skipped)
	return nil
}
