package mysql

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

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

// lenenc decodes a length-encoded integer at the start of b. ok is false
// when b is too short or starts with a byte that is no integer (0xfb
// NULL, 0xff).
func lenenc(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	switch b[0] {
	case 0xfb, 0xff:
		return 0, 0, false
	case 0xfc:
		if len(b) < 3 {
			return 0, 0, false
		}
		return uint64(binary.LittleEndian.Uint16(b[1:])), 3, true
	case 0xfd:
		if len(b) < 4 {
			return 0, 0, false
		}
		return uint64(b[1]) | uint64(b[2])<<8 | uint64(b[3])<<16, 4, true
	case 0xfe:
		if len(b) < 9 {
			return 0, 0, false
		}
		return binary.LittleEndian.Uint64(b[1:]), 9, true
	}
	return uint64(b[0]), 1, true
}

// okStatus returns the status flags of an OK packet (header 0x00, or 0xfe
// when it stands in for EOF under CLIENT_DEPRECATE_EOF).
func okStatus(b []byte) (uint16, bool) {
	pos := 1
	for range 2 { // affected rows, last insert id
		_, n, ok := lenenc(b[min(pos, len(b)):])
		if !ok {
			return 0, false
		}
		pos += n
	}
	if len(b) < pos+2 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(b[pos:]), true
}

// eofStatus returns the status flags of an EOF packet (0xfe, warnings,
// status).
func eofStatus(b []byte) (uint16, bool) {
	if len(b) < 5 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(b[3:]), true
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
	if 4+n <= r.Size() {
		b, err := r.Peek(4 + n)
		if err != nil {
			return 0, err
		}
		if _, err := w.Write(b); err != nil {
			return 0, err
		}
		_, _ = r.Discard(4 + n)
		return 4 + n, nil
	}
	m, err := io.CopyN(w, r, int64(4+n))
	return int(m), err
}

// respKind is the shape of the server's answer to a command.
type respKind uint8

const (
	respNone      respKind = iota // no answer: COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA
	respSimple                    // one packet: OK, ERR, EOF or a string
	respQuery                     // text result sets, OKs, ERR; several with MULTI_RESULTS
	respExecute                   // the same with binary rows; a cursor ends it after the metadata
	respPrepare                   // COM_STMT_PREPARE_OK, parameter and column definitions
	respFieldList                 // column definitions up to EOF
	respFetch                     // rows up to EOF
)

// commandResponse says how the server answers cmd and whether dbproxy
// relays cmd at all. Commands that would change who is logged in
// (COM_CHANGE_USER), start replication or are server internals are
// refused: they would bypass the credential dbproxy chose or break the
// relay's view of the stream.
func commandResponse(cmd byte) (respKind, bool) {
	switch cmd {
	case gomysql.COM_INIT_DB, gomysql.COM_CREATE_DB, gomysql.COM_DROP_DB, gomysql.COM_REFRESH,
		gomysql.COM_STATISTICS, gomysql.COM_PROCESS_KILL, gomysql.COM_DEBUG, gomysql.COM_PING,
		gomysql.COM_STMT_RESET, gomysql.COM_SET_OPTION, gomysql.COM_RESET_CONNECTION:
		return respSimple, true
	case gomysql.COM_QUERY, gomysql.COM_PROCESS_INFO:
		return respQuery, true
	case gomysql.COM_FIELD_LIST:
		return respFieldList, true
	case gomysql.COM_STMT_PREPARE:
		return respPrepare, true
	case gomysql.COM_STMT_EXECUTE:
		return respExecute, true
	case gomysql.COM_STMT_FETCH:
		return respFetch, true
	case gomysql.COM_STMT_SEND_LONG_DATA, gomysql.COM_STMT_CLOSE:
		return respNone, true
	}
	return respNone, false
}

