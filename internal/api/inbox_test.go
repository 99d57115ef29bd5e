package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	"github.com/notifyd/notifyd/internal/notification"
)

func TestAuth(t *testing.T) {
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	sign := func(m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	future := time.Now().Add(time.Hour).Unix()
	cases := []struct {
		name, header string
		want         int
	}{
		{"valid", "Bearer " + token(t, user), 200},
		{"lower-case scheme", "bearer " + token(t, user), 200},
		{"missing", "", 401},
		{"not bearer", "Basic " + token(t, user), 401},
		{"empty token", "Bearer ", 401},
		{"garbage", "Bearer not.a.jwt", 401},
		{"wrong secret", "Bearer " + sign(jwt.SigningMethodHS256, []byte("another-secret-of-32-bytes-long!"), jwt.MapClaims{"sub": user.String(), "exp": future}), 401},
		{"expired", "Bearer " + sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": user.String(), "exp": time.Now().Add(-time.Minute).Unix()}), 401},
		{"no exp", "Bearer " + sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": user.String()}), 401},
		{"alg none", "Bearer " + sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": user.String(), "exp": future}), 401},
		{"HS512 with the secret", "Bearer " + sign(jwt.SigningMethodHS512, testSecret, jwt.MapClaims{"sub": user.String(), "exp": future}), 401},
		{"sub not a UUID", "Bearer " + sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice", "exp": future}), 401},
		{"no sub", "Bearer " + sign(jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"exp": future}), 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, path := range []string{"/v1/inbox", "/v1/inbox/counts", "/v1/inbox/stream"} {
				req, _ := http.NewRequest("GET", e.http.URL+path, nil)
				if c.header != "" {
					req.Header.Set("Authorization", c.header)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := http.DefaultClient.Do(req.WithContext(ctx))
				if err != nil {
					cancel()
					t.Fatal(err)
				}
				var body map[string]string
				if resp.StatusCode != 200 {
					_ = json.NewDecoder(resp.Body).Decode(&body)
				}
				resp.Body.Close()
				cancel()
				if resp.StatusCode != c.want {
					t.Fatalf("%s: got %d, want %d (%v)", path, resp.StatusCode, c.want, body)
				}
				if c.want == 401 && body["error"] == "" {
					t.Fatalf("%s: 401 without an error sentence", path)
				}
			}
		})
	}
	// The POST routes too.
	for _, p := range []string{"read", "seen", "archive", "unread", "unarchive"} {
		if code := e.do(uuid.Nil, "POST", "/v1/inbox/"+p, `{"all":true}`, nil); code != 401 {
			t.Fatalf("POST %s without a token: got %d, want 401", p, code)
		}
	}
}

func TestFeedPagesInOrderWithoutRepeats(t *testing.T) {
	e := newEnv(t, Config{}, "")
	alice, bob := uuid.New(), uuid.New()
	base := time.Now().Add(-time.Hour)
	var rows []notification.Notification
	for i := range 45 {
		// Groups of three share a created_at: the id breaks the tie.
		rows = append(rows, row(alice, base.Add(time.Duration(i/3)*time.Second), fmt.Sprint("a", i)))
	}
	for i := range 5 {
		rows = append(rows, row(bob, base.Add(time.Duration(i)*time.Second), fmt.Sprint("b", i)))
	}
	e.write(rows...)

	got := e.feedAll(alice, "", 20)
	if len(got) != 45 {
		t.Fatalf("got %d rows, want 45", len(got))
	}
	seen := map[uuid.UUID]bool{}
	for i, n := range got {
		if seen[n.ID] {
			t.Fatalf("row %s repeated", n.ID)
		}
		seen[n.ID] = true
		if !strings.HasPrefix(n.Title, "a") {
			t.Fatalf("alice's feed holds %q", n.Title)
		}
		if i > 0 {
			p := got[i-1]
			if p.CreatedAt.Before(n.CreatedAt) || p.CreatedAt.Equal(n.CreatedAt) && string(p.ID[:]) < string(n.ID[:]) {
				t.Fatalf("rows %d and %d out of order", i-1, i)
			}
		}
		if n.ReadAt != nil || n.SeenAt != nil || n.ArchivedAt != nil || string(n.Data) != `{"k": 1}` && string(n.Data) != `{"k":1}` {
			t.Fatalf("row %d: %+v", i, n)
		}
	}
	var f feedResp
	if code := e.do(alice, "GET", "/v1/inbox?limit=45", nil, &f); code != 200 || len(f.Notifications) != 45 || f.NextCursor != nil {
		t.Fatalf("limit=45: code %d, %d rows, next %v; want 45 rows and no cursor", code, len(f.Notifications), f.NextCursor)
	}
	if code := e.do(uuid.New(), "GET", "/v1/inbox", nil, &f); code != 200 || len(f.Notifications) != 0 || f.NextCursor != nil {
		t.Fatalf("empty inbox: code %d, %+v", code, f)
	}
}

// Rows keep arriving, with created_at anywhere (producers set it), while a
// client pages: every row present when paging started appears exactly once.
func TestFeedPagingUnderConcurrentInserts(t *testing.T) {
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	base := time.Now().Add(-24 * time.Hour)
	var before []notification.Notification
	for i := range 300 {
		before = append(before, row(user, base.Add(time.Duration(i*7%300)*time.Minute), fmt.Sprint("old", i)))
	}
	e.write(before...)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil && i < 200; i++ {
			// New rows before, inside and after the range being paged.
			at := base.Add(time.Duration(i*37%400-50) * time.Minute)
			if _, err := e.store.Write(ctx, postgresBatch{rows: []notification.Notification{row(user, at, fmt.Sprint("new", i))}}.batch()); err != nil && ctx.Err() == nil {
				t.Errorf("write: %v", err)
				return
			}
		}
	}()
	got := e.feedAll(user, "", 7)
	cancel()
	wg.Wait()

	count := map[uuid.UUID]int{}
	for _, n := range got {
		count[n.ID]++
		if count[n.ID] > 1 {
			t.Fatalf("row %s (%s) repeated", n.ID, n.Title)
		}
	}
	for _, r := range before {
		if count[r.ID] != 1 {
			t.Fatalf("row %s present before paging was skipped", r.Title)
		}
	}
}

func TestReadStateByIDsAndAll(t *testing.T) {
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	var rows []notification.Notification
	for i := range 10 {
		rows = append(rows, row(user, time.Now().Add(time.Duration(-i)*time.Minute), fmt.Sprint(i)))
	}
	e.write(rows...)
	counts := func() Counts {
		var c Counts
		if code := e.do(user, "GET", "/v1/inbox/counts", nil, &c); code != 200 {
			t.Fatalf("counts: %d", code)
		}
		return c
	}
	post := func(path string, body any) changeResp {
		t.Helper()
		var r changeResp
		if code := e.do(user, "POST", path, body, &r); code != 200 {
			t.Fatalf("POST %s: %d", path, code)
		}
		return r
	}
	check := func(label string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: got %v, want %v", label, got, want)
		}
	}
	check("fresh counts", counts(), Counts{Unread: 10, Unseen: 10})
	ids := map[string][]string{"ids": {rows[0].ID.String(), rows[1].ID.String()}}
	r := post("/v1/inbox/read", ids)
	check("read two", r, changeResp{Updated: 2, Counts: Counts{Unread: 8, Unseen: 10}})
	version := func() int64 {
		t.Helper()
		var v int64
		if err := e.store.Pool().QueryRow(context.Background(), `SELECT version FROM notifyd_inbox_users WHERE user_id = $1`, user).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := version()
	r = post("/v1/inbox/read", ids)
	check("read two again (idempotent)", r, changeResp{Updated: 0, Counts: Counts{Unread: 8, Unseen: 10}})
	check("version after a change that changed nothing", version(), v)
	feed := e.feedAll(user, "", 100)
	if feed[0].ReadAt == nil || feed[1].ReadAt == nil || feed[2].ReadAt != nil {
		t.Fatalf("read_at after reading two: %v %v %v", feed[0].ReadAt, feed[1].ReadAt, feed[2].ReadAt)
	}
	check("unread filter", len(e.feedAll(user, "status=unread", 3)), 8)
	check("read filter", len(e.feedAll(user, "status=read", 3)), 2)

	r = post("/v1/inbox/unread", map[string][]string{"ids": {rows[0].ID.String()}})
	check("unread one", r, changeResp{Updated: 1, Counts: Counts{Unread: 9, Unseen: 10}})

	r = post("/v1/inbox/read", map[string]bool{"all": true})
	check("read all", r, changeResp{Updated: 9, Counts: Counts{Unread: 0, Unseen: 10}})
	v = version()
	r = post("/v1/inbox/read", map[string]bool{"all": true})
	check("read all again", r, changeResp{Updated: 0, Counts: Counts{Unread: 0, Unseen: 10}})
	check("version after read all with nothing unread", version(), v)

	// A row that commits after "all" is unread, whatever its created_at.
	late := row(user, time.Now().Add(-48*time.Hour), "late")
	e.write(late)
	check("after a late row", counts(), Counts{Unread: 1, Unseen: 11})
	check("unread feed", titles(e.feedAll(user, "status=unread", 5)), []string{"late"})

	// Undo one row covered by "all", then "all" again covers it.
	post("/v1/inbox/unread", map[string][]string{"ids": {rows[3].ID.String()}})
	check("unread one under all", counts(), Counts{Unread: 2, Unseen: 11})
	post("/v1/inbox/read", map[string]bool{"all": true})
	check("read all once more", counts(), Counts{Unread: 0, Unseen: 11})

	// Seen, archive and their undo.
	post("/v1/inbox/seen", map[string][]string{"ids": {rows[5].ID.String()}})
	check("seen one", counts(), Counts{Unread: 0, Unseen: 10})
	post("/v1/inbox/unread", map[string]bool{"all": true})
	check("unread all", counts(), Counts{Unread: 11, Unseen: 10})
	r = post("/v1/inbox/archive", map[string][]string{"ids": {rows[6].ID.String(), rows[7].ID.String()}})
	check("archive two", r, changeResp{Updated: 2, Counts: Counts{Unread: 9, Unseen: 8}})
	check("feed hides archived", len(e.feedAll(user, "", 100)), 9)
	check("archived feed", len(e.feedAll(user, "archived=true", 100)), 2)
	check("whole feed", len(e.feedAll(user, "archived=all", 100)), 11)
	post("/v1/inbox/archive", map[string]bool{"all": true})
	check("archive all", counts(), Counts{})
	post("/v1/inbox/unarchive", map[string][]string{"ids": {rows[7].ID.String()}})
	check("unarchive one", counts(), Counts{Unread: 1, Unseen: 1})
	post("/v1/inbox/unarchive", map[string]bool{"all": true})
	check("unarchive all", counts(), Counts{Unread: 11, Unseen: 10})
}

// A change by ids looks among the recent rows first and among the older
// ones only for the ids it did not find there; together they change each
// of the caller's rows once, wherever it is, and nothing else.
func TestChangeByIDsFindsRecentAndOlderRows(t *testing.T) {
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	now := time.Now()
	var rows []notification.Notification
	for _, age := range []time.Duration{0, 30 * time.Hour, 72 * time.Hour, 20 * 24 * time.Hour} {
		rows = append(rows, row(user, now.Add(-age), age.String()))
	}
	// The same id stored with a recent and an old created_at (a message
	// sent twice with two explicit created_at values is stored twice); its
	// read state is the id's, for both rows.
	twice := row(user, now.Add(-time.Hour), "twice, recent")
	old := twice
	old.CreatedAt, old.Title = now.Add(-10*24*time.Hour).UTC().Truncate(time.Microsecond), "twice, old"
	e.write(append(rows, twice, old)...)
	ids := []string{uuid.NewString()} // unknown: ignored
	for _, r := range append(rows, twice) {
		ids = append(ids, r.ID.String(), r.ID.String()) // each twice in the request
	}
	post := func(path string, ids []string) changeResp {
		t.Helper()
		var r changeResp
		if code := e.do(user, "POST", path, map[string][]string{"ids": ids}, &r); code != 200 {
			t.Fatalf("POST %s: %d", path, code)
		}
		return r
	}
	if r := post("/v1/inbox/read", ids); r.Updated != 5 || r.Counts != (Counts{Unread: 0, Unseen: 6}) {
		t.Fatalf("read the five ids, recent and older: %+v, want 5 updated, 0 unread and 6 unseen", r)
	}
	for _, n := range e.feedAll(user, "", 100) {
		if n.ReadAt == nil {
			t.Fatalf("%q unread after its id was read", n.Title)
		}
	}
	if r := post("/v1/inbox/read", ids); r.Updated != 0 {
		t.Fatalf("read again: %d updated, want 0", r.Updated)
	}
	if r := post("/v1/inbox/unread", []string{rows[3].ID.String(), rows[0].ID.String()}); r.Updated != 2 || r.Counts.Unread != 2 {
		t.Fatalf("unread a recent and an old row: %+v, want 2 updated and 2 unread", r)
	}
}

func titles(ns []Notification) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Title)
	}
	return out
}

