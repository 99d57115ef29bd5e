package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
)

// core is the state the consume goroutine owns: the partition table, the
// buffer and the writers' assignments. Nothing else reads or writes it, so
// it has no lock; others see it through the published snapshot.
type core struct {
	p     *Pipeline
	parts map[int32]*partition
	gen   uint64 // bumped by every assignment
	rows  int    // buffered messages, all partitions
	bytes int    // their key and value bytes
	// recheck are partitions whose fetch position fell out of range: their
	// bounds are checked again before the next AllowRebalance.
	recheck map[int32]bool
	// spare are the emptied entry slices of committed batches, which the
	// next partition buffers start from instead of growing new ones.
	spare [][]entry
}

// partition is the state of one held partition.
type partition struct {
	gen     uint64 // assignment this state belongs to
	stored  int64  // position committed in the database
	floor   int64  // records below it are already stored and are skipped
	reseek  bool   // records are dropped until the fetch position is moved to stored
	entries []entry
	readAt  time.Time // read time of the first entry
	caught  bool      // the last fetch reached the high watermark
	hwm     int64     // the partition's end offset as of the last fetch
	writing bool      // in a write now

	// A partition whose write failed after its retries is set aside: its
	// entries are kept and written alone once aside passes, while the
	// other partitions flow.
	failures int
	aside    time.Time
}

// entry is one consumed message: a row to store or a dead letter.
type entry struct {
	rec *kgo.Record
	n   notification.Notification
	bad *notification.Error
}

func newCore(p *Pipeline) *core {
	return &core{p: p, parts: map[int32]*partition{}, recheck: map[int32]bool{}}
}

// writerOf is the index of the writer that writes partition id.
func (c *core) writerOf(id int32) int { return int(id) % len(c.p.writers) }

// consume is the consume loop; it returns when ctx ends.
func (c *core) consume(ctx context.Context) {
	p := c.p
	for ctx.Err() == nil {
		c.control()
		c.collect()
		room := c.room()
		if room == 0 {
			c.wait(ctx, maxPollWait)
			c.dispatch(false, false)
			c.publish()
			continue
		}
		pollCtx, cancel := context.WithTimeout(ctx, c.pollWait())
		// A writer that reports ends the poll, so that its next batch (and
		// its result) need not wait for the poll's timeout.
		p.pollCancel.Store(&cancel)
		if len(p.results) > 0 {
			cancel()
		}
		// Take no more than the buffer has room for: MaxBufferedRows is a
		// bound, not a threshold that one poll may overshoot.
		fetches := p.client.PollRecords(pollCtx, min(p.cfg.BatchSize*4, room))
		p.pollCancel.Store(nil)
		cancel()
		if fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(t string, part int32, err error) {
			switch {
			case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			case errors.Is(err, kerr.OffsetOutOfRange):
				p.log.Warn("fetch position out of range; checking the stored position against the log again", "partition", part)
				c.recheck[part] = true
			default:
				p.log.Warn("fetch failed; the client retries by itself", "topic", t, "partition", part, "error", err)
			}
		})
		// An assignment's records may be in this fetch: learn of it first.
		c.control()
		got := c.add(fetches)
		c.applyReseeks(ctx)
		p.client.AllowRebalance()
		c.collect()
		c.dispatch(got == 0, false)
		c.publish()
	}
}

// wait blocks until a write ends, a callback posts, ctx ends or d passes.
func (c *core) wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-c.p.results:
		c.result(r)
	case <-c.p.ctl.notify:
	case <-ctx.Done():
	case <-t.C:
	}
}

// drain writes everything buffered, once fetching has stopped: it returns
// when nothing is buffered or in a write, or with wctx's error once the
// shutdown timeout has passed.
func (c *core) drain(wctx context.Context) error {
	for {
		c.control()
		c.collect()
		busy := false
		for _, w := range c.p.writers {
			busy = busy || w.batch != nil
		}
		if c.rows == 0 && !busy {
			return nil
		}
		if wctx.Err() != nil && !busy {
			return wctx.Err()
		}
		c.dispatch(true, true)
		c.publish()
		select {
		case r := <-c.p.results:
			c.result(r)
		case <-c.p.ctl.notify:
		case <-time.After(maxPollWait):
		}
	}
}

// pollWait is how long the next poll may wait: at most maxPollWait, and no
// later than the oldest buffered message's flush deadline.
func (c *core) pollWait() time.Duration {
	oldest := c.oldestBuffered()
	if oldest.IsZero() {
		return maxPollWait
	}
	d := time.Until(oldest.Add(c.p.cfg.FlushInterval))
	return min(max(d, time.Millisecond), maxPollWait)
}

func (c *core) oldestBuffered() time.Time {
	var oldest time.Time
	for _, ps := range c.parts {
		if len(ps.entries) > 0 && (oldest.IsZero() || ps.readAt.Before(oldest)) {
			oldest = ps.readAt
		}
	}
	return oldest
}

// room is how many more messages the buffer may take; 0 at either bound.
func (c *core) room() int {
	if c.bytes >= c.p.cfg.MaxBufferedBytes {
		return 0
	}
	return max(c.p.cfg.MaxBufferedRows-c.rows, 0)
}

