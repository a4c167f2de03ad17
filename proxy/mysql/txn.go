package mysql

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Transaction pooling: a client holds an upstream connection only while
// the server's status flags say the connection carries something of its
// own: a transaction (SERVER_STATUS_IN_TRANS, with autocommit on or off),
// more results, an open cursor, long data sent for a statement not yet
// executed. Otherwise the connection goes back to the pool after each
// answer, with lease.Put (no reset), and the next command checks one out;
// the session variables the client set go with it (txnstate.go).
//
// Unlike PostgreSQL's extended protocol, MySQL's is strictly command and
// answer: a client sends one command and waits for the whole answer (only
// COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA have none). So the session
// goroutine reads a command, writes it upstream, relays the whole answer
// and only then, with nothing in flight by construction, decides whether
// the connection goes back. Kill, shutdown and drain deadlines stop it as
// in session mode (interrupt.go); a drain deadline stops only a session
// that holds a connection of the expired generation.

// txnSession is the transaction-pooling state of one client session,
// owned by the session goroutine.
type txnSession struct {
	s     *session
	ctx   context.Context // cancelled when the session is killed
	lease *pool.Lease     // held, or nil; also s.lease
	up    *upstream

	stmts    map[uint32]*clientStmt // by the id dbproxy gave the client
	sqlStmts map[string]*sqlStmt    // SQL-level statements, by name (sqlstmt.go)
	nextStmt uint32
	status   uint16 // server status flags on the held upstream
	cursor   bool   // a cursor is open: COM_STMT_FETCH needs this connection
	longData bool   // COM_STMT_SEND_LONG_DATA waits for its execute
	pinOnce  bool   // keep the connection for the next command (SET TRANSACTION)
	dirty    bool   // session state changed: reset before another client
	poisoned bool   // state a reset does not undo: close instead
	fresh    bool   // the held connection was checked out for this command (retry.go)
	probe    bool   // check connections for a server close at checkout (retry.go)
	// state is the session state the client set (txnstate.go), applied
	// on each connection it lands on.
	state sessState
	// pinned names state dbproxy cannot carry to another connection:
	// the session keeps the one it has until it ends. Written under s.mu.
	pinned string

	// Session mode (move.go): a move to a new credential's connection.
	moveMu     sync.Mutex
	parked     bool // waiting for the client's next command; under moveMu
	moved      bool // moved while parked; under moveMu
	moveWanted atomic.Bool

	consumed  int     // bytes of the last command still in s.cbr
	large     bool    // the command is larger than s.cbr and still there (stream.go)
	midStream bool    // streaming a large command upstream (stream.go)
	lostTxn   bool    // the transaction was lost with its connection; not yet told (lost.go)
	hdr       [4]byte // scratch for packet headers
}

// runTxn relays in transaction-pooling mode until the session ends and
// reports how it ended.
func (s *session) runTxn() string {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	t := &txnSession{s: s, ctx: ctx, stmts: map[uint32]*clientStmt{}}
	if !s.txnMode {
		t.adoptSession()
	}
	s.rl.Store(t)
	result := t.loop()
	t.moveMu.Lock() // no move after the end
	defer t.moveMu.Unlock()
	if !s.txnMode && result == "ok" && t.up != nil && t.quiescent() && !t.poisoned {
		// A session-mode client said goodbye: its connection serves
		// another session after a reset.
		t.dirty = true
		t.setPinned("")
		t.release(true)
	}
	// Still held here means the session ended inside a transaction (or
	// on an error): close it, never hand it to another client.
	t.release(false)
	return result
}

func (t *txnSession) loop() string {
	for {
		p, err := t.readCommand()
		if err == nil {
			t.s.stats.RequestStarted()
			err = t.commandRetrying(p)
		}
		if err != nil {
			return t.end(err)
		}
		t.s.stats.QueryDone(t.s.inTransaction())
	}
}

