package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
)

// dlqCommand runs `notifyd dlq args...` against e and returns what it
// printed.
func (e *opsEnv) dlqCommand(args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	args = append([]string{"dlq", args[0], "--brokers", e.brokers}, args[1:]...)
	if err := runCommand(ctx, &out, args...); err != nil {
		e.t.Fatalf("notifyd %s: %v\noutput:\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// deadLetters reads the dead letters of the dead-letter topic (not its
// replay markers).
func (e *opsEnv) deadLetters() []*kgo.Record {
	e.t.Helper()
	var out []*kgo.Record
	for _, r := range e.readTopic("notifications.dlq") {
		if !dlq.IsReplayMarker(r) {
			out = append(out, r)
		}
	}
	return out
}

func (e *opsEnv) readTopic(topic string) []*kgo.Record {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.brokers, ",")...))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []*kgo.Record
	if err := dlq.ReadAll(ctx, cl, topic, func(r *kgo.Record) error {
		out = append(out, r)
		return nil
	}); err != nil {
		e.t.Fatalf("read %s: %v", topic, err)
	}
	return out
}

// header is the value of the named header of r, "" when absent.
func header(r *kgo.Record, key string) string {
	v, _ := dlq.Header(r, key)
	return v
}

// rejectedBy returns the dead letter notifyd writes for value, as read from
// partition and offset of the input topic at ts.
func rejectedBy(t *testing.T, value []byte, partition int32, offset int64, ts time.Time) *kgo.Record {
	t.Helper()
	src := &kgo.Record{Topic: "notifications", Partition: partition, Offset: offset, Timestamp: ts.Add(-time.Second),
		Key: []byte("user-" + strconv.FormatInt(offset, 10)), Value: value,
		Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte("00-trace-" + strconv.FormatInt(offset, 10))}}}
	_, err := notification.Decode(value, notification.Source{Topic: src.Topic, Partition: partition, Offset: offset, Timestamp: src.Timestamp}, notification.Limits{})
	var ne *notification.Error
	if !errors.As(err, &ne) {
		t.Fatalf("Decode(%q): got %v, want a rejection", value, err)
	}
	d := dlq.Letter("notifications.dlq", src, string(ne.Class), ne.Error(), 1)
	d.Timestamp = ts
	return d
}

// seedDeadLetters writes six dead letters as notifyd writes them, a second
// apart: two decode (one not UTF-8), three validate, one store, the newest
// last. It returns them with their offsets.
func (e *opsEnv) seedDeadLetters() []*kgo.Record {
	e.t.Helper()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	recs := []*kgo.Record{
		rejectedBy(e.t, []byte("{\xff\xfe}"), 0, 10, at(0)),
		rejectedBy(e.t, []byte(`{"user_id":"abc","event_type":"x","title":"t","body":"b"}`), 1, 11, at(1)),
		rejectedBy(e.t, []byte(`{"user_id":"xyz-42","event_type":"x","title":"t","body":"b"}`), 2, 12, at(2)),
		rejectedBy(e.t, []byte(`[1,2]`), 0, 13, at(3)),
		rejectedBy(e.t, []byte(`{"user_id":"nope","event_type":"x","title":"t","body":"b"}`), 1, 14, at(4)),
	}
	store := &kgo.Record{Topic: "notifications", Partition: 2, Offset: 15, Timestamp: at(4),
		Value: validMessage(uuid.NewString(), "BAD")}
	d := dlq.Letter("notifications.dlq", store, "store",
		`the database refused the row: ERROR: new row for relation "notifications" violates check constraint "no_bad" (SQLSTATE 23514)`, 1)
	d.Timestamp = at(5)
	recs = append(recs, d)
	for i, r := range recs {
		r.Partition = int32(i % 3)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prod, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.brokers, ",")...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer prod.Close()
	if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce dead letters: %v", err)
	}
	return recs
}

