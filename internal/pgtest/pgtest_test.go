package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// serverConfig is the test server's configuration, connecting to database db.
func serverConfig(t *testing.T, db string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(URL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = db
	return cfg
}

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// admin runs sql on the server's postgres database.
func admin(t *testing.T, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, serverConfig(t, maintenanceDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestEnsureDatabaseCreatesAMissingOne races several callers, as test
// binaries of several packages do, on a database that does not exist: each
// must succeed, and the database must then exist.
func TestEnsureDatabaseCreatesAMissingOne(t *testing.T) {
	name := randomName("notifyd_pgtest_")
	cfg := serverConfig(t, name)
	t.Cleanup(func() { admin(t, "DROP DATABASE IF EXISTS "+name) })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = EnsureDatabase(ctx, cfg.Copy()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect to the database made: %v", err)
	}
	conn.Close(ctx)
	// An existing database is left as it is.
	if err := EnsureDatabase(ctx, cfg); err != nil {
		t.Errorf("second call: %v", err)
	}
}

// TestEnsureDatabaseSaysWhyItCannot checks the errors of a server that does
// not answer and of a user who may not create databases.
func TestEnsureDatabaseSaysWhyItCannot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("no server", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		cfg, err := pgx.ParseConfig("postgres://postgres@" + addr + "/test?sslmode=disable&connect_timeout=5")
		if err != nil {
			t.Fatal(err)
		}
		err = EnsureDatabase(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "NOTIFYD_TEST_DATABASE_URL") || !strings.Contains(err.Error(), addr[strings.LastIndexByte(addr, ':')+1:]) {
			t.Errorf("got %v, want an error naming the port and NOTIFYD_TEST_DATABASE_URL", err)
		}
	})

	t.Run("no CREATEDB", func(t *testing.T) {
		role := randomName("notifyd_pgtest_role_")
		admin(t, "CREATE ROLE "+role+" LOGIN NOCREATEDB")
		t.Cleanup(func() { admin(t, "DROP ROLE IF EXISTS "+role) })
		db := randomName("notifyd_pgtest_")
		cfg := serverConfig(t, db)
		cfg.User = role
		err := EnsureDatabase(ctx, cfg)
		if err == nil {
			admin(t, "DROP DATABASE IF EXISTS "+db)
			t.Fatal("got nil, want an error: the role may not create databases")
		}
		for _, want := range []string{db, role, "may not create it", "createdb"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("got %q, want it to contain %q", err, want)
			}
		}
	})
}
