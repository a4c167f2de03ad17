package postgres

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Every message forwarded upstream that the server answers is queued as a
// request; server messages complete them in order. That tells exactly when
// the session is quiescent (queue empty), in both pool modes, and in
// transaction mode lets the proxy rename prepared statements, prepare them
// on whichever connection a transaction lands on (swallowing the
// ParseComplete the client did not ask for) and answer a Parse the
// connection already has (a fake ParseComplete emitted in its turn).

// reqAction says what happens to a request's completing server message.
type reqAction uint8

const (
	actPass       reqAction = iota // relay to the client
	actSwallow                     // the proxy asked: drop the answer
	actFake                        // not sent: emit answer when it is its turn
	actSwallowAll                  // the proxy's own query: drop its whole answer
)

type request struct {
	typ    byte // frontend message type: P B D E C S Q F
	action reqAction
	fake   []byte // for actFake: backend message(s) to emit
	pname  string // for a Parse or SQL PREPARE: statement to forget if it fails
	client string // for an SQL PREPARE: the client's name of it
	set    *setChange
}

// completes reports whether server message typ completes request r.
func (r request) completes(typ byte) bool {
	switch r.typ {
	case 'P':
		return typ == '1'
	case 'B':
		return typ == '2'
	case 'C':
		return typ == '3'
	case 'D':
		return typ == 'T' || typ == 'n'
	case 'E':
		return typ == 'C' || typ == 'I' || typ == 's'
	default: // S, Q, F
		return typ == 'Z'
	}
}

// txnSession is the relay state of one client session: the server
// connection it holds, the requests in flight and, in transaction mode,
// the client's prepared statements. Only the session goroutine uses it,
// except in duplex mode, where the answer goroutine shares queue, up's
// prepared set and the client writer under mu.
type txnSession struct {
	s *session

	mu        sync.Mutex
	lease     *pool.Lease
	up        *upstream
	queue     []request
	stmts     map[string]stmt
	stmtBytes int               // sum of len(parse) over stmts
	sets      []setStmt         // the client's session SETs (txnstate.go)
	sstmts    map[string][]byte // session mode: named statements' Parse bodies, for a move
	pin       string            // session mode: why the session cannot move (under s.mu)
	setTag    uint64            // stateTag(sets)
	stage     []byte            // rewritten messages not yet written upstream
	duplex    *duplex           // non-nil while two goroutines relay
	listening bool              // session mode after LISTEN: answers come unasked
	channels  []string          // session mode: channels LISTENed to, for a move (listen.go)
	copyIn    bool              // between CopyInResponse and the client's CopyDone/Fail
	retry     retryState
	torn      bool // a server message reached the client in part
	aborted   bool // the client's transaction was lost with its connection (lost.go)
	endsTxn   bool // the request at hand ends the transaction (COMMIT, ROLLBACK)
}

func newTxnSession(s *session) *txnSession {
	return &txnSession{s: s, stmts: map[string]stmt{}, sstmts: map[string][]byte{}}
}

// outstanding reports requests sent and not yet answered.
func (t *txnSession) outstanding() bool { return len(t.queue) > 0 }

// forwardFrame reads one client message and forwards it, checking out a
// server connection first if the session holds none.
func (t *txnSession) forwardFrame() (byte, error) {
	s := t.s
	hdr, err := s.cbr.Peek(5)
	if err != nil {
		return 0, err
	}
	typ := hdr[0]
	if typ == 'X' {
		return typ, errTerminate
	}
	size, err := frameSize(hdr, s.srv.opts.MaxMessageBytes)
	if err != nil {
		return typ, err
	}
	if !frontendType(typ) {
		_, _ = s.cbr.Discard(min(5+size, s.cbr.Buffered()))
		return typ, fatal(codeProtocolViolation, fmt.Sprintf("invalid frontend message type %q", typ))
	}
	if t.up == nil {
		if typ == 'd' || typ == 'c' || typ == 'f' {
			// COPY data after the server ended the COPY with an error:
			// PostgreSQL drops it too.
			_, err := skipFrame(s.cbr, s.srv.opts.MaxMessageBytes)
			return typ, err
		}
		if handled, err := t.answerLocally(typ, size); handled || err != nil {
			return typ, err
		}
		if err := t.attach(); err != nil {
			return typ, err
		}
	}
	s.bytesIn.Add(int64(5 + size))
	if !s.txnMode || typ == 'd' || typ == 'c' || typ == 'f' || typ == 'H' {
		if typ == 'c' || typ == 'f' {
			t.mu.Lock()
			t.copyIn = false
			t.mu.Unlock()
		}
		t.record(typ, nil)
		var ch *setChange
		if !s.txnMode {
			ch = t.trackSession(typ, size)
		}
		t.note(typ, ch)
		_, _, _, err := copyFrame(s.cbr, upWriter{t}, s.srv.opts.MaxMessageBytes)
		return typ, err
	}
	body, consumed, err := t.body(size)
	if err != nil {
		return typ, err
	}
	t.record(typ, body)
	t.mu.Lock()
	err = t.rewrite(typ, body)
	t.mu.Unlock()
	if !consumed {
		_, _ = s.cbr.Discard(5 + size)
	}
	if err != nil {
		return typ, err
	}
	// Written outside mu: the write may wait for the duplex answer
	// goroutine, which needs mu, to drain the server's answers.
	err = t.writeUp(t.stage)
	t.stage = t.stage[:0]
	return typ, err
}