// control applies the assignments and revocations the group callbacks
// posted, in order.
func (c *core) control() {
	for _, msg := range c.p.ctl.take() {
		switch m := msg.(type) {
		case assignMsg:
			c.gen++
			for id, pos := range m.stored {
				if old := c.parts[id]; old != nil {
					// Held before without a revoke in between: what it
					// buffered was read from a position that no longer counts.
					c.forget(old)
				}
				c.parts[id] = &partition{gen: c.gen, stored: pos, floor: pos}
				if m.rewound[id] {
					c.parts[id].floor = -1
				}
				c.p.m.storedPosition.WithLabelValues(partLabel(id)).Set(float64(pos))
			}
		case revokeMsg:
			for _, id := range m.ids {
				if ps := c.parts[id]; ps != nil {
					c.forget(ps)
					delete(c.parts, id)
					delete(c.recheck, id)
					c.p.m.storedPosition.DeleteLabelValues(partLabel(id))
					c.p.m.lag.DeleteLabelValues(partLabel(id))
				}
			}
		}
		c.p.m.assigned.Set(float64(len(c.parts)))
	}
	c.p.m.bufferedRows.Set(float64(c.rows))
	c.p.m.bufferedBytes.Set(float64(c.bytes))
}

// add decodes the fetched records into their partitions' buffers and
// returns how many it kept.
func (c *core) add(fetches kgo.Fetches) int {
	now := time.Now()
	kept := 0
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) == 0 {
			return
		}
		ps := c.parts[fp.Partition]
		if ps == nil || ps.reseek {
			// Not held any more, or being re-read from the stored position.
			for _, r := range fp.Records {
				r.Recycle()
			}
			return
		}
		for _, r := range fp.Records {
			if r.Offset < ps.floor {
				r.Recycle()
				continue // already stored; can follow a re-seek
			}
			e := entry{rec: r}
			src := notification.Source{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp}
			if r.Headers != nil {
				// A replayed dead letter keeps the id derived from where it
				// first arrived.
				if t, part, off, ok := dlq.Origin(r); ok {
					src.Topic, src.Partition, src.Offset = t, part, off
				}
			}
			// The entry keeps r, and a fetched value is never written to.
			n, err := notification.DecodeShared(r.Value, src, c.p.cfg.Limits)
			if err != nil {
				var ne *notification.Error
				if !errors.As(err, &ne) {
					ne = &notification.Error{Class: notification.ClassDecode, Reason: err.Error()}
				}
				e.bad = ne
			} else {
				e.n = n
			}
			if len(ps.entries) == 0 {
				ps.readAt = now
				if cap(ps.entries) == 0 && len(c.spare) > 0 {
					ps.entries = c.spare[len(c.spare)-1]
					c.spare = c.spare[:len(c.spare)-1]
				}
			}
			ps.entries = append(ps.entries, e)
			c.rows++
			c.bytes += len(r.Key) + len(r.Value)
			kept++
		}
		last := fp.Records[len(fp.Records)-1]
		ps.caught = last.Offset+1 >= fp.HighWatermark
		ps.hwm = max(ps.hwm, fp.HighWatermark)
		c.p.m.lag.WithLabelValues(partLabel(fp.Partition)).Set(float64(max(ps.hwm-max(ps.stored, 0), 0)))
	})
	c.p.m.consumed.Add(float64(kept))
	c.p.m.bufferedRows.Set(float64(c.rows))
	c.p.m.bufferedBytes.Set(float64(c.bytes))
	return kept
}

// forget drops a partition's buffered messages from the buffer. They are
// in no write, so their records are recycled.
func (c *core) forget(ps *partition) {
	for _, e := range ps.entries {
		c.rows--
		c.bytes -= len(e.rec.Key) + len(e.rec.Value)
		e.rec.Recycle()
	}
	ps.entries = nil
}

// applyReseeks moves the fetch position of fenced partitions back to their
// stored position, and of partitions whose position fell out of range to
// where checkBounds says. It runs in the polling goroutine before
// AllowRebalance, as franz-go asks of SetOffsets in a group.
func (c *core) applyReseeks(ctx context.Context) {
	p := c.p
	set := map[int32]kgo.EpochOffset{}
	for id, ps := range c.parts {
		if !ps.reseek {
			continue
		}
		ps.reseek = false
		if ps.stored >= 0 {
			set[id] = kgo.EpochOffset{Epoch: -1, Offset: ps.stored}
		}
	}
	if len(c.recheck) > 0 {
		stored := map[int32]int64{}
		for id := range c.recheck {
			if ps := c.parts[id]; ps != nil {
				stored[id] = ps.stored
			}
		}
		clear(c.recheck)
		cctx, cancel := context.WithTimeout(ctx, p.writeBudget())
		ends, starts, err := p.listOffsets(cctx)
		cancel()
		if err != nil {
			p.log.Warn("could not compare stored positions with the topic's offsets; checking again at the next fetch error", "error", err)
		} else {
			for id, pos := range stored {
				// Reading from the start with nothing stored: the log
				// start moved past the fetch position (retention).
				off, floorReset := p.start(id, max(pos, 0), ends, starts)
				if floorReset {
					c.parts[id].floor = -1
				}
				set[id] = off
				c.forget(c.parts[id])
			}
		}
	}
	if len(set) > 0 {
		p.client.SetOffsets(map[string]map[int32]kgo.EpochOffset{p.cfg.Topic: set})
	}
}

