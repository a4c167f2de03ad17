package mysql

import (
	"errors"
	"fmt"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"
)

// A server connection lost in the middle of a transaction-pool command
// (the database restarted or was killed; not retryable because the
// command may have run or part of its answer reached the client) costs
// the client that command, not its session. Outside a transaction it gets
// an error saying the command may or may not have run. Inside one, the
// transaction is gone with the connection: the client gets 1213 (40001),
// MySQL's "the transaction was rolled back, run it again", which drivers
// and ORMs already handle, and the session is outside a transaction
// afterwards, as after a deadlock.

// erLockDeadlock is ER_LOCK_DEADLOCK: the transaction was rolled back.
const erLockDeadlock = 1213

// survivable reports a lost server connection after which the client's
// session can go on: the command was read whole and no server packet
// reached the client in part.
func (t *txnSession) survivable(err error) bool {
	s := t.s
	return s.txnMode && isUpstream(err) && !s.torn && !t.midStream && s.stopReason() == killNone && t.ctx.Err() == nil
}

// lostCommand closes the lost connection and answers the command, unless
// the server's own goodbye already answered it.
func (t *txnSession) lostCommand(cause error) error {
	s := t.s
	inTxn := t.status&gomysql.SERVER_STATUS_IN_TRANS != 0
	answered := errors.Is(cause, errHangup) // its ERR reached the client
	t.release(false)
	s.track.reset()
	t.status = gomysql.SERVER_STATUS_AUTOCOMMIT
	s.status.Store(uint32(t.status))
	s.log.Warn("transaction pooling: server connection lost during a command; the session goes on",
		zap.Error(cause), zap.Bool("in_transaction", inTxn))
	switch {
	case answered && inTxn:
		// The server's ERR answered this command; the next one hears of
		// the transaction.
		t.lostTxn = true
		return nil
	case answered:
		return nil
	}
	e := t.lostError(inTxn, errors.Unwrap(cause))
	s.srv.metrics.errors.WithLabelValues(e.class()).Inc()
	seq := byte(s.nextSeq.Load())
	s.nextSeq.Store(1)
	return s.reply(e.packet(seq))
}

// lostError tells the client its command or transaction went with the
// server connection (cause, if known).
func (t *txnSession) lostError(inTxn bool, cause error) *Error {
	why := ""
	if cause != nil {
		why = fmt.Sprintf(" (%v)", cause)
	}
	if inTxn {
		return &Error{Code: erLockDeadlock, State: "40001",
			Message: fmt.Sprintf("dbproxy lost its connection to backend %s during this transaction%s; the transaction was rolled back: run it again (this session stays usable)", t.s.backend.Name, why)}
	}
	return &Error{Code: erUnknownError, State: "08S01",
		Message: fmt.Sprintf("dbproxy lost its connection to backend %s during this command%s; if it ran outside a transaction it may or may not have run; this session stays usable", t.s.backend.Name, why)}
}

// afterLostTxn answers the first command after a transaction was lost
// while the server's own ERR answered the command in flight: a ROLLBACK
// is answered OK, a new transaction starts, anything else hears that the
// transaction was rolled back.
func (t *txnSession) afterLostTxn(p []byte) (bool, error) {
	t.lostTxn = false
	w := firstWord(p[1:])
	switch {
	case p[0] == gomysql.COM_QUERY && wordIn(w, "rollback"):
		return true, t.s.reply(okPacket(1, gomysql.SERVER_STATUS_AUTOCOMMIT))
	case p[0] == gomysql.COM_QUERY && !wordIn(w, "begin", "start"), p[0] == gomysql.COM_STMT_EXECUTE:
		e := t.lostError(true, nil)
		t.s.srv.metrics.errors.WithLabelValues(e.class()).Inc()
		return true, t.s.reply(e.packet(1))
	}
	return false, nil
}
