package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/internal/pgtest"
	"github.com/notifyd/notifyd/internal/postgres"
)

// secret is a database password that must never be printed.
const secret = "S3cretPassw0rd"

// closedPort returns a local port nothing listens on.
func closedPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// withArgs returns args followed by each default flag that neither args
// nor env sets. The defaults point at ports nothing listens on, so that a setting
// the validation misses fails later on a connection instead of starting
// anything, and the test sees the wrong message.
func withArgs(t testing.TB, env []string, args ...string) []string {
	defaults := [][3]string{
		{"--brokers", "NOTIFYD_BROKERS", "127.0.0.1:" + strconv.Itoa(closedPort(t))},
		{"--database-url", "NOTIFYD_DATABASE_URL", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?connect_timeout=2", closedPort(t))},
		{"--metrics-addr", "NOTIFYD_METRICS_ADDR", ""},
	}
	out := append([]string{"run"}, args...)
	for _, d := range defaults {
		set := false
		for _, a := range args {
			if a == d[0] || strings.HasPrefix(a, d[0]+"=") {
				set = true
			}
		}
		for _, kv := range env {
			if strings.HasPrefix(kv, d[1]+"=") {
				set = true // a flag would hide the variable under test
			}
		}
		if !set {
			out = append(out, d[0], d[2])
		}
	}
	return out
}

// TestBadSettingsFailAtStart runs `notifyd run` (or migrate) with one bad
// setting at a time: each must exit non-zero at once with a message naming
// the setting.
func TestBadSettingsFailAtStart(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  []string
		want string // in stderr
	}{
		{"batch size zero", []string{"--batch-size", "0"}, nil, "--batch-size"},
		{"batch size not a number", []string{"--batch-size", "abc"}, nil, "--batch-size"},
		{"batch size negative from env", nil, []string{"NOTIFYD_BATCH_SIZE=-5"}, "--batch-size"},
		{"batch size not a number from env", nil, []string{"NOTIFYD_BATCH_SIZE=abc"}, "NOTIFYD_BATCH_SIZE"},
		{"flush interval negative", []string{"--flush-interval", "-1s"}, nil, "--flush-interval"},
		{"flush interval zero", []string{"--flush-interval", "0s"}, nil, "--flush-interval"},
		{"flush interval without unit", []string{"--flush-interval", "5"}, nil, "--flush-interval"},
		{"session timeout too short", []string{"--session-timeout", "1s"}, nil, "--session-timeout"},
		{"session timeout too short from env", nil, []string{"NOTIFYD_SESSION_TIMEOUT=1s"}, "--session-timeout"},
		{"broker without port", []string{"--brokers", "nohost"}, nil, "--brokers"},
		{"broker without port from env", nil, []string{"NOTIFYD_BROKERS=127.0.0.1:9092,nohost"}, "--brokers"},
		{"database url unparsable", []string{"--database-url", "postgres://%zz"}, nil, "--database-url"},
		{"database url unparsable from env", nil, []string{"NOTIFYD_DATABASE_URL=postgres://%zz"}, "--database-url"},
		{"dlq topic is the input topic", []string{"--dlq-topic", "notifications"}, nil, "dlq-topic"},
		{"dlq topic is the given topic", []string{"--topic", "in", "--dlq-topic", "in"}, nil, "dlq-topic"},
		{"empty topic", []string{"--topic", ""}, nil, "--topic"},
		{"empty group", []string{"--group", ""}, nil, "--group"},
		{"log format", []string{"--log-format", "xml"}, nil, "--log-format"},
		{"log level", []string{"--log-level", "loud"}, nil, "--log-level"},
		{"log format from env", nil, []string{"NOTIFYD_LOG_FORMAT=xml"}, "--log-format"},
		{"start offset", []string{"--start-offset", "middle"}, nil, "--start-offset"},
		{"buffer below batch", []string{"--batch-size", "500", "--max-buffered-rows", "100"}, nil, "max-buffered-rows"},
		{"buffered bytes zero", []string{"--max-buffered-bytes", "0"}, nil, "--max-buffered-bytes"},
		{"retries negative", []string{"--retry-max-retries", "-1"}, nil, "--retry-max-retries"},
		{"backoff zero", []string{"--retry-initial-backoff", "0s"}, nil, "--retry-initial-backoff"},
		{"breaker threshold zero", []string{"--breaker-threshold", "0"}, nil, "--breaker-threshold"},
		{"shutdown timeout negative", []string{"--shutdown-timeout", "-5s"}, nil, "--shutdown-timeout"},
		{"title limit zero", []string{"--max-title-chars", "0"}, nil, "--max-title-chars"},
		{"db pool zero", []string{"--db-max-conns", "0"}, nil, "--db-max-conns"},
		{"db pool negative", []string{"--db-max-conns=-1"}, nil, "--db-max-conns"},
		{"unknown flag", []string{"--batchsize", "5"}, nil, "--batchsize"},
		{"metrics addr without port", []string{"--metrics-addr", "localhost"}, nil, "--metrics-addr"},
		{"metrics addr port out of range", []string{"--metrics-addr", "127.0.0.1:99999"}, nil, "--metrics-addr"},
		{"pprof without metrics addr", []string{"--pprof"}, nil, "--pprof"},
		{"broker port out of range", []string{"--brokers", "127.0.0.1:0"}, nil, "--brokers"},
		{"data dir is a file", []string{"--brokers=", "--data-dir", "settings_test.go"}, nil, "--data-dir"},
		{"migrate: database url unparsable", []string{"migrate", "--database-url", "postgres://%zz"}, nil, "--database-url"},
		{"migrate: pool size negative", []string{"migrate", "--db-max-conns=-1"}, nil, "--db-max-conns"},
		{"migrate: pool size zero", []string{"migrate", "--db-max-conns", "0"}, nil, "--db-max-conns"},
		{"produce: no count or duration", []string{"produce"}, nil, "--count or --duration"},
		{"produce: broker without port", []string{"produce", "--count", "1", "--brokers", "nohost"}, nil, "--brokers"},
		{"dlq: broker without port", []string{"dlq", "list", "--brokers", "nohost"}, nil, "--brokers"},
		{"bench: api partition interval under an hour", []string{"bench", "--api", "--api-partition-interval", "10m"}, nil, "--api-partition-interval"},
		{"bench: partition interval not whole minutes", []string{"bench", "--partition-interval", "90m30s"}, nil, "--partition-interval"},
		{"unknown command", []string{"runn"}, nil, "runn"},
		{"health: bad address", []string{"health", "--metrics-addr", "localhost"}, nil, "--metrics-addr"},
		{"health: zero timeout", []string{"health", "--timeout", "0s"}, nil, "--timeout"},
		{"api without secret", []string{"--api-addr", "127.0.0.1:0"}, nil, "--api-secret"},
		{"api secret too short", []string{"--api-addr", "127.0.0.1:0", "--api-secret", "short"}, nil, "--api-secret"},
		{"api addr without port", []string{"--api-addr", "localhost", "--api-secret", "0123456789abcdef"}, nil, "--api-addr"},
		{"api count cap zero", []string{"--api-addr", "127.0.0.1:0", "--api-secret", "0123456789abcdef", "--api-count-cap", "0"}, nil, "--api-count-cap"},
		{"serve: no secret", []string{"serve"}, nil, "--api-secret"},
		{"serve: secret too short from env", []string{"serve"}, []string{"NOTIFYD_API_SECRET=short"}, "--api-secret"},
		{"serve: api addr empty", []string{"serve", "--api-addr", "", "--api-secret", "0123456789abcdef"}, nil, "--api-addr"},
		{"serve: count cap negative", []string{"serve", "--api-secret", "0123456789abcdef", "--api-count-cap=-1"}, nil, "--api-count-cap"},
		{"token: user not a UUID", []string{"token", "--user", "alice", "--api-secret", "0123456789abcdef"}, nil, "--user"},
		{"token: no secret", []string{"token", "--user", "6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11"}, nil, "--api-secret"},
		{"token: ttl zero", []string{"token", "--user", "6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11", "--api-secret", "0123456789abcdef", "--ttl", "0s"}, nil, "--ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := withArgs(t, tt.env, tt.args...)
			if len(tt.args) > 0 && !strings.HasPrefix(tt.args[0], "-") {
				args = tt.args // another command
			}
			code, _, stderr := runBinary(t, childEnv(tt.env...), 30*time.Second, args...)
			if code != exitUsage {
				t.Fatalf("notifyd %q exited %d, want %d (bad setting)\nstderr:\n%s", args, code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr of notifyd %q does not name %s:\n%s", args, tt.want, stderr)
			}
			if strings.Contains(stderr, "connect to") || strings.Contains(stderr, "level=") {
				t.Fatalf("notifyd %q got as far as starting before failing:\n%s", args, stderr)
			}
		})
	}
}

