package postgres

import (
	"fmt"
	"time"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// Why a session was interrupted. A session goroutine blocked anywhere (on
// the client, the server, a slow client's socket) is woken by deadlines
// in the past on its sockets; it then reads why. Larger values win.
const (
	whyNone         int32 = iota
	whyLeaseEnd           // the held connection's credential hit its drain deadline
	whyDuplex             // the duplex answer goroutine failed
	whyIdleShutdown       // shutdown: idle sessions go first
	whyShutdown           // shutdown deadline: everyone goes
)

// Interrupt implements pool.Holder: the generation of a lent connection
// reached its drain deadline. The pool tells every holder of that
// generation; a session that has since moved to another connection
// ignores it.
func (s *session) Interrupt() {
	s.mu.Lock()
	l := s.lease
	s.mu.Unlock()
	if l == nil || l.Gen.State() < creds.Expired {
		return
	}
	if s.busy.Load() && !s.expiring.Swap(true) {
		// A request is in flight: let it finish (its transaction may end
		// with it, and the connection then closes without an error),
		// within a grace well inside the safety margin before the hard end.
		time.AfterFunc(expiryGrace, func() {
			s.mu.Lock()
			still := s.lease == l
			s.mu.Unlock()
			if still {
				s.interrupt(whyLeaseEnd)
			}
		})
		return
	}
	s.interrupt(whyLeaseEnd)
}

// expiryGrace is how long a request in flight at its credential's drain
// deadline may take to finish.
const expiryGrace = 2 * time.Second

// endOfGrace, after a request, ends a session still holding a connection
// whose credential expired while the request ran: its transaction is
// still open (or, in session mode, it could not move).
func (s *session) endOfGrace() {
	if !s.expiring.Load() {
		return
	}
	s.mu.Lock()
	l := s.lease
	s.mu.Unlock()
	if l == nil || l.Gen.State() < creds.Expired {
		s.expiring.Store(false)
		return
	}
	s.interrupt(whyLeaseEnd)
}

// interrupt records why and wakes the session goroutine.
func (s *session) interrupt(why int32) {
	for {
		old := s.why.Load()
		if old >= why {
			return
		}
		if s.why.CompareAndSwap(old, why) {
			break
		}
	}
	past := time.Unix(1, 0)
	_ = s.client.SetDeadline(past)
	s.mu.Lock()
	if s.lease != nil {
		_ = s.lease.Conn.(*upstream).conn.SetDeadline(past)
	}
	s.mu.Unlock()
	if why >= whyIdleShutdown {
		s.cancel() // a checkout waiting for a connection
	}
}

func (s *session) interrupted() bool { return s.why.Load() != whyNone }

// Kill implements frontend.Session: shutdown and an expired token end
// the session (lease ends come through Interrupt, which checks that the
// connection still held is of the expired generation).
func (s *session) Kill(r frontend.KillReason) {
	switch r {
	case frontend.KillIdleShutdown:
		s.interrupt(whyIdleShutdown)
	case frontend.KillTokenExpired:
		s.interrupt(whyTokenExpired)
	case frontend.KillByOperator: // kill.go
		s.interrupt(whyOperatorKill)
	default:
		s.interrupt(whyShutdown)
	}
}

// Expires implements frontend.Session.
func (s *session) Expires() time.Time { return s.id.Expires }

// CloseIfIdle implements frontend.Session: it ends the session if nothing
// of it is in flight: no request being relayed, no transaction open.
func (s *session) CloseIfIdle() {
	s.mu.Lock()
	held := s.lease != nil
	s.mu.Unlock()
	if s.busy.Load() || byte(s.txStatus.Load()) != 'I' || s.txnMode && held {
		return
	}
	s.interrupt(whyIdleShutdown)
}

// spurious reports an interrupt that no longer applies (the session gave
// the expired connection back before it was told) and clears it.
func (s *session) spurious() bool {
	if s.why.Load() != whyLeaseEnd {
		return false
	}
	s.mu.Lock()
	l := s.lease
	s.mu.Unlock()
	if l != nil && l.Gen.State() >= creds.Expired {
		return false
	}
	if !s.why.CompareAndSwap(whyLeaseEnd, whyNone) {
		return false
	}
	_ = s.client.SetDeadline(time.Time{})
	if l != nil {
		_ = l.Conn.(*upstream).conn.SetDeadline(time.Time{})
	}
	// A kill that came in between set its deadlines after its reason:
	// look again so it is not lost.
	return s.why.Load() == whyNone
}

// armIdleTxn sets the read deadline for pool.idle_transaction_timeout
// when the session is about to wait for a client holding a transaction
// open on a pooled connection.
func (s *session) armIdleTxn() {
	limit := s.backend.IdleTxnTimeout
	st := byte(s.txStatus.Load())
	if !s.txnMode || limit <= 0 || s.rl.lease == nil || st != 'T' && st != 'E' {
		return
	}
	s.idleArmed = true
	_ = s.client.SetReadDeadline(time.Now().Add(limit))
}

// interruptError is what the client is told when the session ends for why.
func (s *session) interruptError(why int32, gen *creds.Generation) *Error {
	switch why {
	case whyLeaseEnd:
		reason := ""
		if gen != nil {
			reason = gen.Reason()
		}
		if s.txnMode {
			return &Error{Severity: "FATAL", Code: codeAdminShutdown,
				Message: fmt.Sprintf("dbproxy closed this session: its transaction outlived the database credential for backend %s (%s)", s.backend.Name, frontend.ReasonText(reason)),
				Hint:    "reconnecting is safe: new transactions use a fresh credential"}
		}
		return &Error{Severity: "FATAL", Code: codeAdminShutdown,
			Message: fmt.Sprintf("dbproxy closed this session: the database credential for backend %s has reached the end of its lease (%s)", s.backend.Name, frontend.ReasonText(reason)),
			Hint:    "reconnecting is safe: new sessions use a fresh credential"}
	case whyIdleShutdown:
		return &Error{Severity: "FATAL", Code: codeAdminShutdown, Message: "dbproxy is shutting down; this idle session was closed", Hint: "reconnect to another dbproxy instance or retry shortly"}
	case whyTokenExpired: // password.go
		return s.tokenExpiredError()
	case whyOperatorKill: // kill.go
		return s.operatorKillError()
	case whyRevoked: // reload.go
		return s.revokedError()
	}
	return &Error{Severity: "FATAL", Code: codeAdminShutdown, Message: "dbproxy is shutting down", Hint: "reconnect to another dbproxy instance or retry shortly"}
}

// idleTxnError ends a session idle inside a transaction too long.
func (s *session) idleTxnError() *Error {
	return &Error{Severity: "FATAL", Code: codeIdleInTxnTimeout,
		Message: fmt.Sprintf("dbproxy closed this session: it stayed idle inside a transaction for more than %s while holding one of backend %s's server connections (pool.idle_transaction_timeout); the transaction was rolled back", s.backend.IdleTxnTimeout, s.backend.Name),
		Hint:    "commit or roll back promptly, or raise pool.idle_transaction_timeout"}
}
