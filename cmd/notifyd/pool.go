package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/notifyd/notifyd/internal/postgres"
)

// poolCollector exports the database pool's statistics.
type poolCollector struct {
	store                                  *postgres.Store
	total, idle, acquired, acquires, waits *prometheus.Desc
}

func newPoolCollector(s *postgres.Store) *poolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("notifyd_db_pool_"+name, help, nil, nil)
	}
	return &poolCollector{
		store:    s,
		total:    d("connections", "Open connections in the database pool."),
		idle:     d("idle_connections", "Idle connections in the database pool."),
		acquired: d("acquired_connections", "Connections in use."),
		acquires: d("acquires_total", "Connections taken from the pool."),
		waits:    d("empty_acquires_total", "Acquires that had to wait for a connection."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.total
	ch <- c.idle
	ch <- c.acquired
	ch <- c.acquires
	ch <- c.waits
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.store.Pool().Stat()
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(s.TotalConns()))
	ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.IdleConns()))
	ch <- prometheus.MustNewConstMetric(c.acquired, prometheus.GaugeValue, float64(s.AcquiredConns()))
	ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
}