func TestDLQListCountsByClassAndReason(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t)
	e.seedDeadLetters()

	out := e.dlqCommand("list")
	t.Logf("notifyd dlq list:\n%s", out)
	lines := strings.Split(out, "\n")
	if want := "6 dead letters in notifications.dlq (decode 2, validate 3, store 1); 0 replayed already"; lines[0] != want {
		t.Errorf("first line: got %q, want %q", lines[0], want)
	}
	// Newest group first; the three bad user ids are one group.
	var rows []string
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) >= 4 && f[0] != "COUNT" {
			rows = append(rows, f[0]+" "+f[1])
		}
	}
	if got, want := strings.Join(rows, ", "), "1 store, 3 validate, 1 decode, 1 decode"; got != want {
		t.Errorf("groups (count class, newest first): got %q, want %q", got, want)
	}
	// The group shows its newest reason as it is, and only that one.
	if !strings.Contains(out, `field "user_id": "nope" is not a UUID`) {
		t.Errorf("list: got\n%s\nwant the newest user_id reason as it is, about \"nope\"", out)
	}
	for _, v := range []string{"abc", "xyz-42"} {
		if strings.Contains(out, `"`+v+`"`) {
			t.Errorf("list: got the value %q in it, want only the newest example of the group", v)
		}
	}

	if got, want := firstLine(e.dlqCommand("list", "--class", "validate")), "3 dead letters in notifications.dlq (decode 0, validate 3, store 0); 0 replayed already"; got != want {
		t.Errorf("list --class validate: got %q, want %q", got, want)
	}
	if got, want := firstLine(e.dlqCommand("list", "--source-offsets", "1:11-14")), "2 dead letters in notifications.dlq (decode 0, validate 2, store 0); 0 replayed already"; got != want {
		t.Errorf("list --source-offsets 1:11-14: got %q, want %q", got, want)
	}
	if got, want := firstLine(e.dlqCommand("list", "--class", "store", "--source-offsets", "0:0-100")), "0 dead letters in notifications.dlq (decode 0, validate 0, store 0); 0 replayed already"; got != want {
		t.Errorf("list --class store --source-offsets 0:0-100: got %q, want %q", got, want)
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func TestDLQShowPrintsEveryHeaderAndTheValue(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t)
	seeded := e.seedDeadLetters()

	out := e.dlqCommand("show", "--last", "0")
	if got := strings.Count(out, "dead letter from notifications/"); got != len(seeded) {
		t.Errorf("show --last 0: got %d dead letters, want %d\n%s", got, len(seeded), out)
	}
	for _, d := range seeded {
		// Each letter's block, from its first line to the blank line.
		head := fmt.Sprintf("written %s\n", d.Timestamp.UTC().Format(time.RFC3339Nano))
		i := strings.Index(out, head)
		if i < 0 {
			t.Errorf("show: no dead letter written at %s in\n%s", d.Timestamp.UTC().Format(time.RFC3339Nano), out)
			continue
		}
		// The letter is named by its source, as --source-offsets selects.
		src := fmt.Sprintf("dead letter from notifications/%s/%s (--source-offsets %[1]s:%[2]s)\n  kept at notifications.dlq/",
			header(d, dlq.HeaderSourcePartition), header(d, dlq.HeaderSourceOffset))
		if !strings.Contains(out[:i], src) {
			t.Errorf("show: got\n%s\nwant the letter written at %s named %q", out, d.Timestamp.UTC().Format(time.RFC3339Nano), src)
		}
		block, _, _ := strings.Cut(out[i:], "\n\n")
		for _, h := range d.Headers {
			want := fmt.Sprintf("  %s: %s\n", h.Key, h.Value)
			if !strings.Contains(block+"\n", want) {
				t.Errorf("show: got\n%s\nwant the header line %q", block, want)
			}
		}
		if d.Key != nil && !strings.Contains(block, "  key: "+string(d.Key)+"\n") {
			t.Errorf("show: got\n%s\nwant the key %q", block, d.Key)
		}
	}
	if want := `  value (4 bytes): {\xff\xfe}  [escaped: 2 bytes not UTF-8]`; !strings.Contains(out, want) {
		t.Errorf("show: got\n%s\nwant the value that is not UTF-8 with its bad bytes escaped: %q", out, want)
	}
	if want := "  value (5 bytes): [1,2]\n"; !strings.Contains(out, want) {
		t.Errorf("show: want the text value as it is: %q", want)
	}
	for _, h := range []string{dlq.HeaderError, dlq.HeaderClass, dlq.HeaderSourceTopic, dlq.HeaderSourcePartition,
		dlq.HeaderSourceOffset, dlq.HeaderSourceTimestamp, dlq.HeaderAttempts} {
		if got := strings.Count(out, "  "+h+": "); got != len(seeded) {
			t.Errorf("show: header %s printed %d times, want %d", h, got, len(seeded))
		}
	}

	last := e.dlqCommand("show", "--last", "1")
	if got := strings.Count(last, "dead letter from notifications/"); got != 1 {
		t.Errorf("show --last 1: got %d dead letters, want 1\n%s", got, last)
	}
	if !strings.Contains(last, "notifyd.error.class: store") || !strings.Contains(last, `check constraint "no_bad"`) {
		t.Errorf("show --last 1: got\n%s\nwant the newest, the store dead letter", last)
	}
	if got, want := e.dlqCommand("show", "--class", "store", "--source-offsets", "0:0"), "no dead letters match\n"; got != want {
		t.Errorf("show with nothing matching: got %q, want %q", got, want)
	}
}

