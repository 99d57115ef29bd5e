package pipeline

import (
	"bytes"
	"sync"
	"unsafe"

	"github.com/klauspost/compress/s2"
	"github.com/twmb/franz-go/pkg/kgo"
)

// fetchPool lends franz-go the memory of fetched records: the buffers
// record batches are decompressed into, and the Records themselves. Both
// come back once every record of a batch has been recycled
// (kgo.Record.Recycle), which the consume goroutine does when it is done
// with a record: once its row or dead letter is committed, or when it drops
// it (not held, already stored, re-read). A record that is never recycled
// (a failed write's, kept for the retry, or a fenced one's) only keeps its
// batch's memory from coming back; the garbage collector frees it.
//
// The rows decoded from a record share its value (DecodeShared), so a
// record must not be recycled while anything may still read its row or
// its dead letter: recycle is the last use.
//
// A commit frees a whole write's batches at once, and the next fetches
// want as many again: the pool keeps enough free memory for that
// (docs/architecture.md, "How a message travels"), and no more, since a
// free buffer held for nothing is resident memory. What does not fit is
// left to the garbage collector.
type fetchPool struct {
	bytes freeList[byte]
	recs  freeList[kgo.Record]
}

// What a fetchPool keeps free at most: freeListLen slices of each kind,
// freeBytes bytes of decompression buffers and as many bytes of records.
const (
	freeListLen = 64
	freeBytes   = 4 << 20
)

func newFetchPool() *fetchPool {
	return &fetchPool{
		bytes: freeList[byte]{limit: freeBytes},
		recs:  freeList[kgo.Record]{limit: freeBytes / int(unsafe.Sizeof(kgo.Record{}))},
	}
}

var (
	_ kgo.PoolDecompressBytes = (*fetchPool)(nil)
	_ kgo.PoolRecords         = (*fetchPool)(nil)
)

// xerialPrefix starts snappy data in the framing of Kafka's Java producer,
// whose size its first block does not tell.
var xerialPrefix = []byte{130, 83, 78, 65, 80, 80, 89, 0}

// GetDecompressBytes returns a buffer for a batch to be decompressed into.
// A snappy block says its decoded size: the buffer is the smallest free one
// that holds it, or a new one of that size rounded up, so that it serves
// later batches too. For other codecs the size is not known: the buffer is
// the largest free one, or nil, and the decompressor grows it as it must.
func (p *fetchPool) GetDecompressBytes(src []byte, codec kgo.CompressionCodecType) []byte {
	if codec == kgo.CodecSnappy && !bytes.HasPrefix(src, xerialPrefix) {
		if n, err := s2.DecodedLen(src); err == nil {
			if b := p.bytes.get(n); b != nil {
				return b
			}
			return make([]byte, 0, roundUp(n, 64<<10))
		}
	}
	return p.bytes.get(-1)
}

// PutDecompressBytes takes a buffer back; franz-go has zeroed it.
func (p *fetchPool) PutDecompressBytes(b []byte) { p.bytes.put(b) }

// GetRecords returns a slice of n records, free or new.
func (p *fetchPool) GetRecords(n int) []kgo.Record {
	if rs := p.recs.get(n); rs != nil {
		return rs[:n]
	}
	return make([]kgo.Record, n, roundUp(n, 512))
}

// PutRecords takes a slice back; every record in it was recycled (zeroed).
func (p *fetchPool) PutRecords(rs []kgo.Record) { p.recs.put(rs) }

// freeList holds free slices: at most freeListLen, and at most limit
// elements of capacity in all. mu guards free and held.
type freeList[T any] struct {
	mu    sync.Mutex
	free  [][]T
	held  int // sum of the capacities in free
	limit int
}

// get removes and returns the free slice of least capacity that holds n
// elements; for n < 0 the one of most capacity. It returns nil when none
// does.
func (l *freeList[T]) get(n int) []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	best := -1
	for i, s := range l.free {
		switch c := cap(s); {
		case n < 0 && (best < 0 || c > cap(l.free[best])):
			best = i
		case n >= 0 && c >= n && (best < 0 || c < cap(l.free[best])):
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	s := l.free[best]
	last := len(l.free) - 1
	l.free[best], l.free[last] = l.free[last], nil
	l.free = l.free[:last]
	l.held -= cap(s)
	return s[:0]
}

// put keeps s if there is room for it.
func (l *freeList[T]) put(s []T) {
	if cap(s) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.free) < freeListLen && l.held+cap(s) <= l.limit {
		l.free = append(l.free, s[:0])
		l.held += cap(s)
	}
}

// roundUp rounds n up to a power of two up to step, and to a multiple of
// step beyond it: at most twice what is asked for a small slice, at most
// step more for a large one.
func roundUp(n, step int) int {
	if n > step {
		return (n + step - 1) / step * step
	}
	c := 1
	for c < n {
		c <<= 1
	}
	return c
}
