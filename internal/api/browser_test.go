package api

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
)

// The demo page in a real headless browser (Debian's chromium, which
// .ci/run installs): load it with a token, produce a notification, see it
// appear live, click it, see the unread count drop.
func TestDemoPageInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed (apt-get install -y chromium): ", err)
	}
	e := newEnv(t, Config{}, "")
	user := uuid.New()
	e.write(row(user, time.Now().Add(-time.Hour), "already there"))

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The first action starts the browser, which lives as long as that
	// action's context: no timeout on it, one on the steps after.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	defer cancelT()

	text := func(sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}
	// waitText polls from Go rather than in the page, so that a page
	// context replaced meanwhile is only a retry.
	waitText := func(sel, want string) {
		t.Helper()
		js := `(document.querySelector(` + quoteJS(sel) + `) || {}).textContent || ""`
		var got string
		var err error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got, err = chromedp.Run(ctx, chromedp.Evaluate[string](js)); err == nil && got == want {
				return
			}
		}
		t.Fatalf("%s never became %q (is %q, %v)", sel, want, got, err)
	}

	if err := chromedp.Do(ctx, chromedp.Navigate(e.http.URL+"/#token="+token(t, user))); err != nil {
		t.Fatal(err)
	}
	waitText("#status", "Live.")
	waitText("#unread", "1")

	fresh := row(user, time.Now(), "hello from the test")
	e.write(fresh)
	sel := `li[data-id="` + fresh.ID.String() + `"]`
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		t.Fatalf("the new notification never appeared: %v", err)
	}
	if got := text(sel + " .title"); got != "hello from the test" {
		t.Fatalf("title shown %q", got)
	}
	waitText("#unread", "2")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel))); err != nil {
		t.Fatal(err)
	}
	waitText("#unread", "1")
	var c Counts
	e.do(user, "GET", "/v1/inbox/counts", nil, &c)
	if c.Unread != 1 {
		t.Fatalf("after the click the API counts %d unread, want 1", c.Unread)
	}
}

func quoteJS(s string) string {
	b := []byte{'"'}
	for _, r := range s {
		switch r {
		case '"', '\\':
			b = append(b, '\\', byte(r))
		default:
			b = append(b, string(r)...)
		}
	}
	return string(append(b, '"'))
}
