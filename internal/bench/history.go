package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
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
	// The empty-table drain's rows are all in today's partition, which the
	// second drain writes into too. Left there, they would have the second
	// drain write into a partition holding 500,000 more rows (indexes twice
	// the size, more of their pages to read and to log whole after a
	// checkpoint) than the first, whereas history sits in the partitions
	// of earlier days: that would measure the size of today's partition,
	// not the history. They go before the history comes, so that today's
	// partition holds what the history puts there.
	if _, err := store.Pool().Exec(ctx, "TRUNCATE notifications"); err != nil {
		return fmt.Errorf("empty the table before the history: %w", err)
	}
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
	checkpoint(ctx, store)
	d, err := drain(ctx, cfg, brokers, url, topic, store)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	res.HistoryMsgsPerSec = float64(cfg.Messages) / d.seconds
	res.HistoryRatioToCopyLimit = res.HistoryMsgsPerSec / res.CopyLimitRowsPerSec
	res.HistoryFlushMs = &d.flush
	res.HistoryCPUMicrosPerMsg = d.cpuSeconds * 1e6 / float64(cfg.Messages)
	res.HistoryDedupeProbeShare = d.probeShare

	log.Info("reading a user's latest 20", "users", len(users))
	q, err := readLatency(ctx, store, users)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	res.ReadLatest20Ms = &q
	res.ReadPlan, res.ReadPlanCache, err = readPlan(ctx, store, users[0])
	if err != nil {
		return fmt.Errorf("explain the read: %w", err)
	}

	// The empty-table drain once more, after the drain with history: this
	// machine's speed drifts by tens of percent within minutes, and the
	// ratio to the mean of one empty-table drain before and one after
	// measures the history, not the drift, as bench --api's ingest ratio
	// does. TRUNCATE leaves the table as the first drain found it: every
	// partition in place, all of them empty.
	if _, err := store.Pool().Exec(ctx, "TRUNCATE notifications"); err != nil {
		return fmt.Errorf("empty the table after the history: %w", err)
	}
	after := topic + "-empty"
	log.Info("preloading", "messages", cfg.Messages, "topic", after)
	if err := preload(ctx, cl, after, 5, cfg.Messages); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	log.Info("draining with notifyd run into the emptied table")
	checkpoint(ctx, store)
	if d, err = drain(ctx, cfg, brokers, url, after, store); err != nil {
		return fmt.Errorf("drain into the emptied table: %w", err)
	}
	res.EmptyAfterMsgsPerSec = float64(cfg.Messages) / d.seconds
	res.HistoryRatioToEmpty = res.HistoryMsgsPerSec / ((res.MsgsPerSec + res.EmptyAfterMsgsPerSec) / 2)
	return nil
}

// readPlan is the plan the server runs for postgres.LatestQuery as a
// prepared statement once its plan cache has chosen (after five custom
// plans), as readLatency's statements run it, and which plan that is:
// "generic" (planned once) or "custom" (planned at every execution).
func readPlan(ctx context.Context, store *postgres.Store, user [16]byte) ([]string, string, error) {
	conn, err := store.Pool().Acquire(ctx)
	if err != nil {
		return nil, "", err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "PREPARE notifyd_bench_latest(uuid) AS "+postgres.LatestQuery); err != nil {
		return nil, "", err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "DEALLOCATE notifyd_bench_latest") //nolint:errcheck // best effort
	exec := "EXECUTE notifyd_bench_latest('" + uuid.UUID(user).String() + "')"
	for range 6 {
		if _, err := conn.Exec(ctx, exec); err != nil {
			return nil, "", err
		}
	}
	rows, err := conn.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+exec)
	if err != nil {
		return nil, "", err
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, "", err
	}
	var generic, custom int64
	if err := conn.QueryRow(ctx, "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'notifyd_bench_latest'").
		Scan(&generic, &custom); err != nil {
		return nil, "", err
	}
	kind := "custom"
	if generic > 0 {
		kind = "generic"
	}
	return plan, kind, nil
}

// loadHistory copies n rows of the benchmark's kind into notifications, in
// the order of their created_at, spread evenly over HistorySpan before now,
// with two connections; then vacuums and analyses it, as autovacuum would
// have the weeks of a real history. The rows are 50,000 decoded loadgen
// messages reused with new ids, so that the database, not the generator,
// sets the pace. It returns a sample of the recipients and the rate of the
// copy.
func loadHistory(ctx context.Context, store *postgres.Store, n int) ([][16]byte, float64, error) {
	const chunk = 50_000
	var tmpl []notification.Notification
	if err := rowsOf(4, min(n, chunk), func(rows []notification.Notification) error {
		tmpl = append(tmpl, rows...)
		return nil
	}); err != nil {
		return nil, 0, err
	}
	start := time.Now().Add(-HistorySpan)
	step := HistorySpan / time.Duration(n)
	jobs := make(chan [][]any, 2)
	errs := make(chan error, 2)
	t0 := time.Now()
	for range 2 {
		go func() {
			var err error
			for rows := range jobs {
				if err == nil {
					_, err = store.Pool().CopyFrom(ctx, pgx.Identifier{"notifications"},
						[]string{"id", "user_id", "event_type", "title", "body", "data", "created_at"}, pgx.CopyFromRows(rows))
				}
			}
			errs <- err
		}()
	}
	var users [][16]byte
	rng := rand.New(rand.NewPCG(4, 4))
	var sendErr error
	for i := 0; i < n && sendErr == nil; {
		m := min(chunk, n-i)
		src := make([][]any, m)
		for k := range src {
			r := &tmpl[(i+k)%len(tmpl)]
			var id [16]byte
			binary.LittleEndian.PutUint64(id[:8], rng.Uint64())
			binary.LittleEndian.PutUint64(id[8:], rng.Uint64())
			id[6], id[8] = id[6]&0x0f|0x40, id[8]&0x3f|0x80
			var data any
			if r.Data != nil {
				data = string(r.Data)
			}
			src[k] = []any{id, [16]byte(r.UserID), r.EventType, r.Title, r.Body, data,
				pgtype.Timestamptz{Time: start.Add(time.Duration(i+k) * step), Valid: true}}
			if len(users) < 1000 && rng.IntN(100) == 0 {
				users = append(users, r.UserID)
			}
		}
		select {
		case jobs <- src:
		case <-ctx.Done():
			sendErr = ctx.Err()
		}
		i += m
	}
	close(jobs)
	err1, err2 := <-errs, <-errs
	for _, err := range []error{sendErr, err1, err2} {
		if err != nil {
			return nil, 0, err
		}
	}
	rate := float64(n) / time.Since(t0).Seconds()
	// What autovacuum would have done to weeks of history long before: set
	// the visibility map and hint bits, and given the planner statistics.
	// (Left undone, the second drain would share the CPUs with the vacuum of
	// 67 freshly loaded partitions, where autovacuum is on.)
	if _, err := store.Pool().Exec(ctx, "VACUUM (ANALYZE) notifications"); err != nil {
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
			// A prepared statement: pgx keeps one per connection.
			rows, err := store.Pool().Query(ctx, postgres.LatestQuery, u)
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
