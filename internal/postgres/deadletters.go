package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/notifyd/notifyd/internal/retry"
)

// DeadLetter is a message notifyd could not store, as the write transaction
// records it in notifyd_dead_letters: the original key, value and headers,
// unchanged, why it was refused and where it came from.
type DeadLetter struct {
	Topic     string // source topic
	Partition int32
	Offset    int64
	Timestamp time.Time
	Class     string // decode, validate or store
	Reason    string
	Key       []byte // nil: the record had no key
	Value     []byte // nil: the record had no value (a tombstone)
	Headers   []Header
}

// Header is one record header. Key is kept as bytes: a header key from
// another producer need not be UTF-8, and must come back unchanged.
type Header struct {
	Key   []byte `json:"key"`
	Value []byte `json:"value"`
}

// EncodeHeaders is the stored form of a record's headers.
func EncodeHeaders(hs []Header) string {
	if len(hs) == 0 {
		return "[]"
	}
	b, err := json.Marshal(hs)
	if err != nil {
		panic(err) // []Header always marshals
	}
	return string(b)
}

// DecodeHeaders reads the stored form of a record's headers.
func DecodeHeaders(s []byte) ([]Header, error) {
	var hs []Header
	if err := json.Unmarshal(s, &hs); err != nil {
		return nil, fmt.Errorf("dead-letter headers: %w", err)
	}
	return hs, nil
}

var deadLetterColumns = []string{"consumer_group", "dlq_topic", "source_topic", "source_partition", "source_offset",
	"source_timestamp", "class", "reason", "key", "value", "headers"}

// insertDeadLetters records letters with one binary COPY: a flood of
// invalid messages costs about what the same number of rows does.
func insertDeadLetters(ctx context.Context, tx *pgx.Conn, group, dlqTopic string, letters []DeadLetter) error {
	if len(letters) == 0 {
		return nil
	}
	vals := make([]any, len(deadLetterColumns)) // reused: CopyFrom encodes a row before asking for the next
	src := pgx.CopyFromSlice(len(letters), func(i int) ([]any, error) {
		l := &letters[i]
		vals[0], vals[1], vals[2], vals[3], vals[4] = group, dlqTopic, l.Topic, l.Partition, l.Offset
		vals[5] = pgtype.Timestamptz{Time: l.Timestamp, Valid: true}
		vals[6], vals[7] = l.Class, text(l.Reason)
		vals[8], vals[9] = nilIfNil(l.Key), nilIfNil(l.Value)
		vals[10] = EncodeHeaders(l.Headers)
		return vals, nil
	})
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"notifyd_dead_letters"}, deadLetterColumns, src); err != nil {
		if retry.IsDataError(err) {
			// The letters' text is made safe here, so a refusal is no
			// fault of a message and must not be taken for one (which
			// would isolate the batch's rows again): not wrapped.
			return fmt.Errorf("record %d dead letters: %v", len(letters), err)
		}
		return fmt.Errorf("record %d dead letters: %w", len(letters), err)
	}
	return nil
}

// nilIfNil keeps a nil slice a NULL (no key, no value), and an empty one
// empty.
func nilIfNil(b []byte) any {
	if b == nil {
		return nil
	}
	return b
}

// text makes s storable as PostgreSQL text, which holds neither NUL nor
// invalid UTF-8. Only notifyd's own reason sentences go through it; the
// message's bytes are stored as bytea, unchanged.
func text(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
