package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
)

const (
	inputTopic = "notifications"
	dlqTopic   = "notifications.dlq"
	partitions = 3
)

// world is what a test runs notifyd against: an in-process kfake cluster
// with the input and dead-letter topics, a fresh database schema, a
// producer, and the record of everything sent.
type world struct {
	t     testing.TB
	addrs []string
	url   string
	pool  *pgxpool.Pool
	prod  *kgo.Client
	gen   *generator

	mu      sync.Mutex
	valid   map[string]*expected // by id
	invalid map[srcPos]invalidMsg
	resent  int // valid messages sent again with the same id (producer retries)
	// noResend turns producer retries off, so that each row has one
	// position (see checkPrefix).
	noResend bool
}

// srcPos is a record's place in the input topic.
type srcPos struct {
	partition int32
	offset    int64
}

// expected is the row a valid message must become.
type expected struct {
	id, userID, eventType, title, body string
	data                               []byte // as sent; nil when absent or null
	createdAt                          time.Time

	pos      srcPos // where it was first sent
	value    []byte // the record value, for resending
	resend   bool   // has an id and created_at: a resend is the same row
	derived  bool   // the id is derived from the record's position
	recordTS bool   // created_at is the record's timestamp
}

// invalidMsg is a message that must reach the dead-letter topic.
type invalidMsg struct {
	kind  string
	value []byte
}

func newWorld(t testing.TB, seed uint64) *world {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, inputTopic, dlqTopic))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	w := &world{
		t:       t,
		addrs:   c.ListenAddrs(),
		url:     pgtest.Schema(t),
		gen:     newGenerator(seed),
		valid:   map[string]*expected{},
		invalid: map[srcPos]invalidMsg{},
	}
	w.pool, err = pgxpool.New(context.Background(), w.url)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(w.pool.Close)
	w.prod, err = kgo.NewClient(kgo.SeedBrokers(w.addrs...), kgo.DefaultProduceTopic(inputTopic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.prod.Close)
	return w
}

// runArgs are the arguments of `notifyd run` against w, then extra.
func (w *world) runArgs(group string, extra ...string) []string {
	return append([]string{"run",
		"--brokers", strings.Join(w.addrs, ","),
		"--database-url", w.url,
		"--metrics-addr", "",
		"--group", group,
		"--session-timeout", "6s",
	}, extra...)
}

// produce sends n messages, about invalidShare of them invalid, to random
// partitions, and records what each must become. It returns the number of
// valid messages sent. It may be called from any goroutine.
func (w *world) produce(ctx context.Context, n int, invalidShare float64) (int, error) {
	type pending struct {
		exp *expected
		inv invalidMsg
	}
	recs := make([]*kgo.Record, n)
	meta := make([]pending, n)
	w.mu.Lock()
	for i := range recs {
		part := int32(w.gen.rng.IntN(partitions))
		// Kafka keeps milliseconds; an explicit timestamp makes the
		// created_at of messages without one predictable.
		ts := time.UnixMilli(time.Now().UnixMilli() - int64(w.gen.rng.IntN(86_400_000)))
		r := &kgo.Record{Topic: inputTopic, Partition: part, Timestamp: ts}
		switch {
		case w.gen.rng.Float64() < invalidShare:
			meta[i].inv = w.gen.invalid()
			r.Value = meta[i].inv.value
			if r.Value == nil {
				r.Key = []byte("tombstone") // a null value, not an empty one
			}
		case !w.noResend && w.gen.rng.IntN(40) == 0 && w.resendable() != nil:
			// A producer's retry: the same message again, same id.
			meta[i].exp = w.resendable()
			r.Value = meta[i].exp.value
		default:
			meta[i].exp = w.gen.valid()
			r.Value = meta[i].exp.value
		}
		if w.gen.rng.IntN(4) == 0 {
			r.Key = []byte("user-" + strconv.Itoa(w.gen.rng.IntN(100)))
		}
		recs[i] = r
	}
	w.mu.Unlock()

	if err := w.prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return 0, err
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	valid := 0
	for i, r := range recs {
		m := meta[i]
		if m.exp == nil {
			w.invalid[srcPos{r.Partition, r.Offset}] = m.inv
			continue
		}
		valid++
		if m.exp.id != "" {
			if _, ok := w.valid[m.exp.id]; ok {
				w.resent++
				continue
			}
		}
		m.exp.pos = srcPos{r.Partition, r.Offset}
		if m.exp.derived {
			m.exp.id = notification.DerivedID(inputTopic, r.Partition, r.Offset).String()
		}
		if m.exp.recordTS {
			m.exp.createdAt = r.Timestamp.UTC().Truncate(time.Microsecond)
		}
		w.valid[m.exp.id] = m.exp
	}
	return valid, nil
}

// resendable returns an already sent message whose resend is the same row.
// w.mu is held.
func (w *world) resendable() *expected {
	for _, e := range w.valid { // map order: random enough
		if e.resend {
			return e
		}
	}
	return nil
}

