//go:build !linux

package api

import "net"

// hangupSys is empty where there is no epoll: watch fails, and each
// stream's own goroutine waits in a read of its connection.
type hangupSys struct{}

func newHangups() (*hangups, error) { return &hangups{gone: map[uint64]func(){}}, nil }

func (h *hangups) watch(net.Conn, func()) (uint64, error) { return 0, errNoHangups }

func (h *hangups) run() {}

func (h *hangups) close() {}
