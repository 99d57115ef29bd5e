package api

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/notifyd/notifyd/internal/notification"
)

// BenchmarkMarkRead measures POST /v1/inbox/read as notifyd bench --api
// offers it (nine in ten mark 10 recent ids, one in ten marks all), over 200 users
// of 200 rows each, through a real server and database. Its CPU profile
// shows what the API process (and the benchmark's client) spends on a
// request; the database's share is not in it.
func BenchmarkMarkRead(b *testing.B) {
	e := newEnv(b, Config{}, "")
	const users, per = 200, 200
	type target struct {
		user uuid.UUID
		ids  []uuid.UUID
	}
	targets := make([]target, users)
	now := time.Now()
	for i := range targets {
		t := target{user: uuid.New()}
		rows := make([]notification.Notification, per)
		for j := range rows {
			rows[j] = row(t.user, now.Add(-time.Duration(per-j)*time.Minute), fmt.Sprintf("n%d", j))
			t.ids = append(t.ids, rows[j].ID)
		}
		e.write(rows...)
		targets[i] = t
	}
	i := 0
	for b.Loop() {
		t := targets[(i*7919)%len(targets)]
		var body any = map[string]bool{"all": true}
		if i%10 != 0 {
			off := (i / users * 10) % (per - 10)
			body = map[string][]uuid.UUID{"ids": t.ids[off : off+10]}
		}
		i++
		var out changeResp
		if code := e.do(t.user, "POST", "/v1/inbox/read", body, &out); code != 200 {
			b.Fatalf("status %d", code)
		}
	}
}

// BenchmarkFeedAndCounts measures GET /v1/inbox?limit=20 and GET
// /v1/inbox/counts in turn, over 200 users of 200 rows each, through a
// real server and database. It reports the test process's CPU time per
// request (the API server and the benchmark's client; the database's is
// not in it) beside the time per request.
func BenchmarkFeedAndCounts(b *testing.B) {
	e := newEnv(b, Config{}, "")
	const users, per = 200, 200
	ids := make([]uuid.UUID, users)
	now := time.Now()
	for i := range ids {
		ids[i] = uuid.New()
		rows := make([]notification.Notification, per)
		for j := range rows {
			rows[j] = row(ids[i], now.Add(-time.Duration(per-j)*time.Minute), fmt.Sprintf("n%d", j))
		}
		e.write(rows...)
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	i := 0
	c0 := cpu()
	for b.Loop() {
		u := ids[(i*7919)%users]
		path := "/v1/inbox?limit=20"
		if i%2 == 1 {
			path = "/v1/inbox/counts"
		}
		i++
		if code := e.do(u, "GET", path, nil, nil); code != 200 {
			b.Fatalf("GET %s: status %d", path, code)
		}
	}
	b.ReportMetric(float64((cpu()-c0).Microseconds())/float64(b.N), "cpu-us/op")
}
