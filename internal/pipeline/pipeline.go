// Package pipeline ties notifyd together: it consumes the input topic,
// decodes and validates each message, batches them, writes each batch and
// the partitions' new positions in one database transaction, and sends the
// messages it cannot store to the dead-letter topic.
//
// Exactly-once: a partition's position lives in the database beside the
// rows; a write moves it from the position the batch was read from to the
// one after its last message, and is refused if another writer moved it
// first (a fenced write). On assignment, each partition resumes from its
// stored position. Kafka's committed offsets are updated after each write
// for monitoring only.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/notifyd/notifyd/internal/dlq"
	"github.com/notifyd/notifyd/internal/notification"
	"github.com/notifyd/notifyd/internal/postgres"
	"github.com/notifyd/notifyd/internal/retry"
)

// maxPollWait is the longest one round of the consume loop waits before it
// checks flush deadlines and shutdown again.
const maxPollWait = 100 * time.Millisecond

// Pipeline is one consumer group member moving notifications into the store.
type Pipeline struct {
	cfg    Config
	log    *slog.Logger
	store  *postgres.Store
	client *kgo.Client
	// clientSet is closed once client is set: the group's callbacks can
	// run before kgo.NewClient has returned it.
	clientSet chan struct{}
	dlq       dlq.Publisher
	breaker   *retry.Breaker
	m         *metrics
	reset     kgo.Offset // where a partition with no stored position starts

	ready chan struct{} // a batch is ready to write (capacity 1)
	space chan struct{} // a write took buffered messages (capacity 1)

	mu       sync.Mutex
	parts    map[int32]*partition
	gen      uint64
	rows     int // buffered messages, all partitions
	bytes    int
	oldest   time.Time     // read time of the oldest buffered message
	inflight chan struct{} // closed when the write in flight ends; nil when none

	nStored, nDead, nDup atomic.Int64 // totals for the status line
	started              bool
	stopping             bool
}

// partition is the state of one held partition.
type partition struct {
	gen     uint64 // assignment this state belongs to
	stored  int64  // position committed in the database
	floor   int64  // records below it are already stored and are skipped
	reseek  bool   // records are dropped until the fetch position is moved to stored
	entries []entry
	caught  bool  // the last fetch reached the high watermark
	hwm     int64 // the partition's end offset as of the last fetch
}

// entry is one consumed message: a row to store or a dead letter to send.
type entry struct {
	rec *kgo.Record
	n   notification.Notification
	bad *notification.Error
}

// New creates the Kafka client and the pipeline. opts are the connection
// options (brokers, TLS, SASL, logger, hooks); New adds the group, topic and
// offset handling. reg may be nil.
func New(cfg Config, store *postgres.Store, log *slog.Logger, reg prometheus.Registerer, opts ...kgo.Opt) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p := &Pipeline{
		cfg:   cfg,
		log:   log,
		store: store,
		m:     newMetrics(reg),
		ready: make(chan struct{}, 1),
		space: make(chan struct{}, 1),
		parts: make(map[int32]*partition),

		clientSet: make(chan struct{}),
	}
	p.breaker = retry.NewBreaker(cfg.Breaker, p.onBreakerChange)
	reset := kgo.NewOffset().AtStart()
	if cfg.StartOffset == "latest" {
		reset = kgo.NewOffset().AtEnd()
	}
	p.reset = reset
	// Look up a moved partition or a returned broker within a second,
	// not franz-go's default five; the caller's options may override it.
	opts = append([]kgo.Opt{kgo.MetadataMinAge(time.Second)}, opts...)
	opts = append(opts,
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(reset),
		kgo.AdjustFetchOffsetsFn(p.assigned),
		kgo.OnPartitionsRevoked(p.revoked),
		kgo.OnPartitionsLost(p.revoked),
		// Fetch in modest pieces: what is fetched is held in memory.
		kgo.FetchMaxBytes(1<<20),
		kgo.FetchMaxPartitionBytes(512<<10),
		kgo.FetchMaxWait(time.Second),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	p.client = cl
	close(p.clientSet)
	p.dlq = dlq.Publisher{Client: cl}
	return p, nil
}

