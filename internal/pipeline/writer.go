package pipeline

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/retry"
)

// batch is what one write takes from the buffer.
type batch struct {
	trigger string
	ranges  []postgres.Range
	gens    map[int32]uint64
	rows    []notification.Notification
	rowRecs []*kgo.Record // the record of each row, for dead letters
	dead    []*kgo.Record // dead letters of messages that failed to decode or validate
	classes map[notification.Class]int
	stamps  []time.Time // record timestamps, for end-to-end latency
	parts   []int32     // the partition of each stamp
	sent    bool        // dead letters published
}

// writeLoop writes a batch each time the consume loop says one is ready;
// once stop is closed it writes what is left and returns.
func (p *Pipeline) writeLoop(ctx context.Context, stop <-chan struct{}) error {
	for {
		select {
		case <-p.ready:
			if err := p.flush(ctx, ""); err != nil {
				return err
			}
		case <-stop:
			return p.flush(ctx, "shutdown")
		}
	}
}

// flush takes everything buffered and writes it.
func (p *Pipeline) flush(ctx context.Context, trigger string) error {
	b := p.take(trigger)
	if b == nil {
		return nil
	}
	defer p.endWrite()
	return p.write(ctx, b)
}

// take moves all buffered messages into a batch.
func (p *Pipeline) take(trigger string) *batch {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rows == 0 {
		return nil
	}
	if trigger == "" {
		trigger = p.trigger(true)
	}
	b := &batch{trigger: trigger, gens: make(map[int32]uint64), classes: make(map[notification.Class]int)}
	for id, ps := range p.parts {
		if len(ps.entries) == 0 {
			continue
		}
		last := ps.entries[len(ps.entries)-1].rec.Offset
		b.ranges = append(b.ranges, postgres.Range{Partition: id, From: ps.stored, To: last + 1})
		b.gens[id] = ps.gen
		for _, e := range ps.entries {
			b.stamps = append(b.stamps, e.rec.Timestamp)
			b.parts = append(b.parts, id)
			if e.bad != nil {
				b.dead = append(b.dead, dlq.Letter(p.cfg.DLQTopic, e.rec, string(e.bad.Class), e.bad.Error(), 1))
				b.classes[e.bad.Class]++
				continue
			}
			b.rows = append(b.rows, e.n)
			b.rowRecs = append(b.rowRecs, e.rec)
		}
		ps.entries = nil
	}
	p.rows, p.bytes = 0, 0
	p.inflight = make(chan struct{})
	p.m.bufferedRows.Set(0)
	p.m.bufferedBytes.Set(0)
	select {
	case p.space <- struct{}{}:
	default:
	}
	return b
}

func (p *Pipeline) endWrite() {
	p.mu.Lock()
	if p.inflight != nil {
		close(p.inflight)
		p.inflight = nil
	}
	p.mu.Unlock()
}

// write commits b, whatever it takes: transient failures are retried with
// backoff, the breaker paces attempts while the database is down, fenced
// partitions are dropped from the batch and re-read. It returns only on
// success or when ctx ends.
func (p *Pipeline) write(ctx context.Context, b *batch) error {
	p.m.writes.WithLabelValues(b.trigger).Inc()
	for len(b.ranges) > 0 {
		if !b.sent {
			if err := p.retryForever(ctx, "dlq", func(ctx context.Context) error {
				return p.dlq.Publish(ctx, b.dead...)
			}); err != nil {
				return err
			}
			b.sent = true
		}
		start := time.Now()
		var res postgres.Result
		err := p.breaker.Do(func() error {
			return p.cfg.Retry.Do(ctx, func(ctx context.Context) error {
				wctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
				defer cancel()
				var err error
				res, err = p.store.Write(wctx, &postgres.Batch{
					Group: p.cfg.Group, Topic: p.cfg.Topic, Ranges: b.ranges, Rows: b.rows,
				}, p.rejecter(b))
				var fe *postgres.FencedError
				if errors.As(err, &fe) {
					return retry.Excluded(retry.Permanent(err))
				}
				return err
			}, func(err error, wait time.Duration) {
				p.m.retries.WithLabelValues("database").Inc()
				p.log.Warn("write failed; retrying", "rows", len(b.rows), "wait", wait, "error", err)
			})
		})
		var fe *postgres.FencedError
		switch {
		case err == nil:
			p.committed(ctx, b, res, time.Since(start))
			return nil
		case errors.As(err, &fe):
			if err := p.fence(ctx, b, fe.Partitions); err != nil {
				return err
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, retry.ErrOpen):
			// The breaker lets a probe through once its timeout has passed;
			// look again soon so that recovery is noticed quickly.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(min(p.breaker.Timeout(), 100*time.Millisecond)):
			}
		default:
			p.log.Error("write failed after retries; trying again", "rows", len(b.rows), "breaker", p.breaker.State().String(), "error", err)
		}
	}
	return nil
}

