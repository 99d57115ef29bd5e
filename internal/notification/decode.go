package notification

import (
	"bytes"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/google/uuid"
	asmutf8 "github.com/segmentio/asm/utf8"
)

// Decode decodes and validates the value of a Kafka record as a notification
// (SPEC section 1). src is the record's origin: it supplies the id when the
// message has none (DerivedID) and the created_at when the message has none
// (src.Timestamp). lim bounds the fields; its zero fields, and any that are
// not positive, mean the defaults.
//
// A value that breaks a rule is rejected, never altered to fit; the error is
// then always an [*Error]. A value that is not a usable JSON object at all
// (empty, not UTF-8, malformed, a duplicate name, an unpaired surrogate) is
// [ClassDecode]; such a problem anywhere in the value wins over a problem with
// a field's content, which is [ClassValidate]. Among several field problems
// the first in the order id, user_id, event_type, title, body, created_at,
// data is reported, whatever their order in the message.
//
// Member names are matched exactly (case matters), after unescaping. Unknown
// members are ignored, but must be valid JSON like the rest of the value.
// Inside data, which is stored, a name twice in one object is rejected like
// a NUL, because jsonb would keep only one of the two values.
func Decode(value []byte, src Source, lim Limits) (Notification, error) {
	return decode(value, src, lim, false)
}

// DecodeShared is Decode, except that the notification's strings and Data
// share value's memory instead of being copies, wherever they hold no
// escapes: no allocation and no copy for the usual message. value must not
// change for as long as the notification is in use. The pipeline keeps the
// record that carried a notification until its row is committed, and a
// fetched record's value is never written to, so it decodes with this.
func DecodeShared(value []byte, src Source, lim Limits) (Notification, error) {
	return decode(value, src, lim, true)
}

func decode(value []byte, src Source, lim Limits, shared bool) (Notification, error) {
	if len(value) == 0 {
		return Notification{}, &Error{Class: ClassDecode,
			Reason: "value is empty (a tombstone or an empty record); want a JSON object"}
	}
	// A decoder that turned invalid bytes into U+FFFD, as encoding/json
	// does, would alter the message; and the scanner relies on this check.
	// asmutf8.Valid is unicode/utf8.Valid in AVX2 where the processor has
	// it: 10 times faster on text that is not all ASCII (75 against 770
	// ns a loadgen message), where unicode/utf8 goes rune by rune; it was
	// the largest single cost of a drain's profile (18 %).
	if !asmutf8.Valid(value) {
		at := invalidUTF8(value)
		return Notification{}, &Error{Class: ClassDecode,
			Reason: "value is not valid UTF-8: byte 0x" + strconv.FormatUint(uint64(value[at]), 16) +
				" at offset " + strconv.Itoa(at) + " does not start a valid sequence"}
	}
	s := scanner{buf: value, shared: shared}
	var m [numFields]member
	if err := s.top(&m); err != nil {
		return Notification{}, err
	}
	n, err := s.build(&m, src, lim.withDefaults())
	if err != nil {
		return Notification{}, err
	}
	return n, nil
}

// invalidUTF8 returns the offset of the first byte of b that does not start
// a valid UTF-8 sequence.
func invalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return 0
}

