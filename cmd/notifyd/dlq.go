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
	SourceRange string    `name:"source-offsets" help:"Only dead letters of messages read from these offsets of the input topic, as dlq show names them: PARTITION:FROM-TO (inclusive) or PARTITION:OFFSET."`
	kafkaAuthFlags
	// The database keeps the dead letters the topic refused (table
	// notifyd_dead_letters); the commands read it beside the topic.
	dbFlags

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
	if err := f.dbFlags.validate(); err != nil {
		errs = append(errs, fmt.Errorf("--database-url: %w", err))
	}
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

// read returns the dead letters that pass the filter, with their replays.
func (f *dlqFlags) read(ctx context.Context) ([]dlq.Entry, error) {
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
	all, err := dlq.ReadTopic(ctx, cl, f.dlqTopic())
	if err != nil {
		return nil, err
	}
	kept, err := f.tableLetters(ctx, cl)
	if err != nil {
		return nil, err
	}
	all = append(all, kept...)
	var out []dlq.Entry
	for _, e := range all {
		if flt.Match(e.Record) {
			out = append(out, e)
		}
	}
	return out, nil
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

// maxReasonChars bounds a reason in the list, which has one line per group.
const maxReasonChars = 200

func printList(w io.Writer, topic string, entries []dlq.Entry) error {
	byClass := map[string]int{}
	recs := make([]*kgo.Record, len(entries))
	replayed := 0
	for i, e := range entries {
		cl, _ := dlq.Header(e.Record, dlq.HeaderClass)
		byClass[cl]++
		recs[i] = e.Record
		if len(e.Replays) > 0 {
			replayed++
		}
	}
	fmt.Fprintf(w, "%d dead letters in %s (decode %d, validate %d, store %d); %d replayed already\n\n",
		len(recs), topic, byClass["decode"], byClass["validate"], byClass["store"], replayed)
	if len(recs) == 0 {
		return nil
	}
	// Alike reasons (the same but for the values they quote) are one
	// group; the newest of each is shown as it is.
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COUNT\tCLASS\tNEWEST\tREASON (the newest of the group)")
	for _, g := range dlq.Summarize(recs) {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", g.Count, g.Class, g.Newest.UTC().Format(time.RFC3339), oneLine(g.Example, maxReasonChars))
	}
	return tw.Flush()
}

// oneLine renders text on one line as render does, cut after max
// characters.
func oneLine(s string, max int) string {
	text, note := escape([]byte(s), max)
	return text + note
}

// escape renders b for a terminal, one way whatever it holds: printable
// characters as they are; a NUL, other control and invisible characters,
// and bytes that are not UTF-8, escaped as in a Go string (\x00, \n,
// \u200b, \xff). It stops after max characters (max < 0: never). note
// says what was escaped or cut, so that an escape is not taken for text.
func escape(b []byte, max int) (text, note string) {
	var sb strings.Builder
	var invalid, nul, other, chars int
	i := 0
	for i < len(b) && chars != max {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			invalid++
			fmt.Fprintf(&sb, `\x%02x`, b[i])
		case r == 0:
			nul++
			sb.WriteString(`\x00`)
		case !unicode.IsPrint(r) && r != ' ':
			other++
			q := strconv.QuoteRune(r)
			sb.WriteString(q[1 : len(q)-1])
		default:
			sb.WriteRune(r)
		}
		i += size
		chars++
	}
	var notes []string
	if invalid > 0 {
		notes = append(notes, fmt.Sprintf("%d bytes not UTF-8", invalid))
	}
	if nul > 0 {
		notes = append(notes, fmt.Sprintf("%d NUL", nul))
	}
	if other > 0 {
		notes = append(notes, fmt.Sprintf("%d control or invisible characters", other))
	}
	if len(notes) > 0 {
		note = "  [escaped: " + strings.Join(notes, ", ") + "]"
	}
	if i < len(b) {
		note += fmt.Sprintf("… [%d of %d bytes shown]", i, len(b))
	}
	return sb.String(), note
}

type dlqShowCmd struct {
	dlqFlags
	Last int  `name:"last" default:"10" help:"Show at most this many, the newest; 0 shows all."`
	Full bool `name:"full" help:"Print every header, the key and the value whole; by default each is cut at 512 characters."`
}

func (c *dlqShowCmd) Help() string {
	return `Each dead letter is named by where its message was read (topic/partition/
offset of the input topic, what --source-offsets selects), then where it is
kept in the dead-letter topic. Headers, key and value are printed as text:
printable characters as they are, anything else escaped as in Go (a NUL as
\x00, a byte that is not UTF-8 as \xff) with a note saying so, and cut at
512 characters unless --full.

Examples:
  notifyd dlq show --last 5
  notifyd dlq show --source-offsets 2:1500 --full`
}

func (c *dlqShowCmd) validate() error {
	var errs []error
	if c.Last < 0 {
		errs = append(errs, fmt.Errorf("--last: must be 0 or more, got %d", c.Last))
	}
	return errors.Join(c.dlqFlags.validate(), errors.Join(errs...))
}

func (c *dlqShowCmd) Run(ctx context.Context) error {
	entries, err := c.read(ctx)
	if err != nil {
		return err
	}
	if c.Last > 0 && len(entries) > c.Last {
		// Newest last in each partition; order by time overall.
		sortByTime(entries)
		entries = entries[len(entries)-c.Last:]
	}
	for _, e := range entries {
		printLetter(c.stdout(), e, c.Full)
	}
	if len(entries) == 0 {
		fmt.Fprintln(c.stdout(), "no dead letters match")
	}
	return nil
}

func sortByTime(entries []dlq.Entry) {
	slices.SortStableFunc(entries, func(a, b dlq.Entry) int { return a.Record.Timestamp.Compare(b.Record.Timestamp) })
}

