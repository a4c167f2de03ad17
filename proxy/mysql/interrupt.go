package mysql

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// Stopping a session. Its one goroutine blocks in reads and writes on
// the client and the upstream, so whoever stops it (KILL from another
// session, Shutdown, the pool at a generation's drain deadline through
// Interrupt) records why and sets deadlines in the past on both
// connections. The goroutine sees a timeout
// and asks stopReason what it means. A softer reason may not apply by the
// time the goroutine looks (the idle session got a command, the
// transaction ended before its credential did): then it is cleared with
// the deadlines and the goroutine goes on. The client's reads and writes
// make that check themselves (clientIO), so the relay code never sees a
// timeout that does not stop it.

// killReason is frontend.KillReason under the names this package's
// files use; see there for the order. An idle shutdown applies only to a
// session waiting for a command outside a transaction, a lease end only
// to one holding a connection of an expired generation, a KILL
// CONNECTION comes from a session of the same identity.
type killReason frontend.KillReason

const (
	killNone         = killReason(frontend.KillNone)
	killIdleShutdown = killReason(frontend.KillIdleShutdown)
	killLeaseEnd     = killReason(frontend.KillLeaseEnd)
	killShutdown     = killReason(frontend.KillShutdown)
	killByClient     = killReason(frontend.KillByClient)
	// killTokenExpired ranks as shutdown, so it cancels a waiting
	// checkout and applies wherever the session is (password.go).
	killTokenExpired = killReason(frontend.KillTokenExpired)
)

func (r killReason) rank() killReason { return killReason(frontend.KillReason(r).Rank()) }

// kill stops the session for r.
func (s *session) kill(r killReason) { s.interrupt(r, nil) }

// Kill implements frontend.Session.
func (s *session) Kill(r frontend.KillReason) { s.kill(killReason(r)) }

// Expires implements frontend.Session.
func (s *session) Expires() time.Time { return s.id.Expires }

// interrupt records r, unless a reason as strong is recorded, and wakes
// the session goroutine (again: a deadline may have been reset since). A
// lease end touches the upstream only if it is of gen; an idle shutdown
// only the client's read.
func (s *session) interrupt(r killReason, gen *creds.Generation) {
	for {
		cur := killReason(s.reason.Load())
		if cur != killNone && cur.rank() >= r.rank() {
			break
		}
		if s.reason.CompareAndSwap(uint32(cur), uint32(r)) {
			break
		}
	}
	past := time.Unix(1, 0)
	if r == killIdleShutdown {
		_ = s.client.SetReadDeadline(past)
		return
	}
	// The client first: a goroutine woken (from the upstream or a read)
	// may at once set a write deadline of its own to send the ERR, which
	// must not be undone; so the write deadline before the read's.
	_ = s.client.SetWriteDeadline(past)
	_ = s.client.SetReadDeadline(past)
	s.mu.Lock()
	if s.lease != nil && (gen == nil || s.lease.Gen == gen) {
		if c := s.lease.Conn.(*upstream).conn; c != nil {
			_ = c.SetDeadline(past)
		}
	}
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil && r >= killShutdown {
		cancel() // a checkout waiting for a connection
	}
}

// stopReason is the reason that stops the session now, or killNone.
func (s *session) stopReason() killReason {
	if s.stop != killNone {
		return s.stop
	}
	return s.interrupted(false)
}

// interrupted returns the recorded reason if it applies to the session
// goroutine now (reading: in a client read); one that does not is
// cleared, with the client's deadlines.
func (s *session) interrupted(reading bool) killReason {
	for {
		r := killReason(s.reason.Load())
		if r == killNone || s.applies(r, reading) {
			return r
		}
		if s.reason.CompareAndSwap(uint32(r), uint32(killNone)) {
			// Another reason recorded after this is seen by the next
			// load: its interrupter stores it before its deadline.
			_ = s.client.SetDeadline(time.Time{})
		}
	}
}

