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

// The relay is one goroutine per client session. It reads the client's
// request up to its boundary (Sync, Query, FunctionCall or Flush with
// nothing more buffered), checks a server connection out if the session
// holds none, writes the request upstream with one flush, and relays the
// answer until every request of it is complete, flushing the client when
// the upstream buffer runs empty. Kills and drain deadlines reach it
// through socket deadlines (interrupt.go). Only where one goroutine could
// deadlock (COPY FROM STDIN, a client pipeline the server answers faster
// than it is written, LISTEN in session mode) does a session switch to a
// two-direction relay (duplex.go), and back at the next boundary.

// errTerminate is the client's Terminate message: a clean goodbye.
var errTerminate = errors.New("client sent Terminate")

// maxServerFrame caps one server message; PostgreSQL's own limit is 1 GB.
const maxServerFrame = 1 << 30

// pipelineStall is how long a write upstream may block while earlier
// answers are outstanding before the session goes duplex: the server may
// be blocked writing those answers to us.
const pipelineStall = 20 * time.Millisecond

// serve relays until the session ends and reports how it ended.
func (s *session) serve() string {
	ph := phIdle
	for {
		err := s.step(&ph)
		if err == nil {
			continue
		}
		if s.spurious() {
			continue // resumes in the phase it was in
		}
		return s.ended(err)
	}
}

// Phases of one request, so that a cleared interrupt resumes where it hit.
const (
	phIdle = iota
	phRequest
	phAnswer
)

// step relays one request and its answer.
func (s *session) step(ph *int) error {
	t := s.rl
	if *ph == phIdle {
		if t.duplex == nil && t.outstanding() {
			// Never wait for the client while the server owes it an
			// answer: say so rather than hang.
			return errInvariant
		}
		if err := s.awaitRequest(); err != nil {
			return err
		}
		s.busy.Store(true)
		s.stats.RequestStarted()
		t.endsTxn = false
		*ph = phRequest
	}
	if *ph == phRequest {
		if err := s.request(); err != nil {
			if t.canRetry(err) {
				return t.resend(err, false)
			}
			if !s.refusable(err) {
				return err
			}
			// Nothing was sent: the client gets an error, not a hang up.
			if err := s.refuseRequest(err); err != nil {
				return err
			}
			*ph = phIdle
			s.busy.Store(false)
			return nil
		}
		*ph = phAnswer
	}
	if err := s.answer(); err != nil {
		if t.canRetry(err) {
			return t.resend(err, true)
		}
		if !s.survivable(err) {
			return err
		}
		if err := s.lostRequest(err); err != nil {
			return err
		}
	}
	*ph = phIdle
	s.busy.Store(false)
	if s.txnMode {
		t.maybeRelease()
	} else if s.moveWanted.Load() {
		s.maybeMove()
	}
	s.endOfGrace()
	return nil
}

// awaitRequest waits for the first byte of the client's next request.
// In a held transaction it arms pool.idle_transaction_timeout.
func (s *session) awaitRequest() error {
	if s.cbr.Buffered() > 0 {
		return nil
	}
	s.armIdleTxn()
	waited, err := s.waitIdle()
	if !waited {
		err = s.awaitDuplex()
	}
	if s.idleArmed && err == nil {
		s.idleArmed = false
		_ = s.client.SetReadDeadline(time.Time{})
	}
	return err
}

// request forwards client messages up to a request boundary.
func (s *session) request() error {
	t := s.rl
	for {
		typ, err := t.forwardFrame()
		if err != nil {
			return err
		}
		switch typ {
		case 'S', 'Q', 'F', 'H', 'c', 'f':
			if s.cbr.Buffered() == 0 {
				return t.flushUp()
			}
		}
	}
}

