package dlq

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// HeaderReplayOf names the original source ("topic/partition/offset") of a
// replayed message, so that a message without an id keeps the id derived
// from where it first arrived, however often it is replayed.
const HeaderReplayOf = "notifyd.replay.of"

// Origin returns the original source coordinates of a replayed record.
func Origin(r *kgo.Record) (topic string, partition int32, offset int64, ok bool) {
	v, found := Header(r, HeaderReplayOf)
	if !found {
		return "", 0, 0, false
	}
	i := strings.LastIndexByte(v, '/')
	if i <= 0 {
		return "", 0, 0, false
	}
	j := strings.LastIndexByte(v[:i], '/')
	if j <= 0 {
		return "", 0, 0, false
	}
	p, err1 := strconv.ParseInt(v[j+1:i], 10, 32)
	o, err2 := strconv.ParseInt(v[i+1:], 10, 64)
	if err1 != nil || err2 != nil {
		return "", 0, 0, false
	}
	return v[:j], int32(p), o, true
}

// Entry is a dead letter as notifyd dlq reads it, with what is known of
// its replays. (The dead-letter topic is one place letters are read from;
// another place, such as a table, yields Entries too.)
type Entry struct {
	// Record is the dead letter as written: key, value and headers. Its
	// Topic, Partition and Offset are where it is kept.
	Record *kgo.Record
	// Replays are the earlier replays of this letter, oldest first.
	Replays []Replay
	// Kept is why the table keeps the letter instead of the topic (the
	// topic refused it for good); empty for a letter of the topic and for
	// one the relay has yet to publish.
	Kept string
}

// Place names where the letter is kept: "topic/partition/offset".
func (l Entry) Place() string { return place(l.Record) }

// Source names where the letter's message was read: "topic/partition/offset"
// of the input topic, from its source headers.
func (l Entry) Source() string {
	t, _ := Header(l.Record, HeaderSourceTopic)
	p, _ := Header(l.Record, HeaderSourcePartition)
	o, _ := Header(l.Record, HeaderSourceOffset)
	return t + "/" + p + "/" + o
}

// LastReplay is the latest replay of the letter, if any.
func (l Entry) LastReplay() (Replay, bool) {
	if len(l.Replays) == 0 {
		return Replay{}, false
	}
	return l.Replays[len(l.Replays)-1], true
}

func place(r *kgo.Record) string {
	return r.Topic + "/" + strconv.FormatInt(int64(r.Partition), 10) + "/" + strconv.FormatInt(r.Offset, 10)
}

// Replay is one replay of a dead letter, as its marker records it.
type Replay struct {
	At time.Time // when it was replayed
	As string    // where the replayed message went: "topic/partition/offset"
}

// Header names of a replay marker. After replaying a dead letter,
// notifyd dlq replay writes a marker into the dead-letter topic: a record
// with an empty value and these headers, and none of a dead letter's. It
// lives in the same topic as the letter, so it is kept at least as long as
// the letter it is about, and every reader of the letters finds it.
const (
	// HeaderReplayedLetter names the letter replayed: "topic/partition/offset"
	// in the dead-letter topic.
	HeaderReplayedLetter = "notifyd.replayed.letter"
	// HeaderReplayedAt is when it was replayed (RFC 3339).
	HeaderReplayedAt = "notifyd.replayed.at"
	// HeaderReplayedAs is where the replayed message went:
	// "topic/partition/offset" in the input topic.
	HeaderReplayedAs = "notifyd.replayed.as"
)

// IsReplayMarker reports whether r, read from a dead-letter topic, is a
// replay marker rather than a dead letter.
func IsReplayMarker(r *kgo.Record) bool {
	_, ok := Header(r, HeaderReplayedLetter)
	return ok
}

// ReplayMarker builds the marker, for dead-letter topic topic, recording
// that l was replayed at at as the record as (produced, so its partition
// and offset are known).
func ReplayMarker(topic string, l Entry, as *kgo.Record, at time.Time) *kgo.Record {
	return &kgo.Record{
		Topic: topic,
		Key:   []byte(l.Place()),
		Headers: []kgo.RecordHeader{
			{Key: HeaderReplayedLetter, Value: []byte(l.Place())},
			{Key: HeaderReplayedAt, Value: []byte(at.UTC().Format(time.RFC3339Nano))},
			{Key: HeaderReplayedAs, Value: []byte(place(as))},
		},
	}
}

