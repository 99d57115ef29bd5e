package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestHealthAsksReadyz(t *testing.T) {
	var ready atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if !ready.Load() {
			http.Error(w, "not ready: database: connection refused", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	_, port, _ := net.SplitHostPort(addr)

	for _, c := range []struct {
		name    string
		ready   bool
		addr    string
		wantErr string // "" for success
	}{
		{"ready", true, addr, ""},
		{"ready, asked on the wildcard address", true, "0.0.0.0:" + port, ""},
		{"not ready", false, addr, "503 Service Unavailable: not ready: database: connection refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ready.Store(c.ready)
			var out bytes.Buffer
			err := runCommand(context.Background(), &out, "health", "--metrics-addr", c.addr)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("got %v, want ready", err)
			case c.wantErr == "" && strings.TrimSpace(out.String()) != "ready":
				t.Errorf("output: got %q, want %q", out.String(), "ready")
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("got %v, want an error containing %q", err, c.wantErr)
			}
		})
	}

	t.Run("exit codes of the binary", func(t *testing.T) {
		if testing.Short() {
			t.Skip("builds notifyd")
		}
		for _, c := range []struct {
			ready bool
			env   []string
			args  []string
			want  int
		}{
			{true, childEnv("NOTIFYD_METRICS_ADDR=" + addr), nil, 0}, // as a container's health check calls it
			{false, childEnv(), []string{"--metrics-addr", addr}, exitFailure},
			{true, childEnv(), []string{"--metrics-addr", addr, "--timeout", "0s"}, exitUsage},
		} {
			ready.Store(c.ready)
			code, stdout, stderr := runBinary(t, c.env, 30*time.Second, append([]string{"health"}, c.args...)...)
			if code != c.want {
				t.Errorf("notifyd health %v (ready %v): got exit %d, want %d\nstdout: %s\nstderr: %s", c.args, c.ready, code, c.want, stdout, stderr)
			}
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		free := ln.Addr().String()
		ln.Close()
		err = runCommand(context.Background(), nil, "health", "--metrics-addr", free)
		if err == nil || !strings.Contains(err.Error(), "not ready") {
			t.Errorf("got %v, want not ready: connection refused", err)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		err := runCommand(context.Background(), nil, "health", "--metrics-addr", "localhost")
		if err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
			t.Errorf("got %v, want an error naming --metrics-addr", err)
		}
	})
}
