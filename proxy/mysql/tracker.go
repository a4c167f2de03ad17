package mysql

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

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
// idle. The session goroutine calls expect before it forwards a command
// and packet for the first physical packet of each logical packet the
// server sends; other goroutines only read idle.
type tracker struct {
	deprecateEOF bool

	queue   []respKind   // answers expected, oldest first; its array is reused
	pending atomic.Int64 // answers expected and not complete

	active   bool
	cur      respKind
	ph       phase
	left     uint64
	prepCols uint64
}

func newTracker(deprecateEOF bool) *tracker {
	return &tracker{deprecateEOF: deprecateEOF, queue: make([]respKind, 0, 4)}
}

// expect records that the client sent a command answered as k.
func (t *tracker) expect(k respKind) {
	if k == respNone {
		return
	}
	t.queue = append(t.queue, k)
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
		if len(t.queue) == 0 {
			if b[0] == 0xff {
				// The server says why it ends the session (shutdown,
				// KILL); the client should see that.
				ev.errPacket = true
				return ev, nil
			}
			return ev, violation("a packet (0x%02x) nobody asked for", b[0])
		}
		t.cur = t.queue[0]
		// Shift rather than reslice, so the array is reused.
		t.queue = t.queue[:copy(t.queue, t.queue[1:])]
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

// reset forgets the answers expected: their connection was closed before
// any reached the client, and the commands go again on another.
func (t *tracker) reset() {
	t.queue = t.queue[:0]
	t.pending.Store(0)
	t.active, t.ph, t.left, t.prepCols = false, phFirst, 0, 0
}
