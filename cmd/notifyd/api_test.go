package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/api"
)

// A `notifyd serve` replica streams the rows that a separate `notifyd run`
// ingests from Kafka, as the API inside that `run` does; both stop cleanly.
func TestServeReplicaStreamsRowsOfRun(t *testing.T) {
	w := newWorld(t, testSeed(t))
	const secret = "replica-test-secret-0123456789"
	env := childEnv("NOTIFYD_API_SECRET=" + secret)
	run := startDaemon(t, "run", env, w.runArgs("api", "--api-addr", "127.0.0.1:0", "--log-format", "json")...)
	runAPI := run.jsonAttr("serving the inbox API; demo page at /", "addr", 60*time.Second)
	serve := startDaemon(t, "serve", env, "serve", "--database-url", w.url, "--api-addr", "127.0.0.1:0",
		"--metrics-addr", "", "--log-format", "json")
	serveAPI := serve.jsonAttr("serving the inbox API; demo page at /", "addr", 60*time.Second)

	user := uuid.New()
	tok, err := api.Token([]byte(secret), user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	titles := func(base string) <-chan string {
		req, _ := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(base, "/")+"/v1/inbox/stream", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("%s stream: status %d", base, resp.StatusCode)
		}
		ch := make(chan string, 100)
		ready := make(chan struct{})
		go func() {
			defer resp.Body.Close()
			defer close(ch)
			started := false
			_ = api.ReadEvents(resp.Body, func(ev api.Event) error {
				switch {
				case ev.Name == "counts" && !started:
					started = true
					close(ready)
				case ev.Name == "notification":
					var n api.Notification
					if json.Unmarshal([]byte(ev.Data), &n) == nil {
						ch <- n.Title
					}
				}
				return nil
			})
		}()
		select {
		case <-ready:
		case <-ctx.Done():
			t.Fatalf("%s stream never started", base)
		}
		return ch
	}
	fromServe, fromRun := titles(serveAPI), titles(runAPI)

	for i := range 3 {
		v := fmt.Sprintf(`{"user_id":%q,"event_type":"replica.test","title":"n%d","body":"b"}`, user, i)
		if err := w.prod.ProduceSync(ctx, &kgo.Record{Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	for name, ch := range map[string]<-chan string{"serve": fromServe, "run": fromRun} {
		got := map[string]int{}
		for len(got) < 3 {
			select {
			case title, ok := <-ch:
				if !ok {
					t.Fatalf("%s: stream ended after %v", name, got)
				}
				got[title]++
			case <-ctx.Done():
				t.Fatalf("%s: got %v within the deadline, want n0, n1, n2", name, got)
			}
		}
		for title, n := range got {
			if n != 1 || !strings.HasPrefix(title, "n") {
				t.Fatalf("%s: %q arrived %d times", name, title, n)
			}
		}
	}
	for _, d := range []*daemon{serve, run} {
		d.signal(syscall.SIGTERM)
		if code, ok := d.wait(30 * time.Second); !ok || code != 0 {
			t.Fatalf("%s: exit %d (exited: %v) after SIGTERM with open streams, want 0", d.name, code, ok)
		}
		d.checkNoRace()
	}
}
