package pipeline

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/retry"
)

// writer is one writing goroutine: it takes a batch from in, writes it
// and reports on Pipeline.results. It writes the partitions whose id
// modulo the number of writers is its id, so that each transaction moves
// only its own partitions' positions.
type writer struct {
	id int
	in chan *batch // capacity 1; closed at the end of Run
	// attempt is when the write attempt in flight began (unix nanos), 0
	// when none: readiness reads it.
	attempt atomicTime

	batch *batch // the batch in flight; owned by the consume goroutine

	// rows and recs are the writer goroutine's own: the store batch's rows
	// and their records, kept from one write to the next so that each
	// write does not allocate them again.
	rows []notification.Notification
	recs []*kgo.Record
}

// batch is what one write takes from the buffer: whole partitions. The
// SQL batch, dead letters, timestamps and counts are derived from them.
type batch struct {
	trigger string
	w       *writer
	parts   []partBatch // in partition order
	readAt  time.Time   // read time of its oldest message
}

// partBatch is one partition's part of a batch.
type partBatch struct {
	id       int32
	gen      uint64 // assignment the entries were read in
	from, to int64  // stored position expected, and the one after the last entry
	entries  []entry
	readAt   time.Time
}

// writeResult is what a writer reports on a batch.
type writeResult struct {
	b      *batch // committed, or (with failed) handed back; fenced partitions removed
	res    postgres.Result
	dead   int // dead letters recorded (not counting rows the database refused)
	took   time.Duration
	fenced map[int32]fencedPart
	failed error // the batch was not written: failed after its retries, or the writers' context ended
	// stopped: failed because the writers' context ended (shutdown), not
	// because of the batch. A write attempt's own timeout is a failure of
	// the batch, although its error wraps context.DeadlineExceeded too.
	stopped bool
}

// fencedPart is a partition another writer moved: its stored position.
type fencedPart struct {
	gen    uint64
	stored int64
}

func (b *batch) ids() []int32 {
	ids := make([]int32, len(b.parts))
	for i := range b.parts {
		ids[i] = b.parts[i].id
	}
	return ids
}

// messages is how many messages the batch holds.
func (b *batch) messages() int {
	n := 0
	for i := range b.parts {
		n += len(b.parts[i].entries)
	}
	return n
}

// dispatch gives each idle writer the buffered partitions it writes, when
// the batch policy says to (or always, when all is set: at shutdown).
func (c *core) dispatch(emptyPoll, all bool) {
	now := time.Now()
	for _, w := range c.p.writers {
		if w.batch != nil {
			continue
		}
		b := c.take(w, emptyPoll, all, now)
		if b == nil {
			continue
		}
		w.batch = b
		w.in <- b // never blocks: the writer is idle
	}
}

// take moves the buffered partitions of writer w into a batch, if the
// batch policy says their messages should be written now. A partition
// that was set aside is left out until its time comes; then it is written
// alone, so that it cannot hold back the others again.
func (c *core) take(w *writer, emptyPoll, all bool, now time.Time) *batch {
	var ids []int32
	rows := 0
	var oldest time.Time
	caught := emptyPoll
	if !caught {
		caught = true
	}
	var retry int32 = -1
	for id, ps := range c.parts {
		if c.writerOf(id) != w.id || len(ps.entries) == 0 {
			continue
		}
		if ps.failures > 0 {
			if !all && now.Before(ps.aside) {
				continue
			}
			retry = id
		}
		ids = append(ids, id)
		rows += len(ps.entries)
		if oldest.IsZero() || ps.readAt.Before(oldest) {
			oldest = ps.readAt
		}
		if !ps.caught {
			caught = emptyPoll
		}
	}
	if len(ids) == 0 {
		return nil
	}
	trigger := "shutdown"
	if !all {
		trigger = policy{size: c.p.cfg.BatchSize, interval: c.p.cfg.FlushInterval}.trigger(rows, now.Sub(oldest), caught)
		if trigger == "" {
			return nil
		}
	}
	if retry >= 0 && !all {
		trigger, ids = "retry", []int32{retry}
	}
	slices.Sort(ids)
	ids = c.p.gate.begin(ids)
	if len(ids) == 0 {
		return nil
	}
	b := &batch{trigger: trigger, w: w}
	for _, id := range ids {
		ps := c.parts[id]
		last := ps.entries[len(ps.entries)-1].rec.Offset
		b.parts = append(b.parts, partBatch{id: id, gen: ps.gen, from: ps.stored, to: last + 1, entries: ps.entries, readAt: ps.readAt})
		if b.readAt.IsZero() || ps.readAt.Before(b.readAt) {
			b.readAt = ps.readAt
		}
		for _, e := range ps.entries {
			c.rows--
			c.bytes -= len(e.rec.Key) + len(e.rec.Value)
		}
		ps.entries = nil
		ps.writing = true
	}
	c.p.m.bufferedRows.Set(float64(c.rows))
	c.p.m.bufferedBytes.Set(float64(c.bytes))
	return b
}