// positions are the stored positions of the held partitions.
func (c *core) positions() map[int32]int64 {
	out := make(map[int32]int64, len(c.parts))
	for id, ps := range c.parts {
		if ps.stored >= 0 {
			out[id] = ps.stored
		}
	}
	return out
}

// publish makes a new snapshot for the other goroutines.
func (c *core) publish() {
	s := &snapshot{held: len(c.parts), buffered: c.rows, stored: make(map[int32]int64, len(c.parts)), hwm: make(map[int32]int64, len(c.parts))}
	for id, ps := range c.parts {
		s.stored[id], s.hwm[id] = ps.stored, ps.hwm
		if len(ps.entries) > 0 && (s.oldest.IsZero() || ps.readAt.Before(s.oldest)) {
			s.oldest = ps.readAt
		}
	}
	for _, w := range c.p.writers {
		if b := w.batch; b != nil && (s.oldest.IsZero() || b.readAt.Before(s.oldest)) {
			s.oldest = b.readAt
		}
	}
	c.p.snap.Store(s)
}

// listOffsets returns the topic's end and start offsets.
func (p *Pipeline) listOffsets(ctx context.Context) (ends, starts kadm.ListedOffsets, err error) {
	select {
	case <-p.clientSet:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	adm := kadm.NewClient(p.client)
	ends, err = adm.ListEndOffsets(ctx, p.cfg.Topic)
	if err == nil {
		err = ends.Error()
	}
	if err == nil {
		starts, err = adm.ListStartOffsets(ctx, p.cfg.Topic)
	}
	if err == nil {
		err = starts.Error()
	}
	return ends, starts, err
}

// checkBounds compares stored positions with the partitions' logs and
// returns where each partition starts, and which stored positions do not
// count. It fails closed: until the brokers answer it asks again (within
// ctx), since starting without the check could skip messages. A position
// past the end of the log means the topic was deleted and created again, or
// the broker lost data: that partition starts again from StartOffset, and
// its offsets are read as new. A position before the start of the log means
// retention deleted messages before they were read; that cannot be undone,
// only reported, and the partition starts at the log start.
func (p *Pipeline) checkBounds(ctx context.Context, stored map[int32]int64) (map[int32]kgo.Offset, map[int32]bool, error) {
	var ends, starts kadm.ListedOffsets
	err := p.retryForever(ctx, "kafka", func(ctx context.Context) error {
		actx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
		defer cancel()
		var err error
		ends, starts, err = p.listOffsets(actx)
		if err != nil {
			return fmt.Errorf("compare stored positions with the topic's offsets: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	out := make(map[int32]kgo.Offset, len(stored))
	rewound := map[int32]bool{}
	for id, pos := range stored {
		if pos < 0 {
			// Nothing stored: start at StartOffset, not at the group's
			// Kafka commit, which is only a mirror (of another database,
			// or of rows since deleted) and would skip unstored messages.
			out[id] = p.reset
			continue
		}
		off, floorReset := p.start(id, pos, ends, starts)
		if floorReset {
			rewound[id] = true
			out[id] = p.reset
			continue
		}
		out[id] = kgo.NewOffset().At(off.Offset).WithEpoch(-1)
	}
	return out, rewound, nil
}

// start decides where partition id, stored at pos (at least 0), starts
// reading, and whether its floor must be dropped (its stored position does
// not count).
func (p *Pipeline) start(id int32, pos int64, ends, starts kadm.ListedOffsets) (kgo.EpochOffset, bool) {
	if end, ok := ends.Lookup(p.cfg.Topic, id); ok && end.Err == nil && pos > end.Offset {
		p.log.Error("stored position is past the end of the partition: the topic was recreated or the broker lost data; reading the partition again from the start offset",
			"partition", id, "stored_offset", pos, "end_offset", end.Offset, "start_offset", p.cfg.StartOffset)
		at := int64(0)
		if s, ok := starts.Lookup(p.cfg.Topic, id); ok && s.Err == nil {
			at = s.Offset
		}
		if p.cfg.StartOffset == "latest" {
			at = end.Offset
		}
		return kgo.EpochOffset{Epoch: -1, Offset: at}, true
	}
	if start, ok := starts.Lookup(p.cfg.Topic, id); ok && start.Err == nil && pos < start.Offset {
		p.log.Error("messages were deleted by retention before notifyd read them",
			"partition", id, "stored_offset", pos, "log_start_offset", start.Offset, "lost", start.Offset-pos)
		return kgo.EpochOffset{Epoch: -1, Offset: start.Offset}, false
	}
	return kgo.EpochOffset{Epoch: -1, Offset: pos}, false
}