// A request never reads or changes another user's rows, even given their ids
// or a cursor from their feed.
func TestAnotherUsersRowsAreUnreachable(t *testing.T) {
	e := newEnv(t, Config{}, "")
	alice, bob := uuid.New(), uuid.New()
	var arows, brows []notification.Notification
	now := time.Now()
	for i := range 5 {
		arows = append(arows, row(alice, now.Add(-time.Duration(i)*time.Minute), fmt.Sprint("a", i)))
		brows = append(brows, row(bob, now.Add(-time.Duration(i)*time.Minute-time.Second), fmt.Sprint("b", i)))
	}
	e.write(append(arows, brows...)...)
	var bobIDs []string
	for _, r := range brows {
		bobIDs = append(bobIDs, r.ID.String())
	}
	for _, p := range []string{"read", "seen", "archive"} {
		var r changeResp
		if code := e.do(alice, "POST", "/v1/inbox/"+p, map[string][]string{"ids": bobIDs}, &r); code != 200 || r.Updated != 0 {
			t.Fatalf("alice %s bob's ids: code %d, updated %d; want 200 and 0", p, code, r.Updated)
		}
	}
	var c Counts
	e.do(bob, "GET", "/v1/inbox/counts", nil, &c)
	if c != (Counts{Unread: 5, Unseen: 5}) {
		t.Fatalf("bob's counts after alice used his ids: %+v", c)
	}
	for _, n := range e.feedAll(bob, "archived=all", 100) {
		if n.ReadAt != nil || n.SeenAt != nil || n.ArchivedAt != nil {
			t.Fatalf("bob's row changed by alice: %+v", n)
		}
	}
	// Alice's "all" does not reach bob either.
	e.do(alice, "POST", "/v1/inbox/archive", map[string]bool{"all": true}, nil)
	e.do(bob, "GET", "/v1/inbox/counts", nil, &c)
	if c != (Counts{Unread: 5, Unseen: 5}) {
		t.Fatalf("bob's counts after alice archived all: %+v", c)
	}
	// A cursor from bob's feed positions alice's own rows only.
	var f feedResp
	e.do(bob, "GET", "/v1/inbox?limit=1", nil, &f)
	e.do(alice, "GET", "/v1/inbox?archived=all&cursor="+*f.NextCursor, nil, &f)
	for _, n := range f.Notifications {
		if !strings.HasPrefix(n.Title, "a") {
			t.Fatalf("alice's feed with bob's cursor holds %q", n.Title)
		}
	}
	if len(f.Notifications) != 4 {
		t.Fatalf("alice's rows older than bob's first: got %d, want 4", len(f.Notifications))
	}
}

