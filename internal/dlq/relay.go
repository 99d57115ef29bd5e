package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/retry"
)

// RefusedForGood reports whether a broker's (or the client's) answer to a
// dead letter means that the topic will never take it: too large for the
// topic, not authorised, an invalid topic, a policy or validation refusal.
// Such a letter is kept in notifyd_dead_letters instead of being retried.
func RefusedForGood(err error) bool {
	for _, e := range []error{kerr.MessageTooLarge, kerr.RecordListTooLarge, kerr.TopicAuthorizationFailed,
		kerr.ClusterAuthorizationFailed, kerr.InvalidTopicException, kerr.PolicyViolation, kerr.InvalidRecord} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// RelayConfig configures a Relay. Zero fields mean the defaults.
type RelayConfig struct {
	Topic string // the dead-letter topic whose pending letters it publishes
	// Opts are the Kafka connection options (brokers, TLS, SASL, logger).
	Opts []kgo.Opt
	// PublishTimeout bounds one round of publishing, during which the
	// round's letters are locked; 0 means 10 s.
	PublishTimeout time.Duration
	// Poll is how often the relay looks for pending letters when nothing
	// wakes it (letters left by a crash, or by another instance); 0 means 5 s.
	Poll time.Duration
	// MaxRoundBytes bounds the keys and values published in one round
	// (at least one letter is taken); 0 means 4 MiB.
	MaxRoundBytes int
	Retry         retry.Policy // backoff after a failed round
}

// Relay publishes the dead letters that write transactions recorded in
// notifyd_dead_letters to the dead-letter topic (a transactional outbox),
// and deletes each one the broker acknowledged. A letter the topic refuses
// for good is kept in the table with the reason.
type Relay struct {
	cfg  RelayConfig
	pool *pgxpool.Pool
	log  *slog.Logger
	wake chan struct{}

	// OnRound, if not nil, is told after each round how many letters were
	// published, kept for good, and failed for now.
	OnRound func(published, kept, failed int)
	// OnRetry, if not nil, is told of each failed round and the wait before the next.
	OnRetry func(err error, wait time.Duration)
}

// NewRelay returns a relay of the letters in pool; it does nothing until Run.
func NewRelay(cfg RelayConfig, pool *pgxpool.Pool, log *slog.Logger) *Relay {
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = 10 * time.Second
	}
	if cfg.Poll == 0 {
		cfg.Poll = 5 * time.Second
	}
	if cfg.MaxRoundBytes == 0 {
		cfg.MaxRoundBytes = 4 << 20
	}
	return &Relay{cfg: cfg, pool: pool, log: log, wake: make(chan struct{}, 1)}
}

// Wake tells the relay that letters were recorded. It never blocks.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run publishes pending letters until ctx ends, then publishes what is
// still pending for at most PublishTimeout (what is left stays in the table
// for the next start). Its producer's record limit is the topic's
// max.message.bytes, read from the brokers first.
func (r *Relay) Run(ctx context.Context) error {
	var cl *kgo.Client
	defer func() {
		if cl == nil {
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PublishTimeout)
		defer cancel()
		for {
			full, err := r.Round(dctx, cl)
			if err != nil || !full {
				break
			}
		}
		cl.Close()
	}()
	bo := r.cfg.Retry.Backoff()
	for ctx.Err() == nil {
		var err error
		full := false
		if cl == nil {
			cl, err = r.client(ctx)
		}
		if err == nil {
			full, err = r.Round(ctx, cl)
		}
		if ctx.Err() != nil {
			return nil
		}
		var wait time.Duration
		switch {
		case err != nil:
			wait = bo.NextBackOff()
			if r.OnRetry != nil {
				r.OnRetry(err, wait)
			}
			r.log.Warn("publishing dead letters failed; they stay in notifyd_dead_letters and are retried",
				"topic", r.cfg.Topic, "wait", wait, "error", err)
		case full:
			bo.Reset()
			continue
		default:
			bo.Reset()
			wait = r.cfg.Poll
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-r.wake:
			if err != nil {
				// A failed round waits out its backoff; a new letter does
				// not make the topic work again.
				select {
				case <-ctx.Done():
				case <-t.C:
				}
			}
		}
		t.Stop()
	}
	return nil
}