// collect handles every write result that is ready, without waiting.
func (c *core) collect() {
	for {
		select {
		case r := <-c.p.results:
			c.result(r)
		default:
			return
		}
	}
}

// result applies a writer's report to the partition table: committed
// positions, fenced partitions to re-read, or a failed batch set aside.
func (c *core) result(r *writeResult) {
	p := c.p
	b := r.b
	b.w.batch = nil
	now := time.Now()
	for id, f := range r.fenced {
		ps := c.parts[id]
		if ps == nil || ps.gen != f.gen {
			continue // no longer ours
		}
		ps.writing = false
		ps.stored, ps.floor = f.stored, f.stored
		c.forget(ps)
		ps.reseek = true
	}
	if r.failed != nil {
		for _, pb := range b.parts {
			ps := c.parts[pb.id]
			if ps == nil || ps.gen != pb.gen {
				continue
			}
			ps.writing = false
			// Back in front of what was read since, in order.
			ps.entries = append(pb.entries, ps.entries...)
			ps.readAt = pb.readAt
			for _, e := range pb.entries {
				c.rows++
				c.bytes += len(e.rec.Key) + len(e.rec.Value)
			}
			if r.stopped {
				continue // shutdown
			}
			ps.failures++
			wait := p.cfg.Retry.Backoff()
			var d time.Duration
			for range min(ps.failures, 16) {
				d = wait.NextBackOff()
			}
			ps.aside = now.Add(d)
			p.m.setAside.Inc()
			p.log.Warn("partition set aside: its write failed after retries; the other partitions go on, and it is tried again alone",
				"partition", pb.id, "failures", ps.failures, "retry_in", d, "error", r.failed)
		}
		p.m.bufferedRows.Set(float64(c.rows))
		p.m.bufferedBytes.Set(float64(c.bytes))
		return
	}
	pos := make(map[int32]int64, len(b.parts))
	for _, pb := range b.parts {
		ps := c.parts[pb.id]
		if ps == nil || ps.gen != pb.gen {
			continue
		}
		ps.writing = false
		ps.stored, ps.floor = pb.to, pb.to
		if ps.failures > 0 {
			p.log.Info("partition set aside before is written again", "partition", pb.id, "failures", ps.failures)
		}
		ps.failures = 0
		pos[pb.id] = pb.to
		p.m.storedPosition.WithLabelValues(partLabel(pb.id)).Set(float64(pb.to))
		p.m.lag.WithLabelValues(partLabel(pb.id)).Set(float64(max(ps.hwm-pb.to, 0)))
	}
	// The batch is done with, whether its partitions are still held or
	// not: the writer has released its rows and dead letters, so its
	// records are recycled, and its entry slices are kept, emptied, for the
	// next buffers (at most one per held partition).
	for _, pb := range b.parts {
		for _, e := range pb.entries {
			e.rec.Recycle()
		}
		if len(c.spare) < len(c.parts) {
			clear(pb.entries)
			c.spare = append(c.spare, pb.entries[:0])
		}
	}
	p.commitKafka(context.Background(), pos, false)
}