func TestCountsStopAtTheCap(t *testing.T) {
	e := newEnv(t, Config{CountCap: 5}, "")
	user := uuid.New()
	var rows []notification.Notification
	for i := range 7 {
		rows = append(rows, row(user, time.Now(), fmt.Sprint(i)))
	}
	e.write(rows...)
	var c Counts
	e.do(user, "GET", "/v1/inbox/counts", nil, &c)
	if c != (Counts{Unread: 5, Unseen: 5, Capped: true}) {
		t.Fatalf("7 rows, cap 5: got %+v", c)
	}
	var r changeResp
	e.do(user, "POST", "/v1/inbox/read", map[string][]string{"ids": {rows[0].ID.String(), rows[1].ID.String()}}, &r)
	if r.Counts != (Counts{Unread: 5, Unseen: 5, Capped: true}) {
		t.Fatalf("after reading 2: got %+v", r.Counts)
	}
	e.do(user, "POST", "/v1/inbox/read", map[string][]string{"ids": {rows[2].ID.String()}}, &r)
	if r.Counts != (Counts{Unread: 4, Unseen: 5, Capped: true}) {
		t.Fatalf("after reading 3: got %+v", r.Counts)
	}
}

func TestBadInputGets400(t *testing.T) {
	e := newEnv(t, Config{MaxIDs: 3}, "")
	user := uuid.New()
	id := uuid.NewString()
	cases := []struct{ method, path, body string }{
		{"GET", "/v1/inbox?limit=0", ""},
		{"GET", "/v1/inbox?limit=101", ""},
		{"GET", "/v1/inbox?limit=ten", ""},
		{"GET", "/v1/inbox?limit=1&limit=2", ""},
		{"GET", "/v1/inbox?cursor=xyz", ""},
		{"GET", "/v1/inbox?cursor=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAA", ""},
		{"GET", "/v1/inbox?status=new", ""},
		{"GET", "/v1/inbox?archived=maybe", ""},
		{"GET", "/v1/inbox?page=2", ""},
		{"GET", "/v1/inbox?%zz", ""},
		{"GET", "/v1/inbox/counts?x=1", ""},
		{"POST", "/v1/inbox/read", ""},
		{"POST", "/v1/inbox/read", "{"},
		{"POST", "/v1/inbox/read", "[]"},
		{"POST", "/v1/inbox/read", `{"ids": "x"}`},
		{"POST", "/v1/inbox/read", `{"ids": [1]}`},
		{"POST", "/v1/inbox/read", `{"ids": ["not-a-uuid"]}`},
		{"POST", "/v1/inbox/read", `{"ids": ["` + strings.ReplaceAll(id, "-", "") + `"]}`},
		{"POST", "/v1/inbox/read", `{"ids": ["` + id + `","` + id + `","` + id + `","` + id + `"]}`},
		{"POST", "/v1/inbox/read", `{"ids": [], "all": true}`},
		{"POST", "/v1/inbox/read", `{"all": false}`},
		{"POST", "/v1/inbox/read", `{"all": "yes"}`},
		{"POST", "/v1/inbox/read", `{}`},
		{"POST", "/v1/inbox/read", `{"all": true, "extra": 1}`},
		{"POST", "/v1/inbox/read", `{"all": true} {"all": true}`},
		{"POST", "/v1/inbox/archive", `{"ids": ["` + strings.Repeat("a", 100<<10) + `"]}`},
	}
	for _, c := range cases {
		var body map[string]string
		var b any
		if c.body != "" {
			b = c.body
		}
		code := e.do(user, c.method, c.path, b, &body)
		if code != 400 || body["error"] == "" {
			t.Errorf("%s %s %.40q: got %d %v, want 400 with a sentence", c.method, c.path, c.body, code, body)
		}
	}
	req, _ := http.NewRequest("GET", e.http.URL+"/v1/inbox/stream", nil)
	req.Header.Set("Authorization", "Bearer "+token(t, user))
	req.Header.Set("Last-Event-ID", "12-abc")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("stream with a bad Last-Event-ID: got %d, want 400", resp.StatusCode)
	}
	var body map[string]string
	if code := e.do(user, "GET", "/v2/nothing", nil, &body); code != 404 || body["error"] == "" {
		t.Errorf("unknown route: got %d %v, want 404 with a sentence", code, body)
	}
}