// client creates the relay's producer, with a record limit that follows
// the topic's.
func (r *Relay) client(ctx context.Context) (*kgo.Client, error) {
	lctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	limit, err := TopicMaxMessageBytes(lctx, r.cfg.Opts, r.cfg.Topic)
	if err != nil {
		return nil, err
	}
	opts := append([]kgo.Opt{}, r.cfg.Opts...)
	// franz-go refuses a delivery timeout under 1 s; the round's context
	// bounds a publish to PublishTimeout all the same.
	opts = append(opts, kgo.ProducerBatchMaxBytes(limit), kgo.RecordDeliveryTimeout(max(r.cfg.PublishTimeout, time.Second)))
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("dead-letter producer: %w", err)
	}
	r.log.Info("dead-letter relay started", "topic", r.cfg.Topic, "max_message_bytes", limit)
	return cl, nil
}

// TopicMaxMessageBytes is topic's max.message.bytes as the brokers report
// it, within the bounds the Kafka client accepts for its record limit.
func TopicMaxMessageBytes(ctx context.Context, opts []kgo.Opt, topic string) (int32, error) {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return 0, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	v, err := maxMessageBytes(ctx, kadm.NewClient(cl), topic)
	if err != nil {
		return 0, fmt.Errorf("read max.message.bytes of %s: %w", topic, err)
	}
	// Below 512 bytes the client refuses the setting; the broker then
	// refuses what the client lets through.
	return int32(min(max(v, 512), 1<<30)), nil
}

// pending is one letter taken by a round.
type pending struct {
	id       int64
	attempts int
	rec      *kgo.Record
}

