// Package notification defines the notification notifyd stores and the strict
// decoding of a Kafka record value into one (SPEC section 1).
//
// Decode never alters a message to make it fit: a value that breaks a rule is
// rejected with an [*Error] whose [Class] says whether the bytes were unusable
// ([ClassDecode]) or broke the contract ([ClassValidate]), so the pipeline can
// dead-letter it with a reason a person can act on. There is exactly one
// documented normalisation: created_at is kept to the microsecond, because
// that is all PostgreSQL's timestamptz stores; finer digits are truncated,
// not rounded and not rejected.
//
// The package is pure: it knows nothing of Kafka clients or SQL, only of the
// bytes of a record value and where they came from ([Source]).
package notification

import (
	"crypto/sha1"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// Notification is one validated in-app notification, ready to be stored as a
// row of the notifications table.
type Notification struct {
	// ID is the notification's identity and idempotency key: the message's
	// "id", or DerivedID of its source when the message has none, so a
	// redelivered record maps to the same row.
	ID uuid.UUID
	// UserID is the recipient; never the nil UUID.
	UserID uuid.UUID
	// EventType is 1 to Limits.MaxEventTypeBytes bytes of [A-Za-z0-9_.:-].
	EventType string
	// Title is 1 to Limits.MaxTitleChars characters (Unicode code points).
	Title string
	// Body is 0 to Limits.MaxBodyChars characters (Unicode code points).
	Body string
	// Data is the JSON object of "data" byte for byte as sent (whitespace,
	// key order and escapes included), or nil when "data" was absent or null.
	// From Decode it is a copy: it does not alias the value passed in
	// (from DecodeShared it does).
	Data []byte
	// CreatedAt is "created_at", or the record's timestamp when the message
	// has none, in UTC and truncated to the microsecond. The truncation is the
	// one normalisation Decode makes: PostgreSQL's timestamptz keeps
	// microseconds, so finer digits could not be stored anyway, and rejecting
	// messages from producers that send nanoseconds would help nobody.
	CreatedAt time.Time
	// CreatedAtMayDiffer is true when the message sent its id but not its
	// created_at, which is then the record's timestamp: a copy the producer
	// sends again is a new record, with another timestamp. Only such rows
	// need looking for within the dedupe window; a derived id, or an id sent
	// with its created_at, comes back with the same created_at.
	CreatedAtMayDiffer bool
}

// Source is where a message came from: the Kafka record that carried it.
// Decode uses it to derive an id and a default created_at.
type Source struct {
	Topic     string
	Partition int32
	Offset    int64
	// Timestamp is the record's timestamp, the default for created_at.
	Timestamp time.Time
}

// namespace is the UUIDv5 namespace of derived ids. It must never change:
// a derived id is an idempotency key, and a new namespace would store a
// redelivered record a second time.
var namespace = uuid.UUID{
	0x93, 0x23, 0x6d, 0x92, 0x7d, 0x45, 0x4f, 0xe1,
	0x8c, 0x28, 0xaa, 0xd9, 0x23, 0xb2, 0xfa, 0xb8,
}

// DerivedID is the id of a message that has none: the UUIDv5 (as
// uuid.NewSHA1 makes it) of "topic/partition/offset" in a fixed notifyd
// namespace. A record keeps its coordinates when it is redelivered, so it
// keeps its id, and the store recognises it as a duplicate. Kafka topic names
// cannot contain '/', so the name is unambiguous.
func DerivedID(topic string, partition int32, offset int64) uuid.UUID {
	// uuid.NewSHA1 allocates a hash and its sum; sha1.Sum over a stack
	// buffer computes the same UUID without allocating for usual topics.
	var buf [128]byte
	b := append(buf[:0], namespace[:]...)
	b = append(b, topic...)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(partition), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, offset, 10)
	sum := sha1.Sum(b)
	var id uuid.UUID
	copy(id[:], sum[:])
	id[6] = id[6]&0x0f | 0x50 // version 5
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	return id
}