// Once the database is out of reach, requests get 503 (never a hang or a
// 500), and work again once it is back.
func TestDatabaseOutageGives503(t *testing.T) {
	url := schemaFor(t)
	proxy, purl := proxied(t, url)
	e := newEnvOn(t, url, Config{QueryTimeout: time.Second}, purl)
	user := uuid.New()
	e.write(row(user, time.Now(), "x"))
	if code := e.do(user, "GET", "/v1/inbox", nil, nil); code != 200 {
		t.Fatalf("before the outage: %d", code)
	}
	proxy.Cut()
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/inbox", ""}, {"GET", "/v1/inbox/counts", ""}, {"POST", "/v1/inbox/read", `{"all":true}`},
	} {
		var body map[string]string
		var b any
		if c.body != "" {
			b = c.body
		}
		if code := e.do(user, c.method, c.path, b, &body); code != 503 || body["error"] == "" {
			t.Fatalf("%s %s during the outage: got %d %v, want 503", c.method, c.path, code, body)
		}
	}
	proxy.Restore()
	var f feedResp
	if code := e.do(user, "GET", "/v1/inbox", nil, &f); code != 200 || len(f.Notifications) != 1 {
		t.Fatalf("after the outage: %d %+v", code, f)
	}
}

func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	e := newEnv(t, Config{}, "")
	resp, err := http.Get(e.http.URL + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Fatalf("openapi version %q, want 3.1.x", doc.OpenAPI)
	}
	var documented, served []string
	for p, ops := range doc.Paths {
		for m := range ops {
			if m == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(m)+" "+p)
		}
	}
	for _, r := range e.api.routes {
		if r == "GET /{$}" {
			r = "GET /"
		}
		served = append(served, r)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("documented routes\n%v\ndiffer from served routes\n%v", documented, served)
	}
}

