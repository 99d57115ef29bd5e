package api

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

//go:embed index.html
var indexHTML []byte

//go:embed openapi.json
var openAPI []byte

// Server is the inbox API: an http.Handler, and the stream's hub that Run
// keeps going.
type Server struct {
	cfg     Config
	pool    *pgxpool.Pool
	log     *slog.Logger
	parser  *jwt.Parser
	metrics *metrics
	hub     *hub
	handler http.Handler
	// stopped is closed when the hub stops: open streams end with it.
	stopped chan struct{}
	// streams are the goroutines of the streams whose connections were
	// taken over from net/http; Run waits for them. streamsMu orders
	// their start against stopped.
	streamsMu sync.Mutex
	streams   sync.WaitGroup
	// hangups watches the taken-over connections for clients that hang
	// up. Run sets it before the hub starts any stream.
	hangups *hangups
	// routes are the patterns served, for the OpenAPI check.
	routes []string
}

// New prepares a Server on pool, whose schema must be migrated.
func New(cfg Config, pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("inbox API: %w", err)
	}
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, pool: pool, log: log, parser: newParser(cfg.Now), stopped: make(chan struct{})}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.hub = newHub(s)
	s.handler = s.routesMux()
	return s, nil
}

// Handler serves the API.
func (s *Server) Handler() http.Handler { return s.handler }

// Run keeps the live streams fed until ctx ends, then ends them and waits
// for them (an http.Server's Shutdown neither waits for nor is held by
// them: their connections were taken over). Call it once.
func (s *Server) Run(ctx context.Context) error {
	h, err := newHangups()
	if err != nil {
		return err
	}
	s.hangups = h
	var watching sync.WaitGroup
	watching.Go(h.run)
	err = s.hub.run(ctx)
	s.streamsMu.Lock()
	close(s.stopped)
	s.streamsMu.Unlock()
	s.hub.endAll()
	s.streams.Wait()
	h.close()
	watching.Wait()
	return err
}

func (s *Server) routesMux() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h http.HandlerFunc) {
		s.routes = append(s.routes, pattern)
		mux.Handle(pattern, s.instrument(pattern, h))
	}
	handle("GET /v1/inbox", s.authed(s.handleFeed))
	handle("GET /v1/inbox/counts", s.authed(s.handleCounts))
	handle("POST /v1/inbox/read", s.authed(s.handleChange(kindRead, true)))
	handle("POST /v1/inbox/seen", s.authed(s.handleChange(kindSeen, true)))
	handle("POST /v1/inbox/archive", s.authed(s.handleChange(kindArchived, true)))
	handle("POST /v1/inbox/unread", s.authed(s.handleChange(kindRead, false)))
	handle("POST /v1/inbox/unarchive", s.authed(s.handleChange(kindArchived, false)))
	handle("GET /v1/inbox/stream", s.authed(s.handleStream))
	handle("GET /v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	handle("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	handle("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Ready(r.Context()); err != nil {
			writeError(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	handle("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(indexHTML)
	})
	mux.Handle("/", s.instrument("other", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such route: %s %s", r.Method, r.URL.Path))
	}))
	return mux
}

// Ready reports whether the database answers.
func (s *Server) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// authed lets only requests with a valid token through, with its user in
// the context.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, uuid.UUID)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, err := s.authenticate(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="notifyd"`)
			writeError(w, http.StatusUnauthorized, err.Error())
			return
		}
		h(w, r, user)
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"the response could not be encoded"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// dbError answers a request whose database work failed: the database is
// out of reach or too slow (503); the cause goes to the log, not the client.
func (s *Server) dbError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client is gone
	}
	s.log.Warn("inbox API: database error", "route", r.Pattern, "err", err)
	writeError(w, http.StatusServiceUnavailable, "the inbox database is unavailable; try again shortly")
}

// badRequest is a client error whose text is for the client.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return &badRequest{fmt.Sprintf(format, args...)} }