func TestDLQReplaySendsTheMessagesBackOrNothingOnDryRun(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t)
	seeded := e.seedDeadLetters()

	out := e.dlqCommand("replay", "--dry-run")
	if want := "dry run: would replay 6 dead letters onto notifications (0 skipped at the replay limit, 0 replayed already)"; firstLine(out) != want {
		t.Errorf("replay --dry-run: got %q, want %q", firstLine(out), want)
	}
	for p, end := range e.endOffsets("notifications") {
		if end != 0 {
			t.Errorf("replay --dry-run: input partition %d has %d records, want none", p, end)
		}
	}

	out = e.dlqCommand("replay", "--class", "validate")
	if want := "replayed 3 dead letters onto notifications; 0 skipped at the replay limit, 0 replayed already"; strings.TrimSpace(out) != want {
		t.Errorf("replay --class validate: got %q, want %q", strings.TrimSpace(out), want)
	}
	got := e.readTopic("notifications")
	if len(got) != 3 {
		t.Fatalf("input topic after replay: got %d records, want 3", len(got))
	}
	byOrigin := map[string]*kgo.Record{}
	for _, d := range seeded {
		if header(d, dlq.HeaderClass) == "validate" {
			byOrigin[fmt.Sprintf("notifications/%s/%s", header(d, dlq.HeaderSourcePartition), header(d, dlq.HeaderSourceOffset))] = d
		}
	}
	for _, r := range got {
		origin := header(r, dlq.HeaderReplayOf)
		d := byOrigin[origin]
		if d == nil {
			t.Errorf("replayed record: got %s %q, want one of %v", dlq.HeaderReplayOf, origin, slices.Sorted(maps.Keys(byOrigin)))
			continue
		}
		delete(byOrigin, origin)
		if !bytes.Equal(r.Key, d.Key) || !bytes.Equal(r.Value, d.Value) {
			t.Errorf("replayed record of %s: got key %q value %q, want %q %q", origin, r.Key, r.Value, d.Key, d.Value)
		}
		if got, want := header(r, dlq.HeaderReplays), "1"; got != want {
			t.Errorf("replayed record of %s: %s got %q, want %q", origin, dlq.HeaderReplays, got, want)
		}
		if got, want := header(r, "traceparent"), header(d, "traceparent"); got != want {
			t.Errorf("replayed record of %s: traceparent got %q, want %q", origin, got, want)
		}
		if _, ok := dlq.Header(r, dlq.HeaderError); ok {
			t.Errorf("replayed record of %s: got a %s header, want none", origin, dlq.HeaderError)
		}
	}
}