func (s *session) applies(r killReason, reading bool) bool {
	switch r {
	case killIdleShutdown:
		return reading && s.waiting && s.clientBuffered() == 0 && !s.inTransaction()
	case killLeaseEnd:
		// s.lease is written only by this goroutine.
		return s.lease != nil && s.srv.expired(s.lease.Gen)
	}
	return true
}

// stopError is what the client hears when the session is stopped for r,
// and the result label of the session.
func (s *session) stopError(r killReason) (*Error, string) {
	switch r {
	case killByClient:
		return &Error{Code: erConnectionKilled, State: "70100", Message: "Connection was killed (KILL CONNECTION through dbproxy)"}, "killed"
	case killTokenExpired: // password.go
		return s.tokenExpiredError(), "token_expired"
	case killByOperator: // kill.go
		return s.operatorKillError(), "operator_kill"
	case killRevoked: // reload.go
		return s.revokedError(), "config_reload"
	case killIdleShutdown:
		return &Error{Code: erServerShutdown, State: "08S01", Message: "Server shutdown in progress: dbproxy is shutting down; this idle session was closed, reconnect to another dbproxy instance or retry shortly"}, "shutdown"
	case killLeaseEnd:
		why := ""
		if s.lease != nil {
			why = frontend.ReasonText(s.lease.Gen.Reason())
		}
		if s.txnMode {
			return &Error{Code: erConnectionKilled, State: "70100",
				Message: fmt.Sprintf("Connection was killed: dbproxy closed this session because its transaction outlived the database credential for backend %s (%s); reconnecting is safe: new transactions use a fresh credential", s.backend.Name, why)}, "lease_end"
		}
		return &Error{Code: erConnectionKilled, State: "70100",
			Message: fmt.Sprintf("Connection was killed: dbproxy closed this session because the database credential for backend %s has reached the end of its lease (%s); reconnecting is safe: new sessions use a fresh credential", s.backend.Name, why)}, "lease_end"
	}
	return &Error{Code: erServerShutdown, State: "08S01", Message: "Server shutdown in progress: dbproxy is shutting down; reconnect to another dbproxy instance or retry shortly"}, "shutdown"
}

// CloseIfIdle implements frontend.Session.
func (s *session) CloseIfIdle() {
	if s.track != nil && s.track.idle() && !s.inTransaction() {
		s.kill(killIdleShutdown)
	}
}

// isTimeout reports a deadline passing, ours or an interrupter's.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// clientIO is the client connection as the session's buffers use it: a
// timeout whose reason does not apply is retried, so the relay never sees
// it. It is one pointer: it goes into an interface without allocating.
type clientIO struct{ s *session }

func (c clientIO) Read(p []byte) (int, error) {
	for {
		n, err := c.s.client.Read(p)
		if err == nil || !isTimeout(err) {
			return n, err
		}
		if r := c.s.interrupted(true); r != killNone {
			c.s.stop = r
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (c clientIO) Write(p []byte) (int, error) {
	done := 0
	for {
		n, err := c.s.client.Write(p[done:])
		done += n
		if err == nil || !isTimeout(err) {
			return done, err
		}
		if r := c.s.interrupted(false); r != killNone {
			c.s.stop = r
			return done, err
		}
	}
}

// Interrupt implements pool.Holder: the generation of a lent connection
// reached its drain deadline. The pool tells every holder of that
// generation; a session that has since given the connection back (or
// holds another) is not stopped.
func (s *session) Interrupt() {
	s.mu.Lock()
	l := s.lease
	s.mu.Unlock()
	if l != nil && s.srv.expired(l.Gen) {
		s.interrupt(killLeaseEnd, l.Gen)
	}
}

// holding is called when the session has published a new lease in
// s.lease: a drain deadline that passed before (the pool's Interrupt
// found no lease to stop) stops the session now.
func (s *session) holding(gen *creds.Generation) {
	if s.srv.expired(gen) {
		s.interrupt(killLeaseEnd, gen)
	}
}
