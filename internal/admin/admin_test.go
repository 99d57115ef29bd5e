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

// TestReadyMetricFollowsReadiness checks that notifyd_ready says what
// /readyz says.
func TestReadyMetricFollowsReadiness(t *testing.T) {
	var down atomic.Bool
	srv, err := Listen("127.0.0.1:0", prometheus.NewRegistry(), func(context.Context) error {
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
