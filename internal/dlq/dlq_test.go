package dlq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/notification"
)

// headerValues returns every value of the named header of r, in order.
func headerValues(r *kgo.Record, key string) []string {
	var out []string
	for _, h := range r.Headers {
		if h.Key == key {
			out = append(out, string(h.Value))
		}
	}
	return out
}

// wantHeader fails the test unless r has exactly one header key, with value want.
func wantHeader(t *testing.T, r *kgo.Record, key, want string) {
	t.Helper()
	got := headerValues(r, key)
	if len(got) != 1 || got[0] != want {
		t.Errorf("header %s: got %q, want exactly [%q]", key, got, want)
	}
}

// wantNoHeader fails the test if r has a header key.
func wantNoHeader(t *testing.T, r *kgo.Record, key string) {
	t.Helper()
	if got := headerValues(r, key); len(got) > 0 {
		t.Errorf("header %s: got %q, want none", key, got)
	}
}

// sourceRecord is an input record as the consumer sees it.
func sourceRecord(partition int32, offset int64, headers ...kgo.RecordHeader) *kgo.Record {
	return &kgo.Record{
		Topic:     "notifications",
		Partition: partition,
		Offset:    offset,
		Timestamp: time.Date(2026, 3, 4, 5, 6, 7, 890123000, time.FixedZone("CET", 3600)),
		Key:       []byte{0x00, 'k', 0xff},
		Value:     []byte("{\"title\":\"caf\xc3\xa9\"}\xfe\x00"),
		Headers:   headers,
	}
}

func TestLetterKeepsTheRecordByteForByteAndAddsEverySpecHeader(t *testing.T) {
	userHeaders := []kgo.RecordHeader{
		{Key: "traceparent", Value: []byte("00-abc-def-01")},
		{Key: "bin", Value: []byte{0xff, 0x00, 0x01}},
		{Key: "dup", Value: []byte("first")},
		{Key: "dup", Value: []byte("second")},
		{Key: "empty", Value: nil},
	}
	src := sourceRecord(2, 42, slices.Clone(userHeaders)...)
	reason := `field "user_id": "abc" is not a UUID (want 8-4-4-4-12 hex digits)`

	d := Letter("notifications.dlq", src, "validate", reason, 3)

	if d.Topic != "notifications.dlq" {
		t.Errorf("topic: got %q, want %q", d.Topic, "notifications.dlq")
	}
	if !bytes.Equal(d.Key, src.Key) {
		t.Errorf("key: got %x, want %x", d.Key, src.Key)
	}
	if !bytes.Equal(d.Value, src.Value) {
		t.Errorf("value: got %x, want %x", d.Value, src.Value)
	}
	if len(d.Headers) < len(userHeaders) {
		t.Fatalf("headers: got %d, want at least the %d original ones", len(d.Headers), len(userHeaders))
	}
	for i, want := range userHeaders {
		got := d.Headers[i]
		if got.Key != want.Key || !bytes.Equal(got.Value, want.Value) {
			t.Errorf("header %d: got %s=%x, want %s=%x (original headers first, in order)", i, got.Key, got.Value, want.Key, want.Value)
		}
	}
	wantHeader(t, d, HeaderError, reason)
	wantHeader(t, d, HeaderClass, "validate")
	wantHeader(t, d, HeaderSourceTopic, "notifications")
	wantHeader(t, d, HeaderSourcePartition, "2")
	wantHeader(t, d, HeaderSourceOffset, "42")
	wantHeader(t, d, HeaderSourceTimestamp, "2026-03-04T04:06:07.890123Z")
	wantHeader(t, d, HeaderAttempts, "3")
	wantNoHeader(t, d, HeaderReplays)
	wantNoHeader(t, d, HeaderReplayOf)
	if got, want := len(d.Headers), len(userHeaders)+7; got != want {
		t.Errorf("header count: got %d, want %d (the originals and the 7 of the SPEC)", got, want)
	}
}

