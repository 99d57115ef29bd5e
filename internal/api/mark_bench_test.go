package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/notifyd/notifyd/internal/notification"
)

// BenchmarkMarkRead measures POST /v1/inbox/read as notifyd bench --api
// offers it (nine in ten mark 10 ids, one in ten marks all), over 200 users
// of 200 rows each, through a real server and database. Its CPU profile
// shows what the API process spends on a request; the database's share is
// not in it.
func BenchmarkMarkRead(b *testing.B) {
	e := newEnv(b, Config{}, "")
	const users, per = 200, 200
	type target struct {
		user uuid.UUID
		tok  string
		ids  []string
	}
	targets := make([]target, users)
	now := time.Now()
	for i := range targets {
		u := uuid.New()
		rows := make([]notification.Notification, per)
		ids := make([]string, per)
		for j := range rows {
			rows[j] = row(u, now.Add(-time.Duration(per-j)*time.Minute), fmt.Sprintf("n%d", j))
			ids[j] = rows[j].ID.String()
		}
		e.write(rows...)
		targets[i] = target{user: u, tok: token(b, u), ids: ids}
	}
	client := &http.Client{}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		t := targets[(i*7919)%len(targets)]
		body := `{"all": true}`
		if i%10 != 0 {
			off := (i / users * 10) % (per - 10)
			j, _ := json.Marshal(map[string][]string{"ids": t.ids[off : off+10]})
			body = string(j)
		}
		i++
		req, _ := http.NewRequest("POST", e.http.URL+"/v1/inbox/read", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+t.tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var out changeResp
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("status %d: %v", resp.StatusCode, err)
		}
	}
}