// sql derives the store's batch from b, into w's rows and recs; they are
// in use until the write ends (release).
func (p *Pipeline) sql(w *writer, b *batch) *postgres.Batch {
	sb := &postgres.Batch{Group: p.cfg.Group, Topic: p.cfg.Topic, DLQTopic: p.cfg.DLQTopic}
	n := b.messages()
	sb.Rows = slices.Grow(w.rows[:0], n)
	recs := slices.Grow(w.recs[:0], n) // the record of each row, for its dead letter
	for i := range b.parts {
		pb := &b.parts[i]
		sb.Ranges = append(sb.Ranges, postgres.Range{Partition: pb.id, From: pb.from, To: pb.to})
		for _, e := range pb.entries {
			if e.bad != nil {
				sb.Dead = append(sb.Dead, dlq.Stored(e.rec, string(e.bad.Class), e.bad.Error()))
				continue
			}
			sb.Rows = append(sb.Rows, e.n)
			recs = append(recs, e.rec)
		}
	}
	sb.Refused = func(i int, err error) postgres.DeadLetter {
		return dlq.Stored(recs[i], string(notification.ClassStore), "the database refused the row: "+err.Error())
	}
	w.rows, w.recs = sb.Rows, recs
	return sb
}

// release empties w's rows and recs once a write has ended, so that they
// keep no message alive.
func (w *writer) release() {
	clear(w.rows)
	clear(w.recs)
	w.rows, w.recs = w.rows[:0], w.recs[:0]
}

// writeLoop writes each batch w is given until in is closed.
func (p *Pipeline) writeLoop(ctx context.Context, w *writer) {
	for b := range w.in {
		r := p.write(ctx, w, b)
		r.stopped = r.failed != nil && ctx.Err() != nil
		w.release()
		p.gate.end(b.ids())
		for id := range r.fenced {
			p.gate.end([]int32{id})
		}
		p.results <- r
		if cancel := p.pollCancel.Load(); cancel != nil {
			(*cancel)()
		}
	}
}

// write commits b: transient failures are retried with backoff, the
// breaker paces attempts while the database is down, fenced partitions are
// dropped from the batch and reported. It gives up when the retries are
// used up (the batch is set aside) or ctx ends.
func (p *Pipeline) write(ctx context.Context, w *writer, b *batch) *writeResult {
	p.m.writes.WithLabelValues(b.trigger).Inc()
	r := &writeResult{b: b}
	for len(b.parts) > 0 {
		sb := p.sql(w, b)
		start := time.Now()
		var res postgres.Result
		err := p.breaker.Do(func() error {
			return p.cfg.Retry.Do(ctx, func(ctx context.Context) error {
				wctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
				defer cancel()
				w.attempt.Store(time.Now())
				var err error
				res, err = p.store.Write(wctx, sb)
				w.attempt.Store(time.Time{})
				var fe *postgres.FencedError
				if errors.As(err, &fe) {
					p.lastOK.Store(time.Now().UnixNano())
					return retry.Excluded(retry.Permanent(err))
				}
				if err != nil && ctx.Err() == nil {
					p.lastFailed.Store(time.Now().UnixNano())
				} else if err == nil {
					p.lastOK.Store(time.Now().UnixNano())
				}
				return err
			}, func(err error, wait time.Duration) {
				p.m.retries.WithLabelValues("database").Inc()
				p.log.Warn("write failed; retrying", "rows", len(sb.Rows), "wait", wait, "error", err)
			})
		})
		var fe *postgres.FencedError
		switch {
		case err == nil:
			r.res, r.took, r.dead = res, time.Since(start), len(sb.Dead)
			p.committed(b, sb, res, r.took)
			return r
		case errors.As(err, &fe):
			if err := p.fence(ctx, b, fe.Partitions, r); err != nil {
				r.failed = err
				return r
			}
		case ctx.Err() != nil:
			r.failed = ctx.Err()
			return r
		case errors.Is(err, retry.ErrOpen):
			// The breaker lets a probe through once its timeout has passed;
			// look again soon so that recovery is noticed quickly. The
			// database is down for every partition: nothing to set aside.
			select {
			case <-ctx.Done():
				r.failed = ctx.Err()
				return r
			case <-time.After(min(p.breaker.Timeout(), 100*time.Millisecond)):
			}
		default:
			r.failed = err
			return r
		}
	}
	return r
}

