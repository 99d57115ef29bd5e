package postgres

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
)

func randomIDs(n int, seed uint64) [][16]byte {
	r := rand.New(rand.NewPCG(seed, 1))
	ids := make([][16]byte, n)
	for i := range ids {
		binary.LittleEndian.PutUint64(ids[i][:8], r.Uint64())
		binary.LittleEndian.PutUint64(ids[i][8:], r.Uint64())
	}
	return ids
}

// Every id added is found, and ids not added are found about as often as
// 10 bits an id and 7 hashes allow (0.8 %).
func TestPartFilterHasEveryIDAndFewOthers(t *testing.T) {
	in, out := randomIDs(100_000, 1), randomIDs(100_000, 2)
	f := newPartFilter(len(in))
	for _, id := range in {
		f.add(filterHash(id))
	}
	if got, want := f.size(), 100_000*filterBitsPerID/8; got < want || got > want+8 {
		t.Fatalf("filter of 100,000 ids: %d bytes, want %d", got, want)
	}
	for _, id := range in {
		if !f.has(filterHash(id)) {
			t.Fatalf("id %x added but not found", id)
		}
	}
	fp := 0
	for _, id := range out {
		if f.has(filterHash(id)) {
			fp++
		}
	}
	if rate := float64(fp) / float64(len(out)); rate > 0.015 {
		t.Fatalf("false positives: %.2f %%, want under 1.5 %%", 100*rate)
	}
	// An empty filter holds nothing.
	if e := newPartFilter(0); e.has(filterHash(in[0])) {
		t.Fatal("an empty filter found an id")
	}
}

// filterStore is a store whose clock stands at day0 + 4 days, with rows
// stored in the partitions of day0 and the day after (closed then), and the
// partitions made at day0.
func filterStore(t *testing.T) (*Store, *time.Time, notification.Notification, notification.Notification) {
	t.Helper()
	st, now := clockStore(t, pgtest.Schema(t), Config{})
	maintain(t, st)
	a, b := rowAt(day0), rowAt(day0.Add(24*time.Hour))
	writeAt(t, st, []notification.Notification{a, b})
	*now = day0.Add(4 * 24 * time.Hour)
	return st, now, a, b
}

// probeUntilFiltered writes fresh marked rows, one probe each, until every
// closed partition the window reaches has a filter; it fails the test if a
// fresh row was taken for a duplicate.
func probeUntilFiltered(t *testing.T, st *Store, want ...string) {
	t.Helper()
	for range 20 {
		r := rowAt(st.now())
		r.CreatedAtMayDiffer = true
		if res := writeAt(t, st, []notification.Notification{r}); res.Inserted != 1 {
			t.Fatalf("fresh row: got %+v, want 1 inserted", res)
		}
		if missing := unfiltered(t, st, want); len(missing) == 0 {
			return
		}
	}
	t.Fatalf("after 20 probes, no filter for %v", unfiltered(t, st, want))
}

func unfiltered(t *testing.T, st *Store, names []string) []string {
	t.Helper()
	parts, err := st.Partitions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Partition{}
	for _, p := range parts {
		byName[p.Name] = p
	}
	var out []string
	for _, n := range names {
		if p, ok := byName[n]; !ok || st.filterOf(p) == nil {
			out = append(out, n)
		}
	}
	return out
}

// again is r sent once more with its id and without its created_at, at now.
func again(r notification.Notification, now time.Time) notification.Notification {
	r.CreatedAt, r.CreatedAtMayDiffer = now, true
	return r
}