// ReadTopic reads every dead letter of the dead-letter topic that exists
// now, each with the replays its markers record, in the order read.
func ReadTopic(ctx context.Context, cl *kgo.Client, topic string) ([]Entry, error) {
	var letters []Entry
	replays := map[string][]Replay{}
	err := ReadAll(ctx, cl, topic, func(r *kgo.Record) error {
		if !addReplay(replays, r) {
			letters = append(letters, Entry{Record: r})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	attachReplays(letters, replays)
	return letters, nil
}

// addReplay records r in replays, by the place of the letter it replayed,
// if it is a replay marker, and says whether it was.
func addReplay(replays map[string][]Replay, r *kgo.Record) bool {
	if !IsReplayMarker(r) {
		return false
	}
	of, _ := Header(r, HeaderReplayedLetter)
	rp := Replay{At: r.Timestamp}
	if v, ok := Header(r, HeaderReplayedAt); ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			rp.At = t
		}
	}
	rp.As, _ = Header(r, HeaderReplayedAs)
	replays[of] = append(replays[of], rp)
	return true
}

// attachReplays gives each entry its replays, oldest first.
func attachReplays(entries []Entry, replays map[string][]Replay) {
	for i := range entries {
		rs := replays[entries[i].Place()]
		slices.SortStableFunc(rs, func(a, b Replay) int { return a.At.Compare(b.At) })
		entries[i].Replays = rs
	}
}

// Filter selects dead letters. Zero fields select everything.
type Filter struct {
	Class      string    // decode, validate or store
	Since      time.Time // dead letters written at or after
	Until      time.Time // dead letters written before
	Partition  int32     // source partition, when HasOffsets
	From, To   int64     // source offsets [From, To], when HasOffsets
	HasOffsets bool
}

// Match reports whether the dead letter r passes the filter.
func (f Filter) Match(r *kgo.Record) bool {
	if f.Class != "" {
		if c, _ := Header(r, HeaderClass); c != f.Class {
			return false
		}
	}
	if !f.Since.IsZero() && r.Timestamp.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.Timestamp.Before(f.Until) {
		return false
	}
	if f.HasOffsets {
		p, _ := Header(r, HeaderSourcePartition)
		o, _ := Header(r, HeaderSourceOffset)
		pi, err1 := strconv.ParseInt(p, 10, 32)
		oi, err2 := strconv.ParseInt(o, 10, 64)
		if err1 != nil || err2 != nil || int32(pi) != f.Partition || oi < f.From || oi > f.To {
			return false
		}
	}
	return true
}

// ReadAll reads every record of topic that exists now, from the start of
// each partition to its current end, and calls fn for each. It joins no
// group and commits nothing.
func ReadAll(ctx context.Context, cl *kgo.Client, topic string, fn func(*kgo.Record) error) error {
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	if err := ends.Error(); err != nil {
		return fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("list start offsets of %s: %w", topic, err)
	}
	want := map[int32]int64{}
	offsets := map[string]map[int32]kgo.Offset{topic: {}}
	ends.Each(func(o kadm.ListedOffset) {
		start := int64(0)
		if s, ok := starts.Lookup(topic, o.Partition); ok {
			start = s.Offset
		}
		if o.Offset > start {
			want[o.Partition] = o.Offset
			offsets[topic][o.Partition] = kgo.NewOffset().At(start)
		}
	})
	if len(want) == 0 {
		return nil
	}
	cl.AddConsumePartitions(offsets)
	defer cl.RemoveConsumePartitions(map[string][]int32{topic: keys(want)})
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return fmt.Errorf("read %s: %w", topic, ferr)
		}
		var cbErr error
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := want[r.Partition]
			if !ok || cbErr != nil {
				return
			}
			if r.Offset >= end-1 {
				delete(want, r.Partition)
			}
			if r.Offset < end {
				cbErr = fn(r)
			}
		})
		if cbErr != nil {
			return cbErr
		}
	}
	return nil
}