// commandName names a command byte for error messages.
func commandName(cmd byte) string {
	switch cmd {
	case gomysql.COM_CHANGE_USER:
		return "COM_CHANGE_USER"
	case gomysql.COM_BINLOG_DUMP, gomysql.COM_BINLOG_DUMP_GTID, gomysql.COM_REGISTER_SLAVE, gomysql.COM_TABLE_DUMP:
		return "replication command"
	case gomysql.COM_SHUTDOWN:
		return "COM_SHUTDOWN"
	}
	return fmt.Sprintf("command 0x%02x", cmd)
}

// phase is where the tracker is within one answer.
type phase uint8

const (
	phFirst          phase = iota // first packet of a result
	phColumns                     // column definitions
	phColumnsEOF                  // EOF after them (no CLIENT_DEPRECATE_EOF)
	phRows                        // rows up to EOF/OK or ERR
	phParams                      // prepare: parameter definitions
	phParamsEOF                   //
	phPrepColumns                 // prepare: column definitions
	phPrepColumnsEOF              //
)

// tracker follows the server's answers to the commands the client sent,
// packet by packet, to know when an answer is complete, the status flags
// (transaction state) it ended with, and so whether the connection is
// idle. The client side calls expect before it forwards a command; the
// upstream side calls packet for the first physical packet of each
// logical packet the server sends.
type tracker struct {
	deprecateEOF bool

	mu      sync.Mutex
	queue   []respKind
	pending atomic.Int64 // answers expected and not complete

	// Owned by the upstream side.
	active   bool
	cur      respKind
	ph       phase
	left     uint64
	prepCols uint64
}

func newTracker(deprecateEOF bool) *tracker { return &tracker{deprecateEOF: deprecateEOF} }

// expect records that the client sent a command answered as k.
func (t *tracker) expect(k respKind) {
	if k == respNone {
		return
	}
	t.mu.Lock()
	t.queue = append(t.queue, k)
	t.mu.Unlock()
	t.pending.Add(1)
}

// idle reports that no answer is outstanding.
func (t *tracker) idle() bool { return t.pending.Load() == 0 }

// event is what one server packet meant.
type event struct {
	done      bool   // an answer is complete
	status    uint16 // server status flags, if hasStatus
	hasStatus bool
	errPacket bool // an unsolicited ERR, e.g. the server going away
}

// errLocalInfile is the server asking for a client file, which it may not
// do: dbproxy never negotiates CLIENT_LOCAL_FILES.
var errLocalInfile = &Error{Code: erNotSupportedYet, State: "42000",
	Message: "LOAD DATA LOCAL INFILE is not supported through dbproxy: load the file on the database host or send the rows with INSERT"}

func violation(format string, args ...any) *Error {
	return &Error{Code: erMalformedPacket, State: "HY000",
		Message: "dbproxy closed the session: the database sent " + fmt.Sprintf(format, args...)}
}

// isTerminator: an EOF packet, or the OK that replaces it.
func (t *tracker) isTerminator(b []byte, n int) bool {
	if len(b) == 0 || b[0] != 0xfe {
		return false
	}
	if t.deprecateEOF {
		return n < maxPayload
	}
	return n < 9
}

func (t *tracker) terminatorStatus(b []byte) (uint16, bool) {
	if t.deprecateEOF && len(b) >= 7 {
		return okStatus(b)
	}
	return eofStatus(b)
}