// Rows written before migration 0003 have no commit_xid: they count, show
// in the feed, can be marked by id, and "mark all" covers them.
func TestRowsFromBeforeTheMigration(t *testing.T) {
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	// Migration 0005 leaves the partitions that hold such rows without
	// their committed check; the rows of a day ago go to this one.
	if _, err := e.store.Pool().Exec(context.Background(), `ALTER TABLE notifications_past DROP CONSTRAINT notifyd_committed`); err != nil {
		t.Fatal(err)
	}
	var old []string
	for i := range 3 {
		id := uuid.New()
		old = append(old, id.String())
		if _, err := e.store.Pool().Exec(context.Background(), `INSERT INTO notifications (id, user_id, event_type, title, body, created_at, commit_xid)
			VALUES ($1, $2, 'x', $3, '', now() - interval '1 day', NULL)`, id, user, fmt.Sprint("old", i)); err != nil {
			t.Fatal(err)
		}
	}
	e.write(row(user, time.Now(), "new"))
	var c Counts
	e.do(user, "GET", "/v1/inbox/counts", nil, &c)
	if c != (Counts{Unread: 4, Unseen: 4}) {
		t.Fatalf("counts with 3 old rows and 1 new: %+v", c)
	}
	var r changeResp
	e.do(user, "POST", "/v1/inbox/read", map[string][]string{"ids": old[:1]}, &r)
	if r.Updated != 1 || r.Counts.Unread != 3 {
		t.Fatalf("read one old row: %+v", r)
	}
	e.do(user, "POST", "/v1/inbox/archive", map[string]bool{"all": true}, &r)
	if r.Updated != 4 || r.Counts != (Counts{}) {
		t.Fatalf("archive all: %+v", r)
	}
	if got := len(e.feedAll(user, "archived=true", 2)); got != 4 {
		t.Fatalf("archived feed: %d rows, want 4", got)
	}
}