func TestLetterReplacesStaleOwnHeadersButKeepsReplayHeaders(t *testing.T) {
	// A replayed message that fails again carries the headers of its first
	// dead letter only if the producer copied them; whatever it carries, the
	// new dead letter must say why it failed this time and where.
	src := sourceRecord(1, 7,
		kgo.RecordHeader{Key: HeaderError, Value: []byte("old reason")},
		kgo.RecordHeader{Key: "user", Value: []byte("kept")},
		kgo.RecordHeader{Key: HeaderClass, Value: []byte("decode")},
		kgo.RecordHeader{Key: HeaderSourceTopic, Value: []byte("elsewhere")},
		kgo.RecordHeader{Key: HeaderSourcePartition, Value: []byte("9")},
		kgo.RecordHeader{Key: HeaderSourceOffset, Value: []byte("99")},
		kgo.RecordHeader{Key: HeaderSourceTimestamp, Value: []byte("1999-01-01T00:00:00Z")},
		kgo.RecordHeader{Key: HeaderAttempts, Value: []byte("9")},
		kgo.RecordHeader{Key: HeaderReplays, Value: []byte("2")},
		kgo.RecordHeader{Key: HeaderReplayOf, Value: []byte("notifications/0/5")},
	)

	d := Letter("notifications.dlq", src, "store", "the database refused the row", 1)

	wantHeader(t, d, "user", "kept")
	wantHeader(t, d, HeaderError, "the database refused the row")
	wantHeader(t, d, HeaderClass, "store")
	wantHeader(t, d, HeaderSourceTopic, "notifications")
	wantHeader(t, d, HeaderSourcePartition, "1")
	wantHeader(t, d, HeaderSourceOffset, "7")
	wantHeader(t, d, HeaderSourceTimestamp, "2026-03-04T04:06:07.890123Z")
	wantHeader(t, d, HeaderAttempts, "1")
	wantHeader(t, d, HeaderReplays, "2")
	wantHeader(t, d, HeaderReplayOf, "notifications/0/5")
}

func TestReplayRecord(t *testing.T) {
	user := kgo.RecordHeader{Key: "traceparent", Value: []byte("00-abc-def-01")}
	first := Letter("notifications.dlq", sourceRecord(2, 42, user), "store", "the database refused the row", 1)

	t.Run("first replay keeps the message and names its source", func(t *testing.T) {
		r, err := ReplayRecord("notifications", first, 3)
		if err != nil {
			t.Fatalf("got error %v, want none", err)
		}
		if r.Topic != "notifications" {
			t.Errorf("topic: got %q, want %q", r.Topic, "notifications")
		}
		if !bytes.Equal(r.Key, first.Key) || !bytes.Equal(r.Value, first.Value) {
			t.Errorf("key, value: got %x, %x, want %x, %x", r.Key, r.Value, first.Key, first.Value)
		}
		wantHeader(t, r, "traceparent", "00-abc-def-01")
		wantHeader(t, r, HeaderReplays, "1")
		wantHeader(t, r, HeaderReplayOf, "notifications/2/42")
		for _, k := range []string{HeaderError, HeaderClass, HeaderSourceTopic, HeaderSourcePartition,
			HeaderSourceOffset, HeaderSourceTimestamp, HeaderAttempts} {
			wantNoHeader(t, r, k)
		}
		if got, want := len(r.Headers), 3; got != want {
			t.Errorf("header count: got %d (%v), want %d", got, r.Headers, want)
		}
		topic, part, off, ok := Origin(r)
		if !ok || topic != "notifications" || part != 2 || off != 42 {
			t.Errorf("Origin: got %q/%d/%d ok=%v, want notifications/2/42 ok=true", topic, part, off, ok)
		}
	})

	t.Run("replay of the dead letter of a replay keeps the original source", func(t *testing.T) {
		r1, err := ReplayRecord("notifications", first, 3)
		if err != nil {
			t.Fatal(err)
		}
		// The replay lands elsewhere in the input topic and fails again.
		r1.Partition, r1.Offset, r1.Timestamp = 0, 1234, time.Now()
		second := Letter("notifications.dlq", r1, "store", "the database refused the row again", 1)
		wantHeader(t, second, HeaderSourceOffset, "1234")

		r2, err := ReplayRecord("notifications", second, 3)
		if err != nil {
			t.Fatalf("got error %v, want none", err)
		}
		wantHeader(t, r2, HeaderReplays, "2")
		wantHeader(t, r2, HeaderReplayOf, "notifications/2/42")
		wantHeader(t, r2, "traceparent", "00-abc-def-01")
		wantNoHeader(t, r2, HeaderSourceOffset)
		wantNoHeader(t, r2, HeaderError)
	})

	t.Run("refused at the limit", func(t *testing.T) {
		for _, tc := range []struct {
			replays string
			limit   int
			refused bool
		}{
			{"0", 1, false},
			{"1", 1, true},
			{"2", 3, false},
			{"3", 3, true},
			{"7", 3, true},
		} {
			d := Letter("notifications.dlq", sourceRecord(0, 1,
				kgo.RecordHeader{Key: HeaderReplays, Value: []byte(tc.replays)}), "store", "refused", 1)
			r, err := ReplayRecord("notifications", d, tc.limit)
			if got := errors.Is(err, ErrReplayLimit); got != tc.refused {
				t.Errorf("replays %s, limit %d: got refused=%v (err %v), want %v", tc.replays, tc.limit, got, err, tc.refused)
			}
			if tc.refused && r != nil {
				t.Errorf("replays %s, limit %d: got a record, want nil", tc.replays, tc.limit)
			}
		}
	})
}

