package api

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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

// snapshot is a pg_snapshot: the transactions below xmin have ended,
// those from xmax on had not started, and xip are those in between still
// running. A row is visible in it when its commit_xid is.
type snapshot struct {
	xmin, xmax uint64
	xip        []uint64
}

func parseSnapshot(s string) (snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return snapshot{}, fmt.Errorf("snapshot %q: want xmin:xmax:xip", s)
	}
	var sn snapshot
	var err error
	if sn.xmin, err = parseXid(parts[0]); err != nil {
		return snapshot{}, err
	}
	if sn.xmax, err = parseXid(parts[1]); err != nil {
		return snapshot{}, err
	}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := parseXid(x)
			if err != nil {
				return snapshot{}, err
			}
			if v < sn.xmin || v >= sn.xmax || len(sn.xip) > 0 && v <= sn.xip[len(sn.xip)-1] {
				return snapshot{}, fmt.Errorf("snapshot %q: xip out of order or range", s)
			}
			sn.xip = append(sn.xip, v)
		}
	}
	if sn.xmin > sn.xmax {
		return snapshot{}, fmt.Errorf("snapshot %q: xmin after xmax", s)
	}
	return sn, nil
}

func parseXid(s string) (uint64, error) {
	if s == "" || s[0] == '+' {
		return 0, fmt.Errorf("xid %q: not a number", s)
	}
	return strconv.ParseUint(s, 10, 64)
}

func (s snapshot) String() string {
	var b strings.Builder
	b.WriteString(strconv.FormatUint(s.xmin, 10))
	b.WriteByte(':')
	b.WriteString(strconv.FormatUint(s.xmax, 10))
	b.WriteByte(':')
	for i, x := range s.xip {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(x, 10))
	}
	return b.String()
}

func (s snapshot) running(x uint64) bool {
	_, found := slices.BinarySearch(s.xip, x)
	return found
}

// visible reports whether a row written by transaction x is visible in s.
func (s snapshot) visible(x uint64) bool {
	return x < s.xmin || x < s.xmax && !s.running(x)
}

// covers reports whether every row visible in p is visible in s.
func (s snapshot) covers(p snapshot) bool {
	if s.xmax < p.xmax {
		return false
	}
	for _, x := range s.xip {
		if x < p.xmax && !p.running(x) {
			return false // visible in p, not in s
		}
	}
	return true
}

// xipText is xip as text, for a $n::text[]::xid8[] parameter.
func (s snapshot) xipText() []string {
	out := make([]string, len(s.xip))
	for i, x := range s.xip {
		out[i] = strconv.FormatUint(x, 10)
	}
	return out
}

// position is how far a stream has got, and is the SSE event id. Every row
// visible in base has been delivered; with row set, so have the rows
// visible in upto but not in base up to (xid, id) in that order: a stream
// delivers the rows of each snapshot difference in (commit_xid, id) order.
type position struct {
	base snapshot
	row  bool
	upto snapshot
	xid  uint64
	id   uuid.UUID
}

// until is the snapshot the position is complete up to, for resuming.
func (p position) until() snapshot {
	if p.row {
		return p.upto
	}
	return p.base
}

func (p position) String() string {
	if !p.row {
		return p.base.String()
	}
	return p.base.String() + "~" + p.upto.String() + "~" + strconv.FormatUint(p.xid, 10) + "~" + p.id.String()
}

func parsePosition(s string) (position, error) {
	bad := fmt.Errorf("Last-Event-ID %q is not an event id of this stream", s)
	parts := strings.Split(s, "~")
	var p position
	var err error
	if p.base, err = parseSnapshot(parts[0]); err != nil {
		return position{}, bad
	}
	switch len(parts) {
	case 1:
		return p, nil
	case 4:
		if p.upto, err = parseSnapshot(parts[1]); err != nil || !p.upto.covers(p.base) {
			return position{}, bad
		}
		if p.xid, err = parseXid(parts[2]); err != nil {
			return position{}, bad
		}
		if p.id, err = uuid.Parse(parts[3]); err != nil || len(parts[3]) != 36 {
			return position{}, bad
		}
		p.row = true
		return p, nil
	}
	return position{}, bad
}
