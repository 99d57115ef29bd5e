package postgres

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
)

// day0 is the clock of the partition tests: a Tuesday noon, UTC.
var day0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// clockStore opens a migrated store on url with cfg and a clock the test
// moves.
func clockStore(t *testing.T, url string, cfg Config) (*Store, *time.Time) {
	t.Helper()
	cfg.URL = url
	st, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	now := day0
	st.now = func() time.Time { return now }
	if _, err := st.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return st, &now
}

func maintain(t *testing.T, st *Store) MaintainResult {
	t.Helper()
	res, err := st.Maintain(context.Background())
	if err != nil {
		t.Fatalf("maintain: %v", err)
	}
	return res
}

// writeAt writes rows as the next batch of partition 0 and returns the result.
func writeAt(t *testing.T, st *Store, rows []notification.Notification) Result {
	t.Helper()
	ctx := context.Background()
	from := claim(t, st, 0)[0]
	res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
		Ranges: []Range{{Partition: 0, From: from, To: max(from, 0) + int64(len(rows))}}, Rows: rows})
	if err != nil {
		t.Fatalf("write %d rows: %v", len(rows), err)
	}
	return res
}

func rowAt(c time.Time) notification.Notification {
	r := testRow(0)
	r.ID = uuid.New()
	r.CreatedAt = c
	return r
}

// partitionOf names the partition holding the row with id.
func partitionOf(t *testing.T, st *Store, id uuid.UUID) string {
	t.Helper()
	var name string
	err := st.Pool().QueryRow(context.Background(), "SELECT tableoid::regclass::text FROM notifications WHERE id = $1", id).Scan(&name)
	if err != nil {
		t.Fatalf("find row %s: %v", id, err)
	}
	return name
}

// checkCover fails the test unless parts run from MINVALUE to MAXVALUE
// without gap, past first and future last.
func checkCover(t *testing.T, parts []Partition) {
	t.Helper()
	if len(parts) < 2 || parts[0].Name != pastPartition || !parts[0].From.IsZero() ||
		parts[len(parts)-1].Name != futurePartition || !parts[len(parts)-1].To.IsZero() {
		t.Fatalf("partitions: got %v, want %s first from MINVALUE and %s last to MAXVALUE", parts, pastPartition, futurePartition)
	}
	for i := 1; i < len(parts); i++ {
		if !parts[i].From.Equal(parts[i-1].To) {
			t.Fatalf("partitions %s and %s: got a gap or overlap (%s, %s)", parts[i-1].Name, parts[i].Name, parts[i-1].To, parts[i].From)
		}
	}
}

