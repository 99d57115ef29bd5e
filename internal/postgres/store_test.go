package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
)

const (
	testGroup = "g"
	testTopic = "notifications"
)

// openStore opens a store on url and closes it when the test ends.
func openStore(t *testing.T, url string) *Store {
	t.Helper()
	st, err := Open(context.Background(), Config{URL: url})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	return st
}

// migratedStore opens a store on a fresh schema and migrates it.
func migratedStore(t *testing.T) *Store {
	t.Helper()
	st := openStore(t, pgtest.Schema(t))
	if _, err := st.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return st
}

// testRow returns a valid notification, distinct for each i.
func testRow(i int) notification.Notification {
	return notification.Notification{
		ID:        uuid.New(),
		UserID:    uuid.New(),
		EventType: "comment.created",
		Title:     fmt.Sprintf("title %d", i),
		Body:      fmt.Sprintf("body %d", i),
		Data:      []byte(fmt.Sprintf(`{"n": %d}`, i)),
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Microsecond),
	}
}

func testRows(n int) []notification.Notification {
	rows := make([]notification.Notification, n)
	for i := range rows {
		rows[i] = testRow(i)
	}
	return rows
}

// deadLetterCount counts the recorded dead letters.
func deadLetterCount(t *testing.T, st *Store) int {
	t.Helper()
	var n int
	if err := st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM notifyd_dead_letters").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// claim claims partitions and fails the test on error.
func claim(t *testing.T, st *Store, parts ...int32) map[int32]int64 {
	t.Helper()
	got, err := st.Claim(context.Background(), testGroup, testTopic, parts)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	return got
}

// offsets reads every stored position of the test topic.
func offsets(t *testing.T, st *Store) map[int32]int64 {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(),
		"SELECT partition, next_offset FROM notifyd_offsets WHERE consumer_group = $1 AND topic = $2", testGroup, testTopic)
	if err != nil {
		t.Fatalf("read offsets: %v", err)
	}
	defer rows.Close()
	out := map[int32]int64{}
	for rows.Next() {
		var p int32
		var o int64
		if err := rows.Scan(&p, &o); err != nil {
			t.Fatalf("read offsets: %v", err)
		}
		out[p] = o
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read offsets: %v", err)
	}
	return out
}

func countRows(t *testing.T, st *Store) int {
	t.Helper()
	var n int
	if err := st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM notifications").Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

// storedIDs returns the ids in the table.
func storedIDs(t *testing.T, st *Store) map[uuid.UUID]bool {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(), "SELECT id FROM notifications")
	if err != nil {
		t.Fatalf("read ids: %v", err)
	}
	defer rows.Close()
	out := map[uuid.UUID]bool{}
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			t.Fatalf("read ids: %v", err)
		}
		out[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read ids: %v", err)
	}
	return out
}

func sameOffsets(t *testing.T, what string, got, want map[int32]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
	for p, o := range want {
		if g, ok := got[p]; !ok || g != o {
			t.Fatalf("%s: got %v, want %v", what, got, want)
		}
	}
}

func TestMigrateFreshSchemaReachesLatestVersionAndIsIdempotent(t *testing.T) {
	t.Parallel()
	st := openStore(t, pgtest.Schema(t))
	ctx := context.Background()
	if LatestVersion() < 1 {
		t.Fatalf("LatestVersion: got %d, want at least 1", LatestVersion())
	}
	for run := 1; run <= 2; run++ {
		v, err := st.Migrate(ctx)
		if err != nil {
			t.Fatalf("migrate run %d: got error %v, want nil", run, err)
		}
		if v != LatestVersion() {
			t.Fatalf("migrate run %d: got version %d, want %d", run, v, LatestVersion())
		}
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var applied int
	if err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM notifyd_schema_version").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != len(ms) {
		t.Fatalf("recorded migrations after two runs: got %d, want %d", applied, len(ms))
	}
	// The schema the rest of notifyd relies on is there.
	for _, table := range []string{"notifications", "notifyd_offsets"} {
		var exists bool
		if err := st.Pool().QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if !exists {
			t.Fatalf("table %s after migrate: got missing, want present", table)
		}
	}
}

