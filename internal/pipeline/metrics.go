package pipeline

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/notifyd/notifyd/internal/postgres"
)

// metrics are the pipeline's Prometheus collectors. Labels are few and
// bounded: class, trigger, state and partition.
type metrics struct {
	consumed       prometheus.Counter
	stored         prometheus.Counter
	duplicates     prometheus.Counter
	expired        prometheus.Counter
	deadLetters    *prometheus.CounterVec
	dlqPublished   prometheus.Counter
	dlqKept        prometheus.Counter
	retries        *prometheus.CounterVec
	writes         *prometheus.CounterVec
	fenced         prometheus.Counter
	setAside       prometheus.Counter
	oldest         prometheus.GaugeFunc
	filterBytes    prometheus.GaugeFunc
	filterParts    prometheus.GaugeFunc
	filterOver     prometheus.GaugeFunc
	breakerState   prometheus.Gauge
	batchSize      prometheus.Histogram
	flushSeconds   prometheus.Histogram
	probeSeconds   prometheus.Histogram
	e2eSeconds     prometheus.Histogram
	bufferedRows   prometheus.Gauge
	bufferedBytes  prometheus.Gauge
	assigned       prometheus.Gauge
	storedPosition *prometheus.GaugeVec
	lag            *prometheus.GaugeVec
}

// newMetrics registers the pipeline's metrics with reg; oldest is the age
// of the oldest unwritten message, in seconds, and filters what the store's
// dedupe filters hold.
func newMetrics(reg prometheus.Registerer, oldest func() float64, filters func() postgres.FilterStats) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry() // counted but not exported
	}
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &metrics{
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_messages_consumed_total", Help: "Messages read from the input topic.",
		}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_rows_stored_total", Help: "Notifications written to the table.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_duplicates_skipped_total", Help: "Valid messages skipped because their id was already stored.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_expired_skipped_total", Help: "Valid messages not stored because they were already older than --retention.",
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_dead_letters_total", Help: "Messages dead-lettered, by class (decode, validate, store): recorded in notifyd_dead_letters by the write that moves past them, then published by the relay.",
		}, []string{"class"}),
		dlqPublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_dead_letters_published_total", Help: "Dead letters the relay published to the dead-letter topic.",
		}),
		dlqKept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_dead_letters_kept_total", Help: "Dead letters the dead-letter topic refused for good (too large, not authorised, invalid topic, policy); kept in notifyd_dead_letters.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_retries_total", Help: "Retried operations after a transient failure, by target (database, dlq, kafka: the check of stored positions against the log).",
		}, []string{"target"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_batch_writes_total", Help: "Batch writes started, by what triggered them (size, age, idle, shutdown).",
		}, []string{"trigger"}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_fenced_partitions_total", Help: "Partitions whose write was refused because another writer had moved them; they are re-read from the stored position.",
		}),
		setAside: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_partitions_set_aside_total", Help: "Times a partition's write failed after its retries and the partition was set aside (retried alone on its own backoff while the others flow).",
		}),
		oldest: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "notifyd_oldest_unwritten_message_seconds", Help: "Age of the oldest message read and not yet committed (buffered or in a write), from when it was read; 0 when none.",
		}, oldest),
		filterBytes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "notifyd_dedupe_filter_bytes", Help: "Memory of the dedupe window's filters of closed partitions (8 MiB at most).",
		}, func() float64 { return float64(filters().Bytes) }),
		filterParts: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "notifyd_dedupe_filter_partitions", Help: "Closed partitions whose ids the dedupe window's probe rules out through a filter.",
		}, func() float64 { return float64(filters().Partitions) }),
		filterOver: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "notifyd_dedupe_filter_over_budget_partitions", Help: "Closed partitions the dedupe window's probe looks up id by id because their filter would not fit in what is left of the filters' 8 MiB.",
		}, func() float64 { return float64(filters().OverBudget) }),
		breakerState: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notifyd_breaker_state", Help: "Database circuit breaker: 0 closed, 1 half-open, 2 open.",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "notifyd_batch_size", Help: "Messages per committed write.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		flushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "notifyd_flush_duration_seconds", Help: "Time to commit one batch to the database, from begin to commit.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}),
		probeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "notifyd_dedupe_probe_duration_seconds", Help: "Time of the dedupe window's probe in one committed write (part of its notifyd_flush_duration_seconds): only writes holding rows sent with an id and without a created_at have one.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 15),
		}),
		e2eSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "notifyd_end_to_end_latency_seconds", Help: "From a record's timestamp to the commit of its row.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		bufferedRows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notifyd_buffered_messages", Help: "Messages read and not yet taken by a write (a write in flight holds at most as many again).",
		}),
		bufferedBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notifyd_buffered_bytes", Help: "Key and value bytes of messages read and not yet taken by a write.",
		}),
		assigned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notifyd_assigned_partitions", Help: "Input partitions this instance holds.",
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "notifyd_consumer_lag", Help: "Messages of each held partition not yet committed: the partition's end offset minus the stored position.",
		}, []string{"partition"}),
		storedPosition: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "notifyd_stored_offset", Help: "Next offset to read of each held partition, as committed in the database.",
		}, []string{"partition"}),
	}
	for _, c := range []prometheus.Collector{m.consumed, m.stored, m.duplicates, m.expired, m.deadLetters, m.dlqPublished, m.dlqKept, m.retries,
		m.writes, m.fenced, m.setAside, m.oldest, m.filterBytes, m.filterParts, m.filterOver, m.breakerState, m.batchSize, m.flushSeconds, m.probeSeconds, m.e2eSeconds, m.bufferedRows,
		m.bufferedBytes, m.assigned, m.storedPosition, m.lag} {
		f(c)
	}
	for _, class := range []string{"decode", "validate", "store"} {
		m.deadLetters.WithLabelValues(class)
	}
	for _, t := range []string{"database", "dlq", "kafka"} {
		m.retries.WithLabelValues(t)
	}
	// Every trigger's series exists from the start, so that a trigger that
	// never fired reads 0 rather than missing.
	for _, t := range []string{"size", "age", "idle", "shutdown", "retry"} {
		m.writes.WithLabelValues(t)
	}
	return m
}
