package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Dead letters the topic refuses for good are kept in the database, and
// `notifyd dlq list` and `show` count and show them beside the topic's.
func TestDLQCommandsReadTheDeadLetterTable(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t)
	v := "64"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := kadm.NewClient(e.prod).AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "max.message.bytes", Value: &v}}, "notifications.dlq"); err != nil {
		t.Fatalf("alter the dead-letter topic: %v", err)
	}
	e.startRun("--group", "table")
	e.send(
		&kgo.Record{Topic: "notifications", Partition: 0, Value: []byte(`{"not json`)},
		&kgo.Record{Topic: "notifications", Partition: 1, Value: []byte(`{"user_id": "nope", "event_type": "e", "title": "t", "body": "b"}`)},
		&kgo.Record{Topic: "notifications", Partition: 2, Value: validMessage("6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e12", "fine")},
	)
	e.waitDrained("table")
	waitUntil(t, 30*time.Second, func() (bool, string) {
		var n int
		if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM notifyd_dead_letters WHERE kept_reason IS NOT NULL").Scan(&n); err != nil {
			return false, err.Error()
		}
		return n == 2, "kept dead letters: want 2"
	})
	out := e.dlqCommand("list", "--database-url", e.url)
	t.Logf("notifyd dlq list:\n%s", out)
	if got, want := firstLine(out), "2 dead letters in notifications.dlq (decode 1, validate 1, store 0); 0 replayed already"; got != want {
		t.Fatalf("list: got %q, want %q", got, want)
	}
	show := e.dlqCommand("show", "--database-url", e.url, "--class", "decode")
	if !strings.Contains(show, `{"not json`) || !strings.Contains(show, "notifyd_dead_letters") {
		t.Fatalf("show --class decode: got\n%s\nwant the letter's value and its place in notifyd_dead_letters", show)
	}
}