// packet takes the first bytes (b) of a logical packet of n bytes (the
// first physical packet's length) from the server.
func (t *tracker) packet(b []byte, n int) (event, error) {
	var ev event
	if len(b) == 0 {
		return ev, violation("an empty packet")
	}
	if !t.active {
		t.mu.Lock()
		if len(t.queue) == 0 {
			t.mu.Unlock()
			if b[0] == 0xff {
				// The server says why it ends the session (shutdown,
				// KILL); the client should see that.
				ev.errPacket = true
				return ev, nil
			}
			return ev, violation("a packet (0x%02x) nobody asked for", b[0])
		}
		t.cur = t.queue[0]
		t.queue = t.queue[1:]
		t.mu.Unlock()
		t.active = true
		t.ph = phFirst
		if t.cur == respFetch {
			t.ph = phRows
		}
	}
	finish := func() {
		ev.done = true
		t.active = false
		t.pending.Add(-1)
	}
	setStatus := func(s uint16, ok bool) {
		if ok {
			ev.status, ev.hasStatus = s, true
		}
	}
	if b[0] == 0xff {
		// ERR ends an answer wherever it comes: no row, column or
		// parameter definition starts with 0xff.
		finish()
		return ev, nil
	}
	switch t.cur {
	case respSimple:
		switch {
		case b[0] == 0x00 && n >= 7:
			setStatus(okStatus(b))
		case b[0] == 0xfe && n < 9:
			setStatus(t.terminatorStatus(b))
		}
		finish()
	case respFieldList:
		if t.isTerminator(b, n) {
			setStatus(t.terminatorStatus(b))
			finish()
		}
	case respQuery, respExecute, respFetch:
		switch t.ph {
		case phFirst:
			switch {
			case b[0] == 0x00:
				s, ok := okStatus(b)
				if !ok {
					return ev, violation("a malformed OK packet")
				}
				setStatus(s, ok)
				if s&gomysql.SERVER_MORE_RESULTS_EXISTS == 0 {
					finish()
				}
			case b[0] == 0xfb && t.cur == respQuery:
				return ev, errLocalInfile
			default:
				cols, _, ok := lenenc(b)
				if !ok || cols == 0 {
					return ev, violation("a malformed result set header (0x%02x)", b[0])
				}
				t.left = cols
				t.ph = phColumns
			}
		case phColumns:
			t.left--
			if t.left == 0 {
				t.ph = phRows
				if !t.deprecateEOF {
					t.ph = phColumnsEOF
				}
			}
		case phColumnsEOF:
			if b[0] != 0xfe {
				return ev, violation("no EOF after the column definitions (0x%02x)", b[0])
			}
			s, ok := eofStatus(b)
			setStatus(s, ok)
			if t.cur == respExecute && s&gomysql.SERVER_STATUS_CURSOR_EXISTS != 0 {
				// A cursor was opened: rows come with COM_STMT_FETCH.
				finish()
			} else {
				t.ph = phRows
			}
		case phRows:
			if t.isTerminator(b, n) {
				s, ok := t.terminatorStatus(b)
				setStatus(s, ok)
				if t.cur != respFetch && ok && s&gomysql.SERVER_MORE_RESULTS_EXISTS != 0 {
					t.ph = phFirst
				} else {
					finish()
				}
			}
		}
	case respPrepare:
		switch t.ph {
		case phFirst:
			if b[0] != 0x00 || len(b) < 9 {
				return ev, violation("a malformed COM_STMT_PREPARE answer (0x%02x)", b[0])
			}
			t.prepCols = uint64(binary.LittleEndian.Uint16(b[5:]))
			params := uint64(binary.LittleEndian.Uint16(b[7:]))
			if params > 0 {
				t.left, t.ph = params, phParams
			} else {
				t.prepColumns(finish)
			}
		case phParams:
			t.left--
			if t.left == 0 {
				if t.deprecateEOF {
					t.prepColumns(finish)
				} else {
					t.ph = phParamsEOF
				}
			}
		case phParamsEOF:
			t.prepColumns(finish)
		case phPrepColumns:
			t.left--
			if t.left == 0 {
				if t.deprecateEOF {
					finish()
				} else {
					t.ph = phPrepColumnsEOF
				}
			}
		case phPrepColumnsEOF:
			finish()
		}
	}
	return ev, nil
}

func (t *tracker) prepColumns(finish func()) {
	if t.prepCols == 0 {
		finish()
		return
	}
	t.left, t.ph = t.prepCols, phPrepColumns
}