func TestMaintainMakesPartitionsAheadAndStoresRowsOfAnyCreatedAt(t *testing.T) {
	t.Parallel()
	st, now := clockStore(t, pgtest.Schema(t), Config{})
	ctx := context.Background()

	// Rows before any maintenance have a place too.
	early := rowAt(day0)
	writeAt(t, st, []notification.Notification{early})
	if got := partitionOf(t, st, early.ID); got != futurePartition {
		t.Fatalf("row written before maintenance: got partition %s, want %s", got, futurePartition)
	}

	res := maintain(t, st)
	parts, err := st.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, parts)
	wantUntil := time.Date(2026, 12, 9, 0, 0, 0, 0, time.UTC) // day0 + 7 days, rounded up to a bound
	if !res.AheadUntil.Equal(wantUntil) || !parts[len(parts)-1].From.Equal(wantUntil) {
		t.Fatalf("ahead until: got %s (future from %s), want %s", res.AheadUntil, parts[len(parts)-1].From, wantUntil)
	}
	if got := partitionOf(t, st, early.ID); got != "notifications_p20261201_0000" {
		t.Fatalf("row of today after the split: got partition %s, want notifications_p20261201_0000", got)
	}
	if again := maintain(t, st); len(again.Created) != 0 || len(again.Dropped) != 0 {
		t.Fatalf("second maintenance at the same time: got %+v, want nothing done", again)
	}

	cases := []struct {
		name string
		at   time.Time
		want string
	}{
		{"far past", time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC), pastPartition},
		{"year 1", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), pastPartition},
		{"today", day0.Add(time.Hour), "notifications_p20261201_0000"},
		{"in 3 days", day0.Add(72 * time.Hour), "notifications_p20261204_0000"},
		{"last bound", wantUntil.Add(-time.Microsecond), "notifications_p20261208_0000"},
		{"just beyond", wantUntil, futurePartition},
		{"in 10 days", day0.Add(240 * time.Hour), futurePartition},
		{"year 9999", time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC), futurePartition},
	}
	rows := make([]notification.Notification, len(cases))
	for i, c := range cases {
		rows[i] = rowAt(c.at)
	}
	if res := writeAt(t, st, rows); res.Inserted != len(rows) {
		t.Fatalf("write: got %d inserted, want %d", res.Inserted, len(rows))
	}
	for i, c := range cases {
		if got := partitionOf(t, st, rows[i].ID); got != c.want {
			t.Errorf("%s (%s): got partition %s, want %s", c.name, c.at, got, c.want)
		}
	}

	// Five days later the split moves the row of "in 10 days" out of
	// notifications_future into its own partition; nothing is lost.
	*now = day0.Add(5 * 24 * time.Hour)
	res = maintain(t, st)
	if len(res.Created) != 5 {
		t.Fatalf("partitions made five days later: got %v, want 5", res.Created)
	}
	parts, err = st.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, parts)
	if got := partitionOf(t, st, rows[6].ID); got != "notifications_p20261211_0000" {
		t.Fatalf("row of day 10 after the split: got %s, want notifications_p20261211_0000", got)
	}
	if got, want := countRows(t, st), len(rows)+1; got != want {
		t.Fatalf("rows after the splits: got %d, want %d", got, want)
	}
}

func TestAheadPlanCatchesUpAfterALongGap(t *testing.T) {
	iv := 24 * time.Hour
	parts := []Partition{{Name: pastPartition, To: day0.Add(-5000 * iv)}, {Name: futurePartition, From: day0.Add(-5000 * iv)}}
	plan, err := aheadPlan(parts, day0, iv, 7*iv)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != 9 || !plan[0][0].Equal(parts[1].From) || !plan[0][1].Equal(alignDown(day0, iv)) {
		t.Fatalf("plan after a 5000-day gap: got %d ranges starting %v, want one catch-up range to today then 8 days", len(plan), plan[0])
	}
	for i := 1; i < len(plan); i++ {
		if !plan[i][0].Equal(plan[i-1][1]) || plan[i][1].Sub(plan[i][0]) != iv {
			t.Fatalf("range %d: got %v after %v, want contiguous days", i, plan[i], plan[i-1])
		}
	}
}

