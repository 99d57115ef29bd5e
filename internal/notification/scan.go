package notification

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small strict JSON scanner, written for Decode rather than
// borrowed from encoding/json, because encoding/json accepts what the
// contract forbids and hides it: it replaces unpaired surrogate escapes with
// U+FFFD, lets a later duplicate key win, and matches struct fields without
// regard to case. It is also several times faster here (decode_bench_test.go).
//
// The scanner makes one pass over a value already known to be valid UTF-8,
// checks the whole document against RFC 8259, and records where the known
// top-level members are; Decode then validates them.

// maxDepth bounds the nesting of arrays and objects, as encoding/json does,
// so a hostile value cannot make the recursion use unbounded stack.
const maxDepth = 10000

// smallObject is how many names an object may have before duplicate names
// are looked up in a map rather than by comparing with each earlier name.
// Objects are usually small; the map keeps a hostile one from being
// quadratic.
const smallObject = 16

// The known top-level members, in the order Decode validates them, so the
// problem it reports does not depend on the order of the fields in the
// message.
const (
	fieldID = iota
	fieldUserID
	fieldEventType
	fieldTitle
	fieldBody
	fieldCreatedAt
	fieldData
	numFields
)

// fieldName returns the JSON name of a known member.
func fieldName(f int) string {
	switch f {
	case fieldID:
		return "id"
	case fieldUserID:
		return "user_id"
	case fieldEventType:
		return "event_type"
	case fieldTitle:
		return "title"
	case fieldBody:
		return "body"
	case fieldCreatedAt:
		return "created_at"
	case fieldData:
		return "data"
	}
	return ""
}

// knownField returns the index of the known member called name, or -1.
func knownField(name []byte) int {
	switch string(name) {
	case "id":
		return fieldID
	case "user_id":
		return fieldUserID
	case "event_type":
		return fieldEventType
	case "title":
		return fieldTitle
	case "body":
		return fieldBody
	case "created_at":
		return fieldCreatedAt
	case "data":
		return fieldData
	}
	return -1
}

// span is where a string's content (without its quotes) lies in the value.
type span struct {
	start, end int
	escaped    bool // it holds backslash escapes, so it differs from its bytes
}

// member is a known top-level member as found by the scanner.
type member struct {
	present bool
	kind    byte // first byte of the value: '"', '{', '[', 't', 'f', 'n', or '0' for a number
	// raw is the value's content: a string's without the quotes, anything
	// else whole.
	raw span
	nul int // offset of the first \u0000 in a string, or -1
}

// scanner holds the state of one scan. It lives on Decode's stack.
type scanner struct {
	buf []byte
	pos int
	// shared makes the notification's unescaped strings and data share
	// buf (DecodeShared).
	shared bool
	// field is the name of the top-level member whose value is being
	// scanned, so a syntax error can say which member it is in; end < 0
	// outside a member's value.
	field span
	// inData is set while scanning the object of "data", whose contents are
	// stored: a \u0000 or a duplicate name there is noted for Decode.
	inData  bool
	dataNUL int  // offset of the first \u0000 in data, or -1
	dataDup span // the first name seen twice in one object in data
	hasDup  bool
	// names[:numNames] holds the names of the small objects being checked
	// for duplicates, innermost last; each object drops its own when it
	// ends. A fixed array keeps the usual message free of allocations.
	names    [4 * smallObject]span
	numNames int
}

// top scans the whole value, which must be one JSON object, and records its
// known members in m.
func (s *scanner) top(m *[numFields]member) *Error {
	s.field.end = -1
	s.dataNUL = -1
	s.ws()
	if s.pos == len(s.buf) {
		return s.syntax(s.pos, "no value, only whitespace")
	}
	if c := s.buf[s.pos]; c != '{' {
		// Report a malformed value as malformed, and only a well-formed one
		// as the wrong kind of value.
		if err := s.value(1); err != nil {
			return err
		}
		if err := s.end(); err != nil {
			return err
		}
		return &Error{Class: ClassDecode, Reason: "value is " + kindName(c) + ", want a JSON object"}
	}
	s.pos++
	var big map[string]struct{}
	s.ws()
	if s.pos < len(s.buf) && s.buf[s.pos] == '}' {
		s.pos++
		return s.end()
	}
	for {
		if s.pos >= len(s.buf) || s.buf[s.pos] != '"' {
			return s.unexpected("a string for a member name")
		}
		name, _, err := s.str()
		if err != nil {
			return err
		}
		var f int
		if name.escaped {
			f = knownField([]byte(s.text(name)))
		} else {
			f = knownField(s.buf[name.start:name.end])
		}
		var dup bool
		if f >= 0 {
			dup = m[f].present
		} else {
			dup = s.addName(0, name, &big)
		}
		if dup {
			return &Error{Class: ClassDecode, Field: s.text(name),
				Reason: "appears more than once in the object, so the message is ambiguous"}
		}
		s.ws()
		if s.pos >= len(s.buf) || s.buf[s.pos] != ':' {
			return s.unexpected("':' after a member name")
		}
		s.pos++
		s.ws()
		s.field = name
		if f < 0 {
			if err := s.value(2); err != nil {
				return err
			}
		} else if err := s.member(&m[f], f == fieldData); err != nil {
			return err
		}
		// A problem right after the value is still told as in its member:
		// that is where a person would look.
		s.ws()
		if s.pos >= len(s.buf) {
			return s.unexpected("',' or '}' after a member")
		}
		switch s.buf[s.pos] {
		case ',':
			s.pos++
			s.field.end = -1
			s.ws()
		case '}':
			s.pos++
			s.field.end = -1
			return s.end()
		default:
			return s.unexpected("',' or '}' after a member")
		}
	}
}

