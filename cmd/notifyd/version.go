package main

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/notifyd/notifyd/internal/postgres"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type versionCmd struct{}

func (versionCmd) Help() string {
	return "Prints notifyd's version, the Go and library versions it was built with, and the\nschema version it migrates to.\n\nExample:\n  notifyd version"
}

func (versionCmd) Run(context.Context) error {
	fmt.Printf("notifyd %s\n", version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Printf("go: %s\n", bi.GoVersion)
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision", "vcs.time", "vcs.modified", "GOOS", "GOARCH":
				fmt.Printf("%s: %s\n", s.Key, s.Value)
			}
		}
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/twmb/franz-go", "github.com/jackc/pgx/v5":
				fmt.Printf("%s: %s\n", d.Path, d.Version)
			}
		}
	}
	fmt.Printf("schema version: %d\n", postgres.LatestVersion())
	return nil
}
