// Command notifyd moves in-app notifications from Kafka into PostgreSQL.
package main

import (
	"context"
	"fmt"
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
	Version versionCmd `cmd:"" help:"Print the version and build information."`
}

func main() {
	unsetEmptyEnv()
	ctx, stop := signalContext()
	defer stop()
	var c cli
	kctx := kong.Parse(&c,
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.Name("notifyd"),
		kong.Description("notifyd moves in-app notifications from a Kafka topic into a PostgreSQL table, exactly once."),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
	)
	err := kctx.Run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "notifyd:", err)
		os.Exit(1)
	}
}

// signalContext ends the context on the first SIGINT or SIGTERM, for a
// clean shutdown; a second signal exits at once.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "notifyd: %s: shutting down (send it again to exit at once)\n", s)
		cancel()
		s = <-sigs
		fmt.Fprintf(os.Stderr, "notifyd: %s again: exiting now\n", s)
		os.Exit(130)
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
