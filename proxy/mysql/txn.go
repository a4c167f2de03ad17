package mysql

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Transaction pooling: a client holds an upstream connection only while
// the server's status flags say the connection carries something of its
// own: a transaction (SERVER_STATUS_IN_TRANS, or autocommit off), more
// results, an open cursor, long data sent for a statement not yet
// executed. Otherwise the connection goes back to the pool after each
// answer, with lease.Put (no reset), and the next command checks one out.
//
// Unlike PostgreSQL's extended protocol, MySQL's is strictly command and
// answer: a client sends one command and waits for the whole answer (only
// COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA have none). So one goroutine
// per session reads a command, writes it upstream, relays the whole
// answer and only then, with nothing in flight by construction, decides
// whether the connection goes back. Nothing else ever writes to the
// upstream, so there is no writing flag as in proxy/postgres: the watch
// goroutine only interrupts (closes the upstream socket and the client's
// read) and never returns a lease itself.

// txnSession is the transaction-pooling state of one client session.
type txnSession struct {
	s      *session
	ctx    context.Context // cancelled when the session is killed
	cancel context.CancelFunc
	wake   chan struct{} // tells watch a lease was taken

	mu      sync.Mutex
	lease   *pool.Lease // held, or nil
	up      *upstream
	killErr *Error // why watch ended the session; nil while alive
	killed  string // its result label

	// Owned by the session goroutine.
	stmts    map[uint32]*clientStmt // by the id dbproxy gave the client
	nextStmt uint32
	status   uint16 // server status flags on the held upstream
	cursor   bool   // a cursor is open: COM_STMT_FETCH needs this connection
	longData bool   // COM_STMT_SEND_LONG_DATA waits for its execute
	pinOnce  bool   // keep the connection for the next command (SET TRANSACTION)
	dirty    bool   // session state changed: reset before another client
	poisoned bool   // state a reset does not undo: close instead
}

// upstreamError is a failure of the held upstream connection, as opposed
// to the client's.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

func upErr(err error) error {
	if err == nil {
		return nil
	}
	return &upstreamError{err: err}
}

// runTxn relays in transaction-pooling mode until the session ends and
// reports how it ended.
func (s *session) runTxn() string {
	ctx, cancel := context.WithCancel(context.Background())
	t := &txnSession{s: s, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), stmts: map[uint32]*clientStmt{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { t.watch(stop) })
	result := t.loop()
	// Still held here means the session ended inside a transaction (or
	// on an error): close it, never hand it to another client.
	t.release(false)
	close(stop)
	wg.Wait()
	cancel()
	return result
}

func (t *txnSession) loop() string {
	for {
		p, err := t.readCommand()
		if err == nil {
			err = t.command(p)
		}
		if err != nil {
			return t.end(err)
		}
	}
}

// end tells the client why the session ends, if it should hear it.
func (t *txnSession) end(err error) string {
	s := t.s
	t.mu.Lock()
	ke, killed := t.killErr, t.killed
	t.mu.Unlock()
	if ke != nil {
		s.sendError(ke)
		return killed
	}
	if errors.Is(err, errQuit) {
		return "ok"
	}
	var ue *upstreamError
	if errors.As(err, &ue) {
		var pe *Error
		if errors.As(ue.err, &pe) {
			// The server broke the protocol (or asked for a local file).
			s.log.Warn("upstream protocol error", zap.Error(err))
			s.sendError(pe)
			return "server_error"
		}
		if !s.track.idle() {
			s.sendError(&Error{Code: erUnknownError, State: "08S01",
				Message: fmt.Sprintf("Lost connection to backend %s during a command (%v): the database closed the connection; see its log", s.backend.Name, ue.err)})
		}
		return "server_closed"
	}
	var pe *Error
	if errors.As(err, &pe) {
		s.log.Info("client protocol error", zap.Error(err))
		s.sendError(pe)
		return "client_error"
	}
	return "client_gone"
}

// watch ends the session at a kill, or when the transaction it holds
// reaches its generation's drain deadline. A session that holds nothing
// has nothing to lose at a deadline: its next command simply checks out
// a connection of the newest generation.
func (t *txnSession) watch(stop <-chan struct{}) {
	var held *pool.Lease
	var expired <-chan struct{} // nil while no upstream is held
	for {
		select {
		case <-stop:
			return
		case r := <-t.s.killCh:
			if r == killTokenExpired { // password.go
				t.interrupt(t.s.tokenExpiredError(), "token_expired")
				return
			}
			t.interrupt(killError(r), killResult(r))
			return
		case <-t.wake:
		case <-expired:
			t.mu.Lock()
			still := t.lease == held
			t.mu.Unlock()
			if still {
				t.interrupt(&Error{Code: erConnectionKilled, State: "70100",
					Message: fmt.Sprintf("Connection was killed: dbproxy closed this session because its transaction outlived the database credential for backend %s (%s); reconnecting is safe: new transactions use a fresh credential", t.s.backend.Name, reasonText(held.Gen.Reason()))}, "lease_end")
				return
			}
		}
		t.mu.Lock()
		held = t.lease
		t.mu.Unlock()
		expired = nil
		if held != nil {
			expired = held.Gen.Expired()
		}
	}
}

