package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// kafkaAuthFlags are how every command reaches a secured cluster.
type kafkaAuthFlags struct {
	TLS           bool   `name:"tls" env:"NOTIFYD_TLS" help:"Connect to the brokers with TLS (implied by the other --tls-* settings)."`
	TLSCAFile     string `name:"tls-ca-file" env:"NOTIFYD_TLS_CA_FILE" help:"PEM file of the CA that signed the brokers' certificates; empty trusts the system's CAs."`
	TLSCertFile   string `name:"tls-cert-file" env:"NOTIFYD_TLS_CERT_FILE" help:"PEM client certificate, for brokers that require one (with --tls-key-file)."`
	TLSKeyFile    string `name:"tls-key-file" env:"NOTIFYD_TLS_KEY_FILE" help:"PEM key of the client certificate."`
	SASLMechanism string `name:"sasl-mechanism" env:"NOTIFYD_SASL_MECHANISM" enum:",plain,scram-sha-256,scram-sha-512" default:"" help:"SASL mechanism: plain, scram-sha-256 or scram-sha-512; empty for none."`
	SASLUsername  string `name:"sasl-username" env:"NOTIFYD_SASL_USERNAME" help:"SASL user name."`
	SASLPassword  string `name:"sasl-password" env:"NOTIFYD_SASL_PASSWORD" help:"SASL password; prefer the environment variable, since flags show in the process list. Never logged."`
}

func (f *kafkaAuthFlags) validate() []error {
	var errs []error
	if (f.TLSCertFile == "") != (f.TLSKeyFile == "") {
		errs = append(errs, errors.New("--tls-cert-file and --tls-key-file: give both or neither"))
	}
	for name, path := range map[string]string{"--tls-ca-file": f.TLSCAFile, "--tls-cert-file": f.TLSCertFile, "--tls-key-file": f.TLSKeyFile} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if f.SASLMechanism != "" && (f.SASLUsername == "" || f.SASLPassword == "") {
		errs = append(errs, fmt.Errorf("--sasl-username and --sasl-password: both are needed with --sasl-mechanism %s", f.SASLMechanism))
	}
	if f.SASLMechanism == "" && (f.SASLUsername != "" || f.SASLPassword != "") {
		errs = append(errs, errors.New("--sasl-mechanism: needed when a SASL user name or password is given"))
	}
	if len(errs) == 0 {
		// The files exist: read them now, so that a bad one stops the
		// command before it starts anything.
		if _, err := f.opts(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// checkBrokers reports each --brokers entry that is not host:port.
func checkBrokers(brokers []string) []error {
	var errs []error
	for _, b := range brokers {
		host, port, err := net.SplitHostPort(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("--brokers: %q: want host:port", b))
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			errs = append(errs, fmt.Errorf("--brokers: %q: want host:port with a port from 1 to 65535", b))
		}
	}
	return errs
}

// checkListenAddr reports an address that cannot be listened on as given:
// host:port, the host optional, the port 0 to 65535.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port or :port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: want a port from 0 to 65535", addr)
	}
	return nil
}

// opts are the client options for TLS and SASL.
func (f *kafkaAuthFlags) opts() ([]kgo.Opt, error) {
	var opts []kgo.Opt
	if f.TLS || f.TLSCAFile != "" || f.TLSCertFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if f.TLSCAFile != "" {
			pem, err := os.ReadFile(f.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("--tls-ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--tls-ca-file: %s holds no PEM certificate", f.TLSCAFile)
			}
			cfg.RootCAs = pool
		}
		if f.TLSCertFile != "" {
			cert, err := tls.LoadX509KeyPair(f.TLSCertFile, f.TLSKeyFile)
			if err != nil {
				return nil, fmt.Errorf("--tls-cert-file/--tls-key-file: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	switch f.SASLMechanism {
	case "plain":
		opts = append(opts, kgo.SASL(plain.Auth{User: f.SASLUsername, Pass: f.SASLPassword}.AsMechanism()))
	case "scram-sha-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: f.SASLUsername, Pass: f.SASLPassword}.AsSha256Mechanism()))
	case "scram-sha-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: f.SASLUsername, Pass: f.SASLPassword}.AsSha512Mechanism()))
	}
	return opts, nil
}

// childArgs repeats the settings for a `notifyd run` started by bench; the
// password goes through the child's environment, not its command line.
func (f *kafkaAuthFlags) childArgs() (args, env []string) {
	if f.TLS {
		args = append(args, "--tls")
	}
	for flag, v := range map[string]string{"--tls-ca-file": f.TLSCAFile, "--tls-cert-file": f.TLSCertFile,
		"--tls-key-file": f.TLSKeyFile, "--sasl-mechanism": f.SASLMechanism, "--sasl-username": f.SASLUsername} {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	if f.SASLPassword != "" {
		env = append(env, "NOTIFYD_SASL_PASSWORD="+f.SASLPassword)
	}
	return args, env
}

// kafkaLogger passes the Kafka client's log to slog with its info one
// level down, at debug: it is connection and group chatter, most of a
// start-up's lines otherwise. Its warnings and errors keep their level, and
// its own debug goes below slog's debug.
type kafkaLogger struct{ l *slog.Logger }

func newKafkaLogger(l *slog.Logger) kgo.Logger { return kafkaLogger{l.With("component", "kafka")} }

// kafkaLevels maps the client's levels to slog's, most verbose last.
var kafkaLevels = []struct {
	kgo  kgo.LogLevel
	slog slog.Level
}{
	{kgo.LogLevelError, slog.LevelError},
	{kgo.LogLevelWarn, slog.LevelWarn},
	{kgo.LogLevelInfo, slog.LevelDebug},
	{kgo.LogLevelDebug, slog.LevelDebug - 4},
}

func (k kafkaLogger) Level() kgo.LogLevel {
	lv := kgo.LogLevelNone
	for _, m := range kafkaLevels {
		if k.l.Enabled(context.Background(), m.slog) {
			lv = m.kgo
		}
	}
	return lv
}

func (k kafkaLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	for _, m := range kafkaLevels {
		if m.kgo == level {
			k.l.Log(context.Background(), m.slog, msg, keyvals...)
			return
		}
	}
}
