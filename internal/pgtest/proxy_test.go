package pgtest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// echoServer answers each line with itself.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	// A guard against a hang, not a timing assertion.
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, bufio.NewReader(c)
}

func echo(t *testing.T, c net.Conn, r *bufio.Reader, line string) error {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		t.Fatalf("echo: got %q, want %q", got, line+"\n")
	}
	return nil
}

func TestProxyCutAndRestore(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, echoServer(t))

	c1, r1 := dial(t, p.Addr())
	if err := echo(t, c1, r1, "hello"); err != nil {
		t.Fatalf("echo through proxy: %v", err)
	}
	if got := p.Conns(); got != 1 {
		t.Fatalf("open connections: got %d, want 1", got)
	}

	p.Cut()
	if got := p.Conns(); got != 0 {
		t.Fatalf("open connections after Cut: got %d, want 0", got)
	}
	// The open connection is gone...
	if _, err := r1.ReadString('\n'); err == nil {
		t.Fatalf("read on a cut connection: got nil error, want it closed")
	}
	// ...and new ones are dropped at once.
	c2, r2 := dial(t, p.Addr())
	if err := echo(t, c2, r2, "anyone?"); err == nil {
		t.Fatalf("echo through a cut proxy: got nil error, want the connection dropped")
	}

	p.Restore()
	c3, r3 := dial(t, p.Addr())
	for _, line := range []string{"back", "again"} {
		if err := echo(t, c3, r3, line); err != nil {
			t.Fatalf("echo after Restore: %v", err)
		}
	}
	if got := p.Conns(); got != 1 {
		t.Fatalf("open connections after Restore: got %d, want 1", got)
	}

	// The client closing its side closes the server's.
	c3.Close()
	for p.Conns() != 0 {
		time.Sleep(time.Millisecond)
	}
}

func TestProxyURL(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, "127.0.0.1:1")
	host, port, _ := net.SplitHostPort(p.Addr())
	for _, tc := range []struct {
		in, want string
	}{
		{"postgres://postgres@127.0.0.1:5432/test?sslmode=disable&search_path=t_0a1b",
			"postgres://postgres@" + p.Addr() + "/test?sslmode=disable&search_path=t_0a1b"},
		{"postgresql://u:p%40ss@db.example:6543/d?search_path=s",
			"postgresql://u:p%40ss@" + p.Addr() + "/d?search_path=s"},
		{"postgres://localhost/test", "postgres://" + p.Addr() + "/test"},
		{"host=127.0.0.1 port=5432 user=postgres dbname=test search_path=s",
			"host=127.0.0.1 port=5432 user=postgres dbname=test search_path=s host=" + host + " port=" + port},
	} {
		got, err := p.URL(tc.in)
		if err != nil {
			t.Errorf("URL(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("URL(%q): got %q, want %q", tc.in, got, tc.want)
		}
		cfg, err := pgconn.ParseConfig(got)
		if err != nil {
			t.Errorf("parse %q: %v", got, err)
			continue
		}
		if cfg.Host != host || cfg.Port != uint16(p.ln.Addr().(*net.TCPAddr).Port) {
			t.Errorf("URL(%q) connects to %s:%d, want %s", tc.in, cfg.Host, cfg.Port, p.Addr())
		}
	}
	if _, err := p.URL("postgres:///test?host=/tmp"); err == nil {
		t.Errorf("URL with the host in its query: got nil error, want one")
	}
}

func TestProxiedPostgres(t *testing.T) {
	t.Parallel()
	direct := Schema(t)
	p, proxied := Proxied(t, direct)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	schema := u.Query().Get("search_path")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connect := func() (*pgx.Conn, error) {
		c, err := pgx.Connect(ctx, proxied)
		if err == nil {
			t.Cleanup(func() { c.Close(context.Background()) })
		}
		return c, err
	}
	conn, err := connect()
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	var got string
	if err := conn.QueryRow(ctx, "SELECT current_schema()").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != schema {
		t.Fatalf("current schema through proxy: got %q, want %q", got, schema)
	}

	p.Cut()
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatalf("query on a cut connection: got nil error, want one")
	}
	if _, err := connect(); err == nil {
		t.Fatalf("connect through a cut proxy: got nil error, want one")
	} else if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("connect through a cut proxy hung instead of failing: %v", err)
	}

	p.Restore()
	conn, err = connect()
	if err != nil {
		t.Fatalf("connect after Restore: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT current_schema()").Scan(&got); err != nil || got != schema {
		t.Fatalf("after Restore: got %q, %v, want %q", got, err, schema)
	}
	if !strings.Contains(proxied, p.Addr()) {
		t.Fatalf("proxied URL %q does not name the proxy %s", proxied, p.Addr())
	}
}

func TestProxyHangHoldsEverythingUntilRestore(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, echoServer(t))
	c, r := dial(t, p.Addr())
	p.Hang()
	if _, err := c.Write([]byte("held\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("read while hung: got %q, want a timeout", line)
	}
	p.Restore()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "held\n" {
		t.Fatalf("read after restore: got %q, %v, want %q", line, err, "held\n")
	}
}

func TestProxyDelayAddsToEveryRoundTrip(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, echoServer(t))
	c, r := dial(t, p.Addr())
	p.SetDelay(50 * time.Millisecond)
	start := time.Now()
	for range 4 {
		if _, err := c.Write([]byte("x\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	// A lower bound only: the delay is added, whatever else the machine does.
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("4 round trips with a 50ms delay: got %s, want at least 200ms", took)
	}
}
