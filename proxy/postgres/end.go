package postgres

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
)

// upstreamError is a failure of the held server connection, as opposed
// to the client's.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream connection lost: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

func upstreamLost(err error) error {
	var ue *upstreamError
	if err == nil || errors.As(err, &ue) {
		return err
	}
	var pe *Error
	if errors.As(err, &pe) {
		return err // a limit the server broke: reported as is
	}
	return &upstreamError{err: err}
}

// errInvariant is a relay bug caught before it could hang a client.
var errInvariant = errors.New("relay invariant broken: waiting for the client while the server owes it an answer")

// ended tells the client why its session ends, if it should hear it, and
// returns the result label.
func (s *session) ended(err error) string {
	t := s.rl
	derr := t.stopDuplex()
	var gen *creds.Generation
	if t.lease != nil {
		gen = t.lease.Gen
	}
	switch why := s.why.Load(); {
	case why == whyDuplex && derr != nil:
		err = derr
	case why != whyNone:
		s.sendFatal(s.interruptError(why, gen))
		if why == whyLeaseEnd {
			return "lease_end"
		}
		if why == whyTokenExpired { // password.go
			return "token_expired"
		}
		if why == whyOperatorKill { // kill.go
			return "operator_kill"
		}
		if why == whyRevoked { // reload.go
			return "config_reload"
		}
		return "shutdown"
	}
	if s.idleArmed && isTimeout(err) {
		s.sendFatal(s.idleTxnError())
		return "idle_in_transaction"
	}
	if errors.Is(err, errTerminate) {
		return "ok"
	}
	if errors.Is(err, errInvariant) {
		s.log.Error("relay bug: the session was ended instead of hanging", zap.Error(err))
		s.sendFatal(&Error{Severity: "FATAL", Code: codeConnectionFailure, Message: "dbproxy lost track of this session's requests (a bug, logged); reconnect"})
		return "relay_error"
	}
	var ue *upstreamError
	if errors.As(err, &ue) {
		if s.txnMode {
			s.log.Warn("transaction pooling: upstream failed", zap.Error(err))
			s.sendFatal(&Error{Severity: "FATAL", Code: codeConnectionFailure,
				Message: fmt.Sprintf("dbproxy lost its connection to backend %s during this session's transaction: %v", s.backend.Name, ue.err),
				Hint:    "the transaction was not committed; reconnect and retry it"})
		}
		return "server_closed"
	}
	var pe *Error
	if errors.As(err, &pe) {
		s.sendFatal(pe)
		return "client_error"
	}
	var ce *checkoutError
	if errors.As(err, &ce) {
		s.log.Warn("no server connection", zap.Error(err))
		s.sendFatal(asClientError(s.backend.Name, ce.err))
		return "upstream_error"
	}
	return "client_gone"
}

// checkoutError is a failure to get a server connection for a request.
type checkoutError struct{ err error }

func (e *checkoutError) Error() string { return "checkout: " + e.err.Error() }
func (e *checkoutError) Unwrap() error { return e.err }

// refusable reports a checkout failure at the start of a transaction-mode
// request, which refuseRequest answers without ending the session.
func (s *session) refusable(err error) bool {
	var ce *checkoutError
	return s.txnMode && s.rl.up == nil && !s.interrupted() && errors.As(err, &ce)
}

// refuseRequest answers a request that found no server connection
// (pool exhausted or paused, database or credential unavailable) with an
// ERROR and ReadyForQuery: the client may retry on the same session.
// The rest of the request, up to its Sync or Query, is dropped, as the
// server would after an error.
func (s *session) refuseRequest(err error) error {
	cause := errors.Unwrap(err)
	e := asClientError(s.backend.Name, cause)
	e.Severity = "ERROR"
	s.srv.metrics.Errors.WithLabelValues(e.Code[:2]).Inc()
	s.log.Info("request refused: no server connection", zap.String("sqlstate", e.Code), zap.Error(cause))
	for {
		typ, err := skipFrame(s.cbr, s.srv.opts.MaxMessageBytes)
		if err != nil {
			return err
		}
		if typ == 'S' || typ == 'Q' || typ == 'F' {
			break
		}
	}
	s.txStatus.Store('I')
	if _, err := s.cbw.Write(e.encode(nil)); err != nil {
		return err
	}
	if _, err := s.cbw.Write(readyIdle); err != nil {
		return err
	}
	return s.cbw.Flush()
}

var readyIdle = []byte{'Z', 0, 0, 0, 5, 'I'}
