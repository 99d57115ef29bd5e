package main

import (
	"context"
	"fmt"

	"github.com/notifyd/notifyd/internal/postgres"
)

type dbFlags struct {
	DatabaseURL string `name:"database-url" env:"NOTIFYD_DATABASE_URL,DATABASE_URL" help:"PostgreSQL connection string; empty uses the local server as libpq finds it (PG* variables; user postgres when none is given)."`
	DBMaxConns  int32  `name:"db-max-conns" env:"NOTIFYD_DB_MAX_CONNS" default:"${db_max_conns}" nonzero:"true" help:"Connections in the database pool."`
}

func (f dbFlags) config() postgres.Config {
	return postgres.Config{URL: f.DatabaseURL, MaxConns: f.DBMaxConns}
}

type migrateCmd struct {
	dbFlags
}

func (c *migrateCmd) Help() string {
	return "Examples:\n  notifyd migrate\n  notifyd migrate --database-url postgres://notifyd@db:5432/app"
}

// validate names the bad setting as the command line does.
func (f dbFlags) validate() error { return f.config().Validate() }

func (c *migrateCmd) Run(ctx context.Context) error {
	st, err := postgres.Open(ctx, c.config())
	if err != nil {
		return fmt.Errorf("--database-url: %w", err)
	}
	defer st.Close()
	v, err := st.Migrate(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("schema of %s at version %d\n", st, v)
	return nil
}
