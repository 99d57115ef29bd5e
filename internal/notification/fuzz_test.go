package notification

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	asmutf8 "github.com/segmentio/asm/utf8"
)

// FuzzDecode checks that Decode never panics, that whatever it accepts obeys
// every rule, and that it agrees with encoding/json wherever encoding/json
// is strict enough to be a reference: on which values are JSON at all, and on
// what the strings of an accepted message say.
func FuzzDecode(f *testing.F) {
	for _, bm := range benchMessages {
		f.Add([]byte(bm.value), uint16(0))
	}
	for _, seed := range []string{
		message(),
		message("id", q(testID), "created_at", q("2025-03-14T11:00:00.123456789+02:00"), "data", `{"a":[1,{"b":null}],"c":"\u00e9"}`),
		message("title", `"\ud83d\ude00 \ud800"`),
		message("data", `{"a":1,"a":2}`),
		message("body", `"\u0000"`),
		strings.TrimSuffix(message(), "}") + `,"title":"again"}`,
		message() + " x",
		"[]",
		"",
	} {
		f.Add([]byte(seed), uint16(0))
	}
	f.Add([]byte(message("data", dataOfSize(40))), uint16(40))
	f.Add([]byte(message("title", q("abcdef"))), uint16(5))

	f.Fuzz(func(t *testing.T, value []byte, limit uint16) {
		// One small limit for every field lets the fuzzer reach every bound.
		lim := Limits{MaxEventTypeBytes: int(limit), MaxTitleChars: int(limit), MaxBodyChars: int(limit), MaxDataBytes: int(limit)}
		checkDecode(t, value, lim)
	})
}

// FuzzDecodeFields puts fuzzed text between the quotes of a valid message's
// strings and into its data, so that far more of what the fuzzer tries is
// accepted and compared with encoding/json than FuzzDecode reaches.
func FuzzDecodeFields(f *testing.F) {
	f.Add("Your order has shipped", `It left\nthe warehouse \u00e9 \ud83d\ude00`, "order.shipped", `{"a":[1,"\\u0000"]}`, "2025-03-14T11:00:00.5+02:00")
	f.Add(`\ud800`, `\u0000`, `a\u002eb`, `{"a":1,"a":2}`, "")
	f.Fuzz(func(t *testing.T, title, body, eventType, data, createdAt string) {
		kv := []string{"title", q(title), "body", q(body), "event_type", q(eventType), "data", data}
		if createdAt != "" {
			kv = append(kv, "created_at", q(createdAt))
		}
		checkDecode(t, []byte(message(kv...)), Limits{})
	})
}

// checkDecode decodes value and fails t unless the result obeys every rule
// and agrees with encoding/json.
func checkDecode(t *testing.T, value []byte, lim Limits) {
	t.Helper()
	n, err := Decode(value, testSource, lim)
	// DecodeShared differs only in where the strings live.
	sn, serr := DecodeShared(bytes.Clone(value), testSource, lim)
	if fmt.Sprint(serr) != fmt.Sprint(err) || !reflect.DeepEqual(sn, n) {
		t.Fatalf("DecodeShared(%q): got %+v, %v; Decode got %+v, %v", value, sn, serr, n, err)
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("got error %T %v, want *Error", err, err)
		}
		if e.Class != ClassDecode && e.Class != ClassValidate {
			t.Fatalf("got class %q, want decode or validate", e.Class)
		}
		if e.Reason == "" || !utf8.ValidString(e.Error()) {
			t.Fatalf("got message %q, want a valid, non-empty sentence", e.Error())
		}
		if !json.Valid(value) && e.Class != ClassDecode {
			t.Fatalf("encoding/json finds %q invalid: got class %q (%v), want decode", value, e.Class, e)
		}
		return
	}
	if !json.Valid(value) || !utf8.Valid(value) {
		t.Fatalf("accepted %q, which is not valid JSON in UTF-8", value)
	}
	checkNotification(t, n, lim)

	// encoding/json agrees on every field of an accepted message: its
	// leniencies (U+FFFD for bad surrogates, last duplicate wins) cannot
	// matter once Decode has accepted.
	var m map[string]json.RawMessage
	if err := json.Unmarshal(value, &m); err != nil {
		t.Fatalf("json.Unmarshal of an accepted value: %v", err)
	}
	str := func(name string) string {
		var s string
		if err := json.Unmarshal(m[name], &s); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return s
	}
	if got, want := n.UserID, uuid.MustParse(str("user_id")); got != want {
		t.Errorf("UserID: got %v, want %v", got, want)
	}
	if got, want := n.EventType, str("event_type"); got != want {
		t.Errorf("EventType: got %q, want %q", got, want)
	}
	if got, want := n.Title, str("title"); got != want {
		t.Errorf("Title: got %q, want %q", got, want)
	}
	if got, want := n.Body, str("body"); got != want {
		t.Errorf("Body: got %q, want %q", got, want)
	}
	if raw, ok := m["id"]; ok && string(raw) != "null" {
		if got, want := n.ID, uuid.MustParse(str("id")); got != want {
			t.Errorf("ID: got %v, want %v", got, want)
		}
	} else if got, want := n.ID, DerivedID(testSource.Topic, testSource.Partition, testSource.Offset); got != want {
		t.Errorf("derived ID: got %v, want %v", got, want)
	}
	wantTime := testSource.Timestamp
	if raw, ok := m["created_at"]; ok && string(raw) != "null" {
		if wantTime, err = time.Parse(time.RFC3339Nano, str("created_at")); err != nil {
			t.Fatalf("created_at: %v", err)
		}
	}
	if got, want := n.CreatedAt, wantTime.Truncate(time.Microsecond); !got.Equal(want) {
		t.Errorf("CreatedAt: got %v, want %v", got, want)
	}
	if raw, ok := m["data"]; ok && string(raw) != "null" {
		if string(n.Data) != string(raw) {
			t.Errorf("Data: got %q, want %q", n.Data, raw)
		}
	} else if n.Data != nil {
		t.Errorf("Data: got %q, want nil", n.Data)
	}

	again, err := Decode(value, testSource, lim)
	if err != nil || again.ID != n.ID || again.Title != n.Title || string(again.Data) != string(n.Data) {
		t.Errorf("second Decode: got %+v, %v, want %+v", again, err, n)
	}
}

