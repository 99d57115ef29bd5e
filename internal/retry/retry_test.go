package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

var errFlaky = errors.New("connection reset by peer")

// attempts runs p.Do with an op that fails with errFlaky until it has been
// called failures times, and returns the fake-clock time of each call
// (since Do began), the waits onRetry was told of and Do's error.
func attempts(ctx context.Context, p Policy, failures int) (calls, waits []time.Duration, err error) {
	start := time.Now()
	err = p.Do(ctx, func(context.Context) error {
		calls = append(calls, time.Since(start))
		if len(calls) <= failures {
			return fmt.Errorf("attempt %d: %w", len(calls), errFlaky)
		}
		return nil
	}, func(_ error, wait time.Duration) { waits = append(waits, wait) })
	return calls, waits, err
}

func ms(ds ...int) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = time.Duration(d) * time.Millisecond
	}
	return out
}

func TestPolicyBackoffSequence(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		calls, waits, err := attempts(t.Context(), Policy{Jitter: -1}, 100)
		if !errors.Is(err, errFlaky) {
			t.Fatalf("got %v, want %v", err, errFlaky)
		}
		if want := ms(100, 200, 400); !slices.Equal(waits, want) {
			t.Errorf("waits: got %v, want %v", waits, want)
		}
		// The fake clock shows that Do really waited that long, no more.
		if want := ms(0, 100, 300, 700); !slices.Equal(calls, want) {
			t.Errorf("calls at: got %v, want %v", calls, want)
		}
	})
}

func TestPolicyBackoffCappedAtMax(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := Policy{Jitter: -1, Retries: 6, Max: 300 * time.Millisecond}
		calls, waits, _ := attempts(t.Context(), p, 100)
		if want := ms(100, 200, 300, 300, 300, 300); !slices.Equal(waits, want) {
			t.Errorf("waits: got %v, want %v", waits, want)
		}
		if want := ms(0, 100, 300, 600, 900, 1200, 1500); !slices.Equal(calls, want) {
			t.Errorf("calls at: got %v, want %v", calls, want)
		}
	})

	// The default cap is 5 s.
	b := Policy{Jitter: -1}.Backoff()
	var got []time.Duration
	for range 9 {
		got = append(got, b.NextBackOff())
	}
	if want := ms(100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000); !slices.Equal(got, want) {
		t.Errorf("default backoff: got %v, want %v", got, want)
	}
}

func TestPolicyDefaultJitter(t *testing.T) {
	t.Parallel()
	nominal := ms(100, 200, 400, 800, 1600, 3200, 5000, 5000)
	spread := map[time.Duration]bool{}
	for range 500 {
		b := Policy{}.Backoff()
		for i, n := range nominal {
			got := b.NextBackOff()
			lo, hi := n-n/5, n+n/5
			if got < lo || got > hi {
				t.Fatalf("wait %d: got %s, want within ±20%% of %s [%s, %s]", i+1, got, n, lo, hi)
			}
			if i == 0 {
				spread[got] = true
			}
		}
	}
	if len(spread) < 10 {
		t.Errorf("first wait took %d distinct values in 500 runs, want jitter to spread them", len(spread))
	}

	// Do waits what onRetry announces.
	synctest.Test(t, func(t *testing.T) {
		calls, waits, _ := attempts(t.Context(), Policy{}, 100)
		if len(waits) != 3 || len(calls) != 4 {
			t.Fatalf("got %d waits and %d calls, want 3 and 4", len(waits), len(calls))
		}
		for i, w := range waits {
			n := nominal[i]
			if w < n-n/5 || w > n+n/5 {
				t.Errorf("wait %d: got %s, want within ±20%% of %s", i+1, w, n)
			}
			if got := calls[i+1] - calls[i]; got != w {
				t.Errorf("wait %d: Do waited %s, onRetry said %s", i+1, got, w)
			}
		}
	})
}

func TestPolicyMaxRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		retries, calls int
	}{
		{0, 4}, // the default: 3 retries
		{1, 2},
		{3, 4},
		{5, 6},
		{-1, 1},
	} {
		t.Run(fmt.Sprint(tc.retries), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				calls, waits, err := attempts(t.Context(), Policy{Retries: tc.retries}, 100)
				if len(calls) != tc.calls {
					t.Errorf("op called %d times, want %d", len(calls), tc.calls)
				}
				if len(waits) != tc.calls-1 {
					t.Errorf("onRetry called %d times, want %d", len(waits), tc.calls-1)
				}
				if !errors.Is(err, errFlaky) {
					t.Errorf("got %v, want %v", err, errFlaky)
				}
			})
		})
	}
}

func TestPolicyEventualSuccess(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		calls, _, err := attempts(t.Context(), Policy{Jitter: -1}, 2)
		if err != nil {
			t.Fatalf("got %v, want nil", err)
		}
		if want := ms(0, 100, 300); !slices.Equal(calls, want) {
			t.Errorf("calls at: got %v, want %v", calls, want)
		}
	})
}

func TestPolicyEventualFailureReturnsLastError(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		calls, _, err := attempts(t.Context(), Policy{}, 100)
		if len(calls) != 4 {
			t.Fatalf("op called %d times, want 4", len(calls))
		}
		if got, want := fmt.Sprint(err), "attempt 4: "+errFlaky.Error(); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
}

