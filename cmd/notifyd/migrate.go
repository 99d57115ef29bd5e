package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/notifyd/notifyd/internal/postgres"
)

type dbFlags struct {
	DatabaseURL string `name:"database-url" env:"NOTIFYD_DATABASE_URL,DATABASE_URL" help:"PostgreSQL connection string; empty uses the local server as libpq finds it (PG* variables; user postgres when none is given)."`
	DBMaxConns  int32  `name:"db-max-conns" env:"NOTIFYD_DB_MAX_CONNS" default:"${db_max_conns}" nonzero:"true" help:"Connections in the database pool."`
}

func (f dbFlags) config() postgres.Config {
	return postgres.Config{URL: f.DatabaseURL, MaxConns: f.DBMaxConns}
}

// storageFlags shape the notifications table; run and migrate both read
// them, since both maintain its partitions.
type storageFlags struct {
	PartitionInterval time.Duration `name:"partition-interval" env:"NOTIFYD_PARTITION_INTERVAL" default:"${partition_interval}" nonzero:"true" help:"Time range of one partition of notifications (at least 1h, whole minutes); partitions are made 7 days (and at least 4 intervals) ahead."`
	Retention         time.Duration `name:"retention" env:"NOTIFYD_RETENTION" default:"0" help:"Drop partitions whose rows are all older than this, and skip messages already older; 0 keeps everything."`
	DedupeWindow      time.Duration `name:"dedupe-window" env:"NOTIFYD_DEDUPE_WINDOW" default:"${dedupe_window}" nonzero:"true" help:"A message sent with an id but no created_at is a duplicate when that id is stored with a created_at within this."`
}

// with sets the storage settings of a store's Config.
func (f storageFlags) with(c postgres.Config) postgres.Config {
	c.PartitionInterval, c.Retention, c.DedupeWindow = f.PartitionInterval, f.Retention, f.DedupeWindow
	return c
}

type migrateCmd struct {
	dbFlags
	storageFlags
}

func (c *migrateCmd) Help() string {
	return `notifyd migrate applies the schema, makes the partitions ahead, applies
--retention, and reports the schema version and the partitions. It is safe to
run from a scheduler (cron, a Kubernetes CronJob) while notifyd run runs, and
is what a role allowed to create tables should run at least daily when notifyd
run has no DDL privilege.

Examples:
  notifyd migrate
  notifyd migrate --database-url postgres://notifyd_owner@db:5432/app --retention 2160h`
}

func (c *migrateCmd) validate() error { return c.with(c.config()).Validate() }

// validate names the bad setting as the command line does.
func (f dbFlags) validate() error { return f.config().Validate() }

func (c *migrateCmd) Run(ctx context.Context) error {
	st, err := postgres.Open(ctx, c.with(c.config()))
	if err != nil {
		return fmt.Errorf("--database-url: %w", err)
	}
	defer st.Close()
	v, err := st.Migrate(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("schema of %s at version %d\n", st, v)
	res, err := st.Maintain(ctx)
	for _, n := range res.Created {
		fmt.Printf("made partition %s\n", n)
	}
	for _, n := range res.Dropped {
		fmt.Printf("dropped partition %s (older than --retention %s)\n", n, c.Retention)
	}
	if err != nil {
		return err
	}
	parts, err := st.Partitions(ctx)
	if err != nil {
		return err
	}
	if len(parts) < 2 {
		return errors.New("notifications has fewer partitions than notifyd makes: the schema is not the one this notifyd made")
	}
	fmt.Printf("partitions: %d of %s, from %s to %s; older rows in %s, later ones in %s\n",
		len(parts)-2, c.PartitionInterval, parts[0].To.Format(time.RFC3339), res.AheadUntil.Format(time.RFC3339),
		parts[0].Name, parts[len(parts)-1].Name)
	return nil
}
