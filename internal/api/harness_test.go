package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pgtest"
	"github.com/notifyd/notifyd/internal/postgres"
)

var testSecret = []byte("test-secret-of-thirty-two-bytes!")

// env is one migrated schema with the real write path and an API server.
type env struct {
	t     testing.TB
	url   string
	store *postgres.Store
	api   *Server
	http  *httptest.Server
	reg   *prometheus.Registry
}

// newEnv migrates a fresh schema and starts an API server on it; apiURL,
// when not empty, is the connection string the API uses (a proxy).
func newEnv(t testing.TB, cfg Config, apiURL string) *env {
	t.Helper()
	return newEnvOn(t, pgtest.Schema(t), cfg, apiURL)
}

// startAPI starts a Server (its hub included) on the schema of url.
func startAPI(t testing.TB, cfg Config, url string) (*Server, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	store, err := postgres.Open(context.Background(), postgres.Config{URL: url, Params: SessionParams})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	pool := store.Pool()
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, pool, slog.New(slog.NewTextHandler(t.Output(), nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hub: %v", err)
		}
	})
	return s, hs, reg
}

// write stores rows through the real write path, one transaction.
func (e *env) write(rows ...notification.Notification) {
	e.t.Helper()
	if _, err := e.store.Write(context.Background(), &postgres.Batch{Group: "g", Topic: "t", Rows: rows}); err != nil {
		e.t.Fatalf("write %d rows: %v", len(rows), err)
	}
}

func row(user uuid.UUID, created time.Time, title string) notification.Notification {
	return notification.Notification{ID: uuid.New(), UserID: user, EventType: "test.event", Title: title, Body: "body of " + title,
		Data: []byte(`{"k":1}`), CreatedAt: created.UTC().Truncate(time.Microsecond)}
}

func token(t testing.TB, user uuid.UUID) string {
	t.Helper()
	tok, err := Token(testSecret, user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// do sends a request with user's token (none for uuid.Nil) and decodes
// the JSON answer into out (when not nil); it returns the status code.
func (e *env) do(user uuid.UUID, method, path string, body any, out any) int {
	e.t.Helper()
	return doAt(e.t, e.http.URL, user, method, path, body, out)
}

// doAt is env.do against the API server at base.
func doAt(t testing.TB, base string, user uuid.UUID, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, base+path, rd)
	if user != uuid.Nil {
		req.Header.Set("Authorization", "Bearer "+token(t, user))
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d, body %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type feedResp struct {
	Notifications []Notification `json:"notifications"`
	NextCursor    *string        `json:"next_cursor"`
}

type changeResp struct {
	Updated int    `json:"updated"`
	Counts  Counts `json:"counts"`
}

// feedAll pages through the whole feed with query q (e.g. "status=unread").
func (e *env) feedAll(user uuid.UUID, q string, limit int) []Notification {
	e.t.Helper()
	var all []Notification
	cur := ""
	for range 10000 {
		path := fmt.Sprintf("/v1/inbox?limit=%d", limit)
		if q != "" {
			path += "&" + q
		}
		if cur != "" {
			path += "&cursor=" + cur
		}
		var f feedResp
		if code := e.do(user, "GET", path, nil, &f); code != 200 {
			e.t.Fatalf("GET %s: status %d", path, code)
		}
		all = append(all, f.Notifications...)
		if f.NextCursor == nil {
			return all
		}
		cur = *f.NextCursor
	}
	e.t.Fatal("feed never ended")
	return nil
}

// sseEvent is one event read from a stream.
type sseEvent struct {
	id, name, data string
}

// stream is an open SSE connection.
type stream struct {
	resp   *http.Response
	events chan sseEvent
	lines  chan string // comment lines
	// skippedCounts are the counts events next passed over.
	skippedCounts []sseEvent
}

func (e *env) openStream(user uuid.UUID, lastID string) *stream {
	e.t.Helper()
	return openStreamAt(e.t, e.http.URL, user, lastID)
}

func openStreamAt(t testing.TB, base string, user uuid.UUID, lastID string) *stream {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/v1/inbox/stream", nil)
	req.Header.Set("Authorization", "Bearer "+token(t, user))
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("stream: status %d: %s", resp.StatusCode, b)
	}
	s := &stream{resp: resp, events: make(chan sseEvent, 10000), lines: make(chan string, 100)}
	t.Cleanup(func() { resp.Body.Close() })
	go func() {
		defer close(s.events)
		_ = ReadEvents(resp.Body, func(ev Event) error {
			if ev.Comment != "" {
				select {
				case s.lines <- ev.Comment:
				default:
				}
				return nil
			}
			s.events <- sseEvent{id: ev.ID, name: ev.Name, data: ev.Data}
			return nil
		})
	}()
	return s
}

func (s *stream) close() { s.resp.Body.Close() }

// next returns the next event named name, skipping others, or fails.
func (s *stream) next(t *testing.T, name string, within time.Duration) sseEvent {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				t.Fatalf("stream ended while waiting for a %s event", name)
			}
			if ev.name == name {
				return ev
			}
			if ev.name == "counts" {
				s.skippedCounts = append(s.skippedCounts, ev)
			}
		case <-deadline:
			t.Fatalf("no %s event within %s", name, within)
		}
	}
}

// notifications reads n notification events.
func (s *stream) notifications(t *testing.T, n int, within time.Duration) []Notification {
	t.Helper()
	out := make([]Notification, 0, n)
	for len(out) < n {
		ev := s.next(t, "notification", within)
		var nn Notification
		if err := json.Unmarshal([]byte(ev.data), &nn); err != nil {
			t.Fatal(err)
		}
		out = append(out, nn)
	}
	return out
}

// quiet asserts that no notification event arrives within d.
func (s *stream) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return
			}
			if ev.name == "notification" {
				t.Fatalf("unexpected notification event: %s", ev.data)
			}
			s.skippedCounts = append(s.skippedCounts, ev)
		case <-deadline:
			return
		}
	}
}

// postgresBatch makes a write-path batch of rows.
type postgresBatch struct{ rows []notification.Notification }

func (b postgresBatch) batch() *postgres.Batch {
	return &postgres.Batch{Group: "g", Topic: "t", Rows: b.rows}
}

func schemaFor(t *testing.T) string { return pgtest.Schema(t) }

func proxied(t *testing.T, url string) (*pgtest.Proxy, string) { return pgtest.Proxied(t, url) }

// newEnvOn is newEnv on an existing schema url, the API connecting by apiURL.
func newEnvOn(t testing.TB, url string, cfg Config, apiURL string) *env {
	t.Helper()
	ctx := context.Background()
	store, err := postgres.Open(ctx, postgres.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, url: url, store: store}
	if apiURL == "" {
		apiURL = url
	}
	e.api, e.http, e.reg = startAPI(t, cfg, apiURL)
	return e
}
