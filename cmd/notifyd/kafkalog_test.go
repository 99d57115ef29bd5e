package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestKafkaLoggerLevels checks that the Kafka client's info goes to debug
// and its warnings and errors keep their level, at each notifyd level.
func TestKafkaLoggerLevels(t *testing.T) {
	for _, tt := range []struct {
		level     slog.Level
		wantLevel kgo.LogLevel
		want      []string // in the output, in order
		notWant   []string
	}{
		{slog.LevelInfo, kgo.LogLevelWarn, []string{"level=WARN msg=w", "level=ERROR msg=e"}, []string{"msg=i", "msg=d"}},
		{slog.LevelDebug, kgo.LogLevelInfo, []string{"level=DEBUG msg=i", "level=WARN msg=w", "level=ERROR msg=e"}, []string{"msg=d"}},
		{slog.LevelError, kgo.LogLevelError, []string{"level=ERROR msg=e"}, []string{"msg=w", "msg=i"}},
	} {
		var buf bytes.Buffer
		l := newKafkaLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tt.level})))
		if got := l.Level(); got != tt.wantLevel {
			t.Errorf("at %s: Level() got %v, want %v", tt.level, got, tt.wantLevel)
		}
		for _, m := range []struct {
			lv  kgo.LogLevel
			msg string
		}{{kgo.LogLevelDebug, "d"}, {kgo.LogLevelInfo, "i"}, {kgo.LogLevelWarn, "w"}, {kgo.LogLevelError, "e"}} {
			if m.lv <= l.Level() { // the client asks Level before it logs
				l.Log(m.lv, m.msg, "broker", "1")
			}
		}
		out := buf.String()
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("at %s: output does not contain %q:\n%s", tt.level, w, out)
			}
		}
		for _, w := range tt.notWant {
			if strings.Contains(out, w) {
				t.Errorf("at %s: output contains %q:\n%s", tt.level, w, out)
			}
		}
	}
}