func insertRow(t *testing.T, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, r notification.Notification) {
	t.Helper()
	if _, err := q.Exec(context.Background(), `INSERT INTO notifications (id, user_id, event_type, title, body, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, r.ID, r.UserID, r.EventType, r.Title, r.Body, r.CreatedAt); err != nil {
		t.Fatal(err)
	}
}

// A closed partition is given a filter, and a copy of a row stored there is
// a duplicate whenever that row was committed: before the filter was built,
// by a transaction still open while it was built, or after it, by another
// process. Fresh ids are not.
func TestDedupeFilterOfClosedPartitionsMissesNoStoredRow(t *testing.T) {
	t.Parallel()
	st, now, a, b := filterStore(t)
	ctx := context.Background()

	// Open while the filters are built: its row is in none of them.
	open, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Rollback(ctx) //nolint:errcheck // committed below
	c := rowAt(day0.Add(2 * 24 * time.Hour))
	insertRow(t, open, c)

	closedParts := []string{"notifications_p20261201_0000", "notifications_p20261202_0000", "notifications_p20261203_0000"}
	probeUntilFiltered(t, st, closedParts...)
	if err := open.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Committed after the filters were built, by another process.
	d := rowAt(day0.Add(24*time.Hour + time.Minute))
	insertRow(t, st.Pool(), d)

	fresh := rowAt(*now)
	fresh.CreatedAtMayDiffer = true
	res := writeAt(t, st, []notification.Notification{again(a, *now), again(b, *now), again(c, *now), again(d, *now), fresh})
	if res.Duplicates != 4 || res.Inserted != 1 {
		t.Fatalf("copies of rows stored before, during and after the filters were built, and a fresh row: got %+v, want 4 duplicates, 1 inserted", res)
	}
	if got := unfiltered(t, st, closedParts); len(got) != 0 {
		t.Fatalf("filters gone: %v", got)
	}
	// notifications_past and the four days from day 0, closed on day 4 at
	// noon, hold a row or two each: filters of one word.
	if fs := st.DedupeFilters(); fs.Partitions != 5 || fs.OverBudget != 0 || fs.Bytes != 5*8 {
		t.Fatalf("filter stats: %+v, want 5 partitions of 8 bytes, none over the budget", fs)
	}
}

// A large transaction of late rows committed in a closed partition, while
// another transaction holds the server's xmin back: the copies of its rows
// are duplicates, and the filter takes them all in without being built
// again.
func TestDedupeFilterAfterALargeLateCommit(t *testing.T) {
	t.Parallel()
	st, now, _, _ := filterStore(t)
	ctx := context.Background()
	part := "notifications_p20261202_0000"
	probeUntilFiltered(t, st, part)
	before := filterNamed(t, st, part)

	// A transaction with an id, left open: every snapshot's xmin stays
	// at or below it.
	held, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback(ctx) //nolint:errcheck // only held open
	if _, err := held.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}

	rows := make([]notification.Notification, 1500)
	for i := range rows {
		rows[i] = rowAt(day0.Add(24*time.Hour + time.Duration(i)*time.Second))
	}
	tx, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		insertRow(t, tx, r)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	last := rows[len(rows)-1]
	if res := writeAt(t, st, []notification.Notification{again(last, *now), again(rows[0], *now)}); res.Duplicates != 2 || res.Inserted != 0 {
		t.Fatalf("copies of two of %d rows committed late: got %+v, want 2 duplicates", len(rows), res)
	}
	f := filterNamed(t, st, part)
	if f != before {
		t.Fatal("the filter was built again")
	}
	for _, r := range rows {
		if !f.has(filterHash(r.ID)) {
			t.Fatalf("late row %s not taken into the filter", r.ID)
		}
	}
	if res := writeAt(t, st, []notification.Notification{again(rows[700], *now)}); res.Duplicates != 1 {
		t.Fatalf("copy of a late row after the catch-up: got %+v, want 1 duplicate", res)
	}
}

func filterNamed(t *testing.T, st *Store, name string) *partFilter {
	t.Helper()
	parts, err := st.Partitions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if p.Name == name {
			return st.filterOf(p)
		}
	}
	t.Fatalf("no partition %s", name)
	return nil
}

// A partition whose ids would not fit the filters' budget is probed by id,
// for its life.
func TestDedupeFilterOverBudgetProbesByID(t *testing.T) {
	t.Parallel()
	st, now, a, _ := filterStore(t)
	st.filterBudget = 100 // 80 ids
	rows := make([]notification.Notification, 200)
	for i := range rows {
		rows[i] = rowAt(day0.Add(time.Duration(i) * time.Second))
	}
	writeAt(t, st, rows)
	for range 10 {
		r := rowAt(*now)
		r.CreatedAtMayDiffer = true
		writeAt(t, st, []notification.Notification{r})
	}
	parts, err := st.Partitions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := st.filters.Load()
	for _, p := range parts {
		if p.Name != "notifications_p20261201_0000" {
			continue
		}
		if f, ok := (*m)[p.oid]; !ok || f.bits != nil {
			t.Fatalf("partition of 201 rows, budget of 80 ids: entry %v, want one without bits", f)
		}
	}
	if fs := st.DedupeFilters(); fs.OverBudget != 1 {
		t.Fatalf("filter stats: %+v, want 1 partition over the budget", fs)
	}
	if res := writeAt(t, st, []notification.Notification{again(a, *now), again(rows[150], *now)}); res.Duplicates != 2 {
		t.Fatalf("copies of rows in a partition over the budget: got %+v, want 2 duplicates", res)
	}
}

// With a filter, a probe of ids none of which is stored asks the
// partition for almost none of them.
func TestDedupeFilterSendsFewIDs(t *testing.T) {
	t.Parallel()
	st, now, _, _ := filterStore(t)
	rows := make([]notification.Notification, 2000)
	for i := range rows {
		rows[i] = rowAt(day0.Add(time.Duration(i) * time.Second))
	}
	writeAt(t, st, rows)
	part := "notifications_p20261201_0000"
	probeUntilFiltered(t, st, part)

	ids := randomIDs(340, 3)
	lo, hi := now.Add(-DefaultDedupeWindow), now.Add(DefaultDedupeWindow)
	plan := st.planProbe(st.probeParts.Load(), lo, hi, ids, uuidArray(ids), nil, nil)
	if len(plan.filtered) == 0 {
		t.Fatal("the plan has no filtered partition")
	}
	for j, fp := range plan.filtered {
		a := plan.params[3+2*j]
		n := 0
		if len(a) > 12 {
			n = int(binary.BigEndian.Uint32(a[12:16]))
		}
		if n > 340/20 {
			t.Fatalf("partition %s: %d of 340 fresh ids asked for, want under 5 %%", fp.part.Name, n)
		}
	}
}
