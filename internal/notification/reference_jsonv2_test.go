//go:build goexperiment.jsonv2

package notification

import (
	"bytes"
	"encoding/json/jsontext"
	"errors"
	"strings"
	"testing"
)

// This file holds the two-sided reference check of the decoder's syntax
// rules against encoding/json/jsontext (RFC 8259 grammar, UTF-8, escapes
// that decode to valid code points, and, by default, the unique names of
// RFC 7493). It needs the standard library's JSON v2:
//
//	GOEXPERIMENT=jsonv2 go test -run Reference ./internal/notification
//	GOEXPERIMENT=jsonv2 go test -run '^$' -fuzz '^FuzzDecodeReference$' ./internal/notification
//
// FuzzDecode checks one side only (what Decode accepts is valid JSON); this
// also fails when Decode calls valid JSON malformed.

// checkReference fails t unless Decode's verdict on value agrees with
// jsontext: invalid JSON is a decode error; valid JSON is a decode error
// only when it is not an object or repeats a top-level name; and what
// Decode accepts has no name twice in any object of its data (names
// repeated inside members that are ignored do not matter).
func checkReference(t *testing.T, value []byte) {
	t.Helper()
	_, err := Decode(value, testSource, Limits{})
	var e *Error
	if err != nil && !errors.As(err, &e) {
		t.Fatalf("got error %T %v, want *Error", err, err)
	}
	isDecode := e != nil && e.Class == ClassDecode

	syntaxOK := jsontext.Value(value).IsValid(jsontext.AllowDuplicateNames(true))
	if !syntaxOK {
		if !isDecode {
			t.Fatalf("jsontext finds %q invalid: got %v, want a decode error", value, err)
		}
		return
	}
	v := jsontext.Value(bytes.TrimLeft(value, " \t\r\n"))
	if v.Kind() != '{' {
		if !isDecode {
			t.Fatalf("%q is valid JSON of kind %v, not an object: got %v, want a decode error", value, v.Kind(), err)
		}
		return
	}
	dup, ok, data := topLevel(t, value)
	if err == nil && data != nil && !data.IsValid() {
		t.Fatalf("accepted %q, whose data has a name twice in one object (jsonb would keep one)", value)
	}
	if ok {
		if !isDecode || e.Field != dup {
			t.Fatalf("%q repeats the top-level name %q: got %v, want a decode error about that field", value, dup, err)
		}
		return
	}
	if isDecode {
		t.Fatalf("jsontext finds %q a valid object without repeated top-level names: got decode error %v, want none of class decode", value, err)
	}
}

// topLevel returns the first top-level name of the object value that
// appears twice, after unescaping, and the last value of its data member.
func topLevel(t *testing.T, value []byte) (dup string, found bool, data jsontext.Value) {
	t.Helper()
	d := jsontext.NewDecoder(bytes.NewReader(value), jsontext.AllowDuplicateNames(true))
	if _, err := d.ReadToken(); err != nil { // '{'
		t.Fatalf("jsontext: %v", err)
	}
	seen := map[string]bool{}
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		if err != nil {
			t.Fatalf("jsontext: %v", err)
		}
		name := tok.String()
		if seen[name] && !found {
			dup, found = name, true
		}
		seen[name] = true
		v, err := d.ReadValue()
		if err != nil {
			t.Fatalf("jsontext: %v", err)
		}
		if name == "data" {
			data = v.Clone()
		}
	}
	return dup, found, data
}

// referenceSeeds are values on both sides of every syntax rule.
var referenceSeeds = []string{
	message(),
	message("data", `{"a":[1,{"b":null}],"c":"\u00e9","d":1e400}`),
	message("title", `"\ud83d\ude00"`),
	message("title", `"\ud800"`),                          // lone surrogate
	message("title", `"\udc00\ud800"`),                    // swapped pair
	message("data", `{"a":1,"a":2}`),                      // duplicate inside data
	message("x", `{"a":1,"b":{"c":[1,2,{"c":3,"c":4}]}}`), // duplicate in an unknown member
	message("body", `"\u0000"`),
	strings.TrimSuffix(message(), "}") + `,"title":"again"}`,
	strings.TrimSuffix(message(), "}") + `,"t\u0069tle":"again"}`,
	strings.TrimSuffix(message(), "}") + `,"x":1,"x":2}`,
	message() + " x",
	message() + " \n",
	" \t" + message(),
	message("x", `01`),
	message("x", `1.`),
	message("x", `-`),
	message("x", `1e`),
	message("x", `[1,]`),
	message("x", `{"a":1,}`),
	message("x", `"\x"`),
	message("x", `"\u12"`),
	message("x", "\"a\tb\""), // raw control character in a string
	message("x", `tru`),
	message("x", `nul`),
	`{"user_id":1 "title":2}`,
	"[]", "[1,2]", `"text"`, "12", "true", "null",
	"", " ", "{", "}", "{}", `{"a"}`, `{"a":}`, `{1:2}`,
	"\xff", "{\"a\":\"\xc3\x28\"}",
}

func TestDecodeAgreesWithJSONText(t *testing.T) {
	for _, s := range referenceSeeds {
		t.Run("", func(t *testing.T) { checkReference(t, []byte(s)) })
	}
}

func FuzzDecodeReference(f *testing.F) {
	for _, s := range referenceSeeds {
		f.Add([]byte(s))
	}
	for _, bm := range benchMessages {
		f.Add([]byte(bm.value))
	}
	f.Fuzz(func(t *testing.T, value []byte) { checkReference(t, value) })
}
