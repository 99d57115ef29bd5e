package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/internal/pgtest"
)

// TestBenchPrintsTheSpecObject runs a small `notifyd bench --json` end to
// end (its own schema, an embedded broker, a real `notifyd run` for the
// drain) and checks the object of SPEC section 5. It checks that each
// measure was taken, not how fast: timing goals live in benchmarks.
func TestBenchPrintsTheSpecObject(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole benchmark")
	}
	t.Parallel()
	code, stdout, stderr := runBinary(t, childEnv(), 3*time.Minute,
		"bench", "--json", "--messages", "3000", "--rate", "500", "--duration", "2s",
		"--database-url", pgtest.URL(t), "--log-level", "warn")
	if code != 0 {
		t.Fatalf("notifyd bench: exit %d\nstderr:\n%s", code, stderr)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &raw); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, stdout)
	}
	for _, key := range []string{"messages", "seconds", "msgs_per_sec", "copy_limit_rows_per_sec",
		"ratio_to_copy_limit", "e2e_latency_ms", "flush_ms", "peak_rss_mb"} {
		if _, ok := raw[key]; !ok {
			t.Errorf("key %q missing from %s", key, stdout)
		}
	}
	var res struct {
		Messages            int                `json:"messages"`
		Seconds             float64            `json:"seconds"`
		MsgsPerSec          float64            `json:"msgs_per_sec"`
		CopyLimitRowsPerSec float64            `json:"copy_limit_rows_per_sec"`
		RatioToCopyLimit    float64            `json:"ratio_to_copy_limit"`
		E2E                 map[string]float64 `json:"e2e_latency_ms"`
		Flush               map[string]float64 `json:"flush_ms"`
		PeakRSSMB           float64            `json:"peak_rss_mb"`
		LatencyMessages     int                `json:"latency_messages"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatal(err)
	}
	if res.Messages != 3000 {
		t.Errorf("messages: got %d, want 3000", res.Messages)
	}
	if res.Seconds <= 0 || res.MsgsPerSec <= 0 || res.CopyLimitRowsPerSec <= 0 || res.PeakRSSMB <= 0 {
		t.Errorf("a measure is missing: %+v", res)
	}
	if got, want := res.RatioToCopyLimit, res.MsgsPerSec/res.CopyLimitRowsPerSec; got < want*0.999 || got > want*1.001 {
		t.Errorf("ratio_to_copy_limit: got %g, want msgs_per_sec/copy_limit = %g", got, want)
	}
	if res.LatencyMessages != 1000 {
		t.Errorf("latency_messages: got %d, want 1000 (500 msg/s for 2s)", res.LatencyMessages)
	}
	for name, q := range map[string]map[string]float64{"e2e_latency_ms": res.E2E, "flush_ms": res.Flush} {
		if !(q["p50"] > 0 && q["p50"] <= q["p95"] && q["p95"] <= q["p99"]) {
			t.Errorf("%s: got %v, want 0 < p50 <= p95 <= p99", name, q)
		}
	}
}