// showLimit is how many characters of a header, key or value show prints
// without --full.
const showLimit = 512

func printLetter(w io.Writer, e dlq.Entry, full bool) {
	r := e.Record
	p, _ := dlq.Header(r, dlq.HeaderSourcePartition)
	o, _ := dlq.Header(r, dlq.HeaderSourceOffset)
	fmt.Fprintf(w, "dead letter from %s (--source-offsets %s:%s)\n", e.Source(), p, o)
	fmt.Fprintf(w, "  kept at %s, written %s\n", e.Place(), r.Timestamp.UTC().Format(time.RFC3339Nano))
	if e.Kept != "" {
		fmt.Fprintf(w, "  kept there because %s\n", render([]byte(e.Kept), full))
	}
	for _, rp := range e.Replays {
		fmt.Fprintf(w, "  replayed %s as %s\n", rp.At.UTC().Format(time.RFC3339Nano), rp.As)
	}
	for _, h := range r.Headers {
		fmt.Fprintf(w, "  %s: %s\n", h.Key, render(h.Value, full))
	}
	if r.Key != nil {
		fmt.Fprintf(w, "  key: %s\n", render(r.Key, full))
	}
	fmt.Fprintf(w, "  value (%d bytes): %s\n\n", len(r.Value), render(r.Value, full))
}

// render prints a header, key or value for a terminal (see escape), cut
// at showLimit characters unless full. A nil value (a tombstone) is
// (null).
func render(b []byte, full bool) string {
	if b == nil {
		return "(null)"
	}
	limit := showLimit
	if full {
		limit = -1
	}
	text, note := escape(b, limit)
	if note != "" && strings.Contains(note, "shown]") && !full {
		note += " (--full prints all)"
	}
	return text + note
}

type dlqReplayCmd struct {
	dlqFlags
	DryRun     bool `name:"dry-run" help:"Show what would be replayed; send nothing."`
	Force      bool `name:"force" help:"Replay dead letters that were replayed already, too."`
	MaxReplays int  `name:"max-replays" default:"3" help:"Do not replay a message that was replayed this many times already."`
}

func (c *dlqReplayCmd) Help() string {
	return `Replays the dead letters that match the filters onto the input topic,
with their original key, value and headers. Fix the cause first (a producer,
a limit, a table constraint): a message that fails again is dead-lettered
again with its replay count, and is not replayed past --max-replays.

Each replay is recorded by a marker in the dead-letter topic (a record with
an empty value and the header notifyd.replayed.letter), so a dead letter
that was replayed already is not replayed again unless --force; the
refusal says when it was replayed. A message without an id keeps the id
derived from where it first arrived, so replaying it twice still makes one
row.

Examples:
  notifyd dlq replay --class store --dry-run
  notifyd dlq replay --class store
  notifyd dlq replay --source-offsets 0:100-200
  notifyd dlq replay --source-offsets 0:150 --force`
}

func (c *dlqReplayCmd) validate() error {
	var errs []error
	if c.MaxReplays < 1 {
		errs = append(errs, fmt.Errorf("--max-replays: must be at least 1, got %d", c.MaxReplays))
	}
	return errors.Join(c.dlqFlags.validate(), errors.Join(errs...))
}

func (c *dlqReplayCmd) Run(ctx context.Context) error {
	entries, err := c.read(ctx)
	if err != nil {
		return err
	}
	var todo []dlq.Entry
	var out []*kgo.Record
	atLimit, already := 0, 0
	for _, e := range entries {
		if last, ok := e.LastReplay(); ok && !c.Force {
			already++
			fmt.Fprintf(os.Stderr, "skipping %s (kept at %s): replayed %s as %s%s; --force replays it again\n",
				e.Source(), e.Place(), last.At.UTC().Format(time.RFC3339), last.As, times(len(e.Replays)))
			continue
		}
		r, err := dlq.ReplayRecord(c.Topic, e.Record, c.MaxReplays)
		if errors.Is(err, dlq.ErrReplayLimit) {
			atLimit++
			fmt.Fprintf(os.Stderr, "skipping %s (kept at %s): %v\n", e.Source(), e.Place(), err)
			continue
		}
		if err != nil {
			return err
		}
		todo = append(todo, e)
		out = append(out, r)
	}
	skipped := fmt.Sprintf("%d skipped at the replay limit, %d replayed already", atLimit, already)
	if c.DryRun {
		fmt.Fprintf(c.stdout(), "dry run: would replay %d dead letters onto %s (%s)\n", len(out), c.Topic, skipped)
		return printList(c.stdout(), c.dlqTopic(), entries)
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
		// The markers follow the replays they record: a failure between
		// the two can at worst let a later run replay these again, never
		// mark as replayed what was not.
		now := time.Now()
		markers := make([]*kgo.Record, len(part))
		for j, r := range part {
			markers[j] = dlq.ReplayMarker(c.dlqTopic(), todo[i+j], r, now)
		}
		if err := cl.ProduceSync(ctx, markers...).FirstErr(); err != nil {
			return fmt.Errorf("replayed %d of %d, but could not record the last %d as replayed in %s (a later replay would send them again): %w",
				done+len(part), len(out), len(part), c.dlqTopic(), err)
		}
		done += len(part)
		fmt.Fprintf(os.Stderr, "\rreplayed %d/%d", done, len(out))
	}
	if len(out) > 0 {
		fmt.Fprintln(os.Stderr)
	}
	fmt.Fprintf(c.stdout(), "replayed %d dead letters onto %s; %s\n", done, c.Topic, skipped)
	return nil
}

// times says how often a letter was replayed, when more than once.
func times(n int) string {
	if n < 2 {
		return ""
	}
	return fmt.Sprintf(" (%d times; that is the last)", n)
}