func TestMigrateConcurrentCallsAllSucceed(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	const n = 4
	stores := make([]*Store, n)
	for i := range stores {
		stores[i] = openStore(t, url)
	}
	var wg sync.WaitGroup
	versions := make([]int, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i, st := range stores {
		wg.Go(func() {
			<-start
			versions[i], errs[i] = st.Migrate(context.Background())
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("migrate %d: got error %v, want nil", i, errs[i])
		}
		if versions[i] != LatestVersion() {
			t.Fatalf("migrate %d: got version %d, want %d", i, versions[i], LatestVersion())
		}
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var applied int
	if err := stores[0].Pool().QueryRow(context.Background(), "SELECT count(*) FROM notifyd_schema_version").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != len(ms) {
		t.Fatalf("recorded migrations: got %d, want %d", applied, len(ms))
	}
}

func TestMigrateRefusesSchemaNewerThanBinary(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	newer := LatestVersion() + 1
	if _, err := st.Pool().Exec(ctx, "INSERT INTO notifyd_schema_version (version, name) VALUES ($1, 'from the future')", newer); err != nil {
		t.Fatal(err)
	}
	v, err := st.Migrate(ctx)
	if err == nil {
		t.Fatalf("migrate a schema at version %d with a binary at %d: got nil error, want a refusal", newer, LatestVersion())
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Fatalf("migrate error: got %q, want it to say the schema is newer", err)
	}
	if v != newer {
		t.Fatalf("migrate version: got %d, want %d (the database's)", v, newer)
	}
}

// A search_path that names no schema of the database is a bad setting: the
// error says so and names it, instead of failing deep in a statement.
func TestMigrateNamesASearchPathWithoutASchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, sep := pgtest.URL(t), "?"
	switch {
	case !strings.Contains(url, "://"):
		sep = " " // key=value pairs
	case strings.Contains(url, "?"):
		sep = "&"
	}
	st, err := Open(ctx, Config{URL: url + sep + "search_path=notifyd_no_such_schema"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Migrate(ctx)
	if err == nil || !strings.Contains(err.Error(), "--database-url") || !strings.Contains(err.Error(), "notifyd_no_such_schema") {
		t.Fatalf("migrate with a search_path naming no schema: got %v, want an error naming --database-url and the search_path", err)
	}
}

func TestClaimCreatesNoOffsetRowsAndReturnsStoredPositions(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()

	got := claim(t, st, 0, 1, 2)
	sameOffsets(t, "first claim", got, map[int32]int64{0: NoOffset, 1: NoOffset, 2: NoOffset})
	sameOffsets(t, "rows after first claim", offsets(t, st), map[int32]int64{0: NoOffset, 1: NoOffset, 2: NoOffset})

	// Claiming again creates nothing new and still reports NoOffset.
	sameOffsets(t, "second claim", claim(t, st, 0, 1, 2), map[int32]int64{0: NoOffset, 1: NoOffset, 2: NoOffset})

	_, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: NoOffset, To: 10}, {Partition: 2, From: NoOffset, To: 7}},
		Rows:   testRows(3)})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	sameOffsets(t, "claim after write", claim(t, st, 0, 1, 2), map[int32]int64{0: 10, 1: NoOffset, 2: 7})
	// A partition claimed for the first time alongside stored ones.
	sameOffsets(t, "claim with a new partition", claim(t, st, 2, 3), map[int32]int64{2: 7, 3: NoOffset})
	// Another group's positions are its own.
	other, err := st.Claim(ctx, "other", testTopic, []int32{0})
	if err != nil {
		t.Fatal(err)
	}
	sameOffsets(t, "claim of another group", other, map[int32]int64{0: NoOffset})
}

