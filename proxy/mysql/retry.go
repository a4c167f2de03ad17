package mysql

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Transparent retry in transaction pooling: a pooled connection the server
// ended while it sat idle (KILL by a DBA, wait_timeout, a restart) is only
// found out when a command is sent on it: the write fails, the answer is
// an EOF, or the answer is the server's goodbye (ER_CONNECTION_KILLED and
// the like). If the connection was checked out for that command and
// nothing of the answer has reached the client, the server ran nothing:
// dbproxy closes the dead connection, takes one that is open and runs the
// command again, session state first. The client never sees the fault.
//
// A server that dies after executing a command but before its first
// answer byte is indistinguishable from one that died before it; that
// narrow window (a crash mid-autocommit statement) is the price, as in
// the PostgreSQL relay.

// maxRetries bounds the retries of one command.
const maxRetries = 2

// errDeadOnArrival is a connection whose first answer to a command it was
// checked out for was the server's goodbye (relayAnswer and answer look).
var errDeadOnArrival = upErr(errors.New("the server had closed the pooled connection"))

// command runs one client command, again on another connection while
// the one it was checked out for turns out dead.
func (t *txnSession) commandRetrying(p []byte) error {
	if t.large && !streams(p) {
		var err error
		if p, err = t.readWhole(); err != nil {
			return err
		}
	}
	// stmtCommand rewrites the statement id in place: keep the client's.
	var head [5]byte
	n := copy(head[:], p)
	for retries := 0; ; retries++ {
		out := t.s.bytesOut.Load()
		err := t.command(p)
		if t.large && err == nil {
			// Answered without going upstream (refused, no connection).
			err = t.skipLarge()
		}
		fresh := t.fresh
		t.fresh = false
		if err != nil && !(fresh && t.retryable(err, out)) && t.survivable(err) {
			return t.lostCommand(err)
		}
		if err == nil || !fresh || !t.retryable(err, out) {
			return err
		}
		t.release(false)
		t.s.track.reset()
		t.probe = true // its idle siblings likely died with it
		if retries == maxRetries {
			return t.gaveUp(err)
		}
		t.s.log.Info("server connection was dead; command sent again on another", zap.Error(err), zap.Int("retry", retries+1))
		t.s.srv.metrics.Retries.Inc()
		copy(p, head[:n])
	}
}

// gaveUp answers a command that found only dead connections: nothing ran,
// and the session, whose state dbproxy holds, goes on.
func (t *txnSession) gaveUp(err error) error {
	s := t.s
	s.log.Warn("server connections dead one after another; command not run", zap.Error(err), zap.Int("tries", maxRetries+1))
	e := &Error{Code: erUnknownError, State: "08S01",
		Message: fmt.Sprintf("backend %s: %d server connections in a row were closed by the database before the command ran (%v); nothing ran, the session is intact: retry, and check the database's log", s.backend.Name, maxRetries+1, err)}
	s.srv.metrics.errors.WithLabelValues(e.class()).Inc()
	return s.reply(e.packet(1))
}

// retryable reports whether err on a connection checked out for the
// failed command can be absorbed: nothing reached the client and the
// session is not being stopped.
func (t *txnSession) retryable(err error, out int64) bool {
	s := t.s
	return s.txnMode && isUpstream(err) && !errors.Is(err, errHangup) && !s.torn &&
		s.bytesOut.Load() == out && s.stopReason() == killNone && t.ctx.Err() == nil
}

// deadConn reports a network failure of a pooled connection (as opposed
// to an answer of the server's, like an ERR to a SET).
func deadConn(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ne) && !ne.Timeout()
}

// open reports whether a checked-out connection is still open, when a
// dead one is likely (t.probe); the check costs a system call, and a TLS
// connection counts as open (its socket may hold records for TLS itself).
func (t *txnSession) open(up *upstream) bool {
	if !t.probe {
		return true
	}
	return up.br.Buffered() == 0 && pool.PeerOpen(up.conn)
}