// build validates the scanned members, in the order of their indexes, and
// assembles the notification.
func (s *scanner) build(m *[numFields]member, src Source, lim Limits) (Notification, *Error) {
	var n Notification
	texts := s.texts(m)

	id, idSent, err := s.stringField(m, &texts, fieldID, false)
	if err != nil {
		return n, err
	}
	if idSent {
		if n.ID, err = parseUUID(fieldID, id); err != nil {
			return n, err
		}
		if n.ID == uuid.Nil {
			// A producer that forgot to set the id would have every message
			// after its first skipped as a duplicate: lost without a trace.
			return n, invalid(fieldID, "is the nil UUID, which cannot identify a notification; set a real id or leave it out")
		}
	} else {
		n.ID = DerivedID(src.Topic, src.Partition, src.Offset)
	}

	userID, _, err := s.stringField(m, &texts, fieldUserID, true)
	if err != nil {
		return n, err
	}
	if n.UserID, err = parseUUID(fieldUserID, userID); err != nil {
		return n, err
	}
	if n.UserID == uuid.Nil {
		return n, invalid(fieldUserID, "is the nil UUID, which is no user")
	}

	if n.EventType, _, err = s.stringField(m, &texts, fieldEventType, true); err != nil {
		return n, err
	}
	if err := checkEventType(n.EventType, lim.MaxEventTypeBytes); err != nil {
		return n, err
	}

	if n.Title, _, err = s.stringField(m, &texts, fieldTitle, true); err != nil {
		return n, err
	}
	if err := checkChars(fieldTitle, n.Title, 1, lim.MaxTitleChars); err != nil {
		return n, err
	}

	if n.Body, _, err = s.stringField(m, &texts, fieldBody, true); err != nil {
		return n, err
	}
	if err := checkChars(fieldBody, n.Body, 0, lim.MaxBodyChars); err != nil {
		return n, err
	}

	createdAt, ok, err := s.stringField(m, &texts, fieldCreatedAt, false)
	if err != nil {
		return n, err
	}
	if ok {
		t, err := parseTime(createdAt)
		if err != nil {
			return n, err
		}
		n.CreatedAt = t
	} else {
		n.CreatedAt = src.Timestamp
		n.CreatedAtMayDiffer = idSent
	}
	n.CreatedAt = n.CreatedAt.UTC().Truncate(time.Microsecond)

	if n.Data, err = s.data(&m[fieldData], lim.MaxDataBytes); err != nil {
		return n, err
	}
	return n, nil
}

// stringField returns the string value of member f, and whether it has one.
// Absent and null are the same: an error when the member is required, no
// value when it is optional.
func (s *scanner) stringField(m *[numFields]member, texts *[numFields]string, f int, required bool) (string, bool, *Error) {
	mem := &m[f]
	switch {
	case !mem.present || mem.kind == 'n':
		if !required {
			return "", false, nil
		}
		if !mem.present {
			return "", false, invalid(f, "is required but missing")
		}
		return "", false, invalid(f, "is null, want a string")
	case mem.kind != '"':
		return "", false, invalid(f, "is "+kindName(mem.kind)+", want a string")
	case mem.nul >= 0:
		return "", false, invalid(f, "contains a NUL character (\\u0000 at byte "+strconv.Itoa(mem.nul)+
			"), which PostgreSQL cannot store")
	}
	return texts[f], true, nil
}

// texts returns the unescaped strings of the known members that are strings,
// "" for the others. A notification's strings live and die together, so they
// share one allocation.
func (s *scanner) texts(m *[numFields]member) [numFields]string {
	var texts [numFields]string
	size := 0
	for f := range m {
		if m[f].present && m[f].kind == '"' {
			if s.shared && !m[f].raw.escaped {
				texts[f] = s.sharedText(m[f].raw)
				continue
			}
			size += m[f].raw.end - m[f].raw.start
		}
	}
	if size == 0 && s.shared {
		return texts
	}
	var b strings.Builder
	// Unescaping never makes a string longer.
	b.Grow(size)
	var ends [numFields]int
	copied := func(f int) bool { return m[f].present && m[f].kind == '"' && (!s.shared || m[f].raw.escaped) }
	for f := range m {
		if copied(f) {
			s.unescape(&b, m[f].raw)
		}
		ends[f] = b.Len()
	}
	all := b.String()
	start := 0
	for f, end := range ends {
		if copied(f) {
			texts[f] = all[start:end]
		}
		start = end
	}
	return texts
}

// sharedText is the string of an unescaped span, sharing the value's
// memory (DecodeShared).
func (s *scanner) sharedText(sp span) string {
	if sp.end == sp.start {
		return ""
	}
	return unsafe.String(&s.buf[sp.start], sp.end-sp.start)
}

// data returns a copy of the object of "data", or nil when there is none.
func (s *scanner) data(mem *member, maxBytes int) ([]byte, *Error) {
	switch {
	case !mem.present || mem.kind == 'n':
		return nil, nil
	case mem.kind != '{':
		return nil, invalid(fieldData, "is "+kindName(mem.kind)+", want a JSON object")
	}
	raw := s.buf[mem.raw.start:mem.raw.end]
	switch {
	case len(raw) > maxBytes:
		return nil, invalid(fieldData, "is "+strconv.Itoa(len(raw))+" bytes of JSON, want at most "+strconv.Itoa(maxBytes))
	case s.dataNUL >= 0:
		return nil, invalid(fieldData, "contains a NUL character (\\u0000 at byte "+strconv.Itoa(s.dataNUL)+
			"), which PostgreSQL cannot store in jsonb")
	case s.hasDup:
		// jsonb keeps one of the two values: storing it would alter the
		// payload, and no reader could tell which value the producer meant.
		return nil, invalid(fieldData, "has the name "+quote(s.text(s.dataDup))+
			" twice in one object (at byte "+strconv.Itoa(s.dataDup.start-1)+"), so it is ambiguous")
	}
	if s.shared {
		return raw[:len(raw):len(raw)], nil
	}
	return bytes.Clone(raw), nil
}