// end tells the client why the session ends, if it should hear it.
func (t *txnSession) end(err error) string {
	s := t.s
	if r := s.stopReason(); r != killNone {
		e, result := s.stopError(r)
		if r == killLeaseEnd && t.pinned != "" {
			// Say why it could not move to the new credential.
			e.Message += "; the session could not move to the new credential because it holds " + t.pinned
		}
		s.sendError(e)
		return result
	}
	if errors.Is(err, errQuit) {
		return "ok"
	}
	return s.failure(err)
}

// readCommand reads one logical command packet. One that fits the
// client's read buffer is returned in place (valid until the next
// readCommand); a larger one is read into memory.
func (t *txnSession) readCommand() ([]byte, error) {
	s := t.s
	if t.consumed > 0 {
		_, _ = s.cbr.Discard(t.consumed)
		t.consumed = 0
	}
	t.park()
	s.waiting = true
	err := s.waitIdle()
	var hdr []byte
	if err == nil {
		hdr, err = s.cbr.Peek(4)
	}
	for err != nil && t.unpark() && s.stop == killLeaseEnd {
		// The drain deadline woke the read while the session was moving
		// off that credential: it no longer applies.
		s.stop = killNone
		if s.interrupted(true) != killNone {
			break
		}
		t.park()
		hdr, err = s.cbr.Peek(4)
	}
	t.unpark()
	if err != nil {
		return nil, err
	}
	s.waiting = false
	if hdr[3] != 0 {
		return nil, outOfOrder(0, hdr[3])
	}
	maxLen := s.srv.opts.MaxMessageBytes
	n := payloadLen(hdr)
	var p []byte
	switch {
	case n > maxLen:
		return nil, tooLarge(maxLen)
	case n < maxPayload && 4+n <= s.cbr.Size():
		b, err := s.cbr.Peek(4 + n)
		if err != nil {
			return nil, err
		}
		p, t.consumed = b[4:], 4+n
		s.bytesIn.Add(int64(4 + n))
	default:
		// Larger than the buffer: its start is looked at where it is,
		// and the whole goes upstream as it arrives (stream.go).
		b, err := s.cbr.Peek(s.cbr.Size())
		if err != nil {
			return nil, err
		}
		p, t.large = b[4:], true
	}
	if len(p) == 0 {
		return nil, errEmptyCommand
	}
	if p[0] == gomysql.COM_QUIT {
		return nil, errQuit
	}
	s.nextSeq.Store(1)
	return p, nil
}

// Marks a command puts on the connection it runs on.
const (
	markDirty   = 1 << iota // reset before another client uses it
	markPoison              // close it instead
	markPinOnce             // keep it for the next command too
	markNoStmts             // the server dropped every prepared statement
	markNone    = 0
)