// Ready reports why the pipeline is not consuming, or nil: it must hold
// partitions, the database breaker must be closed and the database must
// answer, and no shutdown may have begun.
func (p *Pipeline) Ready(ctx context.Context) error {
	p.mu.Lock()
	started, stopping, held := p.started, p.stopping, len(p.parts)
	p.mu.Unlock()
	switch {
	case !started:
		return errors.New("not started")
	case stopping:
		return errors.New("shutting down")
	case held == 0:
		return errors.New("no partitions assigned")
	case p.breaker.State() != retry.Closed:
		return errors.New("database circuit breaker " + p.breaker.State().String())
	}
	if err := p.store.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// Run consumes until ctx ends, then stops fetching, writes what is
// buffered (bounded by ShutdownTimeout), commits, leaves the group and
// closes the client. It returns nil after a clean shutdown.
func (p *Pipeline) Run(ctx context.Context) error {
	p.mu.Lock()
	p.started = true
	p.mu.Unlock()

	// The writer outlives ctx so that it can write what is buffered; its
	// own context ends ShutdownTimeout after ctx does.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- p.writeLoop(wctx, stop) }()
	if p.cfg.StatusInterval > 0 {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go p.statusLoop(sctx)
	}

	p.consume(ctx)

	p.mu.Lock()
	p.stopping = true
	pending := p.rows
	p.mu.Unlock()
	p.log.Info("shutting down: fetching stopped, writing buffered messages", "buffered", pending)
	timer := time.AfterFunc(p.cfg.ShutdownTimeout, wcancel)
	close(stop)
	err := <-werr
	timer.Stop()

	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	p.commitKafka(closeCtx, p.positions(), true)
	p.client.Close() // leaves the group
	if err != nil {
		p.mu.Lock()
		left := p.rows
		p.mu.Unlock()
		return fmt.Errorf("shutdown: %d messages not written within %s; they will be read again from the stored positions: %w",
			left, p.cfg.ShutdownTimeout, err)
	}
	return nil
}

// consume is the consume loop; it returns when ctx ends.
func (p *Pipeline) consume(ctx context.Context) {
	for ctx.Err() == nil {
		room := p.room()
		if room == 0 {
			select {
			case <-p.space:
			case <-ctx.Done():
			case <-time.After(maxPollWait):
			}
			continue
		}
		pollCtx, cancel := context.WithTimeout(ctx, p.pollWait())
		// Take no more than the buffer has room for: MaxBufferedRows is a
		// bound, not a threshold that one poll may overshoot.
		fetches := p.client.PollRecords(pollCtx, min(p.cfg.BatchSize*4, room))
		cancel()
		if fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(t string, part int32, err error) {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return
			}
			p.log.Warn("fetch failed; the client retries by itself", "topic", t, "partition", part, "error", err)
		})
		got := p.add(fetches)
		p.applyReseeks()
		p.client.AllowRebalance()
		p.maybeFlush(got == 0)
	}
}

// pollWait is how long the next poll may wait: at most maxPollWait, and no
// later than the oldest buffered message's flush deadline.
func (p *Pipeline) pollWait() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rows == 0 {
		return maxPollWait
	}
	d := time.Until(p.oldest.Add(p.cfg.FlushInterval))
	return min(max(d, time.Millisecond), maxPollWait)
}

// room is how many more messages the buffer may take; 0 at either bound.
func (p *Pipeline) room() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes >= p.cfg.MaxBufferedBytes {
		return 0
	}
	return max(p.cfg.MaxBufferedRows-p.rows, 0)
}

// add decodes the fetched records into their partitions' buffers and
// returns how many it kept.
func (p *Pipeline) add(fetches kgo.Fetches) int {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := 0
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) == 0 {
			return
		}
		ps := p.parts[fp.Partition]
		if ps == nil || ps.reseek {
			return // not held any more, or being re-read from the stored position
		}
		for _, r := range fp.Records {
			if r.Offset < ps.floor {
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
			n, err := notification.Decode(r.Value, src, p.cfg.Limits)
			if err != nil {
				var ne *notification.Error
				if !errors.As(err, &ne) {
					ne = &notification.Error{Class: notification.ClassDecode, Reason: err.Error()}
				}
				e.bad = ne
			} else {
				e.n = n
			}
			if p.rows == 0 {
				p.oldest = now
			}
			ps.entries = append(ps.entries, e)
			p.rows++
			p.bytes += len(r.Key) + len(r.Value)
			kept++
		}
		last := fp.Records[len(fp.Records)-1]
		ps.caught = last.Offset+1 >= fp.HighWatermark
		ps.hwm = fp.HighWatermark
		p.m.lag.WithLabelValues(partLabel(fp.Partition)).Set(float64(max(ps.hwm-max(ps.stored, 0), 0)))
	})
	p.m.consumed.Add(float64(kept))
	p.m.bufferedRows.Set(float64(p.rows))
	p.m.bufferedBytes.Set(float64(p.bytes))
	return kept
}