// note queues a session-mode request for the message about to be
// copied as is.
func (t *txnSession) note(typ byte, set *setChange) {
	switch typ {
	case 'P', 'B', 'D', 'C', 'E', 'S', 'Q', 'F':
	default:
		return
	}
	if typ == 'S' && t.copyIn {
		return // ignored by the server during COPY FROM STDIN
	}
	if (typ == 'Q' || typ == 'P') && !t.listening && !t.s.txnMode {
		t.listening = isListen(t.s.cbr, typ)
	}
	t.mu.Lock()
	t.queue = append(t.queue, request{typ: typ, set: set})
	t.mu.Unlock()
}

// isListen reports a LISTEN in the Query or Parse message at the head
// of r (a statement name before a Parse's query is skipped).
func isListen(r *bufio.Reader, typ byte) bool {
	f, _ := r.Peek(min(5+128, r.Buffered()))
	if len(f) < 5 {
		return false
	}
	q := f[5:]
	if typ == 'P' {
		_, rest, ok := cstring(q)
		if !ok {
			return false
		}
		q = rest
	}
	return startsWithFold(q, "listen")
}

// body returns the whole body of the next client message and whether
// it was consumed: it aliases the read buffer when it fits (valid until
// the caller's Discard), else it is read into a copy (rare: huge
// queries; statements are renamed and remembered, so held whole).
func (t *txnSession) body(size int) ([]byte, bool, error) {
	r := t.s.cbr
	if 5+size <= r.Size() {
		f, err := r.Peek(5 + size)
		if err != nil {
			return nil, false, err
		}
		return f[5:], false, nil
	}
	b := make([]byte, size)
	if _, err := r.Discard(5); err != nil {
		return nil, true, err
	}
	_, err := io.ReadFull(r, b)
	return b, true, err
}

// frontendType reports the message types a client may send after startup.
func frontendType(typ byte) bool {
	switch typ {
	case 'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'H', 'F', 'd', 'c', 'f':
		return true
	}
	return false
}

// relayOne relays one server message to the client and applies it to the
// request queue. It reports a CopyInResponse: the client sends data next.
func (t *txnSession) relayOne() (copyIn bool, err error) {
	s := t.s
	up := t.up
	hdr, err := up.br.Peek(5)
	if err != nil {
		return false, upstreamLost(err)
	}
	typ := hdr[0]
	if size := int(binary.BigEndian.Uint32(hdr[1:])) + 1; size <= up.br.Size() {
		// Wait for the whole message before taking mu: the client side
		// must not wait on a slow server to queue its next request.
		if _, err := up.br.Peek(size); err != nil {
			return false, upstreamLost(err)
		}
	}
	// mu also guards the client writer: fake answers are written by the
	// client side, in their turn.
	t.mu.Lock()
	defer t.mu.Unlock()
	if typ == 'E' && s.txnMode {
		// The server's goodbye: as the first answer to a fresh
		// connection's request, it died idle (retry.go); later, the
		// session survives it (lost.go).
		size := int(binary.BigEndian.Uint32(hdr[1:])) + 1
		if b, err := up.br.Peek(min(size, up.br.Buffered())); err == nil && len(b) == size {
			if f := fatalFrom(b[5:]); f != nil && t.freshAnswer() {
				return false, errDeadOnArrival
			} else if f != nil {
				return false, upstreamLost(f)
			}
		}
	}
	if err := t.emitHead(); err != nil {
		return false, err
	}
	drop, fakes := t.complete(typ)
	var body []byte
	n := 0
	if drop {
		_, err = skipFrame(up.br, maxServerFrame)
	} else {
		typ, body, n, err = copyFrame(up.br, s.cbw, maxServerFrame)
	}
	if err != nil {
		t.torn = t.torn || n > 0
		return false, upstreamLost(err)
	}
	s.bytesOut.Add(int64(n))
	if typ == 'Z' && len(body) == 1 {
		s.readyForQuery(body[0]) // audit.go
		s.stats.QueryDone(body[0] != 'I')
		t.copyIn = false
	}
	if err := t.emit(fakes); err != nil {
		return false, err
	}
	switch {
	case typ == 'G' || typ == 'W':
		t.copyIn = true
		return true, s.cbw.Flush()
	case typ == 'E' && t.copyIn:
		t.copyIn = false // the COPY failed; the server drops the rest
	}
	if up.br.Buffered() == 0 {
		return false, s.cbw.Flush()
	}
	return false, nil
}

