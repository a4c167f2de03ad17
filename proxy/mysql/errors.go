package mysql

import (
	"errors"
	"fmt"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// Server error codes (and their SQLSTATEs) that dbproxy sends itself.
// Upstream errors pass through as they are.
const (
	erConCount                = 1040 // 08004 too many connections
	erDBAccessDenied          = 1044 // 42000 access denied to database
	erAccessDenied            = 1045 // 28000 access denied
	erNoDB                    = 1046 // 3D000 no database selected
	erHandshake               = 1043 // 08S01 bad handshake
	erUnknownCom              = 1047 // 08S01 unknown command
	erServerShutdown          = 1053 // 08S01 server shutdown in progress
	erKillDenied              = 1095 // HY000 not owner of thread
	erUnknownError            = 1105 // HY000
	erNetPacketTooLarge       = 1153 // 08S01
	erNetPacketsOutOfOrder    = 1156 // 08S01
	erNotSupportedYet         = 1235 // 42000
	erUnknownCollation        = 1273 // HY000
	erMalformedPacket         = 1835 // HY000
	erConnectionKilled        = 1927 // 70100 MariaDB's ER_CONNECTION_KILLED
	erSecureTransportRequired = 3159 // 08004
)

// Error is an error the proxy reports to a client as an ERR packet.
type Error struct {
	Code    uint16
	State   string // SQLSTATE, five characters
	Message string
	Err     error // cause, for logs and errors.Is
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (error %d, SQLSTATE %s): %v", e.Message, e.Code, e.State, e.Err)
	}
	return fmt.Sprintf("%s (error %d, SQLSTATE %s)", e.Message, e.Code, e.State)
}

func (e *Error) Unwrap() error { return e.Err }

// class is the SQLSTATE class, the metrics label for dbproxy's errors.
func (e *Error) class() string {
	if len(e.State) < 2 {
		return "HY"
	}
	return e.State[:2]
}

// maxErrMessage keeps messages within what clients print in full
// (MYSQL_ERRMSG_SIZE is 512).
const maxErrMessage = 500

// packet renders e as an ERR packet (header included) with sequence seq.
func (e *Error) packet(seq byte) []byte {
	msg := e.Message
	if len(msg) > maxErrMessage {
		msg = msg[:maxErrMessage]
	}
	state := e.State
	if len(state) != 5 {
		state = "HY000"
	}
	b := make([]byte, 4, 4+9+len(msg))
	b = append(b, 0xff, byte(e.Code), byte(e.Code>>8), '#')
	b = append(b, state...)
	b = append(b, msg...)
	putHeader(b, len(b)-4, seq)
	return b
}

// myError converts e for go-mysql's handshake, which sends a
// *mysql.MyError as it is and anything else as "unknown error".
func (e *Error) myError() *gomysql.MyError {
	return &gomysql.MyError{Code: e.Code, State: e.State, Message: e.Message}
}

// asClientError maps an internal error to what the client should see.
func asClientError(backend string, err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	class, msg := frontend.Classify(err)
	switch class {
	case frontend.NotGranted:
		return &Error{Code: erDBAccessDenied, State: "42000", Message: msg, Err: err}
	case frontend.Denied:
		return &Error{Code: erAccessDenied, State: "28000", Message: msg, Err: err}
	case frontend.NoCredential:
		return &Error{Code: erUnknownError, State: "08S01",
			Message: msg + "; dbproxy retries Vault by itself, reconnect shortly", Err: err}
	case frontend.Exhausted:
		return &Error{Code: erConCount, State: "08004", Message: msg, Err: err}
	case frontend.Paused:
		return &Error{Code: erUnknownError, State: "HY000", Message: msg, Err: err}
	}
	var me *gomysql.MyError
	if errors.As(err, &me) {
		return &Error{Code: erUnknownError, State: "08S01",
			Message: fmt.Sprintf("backend %s refused dbproxy's connection: %s (error %d); this is a problem between dbproxy and the database, not your client; see the dbproxy log", backend, me.Message, me.Code),
			Err:     err}
	}
	return &Error{Code: erUnknownError, State: "08S01",
		Message: fmt.Sprintf("cannot reach backend %s: %v; check that the database is up, dbproxy's log has details", backend, err), Err: err}
}