// constrainedEnv is notifyd running against a table that refuses titles
// "BAD", as a schema mistake would.
func constrainedEnv(t *testing.T, group string) *opsEnv {
	t.Helper()
	e := newOpsEnv(t)
	ctx := context.Background()
	if err := runCommand(ctx, nil, "migrate", "--database-url", e.url); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := e.pool.Exec(ctx, "ALTER TABLE notifications ADD CONSTRAINT no_bad CHECK (title <> 'BAD')"); err != nil {
		t.Fatal(err)
	}
	e.startRun("--group", group, "--metrics-addr", "")
	return e
}

func (e *opsEnv) countRows(where string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM notifications "+where, args...).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func TestDLQReplayOfStoreRejectsAfterTheFixStoresEachMessageOnce(t *testing.T) {
	t.Parallel()
	e := constrainedEnv(t, "replay-fix")
	withID := uuid.NewString()
	sent := e.send(
		&kgo.Record{Partition: 0, Value: validMessage(withID, "BAD")},
		&kgo.Record{Partition: 1, Value: validMessage("", "BAD")},
		&kgo.Record{Partition: 2, Value: validMessage(uuid.NewString(), "fine")},
	)
	derived := notification.DerivedID("notifications", sent[1].Partition, sent[1].Offset)
	e.waitDrained("replay-fix")
	if got := e.countRows(""); got != 1 {
		t.Fatalf("rows before the fix: got %d, want 1", got)
	}
	letters := e.deadLetters()
	if len(letters) != 2 {
		t.Fatalf("dead letters before the fix: got %d, want 2", len(letters))
	}
	for _, d := range letters {
		if c := header(d, dlq.HeaderClass); c != "store" {
			t.Errorf("dead letter class: got %q, want store", c)
		}
		if r := header(d, dlq.HeaderError); !strings.Contains(r, "no_bad") {
			t.Errorf("dead letter reason: got %q, want it to name the constraint no_bad", r)
		}
	}
	list := e.dlqCommand("list")
	t.Logf("notifyd dlq list:\n%s", list)
	if !strings.Contains(list, "2 dead letters in notifications.dlq (decode 0, validate 0, store 2)") ||
		!strings.Contains(list, "no_bad") {
		t.Errorf("dlq list: got\n%s\nwant 2 store dead letters naming the constraint no_bad", list)
	}

	if _, err := e.pool.Exec(context.Background(), "ALTER TABLE notifications DROP CONSTRAINT no_bad"); err != nil {
		t.Fatal(err)
	}
	// Round 1 replays; round 2 is refused, since both were replayed; round
	// 3 forces it. Each message is stored once whatever the rounds.
	for _, round := range []struct {
		args []string
		want string
	}{
		{nil, "replayed 2 dead letters onto notifications; 0 skipped at the replay limit, 0 replayed already"},
		{nil, "replayed 0 dead letters onto notifications; 0 skipped at the replay limit, 2 replayed already"},
		{[]string{"--force"}, "replayed 2 dead letters onto notifications; 0 skipped at the replay limit, 0 replayed already"},
	} {
		before := e.endOffsets("notifications")
		out := e.dlqCommand(append([]string{"replay", "--class", "store"}, round.args...)...)
		if strings.TrimSpace(out) != round.want {
			t.Errorf("replay %v: got %q, want %q", round.args, strings.TrimSpace(out), round.want)
		}
		sent := 0
		for p, end := range e.endOffsets("notifications") {
			sent += int(end - before[p])
		}
		if want := strings.Count(round.want, "replayed 2 dead letters") * 2; sent != want {
			t.Errorf("replay %v: got %d records sent to the input topic, want %d", round.args, sent, want)
		}
		e.waitDrained("replay-fix")
		if got := e.countRows(""); got != 3 {
			t.Errorf("rows after replay %v: got %d, want 3", round.args, got)
		}
		if got := e.countRows("WHERE id = $1", withID); got != 1 {
			t.Errorf("rows of the message with id after replay %v: got %d, want 1", round.args, got)
		}
		if got := e.countRows("WHERE id = $1 AND title = 'BAD'", derived); got != 1 {
			t.Errorf("rows of the message without id (id %s, derived from where it first arrived) after replay %v: got %d, want 1",
				derived, round.args, got)
		}
		if got := len(e.deadLetters()); got != 2 {
			t.Errorf("dead letters after replay %v: got %d, want still 2", round.args, got)
		}
	}
	// What the operator sees: both replayed, twice each, and when.
	if got, want := firstLine(e.dlqCommand("list")), "2 dead letters in notifications.dlq (decode 0, validate 0, store 2); 2 replayed already"; got != want {
		t.Errorf("list after the replays: got %q, want %q", got, want)
	}
	show := e.dlqCommand("show", "--class", "store")
	if got := strings.Count(show, "\n  replayed 20"); got != 4 {
		t.Errorf("show after the replays: got %d replayed lines, want 2 for each letter\n%s", got, show)
	}
}