func TestPolicyPermanentNotRetried(t *testing.T) {
	t.Parallel()
	for _, err := range []error{
		&pgconn.PgError{Code: "23505", Message: "duplicate key value violates unique constraint"},
		&pgconn.PgError{Code: "22P02", Message: "invalid input syntax for type uuid"},
		fmt.Errorf("insert: %w", &pgconn.PgError{Code: "23514"}),
		Permanent(errors.New("no point")),
		context.Canceled,
	} {
		t.Run(err.Error(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				calls := 0
				got := Policy{}.Do(t.Context(), func(context.Context) error {
					calls++
					return err
				}, func(error, time.Duration) { t.Error("onRetry called for a permanent error") })
				if calls != 1 {
					t.Errorf("op called %d times, want 1", calls)
				}
				if got != err {
					t.Errorf("got %v, want %v itself", got, err)
				}
			})
		})
	}
}

func TestPolicyContextCancelStopsWaiting(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(250*time.Millisecond, cancel)
		start := time.Now()
		calls := 0
		err := Policy{Jitter: -1, Retries: 10, Initial: time.Second}.Do(ctx, func(context.Context) error {
			calls++
			return errFlaky
		}, nil)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want %v", err, context.Canceled)
		}
		if calls != 1 {
			t.Errorf("op called %d times, want 1", calls)
		}
		if got, want := time.Since(start), 250*time.Millisecond; got != want {
			t.Errorf("Do returned after %s, want %s (when ctx was cancelled)", got, want)
		}
	})

	// A context already done is not waited on either.
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		start := time.Now()
		err := Policy{}.Do(ctx, func(context.Context) error { return errFlaky }, nil)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want %v", err, context.Canceled)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Do waited %s with a cancelled context", d)
		}
	})
}

func TestTransient(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return &pgconn.PgError{Severity: "ERROR", Code: code} }
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"serialization failure 40001", pg("40001"), true},
		{"deadlock 40P01", pg("40P01"), true},
		{"admin shutdown 57P01", pg("57P01"), true},
		{"connection failure 08006", pg("08006"), true},
		{"too many connections 53300", pg("53300"), true},
		{"wrapped 40001", fmt.Errorf("write batch: %w", pg("40001")), true},
		{"unique violation 23505", pg("23505"), false},
		{"check violation 23514", pg("23514"), false},
		{"string too long 22001", pg("22001"), false},
		{"invalid text 22P02", pg("22P02"), false},
		{"wrapped 23505", fmt.Errorf("insert: %w", pg("23505")), false},
		{"context canceled", context.Canceled, false},
		{"wrapped context canceled", fmt.Errorf("begin: %w", context.Canceled), false},
		{"deadline exceeded", context.DeadlineExceeded, true},
		{"permanent", Permanent(errors.New("x")), false},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{"connection reset", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{"dns", &net.DNSError{Err: "no such host", Name: "db", IsTemporary: true}, true},
		{"eof", io.EOF, true},
		{"unexpected eof", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{"unknown", errors.New("something odd"), true},
		{"excluded", Excluded(errFlaky), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Transient(tc.err); got != tc.want {
				t.Errorf("Transient(%v): got %t, want %t", tc.err, got, tc.want)
			}
		})
	}
}

func TestIsDataError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "23505"}, true},
		{&pgconn.PgError{Code: "22001"}, true},
		{fmt.Errorf("x: %w", &pgconn.PgError{Code: "23514"}), true},
		{&pgconn.PgError{Code: "40001"}, false},
		{&pgconn.PgError{Code: "42P01"}, false},
		{&pgconn.PgError{Code: "2"}, false},
		{&pgconn.PgError{}, false},
		{errors.New("23505"), false},
		{nil, false},
	} {
		if got := IsDataError(tc.err); got != tc.want {
			t.Errorf("IsDataError(%v): got %t, want %t", tc.err, got, tc.want)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		p  Policy
		ok bool
	}{
		{Policy{}, true},
		{Policy{Retries: -1, Jitter: -1}, true},
		{Policy{Initial: time.Second, Max: 10 * time.Second, Multiplier: 1.5, Jitter: 0.5}, true},
		{Policy{Retries: -2}, false},
		{Policy{Initial: -1}, false},
		{Policy{Max: -1}, false},
		{Policy{Multiplier: 0.5}, false},
		{Policy{Jitter: 1}, false},
		{Policy{Jitter: -0.5}, false},
		{Policy{Initial: 10 * time.Second}, false}, // above the default max
	} {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v.Validate(): got %v, want ok=%t", tc.p, err, tc.ok)
		}
	}
}

func TestPolicyBudget(t *testing.T) {
	tests := []struct {
		p       Policy
		attempt time.Duration
		want    time.Duration
	}{
		// 4 attempts of 5 s, waits of at most 120, 240 and 480 ms.
		{Policy{}, 5 * time.Second, 20*time.Second + 840*time.Millisecond},
		{Policy{Retries: -1}, time.Second, time.Second},
		// Waits of 1.2 s, then capped at 2 s twice.
		{Policy{Retries: 3, Initial: time.Second, Max: 2 * time.Second}, time.Second, 4*time.Second + 5200*time.Millisecond},
		{Policy{Retries: 2, Jitter: -1}, 100 * time.Millisecond, 300*time.Millisecond + 300*time.Millisecond},
	}
	for _, tt := range tests {
		if got := tt.p.Budget(tt.attempt); got != tt.want {
			t.Errorf("%+v.Budget(%s): got %s, want %s", tt.p, tt.attempt, got, tt.want)
		}
	}
}
