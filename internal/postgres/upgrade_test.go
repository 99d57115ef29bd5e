package postgres

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
)

// schema1 makes in url's schema the database an older notifyd (schema
// version 1) left: the ordinary table with rows spread over 60 days before
// day0, a far-past and a far-future row, and stored offsets.
func schema1(t *testing.T, url string, rows int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{ms[0].sql,
		`CREATE TABLE notifyd_schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
		`INSERT INTO notifyd_schema_version (version, name) VALUES (1, '0001_notifications.sql')`,
		`INSERT INTO notifyd_offsets (consumer_group, topic, partition, next_offset) VALUES ('g', 'notifications', 0, 1000), ('g', 'notifications', 1, 7)`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("make schema 1: %v", err)
		}
	}
	_, err = conn.Exec(ctx, `
		INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
		SELECT gen_random_uuid(), gen_random_uuid(), 'e', 'title ' || i, 'body', jsonb_build_object('i', i),
		       $1::timestamptz - (i * interval '60 days' / $2)
		FROM generate_series(1, $2) AS i`, day0, rows)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `
		INSERT INTO notifications (id, user_id, event_type, title, body, created_at) VALUES
		(gen_random_uuid(), gen_random_uuid(), 'e', 'far past', '', '1970-01-01T00:00:00Z'),
		(gen_random_uuid(), gen_random_uuid(), 'e', 'far future', '', '2100-01-01T00:00:00Z'),
		(gen_random_uuid(), gen_random_uuid(), 'e', 'today', '', $1)`, day0)
	if err != nil {
		t.Fatal(err)
	}
}

// digest sums every stored row, to compare the table before and after.
func digest(t *testing.T, st *Store) (n int, sum string) {
	t.Helper()
	err := st.Pool().QueryRow(context.Background(), `
		SELECT count(*), md5(string_agg(concat_ws('|', id, user_id, event_type, title, body, data, created_at), ',' ORDER BY id))
		FROM notifications`).Scan(&n, &sum)
	if err != nil {
		t.Fatal(err)
	}
	return n, sum
}

func TestUpgradeFromSchema1KeepsEveryRowAndOffset(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	schema1(t, url, 20_000)
	st := openStore(t, url)
	now := day0
	st.now = func() time.Time { return now }
	st.smallTable = 0 // the path of a large table: CREATE INDEX CONCURRENTLY
	ctx := context.Background()
	n0, sum0 := digest(t, st)
	off0 := offsets(t, st)

	v, err := st.Migrate(ctx)
	if err != nil || v != LatestVersion() {
		t.Fatalf("migrate schema 1: got version %d, error %v; want %d, nil", v, err, LatestVersion())
	}
	maintain(t, st)
	var kind string
	if err := st.Pool().QueryRow(ctx, "SELECT relkind::text FROM pg_class WHERE oid = 'notifications'::regclass").Scan(&kind); err != nil {
		t.Fatal(err)
	}
	if kind != "p" {
		t.Fatalf("notifications after the upgrade: got relkind %q, want p (partitioned)", kind)
	}
	n1, sum1 := digest(t, st)
	if n1 != n0 || sum1 != sum0 {
		t.Fatalf("rows after the upgrade: got %d (digest %s), want %d (digest %s)", n1, sum1, n0, sum0)
	}
	sameOffsets(t, "offsets after the upgrade", offsets(t, st), off0)
	parts, err := st.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, parts)
	if want := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC); !parts[0].To.Equal(want) {
		t.Fatalf("past partition after the upgrade: got upper bound %s, want %s (the end of today)", parts[0].To, want)
	}
	var far string
	if err := st.Pool().QueryRow(ctx, "SELECT tableoid::regclass::text FROM notifications WHERE title = 'far future'").Scan(&far); err != nil {
		t.Fatal(err)
	}
	if far != futurePartition {
		t.Fatalf("far-future row of schema 1: got partition %s, want %s", far, futurePartition)
	}
	for _, ix := range []string{"notifications_upgrade_created_at"} {
		var gone bool
		if err := st.Pool().QueryRow(ctx, "SELECT to_regclass($1) IS NULL", ix).Scan(&gone); err != nil || !gone {
			t.Fatalf("helper index %s after the upgrade: got present (err %v), want dropped", ix, err)
		}
	}

	// Migration 0003's and 0006's indexes on the old rows were built
	// concurrently before them (prepareInboxIndexes, prepareLookupIndex)
	// and attached, not rebuilt; 0006 dropped the one it replaces.
	for _, suffix := range []string{"commit_xid", "user_before_commit_xid", "user_commit_xid_at"} {
		name := "notifications_past_" + suffix
		var valid, attached bool
		err := st.Pool().QueryRow(ctx, `
			SELECT x.indisvalid, EXISTS (SELECT FROM pg_inherits WHERE inhrelid = x.indexrelid)
			FROM pg_index x WHERE x.indexrelid = to_regclass($1)`, name).Scan(&valid, &attached)
		if err != nil || !valid || !attached {
			t.Fatalf("index %s after the upgrade: got valid %v, attached %v (err %v), want both", name, valid, attached, err)
		}
	}

	var replaced bool
	if err := st.Pool().QueryRow(ctx, "SELECT to_regclass('notifications_past_user_commit_xid') IS NOT NULL").Scan(&replaced); err != nil || replaced {
		t.Fatalf("index notifications_past_user_commit_xid after the upgrade: present %v (err %v), want dropped by 0006", replaced, err)
	}

	// Migration 0005: the old rows have no commit_xid, so the partitions
	// that hold them (notifications_past, and notifications_future for the
	// far-future row) keep no committed check; every other one has it.
	checked := committedChecks(t, st)
	for _, p := range parts {
		var old bool
		if err := st.Pool().QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+p.Name+" WHERE commit_xid IS NULL)").Scan(&old); err != nil {
			t.Fatal(err)
		}
		if checked[p.Name] == old {
			t.Fatalf("partition %s after the upgrade: validated %s %v, rows of schema 1 %v; want exactly one", p.Name, committedCheck, checked[p.Name], old)
		}
	}
	if checked[pastPartition] {
		t.Fatalf("%s holds the rows of schema 1 and has %s", pastPartition, committedCheck)
	}

	// Writing goes on from the stored offsets, and a row of schema 1
	// arriving again is a duplicate, with or without the same created_at.
	var old notification.Notification
	if err := st.Pool().QueryRow(ctx, "SELECT id, user_id, created_at FROM notifications WHERE title = 'title 5'").
		Scan(&old.ID, &old.UserID, &old.CreatedAt); err != nil {
		t.Fatal(err)
	}
	old.EventType, old.Title = "e", "title 5"
	moved := old
	moved.CreatedAt, moved.CreatedAtMayDiffer = old.CreatedAt.Add(time.Hour), true
	fresh := rowAt(day0.Add(time.Minute))
	res, err := st.Write(ctx, &Batch{Group: "g", Topic: "notifications",
		Ranges: []Range{{Partition: 0, From: 1000, To: 1003}}, Rows: []notification.Notification{old, moved, fresh}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Inserted != 1 || res.Duplicates != 2 {
		t.Fatalf("write after the upgrade: got %+v, want 1 inserted, 2 duplicates", res)
	}
}

func TestUpgradeKilledHalfwayLeavesSchema1AndIsDoneNextTime(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	schema1(t, url, 5_000)
	ctx := context.Background()
	var b [4]byte
	_, _ = rand.Read(b[:])
	app := "upgrade_kill_" + hex.EncodeToString(b[:])
	victim := openStore(t, url+"&application_name="+app)
	n0, sum0 := digest(t, victim)

	// A writer's open transaction holds the switch at its lock; meanwhile
	// its backend is killed, as a kill -9 of notifyd would end it.
	blocker, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close(ctx)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE notifications IN ROW EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := victim.Migrate(ctx); done <- err }()
	killer := openStore(t, url)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var killed bool
		err := killer.Pool().QueryRow(ctx, `
			SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity
			WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE '%notifications_past%'`, app).Scan(&killed)
		if err != nil {
			t.Fatal(err)
		}
		if killed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the switch of migration 0002 never waited for its lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := <-done; err == nil {
		t.Fatal("migrate whose connection was killed: got nil error, want the failure")
	}
	_ = tx.Rollback(ctx)

	if v, err := killer.SchemaVersion(ctx); err != nil || v != 1 {
		t.Fatalf("schema version after the killed upgrade: got %d (%v), want 1", v, err)
	}
	var kind string
	if err := killer.Pool().QueryRow(ctx, "SELECT relkind::text FROM pg_class WHERE oid = 'notifications'::regclass").Scan(&kind); err != nil || kind != "r" {
		t.Fatalf("notifications after the killed upgrade: got relkind %q (%v), want r (schema 1 as it was)", kind, err)
	}
	if n, sum := digest(t, killer); n != n0 || sum != sum0 {
		t.Fatalf("rows after the killed upgrade: got %d, want %d unchanged", n, n0)
	}
	// The next start finishes it.
	if v, err := killer.Migrate(ctx); err != nil || v != LatestVersion() {
		t.Fatalf("migrate again: got version %d, error %v; want %d, nil", v, err, LatestVersion())
	}
	if n, sum := digest(t, killer); n != n0 || sum != sum0 {
		t.Fatalf("rows after the second upgrade: got %d, want %d unchanged", n, n0)
	}
}

func TestLeastPrivilegeRoleRunsWithoutDDL(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	admin, now := clockStore(t, url, Config{})
	ctx := context.Background()
	maintain(t, admin)
	st, role := leastPrivilegeStore(t, url, admin)
	var who string
	if err := st.Pool().QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != role {
		t.Fatalf("connected as %q (%v), want %q", who, err, role)
	}
	// What run does at start: migrate and maintain, both with nothing to
	// change, then write.
	if v, err := st.Migrate(ctx); err != nil || v != LatestVersion() {
		t.Fatalf("migrate as %s: got %d, %v; want %d, nil", role, v, err, LatestVersion())
	}
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	m := NewMaintainer(st, slog.New(slog.NewTextHandler(&logs, nil)), reg)
	m.Once(ctx)
	if got := gathered(t, reg, "notifyd_partition_maintenance_failures_total"); got != 0 {
		t.Fatalf("privilege failures with partitions ahead: got %v, want 0; logs:\n%s", got, logs.String())
	}
	if res := writeAt(t, st, []notification.Notification{rowAt(day0), rowAt(day0)}); res.Inserted != 2 {
		t.Fatalf("write as %s: got %+v, want 2 inserted", role, res)
	}

	// Six and a half days on, partitions are needed and this role may not
	// make them: a warning and a metric, no failure.
	*now = day0.Add(156 * time.Hour)
	if _, err := st.Maintain(ctx); !errors.Is(err, ErrNoPrivilege) {
		t.Fatalf("maintain as %s when partitions are due: got %v, want ErrNoPrivilege", role, err)
	}
	m.Once(ctx)
	if got := gathered(t, reg, "notifyd_partition_maintenance_failures_total"); got != 1 {
		t.Fatalf("privilege failures: got %v, want 1", got)
	}
	if got, want := gathered(t, reg, "notifyd_partitions_ahead_seconds"), (24 * time.Hour).Seconds(); got != want {
		t.Fatalf("notifyd_partitions_ahead_seconds: got %v, want %v", got, want)
	}
	for _, want := range []string{"may not", "run out soon"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("logs: got\n%s\nwant a warning containing %q", logs.String(), want)
		}
	}
	// Rows still land somewhere, and the owner's scheduled migrate catches up.
	if res := writeAt(t, st, []notification.Notification{rowAt(day0.Add(200 * time.Hour))}); res.Inserted != 1 {
		t.Fatalf("write beyond the partitions as %s: got %+v, want 1 inserted", role, res)
	}
	if res := maintain(t, admin); len(res.Created) == 0 {
		t.Fatal("maintenance by the owner: got nothing made, want partitions")
	}
}

// A role that may read the table but none of its partitions by name (they
// need no grants of their own) still has its duplicates found: the probe
// then asks the table.
func TestDedupeProbeOfARoleThatMayNotReadPartitions(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	admin, _ := clockStore(t, url, Config{})
	maintain(t, admin)
	parts, err := admin.Partitions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range parts {
		names = append(names, pgx.Identifier{p.Name}.Sanitize())
	}
	st, _ := leastPrivilegeStore(t, url, admin, names...)
	stored := rowAt(day0)
	writeAt(t, st, []notification.Notification{stored})
	again := stored
	again.CreatedAt, again.CreatedAtMayDiffer = stored.CreatedAt.Add(30*time.Hour), true
	fresh := rowAt(day0)
	fresh.CreatedAtMayDiffer = true
	if res := writeAt(t, st, []notification.Notification{again, fresh}); res.Duplicates != 1 || res.Inserted != 1 {
		t.Fatalf("as a role that may read only the table: got %+v, want 1 duplicate, 1 inserted", res)
	}
	if !st.probeViaParent.Load() {
		t.Fatal("the probe did not turn to the table")
	}
}

// leastPrivilegeStore opens a store on url as a new role that has USAGE on
// admin's schema and SELECT, INSERT, UPDATE and DELETE on all its tables but
// the ones named in revoke, with admin's clock; and the role.
func leastPrivilegeStore(t *testing.T, url string, admin *Store, revoke ...string) (*Store, string) {
	t.Helper()
	ctx := context.Background()
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "notifyd_lp_" + hex.EncodeToString(b[:])
	var schema string
	if err := admin.Pool().QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	grants := []string{
		"CREATE ROLE " + role + " LOGIN",
		"GRANT USAGE ON SCHEMA " + schema + " TO " + role,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA " + schema + " TO " + role,
	}
	for _, table := range revoke {
		grants = append(grants, "REVOKE ALL ON "+table+" FROM "+role)
	}
	for _, q := range grants {
		if _, err := admin.Pool().Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = admin.Pool().Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = admin.Pool().Exec(context.Background(), "DROP ROLE "+role)
	})
	st := openStore(t, strings.Replace(url, "postgres@", role+"@", 1))
	st.now = admin.now
	return st, role
}

// gathered is the value of the first series of metric name in reg, 0 when
// it has none.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		// The sum over the label values: a counter by reason counts every
		// reason's failures.
		var sum float64
		for _, m := range mf.GetMetric() {
			if m.GetCounter() != nil {
				sum += m.GetCounter().GetValue()
			} else {
				sum += m.GetGauge().GetValue()
			}
		}
		return sum
	}
	t.Fatalf("metric %s: no such series", name)
	return 0
}

// TestMigrateRefusesAGapInTheAppliedVersions checks that a database whose
// recorded versions skip one (a build without that migration went past it)
// is refused, naming the missing version, instead of being taken as current.
func TestMigrateRefusesAGapInTheAppliedVersions(t *testing.T) {
	st := migratedStore(t)
	ctx := context.Background()
	if _, err := st.Pool().Exec(ctx, "DELETE FROM notifyd_schema_version WHERE version = 2"); err != nil {
		t.Fatal(err)
	}
	_, err := st.Migrate(ctx)
	if err == nil || !strings.Contains(err.Error(), "not 2") {
		t.Fatalf("Migrate with version 2 missing: got %v, want an error naming version 2", err)
	}
}
