package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// waitNotice is how long a start-up step may wait on a dependency before
// notifyd says what it is waiting for: a broker or database that accepts
// connections and never answers otherwise leaves the log silent until the
// client's own timeouts end the step.
const waitNotice = 5 * time.Second

// whileWaiting runs step, logging a warning that names what it waits for
// once it has taken waitNotice, and again every 3 × waitNotice.
func whileWaiting(ctx context.Context, log *slog.Logger, what string, step func(context.Context) error, attrs ...any) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		t := time.NewTimer(waitNotice)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				log.Warn("still waiting for "+what, append(attrs, "waited", time.Since(start).Round(time.Second))...)
				t.Reset(3 * waitNotice)
			}
		}
	}()
	err := step(ctx)
	close(done)
	wg.Wait()
	return err
}

// topicWatchInterval is how often topicWatch asks whether the input topic
// exists.
const topicWatchInterval = 10 * time.Second

// topicWatch knows whether the input topic exists, for /readyz, and warns
// when it does not: the consumer itself only retries quietly, so a typo in
// --topic would otherwise look like an idle topic.
type topicWatch struct {
	adm     *kadm.Client
	topic   string
	log     *slog.Logger
	missing atomic.Bool // written by check, read by ready
}

// check asks the cluster once and logs a change. A failed request changes
// nothing: the client's own errors say that the cluster is unreachable.
func (w *topicWatch) check(ctx context.Context) error {
	td, err := w.adm.ListTopics(ctx, w.topic)
	if err != nil {
		return err
	}
	d, ok := td[w.topic]
	missing := !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition)
	if ok && d.Err != nil && !missing {
		return fmt.Errorf("describe topic %s: %w", w.topic, d.Err)
	}
	switch was := w.missing.Swap(missing); {
	case missing && !was:
		w.log.Warn("the input topic does not exist: nothing is consumed until it is created (is --topic right?)", "topic", w.topic)
	case !missing && was:
		w.log.Info("the input topic exists now", "topic", w.topic)
	}
	return nil
}

// run checks every topicWatchInterval until ctx ends.
func (w *topicWatch) run(ctx context.Context) error {
	t := time.NewTicker(topicWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_ = w.check(ctx)
		}
	}
}

// ready is nil unless the topic was found missing at the last check.
func (w *topicWatch) ready() error {
	if w.missing.Load() {
		return fmt.Errorf("topic %s does not exist", w.topic)
	}
	return nil
}
