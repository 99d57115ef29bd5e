package retry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BreakerConfig configures a Breaker. The zero value opens after 5
// consecutive failed operations and probes again after 1 s: probing is
// one cheap attempt, and a short timeout is what lets flow resume within a
// second of the database's return.
type BreakerConfig struct {
	Threshold int           // consecutive failures that open the breaker; 0 means DefaultBreakerThreshold
	Timeout   time.Duration // how long it stays open before a probe; 0 means DefaultBreakerTimeout
}

// Defaults of BreakerConfig.
const (
	DefaultBreakerThreshold = 5
	DefaultBreakerTimeout   = time.Second
)

// Validate reports a setting that cannot work, naming it by its
// command-line flag.
func (c BreakerConfig) Validate() error {
	var errs []error
	if c.Threshold < 0 {
		errs = append(errs, fmt.Errorf("--breaker-threshold: must be at least 1, got %d", c.Threshold))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("--breaker-timeout: must be positive, got %s", c.Timeout))
	}
	return errors.Join(errs...)
}

// State is a breaker's state.
type State = gobreaker.State

// Breaker states.
const (
	Closed   = gobreaker.StateClosed
	HalfOpen = gobreaker.StateHalfOpen
	Open     = gobreaker.StateOpen
)

// ErrOpen is returned without running the operation while the breaker is
// open, or half-open with its probe already running.
var ErrOpen = errors.New("circuit breaker open")

// Breaker fails fast while a dependency keeps failing: it opens after
// Threshold consecutive failures, refuses work for Timeout, then lets one
// probe through; the probe's success closes it and its failure opens it
// again. A cancelled context and errors marked with Excluded are neither
// success nor failure.
type Breaker struct {
	cb      *gobreaker.CircuitBreaker[struct{}]
	timeout time.Duration
}

// NewBreaker returns a closed breaker; onChange, if not nil, is called on
// every change of state.
func NewBreaker(cfg BreakerConfig, onChange func(from, to State)) *Breaker {
	if cfg.Threshold == 0 {
		cfg.Threshold = DefaultBreakerThreshold
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultBreakerTimeout
	}
	st := gobreaker.Settings{
		Name:        "database",
		MaxRequests: 1,
		Timeout:     cfg.Timeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(cfg.Threshold)
		},
		// Only cancellation is excluded: a deadline exceeded is how a
		// database that hangs (or a route that drops packets) fails, and
		// it must open the breaker like a refused connection does.
		IsExcluded: func(err error) bool {
			var ex *excludedError
			return errors.Is(err, context.Canceled) || errors.As(err, &ex)
		},
	}
	if onChange != nil {
		st.OnStateChange = func(_ string, from, to gobreaker.State) { onChange(from, to) }
	}
	return &Breaker{cb: gobreaker.NewCircuitBreaker[struct{}](st), timeout: cfg.Timeout}
}

// Do runs op unless the breaker is open.
func (b *Breaker) Do(op func() error) error {
	_, err := b.cb.Execute(func() (struct{}, error) { return struct{}{}, op() })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return ErrOpen
	}
	return err
}

// State is the breaker's current state.
func (b *Breaker) State() State { return b.cb.State() }

// Timeout is how long the breaker stays open.
func (b *Breaker) Timeout() time.Duration { return b.timeout }

type excludedError struct{ err error }

func (e *excludedError) Error() string { return e.err.Error() }
func (e *excludedError) Unwrap() error { return e.err }

// Excluded marks err as saying nothing about the guarded dependency's
// health, so that the breaker does not count it.
func Excluded(err error) error { return &excludedError{err} }