// The decoder's UTF-8 check (asmutf8.Valid) must say what unicode/utf8
// says, on every input: a byte sequence it let through would reach the
// scanner and PostgreSQL unchecked, and one it refused would be dead-lettered
// for nothing. utf8Edges are the sequences where validators go wrong
// (overlong forms, surrogates, past U+10FFFF, truncated and stray bytes),
// and TestUTF8CheckAgreesWithUnicodeUTF8 puts each at every offset of
// inputs around the 32-byte blocks the AVX2 code works in.
var utf8Edges = [][]byte{
	{0xc0, 0x80}, {0xc1, 0xbf}, {0xc2, 0x80}, {0xdf, 0xbf}, {0xe0, 0x80, 0x80}, {0xe0, 0x9f, 0xbf},
	{0xe0, 0xa0, 0x80}, {0xed, 0x9f, 0xbf}, {0xed, 0xa0, 0x80}, {0xed, 0xbf, 0xbf}, {0xee, 0x80, 0x80},
	{0xef, 0xbf, 0xbf}, {0xf0, 0x80, 0x80, 0x80}, {0xf0, 0x8f, 0xbf, 0xbf}, {0xf0, 0x90, 0x80, 0x80},
	{0xf4, 0x8f, 0xbf, 0xbf}, {0xf4, 0x90, 0x80, 0x80}, {0xf5, 0x80, 0x80, 0x80}, {0xff}, {0xfe}, {0x80},
	{0xbf}, {0xc2}, {0xe2, 0x82}, {0xf0, 0x9f, 0x98}, {0xe2, 0x82, 0xac, 0xac}, {0x00}, {0x7f},
}

func TestUTF8CheckAgreesWithUnicodeUTF8(t *testing.T) {
	fills := []string{"a", "é", "東", "😀"}
	for _, fill := range fills {
		for n := 0; n <= 100; n++ {
			base := []byte(strings.Repeat(fill, n))
			for _, edge := range utf8Edges {
				for at := 0; at <= len(base); at++ {
					v := append(append(append([]byte(nil), base[:at]...), edge...), base[at:]...)
					if got, want := asmutf8.Valid(v), utf8.Valid(v); got != want {
						t.Fatalf("% x: got valid %v, unicode/utf8 says %v", v, got, want)
					}
				}
			}
		}
	}
}

func FuzzUTF8Check(f *testing.F) {
	for _, e := range utf8Edges {
		f.Add(append([]byte(strings.Repeat("abcdéfgh", 5)), e...))
	}
	for _, bm := range benchMessages {
		f.Add([]byte(bm.value))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		if got, want := asmutf8.Valid(v), utf8.Valid(v); got != want {
			t.Fatalf("% x: got valid %v, unicode/utf8 says %v", v, got, want)
		}
	})
}