func TestOrigin(t *testing.T) {
	for _, tc := range []struct {
		value     string
		topic     string
		partition int32
		offset    int64
		ok        bool
	}{
		{"notifications/2/42", "notifications", 2, 42, true},
		{"orders.eu-west-1.v2/0/0", "orders.eu-west-1.v2", 0, 0, true},
		{"a.b-c_d/17/9223372036854775807", "a.b-c_d", 17, 9223372036854775807, true},
		{"t/2147483647/1", "t", 2147483647, 1, true},
		{"t/2147483648/1", "", 0, 0, false}, // partition overflows int32
		{"", "", 0, 0, false},
		{"notifications", "", 0, 0, false},
		{"notifications/2", "", 0, 0, false},
		{"/2/42", "", 0, 0, false},
		{"t/x/42", "", 0, 0, false},
		{"t/2/x", "", 0, 0, false},
		{"t/2/", "", 0, 0, false},
	} {
		r := &kgo.Record{Headers: []kgo.RecordHeader{{Key: HeaderReplayOf, Value: []byte(tc.value)}}}
		topic, p, o, ok := Origin(r)
		if topic != tc.topic || p != tc.partition || o != tc.offset || ok != tc.ok {
			t.Errorf("Origin(%q): got %q, %d, %d, %v, want %q, %d, %d, %v", tc.value, topic, p, o, ok, tc.topic, tc.partition, tc.offset, tc.ok)
		}
	}
	if _, _, _, ok := Origin(&kgo.Record{}); ok {
		t.Errorf("Origin of a record without %s: got ok, want not ok", HeaderReplayOf)
	}
}

func TestFilterMatch(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	letter := func(class string, at time.Time, partition int32, offset int64) *kgo.Record {
		src := sourceRecord(partition, offset)
		d := Letter("notifications.dlq", src, class, "reason", 1)
		d.Timestamp = at // when the dead letter was written
		return d
	}
	d := letter("validate", t0, 1, 100)
	noSource := &kgo.Record{Timestamp: t0, Headers: []kgo.RecordHeader{{Key: HeaderClass, Value: []byte("validate")}}}

	for _, tc := range []struct {
		name string
		f    Filter
		r    *kgo.Record
		want bool
	}{
		{"zero filter", Filter{}, d, true},
		{"same class", Filter{Class: "validate"}, d, true},
		{"other class", Filter{Class: "store"}, d, false},
		{"since is inclusive", Filter{Since: t0}, d, true},
		{"since after", Filter{Since: t0.Add(time.Nanosecond)}, d, false},
		{"until is exclusive", Filter{Until: t0}, d, false},
		{"until after", Filter{Until: t0.Add(time.Nanosecond)}, d, true},
		{"inside range", Filter{Since: t0.Add(-time.Hour), Until: t0.Add(time.Hour)}, d, true},
		{"offset range inclusive low", Filter{HasOffsets: true, Partition: 1, From: 100, To: 200}, d, true},
		{"offset range inclusive high", Filter{HasOffsets: true, Partition: 1, From: 0, To: 100}, d, true},
		{"single offset", Filter{HasOffsets: true, Partition: 1, From: 100, To: 100}, d, true},
		{"offset below", Filter{HasOffsets: true, Partition: 1, From: 101, To: 200}, d, false},
		{"offset above", Filter{HasOffsets: true, Partition: 1, From: 0, To: 99}, d, false},
		{"other partition", Filter{HasOffsets: true, Partition: 0, From: 0, To: 1000}, d, false},
		{"offsets without source headers", Filter{HasOffsets: true, Partition: 0, From: 0, To: 1000}, noSource, false},
		{"all at once", Filter{Class: "validate", Since: t0, Until: t0.Add(time.Second), HasOffsets: true, Partition: 1, From: 100, To: 100}, d, true},
		{"all but class", Filter{Class: "decode", Since: t0, Until: t0.Add(time.Second), HasOffsets: true, Partition: 1, From: 100, To: 100}, d, false},
	} {
		if got := tc.f.Match(tc.r); got != tc.want {
			t.Errorf("%s: Match got %v, want %v", tc.name, got, tc.want)
		}
	}
}

