package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/internal/testbin"
)

// testVersion is stamped into the binary the tests run, so that `notifyd
// version` can be checked against something other than the default.
const testVersion = "v0.0.0-test"

// binDir holds the notifyd binary built for the tests; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "notifyd-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildOnce builds the binary the first time a test needs it, so that a run
// filtered to in-process tests pays nothing.
var buildOnce = sync.OnceValues(func() (string, error) {
	return testbin.Build(binDir, "-X main.version="+testVersion)
})

// notifydBin returns the path of the notifyd binary, building it once.
func notifydBin(t testing.TB) string {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// childEnv is the test process's environment without the settings of
// notifyd, so that a developer's NOTIFYD_* variables cannot change what the
// tests run; extra is added.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "NOTIFYD_") || strings.HasPrefix(kv, "DATABASE_URL=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// logLine is one line a child wrote, with the time the test read it.
type logLine struct {
	at   time.Time
	text string
}

// output collects a child's stdout and stderr line by line, timestamped.
type output struct {
	mu      sync.Mutex
	partial bytes.Buffer
	lines   []logLine
	changed chan struct{} // closed and replaced on each new line
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(b []byte) (int, error) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial.Write(b)
	added := false
	for {
		i := bytes.IndexByte(o.partial.Bytes(), '\n')
		if i < 0 {
			break
		}
		line := string(o.partial.Next(i + 1))
		o.lines = append(o.lines, logLine{at: now, text: strings.TrimSuffix(line, "\n")})
		added = true
	}
	if added {
		close(o.changed)
		o.changed = make(chan struct{})
	}
	return len(b), nil
}

// String is everything written so far.
func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b strings.Builder
	for _, l := range o.lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	b.Write(o.partial.Bytes())
	return b.String()
}

// tail is the last n lines.
func (o *output) tail(n int) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	lines := o.lines[max(0, len(o.lines)-n):]
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	b.Write(o.partial.Bytes())
	return b.String()
}

// first returns the first line containing substr and when it was read.
func (o *output) first(substr string) (logLine, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, l := range o.lines {
		if strings.Contains(l.text, substr) {
			return l, true
		}
	}
	return logLine{}, false
}

// waitFor waits until a line contains substr, up to d.
func (o *output) waitFor(substr string, d time.Duration) (logLine, bool) {
	deadline := time.After(d)
	for {
		o.mu.Lock()
		ch := o.changed
		o.mu.Unlock()
		if l, ok := o.first(substr); ok {
			return l, true
		}
		select {
		case <-ch:
		case <-deadline:
			return logLine{}, false
		}
	}
}

// daemon is a notifyd process started by a test.
type daemon struct {
	t       testing.TB
	name    string
	cmd     *exec.Cmd
	out     *output
	started time.Time
	done    chan struct{} // closed when the process has exited
	state   *os.ProcessState
}

// startDaemon starts the binary with args and env (see childEnv). The
// process is killed when the test ends if it is still running, and its
// output is logged if the test failed.
func startDaemon(t testing.TB, name string, env []string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(notifydBin(t), args...)
	cmd.Env = env
	out := newOutput()
	cmd.Stdout = out
	cmd.Stderr = out
	d := &daemon{t: t, name: name, cmd: cmd, out: out, done: make(chan struct{})}
	d.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
		d.state = cmd.ProcessState
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("output of %s (last 60 lines):\n%s", name, out.tail(60))
		}
	})
	return d
}

// running reports whether the process has not exited yet.
func (d *daemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil && d.running() {
		d.t.Fatalf("signal %s to %s: %v", sig, d.name, err)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (d *daemon) kill() {
	d.t.Helper()
	d.signal(syscall.SIGKILL)
	if _, ok := d.wait(10 * time.Second); !ok {
		d.t.Fatalf("%s still running 10s after SIGKILL", d.name)
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// code (-1 when a signal ended it) and whether it exited.
func (d *daemon) wait(timeout time.Duration) (int, bool) {
	select {
	case <-d.done:
		return d.state.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

// checkNoRace fails the test if the race detector reported on the output.
func (d *daemon) checkNoRace() {
	d.t.Helper()
	if strings.Contains(d.out.String(), "WARNING: DATA RACE") {
		d.t.Errorf("%s: the race detector reported a data race:\n%s", d.name, d.out.String())
	}
}

// jsonAttr returns attribute key of the first JSON log line whose msg is msg.
func (d *daemon) jsonAttr(msg, key string, timeout time.Duration) string {
	d.t.Helper()
	l, ok := d.out.waitFor(`"msg":"`+msg+`"`, timeout)
	if !ok {
		d.t.Fatalf("%s: no log line %q within %s", d.name, msg, timeout)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(l.text), &m); err != nil {
		d.t.Fatalf("%s: log line is not JSON: %v: %s", d.name, err, l.text)
	}
	s, _ := m[key].(string)
	return s
}

// runBinary runs the binary to completion (bounded by timeout) and returns
// its exit code, stdout and stderr.
func runBinary(t testing.TB, env []string, timeout time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, notifydBin(t), args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("notifyd %s: still running after %s\nstderr:\n%s", strings.Join(args, " "), timeout, e.String())
	}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("notifyd %s: %v", strings.Join(args, " "), err)
		}
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}