// command handles one client command.
func (t *txnSession) command(p []byte) error {
	s := t.s
	cmd := p[0]
	if t.lostTxn {
		if handled, err := t.afterLostTxn(p); handled {
			return err
		}
	}
	kind, ok := commandResponse(cmd)
	if !ok {
		return notSupported(cmd)
	}
	mark := markNone
	switch cmd {
	case gomysql.COM_QUERY, gomysql.COM_PROCESS_KILL:
		handled, err := s.intercept(cmd, p)
		if err != nil || handled {
			return err
		}
		if cmd == gomysql.COM_QUERY {
			if f := sessionLock(p[1:]); f != "" {
				if s.txnMode {
					return t.refuse(f)
				}
				t.pin(f)
			}
			if s.txnMode {
				if handled, err := t.sqlStatement(p[1:], kind); handled {
					return err
				}
			}
			mark = sessionChange(p[1:])
			if !s.txnMode {
				if r := sessionPin(p[1:]); r != "" {
					t.pin(r)
				}
			}
			if ch := t.stateChange(p[1:]); ch != nil {
				mark &^= markDirty
				return t.tracked(p, kind, mark, ch)
			}
		}
	case gomysql.COM_STMT_PREPARE:
		if f := sessionLock(p[1:]); f != "" {
			if s.txnMode {
				return t.refuse(f)
			}
			t.pin(f)
		}
		return t.prepare(p)
	case gomysql.COM_STMT_EXECUTE, gomysql.COM_STMT_FETCH, gomysql.COM_STMT_SEND_LONG_DATA,
		gomysql.COM_STMT_RESET, gomysql.COM_STMT_CLOSE:
		return t.stmtCommand(p, kind)
	case gomysql.COM_INIT_DB:
		return t.tracked(p, kind, mark, &stateChange{use: true, db: string(p[1:])})
	case gomysql.COM_SET_OPTION:
		// Multi-statement switch: COM_RESET_CONNECTION is not documented
		// to restore it.
		mark = markPoison
		if !s.txnMode {
			t.pin("COM_SET_OPTION")
		}
	case gomysql.COM_RESET_CONNECTION:
		// The client's own statements are gone with its session state.
		clear(t.stmts)
		clear(t.sqlStmts)
		t.state.clear()
		t.setPinned("") // what pinned it is gone with the rest
		mark = markDirty | markNoStmts
	}
	if ok, err := t.hold(kind); !ok {
		return err
	}
	t.apply(mark)
	return t.roundTrip(p, kind)
}

// hold makes sure the session holds an upstream. When none can be had,
// the command is answered with the reason (the session stays usable) and
// ok is false; err is set when the session must end.
func (t *txnSession) hold(kind respKind) (bool, error) {
	if t.up != nil {
		return true, nil
	}
	err := t.attach()
	if err == nil {
		return true, nil
	}
	if t.ctx.Err() != nil || kind == respNone {
		// Killed, or a command without an answer to carry the error.
		return false, err
	}
	e := asClientError(t.s.backend.Name, err)
	t.s.log.Warn("transaction pooling: no upstream connection for a command", zap.Error(err))
	t.s.srv.metrics.errors.WithLabelValues(e.class()).Inc()
	return false, t.s.reply(e.packet(1))
}

// attach checks out an upstream connection of the newest generation and
// applies the session's state on it. A connection found dead on the way
// (retry.go) is closed and another taken.
func (t *txnSession) attach() error {
	start := mono()
	for tries := 0; ; tries++ {
		err := t.attachOnce()
		if err == nil {
			t.s.stats.Waited(start)
		}
		if err == nil || tries == maxRetries || !deadConn(err) || t.ctx.Err() != nil {
			return err
		}
		t.s.log.Info("server connection was dead; using another", zap.Error(err))
		t.s.srv.metrics.Retries.Inc()
		t.probe = true
	}
}

func (t *txnSession) attachOnce() error {
	s := t.s
	var lease *pool.Lease
	for {
		// Checkout bounds the wait with the pool's checkout_timeout.
		l, err := s.pool.CheckoutFor(t.ctx, s.poolKey, s.dialer, s)
		if err != nil {
			return fmt.Errorf("checkout for backend %s: %w", s.backend.Name, err)
		}
		if t.open(l.Conn.(*upstream)) {
			lease = l
			break
		}
		s.log.Info("pooled server connection was closed by the server; using another")
		l.Close()
	}
	t.probe = false
	// Published before the kill check: interrupt stops what it sees.
	s.mu.Lock()
	s.lease = lease
	s.mu.Unlock()
	if killReason(s.reason.Load()).rank() == killShutdown {
		// Killed while waiting: interrupt saw no connection to stop.
		t.lease = lease
		t.release(false)
		return errors.New("session killed during checkout")
	}
	t.lease, t.up = lease, lease.Conn.(*upstream)
	t.status = t.up.status
	t.fresh = true
	s.serverThread.Store(t.up.threadID) // audit.go
	s.holding(lease.Gen)
	if err := t.applyState(); err != nil {
		t.release(false)
		return err
	}
	return nil
}

