package pgtest

import (
	"errors"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Proxy is a TCP proxy for tests that simulate a network outage: Cut drops
// every connection and refuses new ones until Restore.
type Proxy struct {
	t      testing.TB
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // both sides of every open connection
	cut    bool
	closed bool
}

// NewProxy starts a proxy on 127.0.0.1 that forwards each connection to
// target (host:port). It is closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: listen: %v", err)
	}
	p := &Proxy{t: t, target: target, ln: ln, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Proxied starts a proxy to the server of connection string connString (a
// URL or key=value pairs, as Schema returns) and returns it with the same
// connection string going through the proxy.
func Proxied(t testing.TB, connString string) (*Proxy, string) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		t.Fatalf("proxy: parse connection string: %v", err)
	}
	if strings.HasPrefix(cfg.Host, "/") {
		t.Fatalf("proxy: server %s is a unix socket; set NOTIFYD_TEST_DATABASE_URL to a TCP address", cfg.Host)
	}
	p := NewProxy(t, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	s, err := p.URL(connString)
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	return p, s
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL rewrites connection string connString (a URL or key=value pairs) to
// connect through the proxy.
func (p *Proxy) URL(connString string) (string, error) {
	host, port, _ := net.SplitHostPort(p.Addr())
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", err
		}
		u.Host = p.Addr()
		q := u.Query()
		if q.Has("host") || q.Has("port") || q.Has("hostaddr") {
			return "", errors.New("connection URL names its host in the query; cannot proxy it")
		}
		return u.String(), nil
	}
	// In key=value form the last setting of a key wins.
	return connString + " host=" + host + " port=" + port, nil
}

// Cut closes every open connection and drops new ones as soon as they are
// accepted, until Restore: the server looks gone.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.closeConnsLocked()
}

// Restore forwards new connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// Conns is the number of connections open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.t.Logf("proxy: accept: %v", err)
			}
			return
		}
		p.mu.Lock()
		refuse := p.cut || p.closed
		if !refuse {
			p.wg.Add(1)
		}
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		go p.serve(c)
	}
}

// serve forwards one connection, a goroutine per direction; when either
// direction ends, both sides are closed.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	if p.cut || p.closed {
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.conns[client] = struct{}{}
	p.conns[server] = struct{}{}
	p.mu.Unlock()

	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
	client.Close()
	server.Close()
	<-done
}

func (p *Proxy) closeConnsLocked() {
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.closeConnsLocked()
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}
