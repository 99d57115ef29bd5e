// Package api serves a user's inbox over HTTP (SPEC §6): the feed, counts,
// read state and a live Server-Sent Events stream, from the PostgreSQL that
// notifyd run fills. docs/architecture.md ("Inbox API") describes the read
// state, the stream's positions and which goroutine owns what.
package api

import (
	"errors"
	"fmt"
	"time"
)

// Defaults of Config, in one place.
const (
	// DefaultAddr is where `notifyd serve` listens.
	DefaultAddr          = "127.0.0.1:8080"
	DefaultCountCap      = 1000
	DefaultHeartbeat     = 15 * time.Second
	DefaultPollInterval  = time.Second
	DefaultStreamBuffer  = 64
	DefaultQueryTimeout  = 5 * time.Second
	DefaultMaxIDs        = 1000
	DefaultMaxBodyBytes  = 64 << 10
	DefaultWriteDeadline = 10 * time.Second
)

// Config configures a Server. Zero fields mean the defaults above, except
// Secret, which is required.
type Config struct {
	// Secret verifies the HS256 signatures of bearer tokens.
	Secret []byte
	// CountCap bounds counts: exact up to it, then the cap with capped=true.
	CountCap int
	// Heartbeat is how often an open stream gets a comment line.
	Heartbeat time.Duration
	// PollInterval bounds how long the stream waits for rows when no
	// wake-up arrives (a missed notification, a write into a partition).
	PollInterval time.Duration
	// StreamBuffer is how many events a stream may have pending before it
	// is dropped as too slow.
	StreamBuffer int
	// QueryTimeout bounds each request's database work.
	QueryTimeout time.Duration
	// MaxIDs bounds the ids of one read-state change.
	MaxIDs int
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64
	// WriteDeadline bounds each write to a stream's client.
	WriteDeadline time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Validate reports the first settings that cannot work, by field.
func (c Config) Validate() error {
	var errs []error
	if len(c.Secret) == 0 {
		errs = append(errs, errors.New("--api-secret: required to verify tokens"))
	} else if len(c.Secret) < 16 {
		errs = append(errs, fmt.Errorf("--api-secret: must be at least 16 bytes for HS256, got %d", len(c.Secret)))
	}
	nonNeg := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %d", name, v))
		}
	}
	nonNeg("--api-count-cap", int64(c.CountCap))
	nonNeg("stream buffer", int64(c.StreamBuffer))
	nonNeg("max ids", int64(c.MaxIDs))
	nonNeg("max body bytes", c.MaxBodyBytes)
	for name, d := range map[string]time.Duration{"heartbeat": c.Heartbeat, "poll interval": c.PollInterval,
		"query timeout": c.QueryTimeout, "write deadline": c.WriteDeadline} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %s", name, d))
		}
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.CountCap == 0 {
		c.CountCap = DefaultCountCap
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.StreamBuffer == 0 {
		c.StreamBuffer = DefaultStreamBuffer
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = DefaultQueryTimeout
	}
	if c.MaxIDs == 0 {
		c.MaxIDs = DefaultMaxIDs
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.WriteDeadline == 0 {
		c.WriteDeadline = DefaultWriteDeadline
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
