package pipeline

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
)

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Behaviour 5: a second consumer group on the same topic and table is
// refused at start, naming the other group, unless AllowOtherGroups is set,
// which starts with a warning.
func TestSecondGroupOnTheSameTopicAndTableIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	first := makeMsgs(0, 9)
	e.produceMsgs(first)
	e.waitRows(9, 30*time.Second)

	other := e.cfg
	other.Group = "renamed"
	p, err := New(other, e.store, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = p.Run(ctx)
	if !errors.Is(err, ErrOtherGroup) || !strings.Contains(err.Error(), `"g"`) {
		t.Fatalf("second group's Run: got %v, want ErrOtherGroup naming group \"g\"", err)
	}

	other.AllowOtherGroups = true
	var logs syncBuffer
	p, err = New(other, e.store, slog.New(slog.NewTextHandler(&logs, nil)), prometheus.NewRegistry(), kgo.SeedBrokers(e.addrs...))
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	pollUntil(t, 30*time.Second, "the allowed second group's positions", func() bool {
		var n int
		_ = e.store.Pool().QueryRow(context.Background(),
			"SELECT count(*) FROM notifyd_offsets WHERE consumer_group = 'renamed' AND next_offset = 3").Scan(&n)
		return n == 3
	})
	rcancel()
	if err := <-done; err != nil {
		t.Fatalf("allowed second group's Run: %v", err)
	}
	if !strings.Contains(logs.String(), "other consumer groups store this topic") || !strings.Contains(logs.String(), "other_groups=[g]") {
		t.Fatalf("allowed second group's log: want a warning naming group g, got:\n%s", logs.String())
	}
	// Deduplicated by id: still one row per message.
	e.checkTable(first)
}