func TestWriteStoresExactContentAndAdvancesOffsets(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	claim(t, st, 0, 1)

	rows := exactContentRows()
	res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: NoOffset, To: 5}, {Partition: 1, From: NoOffset, To: 2}},
		Rows:   rows})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if want := (Result{Inserted: 3, Statements: 1}); res != want {
		t.Fatalf("result: got %+v, want %+v", res, want)
	}

	checkStored(t, st, rows)
	sameOffsets(t, "offsets after write", offsets(t, st), map[int32]int64{0: 5, 1: 2})

	// A second batch continues from the stored positions.
	res, err = st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: 5, To: 9}}, Rows: testRows(4)})
	if err != nil {
		t.Fatalf("second write: %v", err)
	}
	if res.Inserted != 4 {
		t.Fatalf("second write inserted: got %d, want 4", res.Inserted)
	}
	sameOffsets(t, "offsets after second write", offsets(t, st), map[int32]int64{0: 9, 1: 2})
	if n := countRows(t, st); n != 7 {
		t.Fatalf("rows: got %d, want 7", n)
	}
}

// exactContentRows are rows whose every field tests the write path's
// encoding: scripts, escapes, the largest title and body, NULL and empty
// data, times before PostgreSQL's epoch and with a zone.
func exactContentRows() []notification.Notification {
	tokyo := time.FixedZone("JST", 9*3600)
	return []notification.Notification{
		{
			ID: uuid.New(), UserID: uuid.New(), EventType: "order.shipped:v2-x_y",
			Title:     "Grüße aus Zürich 🎉 日本語 ñ",
			Body:      "line one\nline \"two\"\ttab \\ backslash — e\u0301 (combining) 👩‍👩‍👧 \u200b zero-width, 𝄞",
			Data:      []byte(`{"b": [1, 2.5, "x"], "a": {"nested": true, "nul": null}, "emoji": "🎉"}`),
			CreatedAt: time.Date(2026, 3, 4, 5, 6, 7, 123456000, tokyo),
		},
		{
			ID: uuid.New(), UserID: uuid.New(), EventType: "e",
			Title:     "t",
			Body:      "",
			Data:      nil,
			CreatedAt: time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		},
		{
			ID: uuid.New(), UserID: uuid.New(), EventType: "x",
			Title:     strings.Repeat("é", 256),
			Body:      strings.Repeat("😀", 4096),
			Data:      []byte(`{}`),
			CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 1000, time.UTC),
		},
	}
}

// checkStored fails t unless every row of rows is stored exactly.
func checkStored(t *testing.T, st *Store, rows []notification.Notification) {
	t.Helper()
	ctx := context.Background()
	for _, want := range rows {
		var (
			userID            uuid.UUID
			eventType, title  string
			body              string
			data              *string
			createdAt         time.Time
			titleLen, bodyLen int
		)
		err := st.Pool().QueryRow(ctx, `SELECT user_id, event_type, title, body, data::text, created_at,
			octet_length(title), octet_length(body) FROM notifications WHERE id = $1`, want.ID).
			Scan(&userID, &eventType, &title, &body, &data, &createdAt, &titleLen, &bodyLen)
		if err != nil {
			t.Fatalf("row %s: %v", want.ID, err)
		}
		if userID != want.UserID {
			t.Fatalf("row %s user_id: got %s, want %s", want.ID, userID, want.UserID)
		}
		if eventType != want.EventType {
			t.Fatalf("row %s event_type: got %q, want %q", want.ID, eventType, want.EventType)
		}
		if title != want.Title || titleLen != len(want.Title) {
			t.Fatalf("row %s title: got %q (%d bytes), want %q (%d bytes)", want.ID, title, titleLen, want.Title, len(want.Title))
		}
		if body != want.Body || bodyLen != len(want.Body) {
			t.Fatalf("row %s body: got %q (%d bytes), want %q (%d bytes)", want.ID, body, bodyLen, want.Body, len(want.Body))
		}
		if !createdAt.Equal(want.CreatedAt) {
			t.Fatalf("row %s created_at: got %s, want %s", want.ID, createdAt, want.CreatedAt)
		}
		switch {
		case want.Data == nil && data != nil:
			t.Fatalf("row %s data: got %s, want NULL", want.ID, *data)
		case want.Data != nil && data == nil:
			t.Fatalf("row %s data: got NULL, want %s", want.ID, want.Data)
		case want.Data != nil && !sameJSON(t, []byte(*data), want.Data):
			t.Fatalf("row %s data: got %s, want the same JSON as %s", want.ID, *data, want.Data)
		}
	}
}

