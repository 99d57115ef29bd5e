// Command notifyd moves in-app notifications from Kafka into PostgreSQL.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/alecthomas/kong"
)

// cli is the command line; each command's flags also read NOTIFYD_*
// environment variables, and a flag given on the command line wins.
type cli struct {
	Run     runCmd     `cmd:"" help:"Consume notifications and write them to PostgreSQL (the service)."`
	Produce produceCmd `cmd:"" help:"Send synthetic notifications (load generator)."`
	Bench   benchCmd   `cmd:"" help:"Measure throughput against the COPY limit, latency and memory, end to end."`
	DLQ     dlqCmd     `cmd:"" name:"dlq" help:"List, inspect and replay dead letters."`
	Migrate migrateCmd `cmd:"" help:"Apply the database schema and report its version."`
	Health  healthCmd  `cmd:"" help:"Exit 0 when a running notifyd answers ready on /readyz (for health checks)."`
	Serve   serveCmd   `cmd:"" help:"Serve the inbox API alone (feed, read state, live stream), for API replicas."`
	Token   tokenCmd   `cmd:"" help:"Print a development bearer token for the inbox API."`
	Version versionCmd `cmd:"" help:"Print the version and build information."`
}

func main() {
	os.Exit(run(os.Args[1:]))
}

// run parses args and runs the command, returning the exit code.
func run(args []string) int {
	unsetEmptyEnv()
	var c cli
	k, err := newParser(&c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "notifyd:", err)
		return exitFailure
	}
	kctx, err := k.Parse(args)
	if err != nil {
		var se *settingsError
		var pe *kong.ParseError
		if errors.As(err, &se) && errors.As(err, &pe) {
			// The log settings themselves were good: a service that logs
			// JSON says this in JSON too.
			if log, ok := commandLogger(pe.Context); ok && jsonLogs(pe.Context) {
				log.Error("bad settings; nothing was started", "errors", strings.Split(se.err.Error(), "\n"))
				return exitUsage
			}
		}
		fmt.Fprintln(os.Stderr, "notifyd:", err)
		if se == nil {
			fmt.Fprintln(os.Stderr, "(see notifyd --help)")
		}
		return exitUsage
	}
	log, logs := commandLogger(kctx)
	ctx, stop := signalContext(log)
	defer stop()
	kctx.BindTo(ctx, (*context.Context)(nil))
	if err := kctx.Run(); err != nil {
		if logs {
			log.Error("exiting on an error", "err", err)
		} else {
			fmt.Fprintln(os.Stderr, "notifyd:", err)
		}
		return exitFailure
	}
	return 0
}

// jsonLogs says whether the selected command logs JSON.
func jsonLogs(kctx *kong.Context) bool {
	if sel := kctx.Selected(); sel != nil && sel.Target.CanAddr() {
		if l, ok := sel.Target.Addr().Interface().(interface{ logFormat() string }); ok {
			return l.logFormat() == "json"
		}
	}
	return false
}

// commandLogger is the selected command's logger and true, or a text
// logger and false for a command without log settings.
func commandLogger(kctx *kong.Context) (*slog.Logger, bool) {
	if sel := kctx.Selected(); sel != nil && sel.Target.CanAddr() {
		if l, ok := sel.Target.Addr().Interface().(interface{ logger() *slog.Logger }); ok {
			return l.logger(), true
		}
	}
	return logFlags{LogLevel: "info", LogFormat: "text"}.logger(), false
}

// signalContext ends the context on the first SIGINT or SIGTERM, for a
// clean shutdown; a second signal exits at once with 128 + its number.
func signalContext(log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		log.Info("shutting down; send the signal again to exit at once", "signal", s.String())
		cancel()
		s = <-sigs
		log.Warn("exiting now without a clean shutdown", "signal", s.String())
		code := exitSignalBase
		if n, ok := s.(syscall.Signal); ok {
			code += int(n)
		}
		os.Exit(code)
	}()
	return ctx, func() { signal.Stop(sigs); cancel() }
}

// unsetEmptyEnv drops notifyd's environment variables that are set but
// empty, so that NOTIFYD_DATABASE_URL="" falls through to DATABASE_URL and
// an empty NOTIFYD_BATCH_SIZE means the default, as an unset one does.
func unsetEmptyEnv() {
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if v == "" && (strings.HasPrefix(k, "NOTIFYD_") || k == "DATABASE_URL") {
			os.Unsetenv(k)
		}
	}
}