// mustProduce is produce for the test goroutine.
func (w *world) mustProduce(n int, invalidShare float64) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.produce(ctx, n, invalidShare); err != nil {
		w.t.Fatalf("produce: %v", err)
	}
}

func (w *world) wantRows() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.valid)
}

func (w *world) count() int {
	w.t.Helper()
	var n int
	err := w.pool.QueryRow(context.Background(), "SELECT count(*) FROM notifications").Scan(&n)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") {
			return 0 // not migrated yet
		}
		w.t.Fatalf("count rows: %v", err)
	}
	return n
}

// endOffsets are the input partitions' end offsets.
func (w *world) endOffsets() map[int32]int64 {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(w.prod).ListEndOffsets(ctx, inputTopic)
	if err != nil {
		w.t.Fatalf("list end offsets: %v", err)
	}
	out := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// storedOffsets are the positions notifyd committed in the database.
func (w *world) storedOffsets(group string) map[int32]int64 {
	w.t.Helper()
	rows, err := w.pool.Query(context.Background(),
		"SELECT partition, next_offset FROM notifyd_offsets WHERE consumer_group = $1 AND topic = $2", group, inputTopic)
	if err != nil {
		w.t.Fatalf("read offsets: %v", err)
	}
	defer rows.Close()
	out := map[int32]int64{}
	for rows.Next() {
		var p int32
		var o int64
		if err := rows.Scan(&p, &o); err != nil {
			w.t.Fatal(err)
		}
		out[p] = o
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	return out
}

// waitDrained waits until every valid message sent has a row and the
// stored positions reach the end of every partition.
func (w *world) waitDrained(group string, d time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	ends := w.endOffsets()
	want := w.wantRows()
	for {
		n := w.count()
		if n > want {
			w.t.Fatalf("table holds %d rows, more than the %d valid messages sent", n, want)
		}
		if n == want && reflect.DeepEqual(w.storedOffsets(group), ends) {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("after %s: %d of %d rows, stored offsets %v, end offsets %v", d, n, want, w.storedOffsets(group), ends)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkTable asserts that the table holds exactly one row per valid message
// sent, with exactly its content, and nothing else.
func (w *world) checkTable() {
	w.t.Helper()
	rows, err := w.pool.Query(context.Background(),
		"SELECT id::text, user_id::text, event_type, title, body, data::text, created_at FROM notifications")
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[string]bool{}
	bad := 0
	for rows.Next() {
		var id, userID, eventType, title, body string
		var data *string
		var createdAt time.Time
		if err := rows.Scan(&id, &userID, &eventType, &title, &body, &data, &createdAt); err != nil {
			w.t.Fatal(err)
		}
		seen[id] = true
		e, ok := w.valid[id]
		var problem string
		switch {
		case !ok:
			problem = "no valid message has this id"
		case userID != e.userID:
			problem = fmt.Sprintf("user_id: got %s, want %s", userID, e.userID)
		case eventType != e.eventType:
			problem = fmt.Sprintf("event_type: got %q, want %q", eventType, e.eventType)
		case title != e.title:
			problem = fmt.Sprintf("title: got %q, want %q", title, e.title)
		case body != e.body:
			problem = fmt.Sprintf("body: got %q, want %q", body, e.body)
		case !createdAt.Equal(e.createdAt):
			problem = fmt.Sprintf("created_at: got %s, want %s", createdAt.UTC().Format(time.RFC3339Nano), e.createdAt.Format(time.RFC3339Nano))
		case !sameJSON(data, e.data):
			problem = fmt.Sprintf("data: got %v, want %s", deref(data), e.data)
		}
		if problem != "" {
			bad++
			if bad <= 10 {
				w.t.Errorf("row %s: %s", id, problem)
			}
		}
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	missing := 0
	for id := range w.valid {
		if !seen[id] {
			missing++
			if missing <= 10 {
				w.t.Errorf("row %s missing", id)
			}
		}
	}
	if bad > 0 || missing > 0 {
		w.t.Fatalf("table: %d rows, %d wrong, %d missing; want %d rows", len(seen), bad, missing, len(w.valid))
	}
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

// sameJSON reports whether the stored jsonb is the JSON sent: jsonb keeps
// neither whitespace nor key order, so they are compared as values.
func sameJSON(got *string, want []byte) bool {
	if got == nil || want == nil {
		return got == nil && want == nil
	}
	var a, b any
	if json.Unmarshal([]byte(*got), &a) != nil || json.Unmarshal(want, &b) != nil {
		return false
	}
	return reflect.DeepEqual(a, b)
}

// checkOffsets asserts that the stored positions are the partitions' ends.
func (w *world) checkOffsets(group string) {
	w.t.Helper()
	got, want := w.storedOffsets(group), w.endOffsets()
	if !reflect.DeepEqual(got, want) {
		w.t.Fatalf("stored offsets: got %v, want the end offsets %v", got, want)
	}
}

// checkDeadLetters asserts that every invalid message sent is in the
// dead-letter topic, unchanged, with its source headers, and that nothing
// else is. It returns how many dead letters were duplicates.
func (w *world) checkDeadLetters() (dups int) {
	w.t.Helper()
	w.mu.Lock()
	want := maps.Clone(w.invalid)
	w.mu.Unlock()
	cl, err := kgo.NewClient(kgo.SeedBrokers(w.addrs...), kgo.ConsumeTopics(dlqTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		w.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, dlqTopic)
	if err != nil {
		w.t.Fatalf("list dead-letter end offsets: %v", err)
	}
	total := int64(0)
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })

	got := map[srcPos]int{}
	var read int64
	for read < total && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			read++
			h := func(k string) string { v, _ := dlq.Header(r, k); return v }
			part, err1 := strconv.ParseInt(h(dlq.HeaderSourcePartition), 10, 32)
			off, err2 := strconv.ParseInt(h(dlq.HeaderSourceOffset), 10, 64)
			if err1 != nil || err2 != nil || h(dlq.HeaderSourceTopic) != inputTopic {
				w.t.Errorf("dead letter at %d/%d: bad source headers %v", r.Partition, r.Offset, r.Headers)
				return
			}
			pos := srcPos{int32(part), off}
			inv, ok := want[pos]
			if !ok {
				w.t.Errorf("dead letter of %d/%d: no invalid message was sent there (value %q, error %q)",
					pos.partition, pos.offset, r.Value, h(dlq.HeaderError))
				return
			}
			if !bytes.Equal(r.Value, inv.value) {
				w.t.Errorf("dead letter of %d/%d (%s): value got %q, want %q", pos.partition, pos.offset, inv.kind, r.Value, inv.value)
			}
			if c := h(dlq.HeaderClass); c != "decode" && c != "validate" {
				w.t.Errorf("dead letter of %d/%d (%s): class got %q, want decode or validate", pos.partition, pos.offset, inv.kind, c)
			}
			if h(dlq.HeaderError) == "" {
				w.t.Errorf("dead letter of %d/%d (%s): no %s header", pos.partition, pos.offset, inv.kind, dlq.HeaderError)
			}
			got[pos]++
		})
	}
	if read < total {
		w.t.Fatalf("read %d of the %d dead letters", read, total)
	}
	// A letter not yet published (its relay was stopped) or refused by the
	// topic is in the dead-letter table: dead-lettered all the same.
	rows, err := w.pool.Query(ctx, `SELECT source_partition, source_offset, value, class FROM notifyd_dead_letters
		WHERE source_topic = $1`, inputTopic)
	if err != nil {
		w.t.Fatalf("read the dead-letter table: %v", err)
	}
	inTable := 0
	for rows.Next() {
		var pos srcPos
		var value []byte
		var class string
		if err := rows.Scan(&pos.partition, &pos.offset, &value, &class); err != nil {
			w.t.Fatal(err)
		}
		inTable++
		inv, ok := want[pos]
		if !ok {
			w.t.Errorf("dead letter of %d/%d in the table: no invalid message was sent there", pos.partition, pos.offset)
			continue
		}
		if !bytes.Equal(value, inv.value) || (class != "decode" && class != "validate") {
			w.t.Errorf("dead letter of %d/%d in the table: got %q (%s), want %q", pos.partition, pos.offset, value, class, inv.value)
		}
		got[pos]++
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	if inTable > 0 {
		w.t.Logf("%d dead letters in the table notifyd_dead_letters, %d in the topic", inTable, read)
	}
	missing := 0
	for pos, inv := range want {
		if got[pos] == 0 {
			missing++
			if missing <= 10 {
				w.t.Errorf("invalid message at %d/%d (%s) is not in the dead-letter topic", pos.partition, pos.offset, inv.kind)
			}
		}
		dups += max(0, got[pos]-1)
	}
	if missing > 0 {
		w.t.Fatalf("%d of %d invalid messages missing from the dead-letter topic", missing, len(want))
	}
	return dups
}

// generator makes valid and invalid messages of varied shape.
type generator struct {
	rng *rand.Rand
	n   int
}

func newGenerator(seed uint64) *generator {
	return &generator{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

var texts = []string{
	"Hello",
	"héllo wörld — ünïcödé",
	"日本語のテキスト、中文字符",
	"emoji 😀🎉 family 👩‍👩‍👧 flag 🇫🇷",
	"עברית ו-العربية RTL",
	"e\u0301 combining, Å vs A\u030a",
	"tab\tnewline\nquote\"backslash\\slash/",
	"<b>html</b> & ampersand",
	"line\u2028separator\u2029paragraph",
	"zero\u200bwidth\ufeffbom",
	"math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and \U0010FFFD",
	"control \u0001\u001f\u007f chars",
	"replacement char \ufffd is valid",
}

var eventTypes = []string{"comment.created", "like", "follow:new", "order_shipped-v2", "A.b_c:d-e.0", strings.Repeat("x", 64)}

var dataObjects = []string{
	`{}`,
	`{"n": 42, "ok": true, "tags": ["a", "b"], "nested": {"x": null, "y": [1, 2.5, -3, 1e3]}}`,
	`{"ключ": "значение", "emoji": "😀", "esc": "\u00e9\n\"q\"\ud83d\ude00", "url": "https:\/\/example.com\/a?b=c&d"}`,
	"{\n  \"pretty\" : [ {\"a\":1} , {\"b\":[ ]} ],\n\t\"empty\":\"\"\n}",
	`{"deep":{"a":{"b":{"c":{"d":{"e":{"f":[[[["deep"]]]]}}}}}}}`,
	`{"big": 12345678901234567, "neg": -0.000001, "zero": 0}`,
}

// valid returns a valid message and the row it must become.
func (g *generator) valid() *expected {
	g.n++
	r := g.rng
	e := &expected{
		userID:    uuid.NewString(),
		eventType: eventTypes[r.IntN(len(eventTypes))],
		title:     fmt.Sprintf("#%d %s", g.n, texts[r.IntN(len(texts))]),
		body:      texts[r.IntN(len(texts))] + " " + texts[r.IntN(len(texts))],
	}
	switch r.IntN(20) {
	case 0:
		e.body = ""
	case 1:
		e.title = strings.Repeat("é", 256) // the longest title, in characters
	case 2:
		e.body = strings.Repeat("ü😀", 2048) // the longest body
	}
	var m []member
	hasID := r.IntN(4) != 0
	if hasID {
		e.id = uuid.NewString()
		m = append(m, member{"id", g.str(e.id)})
	} else {
		e.derived = true
	}
	m = append(m, member{"user_id", g.str(e.userID)}, member{"event_type", g.str(e.eventType)},
		member{"title", g.str(e.title)}, member{"body", g.str(e.body)})
	hasTime := r.IntN(3) != 0
	if hasTime {
		t := time.Date(2020+r.IntN(10), time.Month(1+r.IntN(12)), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1e9), time.UTC)
		var s string
		switch r.IntN(3) {
		case 0:
			s = t.Format(time.RFC3339Nano) // nanoseconds: truncated to µs
		case 1:
			s = t.In(time.FixedZone("", 5*3600+1800)).Format("2006-01-02T15:04:05.000000Z07:00")
		default:
			s = t.In(time.FixedZone("", -8*3600)).Format(time.RFC3339)
		}
		parsed, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			panic(err)
		}
		e.createdAt = parsed.UTC().Truncate(time.Microsecond)
		m = append(m, member{"created_at", g.str(s)})
	} else {
		e.recordTS = true
	}
	switch k := r.IntN(len(dataObjects) + 3); {
	case k < len(dataObjects):
		e.data = []byte(dataObjects[k])
		m = append(m, member{"data", dataObjects[k]})
	case k == len(dataObjects):
		m = append(m, member{"data", "null"})
	case k == len(dataObjects)+1:
		// A large payload just under the 16 KiB limit.
		e.data = []byte(`{"blob":"` + strings.Repeat("z", 16000) + `","i":` + strconv.Itoa(g.n) + `}`)
		m = append(m, member{"data", string(e.data)})
	default:
		// no data
	}
	if r.IntN(5) == 0 {
		m = append(m, member{"schema_version", "2"}, member{"future_field", `{"x":[1,"two"]}`})
	}
	e.resend = hasID && hasTime
	e.value = g.object(m)
	return e
}

type member struct{ name, raw string }

// object joins members in random order with random whitespace.
func (g *generator) object(m []member) []byte {
	g.rng.Shuffle(len(m), func(i, j int) { m[i], m[j] = m[j], m[i] })
	ws := []string{"", " ", "\n  ", "\t"}
	var b strings.Builder
	b.WriteString("{")
	for i, mem := range m {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(ws[g.rng.IntN(len(ws))])
		b.WriteString(g.str(mem.name))
		b.WriteString(":")
		b.WriteString(ws[g.rng.IntN(len(ws))])
		b.WriteString(mem.raw)
	}
	b.WriteString(ws[g.rng.IntN(len(ws))])
	b.WriteString("}")
	return []byte(b.String())
}

// str encodes s as a JSON string in one of three ways: raw UTF-8, Go's
// escaping (HTML characters, U+2028), or every non-ASCII character as \u
// escapes (with surrogate pairs).
func (g *generator) str(s string) string {
	switch g.rng.IntN(3) {
	case 0:
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		return strings.TrimSuffix(b.String(), "\n")
	case 1:
		b, _ := json.Marshal(s)
		return string(b)
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case c < 0x20 || c > 0x7e:
			if c > 0xffff {
				r1, r2 := utf16.EncodeRune(c)
				fmt.Fprintf(&b, `\u%04x\u%04X`, r1, r2)
			} else {
				fmt.Fprintf(&b, `\u%04x`, c)
			}
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// invalid returns a message that breaks a rule.
func (g *generator) invalid() invalidMsg {
	u := uuid.NewString()
	base := func(field, raw string) []byte {
		m := []member{{"user_id", g.str(u)}, {"event_type", `"x"`}, {"title", `"t"`}, {"body", `"b"`}}
		for i := range m {
			if m[i].name == field {
				if raw == "" {
					m = slices.Delete(m, i, i+1)
				} else {
					m[i].raw = raw
				}
				return g.object(m)
			}
		}
		return g.object(append(m, member{field, raw}))
	}
	kinds := []func() invalidMsg{
		func() invalidMsg { return invalidMsg{"empty", []byte{}} },
		func() invalidMsg { return invalidMsg{"tombstone", nil} },
		func() invalidMsg { return invalidMsg{"not json", []byte("not json at all")} },
		func() invalidMsg { return invalidMsg{"array", []byte(`[1,2,3]`)} },
		func() invalidMsg { return invalidMsg{"string", []byte(`"just a string"`)} },
		func() invalidMsg { return invalidMsg{"truncated", base("title", `"t"`)[:20]} },
		func() invalidMsg {
			return invalidMsg{"invalid utf-8", []byte(`{"user_id":"` + u + `","event_type":"x","title":"bad ` + "\xff\xfe" + `","body":""}`)}
		},
		func() invalidMsg { return invalidMsg{"no user_id", base("user_id", "")} },
		func() invalidMsg { return invalidMsg{"bad user_id", base("user_id", `"not-a-uuid"`)} },
		func() invalidMsg { return invalidMsg{"nil id", base("id", `"00000000-0000-0000-0000-000000000000"`)} },
		func() invalidMsg { return invalidMsg{"NUL in title", base("title", `"a\u0000b"`)} },
		func() invalidMsg { return invalidMsg{"long title", base("title", `"`+strings.Repeat("é", 257)+`"`)} },
		func() invalidMsg { return invalidMsg{"long body", base("body", `"`+strings.Repeat("b", 4097)+`"`)} },
		func() invalidMsg { return invalidMsg{"bad event_type", base("event_type", `"bad type!"`)} },
		func() invalidMsg { return invalidMsg{"empty event_type", base("event_type", `""`)} },
		func() invalidMsg { return invalidMsg{"bad created_at", base("created_at", `"yesterday"`)} },
		func() invalidMsg { return invalidMsg{"data not object", base("data", `[1,2]`)} },
		func() invalidMsg { return invalidMsg{"data dup key", base("data", `{"a":1,"a":2}`)} },
		func() invalidMsg { return invalidMsg{"data NUL", base("data", `{"a":"\u0000"}`)} },
		func() invalidMsg { return invalidMsg{"lone surrogate", base("body", `"\ud800"`)} },
		func() invalidMsg { return invalidMsg{"title number", base("title", `5`)} },
		func() invalidMsg { return invalidMsg{"empty title", base("title", `""`)} },
	}
	return kinds[g.rng.IntN(len(kinds))]()
}

// testSeed is NOTIFYD_TEST_SEED when set, so that a failure can be replayed,
// or a random seed.
func testSeed(t testing.TB) uint64 {
	if s := os.Getenv("NOTIFYD_TEST_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NOTIFYD_TEST_SEED: %v", err)
		}
		return v
	}
	return rand.Uint64()
}

// durations summarises measured durations.
func durations(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = d.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("min %s, median %s, max %s [%s]", s[0].Round(time.Millisecond),
		s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), strings.Join(parts, " "))
}

// TestCrashKill9ExactlyOnce runs the notifyd binary while messages are
// produced, kills it with SIGKILL at random moments and restarts it, then
// lets it drain and stops it with SIGTERM. Every valid message must be
// exactly one row with exactly its content, the stored positions must be
// the partitions' ends, and every invalid message must be dead-lettered.
func TestCrashKill9ExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary for about a minute; skipped with -short")
	}
	notifydBin(t) // build before the clock starts

	t.Run("static", func(t *testing.T) {
		crashLoop(t, crashRun{group: "crash", instanceID: "crash-1", kills: 10, recoveries: 3})
	})
	t.Run("dynamic", func(t *testing.T) {
		// Without static membership a restarted instance is a new member:
		// the group waits for the dead one's session to expire (6 s) before
		// it hands the partitions over. An instance killed while it waits
		// in a rebalance holds the group up for the rebalance timeout
		// instead (franz-go's default, 60 s), so here each instance is
		// killed 50–700 ms after it got its partitions; set
		// NOTIFYD_TEST_DYNAMIC_ANYTIME=1 to kill at any moment and see
		// that (slow) case.
		anytime := os.Getenv("NOTIFYD_TEST_DYNAMIC_ANYTIME") != ""
		crashLoop(t, crashRun{group: "crash-dyn", kills: 3, recoveries: 1, afterAssigned: !anytime})
	})
}

type crashRun struct {
	group      string
	instanceID string // "" for dynamic membership
	kills      int    // SIGKILLs while producing
	recoveries int    // measured kill → restart → first row cycles after the chaos
	// afterAssigned starts each lifetime's clock when the instance has
	// its partitions rather than when it starts.
	afterAssigned bool
}

func crashLoop(t *testing.T, cr crashRun) {
	seed := testSeed(t)
	t.Logf("seed %d (set NOTIFYD_TEST_SEED to replay)", seed)
	w := newWorld(t, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	args := w.runArgs(cr.group)
	if cr.instanceID != "" {
		args = append(args, "--instance-id", cr.instanceID)
	}
	env := childEnv()
	var daemons []*daemon
	start := func(name string) *daemon {
		d := startDaemon(t, name, env, args...)
		daemons = append(daemons, d)
		return d
	}

	// The producer sends bursts until the kills are done.
	stopProducing := make(chan struct{})
	var prodWG sync.WaitGroup
	var prodErr error
	prodWG.Add(1)
	go func() {
		defer prodWG.Done()
		prng := rand.New(rand.NewPCG(seed, 2))
		for {
			select {
			case <-stopProducing:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, err := w.produce(ctx, 1+prng.IntN(30), 0.06)
			cancel()
			if err != nil {
				prodErr = err
				return
			}
			time.Sleep(time.Duration(prng.IntN(40)) * time.Millisecond)
		}
	}()

	// Chaos: start, let it run 50–700 ms, SIGKILL, again.
	var firstRow []time.Duration
	chaosStart := time.Now()
	for k := range cr.kills {
		d := start(fmt.Sprintf("run %d", k+1))
		before := w.count()
		life := time.Duration(50+rng.IntN(651)) * time.Millisecond
		deadline := d.started.Add(life)
		if cr.afterAssigned {
			l, ok := d.out.waitFor("partitions assigned", 60*time.Second)
			if !ok {
				t.Fatalf("run %d: no partitions assigned within 60s", k+1)
			}
			deadline = l.at.Add(life)
		}
		seen := false
		for time.Now().Before(deadline) {
			if !seen && w.count() > before {
				firstRow = append(firstRow, time.Since(d.started))
				seen = true
			}
			time.Sleep(10 * time.Millisecond)
		}
		d.kill()
		if code := d.state.ExitCode(); code != -1 {
			t.Fatalf("run %d exited by itself with %d before it was killed:\n%s", k+1, code, d.out.tail(40))
		}
	}
	close(stopProducing)
	prodWG.Wait()
	if prodErr != nil {
		t.Fatalf("produce: %v", prodErr)
	}
	t.Logf("chaos: %d kills in %s; %d valid messages (%d resent), %d invalid; rows at the last kill: %d; first new row seen within a lifetime after %s",
		cr.kills, time.Since(chaosStart).Round(time.Millisecond), w.wantRows(), w.resent, len(w.invalid), w.count(), durations(firstRow))

	// Drain, then measure recovery: kill, produce while it is down, restart.
	d := start("drain")
	drainStart := time.Now()
	w.waitDrained(cr.group, 180*time.Second)
	t.Logf("drained %d rows in %s after the last restart", w.wantRows(), time.Since(drainStart).Round(time.Millisecond))
	var recovery, assigned []time.Duration
	for i := range cr.recoveries {
		d.kill()
		before := w.count()
		w.mustProduce(50, 0.1)
		d = start(fmt.Sprintf("recovery %d", i+1))
		for w.count() == before {
			if time.Since(d.started) > 60*time.Second {
				t.Fatalf("recovery %d: no new row 60s after the restart", i+1)
			}
			time.Sleep(5 * time.Millisecond)
		}
		recovery = append(recovery, time.Since(d.started))
		if l, ok := d.out.first("partitions assigned"); ok {
			assigned = append(assigned, l.at.Sub(d.started))
		}
		w.waitDrained(cr.group, 60*time.Second)
	}
	t.Logf("recovery (%s membership): restart → first new row: %s; restart → partitions assigned: %s",
		map[bool]string{true: "static", false: "dynamic"}[cr.instanceID != ""], durations(recovery), durations(assigned))

	// A clean stop.
	stopAt := time.Now()
	d.signal(syscall.SIGTERM)
	code, ok := d.wait(40 * time.Second)
	if !ok {
		t.Fatalf("still running 40s after SIGTERM")
	}
	if code != 0 {
		t.Fatalf("exit code after SIGTERM: got %d, want 0\n%s", code, d.out.tail(30))
	}
	t.Logf("SIGTERM → exit 0 in %s", time.Since(stopAt).Round(time.Millisecond))

	for _, d := range daemons {
		d.checkNoRace()
	}
	w.checkTable()
	w.checkOffsets(cr.group)
	dups := w.checkDeadLetters()
	t.Logf("verified: %d rows exactly, offsets %v, %d invalid messages dead-lettered (%d duplicate dead letters)",
		w.wantRows(), w.storedOffsets(cr.group), len(w.invalid), dups)
}

// checkPrefix asserts that the table holds exactly the valid messages
// below the stored positions: what a stop left behind is consistent, with
// nothing written past a stored position and nothing below it missing. The
// world must have been made with noResend.
func (w *world) checkPrefix(group string) (stored int) {
	w.t.Helper()
	pos := w.storedOffsets(group)
	ids := map[string]bool{}
	rows, err := w.pool.Query(context.Background(), "SELECT id::text FROM notifications")
	if err != nil {
		w.t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			w.t.Fatal(err)
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, e := range w.valid {
		below := e.pos.offset < pos[e.pos.partition]
		if below != ids[id] {
			w.t.Fatalf("message at %d/%d (stored position %d): row present %v, want %v",
				e.pos.partition, e.pos.offset, pos[e.pos.partition], ids[id], below)
		}
		if below {
			stored++
		}
	}
	if len(ids) != stored {
		w.t.Fatalf("table holds %d rows, want the %d below the stored positions %v", len(ids), stored, pos)
	}
	return stored
}

// lockTable takes an exclusive lock on the notifications table, so that
// notifyd's writes wait; release lets them through.
func (w *world) lockTable() (release func()) {
	w.t.Helper()
	ctx := context.Background()
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE"); err != nil {
		w.t.Fatalf("lock table: %v", err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Rollback(ctx) }) }
	w.t.Cleanup(release)
	return release
}

// waitLockWaiter waits until a session waits for the table lock, on the
// table or one of its partitions (LOCK TABLE locks them too, and the dedupe
// probe reads the partitions by name): a write of notifyd is blocked.
func (w *world) waitLockWaiter(d time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for {
		var n int
		err := w.pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_locks WHERE NOT granted AND relation IN (
				SELECT 'notifications'::regclass UNION ALL SELECT inhrelid FROM pg_inherits WHERE inhparent = 'notifications'::regclass)`).Scan(&n)
		if err != nil {
			w.t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("no write waited for the table lock within %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric reads an unlabelled counter or gauge from a /metrics endpoint. A
// series that is not there fails the test, so that an assertion cannot pass
// on a renamed metric.
func metric(t testing.TB, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("metric %s: no such series at %s/metrics", name, addr)
	return 0
}

// startServing starts notifyd with JSON logs and /metrics on a free port,
// waits until it holds its partitions, and returns it with the metrics
// address.
func (w *world) startServing(t *testing.T, group string, extra ...string) (*daemon, string) {
	t.Helper()
	args := append(w.runArgs(group, "--log-format", "json"), extra...)
	args = append(args, "--metrics-addr", "127.0.0.1:0")
	d := startDaemon(t, "notifyd", childEnv(), args...)
	addr := d.jsonAttr("serving /metrics, /healthz and /readyz", "addr", 60*time.Second)
	if _, ok := d.out.waitFor("partitions assigned", 60*time.Second); !ok {
		t.Fatalf("no partitions assigned within 60s")
	}
	return d, addr
}

// waitConsumed waits until notifyd has read n messages.
func waitConsumed(t testing.TB, addr string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := metric(t, addr, "notifyd_messages_consumed_total")
		if got >= float64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumed %v messages after %s, want %d", got, d, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGracefulShutdownSIGTERM checks the shutdown contract of `notifyd run`:
// SIGTERM stops fetching, writes what is buffered, commits and exits 0; a
// second signal exits at once; the final write is bounded.
func TestGracefulShutdownSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary; skipped with -short")
	}
	notifydBin(t)

	t.Run("stored and mirrored", func(t *testing.T) {
		w := newWorld(t, testSeed(t))
		d, _ := w.startServing(t, "g")
		w.mustProduce(500, 0.05)
		w.waitDrained("g", 60*time.Second)
		at := time.Now()
		d.signal(syscall.SIGTERM)
		code, ok := d.wait(20 * time.Second)
		if !ok || code != 0 {
			t.Fatalf("after SIGTERM: exited %v with code %d, want exit 0 within 20s", ok, code)
		}
		t.Logf("SIGTERM → exit 0 in %s", time.Since(at).Round(time.Millisecond))
		d.checkNoRace()
		w.checkTable()
		w.checkOffsets("g")
		w.checkDeadLetters()
		// The positions are mirrored to Kafka for lag tools.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		offs, err := kadm.NewClient(w.prod).FetchOffsets(ctx, "g")
		if err != nil {
			t.Fatal(err)
		}
		for p, end := range w.endOffsets() {
			o, _ := offs.Lookup(inputTopic, p)
			if o.At != end {
				t.Errorf("kafka committed offset of partition %d: got %d, want %d", p, o.At, end)
			}
		}
	})

	t.Run("mid-stream", func(t *testing.T) {
		// SIGTERM while messages are still arriving: what was read is
		// written, the rest is left for the next run, nothing in between.
		w := newWorld(t, testSeed(t))
		w.noResend = true
		d, _ := w.startServing(t, "g")
		stop := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			for {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := w.produce(ctx, 20, 0.05)
				cancel()
				if err != nil {
					done <- err
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		time.Sleep(700 * time.Millisecond)
		d.signal(syscall.SIGTERM)
		code, ok := d.wait(20 * time.Second)
		close(stop)
		if err := <-done; err != nil {
			t.Fatalf("produce: %v", err)
		}
		if !ok || code != 0 {
			t.Fatalf("after SIGTERM: exited %v with code %d, want exit 0 within 20s", ok, code)
		}
		d.checkNoRace()
		n := w.checkPrefix("g")
		t.Logf("at SIGTERM %d of %d rows were stored, consistently with the stored positions", n, w.wantRows())
		d2 := startDaemon(t, "restart", childEnv(), w.runArgs("g")...)
		w.waitDrained("g", 60*time.Second)
		d2.signal(syscall.SIGTERM)
		if code, ok := d2.wait(20 * time.Second); !ok || code != 0 {
			t.Fatalf("restart after SIGTERM: exited %v with code %d, want 0", ok, code)
		}
		w.checkTable()
		w.checkOffsets("g")
		w.checkDeadLetters()
	})

	t.Run("flushes buffered messages", func(t *testing.T) {
		w := newWorld(t, testSeed(t))
		d, addr := w.startServing(t, "g", "--shutdown-timeout", "10s")
		release := w.lockTable()
		w.mustProduce(300, 0.05)
		waitConsumed(t, addr, 300, 30*time.Second)
		w.waitLockWaiter(10 * time.Second)
		at := time.Now()
		d.signal(syscall.SIGTERM)
		time.Sleep(500 * time.Millisecond)
		if !d.running() {
			t.Fatalf("exited before its buffered messages could be written:\n%s", d.out.tail(20))
		}
		release()
		code, ok := d.wait(20 * time.Second)
		if !ok || code != 0 {
			t.Fatalf("after SIGTERM: exited %v with code %d, want exit 0 within 20s", ok, code)
		}
		t.Logf("SIGTERM with 300 messages buffered behind a locked table → exit 0 in %s (500 ms of it locked)", time.Since(at).Round(time.Millisecond))
		d.checkNoRace()
		w.checkTable()
		w.checkOffsets("g")
		w.checkDeadLetters()
	})

	t.Run("second signal exits at once", func(t *testing.T) {
		w := newWorld(t, testSeed(t))
		w.noResend = true
		// Static membership: the restart below takes the partitions back
		// without waiting for the killed member's session to expire.
		d, addr := w.startServing(t, "g", "--instance-id", "g-1")
		release := w.lockTable()
		w.mustProduce(200, 0.05)
		waitConsumed(t, addr, 200, 30*time.Second)
		w.waitLockWaiter(10 * time.Second)
		d.signal(syscall.SIGTERM)
		time.Sleep(300 * time.Millisecond)
		if !d.running() {
			t.Fatalf("exited while its final write was blocked:\n%s", d.out.tail(20))
		}
		at := time.Now()
		d.signal(syscall.SIGINT)
		code, ok := d.wait(5 * time.Second)
		if !ok {
			t.Fatalf("still running 5s after a second signal")
		}
		if want := exitSignalBase + int(syscall.SIGINT); code != want {
			t.Fatalf("exit code after a second signal (SIGINT): got %d, want %d", code, want)
		}
		if !strings.Contains(d.out.String(), "exiting now") {
			t.Errorf("output does not say it exits at once:\n%s", d.out.tail(10))
		}
		t.Logf("second signal → exit %d in %s", code, time.Since(at).Round(time.Millisecond))
		release()
		w.checkPrefix("g")
		d2 := startDaemon(t, "restart", childEnv(), w.runArgs("g", "--instance-id", "g-1")...)
		w.waitDrained("g", 60*time.Second)
		d2.signal(syscall.SIGTERM)
		if code, ok := d2.wait(20 * time.Second); !ok || code != 0 {
			t.Fatalf("restart after SIGTERM: exited %v with code %d, want 0", ok, code)
		}
		w.checkTable()
		w.checkOffsets("g")
		w.checkDeadLetters()
	})

	t.Run("final write bounded by shutdown timeout", func(t *testing.T) {
		w := newWorld(t, testSeed(t))
		w.noResend = true
		d, addr := w.startServing(t, "g", "--shutdown-timeout", "2s")
		release := w.lockTable()
		w.mustProduce(200, 0)
		waitConsumed(t, addr, 200, 30*time.Second)
		w.waitLockWaiter(10 * time.Second)
		at := time.Now()
		d.signal(syscall.SIGTERM)
		// 2 s for the write, then at most 5 s to mirror offsets and leave.
		code, ok := d.wait(15 * time.Second)
		if !ok {
			t.Fatalf("still running 15s after SIGTERM with --shutdown-timeout 2s")
		}
		took := time.Since(at)
		if code == 0 {
			t.Fatalf("exit code when the final write could not finish: got 0, want non-zero")
		}
		if took < 2*time.Second {
			t.Errorf("gave up the final write after %s, before --shutdown-timeout 2s", took)
		}
		if !strings.Contains(d.out.String(), "not written within 2s") {
			t.Errorf("output does not say what was not written:\n%s", d.out.tail(10))
		}
		t.Logf("SIGTERM with the table locked → exit %d after %s", code, took.Round(time.Millisecond))
		d.checkNoRace()
		release()
		if n := w.checkPrefix("g"); n != 0 {
			t.Errorf("%d rows stored behind a locked table, want 0", n)
		}
		d2 := startDaemon(t, "restart", childEnv(), w.runArgs("g")...)
		w.waitDrained("g", 60*time.Second)
		d2.signal(syscall.SIGTERM)
		if code, ok := d2.wait(20 * time.Second); !ok || code != 0 {
			t.Fatalf("restart after SIGTERM: exited %v with code %d, want 0", ok, code)
		}
		w.checkTable()
		w.checkOffsets("g")
	})
}
