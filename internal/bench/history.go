package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/postgres"
)

// history loads cfg.History rows spread over HistorySpan, then drains
// cfg.Messages new messages into the table holding them, and reads "a
// user's latest 20" from it.
func history(ctx context.Context, cfg Config, res *Result, cl *kgo.Client, brokers []string, url, topic string, store *postgres.Store) error {
	log := cfg.Log
	log.Info("loading history", "rows", cfg.History, "span", HistorySpan)
	users, rate, err := loadHistory(ctx, store, cfg.History)
	if err != nil {
		return err
	}
	res.HistoryRows, res.HistoryLoadRowsPerSec = cfg.History, rate
	parts, err := store.Partitions(ctx)
	if err != nil {
		return err
	}
	res.HistoryPartitions = len(parts)

	log.Info("preloading", "messages", cfg.Messages, "topic", topic)
	if err := preload(ctx, cl, topic, 3, cfg.Messages); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	log.Info("draining with notifyd run into the table with history")
	d, err := drain(ctx, cfg, brokers, url, topic, store)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	res.HistoryMsgsPerSec = float64(cfg.Messages) / d.seconds
	res.HistoryRatioToEmpty = res.HistoryMsgsPerSec / res.MsgsPerSec
	res.HistoryRatioToCopyLimit = res.HistoryMsgsPerSec / res.CopyLimitRowsPerSec
	res.HistoryFlushMs = &d.flush

	log.Info("reading a user's latest 20", "users", len(users))
	q, err := readLatency(ctx, store, users)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	res.ReadLatest20Ms = &q
	rows, err := store.Pool().Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+postgres.LatestQuery, users[0], 20)
	if err != nil {
		return fmt.Errorf("explain the read: %w", err)
	}
	res.ReadPlan, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("explain the read: %w", err)
	}
	return nil
}

// loadHistory copies n rows of the benchmark's kind into notifications, in
// the order of their created_at, spread evenly over HistorySpan before now,
// with two connections; then vacuums and analyses, as autovacuum would have
// done over those weeks. It returns a sample of the recipients and the rate
// of the copy.
func loadHistory(ctx context.Context, store *postgres.Store, n int) ([][16]byte, float64, error) {
	const chunk = 50_000
	start := time.Now().Add(-HistorySpan)
	step := HistorySpan / time.Duration(n)
	type job struct{ rows [][]any }
	jobs := make(chan job, 2)
	errs := make(chan error, 2)
	t0 := time.Now()
	for range 2 {
		go func() {
			var err error
			for j := range jobs {
				if err == nil {
					_, err = store.Pool().CopyFrom(ctx, pgx.Identifier{"notifications"},
						[]string{"id", "user_id", "event_type", "title", "body", "data", "created_at"}, pgx.CopyFromRows(j.rows))
				}
			}
			errs <- err
		}()
	}
	var users [][16]byte
	i := 0
	genErr := rowsOf(4, n, func(rows []notification.Notification) error {
		src := make([][]any, len(rows))
		for k, r := range rows {
			var data any
			if r.Data != nil {
				data = string(r.Data)
			}
			c := start.Add(time.Duration(i) * step)
			i++
			src[k] = []any{[16]byte(r.ID), [16]byte(r.UserID), r.EventType, r.Title, r.Body, data,
				pgtype.Timestamptz{Time: c, Valid: true}}
			if len(users) < 1000 && rand.IntN(100) == 0 {
				users = append(users, r.UserID)
			}
		}
		for len(src) > 0 {
			m := min(chunk, len(src))
			select {
			case jobs <- job{src[:m]}:
			case <-ctx.Done():
				return ctx.Err()
			}
			src = src[m:]
		}
		return nil
	})
	close(jobs)
	err1, err2 := <-errs, <-errs
	for _, err := range []error{genErr, err1, err2} {
		if err != nil {
			return nil, 0, err
		}
	}
	rate := float64(n) / time.Since(t0).Seconds()
	if _, err := store.Pool().Exec(ctx, "VACUUM ANALYZE notifications"); err != nil {
		return nil, 0, err
	}
	return users, rate, nil
}

// readLatency times postgres.LatestQuery for each user, three rounds, and
// returns the quantiles of one query's time.
func readLatency(ctx context.Context, store *postgres.Store, users [][16]byte) (Quantiles, error) {
	var samples []float64
	for range 3 {
		for _, u := range users {
			t := time.Now()
			rows, err := store.Pool().Query(ctx, postgres.LatestQuery, u, 20)
			if err != nil {
				return Quantiles{}, err
			}
			for rows.Next() {
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return Quantiles{}, err
			}
			samples = append(samples, float64(time.Since(t).Microseconds())/1000)
		}
	}
	return quantiles(samples), nil
}