// Round publishes one round of pending letters (oldest first, up to
// MaxRoundBytes) and records the outcome in the same transaction that
// locked them. full reports that more letters may be waiting. A letter is
// deleted once acknowledged, kept for good when RefusedForGood, and left
// pending otherwise; an error means the round should be retried later.
func (r *Relay) Round(ctx context.Context, cl *kgo.Client) (full bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	const maxLetters = 500
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("dead-letter table: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit it does nothing
	// Other instances' relays skip the letters locked here.
	rows, err := tx.Query(ctx, `
		SELECT id, coalesce(octet_length(key), 0) + coalesce(octet_length(value), 0)
		FROM notifyd_dead_letters WHERE dlq_topic = $1 AND kept_reason IS NULL
		ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED`, r.cfg.Topic, maxLetters)
	if err != nil {
		return false, fmt.Errorf("dead-letter table: %w", err)
	}
	var ids []int64
	var id, size int64
	budget := int64(r.cfg.MaxRoundBytes)
	locked := 0
	_, err = pgx.ForEachRow(rows, []any{&id, &size}, func() error {
		locked++
		if len(ids) == 0 || budget-size >= 0 {
			ids = append(ids, id)
		}
		budget -= size
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("dead-letter table: %w", err)
	}
	if len(ids) == 0 {
		return false, nil
	}
	// The prefix within budget; letters past it wait for the next round.
	rows, err = tx.Query(ctx, `
		SELECT id, attempts, source_topic, source_partition, source_offset, source_timestamp, class, reason, key, value, headers
		FROM notifyd_dead_letters WHERE id = ANY($1) ORDER BY id`, ids)
	if err != nil {
		return false, fmt.Errorf("dead-letter table: %w", err)
	}
	var letters []pending
	for rows.Next() {
		var p pending
		var l postgres.DeadLetter
		var hs []byte
		if err := rows.Scan(&p.id, &p.attempts, &l.Topic, &l.Partition, &l.Offset, &l.Timestamp, &l.Class, &l.Reason, &l.Key, &l.Value, &hs); err != nil {
			rows.Close()
			return false, fmt.Errorf("dead-letter table: %w", err)
		}
		if l.Headers, err = postgres.DecodeHeaders(hs); err != nil {
			rows.Close()
			return false, err
		}
		p.attempts++
		p.rec = FromStored(r.cfg.Topic, l, p.attempts)
		letters = append(letters, p)
	}
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("dead-letter table: %w", err)
	}

	recs := make([]*kgo.Record, len(letters))
	for i := range letters {
		recs[i] = letters[i].rec
	}
	results := cl.ProduceSync(ctx, recs...)
	errOf := make(map[*kgo.Record]error, len(results))
	for _, res := range results {
		errOf[res.Record] = res.Err
	}
	var done, keptIDs, failedIDs []int64
	var keptWhy, failedWhy []string
	var firstErr error
	for _, p := range letters {
		switch err := errOf[p.rec]; {
		case err == nil:
			done = append(done, p.id)
		case RefusedForGood(err):
			keptIDs = append(keptIDs, p.id)
			keptWhy = append(keptWhy, "the dead-letter topic refused it: "+err.Error())
			r.log.Error("dead-letter topic refused a letter for good; it is kept in notifyd_dead_letters",
				"topic", r.cfg.Topic, "source", Entry{Record: p.rec}.Source(), "id", p.id, "bytes", len(p.rec.Key)+len(p.rec.Value), "error", err)
		default:
			failedIDs = append(failedIDs, p.id)
			failedWhy = append(failedWhy, err.Error())
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	// Record the outcome with a context of its own: the broker has the
	// letters now, and forgetting that would send them again.
	octx, ocancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PublishTimeout)
	defer ocancel()
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM notifyd_dead_letters WHERE id = ANY($1)`, done)
	b.Queue(`UPDATE notifyd_dead_letters d SET attempts = d.attempts + 1, kept_reason = v.why
		FROM unnest($1::bigint[], $2::text[]) AS v(id, why) WHERE d.id = v.id`, keptIDs, keptWhy)
	b.Queue(`UPDATE notifyd_dead_letters d SET attempts = d.attempts + 1, last_error = v.why
		FROM unnest($1::bigint[], $2::text[]) AS v(id, why) WHERE d.id = v.id`, failedIDs, failedWhy)
	if err := tx.SendBatch(octx, b).Close(); err != nil {
		return false, fmt.Errorf("record published dead letters: %w", err)
	}
	if err := tx.Commit(octx); err != nil {
		return false, fmt.Errorf("record published dead letters: %w", err)
	}
	if r.OnRound != nil {
		r.OnRound(len(done), len(keptIDs), len(failedIDs))
	}
	if firstErr != nil {
		return false, fmt.Errorf("publish %d of %d dead letters to %s: %w", len(failedIDs), len(letters), r.cfg.Topic, firstErr)
	}
	return locked == maxLetters || len(ids) < locked, nil
}

// FromStored builds the record of a stored dead letter for topic, with its
// publish attempt in the attempts header.
func FromStored(topic string, l postgres.DeadLetter, attempt int) *kgo.Record {
	src := &kgo.Record{Topic: l.Topic, Partition: l.Partition, Offset: l.Offset, Timestamp: l.Timestamp, Key: l.Key, Value: l.Value}
	for _, h := range l.Headers {
		src.Headers = append(src.Headers, kgo.RecordHeader{Key: string(h.Key), Value: h.Value})
	}
	return Letter(topic, src, l.Class, l.Reason, attempt)
}

// Stored is the form the write transaction records for src's dead letter.
func Stored(src *kgo.Record, class, reason string) postgres.DeadLetter {
	l := postgres.DeadLetter{Topic: src.Topic, Partition: src.Partition, Offset: src.Offset, Timestamp: src.Timestamp,
		Class: class, Reason: reason, Key: src.Key, Value: src.Value}
	for _, h := range src.Headers {
		l.Headers = append(l.Headers, postgres.Header{Key: []byte(h.Key), Value: h.Value})
	}
	return l
}