// TestBadSettingsStartNothing gives the embedded broker's defaults and a
// reachable database together with one bad setting found only by reading a
// file or an address: nothing may start (no broker, no database, no log
// line) before the command fails naming the flag.
func TestBadSettingsStartNothing(t *testing.T) {
	dir := t.TempDir()
	garbage := dir + "/garbage.pem"
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	db := pgtest.Schema(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"metrics addr", []string{"--metrics-addr", "127.0.0.1:port"}, "--metrics-addr"},
		{"garbage CA file", []string{"--brokers", "127.0.0.1:1", "--tls-ca-file", garbage}, "--tls-ca-file"},
		{"garbage client certificate", []string{"--brokers", "127.0.0.1:1", "--tls-cert-file", garbage, "--tls-key-file", garbage}, "--tls-cert-file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"run", "--database-url", db, "--data-dir", dir + "/data"}, tt.args...)
			code, _, stderr := runBinary(t, childEnv(), 30*time.Second, args...)
			if code != exitUsage {
				t.Fatalf("exit code: got %d, want %d\n%s", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr does not name %s:\n%s", tt.want, stderr)
			}
			for _, started := range []string{"embedded broker started", "database ready", "level="} {
				if strings.Contains(stderr, started) {
					t.Fatalf("got as far as %q before failing:\n%s", started, stderr)
				}
			}
			if _, err := os.Stat(dir + "/data"); err == nil {
				t.Fatalf("the data dir was created before the settings were checked")
			}
		})
	}
}