// committed counts a successful write. Metrics are safe for concurrent
// use; the partition table is updated by the consume goroutine (result).
func (p *Pipeline) committed(b *batch, sb *postgres.Batch, res postgres.Result, took time.Duration) {
	if len(sb.Dead) > 0 || res.Rejected > 0 {
		p.relay.Wake()
	}
	now := time.Now()
	p.m.stored.Add(float64(res.Inserted))
	p.nStored.Add(int64(res.Inserted))
	p.nDead.Add(int64(len(sb.Dead) + res.Rejected))
	p.nDup.Add(int64(res.Duplicates))
	p.m.duplicates.Add(float64(res.Duplicates))
	p.m.expired.Add(float64(res.Expired))
	for _, l := range sb.Dead {
		p.m.deadLetters.WithLabelValues(l.Class).Inc()
	}
	p.m.deadLetters.WithLabelValues(string(notification.ClassStore)).Add(float64(res.Rejected))
	p.m.batchSize.Observe(float64(b.messages()))
	p.m.flushSeconds.Observe(took.Seconds())
	if res.Probe > 0 {
		p.m.probeSeconds.Observe(res.Probe.Seconds())
	}
	for i := range b.parts {
		for _, e := range b.parts[i].entries {
			p.m.e2eSeconds.Observe(now.Sub(e.rec.Timestamp).Seconds())
		}
	}
	if p.cfg.OnCommit != nil {
		stamps := make([]time.Time, 0, b.messages())
		for i := range b.parts {
			for _, e := range b.parts[i].entries {
				stamps = append(stamps, e.rec.Timestamp)
			}
		}
		p.onCommitMu.Lock()
		p.cfg.OnCommit(stamps, took)
		p.onCommitMu.Unlock()
	}
	if res.Rejected > 0 {
		p.log.Warn("rows refused by the database were dead-lettered", "rejected", res.Rejected, "stored", res.Inserted, "statements", res.Statements)
	}
	p.log.Debug("batch committed", "messages", b.messages(), "stored", res.Inserted, "duplicates", res.Duplicates,
		"expired", res.Expired, "dead_letters", len(sb.Dead)+res.Rejected, "took", took, "trigger", b.trigger)
}

// fence handles partitions another writer moved: their stored positions
// are reloaded and reported, and their part of the batch (dead letters
// included: the transaction that would have recorded them rolled back) is
// dropped. The consume goroutine re-reads them from the stored position.
func (p *Pipeline) fence(ctx context.Context, b *batch, ids []int32, r *writeResult) error {
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
	if r.fenced == nil {
		r.fenced = map[int32]fencedPart{}
	}
	for _, pb := range b.parts {
		if slices.Contains(ids, pb.id) {
			r.fenced[pb.id] = fencedPart{gen: pb.gen, stored: stored[pb.id]}
		}
	}
	b.parts = slices.DeleteFunc(b.parts, func(pb partBatch) bool { return slices.Contains(ids, pb.id) })
	return nil
}

// policy decides when buffered messages are written.
type policy struct {
	size     int
	interval time.Duration
}

// trigger names why n buffered messages, the oldest read age ago, should be
// written now, or returns "" to keep buffering. caughtUp says that nothing
// more is waiting to be read: every partition with buffered messages was
// read to its end, or the last poll found nothing. Waiting would then only
// add latency, since no message is coming to fill the batch.
func (pl policy) trigger(n int, age time.Duration, caughtUp bool) string {
	switch {
	case n == 0:
		return ""
	case n >= pl.size:
		return "size"
	case age >= pl.interval:
		return "age"
	case caughtUp:
		return "idle"
	}
	return ""
}

// atomicTime is a time that one goroutine sets and others read.
type atomicTime struct{ ns atomic.Int64 }

// Store sets t; the zero time clears it.
func (a *atomicTime) Store(t time.Time) {
	if t.IsZero() {
		a.ns.Store(0)
		return
	}
	a.ns.Store(t.UnixNano())
}

// Load is the time as unix nanos, 0 when cleared.
func (a *atomicTime) Load() int64 { return a.ns.Load() }
