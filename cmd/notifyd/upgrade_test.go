package main

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/internal/pgtest"
)

// schema1DDL is the schema notifyd made at version 1: an ordinary table.
const schema1DDL = `
CREATE TABLE notifications (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, event_type text NOT NULL, title text NOT NULL,
    body text NOT NULL, data jsonb, created_at timestamptz NOT NULL);
CREATE INDEX notifications_user_latest ON notifications (user_id, created_at DESC);
CREATE TABLE notifyd_offsets (
    consumer_group text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition));
CREATE TABLE notifyd_schema_version (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO notifyd_schema_version (version, name) VALUES (1, '0001_notifications.sql');`

// TestUpgradeFromSchema1ExactlyOnce runs notifyd over a database that an
// older notifyd left at schema 1 (an ordinary table holding the rows and
// offsets of the first half of the topic): the upgrade at start keeps every
// row, notifyd goes on from the stored offsets, is killed with SIGKILL
// mid-stream and restarted, and every valid message ends as exactly one row.
func TestUpgradeFromSchema1ExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary; skipped with -short")
	}
	notifydBin(t)
	ctx := context.Background()
	w := newWorld(t, testSeed(t))
	w.mustProduce(1500, 0.05)
	first, _ := w.startServing(t, "g")
	w.waitDrained("g", 60*time.Second)
	first.signal(syscall.SIGTERM)
	if code, ok := first.wait(20 * time.Second); !ok || code != 0 {
		t.Fatalf("first run after SIGTERM: exited %v with code %d, want 0", ok, code)
	}

	// The same rows and offsets in a schema-1 database.
	var from string
	if err := w.pool.QueryRow(ctx, "SELECT current_schema()").Scan(&from); err != nil {
		t.Fatal(err)
	}
	url := pgtest.Schema(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, q := range []string{schema1DDL,
		"INSERT INTO notifications SELECT id, user_id, event_type, title, body, data, created_at FROM " + from + ".notifications",
		"INSERT INTO notifyd_offsets SELECT consumer_group, topic, partition, next_offset, updated_at FROM " + from + ".notifyd_offsets",
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatalf("make the schema-1 database: %v", err)
		}
	}
	stored := w.count()
	w.url, w.pool = url, pool
	if got := w.count(); got != stored {
		t.Fatalf("rows in the schema-1 copy: got %d, want %d", got, stored)
	}

	w.mustProduce(1500, 0.05)
	upgraded := startDaemon(t, "upgraded", childEnv(), w.runArgs("g", "--log-format", "json")...)
	if _, ok := upgraded.out.waitFor(`"msg":"database ready"`, 60*time.Second); !ok {
		t.Fatal("upgraded run: no database ready within 60s")
	}
	var kind string
	if err := pool.QueryRow(ctx, "SELECT relkind::text FROM pg_class WHERE oid = 'notifications'::regclass").Scan(&kind); err != nil || kind != "p" {
		t.Fatalf("notifications after the upgraded start: got relkind %q (%v), want p", kind, err)
	}
	// Killed while it drains the second half, then started again.
	deadline := time.Now().Add(60 * time.Second)
	for w.count() <= stored && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	upgraded.kill()
	again := startDaemon(t, "again", childEnv(), w.runArgs("g")...)
	w.waitDrained("g", 90*time.Second)
	again.signal(syscall.SIGTERM)
	if code, ok := again.wait(20 * time.Second); !ok || code != 0 {
		t.Fatalf("restarted run after SIGTERM: exited %v with code %d, want 0", ok, code)
	}
	again.checkNoRace()
	w.checkTable()
	w.checkOffsets("g")
}