// rejecter dead-letters rows the database refused for their data.
func (p *Pipeline) rejecter(b *batch) func(context.Context, []postgres.Rejected) error {
	return func(ctx context.Context, rej []postgres.Rejected) error {
		recs := make([]*kgo.Record, len(rej))
		for i, r := range rej {
			recs[i] = dlq.Letter(p.cfg.DLQTopic, b.rowRecs[r.Index], string(notification.ClassStore),
				"the database refused the row: "+r.Err.Error(), 1)
		}
		if err := p.dlq.Publish(ctx, recs...); err != nil {
			// The broker's failure says nothing of the database's health.
			return retry.Excluded(err)
		}
		return nil
	}
}

// committed records a successful write.
func (p *Pipeline) committed(ctx context.Context, b *batch, res postgres.Result, took time.Duration) {
	pos := make(map[int32]int64, len(b.ranges))
	lag := make(map[int32]int64, len(b.ranges))
	p.mu.Lock()
	for _, r := range b.ranges {
		if ps := p.parts[r.Partition]; ps != nil && ps.gen == b.gens[r.Partition] {
			ps.stored, ps.floor = r.To, r.To
			pos[r.Partition] = r.To
			lag[r.Partition] = max(ps.hwm-r.To, 0)
		}
	}
	p.mu.Unlock()

	now := time.Now()
	p.m.stored.Add(float64(res.Inserted))
	p.nStored.Add(int64(res.Inserted))
	p.nDead.Add(int64(len(b.dead) + res.Rejected))
	p.nDup.Add(int64(res.Duplicates))
	p.m.duplicates.Add(float64(res.Duplicates))
	p.m.expired.Add(float64(res.Expired))
	for class, n := range b.classes {
		p.m.deadLetters.WithLabelValues(string(class)).Add(float64(n))
	}
	p.m.deadLetters.WithLabelValues(string(notification.ClassStore)).Add(float64(res.Rejected))
	p.m.batchSize.Observe(float64(len(b.stamps)))
	p.m.flushSeconds.Observe(took.Seconds())
	for _, ts := range b.stamps {
		p.m.e2eSeconds.Observe(now.Sub(ts).Seconds())
	}
	for id, o := range pos {
		p.m.storedPosition.WithLabelValues(partLabel(id)).Set(float64(o))
		p.m.lag.WithLabelValues(partLabel(id)).Set(float64(lag[id]))
	}
	if res.Rejected > 0 {
		p.log.Warn("rows refused by the database were dead-lettered", "rejected", res.Rejected, "stored", res.Inserted, "statements", res.Statements)
	}
	p.log.Debug("batch committed", "messages", len(b.stamps), "stored", res.Inserted, "duplicates", res.Duplicates,
		"expired", res.Expired, "dead_letters", len(b.dead)+res.Rejected, "took", took, "trigger", b.trigger)
	p.commitKafka(ctx, pos, false)
	if p.cfg.OnCommit != nil {
		p.cfg.OnCommit(b.stamps, took)
	}
}

// fence handles partitions another writer moved: their stored positions
// are reloaded, their part of the batch and their buffered messages are
// dropped, and the consume loop re-reads them from the stored position.
func (p *Pipeline) fence(ctx context.Context, b *batch, ids []int32) error {
	var stored map[int32]int64
	if err := p.retryForever(ctx, "database", func(ctx context.Context) error {
		var err error
		stored, err = p.store.Claim(ctx, p.cfg.Group, p.cfg.Topic, ids)
		return err
	}); err != nil {
		return err
	}
	p.m.fenced.Add(float64(len(ids)))
	p.log.Warn("partitions were moved by another writer; re-reading them from the stored position", "partitions", stored)

	p.mu.Lock()
	for _, id := range ids {
		ps := p.parts[id]
		if ps == nil || ps.gen != b.gens[id] {
			continue // no longer ours
		}
		ps.stored, ps.floor = stored[id], stored[id]
		p.forget(ps)
		ps.reseek = true
	}
	p.mu.Unlock()

	out := func(part int32) bool { return slices.Contains(ids, part) }
	b.ranges = slices.DeleteFunc(b.ranges, func(r postgres.Range) bool { return out(r.Partition) })
	var rows []notification.Notification
	var recs []*kgo.Record
	for i, r := range b.rowRecs {
		if !out(r.Partition) {
			rows = append(rows, b.rows[i])
			recs = append(recs, r)
		}
	}
	b.rows, b.rowRecs = rows, recs
	var stamps []time.Time
	var parts []int32
	for i, part := range b.parts {
		if !out(part) {
			stamps = append(stamps, b.stamps[i])
			parts = append(parts, part)
		}
	}
	b.stamps, b.parts = stamps, parts
	return nil
}

// retryForever runs op with the retry policy until it succeeds or ctx
// ends: used where giving up would lose or skip messages.
func (p *Pipeline) retryForever(ctx context.Context, target string, op func(context.Context) error) error {
	for {
		err := p.cfg.Retry.Do(ctx, op, func(err error, wait time.Duration) {
			p.m.retries.WithLabelValues(target).Inc()
			p.log.Warn("operation failed; retrying", "target", target, "wait", wait, "error", err)
		})
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.m.retries.WithLabelValues(target).Inc()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
