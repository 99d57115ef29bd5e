package pipeline

import (
	"sync"

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
	bytes sync.Pool // *[]byte
	recs  sync.Pool // *[]kgo.Record
}

var (
	_ kgo.PoolDecompressBytes = (*fetchPool)(nil)
	_ kgo.PoolRecords         = (*fetchPool)(nil)
)

// GetDecompressBytes returns a pooled buffer, or nil: the decompressor then
// allocates one of the right size, and that one comes back to the pool.
func (p *fetchPool) GetDecompressBytes([]byte, kgo.CompressionCodecType) []byte {
	if b, ok := p.bytes.Get().(*[]byte); ok {
		return *b
	}
	return nil
}

// PutDecompressBytes takes a buffer back; franz-go has zeroed it.
func (p *fetchPool) PutDecompressBytes(b []byte) { p.bytes.Put(&b) }

// GetRecords returns a pooled slice of at least n records, or a new one.
func (p *fetchPool) GetRecords(n int) []kgo.Record {
	if rs, ok := p.recs.Get().(*[]kgo.Record); ok && cap(*rs) >= n {
		return (*rs)[:n]
	}
	return make([]kgo.Record, n)
}

// PutRecords takes a slice back; every record in it was recycled (zeroed).
func (p *fetchPool) PutRecords(rs []kgo.Record) { p.recs.Put(&rs) }