func TestRetentionDropsWholePartitionsAndSkipsExpiredMessages(t *testing.T) {
	t.Parallel()
	st, now := clockStore(t, pgtest.Schema(t), Config{Retention: 72 * time.Hour})
	ctx := context.Background()
	maintain(t, st)
	var rows []notification.Notification
	for d := range 8 {
		rows = append(rows, rowAt(day0.Add(time.Duration(d)*24*time.Hour)))
	}
	writeAt(t, st, rows)
	// Read state of the rows of days 0 and 5, as the inbox API keeps it.
	for _, r := range []notification.Notification{rows[0], rows[5]} {
		if _, err := st.Pool().Exec(ctx, `INSERT INTO notifyd_inbox_state (user_id, notification_id, created_at, read_at, read_version)
			VALUES ($1, $2, $3, now(), 1)`, r.UserID, r.ID, r.CreatedAt); err != nil {
			t.Fatal(err)
		}
	}

	// Six days on (cutoff Dec 4, 12:00), the partitions of days 0-2 have
	// ended more than 72 h ago.
	*now = day0.Add(6 * 24 * time.Hour)
	res := maintain(t, st)
	want := []string{"notifications_p20261201_0000", "notifications_p20261202_0000", "notifications_p20261203_0000"}
	if fmt.Sprint(res.Dropped) != fmt.Sprint(want) {
		t.Fatalf("dropped: got %v, want %v", res.Dropped, want)
	}
	parts, err := st.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, parts)
	if got := countRows(t, st); got != 5 {
		t.Fatalf("rows after retention: got %d, want 5", got)
	}
	if !committedChecks(t, st)[pastPartition] {
		t.Fatalf("the new %s has no validated %s", pastPartition, committedCheck)
	}
	srows, err := st.Pool().Query(ctx, "SELECT notification_id FROM notifyd_inbox_state")
	if err != nil {
		t.Fatal(err)
	}
	state, err := pgx.CollectRows(srows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	if len(state) != 1 || state[0] != rows[5].ID {
		t.Fatalf("read state after retention: got rows for %v, want only the row of day 5 (%v)", state, rows[5].ID)
	}
	// A message already older than the retention is counted, not stored,
	// and its offset moves on.
	old, fresh := rowAt(day0), rowAt(now.Add(-time.Hour))
	res2 := writeAt(t, st, []notification.Notification{old, fresh})
	if res2.Expired != 1 || res2.Inserted != 1 || res2.Duplicates != 0 {
		t.Fatalf("write of an expired and a fresh row: got %+v, want 1 expired, 1 inserted", res2)
	}
	if got := offsets(t, st)[0]; got != 10 {
		t.Fatalf("offset after the write: got %d, want 10", got)
	}
	if ids := storedIDs(t, st); ids[old.ID] || !ids[fresh.ID] {
		t.Fatalf("after the write: expired row stored %v, fresh row stored %v; want false, true", ids[old.ID], ids[fresh.ID])
	}
}

func TestDedupeWindowAcrossPartitions(t *testing.T) {
	t.Parallel()
	st, _ := clockStore(t, pgtest.Schema(t), Config{})
	maintain(t, st)
	base := rowAt(day0)
	writeAt(t, st, []notification.Notification{base})

	// A copy sent again with its id but without its created_at, which is
	// then the new record's timestamp.
	at := func(d time.Duration) notification.Notification {
		r := base
		r.CreatedAt, r.CreatedAtMayDiffer = day0.Add(d), true
		return r
	}
	cases := []struct {
		name string
		row  notification.Notification
		dup  bool
	}{
		{"same created_at", at(0), true},
		{"a day later, next partition", at(24 * time.Hour), true},
		{"6 days earlier, in the past partition", at(-6 * 24 * time.Hour), true},
		{"168 h later, the window's edge", at(168 * time.Hour), true},
		{"169 h later, outside the window", at(169 * time.Hour), false},
		{"a year earlier", at(-365 * 24 * time.Hour), false},
		// An id sent again with another created_at of its own is not looked
		// for: a producer's retry carries the same created_at.
		{"sent with another created_at", func() notification.Notification { r := at(time.Hour); r.CreatedAtMayDiffer = false; return r }(), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := writeAt(t, st, []notification.Notification{c.row})
			if got := res.Duplicates == 1; got != c.dup || res.Inserted+res.Duplicates != 1 {
				t.Fatalf("got %+v, want duplicate %v", res, c.dup)
			}
		})
	}
	// Within one batch: the second row of an id within the window is a
	// duplicate even though nothing is stored yet.
	a := rowAt(day0)
	b := a
	b.CreatedAt, b.CreatedAtMayDiffer = a.CreatedAt.Add(30*time.Hour), true
	res := writeAt(t, st, []notification.Notification{a, b})
	if res.Inserted != 1 || res.Duplicates != 1 {
		t.Fatalf("one batch with an id twice, 30 h apart: got %+v, want 1 inserted, 1 duplicate", res)
	}
	if got := partitionOf(t, st, a.ID); got != "notifications_p20261201_0000" {
		t.Fatalf("kept row of the pair: got partition %s, want the first row's", got)
	}
}