// TestCopyStoresExactContent writes the rows of
// TestWriteStoresExactContentAndAdvancesOffsets in a batch large enough for
// the binary COPY path, which encodes the rows itself.
func TestCopyStoresExactContent(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	claim(t, st, 0)
	rows := append(exactContentRows(), testRows(copyMinRows)...)
	res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: NoOffset, To: int64(len(rows))}}, Rows: rows})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if want := (Result{Inserted: len(rows), Statements: 1}); res != want {
		t.Fatalf("result: got %+v, want %+v", res, want)
	}
	checkStored(t, st, rows)
}

// TestCopyReaderInSmallReads checks that the COPY stream is the same
// whatever the size of the reads that take it, rows larger than a read
// included.
func TestCopyReaderInSmallReads(t *testing.T) {
	rows := append(exactContentRows(), testRows(3)...)
	want := append([]byte(nil), copyHeader...)
	for i := range rows {
		want = appendCopyRow(want, &rows[i])
	}
	want = append(want, 0xff, 0xff)
	for _, size := range []int{2, 7, 64, 1000, 65531} {
		r := &copyReader{rows: rows}
		var got []byte
		buf := make([]byte, size)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil || n == 0 {
				t.Fatalf("read of %d: got %d bytes, %v", size, n, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("reads of %d: got %d bytes, want the %d of one encoding", size, len(got), len(want))
		}
	}
}

// sameJSON reports whether a and b are the same JSON value, whatever their
// whitespace and key order.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("unmarshal %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return string(ja) == string(jb)
}

func TestWriteWithStaleFromIsFencedAndWritesNothing(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	claim(t, st, 0, 1, 2)
	first := testRows(3)
	if _, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: NoOffset, To: 10}, {Partition: 1, From: NoOffset, To: 10}, {Partition: 2, From: NoOffset, To: 10}},
		Rows:   first}); err != nil {
		t.Fatalf("first write: %v", err)
	}
	before := offsets(t, st)

	tests := []struct {
		name   string
		ranges []Range
		want   []int32
	}{
		{"one partition stale", []Range{{Partition: 0, From: 10, To: 20}, {Partition: 1, From: 5, To: 20}}, []int32{1}},
		{"from behind", []Range{{Partition: 2, From: NoOffset, To: 20}}, []int32{2}},
		{"from ahead", []Range{{Partition: 0, From: 11, To: 20}}, []int32{0}},
		{"all stale", []Range{{Partition: 0, From: 3, To: 20}, {Partition: 1, From: 4, To: 20}, {Partition: 2, From: 5, To: 20}}, []int32{0, 1, 2}},
		{"unclaimed partition", []Range{{Partition: 0, From: 10, To: 20}, {Partition: 9, From: NoOffset, To: 20}}, []int32{9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows := testRows(5)
			res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic, Ranges: tt.ranges, Rows: rows,
				Dead: []DeadLetter{{Topic: testTopic, Partition: tt.ranges[0].Partition, Offset: 15, Class: "decode", Reason: "r", Value: []byte("x")}}})
			var fe *FencedError
			if !errors.As(err, &fe) {
				t.Fatalf("error: got %v (%T), want *FencedError", err, err)
			}
			got := slices.Sorted(slices.Values(fe.Partitions))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("fenced partitions: got %v, want %v", got, tt.want)
			}
			if n := deadLetterCount(t, st); n != 0 {
				t.Fatalf("dead letters after fenced write: got %d, want 0", n)
			}
			if res.Inserted != 0 {
				t.Fatalf("inserted: got %d, want 0", res.Inserted)
			}
			if n := countRows(t, st); n != len(first) {
				t.Fatalf("rows after fenced write: got %d, want %d", n, len(first))
			}
			sameOffsets(t, "offsets after fenced write", offsets(t, st), before)
		})
	}
}

