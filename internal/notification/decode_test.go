package notification

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

const (
	testUserID = "3f2b8c1e-6a4d-4e7b-9c0a-1d2e3f4a5b6c"
	testID     = "8d6f0f0c-2a57-4c4e-b1a4-52c5d3c2a9e1"
)

// testSource is the record every TestDecode case comes from. Its timestamp
// has nanoseconds and a zone, to show that the default created_at is
// truncated and in UTC.
var testSource = Source{
	Topic:     "notifications",
	Partition: 2,
	Offset:    42,
	Timestamp: time.Date(2025, 3, 14, 10, 26, 53, 589793238, time.FixedZone("CET", 3600)),
}

// message returns a valid message with user_id, event_type, title and body,
// changed by kv: pairs of a member name and its raw JSON value. A name the
// message has gets the new value, or loses the member when the value is "";
// any other name is added at the end.
func message(kv ...string) string {
	names := []string{"user_id", "event_type", "title", "body"}
	values := map[string]string{
		"user_id":    `"` + testUserID + `"`,
		"event_type": `"order.shipped"`,
		"title":      `"Your order has shipped"`,
		"body":       `"It left the warehouse this morning."`,
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if _, ok := values[kv[i]]; !ok {
			names = append(names, kv[i])
		}
		values[kv[i]] = kv[i+1]
	}
	var b strings.Builder
	b.WriteByte('{')
	for _, name := range names {
		if values[name] == "" {
			continue
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.WriteString(`"` + name + `":` + values[name])
	}
	b.WriteByte('}')
	return b.String()
}

// q returns s between double quotes; s must need no escaping.
func q(s string) string { return `"` + s + `"` }

// dataOfSize returns a JSON object of exactly n bytes (n >= 8).
func dataOfSize(n int) string {
	return `{"k":"` + strings.Repeat("x", n-8) + `"}`
}

func TestDecode(t *testing.T) {
	wantTime := func(want time.Time) func(*testing.T, Notification) {
		return func(t *testing.T, n Notification) {
			if !n.CreatedAt.Equal(want) || n.CreatedAt.Location() != time.UTC {
				t.Errorf("CreatedAt: got %v, want %v in UTC", n.CreatedAt, want.UTC())
			}
		}
	}
	wantTitle := func(want string) func(*testing.T, Notification) {
		return func(t *testing.T, n Notification) {
			if n.Title != want {
				t.Errorf("Title: got %q, want %q", n.Title, want)
			}
		}
	}
	wantBody := func(want string) func(*testing.T, Notification) {
		return func(t *testing.T, n Notification) {
			if n.Body != want {
				t.Errorf("Body: got %q, want %q", n.Body, want)
			}
		}
	}
	wantData := func(want string) func(*testing.T, Notification) {
		return func(t *testing.T, n Notification) {
			if want == "" && n.Data != nil || want != "" && string(n.Data) != want {
				t.Errorf("Data: got %q, want %q", n.Data, want)
			}
		}
	}
	wantID := func(want uuid.UUID) func(*testing.T, Notification) {
		return func(t *testing.T, n Notification) {
			if n.ID != want {
				t.Errorf("ID: got %v, want %v", n.ID, want)
			}
		}
	}
	derived := DerivedID(testSource.Topic, testSource.Partition, testSource.Offset)
	recordTime := time.Date(2025, 3, 14, 9, 26, 53, 589793000, time.UTC)
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	// wide nests objects of 15 names n deep, more names than the scanner
	// tracks without a map; inner goes in the innermost object.
	wide := func(n int, inner string) string {
		var b strings.Builder
		for range n {
			b.WriteString(`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":`)
		}
		b.WriteString(inner)
		b.WriteString(strings.Repeat("}", n))
		return b.String()
	}
	nested17 := `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17`

	tests := []struct {
		name      string
		value     string
		tombstone bool // the value is nil
		lim       Limits
		// class and field are what the rejection must say; class "" means
		// the value is valid.
		class Class
		field string
		check func(*testing.T, Notification)
	}{
		// Valid messages and what they decode to.
		{name: "required fields only", value: message(), check: func(t *testing.T, n Notification) {
			want := Notification{
				ID: derived, UserID: uuid.MustParse(testUserID), EventType: "order.shipped",
				Title: "Your order has shipped", Body: "It left the warehouse this morning.",
				CreatedAt: recordTime,
			}
			if n.ID != want.ID || n.UserID != want.UserID || n.EventType != want.EventType ||
				n.Title != want.Title || n.Body != want.Body || n.Data != nil || !n.CreatedAt.Equal(want.CreatedAt) {
				t.Errorf("got %+v, want %+v", n, want)
			}
		}},
		{name: "every field", value: message("id", q(testID), "created_at", q("2025-01-02T03:04:05.123456Z"), "data", `{"a":1}`),
			check: func(t *testing.T, n Notification) {
				wantID(uuid.MustParse(testID))(t, n)
				wantTime(time.Date(2025, 1, 2, 3, 4, 5, 123456000, time.UTC))(t, n)
				wantData(`{"a":1}`)(t, n)
			}},
		{name: "upper-case UUIDs", value: message("id", q(strings.ToUpper(testID)), "user_id", q(strings.ToUpper(testUserID))),
			check: func(t *testing.T, n Notification) {
				wantID(uuid.MustParse(testID))(t, n)
				if n.UserID != uuid.MustParse(testUserID) {
					t.Errorf("UserID: got %v, want %v", n.UserID, testUserID)
				}
			}},
		{name: "id absent is derived", value: message(), check: wantID(derived)},
		{name: "id null is derived", value: message("id", "null"), check: wantID(derived)},
		{name: "created_at absent is the record timestamp", value: message(), check: wantTime(recordTime)},
		{name: "created_at null is the record timestamp", value: message("created_at", "null"), check: wantTime(recordTime)},
		{name: "created_at offset kept as the same instant", value: message("created_at", q("2025-03-14T11:00:00+02:00")),
			check: wantTime(time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC))},
		{name: "created_at nanoseconds truncated to microseconds", value: message("created_at", q("2025-03-14T09:26:53.123456789Z")),
			check: wantTime(time.Date(2025, 3, 14, 9, 26, 53, 123456000, time.UTC))},
		{name: "created_at more than nine fraction digits", value: message("created_at", q("2025-03-14T09:26:53.1234569999999Z")),
			check: wantTime(time.Date(2025, 3, 14, 9, 26, 53, 123456000, time.UTC))},
		{name: "created_at negative offset", value: message("created_at", q("2025-03-14T23:30:00-05:30")),
			check: wantTime(time.Date(2025, 3, 15, 5, 0, 0, 0, time.UTC))},
		{name: "created_at leap day", value: message("created_at", q("2024-02-29T00:00:00Z")),
			check: wantTime(time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC))},
		{name: "data absent", value: message(), check: wantData("")},
		{name: "data null", value: message("data", "null"), check: wantData("")},
		{name: "data empty object", value: message("data", "{}"), check: wantData("{}")},
		{name: "data kept byte for byte", value: message("data", "{ \"b\" : 1.50 ,\n\t\"a\":[ 2 , 3e0 ] , \"c\":\"\\u00e9\\n\" , \"d\":{} }"),
			check: wantData("{ \"b\" : 1.50 ,\n\t\"a\":[ 2 , 3e0 ] , \"c\":\"\\u00e9\\n\" , \"d\":{} }")},
		{name: "data at the limit", value: message("data", dataOfSize(DefaultMaxDataBytes)),
			check: wantData(dataOfSize(DefaultMaxDataBytes))},
		{name: "data at a configured limit", value: message("data", dataOfSize(100)), lim: Limits{MaxDataBytes: 100},
			check: wantData(dataOfSize(100))},
		{name: "data same name in different objects", value: message("data", `{"a":{"x":1,"y":2},"x":[{"x":1},{"x":2}],"y":3}`),
			check: wantData(`{"a":{"x":1,"y":2},"x":[{"x":1},{"x":2}],"y":3}`)},
		{name: "data large object without duplicates", value: message("data", nested17+`,"r":{"a":1}}`),
			check: wantData(nested17 + `,"r":{"a":1}}`)},
		{name: "data many names in nested objects", value: message("data", wide(6, `{"a":1,"b":2}`)),
			check: wantData(wide(6, `{"a":1,"b":2}`))},
		{name: "data escaped backslash before u0000 is not a NUL", value: message("data", `{"a":"\\u0000"}`),
			check: wantData(`{"a":"\\u0000"}`)},
		{name: "title 256 characters", value: message("title", q(strings.Repeat("é", 256))), check: wantTitle(strings.Repeat("é", 256))},
		{name: "title 256 characters of 4 bytes", value: message("title", q(strings.Repeat("😀", 256))), check: wantTitle(strings.Repeat("😀", 256))},
		{name: "title at a configured limit", value: message("title", q("abcde")), lim: Limits{MaxTitleChars: 5}, check: wantTitle("abcde")},
		{name: "title escapes", value: message("title", `"\"q\" \\ \/ \b\f\n\r\t \u00e9 \u20AC"`), check: wantTitle("\"q\" \\ / \b\f\n\r\t é €")},
		{name: "title surrogate pair", value: message("title", `"\ud83d\ude00"`), check: wantTitle("😀")},
		{name: "title surrogate pair upper-case hex", value: message("title", `"\uD83D\uDE00!"`), check: wantTitle("😀!")},
		{name: "title raw Unicode", value: message("title", q("Новое сообщение 💬 会议")), check: wantTitle("Новое сообщение 💬 会议")},
		{name: "body empty", value: message("body", `""`), check: wantBody("")},
		{name: "body 4096 characters", value: message("body", q(strings.Repeat("ж", 4096))), check: wantBody(strings.Repeat("ж", 4096))},
		{name: "body escaped backslash before u0000", value: message("body", `"a\\u0000"`), check: wantBody(`a\u0000`)},
		{name: "event_type 64 bytes", value: message("event_type", q(strings.Repeat("a", 64))),
			check: func(t *testing.T, n Notification) {
				if len(n.EventType) != 64 {
					t.Errorf("len(EventType): got %d, want 64", len(n.EventType))
				}
			}},
		{name: "event_type every allowed character", value: message("event_type", q("azAZ09_.:-")),
			check: func(t *testing.T, n Notification) {
				if n.EventType != "azAZ09_.:-" {
					t.Errorf("EventType: got %q, want %q", n.EventType, "azAZ09_.:-")
				}
			}},
		{name: "event_type escaped ASCII", value: message("event_type", `"\u0061.b"`),
			check: func(t *testing.T, n Notification) {
				if n.EventType != "a.b" {
					t.Errorf("EventType: got %q, want %q", n.EventType, "a.b")
				}
			}},
		{name: "escaped member name", value: `{"user_id":"` + testUserID + `","event_type":"a","\u0074itle":"t","body":""}`, check: wantTitle("t")},
		{name: "unknown fields of every type ignored",
			value: message("extra", `{"x":[1,-2.5e-3,true,false,null,"s",{"y":{}}],"x2":[]}`, "n", "0", "s", `"\u00e9"`, "a", "[]", "z", "null", "Title", `"other"`),
			check: wantTitle("Your order has shipped")},
		{name: "unknown field with duplicate names inside", value: message("extra", `{"a":1,"a":2}`), check: wantTitle("Your order has shipped")},
		{name: "unknown field with NUL", value: message("extra", `"\u0000"`), check: wantTitle("Your order has shipped")},
		{name: "unknown field nested deep", value: message("extra", deep(9998)), check: wantTitle("Your order has shipped")},
		{name: "unknown field objects nested deep", value: message("extra", strings.Repeat(`{"a":`, 9998)+"1"+strings.Repeat("}", 9998)),
			check: wantTitle("Your order has shipped")},
		{name: "whitespace around and inside", value: " \t\r\n{ \"user_id\" : \"" + testUserID + "\" ,\n\"event_type\":\"a\",\"title\":\"t\",\"body\":\"\" } \n",
			check: wantTitle("t")},
		{name: "negative limits mean the defaults", value: message("title", q(strings.Repeat("a", 256))),
			lim: Limits{MaxEventTypeBytes: -1, MaxTitleChars: -1, MaxBodyChars: -1, MaxDataBytes: -1}, check: wantTitle(strings.Repeat("a", 256))},

		// The value as a whole: class decode.
		{name: "tombstone", tombstone: true, class: ClassDecode},
		{name: "empty", value: "", class: ClassDecode},
		{name: "only whitespace", value: " \n", class: ClassDecode},
		{name: "array", value: "[]", class: ClassDecode},
		{name: "string", value: `"str"`, class: ClassDecode},
		{name: "null", value: "null", class: ClassDecode},
		{name: "number", value: "42", class: ClassDecode},
		{name: "boolean", value: "true", class: ClassDecode},
		{name: "malformed array", value: "[1,", class: ClassDecode},
		{name: "byte order mark", value: "\ufeff" + message(), class: ClassDecode},
		{name: "invalid UTF-8 in title", value: message("title", "\"a\xffb\""), class: ClassDecode},
		{name: "invalid UTF-8 in unknown field", value: message("extra", "\"\xc3\x28\""), class: ClassDecode},
		{name: "invalid UTF-8 overlong encoding", value: message("body", "\"\xc0\xaf\""), class: ClassDecode},
		{name: "invalid UTF-8 encoded surrogate", value: message("body", "\"\xed\xa0\x80\""), class: ClassDecode},
		{name: "invalid UTF-8 truncated at end", value: message() + "\xe2\x82", class: ClassDecode},
		{name: "trailing garbage", value: message() + " x", class: ClassDecode},
		{name: "trailing second object", value: message() + "{}", class: ClassDecode},
		{name: "trailing NUL byte", value: message() + "\x00", class: ClassDecode},
		{name: "unterminated object", value: strings.TrimSuffix(message(), "}"), class: ClassDecode, field: "body"},
		{name: "unterminated string", value: `{"title":"abc`, class: ClassDecode, field: "title"},
		{name: "trailing comma", value: strings.TrimSuffix(message(), "}") + ",}", class: ClassDecode},
		{name: "unquoted name", value: `{title:"t"}`, class: ClassDecode},
		{name: "single quotes", value: `{'title':'t'}`, class: ClassDecode},
		{name: "missing colon", value: `{"title" "t"}`, class: ClassDecode},
		{name: "missing comma", value: `{"title":"t" "body":""}`, class: ClassDecode, field: "title"},
		{name: "leading zero", value: message("extra", "01"), class: ClassDecode, field: "extra"},
		{name: "number without fraction digits", value: message("extra", "1."), class: ClassDecode, field: "extra"},
		{name: "number with leading dot", value: message("extra", ".5"), class: ClassDecode, field: "extra"},
		{name: "number with plus", value: message("extra", "+1"), class: ClassDecode, field: "extra"},
		{name: "number with empty exponent", value: message("extra", "1e"), class: ClassDecode, field: "extra"},
		{name: "lone minus", value: message("extra", "-"), class: ClassDecode, field: "extra"},
		{name: "NaN", value: message("extra", "NaN"), class: ClassDecode, field: "extra"},
		{name: "truncated literal", value: message("extra", "tru"), class: ClassDecode, field: "extra"},
		{name: "raw control character in string", value: message("body", "\"a\tb\""), class: ClassDecode, field: "body"},
		{name: "raw NUL byte in string", value: message("body", "\"a\x00b\""), class: ClassDecode, field: "body"},
		{name: "invalid escape", value: message("body", `"a\xb"`), class: ClassDecode, field: "body"},
		{name: "short unicode escape", value: message("body", `"\u12"`), class: ClassDecode, field: "body"},
		{name: "non-hex unicode escape", value: message("body", `"\u12g4"`), class: ClassDecode, field: "body"},
		{name: "nested too deep", value: message("extra", deep(10000)), class: ClassDecode, field: "extra"},
		{name: "objects nested too deep", value: message("extra", strings.Repeat(`{"a":`, 10000)+"1"+strings.Repeat("}", 10000)), class: ClassDecode, field: "extra"},
		{name: "lone high surrogate in title", value: message("title", `"a\ud800b"`), class: ClassDecode, field: "title"},
		{name: "lone low surrogate in title", value: message("title", `"\udc00"`), class: ClassDecode, field: "title"},
		{name: "high surrogate at end of title", value: message("title", `"\ud83d"`), class: ClassDecode, field: "title"},
		{name: "high surrogate then non-surrogate", value: message("title", `"\ud83d\u0041"`), class: ClassDecode, field: "title"},
		{name: "two high surrogates", value: message("title", `"\ud83d\ud83d"`), class: ClassDecode, field: "title"},
		{name: "reversed surrogate pair", value: message("title", `"\ude00\ud83d"`), class: ClassDecode, field: "title"},
		{name: "lone surrogate in data", value: message("data", `{"a":["\ud800"]}`), class: ClassDecode, field: "data"},
		{name: "lone surrogate in data name", value: message("data", `{"\udfff":1}`), class: ClassDecode, field: "data"},
		{name: "lone surrogate in unknown field", value: message("extra", `"\ud800"`), class: ClassDecode, field: "extra"},
		{name: "lone surrogate in member name", value: message(`\ud800`, "1"), class: ClassDecode},
		{name: "duplicate title", value: strings.TrimSuffix(message(), "}") + `,"title":"again"}`, class: ClassDecode, field: "title"},
		{name: "duplicate unknown name", value: strings.TrimSuffix(message("extra", "1", "x", "2", "extra2", "3"), "}") + `,"extra":4}`, class: ClassDecode, field: "extra"},
		{name: "duplicate name spelled with an escape", value: message("\\u0074itle", `"t"`), class: ClassDecode, field: "title"},
		{name: "duplicate optional member", value: strings.TrimSuffix(message("data", "{}", "id", "null"), "}") + `,"data":{}}`, class: ClassDecode, field: "data"},
		{name: "decode problem wins over a field problem", value: message("title", "5") + "x", class: ClassDecode},

		// A JSON object that breaks the contract: class validate.
		{name: "user_id missing", value: message("user_id", ""), class: ClassValidate, field: "user_id"},
		{name: "event_type missing", value: message("event_type", ""), class: ClassValidate, field: "event_type"},
		{name: "title missing", value: message("title", ""), class: ClassValidate, field: "title"},
		{name: "body missing", value: message("body", ""), class: ClassValidate, field: "body"},
		{name: "names are case-sensitive", value: message("title", "", "Title", `"t"`), class: ClassValidate, field: "title"},
		{name: "user_id null", value: message("user_id", "null"), class: ClassValidate, field: "user_id"},
		{name: "event_type null", value: message("event_type", "null"), class: ClassValidate, field: "event_type"},
		{name: "title null", value: message("title", "null"), class: ClassValidate, field: "title"},
		{name: "body null", value: message("body", "null"), class: ClassValidate, field: "body"},
		{name: "title number", value: message("title", "5"), class: ClassValidate, field: "title"},
		{name: "title boolean", value: message("title", "true"), class: ClassValidate, field: "title"},
		{name: "title object", value: message("title", `{"t":"x"}`), class: ClassValidate, field: "title"},
		{name: "title array", value: message("title", `["t"]`), class: ClassValidate, field: "title"},
		{name: "body number", value: message("body", "0"), class: ClassValidate, field: "body"},
		{name: "event_type array", value: message("event_type", `["a"]`), class: ClassValidate, field: "event_type"},
		{name: "user_id number", value: message("user_id", "1"), class: ClassValidate, field: "user_id"},
		{name: "id number", value: message("id", "1"), class: ClassValidate, field: "id"},
		{name: "id object", value: message("id", "{}"), class: ClassValidate, field: "id"},
		{name: "created_at number", value: message("created_at", "1741944413"), class: ClassValidate, field: "created_at"},
		{name: "data string", value: message("data", `"{}"`), class: ClassValidate, field: "data"},
		{name: "data array", value: message("data", `[{"a":1}]`), class: ClassValidate, field: "data"},
		{name: "data number", value: message("data", "1"), class: ClassValidate, field: "data"},
		{name: "data boolean", value: message("data", "false"), class: ClassValidate, field: "data"},
		{name: "data one byte over the limit", value: message("data", dataOfSize(DefaultMaxDataBytes+1)), class: ClassValidate, field: "data"},
		{name: "data over a configured limit", value: message("data", dataOfSize(101)), lim: Limits{MaxDataBytes: 100}, class: ClassValidate, field: "data"},
		{name: "data NUL in a value", value: message("data", `{"a":"x\u0000"}`), class: ClassValidate, field: "data"},
		{name: "data NUL in a name", value: message("data", `{"a\u0000":1}`), class: ClassValidate, field: "data"},
		{name: "data NUL deep inside", value: message("data", `{"a":[{"b":["\u0000"]}]}`), class: ClassValidate, field: "data"},
		{name: "data duplicate name", value: message("data", `{"a":1,"a":2}`), class: ClassValidate, field: "data"},
		{name: "data duplicate name nested", value: message("data", `{"a":{"b":1,"c":{},"b":2}}`), class: ClassValidate, field: "data"},
		{name: "data duplicate name spelled with an escape", value: message("data", `{"ab":1,"a\u0062":2}`), class: ClassValidate, field: "data"},
		{name: "data duplicate name in a large object", value: message("data", nested17+`,"r":1,"c":3}`), class: ClassValidate, field: "data"},
		{name: "data duplicate name after a nested object", value: message("data", `{"a":{"x":1},"b":[{"y":2}],"a":3}`), class: ClassValidate, field: "data"},
		{name: "data duplicate name among many in nested objects", value: message("data", wide(6, `{"a":1,"b":2,"a":3}`)), class: ClassValidate, field: "data"},
		{name: "data duplicate name in an outer object among many", value: message("data", `{"z":`+wide(6, "{}")+`,"z":1}`), class: ClassValidate, field: "data"},
		{name: "id braces", value: message("id", q("{"+testID+"}")), class: ClassValidate, field: "id"},
		{name: "id urn", value: message("id", q("urn:uuid:"+testID)), class: ClassValidate, field: "id"},
		{name: "id 32 hex digits", value: message("id", q(strings.ReplaceAll(testID, "-", ""))), class: ClassValidate, field: "id"},
		{name: "id nil UUID", value: message("id", q(uuid.Nil.String())), class: ClassValidate, field: "id"},
		{name: "id empty", value: message("id", `""`), class: ClassValidate, field: "id"},
		{name: "user_id not a UUID", value: message("user_id", `"abc"`), class: ClassValidate, field: "user_id"},
		{name: "user_id non-hex digit", value: message("user_id", q("3f2b8c1e-6a4d-4e7b-9c0a-1d2e3f4a5b6g")), class: ClassValidate, field: "user_id"},
		{name: "user_id hyphen misplaced", value: message("user_id", q("3f2b8c1e6-a4d-4e7b-9c0a-1d2e3f4a5b6c")), class: ClassValidate, field: "user_id"},
		{name: "user_id with spaces", value: message("user_id", q(" "+testUserID+" ")), class: ClassValidate, field: "user_id"},
		{name: "user_id nil UUID", value: message("user_id", q(uuid.Nil.String())), class: ClassValidate, field: "user_id"},
		{name: "user_id NUL", value: message("user_id", `"\u0000"`), class: ClassValidate, field: "user_id"},
		{name: "event_type empty", value: message("event_type", `""`), class: ClassValidate, field: "event_type"},
		{name: "event_type 65 bytes", value: message("event_type", q(strings.Repeat("a", 65))), class: ClassValidate, field: "event_type"},
		{name: "event_type over a configured limit", value: message("event_type", q("abcdef")), lim: Limits{MaxEventTypeBytes: 5}, class: ClassValidate, field: "event_type"},
		{name: "event_type multi-byte letter", value: message("event_type", q("caf\u00e9")), class: ClassValidate, field: "event_type"},
		{name: "event_type escaped multi-byte letter", value: message("event_type", `"caf\u00e9"`), class: ClassValidate, field: "event_type"},
		{name: "event_type space", value: message("event_type", q("order shipped")), class: ClassValidate, field: "event_type"},
		{name: "event_type slash", value: message("event_type", q("order/shipped")), class: ClassValidate, field: "event_type"},
		{name: "event_type NUL", value: message("event_type", `"a\u0000"`), class: ClassValidate, field: "event_type"},
		{name: "title empty", value: message("title", `""`), class: ClassValidate, field: "title"},
		{name: "title 257 characters", value: message("title", q(strings.Repeat("é", 257))), class: ClassValidate, field: "title"},
		{name: "title over a configured limit", value: message("title", q("abcdef")), lim: Limits{MaxTitleChars: 5}, class: ClassValidate, field: "title"},
		{name: "title NUL", value: message("title", `"a\u0000b"`), class: ClassValidate, field: "title"},
		{name: "body 4097 characters", value: message("body", q(strings.Repeat("ж", 4097))), class: ClassValidate, field: "body"},
		{name: "body over a configured limit", value: message("body", q("abcdef")), lim: Limits{MaxBodyChars: 5}, class: ClassValidate, field: "body"},
		{name: "body NUL", value: message("body", `"line\u0000"`), class: ClassValidate, field: "body"},
		{name: "created_at NUL", value: message("created_at", `"2025-03-14T09:26:53Z\u0000"`), class: ClassValidate, field: "created_at"},
		{name: "created_at date only", value: message("created_at", q("2025-03-14")), class: ClassValidate, field: "created_at"},
		{name: "created_at without zone", value: message("created_at", q("2025-03-14T09:26:53")), class: ClassValidate, field: "created_at"},
		{name: "created_at space for T", value: message("created_at", q("2025-03-14 09:26:53Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at one-digit hour", value: message("created_at", q("2025-03-14T9:26:53Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at comma fraction", value: message("created_at", q("2025-03-14T09:26:53,5Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at empty fraction", value: message("created_at", q("2025-03-14T09:26:53.Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at offset minute 60", value: message("created_at", q("2025-03-14T09:26:53+02:60")), class: ClassValidate, field: "created_at"},
		{name: "created_at offset hour 24", value: message("created_at", q("2025-03-14T09:26:53+24:00")), class: ClassValidate, field: "created_at"},
		{name: "created_at offset without colon", value: message("created_at", q("2025-03-14T09:26:53+0200")), class: ClassValidate, field: "created_at"},
		{name: "created_at hour 24", value: message("created_at", q("2025-03-14T24:00:00Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at February 30", value: message("created_at", q("2025-02-30T00:00:00Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at February 29 in a common year", value: message("created_at", q("2025-02-29T00:00:00Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at leap second", value: message("created_at", q("2016-12-31T23:59:60Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at lower-case t", value: message("created_at", q("2025-03-14t09:26:53Z")), class: ClassValidate, field: "created_at"},
		{name: "created_at trailing space", value: message("created_at", q("2025-03-14T09:26:53Z ")), class: ClassValidate, field: "created_at"},
		{name: "first field problem in field order", value: `{"body":1,"title":2,"event_type":3,"user_id":"x"}`, class: ClassValidate, field: "user_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var value []byte
			if !tt.tombstone {
				value = []byte(tt.value)
			}
			n, err := Decode(value, testSource, tt.lim)
			if tt.class == "" {
				if err != nil {
					t.Fatalf("got error %v, want none", err)
				}
				checkNotification(t, n, tt.lim)
				if tt.check != nil {
					tt.check(t, n)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %+v, want a %s error about %q", n, tt.class, tt.field)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("got error %T %v, want *Error", err, err)
			}
			if e.Class != tt.class || e.Field != tt.field {
				t.Errorf("got class %q field %q (%v), want class %q field %q", e.Class, e.Field, err, tt.class, tt.field)
			}
			if e.Reason == "" || !utf8.ValidString(e.Error()) {
				t.Errorf("got message %q, want a valid, non-empty sentence", e.Error())
			}
			if !errors.Is(err, error(e)) || err != error(e) {
				t.Errorf("got %T wrapping, want the *Error itself", err)
			}
			if !isZero(n) {
				t.Errorf("got %+v with the error, want the zero Notification", n)
			}
		})
	}
}

func isZero(n Notification) bool {
	return n.ID == uuid.Nil && n.UserID == uuid.Nil && n.EventType == "" && n.Title == "" &&
		n.Body == "" && n.Data == nil && n.CreatedAt.IsZero()
}

func TestDecodeDerivedID(t *testing.T) {
	value := []byte(message())
	decode := func(src Source) uuid.UUID {
		t.Helper()
		n, err := Decode(value, src, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		return n.ID
	}
	a := decode(testSource)
	if b := decode(testSource); a != b {
		t.Errorf("same source: got %v then %v, want the same id", a, b)
	}
	other := testSource
	other.Offset++
	if b := decode(other); a == b {
		t.Errorf("next offset: got %v for both, want different ids", a)
	}
	other = testSource
	other.Partition++
	if b := decode(other); a == b {
		t.Errorf("other partition: got %v for both, want different ids", a)
	}
	other = testSource
	other.Topic += "2"
	if b := decode(other); a == b {
		t.Errorf("other topic: got %v for both, want different ids", a)
	}
	other = testSource
	other.Timestamp = other.Timestamp.Add(time.Hour)
	if b := decode(other); a != b {
		t.Errorf("other timestamp: got %v and %v, want the same id", a, b)
	}
}

func TestDerivedID(t *testing.T) {
	// Derived ids are idempotency keys already stored in databases: this
	// value must never change.
	const golden = "edeed6f2-dd50-572e-af89-99e8b54ab4ab"
	got := DerivedID("notifications", 2, 42)
	if want := uuid.NewSHA1(namespace, []byte("notifications/2/42")); got != want {
		t.Errorf("got %v, want uuid.NewSHA1 of the name, %v", got, want)
	}
	if got.String() != golden {
		t.Errorf("got %v, want %v", got, golden)
	}
	if got.Version() != 5 || got.Variant() != uuid.RFC4122 {
		t.Errorf("got version %d variant %v, want 5 and RFC4122", got.Version(), got.Variant())
	}
	long := strings.Repeat("t", 249)
	if got, want := DerivedID(long, -1, -9223372036854775808), uuid.NewSHA1(namespace, []byte(long+"/-1/-9223372036854775808")); got != want {
		t.Errorf("long topic: got %v, want %v", got, want)
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := (Limits{}).Validate(); err != nil {
		t.Errorf("zero Limits: got %v, want nil", err)
	}
	if err := (Limits{MaxEventTypeBytes: 1, MaxTitleChars: 1, MaxBodyChars: 1, MaxDataBytes: 1}).Validate(); err != nil {
		t.Errorf("positive Limits: got %v, want nil", err)
	}
	for _, tt := range []struct {
		lim  Limits
		name string
	}{
		{Limits{MaxEventTypeBytes: -1}, "--max-event-type-bytes"},
		{Limits{MaxTitleChars: -1}, "--max-title-chars"},
		{Limits{MaxBodyChars: -1}, "--max-body-chars"},
		{Limits{MaxDataBytes: -1}, "--max-data-bytes"},
	} {
		err := tt.lim.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.name) {
			t.Errorf("%+v: got %v, want an error naming %s", tt.lim, err, tt.name)
		}
	}
	err := Limits{MaxEventTypeBytes: -1, MaxDataBytes: -2}.Validate()
	if err == nil || !strings.Contains(err.Error(), "--max-event-type-bytes") || !strings.Contains(err.Error(), "--max-data-bytes") {
		t.Errorf("two negative: got %v, want an error naming both", err)
	}
}

func TestErrorMessage(t *testing.T) {
	for _, tt := range []struct {
		value string
		want  string
	}{
		{message("user_id", `"abc"`), `field "user_id": "abc" is not a UUID (want 8-4-4-4-12 hex digits)`},
		{message("title", "", "x", "1"), `field "title": is required but missing`},
		{message("title", "5"), `field "title": is a JSON number, want a string`},
		{message("title", q(strings.Repeat("é", 257))), `field "title": is 257 characters, want at most 256`},
		{message("event_type", q("a b")), `field "event_type": "a b" has ' ' at byte 1, want 1 to 64 bytes of letters, digits, '_', '.', ':' and '-'`},
		{message("user_id", q(strings.Repeat("é", 40))), `field "user_id": "` + strings.Repeat("é", 32) + `"... (80 bytes) is not a UUID (want 8-4-4-4-12 hex digits)`},
		{message("user_id", q(strings.Repeat("a", 40)+"\x01")), `field "user_id": invalid JSON at byte 52: control character '\x01' in a string; want it escaped`},
		{"[]", `value is a JSON array, want a JSON object`},
		{message() + "x", `invalid JSON at byte 157: 'x' after the end of the top-level value`},
		{"{\"a\":\"\xff\"}", `value is not valid UTF-8: byte 0xff at offset 6 does not start a valid sequence`},
		{message("extra", `"\ud800"`), `field "extra": invalid JSON at byte 166: \ud800 is an unpaired UTF-16 surrogate, which is not a character`},
		{message("\\u0074itle", `"t"`), `field "title": appears more than once in the object, so the message is ambiguous`},
		{message("body", `"\u0000"`), `field "body": contains a NUL character (\u0000 at byte 120), which PostgreSQL cannot store`},
	} {
		_, err := Decode([]byte(tt.value), testSource, Limits{})
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s:\ngot  %v\nwant %s", tt.value, err, tt.want)
		}
	}
}

// checkNotification fails t unless n obeys every rule of a decoded
// notification under lim.
func checkNotification(t *testing.T, n Notification, lim Limits) {
	t.Helper()
	lim = lim.withDefaults()
	if n.ID == uuid.Nil || n.UserID == uuid.Nil {
		t.Errorf("got ID %v UserID %v, want neither nil", n.ID, n.UserID)
	}
	if len(n.EventType) < 1 || len(n.EventType) > lim.MaxEventTypeBytes ||
		strings.Trim(n.EventType, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-") != "" {
		t.Errorf("got EventType %q, want 1 to %d bytes of [A-Za-z0-9_.:-]", n.EventType, lim.MaxEventTypeBytes)
	}
	for _, f := range []struct {
		name        string
		s           string
		least, most int
	}{
		{"Title", n.Title, 1, lim.MaxTitleChars},
		{"Body", n.Body, 0, lim.MaxBodyChars},
	} {
		if c := utf8.RuneCountInString(f.s); !utf8.ValidString(f.s) || c < f.least || c > f.most {
			t.Errorf("got %s of %d characters (valid UTF-8: %v), want %d to %d", f.name, c, utf8.ValidString(f.s), f.least, f.most)
		}
		if strings.IndexByte(f.s, 0) >= 0 {
			t.Errorf("got %s %q, want no NUL", f.name, f.s)
		}
	}
	if n.Data != nil {
		if len(n.Data) > lim.MaxDataBytes || n.Data[0] != '{' || !json.Valid(n.Data) || hasNUL(t, n.Data) {
			t.Errorf("got Data %q, want a valid JSON object of at most %d bytes", n.Data, lim.MaxDataBytes)
		}
	}
	if n.CreatedAt.Location() != time.UTC || n.CreatedAt.Nanosecond()%1000 != 0 {
		t.Errorf("got CreatedAt %v, want UTC and whole microseconds", n.CreatedAt)
	}
}

// hasNUL reports whether the JSON value v has a NUL character in any name or
// string.
func hasNUL(t *testing.T, v []byte) bool {
	t.Helper()
	var x any
	if err := json.Unmarshal(v, &x); err != nil {
		t.Fatalf("json.Unmarshal(%q): %v", v, err)
	}
	var walk func(any) bool
	walk = func(x any) bool {
		switch x := x.(type) {
		case string:
			return strings.IndexByte(x, 0) >= 0
		case []any:
			for _, e := range x {
				if walk(e) {
					return true
				}
			}
		case map[string]any:
			for k, e := range x {
				if strings.IndexByte(k, 0) >= 0 || walk(e) {
					return true
				}
			}
		}
		return false
	}
	return walk(x)
}