// member scans the value of a known member into m.
func (s *scanner) member(m *member, data bool) *Error {
	m.present = true
	m.nul = -1
	if s.pos >= len(s.buf) {
		return s.unexpected("a value")
	}
	start := s.pos
	m.kind = s.buf[s.pos]
	if m.kind == '"' {
		sp, nul, err := s.str()
		m.raw, m.nul = sp, nul
		return err
	}
	if m.kind == '-' || m.kind >= '0' && m.kind <= '9' {
		m.kind = '0'
	}
	s.inData = data && m.kind == '{'
	err := s.value(2)
	s.inData = false
	m.raw = span{start: start, end: s.pos}
	return err
}

// end checks that nothing but whitespace follows the top-level value.
func (s *scanner) end() *Error {
	s.ws()
	if s.pos != len(s.buf) {
		return s.syntax(s.pos, s.describe(s.pos)+" after the end of the top-level value")
	}
	return nil
}

// value scans any JSON value at nesting depth depth.
func (s *scanner) value(depth int) *Error {
	if s.pos >= len(s.buf) {
		return s.unexpected("a value")
	}
	switch c := s.buf[s.pos]; c {
	case '{':
		return s.object(depth)
	case '[':
		return s.array(depth)
	case '"':
		_, nul, err := s.str()
		if s.inData && nul >= 0 && s.dataNUL < 0 {
			s.dataNUL = nul
		}
		return err
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return s.number()
		}
		return s.unexpected("a value")
	}
}

// object scans an object; in data it also looks for duplicate names.
func (s *scanner) object(depth int) *Error {
	if depth > maxDepth {
		return s.syntax(s.pos, "arrays and objects nested more than "+strconv.Itoa(maxDepth)+" deep")
	}
	s.pos++
	base := s.numNames
	defer func() { s.numNames = base }()
	var big map[string]struct{}
	s.ws()
	if s.pos < len(s.buf) && s.buf[s.pos] == '}' {
		s.pos++
		return nil
	}
	for {
		if s.pos >= len(s.buf) || s.buf[s.pos] != '"' {
			return s.unexpected("a string for a member name")
		}
		name, nul, err := s.str()
		if err != nil {
			return err
		}
		if s.inData {
			if nul >= 0 && s.dataNUL < 0 {
				s.dataNUL = nul
			}
			if s.addName(base, name, &big) && !s.hasDup {
				s.dataDup, s.hasDup = name, true
			}
		}
		s.ws()
		if s.pos >= len(s.buf) || s.buf[s.pos] != ':' {
			return s.unexpected("':' after a member name")
		}
		s.pos++
		s.ws()
		if err := s.value(depth + 1); err != nil {
			return err
		}
		s.ws()
		if s.pos >= len(s.buf) {
			return s.unexpected("',' or '}' after a member")
		}
		switch s.buf[s.pos] {
		case ',':
			s.pos++
			s.ws()
		case '}':
			s.pos++
			return nil
		default:
			return s.unexpected("',' or '}' after a member")
		}
	}
}

// array scans an array.
func (s *scanner) array(depth int) *Error {
	if depth > maxDepth {
		return s.syntax(s.pos, "arrays and objects nested more than "+strconv.Itoa(maxDepth)+" deep")
	}
	s.pos++
	s.ws()
	if s.pos < len(s.buf) && s.buf[s.pos] == ']' {
		s.pos++
		return nil
	}
	for {
		if err := s.value(depth + 1); err != nil {
			return err
		}
		s.ws()
		if s.pos >= len(s.buf) {
			return s.unexpected("',' or ']' after an array element")
		}
		switch s.buf[s.pos] {
		case ',':
			s.pos++
			s.ws()
		case ']':
			s.pos++
			return nil
		default:
			return s.unexpected("',' or ']' after an array element")
		}
	}
}