// rejected returns the dead letter notifyd writes for value, written at at.
func rejected(t *testing.T, value string, at time.Time) *kgo.Record {
	t.Helper()
	src := sourceRecord(0, 1)
	src.Value = []byte(value)
	_, err := notification.Decode(src.Value, notification.Source{Topic: src.Topic, Timestamp: src.Timestamp}, notification.Limits{})
	var ne *notification.Error
	if !errors.As(err, &ne) {
		t.Fatalf("Decode(%q): got %v, want a *notification.Error", value, err)
	}
	d := Letter("notifications.dlq", src, string(ne.Class), ne.Error(), 1)
	d.Timestamp = at
	return d
}

func TestSummarizeGroupsAlikeReasonsNewestFirst(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	recs := []*kgo.Record{
		// Two bad user ids, two bad titles: validate, alike per field.
		rejected(t, `{"user_id":"abc","event_type":"x","title":"t","body":"b"}`, t0.Add(1*time.Second)),
		rejected(t, `{"user_id":"not-a-uuid-at-all","event_type":"x","title":"t","body":"b"}`, t0.Add(5*time.Second)),
		rejected(t, `{"user_id":"6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11","event_type":"x","title":"","body":"b"}`, t0.Add(2*time.Second)),
		rejected(t, `{"user_id":"6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11","event_type":"x","title":"","body":"c"}`, t0.Add(3*time.Second)),
		// Bytes that are not UTF-8 at different places: one decode group.
		rejected(t, "{\xff}", t0.Add(4*time.Second)),
		rejected(t, "{\"a\":1,\xfe}", t0.Add(9*time.Second)),
		rejected(t, "{\""+strings.Repeat("a", 100)+"\":\xc0}", t0),
		// A reason that is the same text in another class is another group.
		Letter("notifications.dlq", sourceRecord(0, 9), "store", `the database refused the row: ERROR: value too long (SQLSTATE 22001)`, 1),
		Letter("notifications.dlq", sourceRecord(0, 9), "store", `the database refused the row: ERROR: value too long (SQLSTATE 22001)`, 1),
	}
	recs[7].Timestamp = t0.Add(7 * time.Second)
	recs[8].Timestamp = t0.Add(6 * time.Second)

	groups := Summarize(recs)

	type brief struct {
		class  string
		count  int
		newest time.Time
	}
	var got []brief
	for _, g := range groups {
		got = append(got, brief{g.Class, g.Count, g.Newest})
	}
	want := []brief{
		{"decode", 3, t0.Add(9 * time.Second)},
		{"store", 2, t0.Add(7 * time.Second)},
		{"validate", 2, t0.Add(5 * time.Second)}, // user_id
		{"validate", 2, t0.Add(3 * time.Second)}, // title
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		for _, g := range groups {
			t.Logf("group: %d %s %s %q (example %q)", g.Count, g.Class, g.Newest.Format(time.RFC3339), g.Reason, g.Example)
		}
		t.Fatalf("groups: got %v, want %v", got, want)
	}
	for _, g := range groups {
		t.Logf("group: %d %s %q", g.Count, g.Class, g.Reason)
	}

	// The group of bad user ids names the field and hides the values.
	uid := groups[2]
	if !strings.Contains(uid.Reason, `"user_id"`) {
		t.Errorf("reason %q: want the field name user_id in it", uid.Reason)
	}
	for _, v := range []string{"abc", "not-a-uuid-at-all"} {
		if strings.Contains(uid.Reason, v) {
			t.Errorf("reason %q: got the value %q in it, want values masked", uid.Reason, v)
		}
	}
	if !strings.Contains(uid.Example, "not-a-uuid-at-all") {
		t.Errorf("example %q: want the newest full reason, with not-a-uuid-at-all", uid.Example)
	}
	dec := groups[0]
	for _, v := range []string{"0xff", "0xfe", "0xc0"} {
		if strings.Contains(dec.Reason, v) {
			t.Errorf("reason %q: got the byte %s in it, want it masked", dec.Reason, v)
		}
	}
	if !strings.Contains(dec.Example, "0xfe") {
		t.Errorf("example %q: want the newest full reason, about byte 0xfe", dec.Example)
	}
	if s := Summarize(nil); len(s) != 0 {
		t.Errorf("Summarize(nil): got %v, want no groups", s)
	}
}

