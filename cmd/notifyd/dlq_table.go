package main

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/postgres"
)

// tableLetters reads the dead letters kept in the database for the
// dead-letter topic (refused by the topic, or not yet published), so that
// every dlq command covers both places.
func (f *dlqFlags) tableLetters(ctx context.Context, cl *kgo.Client) ([]dlq.Entry, error) {
	st, err := postgres.Open(ctx, f.config())
	if err != nil {
		return nil, fmt.Errorf("--database-url: dead letters are kept in the table %s too: %w", dlq.Table, err)
	}
	defer st.Close()
	return dlq.ReadTable(ctx, st.Pool(), cl, f.dlqTopic())
}
