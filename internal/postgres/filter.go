package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Filters of closed partitions (docs/architecture.md, "Filters of closed
// partitions"): the dedupe probe asks a partition whose range ended a while
// ago only for the ids its filter may hold, and for the rows committed
// there since the filter last caught up.

const (
	// filterAfter is how long after its range ends a partition is given a
	// filter: by then it takes only late rows.
	filterAfter = time.Hour
	// filterBudget bounds the memory of a store's filters, in bytes
	// (Store.filterBudget; tests lower it).
	filterBudget = 8 << 20
	// filterBitsPerID and filterHashes give about 1 % false positives.
	filterBitsPerID = 10
	filterHashes    = 7
)

// partFilter is a Bloom filter of the ids of one partition, and a snapshot
// whose every visible row's id is in it. An entry without bits marks a
// partition too large for the budget: it is probed by id.
type partFilter struct {
	bits []atomic.Uint64
	m    uint64 // len(bits) × 64
	snap atomic.Pointer[filterSnap]
}

// filterSnap is a pg_snapshot: its text form, and its xmin.
type filterSnap struct {
	text string
	xmin uint64
}

// parseSnap reads a pg_snapshot's text form, "xmin:xmax:xip,…".
func parseSnap(text string) (*filterSnap, error) {
	x, _, ok := strings.Cut(text, ":")
	xmin, err := strconv.ParseUint(x, 10, 64)
	if !ok || err != nil {
		return nil, fmt.Errorf("a snapshot %q, not xmin:xmax:xip", text)
	}
	return &filterSnap{text: text, xmin: xmin}, nil
}

// filterHash is the hash of an id that partFilter's probes derive from.
func filterHash(id [16]byte) uint64 {
	h := binary.LittleEndian.Uint64(id[:8]) ^ bits.RotateLeft64(binary.LittleEndian.Uint64(id[8:]), 29)
	// The finaliser of SplitMix64: every bit of the id reaches every bit.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// newPartFilter is an empty filter sized for n ids.
func newPartFilter(n int) *partFilter {
	words := (uint64(n)*filterBitsPerID + 63) / 64
	f := &partFilter{bits: make([]atomic.Uint64, max(words, 1))}
	f.m = uint64(len(f.bits)) * 64
	return f
}

// The filter's bits for a hash h are filterHashes positions by double
// hashing: h, h+step, h+2·step, … each scaled into [0, m).

func (f *partFilter) add(h uint64) {
	step := (h>>32 | h<<32) | 1
	for range filterHashes {
		b, _ := bits.Mul64(h, f.m)
		f.bits[b>>6].Or(1 << (b & 63))
		h += step
	}
}

// has reports whether the id of hash h may be in the filter; never false
// for one added.
func (f *partFilter) has(h uint64) bool {
	step := (h>>32 | h<<32) | 1
	for range filterHashes {
		b, _ := bits.Mul64(h, f.m)
		if f.bits[b>>6].Load()&(1<<(b&63)) == 0 {
			return false
		}
		h += step
	}
	return true
}

// advance makes sn the filter's snapshot, unless the one it has is later
// (by xmin). Its caller has added every row visible in sn.
func (f *partFilter) advance(sn *filterSnap) {
	for {
		cur := f.snap.Load()
		if sn.xmin < cur.xmin || f.snap.CompareAndSwap(cur, sn) {
			return
		}
	}
}

func (f *partFilter) size() int { return len(f.bits) * 8 }

// FilterStats is what the dedupe probe's filters of closed partitions hold
// (docs/architecture.md, "Filters of closed partitions").
type FilterStats struct {
	Partitions int // closed partitions with a filter
	OverBudget int // closed partitions probed by id: their filter would not fit
	Bytes      int // memory of the filters
}

// DedupeFilters reports the store's filters as they are.
func (s *Store) DedupeFilters() FilterStats {
	var st FilterStats
	if m := s.filters.Load(); m != nil {
		for _, f := range *m {
			if f.bits == nil {
				st.OverBudget++
				continue
			}
			st.Partitions++
			st.Bytes += f.size()
		}
	}
	return st
}

// closed reports whether p takes only late rows at now.
func closed(p Partition, now time.Time) bool {
	return !p.To.IsZero() && !p.To.After(now.Add(-filterAfter))
}

// filterOf is the usable filter of p, or nil.
func (s *Store) filterOf(p Partition) *partFilter {
	if m := s.filters.Load(); m != nil {
		if f := (*m)[p.oid]; f != nil && f.bits != nil {
			return f
		}
	}
	return nil
}

// setFilters replaces the filters by edit's change of a copy of them.
func (s *Store) setFilters(edit func(map[uint32]*partFilter)) {
	s.filtersMu.Lock()
	defer s.filtersMu.Unlock()
	m := make(map[uint32]*partFilter)
	if old := s.filters.Load(); old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	edit(m)
	s.filters.Store(&m)
}

// pruneFilters drops the filters of partitions not in parts.
func (s *Store) pruneFilters(parts []Partition) {
	m := s.filters.Load()
	if m == nil {
		return
	}
	keep := make(map[uint32]bool, len(parts))
	for _, p := range parts {
		keep[p.oid] = true
	}
	for oid := range *m {
		if !keep[oid] {
			s.setFilters(func(m map[uint32]*partFilter) {
				for oid := range m {
					if !keep[oid] {
						delete(m, oid)
					}
				}
			})
			return
		}
	}
}

// buildFilter gives a filter to one closed partition of pp that the span
// [lo, hi] reaches and that has none yet, on conn; nothing when there is
// none or another writer is building one. A partition gone or not readable
// by name is left to the probe, which deals with both.
func (s *Store) buildFilter(ctx context.Context, conn *pgx.Conn, pp *probeParts, lo, hi time.Time) error {
	now := s.now()
	m := s.filters.Load()
	var target *Partition
	for i := range pp.parts {
		p := &pp.parts[i]
		if !inSpan(*p, lo, hi) || !closed(*p, now) {
			continue
		}
		if m != nil {
			if _, ok := (*m)[p.oid]; ok {
				continue
			}
		}
		target = p
		break
	}
	if target == nil || !s.building.CompareAndSwap(false, true) {
		return nil
	}
	defer s.building.Store(false)

	used := 0
	if m != nil {
		for _, f := range *m {
			used += f.size()
		}
	}
	limit := (s.filterBudget - used) * 8 / filterBitsPerID
	t := pgx.Identifier{target.schema, target.Name}.Sanitize()
	// One statement, one snapshot: the snapshot, how many rows the
	// partition holds, and their ids unless they are more than limit ($1).
	rr := conn.PgConn().ExecParams(ctx,
		`WITH c AS MATERIALIZED (SELECT count(*) AS n FROM ONLY `+t+`)
SELECT NULL::uuid, pg_current_snapshot()::text, c.n FROM c
UNION ALL SELECT p.id, NULL, NULL FROM c, ONLY `+t+` p WHERE c.n <= $1`,
		[][]byte{binary.BigEndian.AppendUint64(nil, uint64(limit))}, nil, []int16{pgx.BinaryFormatCode},
		[]int16{pgx.BinaryFormatCode, pgx.TextFormatCode, pgx.BinaryFormatCode})
	var f *partFilter
	var sn *filterSnap
	var bad error
	for rr.NextRow() {
		v := rr.Values()
		switch {
		case len(v) != 3:
			bad = fmt.Errorf("a row of %d columns, not 3", len(v))
		case v[0] == nil && v[1] != nil && len(v[2]) == 8:
			var err error
			if sn, err = parseSnap(string(v[1])); err != nil {
				bad = err
			}
			n := int64(binary.BigEndian.Uint64(v[2]))
			if n > int64(limit) {
				f = &partFilter{} // over the budget: probed by id
			} else {
				f = newPartFilter(int(n))
			}
		case len(v[0]) == 16 && f != nil && f.bits != nil:
			f.add(filterHash([16]byte(v[0])))
		default:
			bad = errors.New("a row it should not have")
		}
	}
	if _, err := rr.Close(); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "42501") {
			return nil
		}
		return fmt.Errorf("dedupe filter of %s: %w", target.Name, err)
	}
	if bad == nil && (f == nil || sn == nil) {
		bad = errors.New("no row of its snapshot")
	}
	if bad != nil {
		return fmt.Errorf("dedupe filter of %s: the server answered with %w", target.Name, bad)
	}
	f.snap.Store(sn)
	s.setFilters(func(m map[uint32]*partFilter) { m[target.oid] = f })
	return nil
}

// inSpan reports whether p may hold rows of created_at in [lo, hi].
func inSpan(p Partition, lo, hi time.Time) bool {
	return !((!p.From.IsZero() && p.From.After(hi)) || (!p.To.IsZero() && !p.To.After(lo)))
}
