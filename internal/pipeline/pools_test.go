package pipeline

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"
)

// snappy compresses b as franz-go's producer does.
func snappy(t *testing.T, b []byte) []byte {
	t.Helper()
	c, err := kgo.DefaultCompressor(kgo.SnappyCompression())
	if err != nil {
		t.Fatal(err)
	}
	out, codec := c.Compress(new(bytes.Buffer), b)
	if codec != kgo.CodecSnappy {
		t.Fatalf("compressed with codec %d, want snappy", codec)
	}
	return bytes.Clone(out)
}

// TestFetchPoolDecompressesIntoItsBuffers checks that a snappy batch is
// decompressed into a buffer of the pool, sized by the block's header, and
// that a buffer put back serves the next batch that fits in it.
func TestFetchPoolDecompressesIntoItsBuffers(t *testing.T) {
	p := newFetchPool()
	d := kgo.DefaultDecompressor(p)
	plain := bytes.Repeat([]byte(`{"user_id":"6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11","title":"Ihr Paket ist da"}`), 2000)
	src := snappy(t, plain)

	out, err := d.Decompress(src, kgo.CodecSnappy)
	if err != nil || !bytes.Equal(out, plain) {
		t.Fatalf("decompressed %d bytes (%v), want the %d of the batch", len(out), err, len(plain))
	}
	if want := roundUp(len(plain), 64<<10); cap(out) != want {
		t.Fatalf("buffer of capacity %d, want the batch's %d rounded up: %d", cap(out), len(plain), want)
	}
	first := unsafe.SliceData(out)
	clear(out)
	p.PutDecompressBytes(out)

	small := snappy(t, plain[:len(plain)/3])
	if out, err = d.Decompress(small, kgo.CodecSnappy); err != nil || !bytes.Equal(out, plain[:len(plain)/3]) {
		t.Fatalf("second batch: %v", err)
	}
	if unsafe.SliceData(out) != first {
		t.Fatal("a smaller batch did not reuse the free buffer")
	}
	// Nothing free: a new buffer again, not a stale one.
	if out2, _ := d.Decompress(small, kgo.CodecSnappy); unsafe.SliceData(out2) == first {
		t.Fatal("one buffer lent twice")
	}
}

func TestFreeListTakesBestFitAndKeepsItsLimits(t *testing.T) {
	l := freeList[byte]{limit: 1000}
	for _, c := range []int{100, 400, 200} {
		l.put(make([]byte, 0, c))
	}
	if got := cap(l.get(150)); got != 200 {
		t.Fatalf("get(150): capacity %d, want the smallest that fits, 200", got)
	}
	if got := cap(l.get(-1)); got != 400 {
		t.Fatalf("get(-1): capacity %d, want the largest, 400", got)
	}
	if got := l.get(500); got != nil {
		t.Fatalf("get(500): capacity %d, want none", cap(got))
	}
	if l.held != 100 {
		t.Fatalf("held %d after taking 200 and 400 of 700, want 100", l.held)
	}
	l.put(make([]byte, 0, 901)) // 100 + 901 > 1000: dropped
	if l.held != 100 || len(l.free) != 1 {
		t.Fatalf("held %d in %d slices, want the over-limit slice dropped", l.held, len(l.free))
	}
	many := freeList[byte]{limit: 1 << 30}
	for range freeListLen + 5 {
		many.put(make([]byte, 0, 1))
	}
	if len(many.free) != freeListLen {
		t.Fatalf("kept %d slices, want at most %d", len(many.free), freeListLen)
	}
}

func TestFetchPoolRecords(t *testing.T) {
	p := newFetchPool()
	rs := p.GetRecords(300)
	if len(rs) != 300 || cap(rs) != 512 {
		t.Fatalf("GetRecords(300): len %d cap %d, want 300 and 512", len(rs), cap(rs))
	}
	p.PutRecords(rs[:cap(rs)])
	again := p.GetRecords(10)
	if len(again) != 10 || unsafe.SliceData(again) != unsafe.SliceData(rs) {
		t.Fatal("a smaller batch did not reuse the free record slice")
	}
}

func TestRoundUp(t *testing.T) {
	for _, c := range [][3]int{{0, 64, 1}, {1, 64, 1}, {3, 64, 4}, {64, 64, 64}, {65, 64, 128}, {129, 64, 192}, {300, 512, 512}} {
		if got := roundUp(c[0], c[1]); got != c[2] {
			t.Errorf("roundUp(%d, %d) = %d, want %d", c[0], c[1], got, c[2])
		}
	}
}
