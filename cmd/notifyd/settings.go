package main

// Settings: how the command line becomes the packages' Configs.
//
// To add a setting:
//
//  1. In the package that uses it: a Config field whose zero value means
//     the default, an exported Default… constant that the package applies,
//     and a check in the Config's Validate whose message starts with the
//     flag ("--batch-size: must be at least 1, got -5").
//  2. In settingVars below: the default, under the flag's name with '_'
//     for '-'; the flag's tag reads it as default:"${batch_size}", so the
//     command line, --help and docs/configuration.md show the package's own
//     value. A setting only the command has keeps its default in the tag.
//  3. Tag the flag nonzero:"true" when 0 would silently mean the default in
//     the Config: on the command line, where the default is shown, 0 is a
//     mistake and is refused.
//  4. Copy the flag into the Config where the command builds it (e.g.
//     runCmd.pipelineConfig), and regenerate the reference:
//     go test ./cmd/notifyd -run TestConfigurationReference -update
//
// A setting that several commands share lives in one embedded struct
// (dbFlags for run and migrate, kafkaAuthFlags for every Kafka client), so
// that each command parses, checks and documents it alike.
//
// Every command's settings are checked while the command line is parsed
// (cli.AfterApply), before the command starts anything: the nonzero flags,
// then the command's validate method, which calls each Config's Validate
// and checks what only the command knows (addresses, files). A bad
// setting exits with exitUsage, naming the flag.

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/alecthomas/kong"

	"github.com/notifyd/notifyd/internal/admin"
	"github.com/notifyd/notifyd/internal/api"
	"github.com/notifyd/notifyd/internal/broker"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/pipeline"
	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/retry"
)

// Exit codes, documented in docs/configuration.md.
const (
	exitFailure = 1 // a runtime failure: a dependency failed or went away
	exitUsage   = 2 // a bad setting, flag or command; nothing was started
	// A second SIGINT or SIGTERM exits at once with 128 + the signal's
	// number (130, 143), as a shell reports a process killed by it.
	exitSignalBase = 128
)

// settingVars are the defaults that packages own, for the flags' default
// tags.
func settingVars() kong.Vars {
	return kong.Vars{
		"topic":                 pipeline.DefaultTopic,
		"group":                 pipeline.DefaultGroup,
		"batch_size":            strconv.Itoa(pipeline.DefaultBatchSize),
		"flush_interval":        pipeline.DefaultFlushInterval.String(),
		"max_buffered_rows":     strconv.Itoa(pipeline.DefaultMaxBufferedRows),
		"max_buffered_bytes":    strconv.Itoa(pipeline.DefaultMaxBufferedBytes),
		"start_offset":          pipeline.DefaultStartOffset,
		"writers":               strconv.Itoa(pipeline.DefaultWriters),
		"write_timeout":         pipeline.DefaultWriteTimeout.String(),
		"shutdown_timeout":      pipeline.DefaultShutdownTimeout.String(),
		"retry_max_retries":     strconv.Itoa(retry.DefaultRetries),
		"retry_initial_backoff": retry.DefaultInitial.String(),
		"retry_max_backoff":     retry.DefaultMax.String(),
		"breaker_threshold":     strconv.Itoa(retry.DefaultBreakerThreshold),
		"breaker_timeout":       retry.DefaultBreakerTimeout.String(),
		"max_event_type_bytes":  strconv.Itoa(notification.DefaultMaxEventTypeBytes),
		"max_title_chars":       strconv.Itoa(notification.DefaultMaxTitleChars),
		"max_body_chars":        strconv.Itoa(notification.DefaultMaxBodyChars),
		"max_data_bytes":        strconv.Itoa(notification.DefaultMaxDataBytes),
		"db_max_conns":          strconv.Itoa(postgres.DefaultMaxConns),
		"partition_interval":    postgres.DefaultPartitionInterval.String(),
		"dedupe_window":         postgres.DefaultDedupeWindow.String(),
		"metrics_addr":          admin.DefaultAddr,
		"serve_api_addr":        api.DefaultAddr, // serve's; run serves no API unless given one
		"api_count_cap":         strconv.Itoa(api.DefaultCountCap),
		// Where the commands that talk to a running `notifyd run` find its
		// embedded broker.
		"embedded_broker": "127.0.0.1:" + strconv.Itoa(broker.DefaultPort),
	}
}

// newParser builds the command line over c, as main and the tests use it.
func newParser(c *cli, opts ...kong.Option) (*kong.Kong, error) {
	return kong.New(c, append([]kong.Option{
		kong.Name("notifyd"),
		kong.Description("notifyd moves in-app notifications from a Kafka topic into a PostgreSQL table, exactly once."),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		settingVars(),
	}, opts...)...)
}

// validator is a command that checks its settings beyond what the flags'
// types and enums do.
type validator interface{ validate() error }

// AfterApply checks the selected command's settings once they are parsed,
// before the command runs; an error here is a parse error, and exits with
// exitUsage.
func (c *cli) AfterApply(kctx *kong.Context) error {
	var errs []error
	for _, f := range kctx.Flags() {
		if f.Tag.Has("nonzero") && f.Target.IsValid() && f.Target.IsZero() {
			errs = append(errs, fmt.Errorf("--%s: must not be 0 (the default is %s)", f.Name, f.Default))
		}
	}
	if sel := kctx.Selected(); sel != nil && sel.Target.CanAddr() {
		if v, ok := sel.Target.Addr().Interface().(validator); ok {
			if err := v.validate(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return &settingsError{err}
	}
	return nil
}

// settingsError is one or more bad settings, one per line.
type settingsError struct{ err error }

func (e *settingsError) Error() string { return "bad settings:\n" + e.err.Error() }
func (e *settingsError) Unwrap() error { return e.err }
