// Choosing the JSON decoder: measured, not guessed.
//
// Four ways to decode a message, each doing every check of SPEC section 1 and
// the same field validation, timed on benchMessages (339, 574, 556 and
// 1214 bytes) with go1.26.8 linux/amd64 on a shared 2-vCPU AMD EPYC under
// load from other builds (medians of 8 runs; spread 10-45%, so read the
// ratios, not the digits):
//
//	                              minimal    with_data   unicode    large
//	scanner (this package)  ns/op    805        1623       1722       2317
//	                        B/op     288         512        480       1024
//	                        allocs     1           2          2          2
//	jsontext.Decoder        ns/op   2262        2956       7254       8161
//	(go-json-experiment     B/op     952        1864       1936       2736
//	 v1.27.2)               allocs    17          34         34         40
//	encoding/json Unmarshal ns/op   5256        6976      15580      23160
//	into RawMessage fields  B/op    1880        2568       2696       3560
//	                        allocs    21          28         29         28
//	encoding/json           ns/op   9794       24680      19760      54280
//	Decoder.Token           B/op    3768        9976       9136      17392
//	                        allocs    82         240        186        499
//
// jsontext is strict by default (invalid UTF-8, unpaired surrogates and
// duplicate names are errors) and needed only a NUL scan of data, but it
// rejects duplicate names inside ignored unknown fields too and allocates
// a decoder and every token. encoding/json needs a separate escape scan for
// surrogates, and Unmarshal matches names without regard to case and cannot
// see duplicates at all, so that row is a lower bound for an approach that
// is not even correct; Decoder.Token (exact names, duplicates visible) is
// correct with the extra scans, and the slowest. The hand-written scanner
// (scan.go) is 1.8 to 4.2 times faster than the next best, allocates once
// for the strings and once for data, and adds no dependency, so Decode uses
// it; FuzzDecode checks it against encoding/json, and it was fuzzed against
// jsontext's strict validity as an oracle while it was written. The three
// alternatives lived in a throwaway harness and are not kept, to spare the
// module a dependency and a second decoder to maintain.

package notification

import (
	"testing"
	"time"

	"github.com/notifyd/notifyd/internal/loadgen"
)

// benchMessages are realistic record values, 300 to 1500 bytes: a bare
// message, one with every optional field and a small data object, one in
// several scripts with raw and escaped non-ASCII text, and a large one with a
// nested data object and unknown fields from a newer producer.
var benchMessages = []struct {
	name  string
	value string
}{
	{"minimal", `{"user_id":"3f2b8c1e-6a4d-4e7b-9c0a-1d2e3f4a5b6c","event_type":"order.shipped",` +
		`"title":"Your order #48213 has shipped",` +
		`"body":"Good news! Your order #48213 left our warehouse this morning and is on its way. ` +
		`Track it any time from the Orders page; we'll let you know when it is out for delivery.",` +
		`"created_at":"2025-03-14T09:26:53.589793Z"}`},
	{"with_data", `{"id":"8d6f0f0c-2a57-4c4e-b1a4-52c5d3c2a9e1","user_id":"3f2b8c1e-6a4d-4e7b-9c0a-1d2e3f4a5b6c",` +
		`"event_type":"payment.failed","title":"We couldn't process your payment",` +
		`"body":"Your card ending in 4242 was declined when we tried to renew your Pro subscription. ` +
		`Please update your payment method within 7 days to keep your plan.",` +
		`"created_at":"2025-03-14T09:26:53.589793238+01:00",` +
		`"data":{"invoice_id":"in_1OqZ3k2eZvKYlo2C","amount":1999,"currency":"EUR","attempt":2,` +
		`"retry_at":"2025-03-16T09:00:00Z","card":{"brand":"visa","last4":"4242"},"url":"https://example.com/billing"}}`},
	{"unicode", `{"id":"c9a646d3-9c61-4cb0-bb3e-2a4b0b5d7e11","user_id":"0e7c2d9a-51f3-4b8e-a6d4-9f1b2c3d4e5f",` +
		`"event_type":"chat:message","title":"Новое сообщение от Анны 💬",` +
		`"body":"Anna: Привет! Ты придёшь завтра на встречу? 会议在下午三点开始。\n` +
		`Αν δεν μπορείς, πες μου 🙏 \u00e9t\u00e9 \ud83d\ude00 — «ok»",` +
		`"created_at":"2025-03-14T22:05:00+03:00",` +
		`"data":{"thread":"t_9f8e7d","from":{"id":"u_1234","name":"Анна Петрова"},"preview":"Привет! Ты придёшь…"}}`},
	{"large", `{"id":"5b8f3c2a-7d1e-4f6a-9b0c-3e2d1f4a5b6c","user_id":"a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",` +
		`"event_type":"report.ready","title":"Your weekly analytics report is ready",` +
		`"body":"Your report for the week of 3 to 9 March is ready. Visits are up 12% on last week, ` +
		`with most of the growth from organic search. Three pages crossed 10,000 views for the first time. ` +
		`Open the report to see the breakdown by channel, country and device, and to export it as CSV or PDF.",` +
		`"created_at":"2025-03-10T06:00:00Z","schema_version":3,"producer":{"name":"reports","version":"2.14.1"},` +
		`"trace":{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","sampled":true},` +
		`"data":{"report_id":"rpt_20250310_weekly","period":{"from":"2025-03-03","to":"2025-03-09"},` +
		`"metrics":{"visits":48213,"visits_change":0.12,"bounce_rate":0.413,"avg_session_s":184.6},` +
		`"top_pages":[{"path":"/pricing","views":12873},{"path":"/blog/launch","views":11204},` +
		`{"path":"/docs/getting-started","views":10052}],"channels":{"organic":0.46,"direct":0.28,` +
		`"referral":0.16,"social":0.1},"links":{"web":"https://example.com/reports/rpt_20250310_weekly",` +
		`"csv":"https://example.com/reports/rpt_20250310_weekly.csv"},"tags":["weekly","analytics","auto"]}}`},
}

// BenchmarkDecode measures Decode on each of benchMessages.
func BenchmarkDecode(b *testing.B) {
	src := Source{Topic: "notifications", Partition: 3, Offset: 1234567, Timestamp: time.Unix(1741944413, 589793238)}
	for _, bm := range benchMessages {
		value := []byte(bm.value)
		if _, err := Decode(value, src, Limits{}); err != nil {
			b.Fatalf("%s: %v", bm.name, err)
		}
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(value)))
			for b.Loop() {
				if _, err := Decode(value, src, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bm.name+"-shared", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(value)))
			for b.Loop() {
				if _, err := DecodeShared(value, src, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// loadgenValues are 1,000 messages of the benchmark's load generator (what
// notifyd bench drains): ASCII text with names and words of other scripts
// among it.
func loadgenValues(b *testing.B) (values [][]byte, size int64) {
	gen := loadgen.New(1, 0)
	for range 1000 {
		v, _ := gen.Next()
		values = append(values, v)
		size += int64(len(v))
	}
	return values, size / int64(len(values))
}

// BenchmarkDecodeLoadgen measures DecodeShared on loadgenValues, as the
// pipeline decodes.
func BenchmarkDecodeLoadgen(b *testing.B) {
	values, size := loadgenValues(b)
	src := Source{Topic: "notifications", Partition: 3, Offset: 1234567, Timestamp: time.Unix(1741944413, 589793238)}
	b.ReportAllocs()
	b.SetBytes(size)
	i := 0
	for b.Loop() {
		if _, err := DecodeShared(values[i%len(values)], src, Limits{}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
