package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/postgres"
)

// Table is where dead letters are kept in the database; it is the Topic of
// the records ReadTable returns, whose Offset is the letter's id there.
const Table = "notifyd_dead_letters"

// ReadTable returns the dead letters of dlqTopic kept in the database: the
// ones the topic refused for good, and the ones the relay has not published
// yet. Each Record is the letter as it would be published, kept at
// Table/0/<id>; markers in the topic (replays) are paired with it as
// ReadTopic pairs them with the topic's letters. A database whose schema
// has no dead-letter table yet holds none.
func ReadTable(ctx context.Context, pool *pgxpool.Pool, cl *kgo.Client, dlqTopic string) ([]Entry, error) {
	rows, err := pool.Query(ctx, `
		SELECT id, attempts, created_at, source_topic, source_partition, source_offset, source_timestamp,
			class, reason, key, value, headers, coalesce(kept_reason, '')
		FROM notifyd_dead_letters WHERE dlq_topic = $1 ORDER BY id`, dlqTopic)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", Table, err)
	}
	var out []Entry
	for rows.Next() {
		var id int64
		var attempts int
		var at time.Time
		var l postgres.DeadLetter
		var hs []byte
		var kept string
		if err := rows.Scan(&id, &attempts, &at, &l.Topic, &l.Partition, &l.Offset, &l.Timestamp,
			&l.Class, &l.Reason, &l.Key, &l.Value, &hs, &kept); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read %s: %w", Table, err)
		}
		if l.Headers, err = postgres.DecodeHeaders(hs); err != nil {
			rows.Close()
			return nil, err
		}
		r := FromStored(dlqTopic, l, max(attempts, 1))
		r.Topic, r.Partition, r.Offset, r.Timestamp = Table, 0, id, at
		out = append(out, Entry{Record: r, Kept: kept})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", Table, err)
	}
	if len(out) == 0 || cl == nil {
		return out, nil
	}
	// Replays of these letters are recorded by markers in the topic.
	replays := map[string][]Replay{}
	err = ReadAll(ctx, cl, dlqTopic, func(r *kgo.Record) error {
		addReplay(replays, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	attachReplays(out, replays)
	return out, nil
}
