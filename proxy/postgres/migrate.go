package postgres

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Session mode across a rotation: when the credential of a session's
// connection is superseded, an idle session (between transactions, no
// COPY, nothing outstanding) moves to a connection on the new credential
// with its state restored: its startup parameters (the pool key), its
// session-level SETs and its named prepared statements. The client sees
// nothing. State that cannot move pins the session to the old connection
// until the drain deadline, as before, and /v1/sessions says why.

// Superseded implements pool.Mover: the held connection's credential is
// being drained. An idle session is woken to move now; a busy one moves
// at the end of its request.
func (s *session) Superseded() {
	if s.txnMode {
		return // transactions take the new credential at their next checkout
	}
	s.moveWanted.Store(true)
	s.mu.Lock()
	if s.idleWaiting {
		_ = s.client.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
}

// pinReason names state in a session-mode query that cannot be moved to
// another server connection, or "".
func pinReason(q []byte) string {
	switch {
	case containsFold(q, "temp") && (containsFold(q, "create temp") || containsFold(q, "create local temp") || containsFold(q, "create global temp")):
		return "temporary table"
	case containsFold(q, "with hold"):
		return "WITH HOLD cursor"
	case containsFold(q, "advisory_lock"):
		return "advisory lock"
	case startsWithFold(q, "prepare"):
		return "SQL PREPARE statement"
	case startsWithFold(q, "listen"):
		return "LISTEN"
	}
	return ""
}

// trackSession records what a session-mode message changes of the state
// a move must restore. The message is at the head of the client reader.
func (t *txnSession) trackSession(typ byte, size int) *setChange {
	s := t.s
	if t.pin != "" || (typ != 'Q' && typ != 'P' && typ != 'C') {
		return nil
	}
	f, err := s.cbr.Peek(min(5+size, s.cbr.Size()))
	if err != nil || len(f) < 5+size {
		t.pinAs("a message larger than dbproxy's read buffer")
		return nil
	}
	body := f[5:]
	switch typ {
	case 'C':
		if len(body) > 1 && body[0] == 'S' {
			delete(t.sstmts, string(firstCString(body[1:])))
		}
		return nil
	case 'P':
		name, rest, ok := cstring(body)
		if !ok {
			return nil
		}
		if r := pinReason(firstCString(rest)); r != "" {
			t.pinAs(r)
		}
		if len(name) > 0 {
			t.sstmts[string(name)] = append([]byte(nil), body...)
		}
		return nil
	}
	q := firstCString(body)
	if t.trackListen(q) {
		return nil
	}
	if r := pinReason(q); r != "" {
		t.pinAs(r)
		return nil
	}
	if name, ok := deallocateTarget(q); ok {
		if strings.EqualFold(name, "all") {
			clear(t.sstmts)
		} else {
			delete(t.sstmts, name)
		}
	}
	if ch, refuse := classifySet(q); ch != nil && refuse == "" {
		if ch.failed {
			t.pinAs("a statement with several SETs")
			return nil
		}
		return ch
	}
	return nil
}

func (t *txnSession) pinAs(reason string) {
	t.s.mu.Lock()
	t.pin = reason
	t.s.mu.Unlock()
}

// maybeMove moves an idle session-mode session whose credential is being
// drained. A failed move leaves it where it was: the drain deadline still
// ends it, as for a pinned session.
func (s *session) maybeMove() {
	t := s.rl
	if s.txnMode || !s.moveWanted.Load() || t.pin != "" || t.duplex != nil && !t.listening || t.outstanding() ||
		byte(s.txStatus.Load()) != 'I' || t.lease == nil || t.up.bw.Buffered() > 0 {
		return
	}
	if t.duplex != nil {
		if err := t.pauseListening(); err != nil {
			return // the answer goroutine failed: the session ends
		}
		defer t.startDuplex() // on the new connection, or the old one
	}
	s.moveWanted.Store(false)
	old := t.lease
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	lease, err := s.pool.CheckoutFor(ctx, s.poolKey, s.dialer, s)
	if err == nil && lease.Gen == old.Gen {
		lease.Put()
		return // no new credential yet: try again at the next boundary
	}
	if err == nil {
		err = t.restoreOn(lease.Conn.(*upstream))
		if err != nil {
			lease.Close()
		}
	}
	if err != nil {
		s.log.Warn("could not move the session to the new credential; it stays until the drain deadline", zap.Error(err))
		return
	}
	if len(t.channels) > 0 {
		_ = t.relayLeftNotifications(old.Conn.(*upstream))
		_ = t.flushClient()
	}
	t.mu.Lock()
	t.lease, t.up = lease, lease.Conn.(*upstream)
	t.mu.Unlock()
	s.mu.Lock()
	s.lease = lease
	s.mu.Unlock()
	s.serverPID.Store(t.up.pid) // audit.go
	old.Close()
	s.srv.metrics.moves.Inc()
	s.log.Info("session moved to the new credential", zap.Uint64("from_generation", old.Gen.N),
		zap.Uint64("generation", lease.Gen.N), zap.String("db_user", lease.Gen.Username))
}

// restoreOn applies the session's SETs and prepares its named statements
// on up, and waits for the server to accept all of it.
func (t *txnSession) restoreOn(up *upstream) error {
	var b []byte
	if len(t.sets) > 0 || len(t.channels) > 0 {
		var q strings.Builder
		for _, s := range t.sets {
			q.WriteString(s.sql)
			q.WriteByte(';')
		}
		q.WriteString(t.listenSQL())
		b = appendFrame(b, 'Q', append([]byte(q.String()), 0))
	}
	for _, body := range t.sstmts {
		b = appendFrame(b, 'P', body)
	}
	if len(t.sstmts) > 0 {
		b = appendFrame(b, 'S', nil)
	}
	if len(b) == 0 {
		return nil
	}
	_ = up.conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = up.conn.SetDeadline(time.Time{}) }()
	if _, err := up.conn.Write(b); err != nil {
		return err
	}
	want := 0
	if len(t.sets) > 0 || len(t.channels) > 0 {
		want++
	}
	if len(t.sstmts) > 0 {
		want++
	}
	var failed error
	for want > 0 {
		typ, body, err := readFrame(up.br, 1<<20)
		if err != nil {
			return err
		}
		switch typ {
		case 'E':
			failed = fmt.Errorf("the new connection refused the session's state: %s", bytes.ReplaceAll(body, []byte{0}, []byte{' '}))
		case 'Z':
			want--
		}
	}
	return failed
}

var _ pool.Mover = (*session)(nil)