func TestWriteSkipsAndCountsDuplicateIDs(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	claim(t, st, 0)
	stored := testRow(0)
	if _, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: NoOffset, To: 1}}, Rows: []notification.Notification{stored}}); err != nil {
		t.Fatal(err)
	}

	again := stored
	again.Title = "a different title for the same id"
	fresh := testRow(1)
	twice := testRow(2)
	twiceCopy := twice
	twiceCopy.Body = "the second copy inside one batch"
	rows := []notification.Notification{fresh, again, twice, testRow(3), twiceCopy}
	res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: 1, To: 6}}, Rows: rows})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if want := (Result{Inserted: 3, Duplicates: 2, Statements: 1}); res != want {
		t.Fatalf("result: got %+v, want %+v", res, want)
	}
	if n := countRows(t, st); n != 4 {
		t.Fatalf("rows: got %d, want 4", n)
	}
	// The first copy wins: a duplicate never overwrites.
	for id, want := range map[uuid.UUID]string{stored.ID: stored.Title} {
		var title string
		if err := st.Pool().QueryRow(ctx, "SELECT title FROM notifications WHERE id = $1", id).Scan(&title); err != nil {
			t.Fatal(err)
		}
		if title != want {
			t.Fatalf("title of %s: got %q, want %q", id, title, want)
		}
	}
	var body string
	if err := st.Pool().QueryRow(ctx, "SELECT body FROM notifications WHERE id = $1", twice.ID).Scan(&body); err != nil {
		t.Fatal(err)
	}
	if body != twice.Body {
		t.Fatalf("body of the id sent twice in one batch: got %q, want %q", body, twice.Body)
	}
	sameOffsets(t, "offsets", offsets(t, st), map[int32]int64{0: 6})

	// A batch of nothing but duplicates still advances the position.
	res, err = st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: 6, To: 8}}, Rows: []notification.Notification{stored, fresh}})
	if err != nil {
		t.Fatalf("write of duplicates: %v", err)
	}
	if res.Inserted != 0 || res.Duplicates != 2 {
		t.Fatalf("result of duplicates only: got %+v, want Inserted 0, Duplicates 2", res)
	}
	sameOffsets(t, "offsets after duplicates only", offsets(t, st), map[int32]int64{0: 8})
}

// addBadTitleCheck makes the database refuse rows titled BAD.
func addBadTitleCheck(t *testing.T, st *Store) {
	t.Helper()
	if _, err := st.Pool().Exec(context.Background(),
		"ALTER TABLE notifications ADD CONSTRAINT no_bad CHECK (title <> 'BAD')"); err != nil {
		t.Fatal(err)
	}
}

