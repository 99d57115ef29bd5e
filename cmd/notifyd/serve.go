package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/notifyd/notifyd/internal/admin"
	"github.com/notifyd/notifyd/internal/api"
	"github.com/notifyd/notifyd/internal/postgres"
)

// apiFlags are the inbox API's settings other than its address, shared by
// serve and run.
type apiFlags struct {
	APISecret   string `name:"api-secret" env:"NOTIFYD_API_SECRET" help:"HS256 secret that verifies the API's bearer tokens (at least 16 bytes); required when the API is served. Never logged."`
	APICountCap int    `name:"api-count-cap" env:"NOTIFYD_API_COUNT_CAP" default:"${api_count_cap}" nonzero:"true" help:"Counts are exact up to this number, then reported as it with capped=true."`
}

func (f apiFlags) apiConfig() api.Config {
	return api.Config{Secret: []byte(f.APISecret), CountCap: f.APICountCap}
}

// validate checks the API settings for an API served at addr.
func (f apiFlags) validate(addr string) []error {
	if addr == "" {
		return nil
	}
	var errs []error
	if err := checkListenAddr(addr); err != nil {
		errs = append(errs, fmt.Errorf("--api-addr: %w", err))
	}
	if f.APISecret == "" {
		errs = append(errs, errors.New("--api-secret: required when the inbox API is served (--api-addr)"))
	} else if err := f.apiConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

type serveCmd struct {
	dbFlags
	logFlags
	apiFlags
	APIAddr     string `name:"api-addr" env:"NOTIFYD_API_ADDR" default:"${serve_api_addr}" help:"Address of the inbox API (and its demo page at /)."`
	MetricsAddr string `name:"metrics-addr" env:"NOTIFYD_METRICS_ADDR" default:"${metrics_addr}" help:"Address of /metrics, /healthz and /readyz (give another one than a notifyd run on the same host); empty disables them."`
	Pprof       bool   `name:"pprof" env:"NOTIFYD_PPROF" help:"Also serve /debug/pprof on --metrics-addr (profiles show internals and cost CPU while taken)."`
}

func (c *serveCmd) Help() string {
	return `notifyd serve serves the inbox API alone (SPEC section 6): a user's feed,
counts, read state and live stream, from the database that notifyd run fills.
Run as many as needed; each one's stream learns of new rows from PostgreSQL.

Examples:
  notifyd serve --api-secret "$SECRET"
  notifyd token --user 6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11 --api-secret "$SECRET"
  curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/v1/inbox`
}

func (c *serveCmd) validate() error {
	var errs []error
	if c.APIAddr == "" {
		errs = append(errs, errors.New("--api-addr: must not be empty"))
	}
	errs = append(errs, c.apiFlags.validate(c.APIAddr)...)
	if c.MetricsAddr != "" {
		if err := checkListenAddr(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("--metrics-addr: %w", err))
		}
	} else if c.Pprof {
		errs = append(errs, errors.New("--pprof: needs --metrics-addr, where it is served"))
	}
	if err := c.config().Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Run serves the API; its settings were checked when they were parsed
// (validate). The addresses are bound before anything else starts.
func (c *serveCmd) Run(ctx context.Context) error {
	log := c.logger()
	ln, err := listenAPI(c.APIAddr)
	if err != nil {
		return err
	}
	defer ln.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var srv *admin.Server
	// ready is set before the server serves, so /readyz never sees it nil.
	var ready func(context.Context) error
	if c.MetricsAddr != "" {
		srv, err = admin.Listen(admin.Config{Addr: c.MetricsAddr, Pprof: c.Pprof}, reg, func(ctx context.Context) error { return ready(ctx) })
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	store, err := postgres.Open(ctx, c.config())
	if err != nil {
		return err
	}
	defer store.Close()
	v, err := store.Migrate(ctx)
	if err != nil {
		return err
	}
	ready = store.Ping
	log.Info("database ready", "database", store.String(), "schema_version", v)
	reg.MustRegister(newPoolCollector(store))

	g, gctx := errgroup.WithContext(ctx)
	if err := startAPI(gctx, g, ln, c.config(), c.apiFlags, log, reg); err != nil {
		return err
	}
	if srv != nil {
		log.Info("serving /metrics, /healthz and /readyz", "addr", srv.Addr(), "pprof", c.Pprof)
		g.Go(srv.Serve)
		g.Go(func() error {
			<-gctx.Done()
			return shutdown(srv.Shutdown)
		})
	}
	err = g.Wait()
	if err == nil {
		log.Info("stopped cleanly")
	}
	return err
}

// listenAPI binds the API's address.
func listenAPI(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--api-addr: %w", err)
	}
	return ln, nil
}

// startAPI serves the inbox API on ln in g until ctx ends: first the
// streams end (the hub stops), then the server drains.
func startAPI(ctx context.Context, g *errgroup.Group, ln net.Listener, db postgres.Config, f apiFlags, log *slog.Logger, reg prometheus.Registerer) error {
	// Its own pool: a burst of API requests must not take the connections
	// the write path needs.
	db.Params = api.SessionParams
	pool, err := postgres.Open(ctx, db)
	if err != nil {
		return err
	}
	a, err := api.New(f.apiConfig(), pool.Pool(), log.With("component", "api"), reg)
	if err != nil {
		pool.Close()
		return err
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	log.Info("serving the inbox API; demo page at /", "addr", "http://"+ln.Addr().String()+"/")
	hubDone := make(chan struct{})
	g.Go(func() error {
		defer close(hubDone)
		return a.Run(ctx)
	})
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("inbox API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		<-hubDone
		err := shutdown(srv.Shutdown)
		pool.Close()
		return err
	})
	return nil
}

func shutdown(f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return f(ctx)
}