func TestDLQReplayOfAMessageThatFailsAgainStopsAtMaxReplays(t *testing.T) {
	t.Parallel()
	e := constrainedEnv(t, "replay-loop")
	sent := e.send(&kgo.Record{Partition: 0, Value: validMessage("", "BAD")})
	origin := fmt.Sprintf("notifications/0/%d", sent[0].Offset)
	e.waitDrained("replay-loop")

	// newest is the dead letter of the latest replay: the most replayed.
	newest := func(letters []*kgo.Record) *kgo.Record {
		var best *kgo.Record
		bestN := -1
		for _, d := range letters {
			n, _ := strconv.Atoi(header(d, dlq.HeaderReplays))
			if n > bestN {
				best, bestN = d, n
			}
		}
		return best
	}
	const maxReplays = 2
	for k := 1; k <= maxReplays; k++ {
		d := newest(e.deadLetters())
		sel := header(d, dlq.HeaderSourcePartition) + ":" + header(d, dlq.HeaderSourceOffset)
		out := e.dlqCommand("replay", "--class", "store", "--source-offsets", sel, "--max-replays", strconv.Itoa(maxReplays))
		if want := "replayed 1 dead letters onto notifications; 0 skipped at the replay limit, 0 replayed already"; strings.TrimSpace(out) != want {
			t.Fatalf("replay %d: got %q, want %q", k, strings.TrimSpace(out), want)
		}
		e.waitDrained("replay-loop")
		letters := e.deadLetters()
		if len(letters) != k+1 {
			t.Fatalf("dead letters after replay %d: got %d, want %d", k, len(letters), k+1)
		}
		again := newest(letters)
		for _, h := range []struct{ key, want string }{
			{dlq.HeaderReplays, strconv.Itoa(k)},
			{dlq.HeaderReplayOf, origin},
			{dlq.HeaderClass, "store"},
			{dlq.HeaderSourceTopic, "notifications"},
			{dlq.HeaderAttempts, "1"},
		} {
			if got := header(again, h.key); got != h.want {
				t.Errorf("dead letter of replay %d: %s got %q, want %q", k, h.key, got, h.want)
			}
		}
		if header(again, dlq.HeaderSourceOffset) == header(d, dlq.HeaderSourceOffset) &&
			header(again, dlq.HeaderSourcePartition) == header(d, dlq.HeaderSourcePartition) {
			t.Errorf("dead letter of replay %d: got the source of the letter replayed, want where the replay arrived", k)
		}
	}

	// The loop guard: the letter replayed maxReplays times is refused.
	ends := e.endOffsets("notifications")
	d := newest(e.deadLetters())
	sel := header(d, dlq.HeaderSourcePartition) + ":" + header(d, dlq.HeaderSourceOffset)
	out := e.dlqCommand("replay", "--class", "store", "--source-offsets", sel, "--max-replays", strconv.Itoa(maxReplays))
	if want := "replayed 0 dead letters onto notifications; 1 skipped at the replay limit, 0 replayed already"; strings.TrimSpace(out) != want {
		t.Errorf("replay at the limit: got %q, want %q", strings.TrimSpace(out), want)
	}
	if got := e.endOffsets("notifications"); !maps.Equal(got, ends) {
		t.Errorf("input end offsets after a refused replay: got %v, want unchanged %v", got, ends)
	}
	out = e.dlqCommand("replay", "--class", "store", "--max-replays", strconv.Itoa(maxReplays), "--dry-run")
	if want := "dry run: would replay 0 dead letters onto notifications (1 skipped at the replay limit, 2 replayed already)"; firstLine(out) != want {
		t.Errorf("replay --dry-run of all: got %q, want %q", firstLine(out), want)
	}
	if got := e.countRows(""); got != 0 {
		t.Errorf("rows: got %d, want 0 (the constraint still refuses the message)", got)
	}
	t.Logf("notifyd dlq list:\n%s", e.dlqCommand("list"))
}

