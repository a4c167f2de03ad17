package postgres

import (
	"net"
	"time"

	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// An idle client costs little: between requests a session holds no
// buffers. It waits for the next request by reading into a small buffer
// of its own, then borrows a reader and a writer for the request. A small
// request fits that first read whole, so this costs no extra read.

const (
	clientReadSize  = 16 << 10
	clientWriteSize = 16 << 10
	idleReadSize    = 512
)

// At most 256 readers and writers of idle sessions wait (8 MiB in all).
var buffers = frontend.NewBuffers(clientReadSize, 256)

// prefixReader returns the bytes of the idle read first, then the
// connection's.
type prefixReader struct {
	conn net.Conn
	buf  [idleReadSize]byte
	off  int
	n    int
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if p.off < p.n {
		k := copy(b, p.buf[p.off:p.n])
		p.off += k
		return k, nil
	}
	return p.conn.Read(b)
}

// borrowBuffers gives the session a reader and a writer for a request.
func (s *session) borrowBuffers() {
	if s.cbr == nil {
		s.cbr = buffers.Reader()
		s.cbr.Reset(&s.in)
	}
	if s.cbw == nil {
		s.cbw = buffers.Writer()
		s.cbw.Reset(s.client)
	}
}

// waitIdle gives the buffers back, if nothing is left in them, and waits
// for the client's next bytes. It reports whether it waited that way.
func (s *session) waitIdle() (bool, error) {
	if s.rl.duplex != nil || s.cbr.Buffered() > 0 || s.cbw.Buffered() > 0 || s.in.off < s.in.n {
		return false, nil
	}
	// Only the session goroutine touches the buffers outside duplex.
	buffers.PutReader(s.cbr)
	buffers.PutWriter(s.cbw)
	s.cbr, s.cbw = nil, nil
	for {
		s.mu.Lock()
		s.idleWaiting = true
		s.mu.Unlock()
		n, err := s.client.Read(s.in.buf[:])
		s.mu.Lock()
		s.idleWaiting = false
		s.mu.Unlock()
		if s.moveWanted.Load() && s.why.Load() == whyNone && (n > 0 || isTimeout(err)) {
			// Superseded may have woken us with a deadline: clear it,
			// unless a kill set its own meanwhile.
			_ = s.client.SetReadDeadline(time.Time{})
			if s.why.Load() != whyNone {
				_ = s.client.SetReadDeadline(time.Unix(1, 0))
			} else if n == 0 {
				s.maybeMove()
				continue
			}
		}
		s.in.off, s.in.n = 0, n
		s.borrowBuffers()
		return true, err
	}
}

// releaseBuffers gives the buffers back when the session ends.
func (s *session) releaseBuffers() {
	if s.cbr != nil {
		buffers.PutReader(s.cbr)
	}
	if s.cbw != nil {
		buffers.PutWriter(s.cbw)
	}
	s.cbr, s.cbw = nil, nil
}
