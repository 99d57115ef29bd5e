package api

import (
	"errors"
	"sync"
)

// hangups calls a stream's gone function once the client at the other end
// of its connection hangs up, without a goroutine per stream: an idle
// stream is then only its state on the heap (docs/architecture.md,
// "Goroutines and what each owns"). Where the system offers no way to
// watch connections together, watch fails and the stream's own goroutine
// waits in a read instead (Server.readConn).
type hangups struct {
	mu   sync.Mutex
	gone map[uint64]func()
	next uint64
	sys  hangupSys
}

var errNoHangups = errors.New("no hangup watcher")

// register gives gone a token, the key of a watched connection.
func (h *hangups) register(gone func()) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next++
	h.gone[h.next] = gone
	return h.next
}

// forget stops watching tok's connection; its gone is not called after
// forget returns, unless it was running already. tok 0 is none.
func (h *hangups) forget(tok uint64) {
	if h == nil || tok == 0 {
		return
	}
	h.mu.Lock()
	delete(h.gone, tok)
	h.mu.Unlock()
}

// hungUp calls the gone of tok, if it is still watched, and forgets it.
func (h *hangups) hungUp(tok uint64) {
	h.mu.Lock()
	gone := h.gone[tok]
	delete(h.gone, tok)
	h.mu.Unlock()
	if gone != nil {
		gone()
	}
}
