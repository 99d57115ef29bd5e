package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// OtherGroups returns the consumer groups other than group that hold
// positions of topic in this database: each of them stores the topic's
// messages into the same table.
func (s *Store) OtherGroups(ctx context.Context, topic, group string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT DISTINCT consumer_group FROM notifyd_offsets
		WHERE topic = $1 AND consumer_group <> $2 ORDER BY 1`, topic, group)
	if err != nil {
		return nil, fmt.Errorf("look for other consumer groups of %s: %w", topic, err)
	}
	groups, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look for other consumer groups of %s: %w", topic, err)
	}
	return groups, nil
}
