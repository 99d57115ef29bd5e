package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func serve(t *testing.T, cfg Config, ready func(context.Context) error) string {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	s, err := Listen(cfg, prometheus.NewRegistry(), ready)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return "http://" + s.Addr()
}

func status(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPprofIsServedOnlyWhenEnabled checks that the profiles are off by
// default and on with Pprof, and that the other endpoints do not depend on
// it.
func TestPprofIsServedOnlyWhenEnabled(t *testing.T) {
	ready := func(context.Context) error { return nil }
	for _, tt := range []struct {
		pprof bool
		want  int
	}{{false, http.StatusNotFound}, {true, http.StatusOK}} {
		base := serve(t, Config{Pprof: tt.pprof}, ready)
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/symbol"} {
			if got, _ := status(t, base+path); got != tt.want {
				t.Errorf("Pprof %v: GET %s: got %d, want %d", tt.pprof, path, got, tt.want)
			}
		}
		for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
			if got, _ := status(t, base+path); got != http.StatusOK {
				t.Errorf("Pprof %v: GET %s: got %d, want 200", tt.pprof, path, got)
			}
		}
	}
}

func TestReadyzSaysWhyNot(t *testing.T) {
	base := serve(t, Config{}, func(context.Context) error { return errors.New("topic notifications does not exist") })
	code, body := status(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || body != "not ready: topic notifications does not exist\n" {
		t.Fatalf("got %d %q, want 503 with the reason", code, body)
	}
}

// TestReadyMetricFollowsReadiness checks that notifyd_ready says what
// /readyz says.
func TestReadyMetricFollowsReadiness(t *testing.T) {
	var down atomic.Bool
	srv, err := Listen(Config{Addr: "127.0.0.1:0"}, prometheus.NewRegistry(), func(context.Context) error {
		if down.Load() {
			return errors.New("database: connection refused")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve() //nolint:errcheck // ends with Shutdown
	defer srv.Shutdown(context.Background())

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		down      bool
		readyz    int
		metricVal string
	}{
		{false, http.StatusOK, "notifyd_ready 1\n"},
		{true, http.StatusServiceUnavailable, "notifyd_ready 0\n"},
	} {
		down.Store(c.down)
		if code, body := get("/readyz"); code != c.readyz {
			t.Errorf("database down %v: GET /readyz: got %d %q, want %d", c.down, code, body, c.readyz)
		}
		if _, body := get("/metrics"); !strings.Contains(body, c.metricVal) {
			t.Errorf("database down %v: /metrics: got\n%s\nwant a line %q", c.down, body, c.metricVal)
		}
	}
}
