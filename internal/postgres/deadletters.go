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

const insertDeadLettersSQL = `
INSERT INTO notifyd_dead_letters (consumer_group, dlq_topic, source_topic, source_partition, source_offset,
	source_timestamp, class, reason, key, value, headers)
SELECT $1, $2, unnest($3::text[]), unnest($4::int[]), unnest($5::bigint[]), unnest($6::timestamptz[]),
	unnest($7::text[]), unnest($8::text[]), unnest($9::bytea[]), unnest($10::bytea[]), unnest($11::jsonb[])`

// insertDeadLetters records letters in one statement.
func insertDeadLetters(ctx context.Context, tx pgx.Tx, group, dlqTopic string, letters []DeadLetter) error {
	if len(letters) == 0 {
		return nil
	}
	n := len(letters)
	topics, parts, offs := make([]string, n), make([]int32, n), make([]int64, n)
	stamps := make([]pgtype.Timestamptz, n)
	classes, reasons, headers := make([]string, n), make([]string, n), make([]string, n)
	keys, values := make([][]byte, n), make([][]byte, n)
	for i := range letters {
		l := &letters[i]
		topics[i], parts[i], offs[i] = l.Topic, l.Partition, l.Offset
		stamps[i] = pgtype.Timestamptz{Time: l.Timestamp, Valid: true}
		classes[i], reasons[i] = l.Class, text(l.Reason)
		keys[i], values[i] = l.Key, l.Value
		headers[i] = EncodeHeaders(l.Headers)
	}
	if _, err := tx.Exec(ctx, insertDeadLettersSQL, group, dlqTopic, topics, parts, offs, stamps,
		classes, reasons, keys, values, headers); err != nil {
		if retry.IsDataError(err) {
			// The letters' text is made safe above, so a refusal here is
			// no fault of a message and must not be taken for one (which
			// would isolate the batch's rows again): not wrapped.
			return fmt.Errorf("record %d dead letters: %v", n, err)
		}
		return fmt.Errorf("record %d dead letters: %w", n, err)
	}
	return nil
}

// text makes s storable as PostgreSQL text, which holds neither NUL nor
// invalid UTF-8. Only notifyd's own reason sentences go through it; the
// message's bytes are stored as bytea, unchanged.
func text(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