// answer relays the server's messages until every forwarded request is
// answered. A COPY FROM STDIN hands the rest to the duplex relay.
func (s *session) answer() error {
	t := s.rl
	if t.duplex != nil {
		return t.finishDuplex()
	}
	for t.outstanding() {
		if done, err := t.emitIfOnlyFakes(); done || err != nil {
			if err != nil {
				return err
			}
			break
		}
		copyIn, err := t.relayOne()
		if err != nil {
			return err
		}
		if copyIn {
			t.startDuplex()
			return nil // the client's COPY data follows
		}
	}
	if t.listening && !s.txnMode {
		// Notifications arrive unasked from now on.
		t.startDuplex()
	}
	return t.flushClient()
}

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

// appendFrame appends one typed message with body to b.
func appendFrame(b []byte, typ byte, body []byte) []byte {
	b = append(b, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(len(body)+4))
	return append(b, body...)
}

// frameSize checks a frame header and returns its body length.
func frameSize(hdr []byte, maxLen int) (int, error) {
	size := int(binary.BigEndian.Uint32(hdr[1:]))
	if size < 4 || size-4 > maxLen {
		return 0, &Error{Severity: "FATAL", Code: codeProgramLimit,
			Message: fmt.Sprintf("message %q of %d bytes is over dbproxy's limit of %d bytes", hdr[0], size-4, maxLen),
			Hint:    "send smaller messages, e.g. COPY in chunks or large values as several parameters"}
	}
	return size - 4, nil
}

// copyFrame copies one typed message from r to w as bytes. Messages that
// fit the reader's buffer are copied from it without allocation, and body
// aliases that buffer until the next read; larger ones stream through
// without being held whole, and body is nil.
func copyFrame(r *bufio.Reader, w io.Writer, maxLen int) (typ byte, body []byte, n int, err error) {
	hdr, err := r.Peek(5)
	if err != nil {
		return 0, nil, 0, err
	}
	typ = hdr[0]
	size, err := frameSize(hdr, maxLen)
	if err != nil {
		return typ, nil, 0, err
	}
	if 5+size <= r.Size() {
		frame, err := r.Peek(5 + size)
		if err != nil {
			return typ, nil, 0, err
		}
		if _, err := w.Write(frame); err != nil {
			return typ, nil, 0, err
		}
		_, _ = r.Discard(5 + size)
		return typ, frame[5:], 5 + size, nil
	}
	if _, err := w.Write(hdr); err != nil {
		return typ, nil, 0, err
	}
	_, _ = r.Discard(5)
	m, err := io.CopyN(w, r, int64(size))
	return typ, nil, 5 + int(m), err
}

// skipFrame drops one message from r without holding it.
func skipFrame(r *bufio.Reader, maxLen int) (byte, error) {
	hdr, err := r.Peek(5)
	if err != nil {
		return 0, err
	}
	typ := hdr[0]
	size, err := frameSize(hdr, maxLen)
	if err != nil {
		return typ, err
	}
	_, err = r.Discard(5 + size)
	return typ, err
}

// outbuf buffers writes to a connection. Unlike bufio.Writer, a Flush cut
// short by a deadline keeps what was not written and can be retried: the
// relay uses that to notice a server that stopped reading.
type outbuf struct {
	w   io.Writer
	buf []byte
}

func newOutbuf(w io.Writer, size int) *outbuf { return &outbuf{w: w, buf: make([]byte, 0, size)} }

func (o *outbuf) Write(p []byte) (int, error) {
	if len(o.buf)+len(p) > cap(o.buf) {
		if err := o.Flush(); err != nil {
			return 0, err
		}
		if len(p) > cap(o.buf) {
			return o.w.Write(p)
		}
	}
	o.buf = append(o.buf, p...)
	return len(p), nil
}

// Flush writes what is buffered; on error the unwritten rest stays.
func (o *outbuf) Flush() error {
	if len(o.buf) == 0 {
		return nil
	}
	n, err := o.w.Write(o.buf)
	o.buf = o.buf[:copy(o.buf, o.buf[n:])]
	return err
}

// Buffered is the number of bytes not yet written.
func (o *outbuf) Buffered() int { return len(o.buf) }

// isTimeout reports a deadline we set to stop a blocked read or write.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
