package pgtest

import (
	"errors"
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
// every connection and refuses new ones until Restore; Hang stops
// forwarding (the server looks alive and never answers) until Restore;
// SetDelay adds latency to every answer of the server.
type Proxy struct {
	t      testing.TB
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // both sides of every open connection
	cut    bool
	hung   bool
	delay  time.Duration
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

// Hang keeps every connection open, and accepts new ones, but forwards
// nothing either way until Restore: a server that hangs, or a route that
// drops packets.
func (p *Proxy) Hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hung = true
}

// SetDelay holds each piece of the server's answers for d before passing
// it on, so that every round trip takes d longer; 0 removes the delay.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Restore forwards new connections again, and what Hang held.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	p.hung = false
}

// hold waits while the proxy hangs, then for the delay when answer is set;
// it reports false once the proxy is closed.
func (p *Proxy) hold(answer bool) bool {
	for {
		p.mu.Lock()
		hung, closed, delay := p.hung, p.closed, p.delay
		p.mu.Unlock()
		if closed {
			return false
		}
		if !hung {
			if answer && delay > 0 {
				time.Sleep(delay)
			}
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
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
	pipe := func(dst, src net.Conn, answer bool) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !p.hold(answer) {
					return
				}
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(server, client, false)
	go pipe(client, server, true)
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
