package main

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/bench"
	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
)

// These tests keep docs/contract.md in step with the code: where the
// contract names something the code also names, the two must agree both
// ways. (The metrics are checked against a running notifyd in
// TestRunServesMetricsHealthAndReadiness.)

const contractPath = "../../docs/contract.md"

func readContract(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(contractPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// section returns the text of the contract from the heading that starts
// with heading to the next heading of the same or a higher level.
func section(t *testing.T, doc, heading string) string {
	t.Helper()
	i := strings.Index(doc, "\n"+heading)
	if i < 0 {
		t.Fatalf("%s: no heading %q", contractPath, heading)
	}
	level := strings.Count(strings.Fields(heading)[0], "#")
	rest := doc[i+1+len(heading):]
	for _, m := range regexp.MustCompile(`(?m)^#+ `).FindAllStringIndex(rest, -1) {
		if m[1]-m[0]-1 <= level {
			return rest[:m[0]]
		}
	}
	return rest
}

// tables returns, for each Markdown table in text, the first cell of each
// row that is a single `code` span.
func tables(text string) [][]string {
	var out [][]string
	var cur []string
	inTable := false
	cell := regexp.MustCompile("^\\| `([^`]+)` \\|")
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "|") {
			if inTable {
				out = append(out, cur)
				cur, inTable = nil, false
			}
			continue
		}
		inTable = true
		if m := cell.FindStringSubmatch(line); m != nil {
			cur = append(cur, m[1])
		}
	}
	if inTable {
		out = append(out, cur)
	}
	return out
}

func ownHeaders(r *kgo.Record) []string {
	var out []string
	for _, h := range r.Headers {
		if strings.HasPrefix(h.Key, "notifyd.") {
			out = append(out, h.Key)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestContractHeadersAreTheCodes(t *testing.T) {
	doc := readContract(t)
	src := &kgo.Record{Topic: "notifications", Partition: 1, Offset: 7, Timestamp: time.Now(), Value: []byte("{}"),
		Headers: []kgo.RecordHeader{{Key: dlq.HeaderReplays, Value: []byte("1")}}}
	letter := dlq.Letter("notifications.dlq", src, "validate", "a reason", 1)
	letter.Partition, letter.Offset = 2, 9
	replayed, err := dlq.ReplayRecord("notifications", letter, 3)
	if err != nil {
		t.Fatal(err)
	}
	replayed.Partition, replayed.Offset = 0, 11
	marker := dlq.ReplayMarker("notifications.dlq", dlq.Entry{Record: letter}, replayed, time.Now())

	for _, c := range []struct {
		heading string
		index   int // which table of the section
		rec     *kgo.Record
	}{
		{"## 3. Dead letters", 0, letter},
		{"### 3.1 Replay", 0, replayed},
		{"### 3.1 Replay", 1, marker},
	} {
		ts := tables(section(t, doc, c.heading))
		if len(ts) <= c.index {
			t.Fatalf("%s: got %d tables, want at least %d", c.heading, len(ts), c.index+1)
		}
		if got, want := sorted(ts[c.index]), ownHeaders(c.rec); !slices.Equal(got, want) {
			t.Errorf("%s, table %d: got headers %v, want the code's %v", c.heading, c.index+1, got, want)
		}
	}
	if !dlq.IsReplayMarker(marker) || !strings.Contains(doc, "`"+dlq.HeaderReplayedLetter+"` header") {
		t.Errorf("the contract must tell consumers how to recognise a marker: by its %s header", dlq.HeaderReplayedLetter)
	}
}

func TestContractBenchmarkKeysAreTheCodes(t *testing.T) {
	doc := readContract(t)
	var want []string
	rt := reflect.TypeFor[bench.Result]()
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		want = append(want, name)
	}
	ts := tables(section(t, doc, "## 7. The benchmark's output"))
	if len(ts) != 1 {
		t.Fatalf("section 7: got %d tables, want 1", len(ts))
	}
	if got := ts[0]; !slices.Equal(sorted(got), sorted(want)) {
		t.Errorf("benchmark keys: got %v, want the JSON keys of bench.Result %v", got, want)
	}
}

func TestContractMessageRulesAreTheCodes(t *testing.T) {
	msg := section(t, readContract(t), "## 1. The message")
	for _, want := range []string{
		"1–" + itoa(notification.DefaultMaxEventTypeBytes) + " bytes",
		"1–" + itoa(notification.DefaultMaxTitleChars) + " characters",
		"0–" + itoa(notification.DefaultMaxBodyChars) + " characters",
		itoa(notification.DefaultMaxDataBytes) + " bytes",
		"`" + notification.DerivedID("notifications", 0, 42).String() + "`",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("section 1: want %q in it, as the code has it", want)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestContractTableIsTheMigrations(t *testing.T) {
	doc := section(t, readContract(t), "## 2. The table")
	// The newest migration that creates the table says what it is.
	files, err := filepath.Glob("../../internal/postgres/migrations/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	var sql []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "CREATE TABLE notifications (") || strings.Contains(string(b), "CREATE TABLE IF NOT EXISTS notifications (") {
			sql = b
		}
	}
	columns := func(s string) []string {
		i := strings.Index(s, "notifications (")
		if i < 0 {
			t.Fatalf("no CREATE TABLE notifications in %q", s)
		}
		body, _, _ := strings.Cut(s[i+len("notifications ("):], ");")
		var out []string
		for _, l := range strings.Split(body, "\n") {
			if f := strings.Fields(strings.TrimSuffix(strings.TrimSpace(l), ",")); len(f) > 0 {
				out = append(out, strings.Join(f, " "))
			}
		}
		return out
	}
	if got, want := columns(doc), columns(string(sql)); !slices.Equal(got, want) {
		t.Errorf("section 2: got columns %q, want the migration's %q", got, want)
	}
}

// TestDocsLinkInsideTheRepository checks that every relative link of the
// README and docs/ names a file of the repository, and that none leaves it.
func TestDocsLinkInsideTheRepository(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target, _, _ := strings.Cut(m[1], "#")
			rel, _ := filepath.Rel(root, f)
			switch {
			case strings.Contains(m[1], "://"):
				t.Errorf("%s: link %s leaves the repository", rel, m[1])
				continue
			case target == "":
				continue
			}
			abs := filepath.Clean(filepath.Join(filepath.Dir(f), target))
			if r, err := filepath.Rel(root, abs); err != nil || strings.HasPrefix(r, "..") {
				t.Errorf("%s: link %s leaves the repository", rel, m[1])
			} else if _, err := os.Stat(abs); err != nil {
				t.Errorf("%s: link %s: %v", rel, m[1], err)
			}
		}
	}
}