// TestExitCodeOfARuntimeFailure checks that a failure that good settings
// meet at run time exits 1, not 2: the database is not there.
func TestExitCodeOfARuntimeFailure(t *testing.T) {
	code, _, stderr := runBinary(t, childEnv(), 30*time.Second, "migrate", "--database-url",
		fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?connect_timeout=2", closedPort(t)))
	if code != exitFailure {
		t.Fatalf("exit code: got %d, want %d\n%s", code, exitFailure, stderr)
	}
	if !strings.Contains(stderr, "connect to") {
		t.Fatalf("stderr does not say what failed:\n%s", stderr)
	}
}

// TestSecretsNeverPrinted gives notifyd database passwords in every form
// and checks that no output repeats them.
func TestSecretsNeverPrinted(t *testing.T) {
	port := closedPort(t)
	broker := "127.0.0.1:" + strconv.Itoa(closedPort(t))
	tests := []struct {
		name string
		args []string
		env  []string
		want string // in stderr: the failure is the expected one
	}{
		{"url to a closed port", []string{"run", "--log-level", "debug", "--metrics-addr", "", "--brokers", broker,
			"--database-url", fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/app", secret, port)}, nil,
			fmt.Sprintf("host=127.0.0.1 port=%d dbname=app user=app", port)},
		{"key=value to a closed port", []string{"run", "--metrics-addr", "", "--brokers", broker,
			"--database-url", fmt.Sprintf("host=127.0.0.1 port=%d user=app password=%s dbname=app", port, secret)}, nil,
			"connect to"},
		{"url from env to a closed port", []string{"run", "--metrics-addr", "", "--brokers", broker}, []string{
			fmt.Sprintf("NOTIFYD_DATABASE_URL=postgres://app:%s@127.0.0.1:%d/app", secret, port)},
			"connect to"},
		{"DATABASE_URL to a closed port", []string{"run", "--metrics-addr", "", "--brokers", broker}, []string{
			fmt.Sprintf("DATABASE_URL=postgres://app:%s@127.0.0.1:%d/app", secret, port)},
			"connect to"},
		{"unparsable url", []string{"run", "--metrics-addr", "", "--brokers", broker,
			"--database-url", "postgres://app:" + secret + "@127.0.0.1:notaport/app"}, nil,
			"--database-url"},
		{"unparsable key=value", []string{"run", "--metrics-addr", "", "--brokers", broker,
			"--database-url", "host=127.0.0.1 password=" + secret + " port=x"}, nil,
			"--database-url"},
		{"another bad setting beside it", []string{"run", "--batch-size", "abc"}, []string{
			fmt.Sprintf("NOTIFYD_DATABASE_URL=postgres://app:%s@127.0.0.1:%d/app", secret, port)},
			"--batch-size"},
		{"serve with an API secret, to a closed port", []string{"serve", "--api-addr", "127.0.0.1:0", "--metrics-addr", "",
			"--api-secret", "api-" + secret, "--database-url", fmt.Sprintf("postgres://app@127.0.0.1:%d/app", port)}, nil,
			"connect to"},
		{"run with an API secret from env, to a closed port", []string{"run", "--metrics-addr", "", "--brokers", broker,
			"--api-addr", "127.0.0.1:0", "--database-url", fmt.Sprintf("postgres://app@127.0.0.1:%d/app", port)},
			[]string{"NOTIFYD_API_SECRET=api-" + secret}, "connect to"},
		{"migrate to a closed port", []string{"migrate",
			"--database-url", fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/app", secret, port)}, nil,
			"connect to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runBinary(t, childEnv(tt.env...), 30*time.Second, tt.args...)
			if code == 0 {
				t.Fatalf("exited 0, want non-zero\nstderr:\n%s", stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr does not contain %q:\n%s", tt.want, stderr)
			}
			if strings.Contains(stdout+stderr, secret) {
				t.Fatalf("the password appears in the output:\n%s%s", stdout, stderr)
			}
		})
	}

	t.Run("running service", func(t *testing.T) {
		// A password the server ignores (trust): the service runs, with
		// debug logs, and never prints it.
		w := newWorld(t, 1)
		u, err := url.Parse(w.url)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(u.User.Username(), secret)
		args := w.runArgs("g", "--log-level", "debug")
		for i := range args {
			if args[i] == "--database-url" {
				args[i+1] = u.String()
			}
		}
		d := startDaemon(t, "notifyd", childEnv(), args...)
		w.mustProduce(20, 0.2)
		w.waitDrained("g", 60*time.Second)
		d.signal(syscall.SIGTERM)
		if code, ok := d.wait(20 * time.Second); !ok || code != 0 {
			t.Fatalf("after SIGTERM: exited %v with code %d, want 0", ok, code)
		}
		if strings.Contains(d.out.String(), secret) {
			t.Fatalf("the password appears in the logs:\n%s", d.out.String())
		}
		if !strings.Contains(d.out.String(), "database ready") {
			t.Fatalf("no database ready line in the logs:\n%s", d.out.tail(20))
		}

		code, stdout, stderr := runBinary(t, childEnv(), 30*time.Second, "migrate", "--database-url", u.String())
		if code != 0 {
			t.Fatalf("migrate exited %d:\n%s", code, stderr)
		}
		if strings.Contains(stdout+stderr, secret) {
			t.Fatalf("migrate printed the password:\n%s%s", stdout, stderr)
		}
	})
}

// clearSettingsEnv unsets notifyd's environment variables for the test,
// restoring them when it ends.
func clearSettingsEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NOTIFYD_") || k == "DATABASE_URL" {
			t.Setenv(k, v)
			os.Unsetenv(k)
		}
	}
}