// addName records name as a member of the object whose names start at
// s.names[base], and reports whether the object already had it. *big takes
// over from s.names once the object is no longer small, or s.names is full.
func (s *scanner) addName(base int, name span, big *map[string]struct{}) bool {
	if *big == nil {
		for _, prev := range s.names[base:s.numNames] {
			if s.sameName(prev, name) {
				return true
			}
		}
		if s.numNames-base < smallObject && s.numNames < len(s.names) {
			s.names[s.numNames] = name
			s.numNames++
			return false
		}
		*big = make(map[string]struct{}, 2*smallObject)
		for _, prev := range s.names[base:s.numNames] {
			(*big)[s.text(prev)] = struct{}{}
		}
		s.numNames = base
	}
	key := s.text(name)
	if _, ok := (*big)[key]; ok {
		return true
	}
	(*big)[key] = struct{}{}
	return false
}

// sameName reports whether two names are the same string once unescaped.
func (s *scanner) sameName(a, b span) bool {
	if !a.escaped && !b.escaped {
		return bytes.Equal(s.buf[a.start:a.end], s.buf[b.start:b.end])
	}
	return s.text(a) == s.text(b)
}

// str scans the string at s.pos and leaves s.pos after its closing quote. It
// returns the string's content and the offset of its first \u0000 escape, or
// -1. Every escape must be valid and every \u escape must be a character:
// an unpaired surrogate is rejected, because encoding/json would quietly make
// it U+FFFD and PostgreSQL rejects it.
func (s *scanner) str() (sp span, nul int, err *Error) {
	buf := s.buf
	i := s.pos + 1
	sp.start = i
	nul = -1
	for {
		// The value is valid UTF-8, so any byte from 0x20 up, other than a
		// quote or a backslash, is part of the string as it stands: skip
		// those eight at a time, and the last few one by one.
		for i+8 <= len(buf) {
			if m := special(binary.LittleEndian.Uint64(buf[i:])); m != 0 {
				i += bits.TrailingZeros64(m) / 8
				break
			}
			i += 8
		}
		if i+8 > len(buf) {
			for i < len(buf) && buf[i] >= 0x20 && buf[i] != '"' && buf[i] != '\\' {
				i++
			}
		}
		if i >= len(buf) {
			return sp, nul, s.syntax(len(buf), "the input ends inside a string")
		}
		switch c := buf[i]; {
		case c == '"':
			sp.end = i
			s.pos = i + 1
			return sp, nul, nil
		case c == '\\':
			sp.escaped = true
			if i+1 >= len(buf) {
				return sp, nul, s.syntax(len(buf), "the input ends inside a string")
			}
			switch buf[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r, ok := hex4(buf, i+2)
				if !ok {
					return sp, nul, s.syntax(i, "a \\u escape wants 4 hex digits")
				}
				switch {
				case r == 0:
					if nul < 0 {
						nul = i
					}
					i += 6
				case utf16.IsSurrogate(r) && r < 0xdc00:
					// A high surrogate is a character only with the low
					// surrogate that must follow it.
					lo, ok := rune(-1), false
					if i+7 < len(buf) && buf[i+6] == '\\' && buf[i+7] == 'u' {
						lo, ok = hex4(buf, i+8)
					}
					if !ok || lo < 0xdc00 || lo > 0xdfff {
						return sp, nul, s.syntax(i, "\\u"+string(buf[i+2:i+6])+
							" is an unpaired UTF-16 surrogate, which is not a character")
					}
					i += 12
				case utf16.IsSurrogate(r):
					return sp, nul, s.syntax(i, "\\u"+string(buf[i+2:i+6])+
						" is an unpaired UTF-16 surrogate, which is not a character")
				default:
					i += 6
				}
			default:
				return sp, nul, s.syntax(i, "invalid escape "+s.describe(i+1)+" after a backslash in a string")
			}
		default:
			return sp, nul, s.syntax(i, "control character "+s.describe(i)+" in a string; want it escaped")
		}
	}
}

// special flags (in its high bit) each of the 8 bytes of w, little-endian,
// that is a quote, a backslash or a control character: a byte that ends
// the plain run of a string; 0 when there is none. Each test is the classic
// "has a byte less than n" bit trick, which never flags a byte from 0x80
// up. A borrow can flag a byte after a real match too, never before one,
// so the lowest flag is real.
func special(w uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	quote := w ^ ('"' * ones)
	backslash := w ^ ('\\' * ones)
	return ((w-0x20*ones)&^w | (quote-ones)&^quote | (backslash-ones)&^backslash) & highs
}

