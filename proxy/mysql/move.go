package mysql

import (
	"context"
	"regexp"
	"time"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
)

// Session mode across a rotation. Session-mode sessions run on the same
// relay as transaction pooling (txn.go), keeping their one connection:
// so the state a move must restore is already recorded (the default
// database and session variables in txnstate.go, prepared statements
// with ids of dbproxy's in stmt.go). When the credential of a session's
// connection is superseded, an idle session (no transaction, no open
// result or cursor, no pending long data) moves to a connection on the
// new credential: dbproxy checks one out, applies the session's state,
// closes the old one, and prepares the client's statements there on
// first use. The client sees nothing. State that cannot move (temporary
// tables, GET_LOCK, LOCK TABLES, SQL PREPARE, HANDLER, a SET dbproxy
// cannot replay) pins the session until the drain deadline, as before.
//
// A session waiting for its client's next command is parked; the pool's
// Superseded moves a parked session at once (under moveMu, which the
// session goroutine takes before it touches the connection again), a busy
// one moves before it parks next.

// sessionPinRE finds session-mode state a move cannot carry.
var sessionPinRE = regexp.MustCompile(`(?is)(?:^|;)\s*(prepare|handler|create\s+(?:or\s+replace\s+)?temporary)\b`)

// sessionPin names state in a session-mode query that cannot move to
// another connection, or "".
func sessionPin(q []byte) string {
	m := sessionPinRE.FindSubmatch(q)
	if m == nil {
		return ""
	}
	switch w := firstWord(m[1]); {
	case wordIn(w, "prepare"):
		return "SQL PREPARE"
	case wordIn(w, "handler"):
		return "HANDLER"
	}
	return "a temporary table"
}

// Superseded implements pool.Mover: the held connection's credential is
// being drained.
func (s *session) Superseded() {
	t := s.rl.Load()
	if s.txnMode || t == nil {
		return // transactions take the new credential at their next checkout
	}
	t.moveWanted.Store(true)
	go func() {
		t.moveMu.Lock()
		defer t.moveMu.Unlock()
		if t.parked {
			t.maybeMove()
		}
	}()
}

// park is called before the session waits for its client's next
// command, unpark when the command has come.
func (t *txnSession) park() {
	if t.s.txnMode {
		return
	}
	t.moveMu.Lock()
	t.maybeMove()
	t.parked = true
	t.moveMu.Unlock()
}

// unpark reports whether the session moved while parked.
func (t *txnSession) unpark() bool {
	if t.s.txnMode {
		return false
	}
	t.moveMu.Lock()
	moved := t.moved
	t.parked, t.moved = false, false
	t.moveMu.Unlock()
	return moved
}

// pin records state that keeps a session-mode session on its connection.
func (t *txnSession) pin(reason string) {
	if t.pinned == "" {
		t.s.log.Info("session pinned to its server connection", zap.String("reason", reason))
	}
	t.setPinned(reason)
}

// setPinned records why the session cannot move; Info reads it.
func (t *txnSession) setPinned(reason string) {
	t.s.mu.Lock()
	t.pinned = reason
	t.s.mu.Unlock()
}

// maybeMove moves an idle session-mode session whose credential is being
// drained. A failed move leaves it where it was: it tries again before
// its next command, and the drain deadline still ends it.
func (t *txnSession) maybeMove() {
	s := t.s
	if !t.moveWanted.Load() || t.lease == nil || t.pinned != "" || t.dirty || t.poisoned || t.pinOnce ||
		!t.quiescent() || t.up.bw.Buffered() > 0 {
		return
	}
	old, oldUp, oldStatus := t.lease, t.up, t.status
	ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
	defer cancel()
	lease, err := s.pool.CheckoutFor(ctx, s.poolKey, s.dialer, s)
	if err != nil {
		s.log.Warn("could not move the session to the new credential; it stays until the drain deadline", zap.Error(err))
		return
	}
	if lease.Gen == old.Gen || lease.Gen.State() != creds.Active {
		lease.Put() // no new credential yet: try again at the next command
		return
	}
	t.moveWanted.Store(false)
	t.lease, t.up = lease, lease.Conn.(*upstream)
	t.status = t.up.status
	if err := t.applyState(); err != nil {
		lease.Close()
		t.lease, t.up, t.status = old, oldUp, oldStatus
		s.log.Warn("could not restore the session on the new credential; it stays until the drain deadline", zap.Error(err))
		return
	}
	s.mu.Lock()
	s.lease = lease
	s.mu.Unlock()
	s.serverThread.Store(t.up.threadID) // audit.go
	s.holding(lease.Gen)
	old.Close()
	t.moved = true
	s.log.Info("session moved to the new credential", zap.Uint64("from_generation", old.Gen.N),
		zap.Uint64("generation", lease.Gen.N), zap.String("db_user", lease.Gen.Username),
		zap.Uint32("thread_id", t.up.threadID))
}

// adoptSession makes the connection a session-mode login checked out the
// session's own.
func (t *txnSession) adoptSession() {
	s := t.s
	s.mu.Lock()
	t.lease = s.lease
	s.mu.Unlock()
	t.up = t.lease.Conn.(*upstream)
	t.status = t.up.status
	if t.lease.Gen.State() != creds.Active {
		t.moveWanted.Store(true) // superseded before the session could hear it
	}
	s.holding(t.lease.Gen)
}