// complete applies server message typ to the request queue and says
// whether to drop it and which fake answers follow it.
func (t *txnSession) complete(typ byte) (drop bool, fakes [][]byte) {
	if len(t.queue) == 0 {
		return false, nil
	}
	head := t.queue[0]
	if head.action == actSwallowAll {
		if typ == 'E' && head.pname != "" {
			delete(t.up.prepared, head.pname) // the EXECUTE after it says why
		} else if typ == 'E' {
			t.up.tag = dirtyTag // the state did not apply: reset next time
		}
		if typ == 'Z' {
			t.pop(1)
			fakes = t.popFakes()
		}
		return true, fakes
	}
	if typ == 'E' && head.typ == 'Q' && head.client != "" {
		t.failedSQLPrepare(head)
	}
	if head.set != nil {
		if typ == 'E' {
			head.set.failed = true
		} else if typ == 'Z' {
			t.commitSet(head.set)
		}
	}
	switch {
	case typ == 'E' && head.typ != 'Q' && head.typ != 'F' && head.typ != 'S':
		// An error in the extended protocol: the server skips everything
		// up to the next Sync, so those requests get no answer.
		if head.typ == 'P' && head.pname != "" {
			delete(t.up.prepared, head.pname)
		}
		i := 0
		for i < len(t.queue) && t.queue[i].typ != 'S' {
			i++
		}
		t.pop(i)
		return false, nil
	case head.completes(typ):
		t.pop(1)
		drop = head.action == actSwallow
		fakes = t.popFakes()
	}
	return drop, fakes
}

// popFakes takes the fake answers now at the head of the queue: they are
// due right after the message that completed the request before them.
func (t *txnSession) popFakes() (fakes [][]byte) {
	for len(t.queue) > 0 && t.queue[0].action == actFake {
		fakes = append(fakes, t.queue[0].fake)
		t.pop(1)
	}
	return fakes
}

// pop removes n requests from the head of the queue, reusing its array.
func (t *txnSession) pop(n int) {
	k := copy(t.queue, t.queue[n:])
	clear(t.queue[k:])
	t.queue = t.queue[:k]
}

// flushUp writes the request upstream.
func (t *txnSession) flushUp() error {
	if t.up == nil {
		return t.flushClient() // answered by dbproxy alone
	}
	if err := t.writeUp(nil); err != nil {
		return err
	}
	return nil
}

// emitHead writes the fake answers at the head of the queue: nothing
// before them is outstanding. t.mu is held.
func (t *txnSession) emitHead() error {
	for len(t.queue) > 0 && t.queue[0].action == actFake {
		t.retry.ok = false // the client has part of this request's answer
		if _, err := t.s.cbw.Write(t.s.patchStatus(t.queue[0].fake)); err != nil {
			return err
		}
		t.pop(1)
	}
	return nil
}

// emitIfOnlyFakes writes the queue's fake answers if nothing else is
// outstanding, and reports whether it did.
func (t *txnSession) emitIfOnlyFakes() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.onlyFakes() {
		return false, nil
	}
	return true, t.emitHead()
}

// onlyFakes reports that nothing the server owes is outstanding. t.mu
// is held.
func (t *txnSession) onlyFakes() bool {
	for _, r := range t.queue {
		if r.action != actFake {
			return false
		}
	}
	return true
}

