package notification

import (
	"strconv"
	"unicode/utf8"
)

// Class is the kind of a rejection, as written in the dead letter's
// notifyd.error.class header.
type Class string

// The classes of rejection.
const (
	// ClassDecode: the value is not a usable JSON object (empty, not UTF-8,
	// malformed, ambiguous or not an object); no field can be trusted.
	ClassDecode Class = "decode"
	// ClassValidate: the value is a JSON object that breaks the message
	// contract (a field missing, of the wrong type, malformed or too long).
	ClassValidate Class = "validate"
	// ClassStore: the database rejected the row as permanently bad. Decode
	// never returns it; the store does.
	ClassStore Class = "store"
)

// Error is why a message was rejected. Decode returns it for every rejection.
type Error struct {
	// Class is the kind of rejection.
	Class Class
	// Field is the top-level member of the message the rejection is about, or
	// "" when it is not about one member (an empty value, a syntax error
	// between members, a value that is not an object).
	Field string
	// Reason says what is wrong and what is wanted.
	Reason string
}

// Error returns a sentence a person can act on, naming the field when there
// is one, e.g. `field "user_id": "abc" is not a UUID (want 8-4-4-4-12 hex digits)`.
func (e *Error) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return "field " + quote(e.Field) + ": " + e.Reason
}

// maxQuoted bounds how much of an offending value an error repeats: enough to
// recognise it, not enough to turn a dead-letter header into a copy of the
// message.
const maxQuoted = 64

// quote returns s as a Go string literal, safe to print whatever s holds, cut
// to about maxQuoted bytes at a character boundary.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	n := maxQuoted
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strconv.Quote(s[:n]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}