// applyReseeks moves the fetch position of fenced partitions back to their
// stored position. It runs in the polling goroutine before AllowRebalance,
// as franz-go asks of SetOffsets in a group.
func (p *Pipeline) applyReseeks() {
	p.mu.Lock()
	var set map[string]map[int32]kgo.EpochOffset
	for id, ps := range p.parts {
		if !ps.reseek {
			continue
		}
		ps.reseek = false
		if ps.stored < 0 {
			continue // nothing stored: the fetch position is already the reset offset
		}
		if set == nil {
			set = map[string]map[int32]kgo.EpochOffset{p.cfg.Topic: {}}
		}
		set[p.cfg.Topic][id] = kgo.EpochOffset{Epoch: -1, Offset: ps.stored}
	}
	p.mu.Unlock()
	if set != nil {
		p.client.SetOffsets(set)
	}
}

// maybeFlush signals the writer when the buffer should be written: it holds
// BatchSize messages, its oldest message is FlushInterval old, or nothing
// more is coming (the last poll was empty, or every partition with buffered
// messages has been read to its end).
func (p *Pipeline) maybeFlush(emptyPoll bool) {
	p.mu.Lock()
	trigger := p.trigger(emptyPoll)
	p.mu.Unlock()
	if trigger != "" {
		select {
		case p.ready <- struct{}{}:
		default:
		}
	}
}

func (p *Pipeline) trigger(emptyPoll bool) string {
	caught := emptyPoll
	if !caught {
		caught = true
		for _, ps := range p.parts {
			if len(ps.entries) > 0 && !ps.caught {
				caught = false
				break
			}
		}
	}
	return policy{size: p.cfg.BatchSize, interval: p.cfg.FlushInterval}.trigger(p.rows, time.Since(p.oldest), caught)
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

// assigned loads the stored positions of newly assigned partitions and
// starts each from its position. franz-go calls it after each join.
func (p *Pipeline) assigned(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := make([]int32, 0, len(offsets[p.cfg.Topic]))
	for id := range offsets[p.cfg.Topic] {
		parts = append(parts, id)
	}
	if len(parts) == 0 {
		return offsets, nil
	}
	var stored map[int32]int64
	err := p.retryForever(ctx, "database", func(ctx context.Context) error {
		var err error
		stored, err = p.store.Claim(ctx, p.cfg.Group, p.cfg.Topic, parts)
		return err
	})
	if err != nil {
		return nil, err
	}
	rewound := p.checkBounds(ctx, stored)
	p.mu.Lock()
	p.gen++
	for _, id := range parts {
		pos := stored[id]
		if old := p.parts[id]; old != nil {
			// Held before without a revoke in between: what it buffered
			// was read from a position that no longer counts.
			p.forget(old)
		}
		p.parts[id] = &partition{gen: p.gen, stored: pos, floor: pos}
		if rewound[id] {
			p.parts[id].floor = -1
			offsets[p.cfg.Topic][id] = p.reset
		} else if pos >= 0 {
			offsets[p.cfg.Topic][id] = kgo.NewOffset().At(pos).WithEpoch(-1)
		} else {
			// Nothing stored: start at StartOffset, not at the group's
			// Kafka commit, which is only a mirror (of another database,
			// or of rows since deleted) and would skip unstored messages.
			offsets[p.cfg.Topic][id] = p.reset
		}
		p.m.storedPosition.WithLabelValues(partLabel(id)).Set(float64(pos))
	}
	p.m.assigned.Set(float64(len(p.parts)))
	p.mu.Unlock()
	p.log.Info("partitions assigned", "topic", p.cfg.Topic, "positions", stored)
	return offsets, nil
}

// revoked forgets revoked or lost partitions: their buffered messages are
// dropped, to be read again by the next owner from the stored position. It
// waits for a write in flight so that the next owner finds its result.
func (p *Pipeline) revoked(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	ids := lost[p.cfg.Topic]
	if len(ids) == 0 {
		return
	}
	p.mu.Lock()
	for _, id := range ids {
		if ps := p.parts[id]; ps != nil {
			p.forget(ps)
			delete(p.parts, id)
			p.m.storedPosition.DeleteLabelValues(partLabel(id))
			p.m.lag.DeleteLabelValues(partLabel(id))
		}
	}
	p.m.assigned.Set(float64(len(p.parts)))
	p.m.bufferedRows.Set(float64(p.rows))
	p.m.bufferedBytes.Set(float64(p.bytes))
	inflight := p.inflight
	p.mu.Unlock()
	if inflight != nil {
		select {
		case <-inflight:
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			// A write stuck in an outage; fencing keeps it harmless.
		}
	}
	p.log.Info("partitions revoked", "topic", p.cfg.Topic, "partitions", ids)
}

// positions are the stored positions of the held partitions.
func (p *Pipeline) positions() map[int32]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[int32]int64, len(p.parts))
	for id, ps := range p.parts {
		if ps.stored >= 0 {
			out[id] = ps.stored
		}
	}
	return out
}