// emit writes fake answers that are due now. t.mu is held.
func (t *txnSession) emit(frames [][]byte) error {
	for _, f := range frames {
		if _, err := t.s.cbw.Write(t.s.patchStatus(f)); err != nil {
			return err
		}
	}
	return nil
}

func (t *txnSession) flushClient() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.s.cbw.Flush()
}

// writeUp writes p upstream (nil: flushes). While earlier answers are
// outstanding the server may be blocked writing them to us and so not
// reading: a write that stalls then switches the session to duplex.
func (t *txnSession) writeUp(p []byte) error {
	up := t.up
	armed := false
	for {
		// Only a write that reaches the socket can block.
		hits := p == nil || up.bw.Buffered()+len(p) > cap(up.bw.buf)
		if hits && !armed && t.duplex == nil {
			if t.mayStall(p != nil) {
				_ = up.conn.SetWriteDeadline(time.Now().Add(pipelineStall))
				armed = true
			}
		}
		var err error
		if p == nil {
			err = up.bw.Flush()
		} else {
			var n int
			n, err = up.bw.Write(p)
			p = p[n:]
		}
		if err == nil && len(p) == 0 {
			if armed {
				_ = up.conn.SetWriteDeadline(time.Time{})
			}
			return nil
		}
		if err == nil {
			continue
		}
		if !armed || !isTimeout(err) || t.s.interrupted() {
			return upstreamLost(err)
		}
		// The server is not reading: it waits for us to read its answers.
		_ = up.conn.SetWriteDeadline(time.Time{})
		armed = false
		t.startDuplex()
	}
}

// mayStall reports whether the server may be busy writing answers while
// this write waits for it to read: PostgreSQL flushes its answers at the
// end of each request (Sync, Query, FunctionCall), so that is when a
// complete request precedes the data being written, or during COPY FROM
// STDIN (notices, an early error).
func (t *txnSession) mayStall(more bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.copyIn {
		return true
	}
	ends := 0
	for _, r := range t.queue {
		if r.typ == 'S' || r.typ == 'Q' || r.typ == 'F' {
			ends++
		}
	}
	return ends >= 2 || ends == 1 && more
}

// upWriter is the upstream as an io.Writer for copyFrame.
type upWriter struct{ t *txnSession }

func (w upWriter) Write(p []byte) (int, error) {
	if err := w.t.writeUp(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// attach checks out a server connection for a new transaction.
func (t *txnSession) attach() error {
	s := t.s
	start := mono()
	lease, err := s.pool.CheckoutFor(s.ctx, s.poolKey, s.dialer, s)
	if err != nil {
		return &checkoutError{err}
	}
	s.stats.Waited(start)
	t.hold(lease)
	return nil
}

// hold makes lease the session's connection for the request at hand.
func (t *txnSession) hold(lease *pool.Lease) {
	t.mu.Lock()
	t.lease, t.up = lease, lease.Conn.(*upstream)
	if t.s.txnMode {
		t.applyState()
		t.stageAborted()
	}
	t.mu.Unlock()
	s := t.s
	s.mu.Lock()
	s.lease = lease
	s.mu.Unlock()
	s.serverPID.Store(t.up.pid) // audit.go
	t.armRetry()
}

// maybeRelease gives the connection back at a transaction boundary:
// nothing outstanding and the server idle outside a transaction.
func (t *txnSession) maybeRelease() {
	if t.duplex != nil || t.lease == nil || t.outstanding() || byte(t.s.txStatus.Load()) != 'I' || t.up.bw.Buffered() > 0 {
		return
	}
	t.release(true)
}

// release gives the connection back (clean) or closes it: a connection
// mid-transaction never reaches another client; the server rolls back.
func (t *txnSession) release(clean bool) {
	t.mu.Lock()
	lease := t.lease
	t.lease, t.up = nil, nil
	t.queue = t.queue[:0]
	t.mu.Unlock()
	if lease == nil {
		return
	}
	s := t.s
	s.mu.Lock()
	s.lease = nil
	s.mu.Unlock()
	if clean {
		lease.Put()
		return
	}
	lease.Close()
}

// returnSession gives a session-mode connection back after the client
// left cleanly, reset for the next client.
func (t *txnSession) returnSession() {
	t.mu.Lock()
	lease := t.lease
	t.lease, t.up = nil, nil
	t.mu.Unlock()
	s := t.s
	s.mu.Lock()
	s.lease = nil
	s.mu.Unlock()
	if lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lease.Return(ctx)
}
