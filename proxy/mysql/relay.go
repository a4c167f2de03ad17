package mysql

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"go.uber.org/zap"
)

// The relay is one goroutine per session, synchronous like the protocol:
// read one command from the client, write it upstream with one flush,
// relay the whole answer (tracker.go says when it is complete), repeat.
// Kill, shutdown and drain deadlines reach it through deadlines on both
// connections (interrupt.go). Packets are copied as bytes through the two
// connections' buffers; nothing is allocated per command.

// maxPayload is the largest physical packet; a logical packet of this
// size or more continues in the next physical packet.
const maxPayload = 1<<24 - 1

// headPeek is how much of a packet too big for the read buffer the relay
// looks at: enough for any OK, EOF or column count.
const headPeek = 64

// errQuit is the client's COM_QUIT: a clean goodbye.
var errQuit = errors.New("client sent COM_QUIT")

func putHeader(b []byte, n int, seq byte) {
	b[0], b[1], b[2], b[3] = byte(n), byte(n>>8), byte(n>>16), seq
}

func payloadLen(h []byte) int { return int(h[0]) | int(h[1])<<8 | int(h[2])<<16 }

// readPacket reads one physical packet whole; for handshakes and control
// commands, whose packets are small.
func readPacket(r io.Reader, maxLen int) (seq byte, payload []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := payloadLen(hdr[:])
	if n > maxLen {
		return hdr[3], nil, fmt.Errorf("packet of %d bytes is over the %d byte limit", n, maxLen)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return hdr[3], nil, err
	}
	return hdr[3], payload, nil
}

// okPacket is an OK packet with no rows affected and the given status.
func okPacket(seq byte, status uint16) []byte {
	b := []byte{0, 0, 0, 0, 0x00, 0, 0, byte(status), byte(status >> 8), 0, 0}
	putHeader(b, len(b)-4, seq)
	return b
}

// peekPacket waits for the next physical packet on r and returns its
// payload length, sequence number and its first bytes: the whole payload
// when the packet fits r's buffer, else headPeek bytes. head aliases r's
// buffer until the next read.
func peekPacket(r *bufio.Reader) (n int, seq byte, head []byte, err error) {
	hdr, err := r.Peek(4)
	if err != nil {
		return 0, 0, nil, err
	}
	n, seq = payloadLen(hdr), hdr[3]
	want := n
	if 4+want > r.Size() {
		want = min(headPeek, r.Size()-4)
	}
	b, err := r.Peek(4 + want)
	if err != nil {
		return n, seq, nil, err
	}
	return n, seq, b[4:], nil
}

// copyPacket copies the physical packet peekPacket announced (n payload
// bytes) from r to w as bytes; packets larger than r's buffer stream
// through without being held whole.
func copyPacket(r *bufio.Reader, w io.Writer, n int) (int, error) {
	m, rerr, werr := copyBytes(r, w, 4+n)
	if rerr != nil {
		return m, rerr
	}
	return m, werr
}

// copyBytes copies n bytes from r to w through r's buffer and tells a
// read error (rerr) from a write error (werr).
func copyBytes(r *bufio.Reader, w io.Writer, n int) (m int, rerr, werr error) {
	for m < n {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				return m, err, nil
			}
		}
		b, _ := r.Peek(min(n-m, r.Buffered()))
		k, err := w.Write(b)
		_, _ = r.Discard(k)
		m += k
		if err != nil {
			return m, nil, err
		}
	}
	return m, nil, nil
}

// upstreamError is a failure of the held upstream connection, as opposed
// to the client's.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

func upErr(err error) error {
	if err == nil {
		return nil
	}
	return &upstreamError{err: err}
}

func isUpstream(err error) bool {
	var ue *upstreamError
	return errors.As(err, &ue)
}

func outOfOrder(want, got byte) *Error {
	return &Error{Code: erNetPacketsOutOfOrder, State: "08S01",
		Message: fmt.Sprintf("Got packets out of order: sequence %d where %d was due", got, want)}
}

func tooLarge(maxLen int) *Error {
	return &Error{Code: erNetPacketTooLarge, State: "08S01",
		Message: fmt.Sprintf("Got a packet bigger than dbproxy's limit of %d bytes; send smaller statements or values (e.g. several INSERTs, LOAD DATA in parts)", maxLen)}
}

var errEmptyCommand = &Error{Code: erMalformedPacket, State: "HY000", Message: "malformed packet: an empty command packet"}