// The probe names the partitions it read; partitions made or dropped since,
// by another process, are found out and read again: a stored copy in a
// partition made after the probe read them is still a duplicate, and a
// dropped one does not fail the write.
func TestDedupeProbeFollowsPartitionsChangedElsewhere(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	st, _ := clockStore(t, url, Config{})
	maintain(t, st)
	ctx := context.Background()
	first := rowAt(day0)
	first.CreatedAtMayDiffer = true
	writeAt(t, st, []notification.Notification{first}) // the probe reads the partitions
	before := st.probeParts.Load()
	if before == nil {
		t.Fatal("the probe read no partitions")
	}

	// Another process, three days on, makes partitions up to ten days past
	// day 0, and a row lands in one of them.
	other, otherNow := clockStore(t, url, Config{Retention: 48 * time.Hour})
	*otherNow = day0.Add(3 * 24 * time.Hour)
	maintain(t, other)
	stored := rowAt(day0.Add(9 * 24 * time.Hour))
	if _, err := other.Pool().Exec(ctx, `INSERT INTO notifications (id, user_id, event_type, title, body, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, stored.ID, stored.UserID, stored.EventType, stored.Title, stored.Body, stored.CreatedAt); err != nil {
		t.Fatal(err)
	}
	if got := partitionOf(t, st, stored.ID); got != "notifications_p20261210_0000" {
		t.Fatalf("stored copy in %s, want a partition made after the probe read them", got)
	}
	again := stored
	again.CreatedAt, again.CreatedAtMayDiffer = stored.CreatedAt.Add(-24*time.Hour), true
	if res := writeAt(t, st, []notification.Notification{again}); res.Duplicates != 1 || res.Inserted != 0 {
		t.Fatalf("copy of a row in a partition made elsewhere: got %+v, want 1 duplicate", res)
	}
	if after := st.probeParts.Load(); after.key == before.key {
		t.Fatal("the probe did not read the partitions again")
	}

	// The other process, eight days on, drops the partitions older than two
	// days that the probe's statement names.
	*otherNow = day0.Add(8 * 24 * time.Hour)
	if res := maintain(t, other); len(res.Dropped) == 0 {
		t.Fatal("retention dropped nothing")
	}
	late := rowAt(day0.Add(7 * 24 * time.Hour))
	late.CreatedAtMayDiffer = true
	dup := stored
	dup.CreatedAt, dup.CreatedAtMayDiffer = stored.CreatedAt.Add(time.Hour), true
	if res := writeAt(t, st, []notification.Notification{late, dup}); res.Inserted != 1 || res.Duplicates != 1 {
		t.Fatalf("after partitions were dropped elsewhere: got %+v, want 1 inserted, 1 duplicate", res)
	}
}

// In a batch of the drain's size, where the probed ids are told apart from
// the others by screenWindow's bit filter, the one marked row whose id an
// earlier, unmarked row of the batch has, and the one whose id is stored,
// are the duplicates; every other row is stored.
func TestDedupeWindowInALargeBatch(t *testing.T) {
	t.Parallel()
	st, _ := clockStore(t, pgtest.Schema(t), Config{})
	maintain(t, st)
	stored := rowAt(day0)
	writeAt(t, st, []notification.Notification{stored})
	rows := make([]notification.Notification, 2000)
	for i := range rows {
		rows[i] = rowAt(day0.Add(time.Duration(i) * time.Second))
		rows[i].CreatedAtMayDiffer = i%5 == 0
	}
	rows[1000].ID, rows[1000].CreatedAtMayDiffer = rows[3].ID, true // rows[3] is not marked
	rows[1000].CreatedAt = rows[3].CreatedAt.Add(2 * time.Hour)
	rows[1500].ID, rows[1500].CreatedAtMayDiffer = stored.ID, true
	rows[1500].CreatedAt = stored.CreatedAt.Add(3 * time.Hour)
	res := writeAt(t, st, rows)
	if res.Inserted != len(rows)-2 || res.Duplicates != 2 {
		t.Fatalf("got %+v, want %d inserted and 2 duplicates", res, len(rows)-2)
	}
}

func TestIDFilterHasEveryIDAdded(t *testing.T) {
	var f idFilter
	ids := make([][16]byte, 5000)
	for i := range ids {
		ids[i] = uuid.New()
		f.add(ids[i])
	}
	for _, id := range ids {
		if !f.has(id) {
			t.Fatalf("id %x added but not found", id)
		}
	}
	var empty idFilter
	if empty.has(uuid.New()) {
		t.Fatal("an empty filter has an id")
	}
}

func TestReadPlanUsesPartitionIndexesInOrder(t *testing.T) {
	t.Parallel()
	st, _ := clockStore(t, pgtest.Schema(t), Config{})
	ctx := context.Background()
	maintain(t, st)
	// A week of history for 200 users, 30k rows.
	users := make([]uuid.UUID, 200)
	for i := range users {
		users[i] = uuid.New()
	}
	var rows []notification.Notification
	for i := range 30_000 {
		r := rowAt(day0.Add(time.Duration(i) * 20 * time.Second))
		r.UserID = users[i%len(users)]
		rows = append(rows, r)
	}
	writeAt(t, st, rows)
	if _, err := st.Pool().Exec(ctx, "ANALYZE notifications"); err != nil {
		t.Fatal(err)
	}
	lines, err := explain(ctx, st, users[7])
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(lines, "\n")
	if strings.Contains(text, "Merge Append") || strings.Contains(text, "Sort") || !strings.Contains(text, "Append") ||
		!strings.Contains(text, "Index Scan using notifications_p20261208_0000_user_id_created_at_idx") {
		t.Fatalf("plan of the latest-20 query: got\n%s\nwant an ordered Append of index scans, no sort", text)
	}
	// It stops early: partitions older than the ones holding the 20 rows
	// are never executed.
	if !strings.Contains(text, "(never executed)") {
		t.Fatalf("plan of the latest-20 query: got\n%s\nwant older partitions never executed", text)
	}

	// As a prepared statement, the server settles on one generic plan
	// after five custom ones, so that an execution is not planned again
	// over every partition; the generic plan reads the same way.
	conn, err := st.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "PREPARE latest(uuid) AS "+LatestQuery); err != nil {
		t.Fatal(err)
	}
	exec := "EXECUTE latest('" + users[7].String() + "')"
	for range 6 {
		if _, err := conn.Exec(ctx, exec); err != nil {
			t.Fatal(err)
		}
	}
	plan, err := conn.Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "+exec)
	if err != nil {
		t.Fatal(err)
	}
	lines, err = pgx.CollectRows(plan, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var generic, custom int64
	if err := conn.QueryRow(ctx, "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'latest'").Scan(&generic, &custom); err != nil {
		t.Fatal(err)
	}
	if generic == 0 {
		t.Fatalf("prepared latest-20 query: got %d generic and %d custom plans in 8 executions, want the generic plan chosen", generic, custom)
	}
	text = strings.Join(lines, "\n")
	if strings.Contains(text, "Merge Append") || strings.Contains(text, "Sort") || !strings.Contains(text, "(never executed)") {
		t.Fatalf("generic plan of the latest-20 query: got\n%s\nwant an ordered Append of index scans, older partitions never executed", text)
	}
}

func explain(ctx context.Context, st *Store, user uuid.UUID) ([]string, error) {
	rows, err := st.Pool().Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "+LatestQuery, user)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func TestMaintenanceConcurrentWithIngestLosesAndDuplicatesNothing(t *testing.T) {
	t.Parallel()
	st, now := clockStore(t, pgtest.Schema(t), Config{Retention: 48 * time.Hour})
	ctx := context.Background()
	maintain(t, st)
	var mu sync.Mutex // guards *now, read by the store's clock
	st.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return *now }

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written int
	var werr error
	claim(t, st, 0)
	wg.Go(func() {
		from := NoOffset
		for {
			select {
			case <-stop:
				return
			default:
			}
			rows := make([]notification.Notification, 200)
			c := st.now()
			for i := range rows {
				rows[i] = rowAt(c.Add(time.Duration(i) * time.Second))
			}
			res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic,
				Ranges: []Range{{Partition: 0, From: from, To: max(from, 0) + 200}}, Rows: rows})
			if err != nil {
				werr = err
				return
			}
			written += res.Inserted
			from = max(from, 0) + 200
		}
	})
	// Twelve simulated days, a round of maintenance each: partitions made
	// ahead, old ones dropped, while the writer goes on.
	for d := 1; d <= 12; d++ {
		time.Sleep(30 * time.Millisecond)
		mu.Lock()
		*now = day0.Add(time.Duration(d) * 24 * time.Hour)
		mu.Unlock()
		if _, err := st.Maintain(ctx); err != nil {
			t.Fatalf("maintain on day %d: %v", d, err)
		}
	}
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("write during maintenance: %v", werr)
	}
	parts, err := st.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, parts)
	if written == 0 {
		t.Fatal("writer stored nothing during maintenance")
	}
	var kept int
	if err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM notifications WHERE created_at >= $1", parts[1].From).Scan(&kept); err != nil {
		t.Fatal(err)
	}
	var dups int
	if err := st.Pool().QueryRow(ctx, "SELECT count(*) - count(DISTINCT id) FROM notifications").Scan(&dups); err != nil {
		t.Fatal(err)
	}
	if dups != 0 {
		t.Fatalf("duplicate ids after maintenance under ingest: got %d, want 0", dups)
	}
	if kept == 0 {
		t.Fatal("no row in the partitions kept by retention")
	}
}

// committedChecks reports, for each partition of notifications, whether it
// has a validated committedCheck.
func committedChecks(t *testing.T, st *Store) map[string]bool {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(), `
		SELECT c.relname, coalesce(k.convalidated, false) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.conname = $1
		WHERE i.inhparent = 'notifications'::regclass`, committedCheck)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	var name string
	var ok bool
	if _, err := pgx.ForEachRow(rows, []any{&name, &ok}, func() error { out[name] = ok; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCommittedChecksLeaveOldRowScansOutOfThePlan(t *testing.T) {
	t.Parallel()
	st, now := clockStore(t, pgtest.Schema(t), Config{})
	ctx := context.Background()
	maintain(t, st)
	*now = now.Add(10 * 24 * time.Hour) // partitions made ahead later
	maintain(t, st)
	for p, ok := range committedChecks(t, st) {
		if !ok {
			t.Fatalf("partition %s has no validated %s", p, committedCheck)
		}
	}
	// The scan for rows without a commit_xid, as the API's counts make it
	// with a generic plan, reads no partition at all.
	conn, err := st.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET plan_cache_mode = force_generic_plan"); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, "RESET plan_cache_mode") //nolint:errcheck // the connection is discarded with the pool
	var plan []string
	rows, err := conn.Query(ctx, "EXPLAIN SELECT id FROM notifications WHERE user_id = $1 AND commit_xid IS NULL", uuid.New())
	if err == nil {
		plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		t.Fatal(err)
	}
	if p := strings.Join(plan, "\n"); strings.Contains(p, "notifications_") {
		t.Fatalf("plan of a scan for rows without commit_xid reads partitions:\n%s", p)
	}

	// A run of the migration killed between adding and validating: the
	// next run validates what it finds NOT VALID, and a partition with a
	// row of before migration 0003 gets no check.
	parts, err := st.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	half, old := parts[2].Name, parts[3].Name
	for _, q := range []string{
		"DELETE FROM notifyd_schema_version WHERE version >= 5",
		"ALTER TABLE " + half + " DROP CONSTRAINT " + committedCheck,
		addCommittedCheck(half) + " NOT VALID",
		"ALTER TABLE " + old + " DROP CONSTRAINT " + committedCheck,
	} {
		if _, err := st.Pool().Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	r := rowAt(parts[3].From.Add(time.Hour))
	writeAt(t, st, []notification.Notification{r})
	if _, err := st.Pool().Exec(ctx, "UPDATE notifications SET commit_xid = NULL WHERE id = $1", r.ID); err != nil {
		t.Fatal(err)
	}
	if v, err := st.Migrate(ctx); err != nil || v != LatestVersion() {
		t.Fatalf("migrate again: got version %d, error %v", v, err)
	}
	checked := committedChecks(t, st)
	if !checked[half] || checked[old] {
		t.Fatalf("after the migration ran again: %s validated %v (want true), %s %v (want false: it holds a row without commit_xid)",
			half, checked[half], old, checked[old])
	}
}
