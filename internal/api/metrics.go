package api

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	open     prometheus.Gauge
	events   *prometheus.CounterVec
	dropped  prometheus.Counter
	polls    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_api_requests_total", Help: "Inbox API requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "notifyd_api_request_duration_seconds", Help: "Inbox API request latency by route (streams excluded).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notifyd_api_streams_open", Help: "Open inbox streams.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_api_stream_events_total", Help: "Events written to inbox streams, by event.",
		}, []string{"event"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notifyd_api_streams_dropped_total", Help: "Streams closed because their client did not keep up.",
		}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notifyd_api_stream_polls_total", Help: "Queries of the stream's hub for committed rows, by result (ok, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.latency, m.open, m.events, m.dropped, m.polls} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// statusWriter records the status code; Unwrap lets http.ResponseController
// reach the connection (flush, deadlines).
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack lets the stream take its connection over (a taken-over stream is
// counted as a 200 when it starts).
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (s *Server) instrument(route string, h http.HandlerFunc) http.Handler {
	stream := route == "GET /v1/inbox/stream"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			s.metrics.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
			if !stream {
				s.metrics.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
			}
		}()
		h(sw, r)
	})
}
