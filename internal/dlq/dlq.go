// Package dlq builds, publishes and reads notifyd's dead letters: the
// original record's key and value, unchanged, with headers that say why it
// was rejected and where it came from.
package dlq

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Header names of a dead letter (SPEC section 1).
const (
	HeaderError           = "notifyd.error"
	HeaderClass           = "notifyd.error.class"
	HeaderSourceTopic     = "notifyd.source.topic"
	HeaderSourcePartition = "notifyd.source.partition"
	HeaderSourceOffset    = "notifyd.source.offset"
	HeaderSourceTimestamp = "notifyd.source.timestamp"
	HeaderAttempts        = "notifyd.attempts"
	// HeaderReplays counts how often a dead letter was replayed onto the
	// input topic; replay refuses to go past its limit.
	HeaderReplays = "notifyd.replays"
)

// Letter builds the dead letter of src for topic: the same key, value and
// headers (notifyd's own headers replaced), plus the reason.
func Letter(topic string, src *kgo.Record, class, reason string, attempts int) *kgo.Record {
	r := &kgo.Record{
		Topic: topic,
		Key:   src.Key,
		Value: src.Value,
	}
	for _, h := range src.Headers {
		// The replay count and origin travel with the message, so that the
		// replay limit holds and a derived id stays the same.
		if isOwn(h.Key) && h.Key != HeaderReplays {
			continue
		}
		r.Headers = append(r.Headers, h)
	}
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: HeaderError, Value: []byte(reason)},
		kgo.RecordHeader{Key: HeaderClass, Value: []byte(class)},
		kgo.RecordHeader{Key: HeaderSourceTopic, Value: []byte(src.Topic)},
		kgo.RecordHeader{Key: HeaderSourcePartition, Value: strconv.AppendInt(nil, int64(src.Partition), 10)},
		kgo.RecordHeader{Key: HeaderSourceOffset, Value: strconv.AppendInt(nil, src.Offset, 10)},
		kgo.RecordHeader{Key: HeaderSourceTimestamp, Value: []byte(src.Timestamp.UTC().Format(time.RFC3339Nano))},
		kgo.RecordHeader{Key: HeaderAttempts, Value: strconv.AppendInt(nil, int64(attempts), 10)},
	)
	return r
}

func isOwn(key string) bool {
	switch key {
	case HeaderError, HeaderClass, HeaderSourceTopic, HeaderSourcePartition,
		HeaderSourceOffset, HeaderSourceTimestamp, HeaderAttempts, HeaderReplays:
		return true
	}
	return false
}

// Header returns the value of the named header of r, and whether it is there.
func Header(r *kgo.Record, key string) (string, bool) {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key == key {
			return string(r.Headers[i].Value), true
		}
	}
	return "", false
}

// Publisher writes dead letters and waits until the broker has them.
type Publisher struct {
	Client *kgo.Client
}

// Publish produces recs and returns once every one is acknowledged, or the
// first error. Callers must not move past the source records on error.
func (p *Publisher) Publish(ctx context.Context, recs ...*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := p.Client.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("publish %d dead letters: %w", len(recs), err)
	}
	return nil
}

// DefaultTopic is the dead-letter topic of input when none is set.
func DefaultTopic(input string) string { return input + ".dlq" }