// clientToUpstream relays the client's commands until COM_QUIT or error.
func (s *session) clientToUpstream() error {
	up := s.currentUpstream()
	maxLen := s.srv.opts.MaxMessageBytes
	cont := false // the last physical packet was full: the next continues it
	var lastSeq byte
	logical := 0
	for {
		n, seq, head, err := peekPacket(s.cbr)
		if err != nil {
			return err
		}
		if cont {
			if seq != lastSeq+1 {
				return outOfOrder(lastSeq+1, seq)
			}
			logical += n
		} else {
			if seq != 0 {
				return outOfOrder(0, seq)
			}
			if n == 0 {
				return &Error{Code: erMalformedPacket, State: "HY000", Message: "malformed packet: an empty command packet"}
			}
			logical = n
			cmd := head[0]
			if cmd == gomysql.COM_QUIT {
				_, _ = s.cbr.Discard(min(4+n, s.cbr.Buffered()))
				return errQuit
			}
			kind, ok := commandResponse(cmd)
			if !ok {
				return &Error{Code: erNotSupportedYet, State: "42000",
					Message: fmt.Sprintf("%s is not supported through dbproxy: dbproxy logs in with the Vault credential of your identity's grant; reconnect instead", commandName(cmd))}
			}
			if len(head) == n {
				handled, err := s.intercept(cmd, head)
				if err != nil {
					return err
				}
				if handled {
					_, _ = s.cbr.Discard(4 + n)
					s.bytesIn.Add(int64(4 + n))
					continue
				}
			}
			if cmd == gomysql.COM_SET_OPTION {
				// The multi-statement switch is connection state that
				// COM_RESET_CONNECTION is not documented to restore: do
				// not hand this connection to another client. (The
				// database, changed by COM_INIT_DB or USE, Reset restores.)
				s.dirty.Store(true)
			}
			s.track.expect(kind)
		}
		if logical > maxLen {
			return &Error{Code: erNetPacketTooLarge, State: "08S01",
				Message: fmt.Sprintf("Got a packet bigger than dbproxy's limit of %d bytes; send smaller statements or values (e.g. several INSERTs, LOAD DATA in parts)", maxLen)}
		}
		m, err := copyPacket(s.cbr, upstreamWriter{up.bw}, n)
		s.bytesIn.Add(int64(m))
		if err != nil {
			return err
		}
		lastSeq, cont = seq, n == maxPayload
		if s.cbr.Buffered() == 0 {
			if err := up.bw.Flush(); err != nil {
				return upErr(err)
			}
		}
	}
}

// upstreamWriter marks its write errors as the upstream's, so the relay
// can tell a server that hung up mid-command from a client that left.
type upstreamWriter struct{ w io.Writer }

func (u upstreamWriter) Write(b []byte) (int, error) {
	n, err := u.w.Write(b)
	return n, upErr(err)
}

func outOfOrder(want, got byte) *Error {
	return &Error{Code: erNetPacketsOutOfOrder, State: "08S01",
		Message: fmt.Sprintf("Got packets out of order: sequence %d where %d was due", got, want)}
}

// upstreamToClient relays the server's packets and tracks the answers.
func (s *session) upstreamToClient() error {
	up := s.currentUpstream()
	cont := false
	for {
		n, seq, head, err := peekPacket(up.br)
		if err != nil {
			s.wmu.Lock()
			_ = s.cbw.Flush() // whatever was complete still reaches the client
			s.wmu.Unlock()
			return err
		}
		var ev event
		if !cont {
			if ev, err = s.track.packet(head, n); err != nil {
				return err
			}
		}
		// Bookkeeping first: once the client has the packet it may act
		// on it (and ask the admin API, or quit).
		if ev.hasStatus {
			s.status.Store(uint32(ev.status))
		}
		s.nextSeq.Store(uint32(seq + 1))
		if ev.done && s.track.idle() {
			// The client's next command starts at 0; an error we send
			// in between is the answer to it.
			s.nextSeq.Store(1)
		}
		s.wmu.Lock()
		m, err := copyPacket(up.br, s.cbw, n)
		s.bytesOut.Add(int64(m))
		if err != nil && m > 0 {
			s.torn.Store(true)
		}
		if err == nil && up.br.Buffered() == 0 {
			err = s.cbw.Flush()
		}
		s.wmu.Unlock()
		if err != nil {
			return err
		}
		cont = n == maxPayload
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
