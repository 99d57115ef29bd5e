package postgres

import (
	"context"
	"encoding/binary"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/notifyd/notifyd/internal/notification"
)

// copySQL starts the binary COPY of notifications' columns, in the order
// copyReader encodes them.
const copySQL = `COPY notifications (id, user_id, event_type, title, body, data, created_at) FROM STDIN (FORMAT binary)`

// copyRows writes rows with binary COPY straight into the table: the
// physical limit of the sink, and what a batch without duplicate ids (the
// usual case: notifyd's own redeliveries are rolled back, never committed)
// can use. A duplicate id fails it with SQLSTATE 23505, and the write is
// run again with insertRows.
//
// The rows are encoded here, straight into the connection's copy buffer:
// pgx's CopyFrom would first ask the server for the columns' types (a
// round trip per write), then box and encode every value through its type
// map, and hand the bytes over from a goroutine of its own through a pipe.
// The types of notifications' columns are fixed by the migrations.
func copyRows(ctx context.Context, pc *pgconn.PgConn, rows []notification.Notification) (int64, error) {
	tag, err := pc.CopyFrom(ctx, &copyReader{rows: rows}, copySQL)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// copyReader is the binary COPY stream of rows (PostgreSQL's "binary
// format" of COPY: a signature, each row as a field count and each field as
// its length and its binary form, then a trailer).
type copyReader struct {
	rows    []notification.Notification
	next    int    // index of the next row to encode
	started bool   // the header is written
	done    bool   // the trailer is written
	spill   []byte // encoded bytes that did not fit into the last Read
}

// copyHeader is the signature, the flags field and the header extension
// length of the binary COPY format.
var copyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// pgEpochMicros is PostgreSQL's timestamp epoch, 2000-01-01 00:00:00 UTC, in Unix
// microseconds.
const pgEpochMicros = 946_684_800 * 1_000_000

func (r *copyReader) Read(p []byte) (int, error) {
	n := 0
	if len(r.spill) > 0 {
		n = copy(p, r.spill)
		r.spill = r.spill[n:]
		if len(r.spill) > 0 {
			return n, nil
		}
	}
	if !r.started {
		r.started = true
		r.spill = append(r.spill[:0], copyHeader...)
		return r.flushSpill(p, n)
	}
	for r.next < len(r.rows) {
		row := &r.rows[r.next]
		size := copyRowSize(row)
		if size <= len(p)-n {
			appendCopyRow(p[n:n:n+size], row)
			n += size
			r.next++
			continue
		}
		if n > 0 {
			return n, nil // the row goes into the next Read
		}
		// A row larger than the whole buffer: encode it aside and hand it
		// over in pieces.
		r.spill = appendCopyRow(r.spill[:0], row)
		r.next++
		return r.flushSpill(p, n)
	}
	if !r.done {
		if len(p)-n < 2 {
			return n, nil
		}
		binary.BigEndian.PutUint16(p[n:], 0xffff) // the trailer: a field count of -1
		r.done = true
		return n + 2, io.EOF
	}
	return n, io.EOF
}

// flushSpill copies what fits of the spill into p after its first n bytes.
func (r *copyReader) flushSpill(p []byte, n int) (int, error) {
	m := copy(p[n:], r.spill)
	r.spill = r.spill[m:]
	return n + m, nil
}

// copyRowSize is the encoded size of a row: a field count, then each of the
// seven fields as a 4-byte length and its value.
func copyRowSize(r *notification.Notification) int {
	size := 2 + 7*4 + 16 + 16 + len(r.EventType) + len(r.Title) + len(r.Body) + 8
	if r.Data != nil {
		size += 1 + len(r.Data) // jsonb's binary form: a version byte, then the text
	}
	return size
}

// appendCopyRow appends the binary COPY form of r to b.
func appendCopyRow(b []byte, r *notification.Notification) []byte {
	b = binary.BigEndian.AppendUint16(b, 7)
	b = binary.BigEndian.AppendUint32(b, 16)
	b = append(b, r.ID[:]...)
	b = binary.BigEndian.AppendUint32(b, 16)
	b = append(b, r.UserID[:]...)
	b = appendCopyText(b, r.EventType)
	b = appendCopyText(b, r.Title)
	b = appendCopyText(b, r.Body)
	if r.Data == nil {
		b = binary.BigEndian.AppendUint32(b, 0xffffffff) // NULL
	} else {
		b = binary.BigEndian.AppendUint32(b, uint32(1+len(r.Data)))
		b = append(b, 1)
		b = append(b, r.Data...)
	}
	b = binary.BigEndian.AppendUint32(b, 8)
	return binary.BigEndian.AppendUint64(b, uint64(pgMicros(r.CreatedAt)))
}

// appendCopyText appends a text field: the connection's client encoding
// is UTF-8 (pgx sets it), and Decode has checked the text is UTF-8 without
// NUL.
func appendCopyText(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// pgMicros is t as timestamptz's binary form: microseconds since
// PostgreSQL's epoch.
func pgMicros(t time.Time) int64 {
	return t.Unix()*1_000_000 + int64(t.Nanosecond()/1000) - pgEpochMicros
}