func TestWriteIsolatesRowsTheDatabaseRejects(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	addBadTitleCheck(t, st)
	claim(t, st, 0, 1)

	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	const n, k = 1000, 3
	rows := testRows(n)
	var bad []int
	for len(bad) < k {
		if i := rng.IntN(n); !slices.Contains(bad, i) {
			bad = append(bad, i)
			rows[i].Title = "BAD"
		}
	}
	slices.Sort(bad)

	var got []Rejected
	res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: NoOffset, To: 600}, {Partition: 1, From: NoOffset, To: 400}}, Rows: rows,
		DLQTopic: testTopic + ".dlq",
		Refused: func(i int, err error) DeadLetter {
			got = append(got, Rejected{Index: i, Err: err})
			return DeadLetter{Topic: testTopic, Offset: int64(i), Class: "store", Reason: err.Error(), Value: []byte(rows[i].Title)}
		}})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	t.Logf("%d rows, %d rejected at %v: %d statements", n, k, bad, res.Statements)
	var recorded []int
	dl, err := st.Pool().Query(ctx, "SELECT source_offset FROM notifyd_dead_letters WHERE class = 'store' AND value = 'BAD' AND dlq_topic = $1 ORDER BY 1", testTopic+".dlq")
	if err != nil {
		t.Fatal(err)
	}
	for dl.Next() {
		var o int
		if err := dl.Scan(&o); err != nil {
			t.Fatal(err)
		}
		recorded = append(recorded, o)
	}
	if !slices.Equal(recorded, bad) {
		t.Fatalf("dead letters recorded for offsets: got %v, want %v", recorded, bad)
	}
	var idx []int
	for _, r := range got {
		idx = append(idx, r.Index)
		var pe *pgconn.PgError
		if !errors.As(r.Err, &pe) || pe.Code != "23514" {
			t.Fatalf("reject error of row %d: got %v, want SQLSTATE 23514", r.Index, r.Err)
		}
	}
	slices.Sort(idx)
	if !slices.Equal(idx, bad) {
		t.Fatalf("rejected indexes: got %v, want %v", idx, bad)
	}
	if res.Inserted != n-k || res.Rejected != k || res.Duplicates != 0 {
		t.Fatalf("result: got %+v, want Inserted %d, Rejected %d, Duplicates 0", res, n-k, k)
	}
	// The COPY that failed, then one statement isolating every row.
	if res.Statements != 2 {
		t.Fatalf("statements: got %d, want 2", res.Statements)
	}
	ids := storedIDs(t, st)
	if len(ids) != n-k {
		t.Fatalf("rows: got %d, want %d", len(ids), n-k)
	}
	for i, r := range rows {
		if ids[r.ID] == slices.Contains(bad, i) {
			t.Fatalf("row %d (bad %v) stored: got %v, want %v", i, slices.Contains(bad, i), ids[r.ID], !slices.Contains(bad, i))
		}
	}
	sameOffsets(t, "offsets", offsets(t, st), map[int32]int64{0: 600, 1: 400})
}

func TestWriteRecordsDeadLettersUnchangedInTheSameTransaction(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	claim(t, st, 0)
	ts := time.Date(2026, 3, 4, 5, 6, 7, 8000, time.UTC)
	letters := []DeadLetter{
		{Topic: testTopic, Partition: 0, Offset: 0, Timestamp: ts, Class: "decode", Reason: "not JSON\x00 \xff",
			Key: nil, Value: []byte{0, 0xff, '{'}, Headers: []Header{{Key: []byte{0xfe, 'k'}, Value: nil}, {Key: []byte("h"), Value: []byte{}}}},
		{Topic: testTopic, Partition: 0, Offset: 1, Timestamp: ts, Class: "validate", Reason: "no user_id",
			Key: []byte{}, Value: nil},
	}
	if _, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic, DLQTopic: "d",
		Ranges: []Range{{Partition: 0, From: NoOffset, To: 3}}, Rows: testRows(1), Dead: letters}); err != nil {
		t.Fatalf("write: %v", err)
	}
	rows, err := st.Pool().Query(ctx, `SELECT source_topic, source_partition, source_offset, source_timestamp, class, reason,
		key, value, headers FROM notifyd_dead_letters WHERE consumer_group = $1 AND dlq_topic = 'd' ORDER BY source_offset`, testGroup)
	if err != nil {
		t.Fatal(err)
	}
	var got []DeadLetter
	for rows.Next() {
		var l DeadLetter
		var hs []byte
		if err := rows.Scan(&l.Topic, &l.Partition, &l.Offset, &l.Timestamp, &l.Class, &l.Reason, &l.Key, &l.Value, &hs); err != nil {
			t.Fatal(err)
		}
		if l.Headers, err = DecodeHeaders(hs); err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(letters) {
		t.Fatalf("dead letters: got %d, want %d", len(got), len(letters))
	}
	for i, want := range letters {
		g := got[i]
		if (g.Key == nil) != (want.Key == nil) || string(g.Key) != string(want.Key) ||
			(g.Value == nil) != (want.Value == nil) || string(g.Value) != string(want.Value) {
			t.Fatalf("letter %d key/value: got %q/%q (nil %v/%v), want %q/%q (nil %v/%v)", i,
				g.Key, g.Value, g.Key == nil, g.Value == nil, want.Key, want.Value, want.Key == nil, want.Value == nil)
		}
		if fmt.Sprint(g.Headers) != fmt.Sprint(want.Headers) {
			t.Fatalf("letter %d headers: got %v, want %v", i, g.Headers, want.Headers)
		}
		if g.Topic != want.Topic || g.Offset != want.Offset || !g.Timestamp.Equal(want.Timestamp) || g.Class != want.Class {
			t.Fatalf("letter %d: got %+v, want %+v", i, g, want)
		}
	}
	if want := "not JSON\uFFFD \uFFFD"; got[0].Reason != want {
		t.Fatalf("reason made storable: got %q, want %q", got[0].Reason, want)
	}
	sameOffsets(t, "offsets", offsets(t, st), map[int32]int64{0: 3})
}

