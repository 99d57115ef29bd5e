package pipeline

import (
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
type fetchPool struct {
	// A few free buffers and record slices, no more: the client fetches
	// from one broker connection at a time per broker, and a free buffer
	// held for nothing is resident memory. What does not fit is left to the
	// garbage collector.
	bytes chan []byte
	recs  chan []kgo.Record
}

// fetchPoolSize is how many free buffers, and free record slices, a
// fetchPool keeps.
const fetchPoolSize = 4

func newFetchPool() *fetchPool {
	return &fetchPool{bytes: make(chan []byte, fetchPoolSize), recs: make(chan []kgo.Record, fetchPoolSize)}
}

var (
	_ kgo.PoolDecompressBytes = (*fetchPool)(nil)
	_ kgo.PoolRecords         = (*fetchPool)(nil)
)

// GetDecompressBytes returns a free buffer, or nil: the decompressor then
// allocates one of the right size, and that one comes back to the pool.
func (p *fetchPool) GetDecompressBytes([]byte, kgo.CompressionCodecType) []byte {
	select {
	case b := <-p.bytes:
		return b
	default:
		return nil
	}
}

// PutDecompressBytes takes a buffer back; franz-go has zeroed it.
func (p *fetchPool) PutDecompressBytes(b []byte) {
	select {
	case p.bytes <- b:
	default:
	}
}

// GetRecords returns a free slice of at least n records, or a new one.
func (p *fetchPool) GetRecords(n int) []kgo.Record {
	select {
	case rs := <-p.recs:
		if cap(rs) >= n {
			return rs[:n]
		}
	default:
	}
	return make([]kgo.Record, n)
}

// PutRecords takes a slice back; every record in it was recycled (zeroed).
func (p *fetchPool) PutRecords(rs []kgo.Record) {
	select {
	case p.recs <- rs:
	default:
	}
}