// parseCLI parses args as main does, in process.
func parseCLI(t *testing.T, args ...string) (*cli, *kong.Context, error) {
	t.Helper()
	var c cli
	k, err := newParser(&c, kong.Exit(func(int) {}))
	if err != nil {
		t.Fatalf("kong: %v", err)
	}
	kctx, err := k.Parse(args)
	return &c, kctx, err
}

// TestSettingsPrecedence checks that flags win over environment variables,
// that variables apply when the flag is absent, and that
// NOTIFYD_DATABASE_URL wins over DATABASE_URL.
func TestSettingsPrecedence(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		get  func(*cli) any
		want any
	}{
		{"topic default", nil, nil, func(c *cli) any { return c.Run.Topic }, "notifications"},
		{"topic from env", map[string]string{"NOTIFYD_TOPIC": "a"}, nil, func(c *cli) any { return c.Run.Topic }, "a"},
		{"topic flag wins", map[string]string{"NOTIFYD_TOPIC": "a"}, []string{"--topic", "b"}, func(c *cli) any { return c.Run.Topic }, "b"},
		{"brokers from env", map[string]string{"NOTIFYD_BROKERS": "k1:9092,k2:9092"}, nil,
			func(c *cli) any { return c.Run.Brokers }, []string{"k1:9092", "k2:9092"}},
		{"brokers flag wins", map[string]string{"NOTIFYD_BROKERS": "k1:9092,k2:9092"}, []string{"--brokers", "k3:9092"},
			func(c *cli) any { return c.Run.Brokers }, []string{"k3:9092"}},
		{"group from env", map[string]string{"NOTIFYD_GROUP": "g1"}, nil, func(c *cli) any { return c.Run.Group }, "g1"},
		{"dlq topic from env", map[string]string{"NOTIFYD_DLQ_TOPIC": "dead"}, nil, func(c *cli) any { return c.Run.DLQTopic }, "dead"},
		{"batch size from env", map[string]string{"NOTIFYD_BATCH_SIZE": "500"}, nil, func(c *cli) any { return c.Run.BatchSize }, 500},
		{"batch size flag wins", map[string]string{"NOTIFYD_BATCH_SIZE": "500"}, []string{"--batch-size=7"}, func(c *cli) any { return c.Run.BatchSize }, 7},
		{"flush interval from env", map[string]string{"NOTIFYD_FLUSH_INTERVAL": "250ms"}, nil,
			func(c *cli) any { return c.Run.FlushInterval }, 250 * time.Millisecond},
		{"flush interval default", nil, nil, func(c *cli) any { return c.Run.FlushInterval }, 5 * time.Second},
		{"metrics addr from env", map[string]string{"NOTIFYD_METRICS_ADDR": ":9999"}, nil, func(c *cli) any { return c.Run.MetricsAddr }, ":9999"},
		{"metrics addr flag wins", map[string]string{"NOTIFYD_METRICS_ADDR": ":9999"}, []string{"--metrics-addr", ""},
			func(c *cli) any { return c.Run.MetricsAddr }, ""},
		{"data dir from env", map[string]string{"NOTIFYD_DATA_DIR": "/var/lib/notifyd"}, nil, func(c *cli) any { return c.Run.DataDir }, "/var/lib/notifyd"},
		{"session timeout from env", map[string]string{"NOTIFYD_SESSION_TIMEOUT": "10s"}, nil,
			func(c *cli) any { return c.Run.SessionTimeout }, 10 * time.Second},
		{"instance id from env", map[string]string{"NOTIFYD_INSTANCE_ID": "pod-0"}, nil, func(c *cli) any { return c.Run.InstanceID }, "pod-0"},
		{"log format from env", map[string]string{"NOTIFYD_LOG_FORMAT": "json"}, nil, func(c *cli) any { return c.Run.LogFormat }, "json"},
		{"database url from DATABASE_URL", map[string]string{"DATABASE_URL": "postgres://x/a"}, nil,
			func(c *cli) any { return c.Run.DatabaseURL }, "postgres://x/a"},
		{"NOTIFYD_DATABASE_URL wins over DATABASE_URL", map[string]string{"DATABASE_URL": "postgres://x/a", "NOTIFYD_DATABASE_URL": "postgres://y/b"}, nil,
			func(c *cli) any { return c.Run.DatabaseURL }, "postgres://y/b"},
		{"database url flag wins over both", map[string]string{"DATABASE_URL": "postgres://x/a", "NOTIFYD_DATABASE_URL": "postgres://y/b"},
			[]string{"--database-url", "postgres://z/c"}, func(c *cli) any { return c.Run.DatabaseURL }, "postgres://z/c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearSettingsEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, _, err := parseCLI(t, append([]string{"run"}, tt.args...)...)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}

	t.Run("migrate reads the same database settings", func(t *testing.T) {
		clearSettingsEnv(t)
		t.Setenv("DATABASE_URL", "postgres://x/a")
		t.Setenv("NOTIFYD_DATABASE_URL", "postgres://y/b")
		c, _, err := parseCLI(t, "migrate")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := c.Migrate.DatabaseURL, "postgres://y/b"; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})

	t.Run("env value is validated like the flag", func(t *testing.T) {
		clearSettingsEnv(t)
		t.Setenv("NOTIFYD_BATCH_SIZE", "-5")
		_, _, err := parseCLI(t, "run")
		if err == nil || !strings.Contains(err.Error(), "--batch-size") {
			t.Fatalf("parse: got %v, want an error naming --batch-size", err)
		}
	})

	t.Run("defaults are valid", func(t *testing.T) {
		clearSettingsEnv(t)
		c, _, err := parseCLI(t, "run")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Run.validate(); err != nil {
			t.Fatalf("validate of the defaults: %v", err)
		}
	})

	// End to end through the binary: the database each variable names is
	// the one migrate connects to.
	t.Run("binary", func(t *testing.T) {
		good := pgtest.Schema(t)
		bad := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?connect_timeout=2", closedPort(t))
		for _, tc := range []struct {
			name string
			env  []string
			args []string
		}{
			{"NOTIFYD_DATABASE_URL over DATABASE_URL", []string{"NOTIFYD_DATABASE_URL=" + good, "DATABASE_URL=" + bad}, nil},
			{"DATABASE_URL alone", []string{"DATABASE_URL=" + good}, nil},
			{"flag over both", []string{"NOTIFYD_DATABASE_URL=" + bad, "DATABASE_URL=" + bad}, []string{"--database-url", good}},
		} {
			code, stdout, stderr := runBinary(t, childEnv(tc.env...), 30*time.Second, append([]string{"migrate"}, tc.args...)...)
			if code != 0 {
				t.Errorf("%s: migrate exited %d, want 0 (it used the wrong database?):\n%s%s", tc.name, code, stdout, stderr)
			}
		}
	})
}

// TestVersionCommand checks that `notifyd version` prints the version it
// was built with and the schema version it migrates to.
func TestVersionCommand(t *testing.T) {
	code, stdout, stderr := runBinary(t, childEnv(), 30*time.Second, "version")
	if code != 0 {
		t.Fatalf("exit code: got %d, want 0\n%s", code, stderr)
	}
	for _, want := range []string{
		"notifyd " + testVersion + "\n",
		fmt.Sprintf("schema version: %d\n", postgres.LatestVersion()),
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output does not contain %q:\n%s", want, stdout)
		}
	}
	if postgres.LatestVersion() < 1 {
		t.Errorf("schema version: got %d, want at least 1", postgres.LatestVersion())
	}
}