func TestWriteReusesPooledConnections(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	claim(t, st, 0)
	const writes = 100
	newBefore := st.Pool().Stat().NewConnsCount()
	acquiresBefore := st.Pool().Stat().AcquireCount()
	for i := range writes {
		from := int64(i)
		if i == 0 {
			from = NoOffset
		}
		if _, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
			Ranges: []Range{{Partition: 0, From: from, To: int64(i) + 1}},
			Rows:   testRows(5)}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if s := st.Pool().Stat(); s.TotalConns() > s.MaxConns() {
			t.Fatalf("after write %d: got %d connections, want at most %d", i, s.TotalConns(), s.MaxConns())
		}
	}
	s := st.Pool().Stat()
	if got := s.AcquireCount() - acquiresBefore; got < writes {
		t.Fatalf("acquires: got %d, want at least %d", got, writes)
	}
	// Sequential writes need one connection; a pool that did not reuse
	// them would open one per write.
	if got := s.NewConnsCount() - newBefore; got > 1 {
		t.Fatalf("new connections over %d sequential writes: got %d, want at most 1", writes, got)
	}
	if s.TotalConns() > s.MaxConns() {
		t.Fatalf("connections: got %d, want at most %d", s.TotalConns(), s.MaxConns())
	}
	sameOffsets(t, "offsets", offsets(t, st), map[int32]int64{0: writes})
}

// A write whose COMMIT went through but whose acknowledgement was lost is
// tried again with the same batch: the store recognises its own token in
// the offset rows and reports the first attempt's result, instead of a
// fenced write. Another batch over the same ranges is fenced.
func TestWriteRecognisesItsOwnCommittedAttempt(t *testing.T) {
	t.Parallel()
	st := migratedStore(t)
	ctx := context.Background()
	claim(t, st, 0, 1)
	rows := testRows(10)
	b := &Batch{Group: testGroup, Topic: testTopic, DLQTopic: "d",
		Ranges: []Range{{Partition: 0, From: NoOffset, To: 6}, {Partition: 1, From: NoOffset, To: 5}}, Rows: rows,
		Dead: []DeadLetter{{Topic: testTopic, Partition: 1, Offset: 4, Class: "decode", Reason: "r", Value: []byte("x")}}}
	first, err := st.Write(ctx, b)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	again, err := st.Write(ctx, b)
	if err != nil {
		t.Fatalf("second attempt of the same batch: got %v, want nil", err)
	}
	if again != first {
		t.Fatalf("second attempt's result: got %+v, want the first's %+v", again, first)
	}
	if n := countRows(t, st); n != len(rows) {
		t.Fatalf("rows: got %d, want %d", n, len(rows))
	}
	if n := deadLetterCount(t, st); n != 1 {
		t.Fatalf("dead letters: got %d, want 1", n)
	}
	sameOffsets(t, "offsets", offsets(t, st), map[int32]int64{0: 6, 1: 5})

	other := *b
	other.token, other.last = uuid.Nil, nil
	var fe *FencedError
	if _, err := st.Write(ctx, &other); !errors.As(err, &fe) {
		t.Fatalf("another batch over the same ranges: got %v, want *FencedError", err)
	}
}

