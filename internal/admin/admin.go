// Package admin serves notifyd's operator endpoints: /metrics, /healthz,
// /readyz and, when enabled, /debug/pprof.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is the operator address of a notifyd that is given none.
const DefaultAddr = "127.0.0.1:9464"

// Server is the operator HTTP server.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Config configures the operator server.
type Config struct {
	// Addr is the address to listen on; "" means DefaultAddr.
	Addr string
	// Pprof serves /debug/pprof: profiles show the program's internals
	// and a CPU profile or trace costs while it runs, so it is off unless
	// asked for.
	Pprof bool
}

// Listen binds the address and prepares the handlers. ready reports
// readiness: nil when ready, or why not.
func Listen(cfg Config, g prometheus.Gatherer, ready func(context.Context) error) (*Server, error) {
	addr := cfg.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{g, readiness(ready)}, promhttp.HandlerOpts{}))
	if cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}

// readiness exports the answer /readyz would give as notifyd_ready, so
// that an alert can tell a stopped database (0) and a vanished process (no
// series) from a working one (1).
func readiness(ready func(context.Context) error) prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "notifyd_ready",
		Help: "1 when /readyz answers ready (partitions held, breaker closed, database answering), else 0.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if ready(ctx) != nil {
			return 0
		}
		return 1
	}))
	return reg
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close stops the server and its listener at once; after Shutdown it does
// nothing.
func (s *Server) Close() error {
	err := s.srv.Close()
	if cerr := s.ln.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}

// Shutdown stops the server, letting requests in flight finish.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
