package postgres

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Maintainer runs Store.Maintain on a schedule from `notifyd run`, and
// reports how far ahead partitions reach. Its goroutine is Run's caller's.
type Maintainer struct {
	store *Store
	log   *slog.Logger
	every time.Duration

	ahead    prometheus.Gauge
	failures *prometheus.CounterVec
	// warned keeps the missing-privilege warning to one a day, per reason.
	warned map[string]time.Time
}

// NewMaintainer returns a maintainer of store's partitions, registering its
// metrics with reg (nil: not exported).
func NewMaintainer(store *Store, log *slog.Logger, reg prometheus.Registerer) *Maintainer {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Maintainer{
		store: store, log: log,
		every: min(store.cfg.partitionInterval()/4, time.Hour),
		ahead: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notifyd_partitions_ahead_seconds",
			Help: "How far past now the partitions made ahead reach; below two partition intervals run warns.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_partition_maintenance_failures_total",
			Help: "Rounds of partition maintenance that failed, by reason (privilege, error).",
		}, []string{"reason"}),
		warned: make(map[string]time.Time),
	}
	// Both series exist from the start, so that an alert or a test can
	// tell "no failure" from "no such metric".
	m.failures.WithLabelValues("privilege")
	m.failures.WithLabelValues("error")
	reg.MustRegister(m.ahead, m.failures)
	return m
}

// Run maintains every min(interval/4, 1h) until ctx ends (call Once first
// for a round at start). Failures are logged and counted, never fatal: rows always have a
// partition (notifications_future), and the next round tries again.
func (m *Maintainer) Run(ctx context.Context) error {
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		m.Once(ctx)
	}
}

// Once runs one round of maintenance and reports it.
func (m *Maintainer) Once(ctx context.Context) MaintainResult {
	res, err := m.store.Maintain(ctx)
	if ctx.Err() != nil {
		return res
	}
	now := m.store.now()
	iv := m.store.cfg.partitionInterval()
	switch {
	case errors.Is(err, ErrNoPrivilege):
		m.failures.WithLabelValues("privilege").Inc()
		if now.Sub(m.warned["privilege"]) > 24*time.Hour {
			m.warned["privilege"] = now
			m.log.Warn("partitions not maintained: this role may not; run `notifyd migrate` on a schedule with a role that owns the tables",
				"error", err)
		}
	case err != nil:
		m.failures.WithLabelValues("error").Inc()
		m.log.Error("partition maintenance failed; tried again later", "error", err)
	}
	for _, n := range res.Created {
		m.log.Info("partition made", "partition", n, "writers_held_up_to", res.Held)
	}
	for _, n := range res.Dropped {
		m.log.Info("partition dropped for retention", "partition", n, "retention", m.store.cfg.Retention, "writers_held_up_to", res.Held)
	}
	if !res.AheadUntil.IsZero() {
		left := res.AheadUntil.Sub(now)
		m.ahead.Set(left.Seconds())
		if left < 2*iv {
			m.log.Warn("partitions made ahead run out soon; new rows will land in notifications_future, which makes the next split slower",
				"ahead_until", res.AheadUntil, "left", left.Round(time.Second), "partition_interval", iv)
		}
	}
	return res
}