// apply records what a command does to the connection it runs on.
func (t *txnSession) apply(mark int) {
	if !t.s.txnMode {
		// The session keeps its connection and has it reset when it
		// ends; what cannot move pinned it.
		mark &^= markDirty
	}
	t.dirty = t.dirty || mark&(markDirty|markNoStmts) != 0
	t.poisoned = t.poisoned || mark&markPoison != 0
	t.pinOnce = t.pinOnce || mark&markPinOnce != 0
	if mark&markDirty != 0 {
		t.up.tag = dirtyTag
	}
	if mark&markNoStmts != 0 {
		t.up.stmts, t.up.sqlStmts = nil, nil
		t.cursor, t.longData = false, false
	}
}

// roundTrip sends a command on the held upstream and relays its answer,
// then gives the connection back if the client left nothing on it.
func (t *txnSession) roundTrip(p []byte, kind respKind) error {
	if err := t.sendCommand(p); err != nil {
		return err
	}
	if kind == respNone {
		return nil
	}
	if _, err := t.answer(kind, false, nil); err != nil {
		return err
	}
	t.settle()
	return nil
}

// settle gives the upstream back when the server says it is idle: no
// transaction (autocommit on or off), no more results, and nothing the
// client left on it (cursor, long data, a one-shot SET TRANSACTION, state
// that cannot move).
func (t *txnSession) settle() {
	if !t.s.txnMode {
		return // session mode: the connection is the session's
	}
	if t.pinOnce {
		t.pinOnce = false
		return
	}
	if !t.quiescent() {
		return
	}
	t.release(true)
}

func (t *txnSession) quiescent() bool {
	st := t.status
	return st&gomysql.SERVER_STATUS_IN_TRANS == 0 && st&gomysql.SERVER_MORE_RESULTS_EXISTS == 0 &&
		!t.cursor && !t.longData && t.pinned == "" && t.s.track.idle()
}

// release gives the upstream back: to the pool when clean (after a reset
// if the client changed session state), closed otherwise.
func (t *txnSession) release(clean bool) {
	lease := t.lease
	if lease == nil {
		return
	}
	s := t.s
	s.mu.Lock()
	s.lease = nil
	s.mu.Unlock()
	t.lease, t.up = nil, nil
	// Read after the lease left s.lease: an interrupter that set a
	// deadline on the connection recorded its reason before.
	killed := killReason(s.reason.Load()).rank() == killShutdown
	up := lease.Conn.(*upstream)
	up.status = t.status
	dirty, poisoned := t.dirty, t.poisoned
	t.dirty, t.poisoned, t.cursor, t.longData, t.pinOnce = false, false, false, false, false
	switch {
	case !clean || killed || poisoned:
		// Mid-transaction (or unknown): the server rolls back what the
		// client left; nothing of it reaches another client.
		lease.Close()
	case dirty:
		// User variables, session variables, the database: another
		// client must not inherit them. Return resets (one round trip).
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		lease.Return(ctx)
		cancel()
	default:
		// A connection of an expired generation (its deadline may have
		// been set by a lease end) is closed by Put.
		lease.Put()
	}
}

// sendCommand sends the client's command to the held upstream: p, or
// the large command p is the start of, streamed.
func (t *txnSession) sendCommand(p []byte) error {
	if t.large {
		return t.streamUp()
	}
	return t.writeUp(p)
}

// writeUp sends one logical packet to the held upstream.
func (t *txnSession) writeUp(p []byte) error {
	bw := t.up.bw
	for seq := byte(0); ; seq++ {
		n := min(len(p), maxPayload)
		putHeader(t.hdr[:], n, seq)
		if _, err := bw.Write(t.hdr[:]); err != nil {
			return upErr(err)
		}
		if _, err := bw.Write(p[:n]); err != nil {
			return upErr(err)
		}
		p = p[n:]
		if n < maxPayload {
			break
		}
	}
	return upErr(bw.Flush())
}

