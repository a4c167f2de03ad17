package mysql

import "github.com/dbproxy/dbproxy/proxy/frontend"

// An idle client costs little: between commands a session holds no
// buffers. It waits for the next command by reading into a small buffer
// of its own, then borrows a reader and a writer for the command; a
// small command fits that first read whole, so this costs no extra read.
// (The same scheme as the PostgreSQL front end's idle.go.)

const (
	clientBufSize = 64 << 10
	idleReadSize  = 512
)

// At most 256 readers and writers of idle sessions wait (32 MiB in all).
var buffers = frontend.NewBuffers(clientBufSize, 256)

// idleIn returns the bytes of the idle read first, then the client's.
type idleIn struct {
	s   *session
	buf [idleReadSize]byte
	off int
	n   int
}

func (p *idleIn) Read(b []byte) (int, error) {
	if p.off < p.n {
		k := copy(b, p.buf[p.off:p.n])
		p.off += k
		return k, nil
	}
	return clientIO{p.s}.Read(b)
}

// borrowBuffers gives the session a reader and a writer.
func (s *session) borrowBuffers() {
	s.in.s = s
	if s.cbr == nil {
		s.cbr = buffers.Reader()
		s.cbr.Reset(&s.in)
	}
	if s.cbw == nil {
		s.cbw = buffers.Writer()
		s.cbw.Reset(clientIO{s})
	}
}

// releaseBuffers gives the buffers back (when the session ends, or while
// it waits for a command).
func (s *session) releaseBuffers() {
	if s.cbr != nil {
		buffers.PutReader(s.cbr)
	}
	if s.cbw != nil {
		buffers.PutWriter(s.cbw)
	}
	s.cbr, s.cbw = nil, nil
}

// clientBuffered is how many bytes of the client's are read and not yet
// used.
func (s *session) clientBuffered() int {
	n := s.in.n - s.in.off
	if s.cbr != nil {
		n += s.cbr.Buffered()
	}
	return n
}

// waitIdle waits for the client's next bytes. With nothing buffered
// either way, the session gives its buffers back while it waits.
func (s *session) waitIdle() error {
	if s.clientBuffered() > 0 || s.cbw != nil && s.cbw.Buffered() > 0 {
		s.borrowBuffers()
		return nil
	}
	s.releaseBuffers()
	s.in.s = s
	n, err := clientIO{s}.Read(s.in.buf[:])
	s.in.off, s.in.n = 0, n
	s.borrowBuffers()
	return err
}