// invalid returns a validation error about member f.
func invalid(f int, reason string) *Error {
	return &Error{Class: ClassValidate, Field: fieldName(f), Reason: reason}
}

// parseUUID parses a UUID in the canonical 8-4-4-4-12 form only: uuid.Parse
// also takes braces, a urn:uuid: prefix and 32 bare hex digits, which the
// contract does not allow.
func parseUUID(f int, s string) (uuid.UUID, *Error) {
	if len(s) == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-' {
		if u, err := uuid.Parse(s); err == nil {
			return u, nil
		}
	}
	return uuid.Nil, invalid(f, quote(s)+" is not a UUID (want 8-4-4-4-12 hex digits)")
}

// checkEventType checks that s is 1 to maxBytes bytes of [A-Za-z0-9_.:-].
func checkEventType(s string, maxBytes int) *Error {
	want := func() string {
		return "want 1 to " + strconv.Itoa(maxBytes) + " bytes of letters, digits, '_', '.', ':' and '-'"
	}
	if s == "" {
		return invalid(fieldEventType, "is empty, "+want())
	}
	if len(s) > maxBytes {
		return invalid(fieldEventType, "is "+strconv.Itoa(len(s))+" bytes, "+want())
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '_', c == '.', c == ':', c == '-':
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return invalid(fieldEventType, quote(s)+" has "+strconv.QuoteRune(r)+" at byte "+strconv.Itoa(i)+", "+want())
		}
	}
	return nil
}

// checkChars checks that s is least to most characters (code points), as
// PostgreSQL's char_length counts them.
func checkChars(f int, s string, least, most int) *Error {
	// Every character is at least one byte: a short string needs no count.
	if len(s) >= least && len(s) <= most {
		return nil
	}
	n := utf8.RuneCountInString(s)
	switch {
	case n == 0 && least > 0:
		return invalid(f, "is empty, want 1 to "+strconv.Itoa(most)+" characters")
	case n < least:
		return invalid(f, "is "+strconv.Itoa(n)+" characters, want at least "+strconv.Itoa(least))
	case n > most:
		return invalid(f, "is "+strconv.Itoa(n)+" characters, want at most "+strconv.Itoa(most))
	}
	return nil
}

// parseTime parses an RFC 3339 time. time.Parse alone is too lenient for a
// contract: it takes a one-digit hour, a comma before the fraction and an
// offset of +02:60, so the syntax is checked first and time.Parse checks the
// ranges (month, day of the month, hour, minute, second, offset hour).
func parseTime(s string) (time.Time, *Error) {
	if rfc3339Syntax(s) {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, invalid(fieldCreatedAt, quote(s)+
		" is not an RFC 3339 time (want e.g. 2006-01-02T15:04:05Z or 2006-01-02T15:04:05.999999+02:00)")
}

// rfc3339Syntax reports whether s has the form of an RFC 3339 date-time:
// YYYY-MM-DDTHH:MM:SS, an optional fraction, then Z or ±HH:MM.
func rfc3339Syntax(s string) bool {
	const form = "0000-00-00T00:00:00"
	if len(s) < len(form)+1 {
		return false
	}
	for i := 0; i < len(form); i++ {
		if form[i] == '0' {
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		} else if s[i] != form[i] {
			return false
		}
	}
	i := len(form)
	if s[i] == '.' {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == i+1 {
			return false
		}
		i = j
	}
	zone := s[i:]
	if zone == "Z" {
		return true
	}
	if len(zone) != 6 || zone[0] != '+' && zone[0] != '-' || zone[3] != ':' {
		return false
	}
	for _, k := range []int{1, 2, 4, 5} {
		if zone[k] < '0' || zone[k] > '9' {
			return false
		}
	}
	hh := int(zone[1]-'0')*10 + int(zone[2]-'0')
	mm := int(zone[4]-'0')*10 + int(zone[5]-'0')
	return hh <= 23 && mm <= 59
}
