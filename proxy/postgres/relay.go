package postgres

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// errTerminate is the client's Terminate message: a clean goodbye.
var errTerminate = errors.New("client sent Terminate")

// readFrame reads one typed message whole; for small control messages.
func readFrame(r *bufio.Reader, maxLen int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > maxLen {
		return 0, nil, fmt.Errorf("message %q of %d bytes is over the %d byte limit", hdr[0], n, maxLen)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

// copyFrame copies one typed message from r to w as bytes. Messages that
// fit the reader's buffer are copied from it without allocation, and body
// aliases that buffer until the next read; larger ones stream through
// without being held whole, and body is nil.
func copyFrame(r *bufio.Reader, w *bufio.Writer, maxLen int) (typ byte, body []byte, n int, err error) {
	hdr, err := r.Peek(5)
	if err != nil {
		return 0, nil, 0, err
	}
	typ = hdr[0]
	size := int(binary.BigEndian.Uint32(hdr[1:]))
	if size < 4 || size-4 > maxLen {
		return typ, nil, 0, &Error{Severity: "FATAL", Code: codeProgramLimit,
			Message: fmt.Sprintf("message %q of %d bytes is over dbproxy's limit of %d bytes", typ, size-4, maxLen),
			Hint:    "send smaller messages, e.g. COPY in chunks or large values as several parameters"}
	}
	if 1+size <= r.Size() {
		frame, err := r.Peek(1 + size)
		if err != nil {
			return typ, nil, 0, err
		}
		if _, err := w.Write(frame); err != nil {
			return typ, nil, 0, err
		}
		_, _ = r.Discard(1 + size)
		return typ, frame[5:], 1 + size, nil
	}
	if _, err := w.Write(hdr); err != nil {
		return typ, nil, 0, err
	}
	_, _ = r.Discard(5)
	m, err := io.CopyN(w, r, int64(size-4))
	return typ, nil, 5 + int(m), err
}

// clientToUpstream relays the client's messages until Terminate or error.
func (s *session) clientToUpstream() error {
	up := s.lease.Conn.(*upstream)
	for {
		t, err := s.cbr.Peek(1)
		if err != nil {
			return err
		}
		if t[0] == 'X' {
			_, _ = s.cbr.Discard(min(5, s.cbr.Buffered()))
			return errTerminate
		}
		typ, _, n, err := copyFrame(s.cbr, up.bw, s.srv.opts.MaxMessageBytes)
		if err != nil {
			return err
		}
		s.bytesIn.Add(int64(n))
		switch typ {
		case 'Q', 'S', 'F':
			// Each of these is answered by exactly one ReadyForQuery.
			s.pending.Add(1)
		}
		if s.cbr.Buffered() == 0 {
			if err := up.bw.Flush(); err != nil {
				return err
			}
		}
	}
}

// upstreamToClient relays the server's messages and tracks the
// transaction status from ReadyForQuery.
func (s *session) upstreamToClient() error {
	up := s.lease.Conn.(*upstream)
	for {
		typ, body, n, err := copyFrame(up.br, s.cbw, 1<<30)
		if err != nil {
			// Whatever was complete still reaches the client.
			_ = s.cbw.Flush()
			return err
		}
		s.bytesOut.Add(int64(n))
		if typ == 'Z' && len(body) == 1 {
			s.txStatus.Store(uint32(body[0]))
			s.pending.Add(-1)
		}
		if up.br.Buffered() == 0 {
			if err := s.cbw.Flush(); err != nil {
				return err
			}
		}
	}
}

// isTimeout reports a deadline we set to stop a blocked read.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// interruptRead stops a goroutine blocked reading c and restores c.
func interruptRead(c net.Conn, done <-chan error) error {
	_ = c.SetReadDeadline(time.Unix(1, 0))
	err := <-done
	_ = c.SetReadDeadline(time.Time{})
	return err
}
