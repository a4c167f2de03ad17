package pool

import (
	"net"
	"syscall"
)

// PeerOpen reports whether the server end of an idle connection is still
// open: nothing is waiting to be read on it, neither bytes nor the EOF a
// server's close leaves behind (pg_terminate_backend, KILL, wait_timeout,
// a restart). It costs one non-blocking system call, so callers use it
// where a dead connection is likely (a session's first checkout, a retry
// after one was found dead), not on every checkout. Connections that are
// not sockets (TLS wraps the socket: pass the raw one) count as open.
func PeerOpen(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	open := true
	var b [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	})
	return open
}