// answer reads the server's whole answer to the command just sent. Each
// packet goes to the client unless swallow (an answer to dbproxy's own
// command). The first packet is returned when swallow or first is set;
// first may change it before it goes to the client.
func (t *txnSession) answer(kind respKind, swallow bool, first func([]byte)) ([]byte, error) {
	s, up := t.s, t.up
	s.track.expect(kind)
	if !swallow && first == nil {
		st, ok, err := s.relayAnswer(up, t.fresh)
		t.took(kind, st, ok)
		return nil, err
	}
	// The first packet is read into memory to be looked at or changed.
	seq, head0, err := readPacket(up.br, maxPayload)
	if err != nil {
		return nil, upErr(err)
	}
	if t.fresh && closesConnection(head0) {
		return nil, errDeadOnArrival // the server's goodbye (retry.go)
	}
	ev, err := s.track.packet(head0, len(head0))
	if err != nil {
		return nil, upErr(err)
	}
	done := ev.done && s.track.idle()
	if swallow {
		if done {
			return head0, nil
		}
		return head0, t.skipAnswer()
	}
	if ev.hasStatus {
		s.noteStatus(ev.status, ev.done) // audit.go
		t.status = ev.status
	}
	first(head0)
	s.nextSeq.Store(uint32(seq + 1))
	if done {
		s.nextSeq.Store(1)
	}
	putHeader(t.hdr[:], len(head0), seq)
	_, _ = s.cbw.Write(t.hdr[:])
	if _, err := s.cbw.Write(head0); err != nil {
		s.torn = true
		return nil, err
	}
	s.bytesOut.Add(int64(4 + len(head0)))
	if done {
		if err := s.flushClient(); err != nil || !closesConnection(head0) {
			return head0, err
		}
		return head0, errHangup
	}
	st, ok, err := s.relayAnswer(up, false)
	t.took(kind, st, ok)
	return head0, err
}

// took records the status flags an answer ended with, if it had any.
func (t *txnSession) took(kind respKind, st uint16, ok bool) {
	if ok {
		t.status = st
		t.noteCursor(kind, st)
	}
}

// skipAnswer reads the rest of an answer to dbproxy's own command.
func (t *txnSession) skipAnswer() error {
	up := t.up
	for cont := false; ; {
		n, _, head, err := peekPacket(up.br)
		if err != nil {
			return upErr(err)
		}
		var ev event
		if !cont {
			if ev, err = t.s.track.packet(head, n); err != nil {
				return upErr(err)
			}
		}
		if _, err := up.br.Discard(4 + n); err != nil {
			return upErr(err)
		}
		cont = n == maxPayload
		if ev.done && t.s.track.idle() && !cont {
			return nil
		}
	}
}

// noteCursor follows cursors, which pin the connection until their last
// row is fetched.
func (t *txnSession) noteCursor(kind respKind, st uint16) {
	switch {
	case kind == respExecute && st&gomysql.SERVER_STATUS_CURSOR_EXISTS != 0:
		t.cursor = true
	case kind == respFetch && st&gomysql.SERVER_STATUS_LAST_ROW_SEND != 0:
		t.cursor = false
	}
}

// refuse answers a command that needs session-level state with an error
// that names transaction pooling; the session goes on.
func (t *txnSession) refuse(feature string) error {
	e := &Error{Code: erNotSupportedYet, State: "42000",
		Message: fmt.Sprintf("%s is not supported in transaction pooling mode: it needs the same server connection across transactions; use a dbproxy backend with pool mode session", feature)}
	t.s.srv.metrics.errors.WithLabelValues(e.class()).Inc()
	t.s.log.Info("transaction pooling: refused a session-level feature", zap.String("feature", feature))
	return t.s.reply(e.packet(1))
}
