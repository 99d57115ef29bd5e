package retry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

var errDown = errors.New("database down")

// transitions records a breaker's changes of state.
type transitions struct {
	mu  sync.Mutex
	got []string
}

func (tr *transitions) onChange(from, to State) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.got = append(tr.got, from.String()+"→"+to.String())
}

func (tr *transitions) check(t *testing.T, want ...string) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if !slices.Equal(tr.got, want) {
		t.Errorf("transitions: got %q, want %q", tr.got, want)
	}
}

// run calls b.Do with an op returning err and reports whether op ran.
func run(b *Breaker, err error) (ran bool, got error) {
	got = b.Do(func() error {
		ran = true
		return err
	})
	return ran, got
}

func fail(t *testing.T, b *Breaker, n int) {
	t.Helper()
	for range n {
		if ran, err := run(b, errDown); !ran || !errors.Is(err, errDown) {
			t.Fatalf("failing op: ran %t, got %v, want it run and %v", ran, err, errDown)
		}
	}
}

func wantState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	if got := b.State(); got != want {
		t.Fatalf("state: got %s, want %s", got, want)
	}
}

// wantOpen checks that b refuses work without running it.
func wantOpen(t *testing.T, b *Breaker) {
	t.Helper()
	ran, err := run(b, nil)
	if ran {
		t.Fatalf("op ran through an open breaker")
	}
	if !errors.Is(err, ErrOpen) {
		t.Fatalf("got %v, want %v", err, ErrOpen)
	}
}

func TestBreakerOpensAfterThresholdAndFailsFast(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := NewBreaker(BreakerConfig{Threshold: 3, Timeout: time.Second}, tr.onChange)
		fail(t, b, 2)
		wantState(t, b, Closed)
		fail(t, b, 1)
		wantState(t, b, Open)
		for range 10 {
			wantOpen(t, b)
		}
		time.Sleep(time.Second - time.Millisecond)
		wantOpen(t, b)
		tr.check(t, "closed→open")
	})
}

func TestBreakerDefaults(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker(BreakerConfig{}, nil)
		if got, want := b.Timeout(), time.Second; got != want {
			t.Errorf("timeout: got %s, want %s", got, want)
		}
		fail(t, b, 4)
		wantState(t, b, Closed)
		fail(t, b, 1)
		wantState(t, b, Open)
		time.Sleep(time.Second - time.Millisecond)
		wantState(t, b, Open)
		time.Sleep(2 * time.Millisecond)
		wantState(t, b, HalfOpen)
	})
}

func TestBreakerHalfOpenLetsOneProbeThroughAndCloses(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := NewBreaker(BreakerConfig{Threshold: 2, Timeout: 500 * time.Millisecond}, tr.onChange)
		fail(t, b, 2)
		wantOpen(t, b)
		time.Sleep(501 * time.Millisecond)
		wantState(t, b, HalfOpen)

		release := make(chan error)
		probed := make(chan error)
		go func() {
			probed <- b.Do(func() error { return <-release })
		}()
		synctest.Wait() // the probe is running, blocked in op

		// While the probe runs, everyone else is refused without running.
		for range 3 {
			wantOpen(t, b)
		}
		wantState(t, b, HalfOpen)

		release <- nil
		if err := <-probed; err != nil {
			t.Fatalf("probe: got %v, want nil", err)
		}
		wantState(t, b, Closed)
		for range 5 {
			if ran, err := run(b, nil); !ran || err != nil {
				t.Fatalf("closed breaker: ran %t, got %v, want it run and nil", ran, err)
			}
		}
		tr.check(t, "closed→open", "open→half-open", "half-open→closed")
	})
}