// queryParams rejects parameters that are unknown or repeated, so that a
// typo is an error rather than a silently ignored filter.
func queryParams(r *http.Request, known ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badf("the query string is malformed: %v", err)
	}
	for k, v := range q {
		if !contains(known, k) {
			return nil, badf("unknown query parameter %q (known: %s)", k, strings.Join(known, ", "))
		}
		if len(v) > 1 {
			return nil, badf("query parameter %q given %d times", k, len(v))
		}
	}
	return q, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (s *Server) handleFeed(w http.ResponseWriter, r *http.Request, user uuid.UUID) {
	q, err := queryParams(r, "limit", "cursor", "status", "archived")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	o := feedOptions{limit: 20, status: "all", archived: "false"}
	if v, ok := q["limit"]; ok {
		n, err := strconv.Atoi(v[0])
		if err != nil || n < 1 || n > 100 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: must be a whole number from 1 to 100, got %q", v[0]))
			return
		}
		o.limit = n
	}
	if v, ok := q["cursor"]; ok {
		c, err := parseCursor(v[0])
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		o.after = &c
	}
	if v, ok := q["status"]; ok {
		if !contains([]string{"all", "unread", "read"}, v[0]) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("status: must be all, unread or read, got %q", v[0]))
			return
		}
		o.status = v[0]
	}
	if v, ok := q["archived"]; ok {
		if !contains([]string{"false", "true", "all"}, v[0]) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("archived: must be false, true or all, got %q", v[0]))
			return
		}
		o.archived = v[0]
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	rows, next, err := s.feed(ctx, user, o)
	if err != nil {
		s.dbError(w, r, err)
		return
	}
	resp := struct {
		Notifications []Notification `json:"notifications"`
		NextCursor    *string        `json:"next_cursor"`
	}{Notifications: rows}
	if resp.Notifications == nil {
		resp.Notifications = []Notification{}
	}
	if next != nil {
		c := next.String()
		resp.NextCursor = &c
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleCounts(w http.ResponseWriter, r *http.Request, user uuid.UUID) {
	if _, err := queryParams(r); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	c, err := s.userCounts(ctx, user)
	if err != nil {
		s.dbError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// changeRequest is the body of the read-state routes.
type changeRequest struct {
	IDs []string `json:"ids"`
	All *bool    `json:"all"`
}

func (s *Server) decodeChange(w http.ResponseWriter, r *http.Request) (ids []uuid.UUID, all bool, err error) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, false, badf("the body must be JSON (Content-Type: application/json), got %q", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	dec.DisallowUnknownFields()
	var req changeRequest
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			return nil, false, badf("the body is larger than %d bytes", s.cfg.MaxBodyBytes)
		case errors.Is(err, io.EOF):
			return nil, false, badf(`the body is empty: send {"ids": [...]} or {"all": true}`)
		}
		return nil, false, badf("the body is not valid: %v", err)
	}
	if dec.More() {
		return nil, false, badf("the body must hold one JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, false, badf("the body must hold one JSON object")
	}
	switch {
	case req.All != nil && req.IDs != nil:
		return nil, false, badf(`give either "ids" or "all", not both`)
	case req.All != nil:
		if !*req.All {
			return nil, false, badf(`"all" must be true when given; to change some rows send "ids"`)
		}
		return nil, true, nil
	case req.IDs == nil:
		return nil, false, badf(`send {"ids": [...]} or {"all": true}`)
	}
	if len(req.IDs) > s.cfg.MaxIDs {
		return nil, false, badf("ids: at most %d per request, got %d", s.cfg.MaxIDs, len(req.IDs))
	}
	ids = make([]uuid.UUID, len(req.IDs))
	for i, v := range req.IDs {
		u, err := uuid.Parse(v)
		if err != nil || len(v) != 36 {
			return nil, false, badf("ids[%d]: %q is not a UUID", i, v)
		}
		ids[i] = u
	}
	return ids, false, nil
}

func (s *Server) handleChange(k kind, set bool) func(http.ResponseWriter, *http.Request, uuid.UUID) {
	return func(w http.ResponseWriter, r *http.Request, user uuid.UUID) {
		if _, err := queryParams(r); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		ids, all, err := s.decodeChange(w, r)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
		defer cancel()
		n, c, err := s.change(ctx, user, k, set, ids, all)
		if err != nil {
			s.dbError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Updated int    `json:"updated"`
			Counts  Counts `json:"counts"`
		}{n, c})
	}
}