func TestSummarizeSeparatesWhatDiffersInKindNotInValue(t *testing.T) {
	const refused = "the database refused the row: ERROR: "
	for _, tc := range []struct {
		a, b  string
		alike bool
	}{
		{`field "user_id": "abc" is not a UUID`, `field "user_id": "def" is not a UUID`, true},
		{`field "user_id": "abc" is not a UUID`, `field "id": "abc" is not a UUID`, false},
		{"value is not valid UTF-8: byte 0xff at offset 1", "value is not valid UTF-8: byte 0xc3 at offset 1234", true},
		{"invalid JSON at byte 7: want a value", "invalid JSON at byte 70: want a value", true},
		{"invalid JSON at byte 7: want a value", "invalid JSON at byte 7: want a string", false},
		// Which constraint or column refused the row is what an operator
		// must fix: it is not a value to mask.
		{refused + `new row for relation "notifications" violates check constraint "no_bad" (SQLSTATE 23514)`,
			refused + `new row for relation "notifications" violates check constraint "title_len" (SQLSTATE 23514)`, false},
		{refused + `new row for relation "notifications" violates check constraint "no_bad" (SQLSTATE 23514)`,
			refused + `new row for relation "notifications" violates check constraint "no_bad" (SQLSTATE 23514)`, true},
		{refused + `null value in column "title" of relation "notifications" violates not-null constraint (SQLSTATE 23502)`,
			refused + `null value in column "body" of relation "notifications" violates not-null constraint (SQLSTATE 23502)`, false},
		{refused + `invalid input syntax for type json (SQLSTATE 22P02)`,
			refused + `invalid input syntax for type json (SQLSTATE 22023)`, false},
	} {
		recs := []*kgo.Record{
			Letter("notifications.dlq", sourceRecord(0, 1), "store", tc.a, 1),
			Letter("notifications.dlq", sourceRecord(0, 2), "store", tc.b, 1),
		}
		groups := Summarize(recs)
		if got := len(groups) == 1; got != tc.alike {
			var kinds []string
			for _, g := range groups {
				kinds = append(kinds, g.Reason)
			}
			t.Errorf("%q and %q: got alike=%v (%q), want %v", tc.a, tc.b, got, kinds, tc.alike)
		}
	}
}

// newCluster starts a kfake cluster with the topic (3 partitions) and
// returns a producer that writes to the partition each record names.
func newCluster(t *testing.T, topic string) (*kfake.Cluster, *kgo.Client) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, topic))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	prod, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Close)
	return c, prod
}

// readAll returns "partition/offset=value" of every record ReadAll reads,
// sorted, with a fresh client each time as `notifyd dlq` does.
func readAll(t *testing.T, c *kfake.Cluster, topic string) []string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []string
	err = ReadAll(ctx, cl, topic, func(r *kgo.Record) error {
		got = append(got, fmt.Sprintf("%d/%d=%s", r.Partition, r.Offset, r.Value))
		return nil
	})
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	slices.Sort(got)
	return got
}

