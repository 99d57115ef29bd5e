package api

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestSnapshotVisibilityAndCover(t *testing.T) {
	s, err := parseSnapshot("10:20:12,15")
	if err != nil {
		t.Fatal(err)
	}
	for x, want := range map[uint64]bool{9: true, 10: true, 11: true, 12: false, 15: false, 19: true, 20: false, 25: false} {
		if got := s.visible(x); got != want {
			t.Errorf("visible(%d) in %s: got %v, want %v", x, s, got, want)
		}
	}
	cases := []struct {
		s, p string
		want bool
	}{
		{"10:20:12,15", "10:20:12,15", true},
		{"12:25:15", "10:20:12,15", true}, // 12 ended, later ones started
		{"10:20:12", "10:20:12,15", true},
		{"10:20:12,15", "10:20:12", false}, // 15 visible in p, not in s
		{"10:19:", "10:20:", false},        // p saw 19
		{"10:30:25", "10:20:", true},
	}
	for _, c := range cases {
		s, _ := parseSnapshot(c.s)
		p, _ := parseSnapshot(c.p)
		if got := s.covers(p); got != c.want {
			t.Errorf("%s covers %s: got %v, want %v", c.s, c.p, got, c.want)
		}
	}
	for _, bad := range []string{"", "1:2", "a:2:", "3:2:", "1:5:6", "1:5:3,2", "1:5:+2", "1:5:2,,3"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q): no error", bad)
		}
	}
}

func TestPositionRoundTrip(t *testing.T) {
	base, _ := parseSnapshot("10:20:12,15")
	upto, _ := parseSnapshot("12:30:15")
	for _, p := range []position{
		{base: base},
		{base: base, row: true, upto: upto, xid: 21, id: uuid.New()},
	} {
		got, err := parsePosition(p.String())
		if err != nil || got.String() != p.String() {
			t.Fatalf("parsePosition(%q): got %q, %v", p, got, err)
		}
	}
	for _, bad := range []string{"12", "10:20:~12:30:~21", "12:30:~10:20:~21~" + uuid.NewString(), "10:20:~12:30:~x~" + uuid.NewString()} {
		if _, err := parsePosition(bad); err == nil {
			t.Errorf("parsePosition(%q): no error", bad)
		}
	}
}

// A Last-Event-ID ahead of anything the database has reached (made up) is
// refused once the stream has waited for it in vain.
func TestStreamRefusesPositionFromTheFuture(t *testing.T) {
	e := newEnv(t, Config{QueryTimeout: 500 * time.Millisecond}, "")
	req, _ := http.NewRequest("GET", e.http.URL+"/v1/inbox/stream", nil)
	req.Header.Set("Authorization", "Bearer "+token(t, uuid.New()))
	req.Header.Set("Last-Event-ID", "4000000000:4000000000:")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("got %d, want 400", resp.StatusCode)
	}
}