func killError(r killReason) *Error {
	switch r {
	case killByClient:
		return &Error{Code: erConnectionKilled, State: "70100", Message: "Connection was killed (KILL CONNECTION through dbproxy)"}
	case killIdleShutdown:
		return &Error{Code: erServerShutdown, State: "08S01", Message: "Server shutdown in progress: dbproxy is shutting down; this idle session was closed, reconnect to another dbproxy instance or retry shortly"}
	}
	return &Error{Code: erServerShutdown, State: "08S01", Message: "Server shutdown in progress: dbproxy is shutting down; reconnect to another dbproxy instance or retry shortly"}
}

func killResult(r killReason) string {
	if r == killByClient {
		return "killed"
	}
	return "shutdown"
}

// interrupt records why the session ends and unblocks the session
// goroutine wherever it waits: on the client, on the upstream or in a
// checkout. The session goroutine tells the client and closes the lease.
func (t *txnSession) interrupt(e *Error, result string) {
	t.mu.Lock()
	t.killErr, t.killed = e, result
	if t.up != nil {
		_ = t.up.conn.Close()
	}
	t.mu.Unlock()
	t.cancel()
	_ = t.s.client.SetReadDeadline(time.Unix(1, 0))
	// A session goroutine blocked writing to a client that does not read
	// is freed too; sendError sets a fresh write deadline.
	_ = t.s.client.SetWriteDeadline(time.Unix(1, 0))
}