func keys(m map[int32]int64) []int32 {
	out := make([]int32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Group is dead letters of one class with the same kind of reason.
type Group struct {
	Class  string
	Reason string // the reason with its particular values masked
	Count  int
	Newest time.Time
	// Example is the full reason of the newest dead letter in the group.
	Example string
}

// reasonPart matches, in a reason, what reasonKind keeps or masks: an
// identifier PostgreSQL names (relation, constraint, column, table, index)
// or a SQLSTATE, which say what kind of failure it is and are kept; a
// quoted value; a number. Hex comes before decimal, or the 0 of " 0xff"
// would be taken for a number and "xff" left unmasked.
var reasonPart = regexp.MustCompile(`(?:relation|constraint|column|table|index) "(?:[^"\\]|\\.)*"|SQLSTATE [0-9A-Z]{5}|` +
	`"(?:[^"\\]|\\.)*"|(?:^|[\s(])(?:0x[0-9a-f]+|\d+)|0x[0-9a-f]+`)

// reasonKind masks the particular values of a reason (quoted values after
// the first, which names the field, and numbers) so that alike reasons
// group together; the names of database objects and SQLSTATEs are kept.
func reasonKind(reason string) string {
	n := 0
	return reasonPart.ReplaceAllStringFunc(reason, func(s string) string {
		switch c := s[0]; {
		case c == '"':
			n++
			if n == 1 {
				return s
			}
			return `"…"`
		case c >= '0' && c <= '9':
			return "N"
		case c == ' ' || c == '(' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			return s[:1] + "N" // keep the separator
		}
		return s // a database object's name, a SQLSTATE
	})
}

// Summarize groups dead letters by class and kind of reason, newest first.
func Summarize(recs []*kgo.Record) []Group {
	idx := map[[2]string]*Group{}
	for _, r := range recs {
		class, _ := Header(r, HeaderClass)
		reason, _ := Header(r, HeaderError)
		k := [2]string{class, reasonKind(reason)}
		g := idx[k]
		if g == nil {
			g = &Group{Class: class, Reason: k[1]}
			idx[k] = g
		}
		g.Count++
		if !r.Timestamp.Before(g.Newest) {
			g.Newest, g.Example = r.Timestamp, reason
		}
	}
	out := make([]Group, 0, len(idx))
	for _, g := range idx {
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Newest.Equal(out[j].Newest) {
			return out[i].Newest.After(out[j].Newest)
		}
		return out[i].Reason < out[j].Reason
	})
	return out
}

// ErrReplayLimit is returned by ReplayRecord for a dead letter that was
// replayed as often as the limit allows.
var ErrReplayLimit = fmt.Errorf("replay limit reached")

// ReplayRecord builds the input record that replays dead letter d onto
// topic: the original key, value and record time, the original headers
// without notifyd's, the replay count plus one, and the original source. It refuses
// a dead letter already replayed limit times, so that a message that keeps
// failing is not replayed in a loop.
func ReplayRecord(topic string, d *kgo.Record, limit int) (*kgo.Record, error) {
	n := 0
	if v, ok := Header(d, HeaderReplays); ok {
		n, _ = strconv.Atoi(v)
	}
	if n >= limit {
		return nil, fmt.Errorf("%w: replayed %d times already", ErrReplayLimit, n)
	}
	origin, ok := Header(d, HeaderReplayOf)
	if !ok {
		t, _ := Header(d, HeaderSourceTopic)
		p, _ := Header(d, HeaderSourcePartition)
		o, _ := Header(d, HeaderSourceOffset)
		origin = t + "/" + p + "/" + o
	}
	r := &kgo.Record{Topic: topic, Key: d.Key, Value: d.Value}
	// Keep the original record time: it is a message's created_at when the
	// message has none.
	if ts, ok := Header(d, HeaderSourceTimestamp); ok {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			r.Timestamp = t
		}
	}
	for _, h := range d.Headers {
		if isOwn(h.Key) || h.Key == HeaderReplayOf {
			continue
		}
		r.Headers = append(r.Headers, h)
	}
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: HeaderReplays, Value: []byte(strconv.Itoa(n + 1))},
		kgo.RecordHeader{Key: HeaderReplayOf, Value: []byte(origin)},
	)
	return r, nil
}
