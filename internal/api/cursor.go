package api

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// cursorVersion is the first byte of every cursor, so that the format can
// change without old cursors being misread.
const cursorVersion = 1

// cursor is a feed position: the key (created_at, id) of the last row
// returned. It names no user: every query is bound to the token's user.
type cursor struct {
	createdAt time.Time
	id        uuid.UUID
}

var errBadCursor = errors.New("cursor: not a cursor this server issued (pass next_cursor back unchanged)")

func (c cursor) String() string {
	var b [1 + 8 + 16]byte
	b[0] = cursorVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(c.createdAt.UnixMicro()))
	copy(b[9:], c.id[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func parseCursor(s string) (cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 25 || b[0] != cursorVersion {
		return cursor{}, errBadCursor
	}
	var c cursor
	c.createdAt = time.UnixMicro(int64(binary.BigEndian.Uint64(b[1:9]))).UTC()
	copy(c.id[:], b[9:])
	return c, nil
}

// position is a place in the stream's order (commit_xid, id): a
// notification's (row set), or a horizon, "every transaction below xid"
// (row unset). It is the SSE event id.
type position struct {
	xid uint64
	id  uuid.UUID
	row bool
}

func (p position) String() string {
	if !p.row {
		return strconv.FormatUint(p.xid, 10)
	}
	return strconv.FormatUint(p.xid, 10) + "-" + p.id.String()
}

func parsePosition(s string) (position, error) {
	x, id, hasID := strings.Cut(s, "-")
	xid, err := strconv.ParseUint(x, 10, 64)
	if err != nil || x == "" || x[0] == '+' {
		return position{}, fmt.Errorf("Last-Event-ID %q is not an event id of this stream", s)
	}
	p := position{xid: xid}
	if hasID {
		u, err := uuid.Parse(id)
		if err != nil || len(id) != 36 {
			return position{}, fmt.Errorf("Last-Event-ID %q is not an event id of this stream", s)
		}
		p.id, p.row = u, true
	}
	return p, nil
}

// after reports whether the row at (xid, id) comes after p in the order.
func (p position) after(xid uint64, id uuid.UUID) bool {
	if !p.row {
		return xid >= p.xid
	}
	if xid != p.xid {
		return xid > p.xid
	}
	return string(id[:]) > string(p.id[:])
}