// readCommand reads one logical command packet (all its 16 MiB parts).
func (t *txnSession) readCommand() ([]byte, error) {
	s := t.s
	maxLen := s.srv.opts.MaxMessageBytes
	var p []byte
	for seq := byte(0); ; seq++ {
		var hdr [4]byte
		if _, err := io.ReadFull(s.cbr, hdr[:]); err != nil {
			return nil, err
		}
		if hdr[3] != seq {
			return nil, outOfOrder(seq, hdr[3])
		}
		n := payloadLen(hdr[:])
		if len(p)+n > maxLen {
			return nil, &Error{Code: erNetPacketTooLarge, State: "08S01",
				Message: fmt.Sprintf("Got a packet bigger than dbproxy's limit of %d bytes; send smaller statements or values (e.g. several INSERTs, LOAD DATA in parts)", maxLen)}
		}
		p = append(p, make([]byte, n)...)
		if _, err := io.ReadFull(s.cbr, p[len(p)-n:]); err != nil {
			return nil, err
		}
		s.bytesIn.Add(int64(4 + n))
		if n < maxPayload {
			break
		}
	}
	if len(p) == 0 {
		return nil, &Error{Code: erMalformedPacket, State: "HY000", Message: "malformed packet: an empty command packet"}
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
	kind, ok := commandResponse(cmd)
	if !ok {
		return &Error{Code: erNotSupportedYet, State: "42000",
			Message: fmt.Sprintf("%s is not supported through dbproxy: dbproxy logs in with the Vault credential of your identity's grant; reconnect instead", commandName(cmd))}
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
				return t.refuse(f)
			}
			mark = sessionChange(p[1:])
		}
	case gomysql.COM_STMT_PREPARE:
		if f := sessionLock(p[1:]); f != "" {
			return t.refuse(f)
		}
		return t.prepare(p)
	case gomysql.COM_STMT_EXECUTE, gomysql.COM_STMT_FETCH, gomysql.COM_STMT_SEND_LONG_DATA,
		gomysql.COM_STMT_RESET, gomysql.COM_STMT_CLOSE:
		return t.stmtCommand(p, kind)
	case gomysql.COM_INIT_DB:
		mark = markDirty
	case gomysql.COM_SET_OPTION:
		// Multi-statement switch: COM_RESET_CONNECTION is not documented
		// to restore it.
		mark = markPoison
	case gomysql.COM_RESET_CONNECTION:
		// The client's own statements are gone with its session state.
		clear(t.stmts)
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

// attach checks out an upstream connection of the newest generation.
func (t *txnSession) attach() error {
	s := t.s
	// Checkout bounds the wait with the pool's checkout_timeout.
	lease, err := s.pool.Checkout(t.ctx, s.poolKey, s.dialer)
	if err != nil {
		return fmt.Errorf("checkout for backend %s: %w", s.backend.Name, err)
	}
	up := lease.Conn.(*upstream)
	t.mu.Lock()
	if t.killErr != nil {
		t.mu.Unlock()
		lease.Put()
		return errors.New("session killed during checkout")
	}
	t.lease, t.up = lease, up
	t.mu.Unlock()
	s.mu.Lock()
	s.lease = lease
	s.mu.Unlock()
	t.status = up.status
	select {
	case t.wake <- struct{}{}:
	default:
	}
	return nil
}

// apply records what a command does to the connection it runs on.
func (t *txnSession) apply(mark int) {
	t.dirty = t.dirty || mark&(markDirty|markNoStmts) != 0
	t.poisoned = t.poisoned || mark&markPoison != 0
	t.pinOnce = t.pinOnce || mark&markPinOnce != 0
	if mark&markNoStmts != 0 {
		t.up.stmts = nil
		t.cursor, t.longData = false, false
	}
}

// roundTrip sends a command on the held upstream and relays its answer,
// then gives the connection back if the client left nothing on it.
func (t *txnSession) roundTrip(p []byte, kind respKind) error {
	if err := t.writeUp(p); err != nil {
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
// transaction, autocommit on, no more results, and nothing the client
// left on it (cursor, long data, a one-shot SET TRANSACTION).
func (t *txnSession) settle() {
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
	return st&gomysql.SERVER_STATUS_IN_TRANS == 0 && st&gomysql.SERVER_STATUS_AUTOCOMMIT != 0 &&
		st&gomysql.SERVER_MORE_RESULTS_EXISTS == 0 && !t.cursor && !t.longData && t.s.track.idle()
}

// release gives the upstream back: to the pool when clean (after a reset
// if the client changed session state), closed otherwise.
func (t *txnSession) release(clean bool) {
	t.mu.Lock()
	lease := t.lease
	t.lease, t.up = nil, nil
	killed := t.killErr != nil
	t.mu.Unlock()
	if lease == nil {
		return
	}
	s := t.s
	s.mu.Lock()
	if s.lease == lease {
		s.lease = nil
	}
	s.mu.Unlock()
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
		lease.Put()
	}
}

// writeUp sends one logical packet to the held upstream.
func (t *txnSession) writeUp(p []byte) error {
	up := t.up
	for seq := byte(0); ; seq++ {
		n := min(len(p), maxPayload)
		var hdr [4]byte
		putHeader(hdr[:], n, seq)
		if _, err := up.bw.Write(hdr[:]); err != nil {
			return upErr(err)
		}
		if _, err := up.bw.Write(p[:n]); err != nil {
			return upErr(err)
		}
		p = p[n:]
		if n < maxPayload {
			break
		}
	}
	return upErr(up.bw.Flush())
}

// answer reads the server's whole answer to the command just sent. Each
// packet goes to the client unless swallow (an answer to dbproxy's own
// command). The first packet is returned when swallow or first is set;
// first may change it before it goes to the client.
func (t *txnSession) answer(kind respKind, swallow bool, first func([]byte)) ([]byte, error) {
	s := t.s
	up := t.up
	s.track.expect(kind)
	cont := false
	var head0 []byte
	for i := 0; ; i++ {
		n, seq, head, err := peekPacket(up.br)
		if err != nil {
			return nil, upErr(err)
		}
		var pkt []byte // the whole packet, when read into memory
		if i == 0 && (swallow || first != nil) {
			if _, head0, err = readPacket(up.br, maxPayload); err != nil {
				return nil, upErr(err)
			}
			head = head0
			pkt = make([]byte, 4+len(head0))
		}
		var ev event
		if !cont {
			if ev, err = s.track.packet(head, n); err != nil {
				return nil, upErr(err)
			}
		}
		cont = n == maxPayload
		done := ev.done && s.track.idle()
		if swallow {
			if pkt == nil {
				if _, err := up.br.Discard(4 + n); err != nil {
					return nil, upErr(err)
				}
			}
			if done {
				return head0, nil
			}
			continue
		}
		if ev.hasStatus {
			t.status = ev.status
			s.status.Store(uint32(ev.status))
			t.noteCursor(kind, ev.status)
		}
		s.nextSeq.Store(uint32(seq + 1))
		if done {
			// The client's next command starts at 0; an error dbproxy
			// sends in between is the answer to it.
			s.nextSeq.Store(1)
		}
		if err := t.toClient(up, pkt, head0, first, seq, n, done); err != nil {
			return nil, err
		}
		if done {
			return head0, nil
		}
	}
}

// toClient writes one server packet to the client: pkt (with payload
// head0, after first) when it was read into memory, else straight from
// the upstream's buffer.
func (t *txnSession) toClient(up *upstream, pkt, head0 []byte, first func([]byte), seq byte, n int, flush bool) error {
	s := t.s
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var err error
	var m int
	if pkt != nil {
		if first != nil {
			first(head0)
		}
		putHeader(pkt, len(head0), seq)
		copy(pkt[4:], head0)
		m, err = s.cbw.Write(pkt)
	} else {
		m, err = copyPacket(up.br, s.cbw, n)
	}
	s.bytesOut.Add(int64(m))
	if err != nil {
		if m > 0 {
			s.torn.Store(true)
		}
		return err
	}
	if flush || up.br.Buffered() == 0 {
		return s.cbw.Flush()
	}
	return nil
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