// hex4 decodes the 4 hex digits at buf[i:].
func hex4(buf []byte, i int) (rune, bool) {
	if i+4 > len(buf) {
		return 0, false
	}
	var r rune
	for _, c := range buf[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number scans a number: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
func (s *scanner) number() *Error {
	buf := s.buf
	i := s.pos
	if buf[i] == '-' {
		i++
	}
	switch {
	case i < len(buf) && buf[i] == '0':
		i++
	case i < len(buf) && buf[i] >= '1' && buf[i] <= '9':
		i = digits(buf, i+1)
	default:
		return s.syntaxWant(i, "a digit in a number")
	}
	if i < len(buf) && buf[i] == '.' {
		j := digits(buf, i+1)
		if j == i+1 {
			return s.syntaxWant(j, "a digit after the decimal point")
		}
		i = j
	}
	if i < len(buf) && (buf[i] == 'e' || buf[i] == 'E') {
		i++
		if i < len(buf) && (buf[i] == '+' || buf[i] == '-') {
			i++
		}
		j := digits(buf, i)
		if j == i {
			return s.syntaxWant(j, "a digit in an exponent")
		}
		i = j
	}
	s.pos = i
	return nil
}

// digits returns the offset of the first non-digit at or after i.
func digits(buf []byte, i int) int {
	for i < len(buf) && buf[i] >= '0' && buf[i] <= '9' {
		i++
	}
	return i
}

// literal scans true, false or null.
func (s *scanner) literal(lit string) *Error {
	for i := 0; i < len(lit); i++ {
		if s.pos+i >= len(s.buf) || s.buf[s.pos+i] != lit[i] {
			return s.syntaxWant(s.pos+i, strconv.Quote(lit))
		}
	}
	s.pos += len(lit)
	return nil
}

// ws skips JSON whitespace.
func (s *scanner) ws() {
	for s.pos < len(s.buf) {
		switch s.buf[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// text returns the string sp holds, unescaped.
func (s *scanner) text(sp span) string {
	if !sp.escaped {
		return string(s.buf[sp.start:sp.end])
	}
	var b strings.Builder
	// Unescaping never makes a string longer, so one allocation does.
	b.Grow(sp.end - sp.start)
	s.unescape(&b, sp)
	return b.String()
}

// unescape writes the string sp holds to b, unescaped. The scanner has
// checked its escapes already.
func (s *scanner) unescape(b *strings.Builder, sp span) {
	raw := s.buf[sp.start:sp.end]
	if !sp.escaped {
		b.Write(raw)
		return
	}
	for i := 0; i < len(raw); {
		if raw[i] != '\\' {
			j := bytes.IndexByte(raw[i:], '\\')
			if j < 0 {
				j = len(raw) - i
			}
			b.Write(raw[i : i+j])
			i += j
			continue
		}
		c := raw[i+1]
		i += 2
		switch c {
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, _ := hex4(raw, i)
			i += 4
			if utf16.IsSurrogate(r) {
				lo, _ := hex4(raw, i+2)
				r = utf16.DecodeRune(r, lo)
				i += 6
			}
			b.WriteRune(r)
		default: // '"', '\\', '/'
			b.WriteByte(c)
		}
	}
}

// syntax returns a decode error for the problem what at byte offset at.
func (s *scanner) syntax(at int, what string) *Error {
	e := &Error{Class: ClassDecode, Reason: "invalid JSON at byte " + strconv.Itoa(at) + ": " + what}
	if s.field.end >= 0 {
		e.Field = s.text(s.field)
	}
	return e
}

// syntaxWant returns a decode error saying what was wanted at byte offset at
// and what was there instead.
func (s *scanner) syntaxWant(at int, want string) *Error {
	got := "the end of the input"
	if at < len(s.buf) {
		got = s.describe(at)
	}
	return s.syntax(at, "want "+want+", got "+got)
}

// unexpected is syntaxWant at the current position.
func (s *scanner) unexpected(want string) *Error {
	return s.syntaxWant(s.pos, want)
}

// describe names the character at offset i, safely quoted.
func (s *scanner) describe(i int) string {
	r, _ := utf8.DecodeRune(s.buf[i:])
	return strconv.QuoteRune(r)
}

// kindName names the kind of JSON value that starts with c.
func kindName(c byte) string {
	switch c {
	case '{':
		return "a JSON object"
	case '[':
		return "a JSON array"
	case '"':
		return "a JSON string"
	case 't', 'f':
		return "a JSON boolean"
	case 'n':
		return "JSON null"
	}
	return "a JSON number"
}