func TestReadAllReadsExactlyTheRecordsPresent(t *testing.T) {
	t.Parallel()
	const topic = "notifications.dlq"
	c, prod := newCluster(t, topic)
	ctx := context.Background()

	if got := readAll(t, c, topic); len(got) != 0 {
		t.Fatalf("empty topic: got %v, want no records", got)
	}

	produce := func(partition int32, values ...string) {
		t.Helper()
		var recs []*kgo.Record
		for _, v := range values {
			recs = append(recs, &kgo.Record{Partition: partition, Value: []byte(v)})
		}
		if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	produce(0, "a", "b", "c")
	produce(2, "x", "y")
	want := []string{"0/0=a", "0/1=b", "0/2=c", "2/0=x", "2/1=y"}
	if got := readAll(t, c, topic); !slices.Equal(got, want) {
		t.Fatalf("two of three partitions: got %v, want %v", got, want)
	}

	// Read again after more arrive: the new ones, and nothing twice.
	produce(1, "m")
	produce(2, "z")
	want = []string{"0/0=a", "0/1=b", "0/2=c", "1/0=m", "2/0=x", "2/1=y", "2/2=z"}
	if got := readAll(t, c, topic); !slices.Equal(got, want) {
		t.Fatalf("all partitions: got %v, want %v", got, want)
	}

	// Records removed by retention are not waited for: reading starts at
	// each partition's start offset.
	adm := kadm.NewClient(prod)
	del := kadm.Offsets{}
	del.Add(kadm.Offset{Topic: topic, Partition: 0, At: 2})
	del.Add(kadm.Offset{Topic: topic, Partition: 1, At: 1})
	res, err := adm.DeleteRecords(ctx, del)
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	want = []string{"0/2=c", "2/0=x", "2/1=y", "2/2=z"}
	if got := readAll(t, c, topic); !slices.Equal(got, want) {
		t.Fatalf("after deleting records: got %v, want %v", got, want)
	}
}

func TestReadAllStopsAtTheCallbacksError(t *testing.T) {
	t.Parallel()
	const topic = "notifications.dlq"
	c, prod := newCluster(t, topic)
	ctx := context.Background()
	for i := range 5 {
		if err := prod.ProduceSync(ctx, &kgo.Record{Partition: 1, Value: fmt.Appendf(nil, "%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	stop := errors.New("stop here")
	calls := 0
	err = ReadAll(ctx, cl, topic, func(r *kgo.Record) error {
		calls++
		if r.Offset == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Errorf("error: got %v, want %v", err, stop)
	}
	if calls != 3 {
		t.Errorf("calls: got %d, want 3 (offsets 0, 1, 2)", calls)
	}
}

// TestReadTopicAttachesReplays writes two dead letters and three replay
// markers for the first, out of order, and checks that ReadTopic returns
// the letters only, each with its replays oldest first.
func TestReadTopicAttachesReplays(t *testing.T) {
	t.Parallel()
	const topic = "notifications.dlq"
	c, prod := newCluster(t, topic)
	ctx := context.Background()
	a := Letter(topic, sourceRecord(0, 5), "validate", "reason a", 1)
	b := Letter(topic, sourceRecord(1, 6), "store", "reason b", 1)
	a.Partition, b.Partition = 0, 1
	if err := prod.ProduceSync(ctx, a, b).FirstErr(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var markers []*kgo.Record
	for i, at := range []time.Time{t0.Add(2 * time.Hour), t0, t0.Add(time.Hour)} {
		as := &kgo.Record{Topic: "notifications", Partition: 2, Offset: int64(100 + i)}
		m := ReplayMarker(topic, Entry{Record: a}, as, at)
		m.Partition = int32(i % 3)
		markers = append(markers, m)
	}
	if err := prod.ProduceSync(ctx, markers...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for _, m := range markers {
		if !IsReplayMarker(m) {
			t.Fatalf("IsReplayMarker(%v): got false, want true", m.Headers)
		}
	}
	if IsReplayMarker(a) {
		t.Fatal("IsReplayMarker of a dead letter: got true, want false")
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got, err := ReadTopic(ctx, cl, topic)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d entries, want the 2 dead letters", len(got))
	}
	slices.SortFunc(got, func(x, y Entry) int { return int(x.Record.Partition - y.Record.Partition) })
	if got, want := got[0].Place(), "notifications.dlq/0/0"; got != want {
		t.Errorf("Place: got %q, want %q", got, want)
	}
	if got, want := got[0].Source(), "notifications/0/5"; got != want {
		t.Errorf("Source: got %q, want %q", got, want)
	}
	want := []Replay{{t0, "notifications/2/101"}, {t0.Add(time.Hour), "notifications/2/102"}, {t0.Add(2 * time.Hour), "notifications/2/100"}}
	if fmt.Sprint(got[0].Replays) != fmt.Sprint(want) {
		t.Errorf("replays of the first letter: got %v, want %v", got[0].Replays, want)
	}
	if last, ok := got[0].LastReplay(); !ok || !last.At.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("LastReplay: got %v %v, want the one at %v", last, ok, t0.Add(2*time.Hour))
	}
	if len(got[1].Replays) != 0 {
		t.Errorf("replays of the second letter: got %v, want none", got[1].Replays)
	}
}