func notSupported(cmd byte) *Error {
	return &Error{Code: erNotSupportedYet, State: "42000",
		Message: fmt.Sprintf("%s is not supported through dbproxy: dbproxy logs in with the Vault credential of your identity's grant; reconnect instead", commandName(cmd))}
}

// relayAnswer relays the server's packets to the client until the answer
// to the client's command is complete, flushing the client whenever the
// upstream buffer runs empty. It returns the last status flags the
// answer carried (ok false: none). With fresh (the connection was checked
// out for this command), a goodbye ERR as the first packet is not relayed
// but reported as errDeadOnArrival (retry.go).
func (s *session) relayAnswer(up *upstream, fresh bool) (status uint16, ok bool, err error) {
	cont, done, hangup := false, false, false
	for first := true; ; first = false {
		n, seq, head, err := peekPacket(up.br)
		if err != nil {
			return status, ok, upErr(err)
		}
		if first && fresh && closesConnection(head) {
			return status, ok, errDeadOnArrival
		}
		if !cont {
			ev, err := s.track.packet(head, n)
			if err != nil {
				return status, ok, upErr(err)
			}
			if ev.hasStatus {
				s.noteStatus(ev.status, ev.done) // audit.go
				status, ok = ev.status, true
			}
			done = ev.done && s.track.idle()
			hangup = done && closesConnection(head)
		}
		s.nextSeq.Store(uint32(seq + 1))
		if done {
			// The client's next command starts at 0; an error dbproxy
			// sends in between is the answer to it.
			s.nextSeq.Store(1)
		}
		if err := s.toClient(up.br, n); err != nil {
			return status, ok, err
		}
		cont = n == maxPayload
		if done && !cont {
			if err := s.flushClient(); err != nil || !hangup {
				return status, ok, err
			}
			return status, ok, errHangup
		}
		if up.br.Buffered() == 0 {
			if err := s.flushClient(); err != nil {
				return status, ok, err
			}
		}
	}
}

// errHangup ends a session whose server said it closes the connection.
var errHangup = upErr(errors.New("the server closes the connection after its error"))

// closesConnection reports an ERR after which the server closes the
// connection (packet too large, connection killed, shutdown, the network
// errors): the session ends with it, as it would without dbproxy, and the
// connection is not used again.
func closesConnection(b []byte) bool {
	if len(b) < 3 || b[0] != 0xff {
		return false
	}
	code := binary.LittleEndian.Uint16(b[1:])
	return code == erServerShutdown || code >= 1152 && code <= 1161 || code == erConnectionKilled || code == 4031
}

// toClient copies one server packet of n payload bytes from r to the
// client's buffer.
func (s *session) toClient(r *bufio.Reader, n int) error {
	m, rerr, werr := copyBytes(r, s.cbw, 4+n)
	s.bytesOut.Add(int64(m))
	if m > 0 && m < 4+n {
		s.torn = true // the client has part of a packet
	}
	if rerr != nil {
		return upErr(rerr)
	}
	return werr
}

func (s *session) flushClient() error {
	if err := s.cbw.Flush(); err != nil {
		s.torn = true // how much reached the client is unknown
		return err
	}
	return nil
}

// failure reports an error that ended a session to the client, when it
// should hear of it, and names how the session ended.
func (s *session) failure(err error) string {
	var ue *upstreamError
	if errors.As(err, &ue) {
		var pe *Error
		if errors.As(ue.err, &pe) {
			// The server broke the protocol (or asked for a local file):
			// nothing it sends can be trusted any more.
			s.log.Warn("upstream protocol error", zap.Error(err))
			s.sendError(pe)
			return "server_error"
		}
		// The server ended the session. Its ERR, if it sent one, was
		// relayed; if a command is still unanswered, say what happened
		// instead of leaving the client with a bare close.
		if !s.track.idle() {
			s.sendError(&Error{Code: erUnknownError, State: "08S01",
				Message: fmt.Sprintf("Lost connection to backend %s during a command (%v): the database closed the connection; see its log", s.backend.Name, ue.err)})
		} else {
			s.sendError(nil)
		}
		return "server_closed"
	}
	var pe *Error
	if errors.As(err, &pe) {
		s.log.Info("client protocol error", zap.Error(err))
		s.sendError(pe)
		return "client_error"
	}
	return "client_gone"
}
