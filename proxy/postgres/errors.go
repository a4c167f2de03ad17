package postgres

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// SQLSTATE codes dbproxy sends itself. Upstream errors pass through as-is.
const (
	codeProtocolViolation   = "08P01"
	codeConnectionFailure   = "08006"
	codeInvalidAuth         = "28000"
	codeInvalidCatalog      = "3D000"
	codeTooManyConnections  = "53300"
	codeAdminShutdown       = "57P01"
	codeCannotConnectNow    = "57P03"
	codeIdleInTxnTimeout    = "25P03"
	codeFeatureNotSupported = "0A000"
	codeProgramLimit        = "54000"
)

// Error is an error the proxy reports to a client as an ErrorResponse.
type Error struct {
	Severity string // FATAL or ERROR
	Code     string // SQLSTATE
	Message  string
	Detail   string
	Hint     string
	Err      error // cause, for logs and errors.Is
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (SQLSTATE %s): %v", e.Message, e.Code, e.Err)
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

func (e *Error) Unwrap() error { return e.Err }

func fatal(code, msg string) *Error {
	return &Error{Severity: "FATAL", Code: code, Message: msg}
}

// encode renders e as an ErrorResponse frame.
func (e *Error) encode(dst []byte) []byte {
	sev := e.Severity
	if sev == "" {
		sev = "FATAL"
	}
	msg := &pgproto3.ErrorResponse{
		Severity: sev, SeverityUnlocalized: sev, Code: e.Code,
		Message: e.Message, Detail: e.Detail, Hint: e.Hint,
	}
	out, err := msg.Encode(dst)
	if err != nil {
		// Only over-long messages fail to encode; say something short.
		out, _ = (&pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: e.Code, Message: "dbproxy error"}).Encode(dst)
	}
	return out
}

// asClientError maps an internal error to what the client should see.
func asClientError(backend string, err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	class, msg := frontend.Classify(err)
	switch class {
	case frontend.Denied, frontend.NotGranted:
		return &Error{Severity: "FATAL", Code: codeInvalidAuth, Message: msg, Err: err}
	case frontend.NoCredential:
		return &Error{Severity: "FATAL", Code: codeConnectionFailure, Message: msg,
			Hint: "dbproxy retries Vault by itself; reconnect shortly", Err: err}
	case frontend.Exhausted:
		return &Error{Severity: "FATAL", Code: codeTooManyConnections, Message: msg, Err: err}
	case frontend.Paused:
		return &Error{Severity: "FATAL", Code: codeCannotConnectNow, Message: msg, Err: err}
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return &Error{Severity: "FATAL", Code: codeConnectionFailure,
			Message: fmt.Sprintf("backend %s refused dbproxy's connection: %s (SQLSTATE %s)", backend, pg.Message, pg.Code),
			Hint:    "this is a problem between dbproxy and the database, not your client; see the dbproxy log", Err: err}
	}
	return &Error{Severity: "FATAL", Code: codeConnectionFailure,
		Message: fmt.Sprintf("cannot reach backend %s: %v", backend, err),
		Hint:    "check that the database is up; dbproxy's log has details", Err: err}
}