func TestRenderEscapesOneWay(t *testing.T) {
	long := strings.Repeat("é", showLimit+10)
	for _, c := range []struct {
		in   []byte
		full bool
		want string
	}{
		{nil, false, "(null)"},
		{[]byte{}, false, ""},
		{[]byte(`{"title":"Hi \u00e9"}`), false, `{"title":"Hi \u00e9"}`},
		{[]byte("tab\there"), false, `tab\there  [escaped: 1 control or invisible characters]`},
		{[]byte("a\x00b"), false, `a\x00b  [escaped: 1 NUL]`},
		{[]byte("a\xffb\x00"), false, `a\xffb\x00  [escaped: 1 bytes not UTF-8, 1 NUL]`},
		{[]byte("zero\u200bwidth"), false, `zero\u200bwidth  [escaped: 1 control or invisible characters]`},
		{[]byte(long), false, strings.Repeat("é", showLimit) + fmt.Sprintf("… [%d of %d bytes shown] (--full prints all)", 2*showLimit, len(long))},
		{[]byte(long), true, long},
	} {
		if got := render(c.in, c.full); got != c.want {
			t.Errorf("render(%q, full %v): got %q, want %q", c.in, c.full, got, c.want)
		}
	}
}

func TestDLQShowCutsLongFieldsUnlessFull(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t)
	title := strings.Repeat("x", 100_000)
	value := []byte(`{"user_id":"` + uuid.NewString() + `","event_type":"x","title":"` + title + `","body":"\u0000"}`)
	d := rejectedBy(t, value, 0, 7, time.Now())
	prod, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.brokers, ",")...), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	if err := prod.ProduceSync(context.Background(), d).FirstErr(); err != nil {
		t.Fatal(err)
	}

	out := e.dlqCommand("show")
	if len(out) > 4*showLimit {
		t.Errorf("show: got %d bytes of output for a 100 KB value, want it cut", len(out))
	}
	if want := fmt.Sprintf("… [%d of %d bytes shown] (--full prints all)", showLimit, len(value)); !strings.Contains(out, want) {
		t.Errorf("show: got\n%s\nwant the value cut with %q", out, want)
	}
	full := e.dlqCommand("show", "--full")
	if !strings.Contains(full, title+`","body":"\u0000"}`+"\n") {
		t.Errorf("show --full: got %d bytes, want the whole value", len(full))
	}
}