// commitKafka mirrors stored positions into the group's Kafka offsets, so
// that lag tools see them. The database stays the authority.
func (p *Pipeline) commitKafka(ctx context.Context, pos map[int32]int64, wait bool) {
	if len(pos) == 0 {
		return
	}
	offs := map[string]map[int32]kgo.EpochOffset{p.cfg.Topic: {}}
	for id, o := range pos {
		offs[p.cfg.Topic][id] = kgo.EpochOffset{Epoch: -1, Offset: o}
	}
	done := make(chan struct{})
	p.client.CommitOffsets(ctx, offs, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			p.log.Debug("mirroring positions to kafka failed; the database keeps them", "error", err)
		}
		close(done)
	})
	if wait {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
}

func (p *Pipeline) onBreakerChange(from, to retry.State) {
	p.m.breakerState.Set(float64(to))
	switch to {
	case retry.Open:
		p.log.Warn("database circuit breaker open: consumption paused", "from", from.String(), "retry_in", p.breaker.Timeout())
		p.client.PauseFetchTopics(p.cfg.Topic)
	case retry.HalfOpen:
		p.log.Info("database circuit breaker half-open: probing")
	case retry.Closed:
		p.log.Info("database circuit breaker closed: consumption resumed")
		p.client.ResumeFetchTopics(p.cfg.Topic)
	}
}

func partLabel(id int32) string { return strconv.Itoa(int(id)) }

// statusLoop logs a one-line status every StatusInterval, so that a person
// watching the terminal sees the service working.
func (p *Pipeline) statusLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.StatusInterval)
	defer t.Stop()
	last, lastAt := p.nStored.Load(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			stored := p.nStored.Load()
			p.mu.Lock()
			var lag int64
			for _, ps := range p.parts {
				lag += max(ps.hwm-max(ps.stored, 0), 0)
			}
			held, buffered := len(p.parts), p.rows
			p.mu.Unlock()
			p.log.Info("status",
				"rows_per_sec", int64(float64(stored-last)/now.Sub(lastAt).Seconds()),
				"rows_stored", stored, "duplicates", p.nDup.Load(), "dead_letters", p.nDead.Load(),
				"lag", lag, "buffered", buffered, "partitions", held, "breaker", p.breaker.State().String())
			last, lastAt = stored, now
		}
	}
}

// forget drops a partition's buffered messages from the buffer's counts.
// p.mu must be held.
func (p *Pipeline) forget(ps *partition) {
	for _, e := range ps.entries {
		p.rows--
		p.bytes -= len(e.rec.Key) + len(e.rec.Value)
	}
	ps.entries = nil
}

// checkBounds compares stored positions with the partitions' logs and
// returns the partitions whose position lies past the end of the log: the
// topic was deleted and created again, or the broker lost data. Those start
// again from StartOffset, and their offsets are read as new. A position
// before the start of the log means retention deleted messages before they
// were read; that cannot be undone, only reported. The check is skipped if
// the broker cannot answer now.
func (p *Pipeline) checkBounds(ctx context.Context, stored map[int32]int64) map[int32]bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	select {
	case <-p.clientSet:
	case <-ctx.Done():
		return nil
	}
	adm := kadm.NewClient(p.client)
	ends, err := adm.ListEndOffsets(ctx, p.cfg.Topic)
	if err == nil {
		err = ends.Error()
	}
	starts, err2 := adm.ListStartOffsets(ctx, p.cfg.Topic)
	if err == nil {
		err = err2
	}
	if err != nil {
		p.log.Warn("could not compare stored positions with the topic's offsets", "error", err)
		return nil
	}
	rewound := map[int32]bool{}
	for id, pos := range stored {
		if pos < 0 {
			continue
		}
		end, ok := ends.Lookup(p.cfg.Topic, id)
		if ok && end.Err == nil && pos > end.Offset {
			rewound[id] = true
			p.log.Error("stored position is past the end of the partition: the topic was recreated or the broker lost data; reading the partition again from the start offset",
				"partition", id, "stored_offset", pos, "end_offset", end.Offset, "start_offset", p.cfg.StartOffset)
			continue
		}
		start, ok := starts.Lookup(p.cfg.Topic, id)
		if ok && start.Err == nil && pos < start.Offset {
			p.log.Error("messages were deleted by retention before notifyd read them",
				"partition", id, "stored_offset", pos, "log_start_offset", start.Offset, "lost", start.Offset-pos)
		}
	}
	return rewound
}
