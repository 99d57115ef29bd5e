// Package pgtest gives each test a PostgreSQL schema of its own on the real
// server, so that tests can run in parallel against one database.
//
// The server is taken from NOTIFYD_TEST_DATABASE_URL, by default the local
// server (user postgres, database test). The database is created when the
// server says it does not exist, so a server that holds only its
// `postgres` database is enough. A server that cannot be reached, or a
// database that cannot be created, fails the test: it is never skipped.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultURL is the server tests use when NOTIFYD_TEST_DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// maintenanceDB is the database every PostgreSQL server has, from which a
// missing test database is created.
const maintenanceDB = "postgres"

// baseURL is the connection string of the test database as configured.
func baseURL() string {
	if u := os.Getenv("NOTIFYD_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// ready makes sure, once per test binary, that the test database exists.
var ready = sync.OnceValue(func() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(baseURL())
	if err != nil {
		return fmt.Errorf("NOTIFYD_TEST_DATABASE_URL cannot be parsed: %w", err)
	}
	return EnsureDatabase(ctx, cfg)
})

// URL returns the connection string of the test database, creating the
// database first when it is missing. It fails t when the server cannot be
// reached or the database cannot be created.
func URL(t testing.TB) string {
	t.Helper()
	if err := ready(); err != nil {
		t.Fatal(err)
	}
	return baseURL()
}

// EnsureDatabase connects to the database of cfg and, when the server
// answers that it does not exist (SQLSTATE 3D000), creates it through the
// server's `postgres` database. Test binaries that race to create it are
// serialised by an advisory lock, and one that finds it made meanwhile
// takes it as it is. The error says what was tried and what to do.
func EnsureDatabase(ctx context.Context, cfg *pgx.ConnConfig) error {
	where := fmt.Sprintf("PostgreSQL at %s:%d (user %q, database %q)", cfg.Host, cfg.Port, cfg.User, cfg.Database)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		return conn.Close(ctx)
	}
	if !isSQLState(err, "3D000") { // invalid_catalog_name: no such database
		return fmt.Errorf("connect to test %s: %w (start the server, or set NOTIFYD_TEST_DATABASE_URL)", where, err)
	}

	admCfg := cfg.Copy()
	admCfg.Database = maintenanceDB
	adm, err := pgx.ConnectConfig(ctx, admCfg)
	if err != nil {
		return fmt.Errorf("test database %q does not exist, and connecting to database %q of the same server to create it failed: %w "+
			"(create it: createdb -h %s -p %d -U %s %s, or set NOTIFYD_TEST_DATABASE_URL)",
			cfg.Database, maintenanceDB, err, cfg.Host, cfg.Port, cfg.User, cfg.Database)
	}
	defer adm.Close(ctx)
	// The lock is released when the connection closes.
	if _, err := adm.Exec(ctx, "SELECT pg_advisory_lock(hashtext('notifyd pgtest create database'))"); err != nil {
		return fmt.Errorf("lock to create test database %q: %w", cfg.Database, err)
	}
	var exists bool
	if err := adm.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", cfg.Database).Scan(&exists); err != nil {
		return fmt.Errorf("look up test database %q: %w", cfg.Database, err)
	}
	if exists {
		return nil
	}
	_, err = adm.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{cfg.Database}.Sanitize())
	switch {
	case err == nil, isSQLState(err, "42P04"): // duplicate_database: made by a client that does not take the lock
		return nil
	case isSQLState(err, "42501"): // insufficient_privilege
		return fmt.Errorf("test database %q does not exist, and user %q may not create it: %w "+
			"(create it as a user who may: createdb -h %s -p %d -U postgres %s, or set NOTIFYD_TEST_DATABASE_URL)",
			cfg.Database, cfg.User, err, cfg.Host, cfg.Port, cfg.Database)
	default:
		return fmt.Errorf("create test database %q on %s: %w", cfg.Database, where, err)
	}
}

func isSQLState(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// Schema creates a fresh schema, drops it when the test ends, and returns a
// connection string whose search_path is that schema.
func Schema(t testing.TB) string {
	t.Helper()
	base := URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	defer conn.Close(ctx)

	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("create schema %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("connect to drop schema %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+name+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", name, err)
		}
	})

	return withSearchPath(base, name)
}

// Pool opens a pool on a fresh schema and closes it when the test ends.
func Pool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := Schema(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, url
}

func withSearchPath(url, schema string) string {
	if !strings.Contains(url, "://") {
		return url + " search_path=" + schema // key=value pairs
	}
	if strings.Contains(url, "?") {
		return url + "&search_path=" + schema
	}
	return url + "?search_path=" + schema
}
