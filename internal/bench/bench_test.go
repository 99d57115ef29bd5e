package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/notifyd/notifyd/internal/pgtest"
	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/testbin"
)

// These tests run the benchmark's own code in the test process, so that
// the race detector of `go test -race` watches it (the drain's child
// process handling in particular), with a real `notifyd run` as the child.

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "notifyd-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var buildOnce = sync.OnceValues(func() (string, error) { return testbin.Build(binDir, "") })

func notifydBin(t *testing.T) string {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestRunSmall runs the whole benchmark, small, and checks that every
// measure was taken (not how fast it was: timing goals are benchmarks).
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole benchmark")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Messages: 2000, Rate: 500, Duration: time.Second,
		DatabaseURL: pgtest.URL(t), Executable: notifydBin(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Messages != 2000 || res.LatencyMessages != 500 {
		t.Errorf("messages: got %d drained and %d for latency, want 2000 and 500", res.Messages, res.LatencyMessages)
	}
	if res.Seconds <= 0 || res.MsgsPerSec <= 0 || res.CopyLimitRowsPerSec <= 0 || res.PeakRSSMB <= 0 || res.DrainBatches < 1 {
		t.Errorf("a measure is missing: %+v", res)
	}
}

// TestRunSmallWithHistory runs the history phases, small: the drain into
// the table with history, the reads, and the drain into the table emptied
// again, whose mean with the first drain is the ratio's baseline.
func TestRunSmallWithHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole benchmark")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Messages: 2000, Rate: 500, Duration: time.Second, History: 20_000,
		DatabaseURL: pgtest.URL(t), Executable: notifydBin(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res.HistoryRows != 20_000 || res.HistoryPartitions < 50 {
		t.Errorf("history: %d rows in %d partitions, want 20000 in the partitions of 8 weeks", res.HistoryRows, res.HistoryPartitions)
	}
	if res.HistoryMsgsPerSec <= 0 || res.EmptyAfterMsgsPerSec <= 0 || res.ReadLatest20Ms == nil || res.ReadLatest20Ms.P95 <= 0 {
		t.Fatalf("a measure is missing: %+v", res)
	}
	want := res.HistoryMsgsPerSec / ((res.MsgsPerSec + res.EmptyAfterMsgsPerSec) / 2)
	if d := res.HistoryRatioToEmpty - want; d > 1e-9 || d < -1e-9 {
		t.Errorf("history_ratio_to_empty %v, want %v: the drain with history to the mean of the empty-table drains", res.HistoryRatioToEmpty, want)
	}
}

// TestDrainStopsTheChild ends a drain that cannot finish (it waits for
// more messages than the topic holds) by its context, and one whose child
// exits at once, and checks that each reports why it stopped.
func TestDrainStopsTheChild(t *testing.T) {
	if testing.Short() {
		t.Skip("starts notifyd run")
	}
	t.Parallel()
	bin := notifydBin(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	url := pgtest.Schema(t)
	store, err := postgres.Open(ctx, postgres.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("gives up", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := drain(dctx, Config{Messages: 10, Executable: bin}, c.ListenAddrs(), url, "bench-never-filled", store)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the context's deadline", err)
		}
	})
	t.Run("child exits", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		_, err := drain(dctx, Config{Messages: 10, Executable: bin, ChildArgs: []string{"--no-such-flag"}},
			c.ListenAddrs(), url, "bench-never-filled", store)
		if err == nil || !strings.Contains(err.Error(), "exited early: exit status") {
			t.Fatalf("got %v, want notifyd run exited early with its exit status", err)
		}
	})
}

// TestDatabaseCPUKeepsWhatExitedBackendsSpent burns CPU in a backend that
// then exits between the two readings: its time must stay in the sum (it
// moves to the postmaster's reaped children).
func TestDatabaseCPUKeepsWhatExitedBackendsSpent(t *testing.T) {
	before, found := databaseCPU()
	if !found {
		if os.Getenv("CI") != "" {
			t.Fatal("no postgres process on this machine: CI runs its database here")
		}
		t.Skip("the test database's server does not run on this machine")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid() FROM (SELECT count(*) FROM generate_series(1, 5000000)) s").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backend did not exit within 5s of its connection's close")
		}
	}
	after, _ := databaseCPU()
	if d := after - before; d < 100*time.Millisecond {
		t.Fatalf("database CPU grew by %v across a backend that counted 5M rows and exited, want at least 100ms", d)
	}
}