// TestMigrateCommand checks that `notifyd migrate` creates the tables,
// reports the version, and can run again.
func TestMigrateCommand(t *testing.T) {
	schemaURL := pgtest.Schema(t)
	want := fmt.Sprintf("at version %d\n", postgres.LatestVersion())
	for i := range 2 {
		code, stdout, stderr := runBinary(t, childEnv(), 30*time.Second, "migrate", "--database-url", schemaURL)
		if code != 0 {
			t.Fatalf("run %d: exit code: got %d, want 0\n%s", i+1, code, stderr)
		}
		if !strings.Contains(stdout, want) {
			t.Fatalf("run %d: output does not contain %q:\n%s", i+1, want, stdout)
		}
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, schemaURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, rel := range []string{"notifications", "notifyd_offsets", "notifyd_schema_version", "notifications_user_latest"} {
		var name *string
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1)::text", rel).Scan(&name); err != nil {
			t.Fatal(err)
		}
		if name == nil {
			t.Errorf("%s does not exist after migrate", rel)
		}
	}
	var v int
	if err := conn.QueryRow(ctx, "SELECT max(version) FROM notifyd_schema_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != postgres.LatestVersion() {
		t.Errorf("notifyd_schema_version: got %d, want %d", v, postgres.LatestVersion())
	}
	var cols []string
	rows, err := conn.Query(ctx, `SELECT column_name || ' ' || data_type || ' ' || is_nullable FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = 'notifications' ORDER BY ordinal_position`)
	if err != nil {
		t.Fatal(err)
	}
	cols, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	wantCols := []string{"id uuid NO", "user_id uuid NO", "event_type text NO", "title text NO", "body text NO",
		"data jsonb YES", "created_at timestamp with time zone NO"}
	if !reflect.DeepEqual(cols[:min(len(cols), len(wantCols))], wantCols) {
		t.Errorf("notifications columns: got %q, want %q first", cols, wantCols)
	}
}

