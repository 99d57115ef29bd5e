// Package retry decides which failures are worth retrying and retries them
// with capped exponential backoff and jitter; Breaker stops retrying a
// dependency that keeps failing.
package retry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Defaults of Policy.
const (
	DefaultRetries = 3
	DefaultInitial = 100 * time.Millisecond
	DefaultMax     = 5 * time.Second
)

// Policy is a retry policy. The zero value is the default: 3 retries after
// the first attempt, waiting 100 ms, 200 ms, 400 ms (doubling, capped at
// 5 s), each wait varied by ±20 % so that instances do not retry in step.
type Policy struct {
	Retries    int           // retries after the first attempt; 0 means DefaultRetries, -1 none
	Initial    time.Duration // first wait; 0 means DefaultInitial
	Max        time.Duration // cap on one wait; 0 means DefaultMax
	Multiplier float64       // growth per retry; 0 means 2
	Jitter     float64       // relative spread of each wait, 0..1; 0 means 0.2, -1 none
}

// Validate reports a setting that cannot work, naming it by its
// command-line flag.
func (p Policy) Validate() error {
	switch {
	case p.Retries < -1:
		return fmt.Errorf("--retry-max-retries: must be 0 (none) or more, got %d", p.Retries)
	case p.Initial < 0:
		return fmt.Errorf("--retry-initial-backoff: must be positive, got %s", p.Initial)
	case p.Max < 0:
		return fmt.Errorf("--retry-max-backoff: must be positive, got %s", p.Max)
	case p.Multiplier != 0 && p.Multiplier < 1:
		return fmt.Errorf("backoff multiplier must be at least 1, got %g", p.Multiplier)
	case p.Jitter != -1 && (p.Jitter < 0 || p.Jitter >= 1):
		return fmt.Errorf("backoff jitter must be in [0, 1) or -1, got %g", p.Jitter)
	}
	if p.withDefaults().Initial > p.withDefaults().Max {
		return fmt.Errorf("--retry-initial-backoff: %s is above --retry-max-backoff %s", p.withDefaults().Initial, p.withDefaults().Max)
	}
	return nil
}

func (p Policy) withDefaults() Policy {
	if p.Retries == 0 {
		p.Retries = DefaultRetries
	}
	if p.Retries < 0 {
		p.Retries = 0
	}
	if p.Initial == 0 {
		p.Initial = DefaultInitial
	}
	if p.Max == 0 {
		p.Max = DefaultMax
	}
	if p.Multiplier == 0 {
		p.Multiplier = 2
	}
	if p.Jitter == 0 {
		p.Jitter = 0.2
	}
	if p.Jitter < 0 {
		p.Jitter = 0
	}
	return p
}

// Backoff returns the sequence of waits of p, starting afresh.
func (p Policy) Backoff() backoff.BackOff {
	p = p.withDefaults()
	return capped{&backoff.ExponentialBackOff{
		InitialInterval:     p.Initial,
		RandomizationFactor: p.Jitter,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.Max,
	}, p.Max}
}

// capped holds every wait to the cap: the library applies jitter after its
// own cap, which would let a wait reach Max × (1 + Jitter).
type capped struct {
	backoff.BackOff
	max time.Duration
}

func (c capped) NextBackOff() time.Duration {
	d := c.BackOff.NextBackOff()
	if d == backoff.Stop {
		return d
	}
	return min(d, c.max)
}

// Do runs op until it succeeds, fails permanently, the retries are used up
// or ctx ends. onRetry, if not nil, is told of each failure that will be
// retried and the wait before the retry.
func (p Policy) Do(ctx context.Context, op func(context.Context) error, onRetry func(err error, wait time.Duration)) error {
	pd := p.withDefaults()
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := op(ctx)
		if err != nil && !Transient(err) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	},
		backoff.WithBackOff(p.Backoff()),
		backoff.WithMaxTries(uint(pd.Retries)+1),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(onRetry),
	)
	return err
}

// Transient reports whether err may go away by itself, so that the work is
// retried rather than dead-lettered. This is the one place notifyd classes
// errors: only the database refusing the data itself (SQLSTATE classes 22
// and 23) is permanent for a row; a cancelled context is not worth retrying;
// everything else (refused or reset connections, timeouts, an exhausted
// pool, serialization failures, deadlocks, an administrator's shutdown, an
// unavailable broker, and errors notifyd cannot place) is transient, because
// an outage must never send a message to the dead-letter queue.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return !IsDataError(pe)
	}
	var perm *permanentError
	return !errors.As(err, &perm)
}

// IsDataError reports whether err is the database refusing the data itself:
// SQLSTATE class 22 (data exception) or 23 (integrity constraint violation).
// Retrying cannot help; the row must be dead-lettered.
func IsDataError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) < 2 {
		return false
	}
	return pe.Code[:2] == "22" || pe.Code[:2] == "23"
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying.
func Permanent(err error) error { return &permanentError{err} }

// Budget is the longest Do may take when each attempt is bounded by
// attempt: every try at its bound, and every wait at its longest (the cap,
// jitter included).
func (p Policy) Budget(attempt time.Duration) time.Duration {
	pd := p.withDefaults()
	total := time.Duration(pd.Retries+1) * attempt
	wait := float64(pd.Initial)
	for range pd.Retries {
		total += min(time.Duration(wait*(1+pd.Jitter)), pd.Max)
		wait *= pd.Multiplier
	}
	return total
}
