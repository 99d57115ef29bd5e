package pipeline

import (
	"context"
	"time"
)

// lagInterval is how often the lag goroutine asks the brokers for the
// partitions' end offsets.
const lagInterval = time.Second

// lagLoop keeps notifyd_consumer_lag true from the brokers' end offsets,
// not from fetch responses: while fetching is paused (the database is down
// or slow) no fetch response comes, and the lag must still rise.
func (p *Pipeline) lagLoop(ctx context.Context) {
	t := time.NewTicker(lagInterval)
	defer t.Stop()
	shown := map[int32]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := p.snap.Load()
		if len(s.stored) == 0 {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, lagInterval)
		ends, _, err := p.listOffsets(actx)
		cancel()
		if err != nil {
			p.log.Debug("could not read the topic's end offsets for the lag", "error", err)
			continue
		}
		var total int64
		for id, pos := range s.stored {
			end, ok := ends.Lookup(p.cfg.Topic, id)
			if !ok || end.Err != nil {
				continue
			}
			// A fetch may have seen a later end than this answer, if
			// the answer is older than the fetch.
			lag := max(max(end.Offset, s.hwm[id])-max(pos, 0), 0)
			total += lag
			p.m.lag.WithLabelValues(partLabel(id)).Set(float64(lag))
			shown[id] = true
		}
		for id := range shown {
			if _, ok := s.stored[id]; !ok {
				p.m.lag.DeleteLabelValues(partLabel(id))
				delete(shown, id)
			}
		}
		p.lag.Store(total)
	}
}