// Behaviour 7: a batch whose every row the database refuses is isolated in
// a number of round trips that does not grow with its rows, so that it fits
// inside the default --write-timeout (5 s) over a network with 1 ms round
// trips (the proxy adds the delay).
func TestAllRefusedBatchIsolatedInConstantRoundTrips(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	st := openStore(t, url)
	if _, err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	addBadTitleCheck(t, st)
	proxy, proxied := pgtest.Proxied(t, url)
	slow := openStore(t, proxied)
	proxy.SetDelay(time.Millisecond)
	claim(t, slow, 0)
	for _, n := range []int{10, 2500} {
		rows := testRows(n)
		for i := range rows {
			rows[i].Title = "BAD"
		}
		from := claim(t, slow, 0)[0]
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		res, err := slow.Write(ctx, &Batch{Group: testGroup, Topic: testTopic, DLQTopic: "d",
			Ranges: []Range{{Partition: 0, From: from, To: max(from, 0) + int64(n)}}, Rows: rows,
			Refused: func(i int, err error) DeadLetter {
				return DeadLetter{Topic: testTopic, Offset: int64(i), Class: "store", Reason: err.Error()}
			}})
		cancel()
		if err != nil {
			t.Fatalf("%d refused rows at 1 ms round trips: %v", n, err)
		}
		t.Logf("%d refused rows at 1 ms round trips: %s, %d statements", n, time.Since(start).Round(time.Millisecond), res.Statements)
		if res.Rejected != n || res.Inserted != 0 || res.Statements != 2 {
			t.Fatalf("%d refused rows: got %+v, want Rejected %d, Inserted 0, Statements 2 (whatever the rows)", n, res, n)
		}
	}
	if got := deadLetterCount(t, st); got != 2510 {
		t.Fatalf("dead letters: got %d, want 2510", got)
	}
}

// TestParamsAreSetOnEveryConnectionUnlessTheURLSetsThem: Config.Params
// reach the server on every connection of the pool, and a parameter the
// connection string sets itself is left as it says.
func TestParamsAreSetOnEveryConnectionUnlessTheURLSetsThem(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Schema(t)
	show := func(st *Store, name string) string {
		t.Helper()
		var v string
		if err := st.Pool().QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	params := map[string]string{"plan_cache_mode": "force_generic_plan", "application_name": "from-params"}
	withName := url + " application_name=from-url"
	if strings.Contains(url, "://") { // pgtest.Schema's URL has a query already
		withName = url + "&application_name=from-url"
	}
	st, err := Open(ctx, Config{URL: withName, Params: params, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Two connections at once: both were set up with the parameters.
	c1, err := st.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Release()
	if got := show(st, "plan_cache_mode"); got != "force_generic_plan" {
		t.Errorf("plan_cache_mode = %q, want force_generic_plan", got)
	}
	if got := show(st, "application_name"); got != "from-url" {
		t.Errorf("application_name = %q, want the URL's from-url", got)
	}
	var v string
	if err := c1.QueryRow(ctx, "SHOW plan_cache_mode").Scan(&v); err != nil || v != "force_generic_plan" {
		t.Errorf("first connection: plan_cache_mode = %q (%v), want force_generic_plan", v, err)
	}
}
