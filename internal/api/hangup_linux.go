package api

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// hangupSys is an epoll instance that holds every watched connection for
// EPOLLRDHUP (the client closed its side or the connection broke). The
// epoll descriptor is itself pollable: run waits for it in Go's network
// poller, so watching takes one goroutine in all, parked like any other.
// A connection closed by the server leaves the set by itself.
type hangupSys struct {
	epoll *os.File
}

func newHangups() (*hangups, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("hangup watcher: epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("hangup watcher: %w", err)
	}
	return &hangups{gone: map[uint64]func(){}, sys: hangupSys{epoll: os.NewFile(uintptr(fd), "hangups")}}, nil
}

// watch calls gone once the client of c hangs up, unless forget is called
// first with the token it returns.
func (h *hangups) watch(c net.Conn, gone func()) (uint64, error) {
	if h == nil {
		return 0, errNoHangups
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errNoHangups
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	tok := h.register(gone)
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP, Fd: int32(tok), Pad: int32(tok >> 32)}
	var addErr error
	err = raw.Control(func(fd uintptr) {
		addErr = unix.EpollCtl(h.epollFD(), unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = addErr
	}
	if err != nil {
		h.forget(tok)
		return 0, err
	}
	return tok, nil
}

// epollFD is the epoll descriptor, or -1 once closed (EpollCtl then fails).
func (h *hangups) epollFD() int {
	fd := -1
	if raw, err := h.sys.epoll.SyscallConn(); err == nil {
		_ = raw.Control(func(f uintptr) { fd = int(f) })
	}
	return fd
}

// run calls the gone of each connection whose client hangs up, until
// close.
func (h *hangups) run() {
	raw, err := h.sys.epoll.SyscallConn()
	if err != nil {
		return
	}
	events := make([]unix.EpollEvent, 128)
	for {
		var n int
		err := raw.Read(func(fd uintptr) bool {
			var werr error
			n, werr = unix.EpollWait(int(fd), events, 0)
			return n > 0 || werr != nil && !errors.Is(werr, unix.EINTR)
		})
		if err != nil {
			return // closed
		}
		for _, ev := range events[:max(n, 0)] {
			h.hungUp(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
	}
}

// close ends run.
func (h *hangups) close() { _ = h.sys.epoll.Close() }
