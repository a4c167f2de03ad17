package postgres

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
)

// A server connection lost in the middle of a transaction-pool request
// (the database restarted, failed over or was killed; not retryable
// because something already ran or reached the client) costs the client
// that request, not its session: it gets an ERROR instead of the server's
// FATAL, then ReadyForQuery, and goes on with dbproxy. A client that was
// inside a transaction block is told its transaction is aborted
// (ReadyForQuery 'E'); its next request runs on a fresh connection inside
// a transaction dbproxy opens and aborts first, so the server itself
// answers as it would in a failed transaction (25P02 until ROLLBACK; a
// COMMIT rolls back), in both protocols.

// serverFatal is a FATAL ErrorResponse from the server: it closes the
// connection after it.
type serverFatal struct{ code, msg string }

func (e *serverFatal) Error() string { return "FATAL " + e.code + " " + e.msg }

// fatalFrom reads the code and message of a FATAL ErrorResponse body, or
// returns nil for any other.
func fatalFrom(body []byte) *serverFatal {
	// V is the severity never translated (lc_messages); S for servers
	// before 9.6.
	if !bytes.Contains(body, []byte("VFATAL\x00")) && !bytes.Contains(body, []byte("SFATAL\x00")) &&
		!bytes.Contains(body, []byte("VPANIC\x00")) && !bytes.Contains(body, []byte("SPANIC\x00")) {
		return nil
	}
	f := &serverFatal{}
	for len(body) > 1 && body[0] != 0 {
		field, rest, ok := cstring(body[1:])
		if !ok {
			break
		}
		switch body[0] {
		case 'C':
			f.code = string(field)
		case 'M':
			f.msg = string(field)
		}
		body = rest
	}
	return f
}

// survivable reports a lost server connection that costs the client only
// the request at hand.
func (s *session) survivable(err error) bool {
	t := s.rl
	var ue *upstreamError
	return s.txnMode && t.duplex == nil && !t.torn && !s.interrupted() && errors.As(err, &ue)
}

// lostRequest answers every request still outstanding on a lost server
// connection with an ERROR and ReadyForQuery, and closes the connection.
func (s *session) lostRequest(cause error) error {
	t := s.rl
	// A lost COMMIT or ROLLBACK ends the transaction either way, as the
	// server's own error would: ReadyForQuery 'I'.
	inTxn := byte(s.txStatus.Load()) != 'I' && !t.endsTxn
	ending := byte(s.txStatus.Load()) != 'I' && t.endsTxn
	n := 0
	for _, r := range t.queue {
		if r.action != actFake && (r.typ == 'S' || r.typ == 'Q' || r.typ == 'F') && r.action != actSwallowAll {
			n++
		}
	}
	t.release(false)
	status := byte('I')
	if inTxn {
		status = 'E'
		t.aborted = true
	}
	s.txStatus.Store(uint32(status))
	s.log.Warn("transaction pooling: server connection lost during a request; the session goes on", zap.Error(cause), zap.Bool("in_transaction", inTxn))
	e := &Error{Severity: "ERROR", Code: codeConnectionFailure,
		Message: fmt.Sprintf("dbproxy lost its connection to backend %s during this request: %v", s.backend.Name, errors.Unwrap(cause))}
	switch {
	case inTxn:
		e.Hint = "the open transaction was rolled back; send ROLLBACK and run it again (this session stays usable)"
	case ending:
		e.Hint = "whether the transaction was committed is unknown: check before running it again (this session stays usable)"
	default:
		e.Hint = "a statement outside a transaction may or may not have run; this session stays usable"
	}
	for range max(n, 1) {
		s.srv.metrics.Errors.WithLabelValues(e.Code[:2]).Inc()
		if _, err := s.cbw.Write(e.encode(nil)); err != nil {
			return err
		}
		if _, err := s.cbw.Write([]byte{'Z', 0, 0, 0, 5, status}); err != nil {
			return err
		}
	}
	return s.cbw.Flush()
}

// abortSQL opens a transaction and aborts it: the state a client whose
// transaction was lost with its connection is in (see above).
var abortSQL = "BEGIN; " + raiseSQL("connection_failure", "dbproxy: the transaction was lost with its server connection") + "\x00"

// stageAborted puts the held connection in a failed transaction, answer
// swallowed, before the request of a client whose transaction was lost.
// t.mu is held.
func (t *txnSession) stageAborted() {
	if !t.aborted {
		return
	}
	t.aborted = false
	t.queue = append(t.queue, request{typ: 'Q', action: actSwallowAll})
	_ = t.write('Q', []byte(abortSQL))
}

// endsTransaction reports a statement that ends a transaction block.
func endsTransaction(q []byte) bool {
	switch {
	case startsWithFold(q, "commit"), startsWithFold(q, "end"), startsWithFold(q, "abort"):
		return true
	case startsWithFold(q, "rollback"):
		return !containsFold(q, " to ") // ROLLBACK TO SAVEPOINT stays in it
	}
	return false
}

// rollbackRE is a simple-query ROLLBACK or ABORT of the whole transaction.
var rollbackRE = regexp.MustCompile(`(?i)^\s*(rollback|abort)(\s+(work|transaction))?\s*;?\s*$`)

// rollbackAnswer is PostgreSQL's answer to ROLLBACK.
var rollbackAnswer = func() []byte {
	b, _ := (&pgproto3.CommandComplete{CommandTag: []byte("ROLLBACK")}).Encode(nil)
	b, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(b)
	return b
}()
