package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/notifyd/notifyd/internal/api"
)

type tokenCmd struct {
	User      string        `name:"user" required:"" help:"The user's UUID (the token's sub)."`
	TTL       time.Duration `name:"ttl" default:"24h" help:"How long the token is valid."`
	APISecret string        `name:"api-secret" env:"NOTIFYD_API_SECRET" help:"The secret the API verifies tokens with (--api-secret of serve or run)."`
}

func (c *tokenCmd) Help() string {
	return `notifyd token prints a bearer token for the inbox API, for development: in
production the user-facing service signs its own (HS256, sub = user UUID, exp).

Example:
  TOKEN=$(notifyd token --user 6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11 --api-secret "$SECRET")`
}

func (c *tokenCmd) validate() error {
	var errs []error
	if u, err := uuid.Parse(c.User); err != nil || len(c.User) != 36 || u == uuid.Nil {
		errs = append(errs, fmt.Errorf("--user: %q is not a user's UUID", c.User))
	}
	if c.TTL <= 0 {
		errs = append(errs, fmt.Errorf("--ttl: must be positive, got %s", c.TTL))
	}
	if len(c.APISecret) < 16 {
		errs = append(errs, errors.New("--api-secret: required, at least 16 bytes (the API's secret)"))
	}
	return errors.Join(errs...)
}

// Run prints the token; its settings were checked when they were parsed.
func (c *tokenCmd) Run(context.Context) error {
	tok, err := api.Token([]byte(c.APISecret), uuid.MustParse(c.User), c.TTL, time.Now())
	if err != nil {
		return err
	}
	fmt.Println(tok)
	return nil
}