// TestHelpOnEveryCommand runs --help on the top level and on every command
// the parser knows, including ones added later.
func TestHelpOnEveryCommand(t *testing.T) {
	var c cli
	k, err := newParser(&c)
	if err != nil {
		t.Fatal(err)
	}
	var paths [][]string
	var walk func(n *kong.Node, path []string)
	walk = func(n *kong.Node, path []string) {
		paths = append(paths, path)
		for _, ch := range n.Children {
			if ch.Hidden {
				continue
			}
			walk(ch, append(slices.Clone(path), ch.Name))
		}
	}
	walk(k.Model.Node, nil)
	for _, p := range paths {
		t.Run(strings.Join(append([]string{"notifyd"}, p...), " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runBinary(t, childEnv(), 30*time.Second, append(slices.Clone(p), "--help")...)
			if code != 0 {
				t.Fatalf("exit code: got %d, want 0\n%s", code, stderr)
			}
			want := "Usage: " + strings.Join(append([]string{"notifyd"}, p...), " ")
			if !strings.Contains(stdout, want) {
				t.Fatalf("output does not contain %q:\n%s", want, stdout)
			}
		})
	}
}

// TestPackageDefaultsReachEveryFlag checks that every flag whose default a
// package owns (a key of settingVars) takes it from there in every command,
// never as a literal that could drift from the package.
func TestPackageDefaultsReachEveryFlag(t *testing.T) {
	vars := settingVars()
	used := map[string]bool{}
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == typ.PkgPath() && f.Tag.Get("kong") != "-" {
				walk(f.Type, path+"."+f.Name)
				continue
			}
			def := f.Tag.Get("default")
			if v, ok := strings.CutPrefix(def, "${"); ok {
				used[strings.TrimSuffix(v, "}")] = true
			}
			name := f.Tag.Get("name")
			key := strings.ReplaceAll(name, "-", "_")
			if _, ok := vars[key]; !ok {
				continue
			}
			if want := "${" + key + "}"; def != want {
				t.Errorf("%s.%s (--%s): default tag %q, want %q", path, f.Name, name, def, want)
			}
		}
	}
	walk(reflect.TypeFor[cli](), "cli")
	for key := range vars {
		if !used[key] {
			t.Errorf("settingVars has %q, which no flag uses", key)
		}
	}
}