// A dead letter the dead-letter topic refuses for good is kept in the
// table; dlq list, show and replay read it there as they read the topic,
// and a replay after the fix stores the message once.
func TestDLQReplayOfALetterKeptInTheTableStoresItOnceAfterTheFix(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t)
	ctx := context.Background()
	// The topic takes the replay markers (small), not the letter (4 KB).
	const dlqLimit = "1024"
	adm := kadm.NewClient(e.prod)
	resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "max.message.bytes", Value: kadm.StringPtr(dlqLimit)}}, "notifications.dlq")
	if err == nil {
		var r kadm.AlterConfigsResponse
		r, err = resp.On("notifications.dlq", nil)
		if err == nil {
			err = r.Err
		}
	}
	if err != nil {
		t.Fatalf("set max.message.bytes of notifications.dlq: %v", err)
	}
	if err := runCommand(ctx, nil, "migrate", "--database-url", e.url); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := e.pool.Exec(ctx, "ALTER TABLE notifications ADD CONSTRAINT no_bad CHECK (title <> 'BAD')"); err != nil {
		t.Fatal(err)
	}
	e.startRun("--group", "kept", "--metrics-addr", "")

	id := uuid.NewString()
	body := strings.Repeat("b", 4096)
	big := fmt.Appendf(nil, `{"id":%q,"user_id":%q,"event_type":"demo","title":"BAD","body":%q}`, id, uuid.NewString(), body)
	sent := e.send(
		&kgo.Record{Partition: 0, Key: []byte("big"), Value: big},
		&kgo.Record{Partition: 1, Value: validMessage(uuid.NewString(), "fine")},
	)
	e.waitDrained("kept")
	if got := e.countRows(""); got != 1 {
		t.Fatalf("rows before the fix: got %d, want 1", got)
	}
	if got := len(e.deadLetters()); got != 0 {
		t.Fatalf("dead letters in the topic: got %d, want 0 (the topic refuses them)", got)
	}
	var value []byte
	var offset int64
	var why string
	if err := e.pool.QueryRow(ctx, "SELECT value, source_offset, kept_reason FROM notifyd_dead_letters").Scan(&value, &offset, &why); err != nil {
		t.Fatalf("the kept dead letter: %v", err)
	}
	if !bytes.Equal(value, big) || offset != sent[0].Offset || !strings.Contains(why, "MESSAGE_TOO_LARGE") {
		t.Fatalf("kept dead letter: got %d bytes of offset %d, reason %q; want the %d bytes of offset %d, kept for MESSAGE_TOO_LARGE",
			len(value), offset, why, len(big), sent[0].Offset)
	}
	if got, want := firstLine(e.dlqCommand("list", "--database-url", e.url)),
		"1 dead letters in notifications.dlq (decode 0, validate 0, store 1); 0 replayed already"; got != want {
		t.Errorf("dlq list: got %q, want %q", got, want)
	}
	if show := e.dlqCommand("show", "--database-url", e.url); !strings.Contains(show, "no_bad") || !strings.Contains(show, "MESSAGE_TOO_LARGE") {
		t.Errorf("dlq show: got\n%s\nwant the letter with its reason (no_bad) and why it is kept (MESSAGE_TOO_LARGE)", show)
	}

	if _, err := e.pool.Exec(ctx, "ALTER TABLE notifications DROP CONSTRAINT no_bad"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"replayed 1 dead letters onto notifications; 0 skipped at the replay limit, 0 replayed already",
		"replayed 0 dead letters onto notifications; 0 skipped at the replay limit, 1 replayed already",
	} {
		if got := strings.TrimSpace(e.dlqCommand("replay", "--database-url", e.url)); got != want {
			t.Errorf("replay: got %q, want %q", got, want)
		}
		e.waitDrained("kept")
		var stored string
		if err := e.pool.QueryRow(ctx, "SELECT body FROM notifications WHERE id = $1", id).Scan(&stored); err != nil {
			t.Fatalf("the replayed message: %v", err)
		}
		if stored != body {
			t.Errorf("the replayed message: got a body of %d bytes, want the %d sent", len(stored), len(body))
		}
		if got := e.countRows(""); got != 2 {
			t.Errorf("rows after the replay: got %d, want 2", got)
		}
	}
	if got, want := firstLine(e.dlqCommand("list", "--database-url", e.url)),
		"1 dead letters in notifications.dlq (decode 0, validate 0, store 1); 1 replayed already"; got != want {
		t.Errorf("dlq list after the replay: got %q, want %q", got, want)
	}
}