func TestBreakerReopensOnProbeFailure(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := NewBreaker(BreakerConfig{Threshold: 2, Timeout: time.Second}, tr.onChange)
		fail(t, b, 2)
		time.Sleep(time.Second + time.Millisecond)
		fail(t, b, 1) // the probe
		wantState(t, b, Open)
		wantOpen(t, b)

		// A fresh timeout starts at the failed probe.
		time.Sleep(time.Second - time.Millisecond)
		wantOpen(t, b)
		time.Sleep(2 * time.Millisecond)
		if ran, err := run(b, nil); !ran || err != nil {
			t.Fatalf("second probe: ran %t, got %v, want it run and nil", ran, err)
		}
		wantState(t, b, Closed)
		tr.check(t, "closed→open", "open→half-open", "half-open→open", "open→half-open", "half-open→closed")
	})
}

func TestBreakerSuccessResetsConsecutiveFailures(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := NewBreaker(BreakerConfig{Threshold: 3, Timeout: time.Second}, tr.onChange)
		for range 5 {
			fail(t, b, 2)
			if ran, err := run(b, nil); !ran || err != nil {
				t.Fatalf("ran %t, got %v, want it run and nil", ran, err)
			}
		}
		wantState(t, b, Closed)
		fail(t, b, 3)
		wantState(t, b, Open)
		tr.check(t, "closed→open")
	})
}

func TestBreakerIgnoresCancellationAndExcluded(t *testing.T) {
	t.Parallel()
	ignored := []error{
		context.Canceled,
		fmt.Errorf("begin: %w", context.Canceled),
		Excluded(errDown),
		fmt.Errorf("dead-letter: %w", Excluded(errors.New("broker down"))),
		Excluded(Permanent(errors.New("fenced"))),
	}
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := NewBreaker(BreakerConfig{Threshold: 2, Timeout: time.Second}, tr.onChange)
		fail(t, b, 1)
		for range 3 {
			for _, e := range ignored {
				if ran, err := run(b, e); !ran || err != e {
					t.Fatalf("ran %t, got %v, want it run and %v itself", ran, err, e)
				}
			}
		}
		wantState(t, b, Closed)
		// Ignored errors are no success either: one more failure makes two
		// in a row.
		fail(t, b, 1)
		wantState(t, b, Open)
		tr.check(t, "closed→open")
	})

	// A probe that is cancelled says nothing about the database: the breaker
	// stays half-open and lets the next probe through.
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := NewBreaker(BreakerConfig{Threshold: 1, Timeout: time.Second}, tr.onChange)
		fail(t, b, 1)
		time.Sleep(time.Second + time.Millisecond)
		for _, e := range ignored {
			if ran, err := run(b, e); !ran || err != e {
				t.Fatalf("probe: ran %t, got %v, want it run and %v itself", ran, err, e)
			}
			wantState(t, b, HalfOpen)
		}
		if ran, err := run(b, nil); !ran || err != nil {
			t.Fatalf("probe: ran %t, got %v, want it run and nil", ran, err)
		}
		wantState(t, b, Closed)
		tr.check(t, "closed→open", "open→half-open", "half-open→closed")
	})
}

// A timeout is the database failing, not the caller giving up: a database
// that hangs must open the breaker like one that refuses connections.
func TestBreakerCountsTimeouts(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker(BreakerConfig{Threshold: 2, Timeout: time.Second}, nil)
		// What pgx returns when a query outlives its context's deadline.
		timeout := fmt.Errorf("insert 100 rows: timeout: %w", context.DeadlineExceeded)
		for range 2 {
			if ran, err := run(b, timeout); !ran || err != timeout {
				t.Fatalf("ran %t, got %v, want it run and %v", ran, err, timeout)
			}
		}
		wantState(t, b, Open)
	})
}

func TestBreakerValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		c  BreakerConfig
		ok bool
	}{
		{BreakerConfig{}, true},
		{BreakerConfig{Threshold: 1, Timeout: time.Millisecond}, true},
		{BreakerConfig{Threshold: -1}, false},
		{BreakerConfig{Timeout: -time.Second}, false},
	} {
		if err := tc.c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v.Validate(): got %v, want ok=%t", tc.c, err, tc.ok)
		}
	}
}
