package postgres

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Transaction pooling: a client holds an upstream connection only from the
// first message of a transaction to the ReadyForQuery 'I' that ends it.
//
// Every message forwarded upstream that the server answers is queued as a
// request; server messages complete them in order. That tells exactly when
// the connection is quiescent (queue empty, status idle), and lets the
// proxy rename prepared statements, prepare them on whichever connection a
// transaction lands on (swallowing the ParseComplete the client did not
// ask for) and answer a Parse the connection already has (a fake
// ParseComplete emitted in the right place).

// reqAction says what happens to a request's completing server message.
type reqAction uint8

const (
	actPass    reqAction = iota // relay to the client
	actSwallow                  // the proxy asked: drop the answer
	actFake                     // not sent: emit answer when it is its turn
)

type request struct {
	typ    byte // frontend message type: P B D E C S Q F
	action reqAction
	fake   []byte // for actFake: backend message(s) to emit
	pname  string // for swallowed Parse: statement to forget if it fails
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

// txnSession is the transaction-pooling state of one client session.
type txnSession struct {
	s    *session
	pool *pool.Pool
	key  string
	wmu  sync.Mutex // client writes: the relay and fake answers

	mu       sync.Mutex
	lastRead atomic.Int64 // unix nanos of the client's last message
	// writing is true while the client reader writes to up outside mu:
	// the connection must not go back to the pool under its feet.
	writing   bool
	quiet     *sync.Cond // on mu; broadcast when writing ends or lease goes
	lease     *pool.Lease
	up        *upstream
	queue     []request
	stmts     map[string]stmt
	stmtBytes int      // sum of len(parse) over stmts
	broken    error    // set when the upstream failed mid-transaction
	emitNow   [][]byte // fake answers forward writes once t.mu is released
}

// runTxn relays in transaction-pooling mode until the session ends.
func (s *session) runTxn() string {
	t := &txnSession{s: s, pool: s.pool, key: s.poolKey, stmts: map[string]stmt{}}
	t.quiet = sync.NewCond(&t.mu)
	defer t.detach(false)
	killed := make(chan string, 1)
	stop := make(chan struct{})
	defer close(stop)
	go t.watch(killed, stop)
	for {
		typ, body, err := t.readClient()
		if err != nil {
			select {
			case r := <-killed:
				return r
			default:
			}
			t.mu.Lock()
			broken := t.broken
			t.mu.Unlock()
			if broken != nil {
				s.sendFatalLocked(&t.wmu, asClientError(s.backend.Name, broken))
				return "server_closed"
			}
			if errors.Is(err, errTerminate) {
				return "ok"
			}
			var pe *Error
			if errors.As(err, &pe) {
				s.sendFatalLocked(&t.wmu, pe)
				return "client_error"
			}
			return "client_gone"
		}
		if err := t.forward(typ, body); err != nil {
			select {
			case r := <-killed:
				return r
			default:
			}
			s.log.Warn("transaction pooling: upstream failed", errField(err))
			s.sendFatalLocked(&t.wmu, asClientError(s.backend.Name, err))
			return "upstream_error"
		}
	}
}

// watch ends the session at a kill, or when the upstream it holds
// reaches its generation's drain deadline. It wakes at that generation's
// expiry, or once a second to see which upstream the session holds now:
// a transaction always starts on the newest generation, whose deadline is
// far off, so a second late to notice a new transaction costs nothing.
func (t *txnSession) watch(killed chan<- string, stop <-chan struct{}) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var expired <-chan struct{} // nil while no upstream is held
	for {
		select {
		case <-stop:
			return
		case r := <-t.s.killCh:
			if r == killTokenExpired { // password.go
				killed <- "token_expired"
				t.abort(t.s.tokenExpiredError())
				return
			}
			killed <- "shutdown"
			msg := "dbproxy is shutting down"
			if r == killIdleShutdown {
				msg = "dbproxy is shutting down; this idle session was closed"
			}
			t.abort(&Error{Severity: "FATAL", Code: codeAdminShutdown, Message: msg, Hint: "reconnect to another dbproxy instance or retry shortly"})
			return
		case <-tick.C:
		case <-expired:
		}
		t.mu.Lock()
		l := t.lease
		waiting := l != nil && len(t.queue) == 0 && !t.writing // on the client
		t.mu.Unlock()
		expired = nil
		if l == nil {
			continue
		}
		if e := t.idleInTransaction(waiting); e != nil {
			killed <- "idle_in_transaction"
			t.abort(e)
			return
		}
		expired = l.Gen.Expired()
		select {
		case <-expired:
		default:
			continue
		}
		killed <- "lease_end"
		t.abort(&Error{Severity: "FATAL", Code: codeAdminShutdown,
			Message: fmt.Sprintf("dbproxy closed this session: its transaction outlived the database credential for backend %s (%s)", t.s.backend.Name, reasonText(l.Gen.Reason())),
			Hint:    "reconnecting is safe: new transactions use a fresh credential"})
		return
	}
}

// idleInTransaction returns the error that ends a session idle inside a
// transaction past pool.idle_transaction_timeout, or nil.
func (t *txnSession) idleInTransaction(waiting bool) *Error {
	limit := t.s.backend.IdleTxnTimeout
	st := byte(t.s.txStatus.Load())
	if limit <= 0 || !waiting || st != 'T' && st != 'E' || time.Since(time.Unix(0, t.lastRead.Load())) < limit {
		return nil
	}
	return &Error{Severity: "FATAL", Code: codeIdleInTxnTimeout,
		Message: fmt.Sprintf("dbproxy closed this session: it stayed idle inside a transaction for more than %s while holding one of backend %s's server connections (pool.idle_transaction_timeout); the transaction was rolled back", limit, t.s.backend.Name),
		Hint:    "commit or roll back promptly, or raise pool.idle_transaction_timeout"}
}

// abort tells the client why and closes both sides.
func (t *txnSession) abort(e *Error) {
	// A relay blocked writing to a client that does not read holds wmu:
	// the deadline frees it.
	_ = t.s.client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	t.detach(false)
	t.s.sendFatalLocked(&t.wmu, e)
	_ = t.s.client.Close()
}

// readClient reads one client message whole, but for COPY data that
// streams: those are forwarded by readClient itself and return typ 0.
func (t *txnSession) readClient() (byte, []byte, error) {
	s := t.s
	hdr, err := s.cbr.Peek(5)
	if err != nil {
		return 0, nil, err
	}
	t.lastRead.Store(time.Now().UnixNano())
	typ := hdr[0]
	if typ == 'X' {
		return 0, nil, errTerminate
	}
	size := int(binary.BigEndian.Uint32(hdr[1:]))
	if size < 4 || size-4 > s.srv.opts.MaxMessageBytes {
		_, _, _, err := copyFrame(s.cbr, bufio.NewWriter(io.Discard), s.srv.opts.MaxMessageBytes)
		return 0, nil, err
	}
	if typ == 'd' || typ == 'c' || typ == 'f' {
		// COPY from the client belongs to a request already queued.
		up := t.beginWrite()
		if up == nil {
			// The server ended the COPY with an error and the transaction
			// is over; PostgreSQL drops the rest of the data too.
			_, _, n, err := copyFrame(s.cbr, bufio.NewWriter(io.Discard), s.srv.opts.MaxMessageBytes)
			s.bytesIn.Add(int64(n))
			return 0, nil, err
		}
		_, _, n, err := copyFrame(s.cbr, up.bw, s.srv.opts.MaxMessageBytes)
		s.bytesIn.Add(int64(n))
		if err == nil && s.cbr.Buffered() == 0 {
			err = up.bw.Flush()
		}
		t.endWrite()
		return 0, nil, err
	}
	body := make([]byte, size-4)
	if _, err := s.cbr.Discard(5); err != nil {
		return 0, nil, err
	}
	if _, err := io.ReadFull(s.cbr, body); err != nil {
		return 0, nil, err
	}
	s.bytesIn.Add(int64(size + 1))
	return typ, body, nil
}

// forward sends one client message upstream, checking a connection out
// first if the session holds none.
func (t *txnSession) forward(typ byte, body []byte) error {
	if typ == 0 {
		return nil // streamed COPY data
	}
	t.mu.Lock()
	if t.lease == nil && typ == 'Q' {
		// DEALLOCATE of one of the client's statements between
		// transactions needs no server connection.
		if name, ok := deallocateTarget(firstCString(body)); ok {
			if _, mine := t.stmts[name]; mine {
				t.forget(name)
				t.mu.Unlock()
				t.wmu.Lock()
				defer t.wmu.Unlock()
				if _, err := t.s.cbw.Write(t.s.patchStatus(deallocateAnswer)); err != nil {
					return err
				}
				return t.s.cbw.Flush()
			}
		}
	}
	for t.lease == nil {
		if t.broken != nil {
			err := t.broken
			t.mu.Unlock()
			return err
		}
		t.mu.Unlock()
		if err := t.attach(); err != nil {
			return err
		}
		t.mu.Lock()
	}
	up := t.up
	err := t.rewrite(typ, body)
	emit := t.emitNow
	t.emitNow = nil
	// Flushing may wait for the server to read, which may wait for the
	// relay to read its answers, which needs mu: flush without it, and
	// keep the connection from the pool with writing instead.
	t.writing = true
	t.mu.Unlock()
	defer t.endWrite()
	if err != nil {
		return err
	}
	if len(emit) > 0 {
		// Answers to requests never sent, due now: every earlier answer
		// was written (the relay writes under wmu what it popped).
		t.wmu.Lock()
		for _, f := range emit {
			_, err = t.s.cbw.Write(t.s.patchStatus(f))
		}
		if err == nil {
			err = t.s.cbw.Flush()
		}
		t.wmu.Unlock()
		if err != nil {
			return err
		}
	}
	if t.s.cbr.Buffered() == 0 {
		return up.bw.Flush()
	}
	return nil
}

// beginWrite returns the upstream held, marked as being written to, or nil.
func (t *txnSession) beginWrite() *upstream {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.up != nil {
		t.writing = true
	}
	return t.up
}

// endWrite ends what beginWrite or forward started.
func (t *txnSession) endWrite() {
	t.mu.Lock()
	t.writing = false
	t.quiet.Broadcast()
	t.mu.Unlock()
}

// attach checks out an upstream connection for a new transaction.
func (t *txnSession) attach() error {
	// Checkout bounds the wait with the pool's checkout_timeout.
	lease, err := t.pool.Checkout(context.Background(), t.key, t.s.dialer)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.lease, t.up = lease, lease.Conn.(*upstream)
	t.mu.Unlock()
	t.s.mu.Lock()
	t.s.lease = lease
	t.s.mu.Unlock()
	go t.serverToClient(lease)
	return nil
}

// detach gives the upstream back: to the pool when the transaction ended
// cleanly (quiescent), closed otherwise.
func (t *txnSession) detach(clean bool) {
	t.mu.Lock()
	t.release(t.takeLocked(), clean)
}

// takeLocked removes the session's lease; t.mu is held.
func (t *txnSession) takeLocked() *pool.Lease {
	lease := t.lease
	t.lease, t.up = nil, nil
	t.queue = t.queue[:0]
	t.quiet.Broadcast()
	return lease
}

// release unlocks t.mu, then returns or closes lease.
func (t *txnSession) release(lease *pool.Lease, clean bool) {
	t.mu.Unlock()
	if lease == nil {
		return
	}
	t.s.mu.Lock()
	if t.s.lease == lease {
		t.s.lease = nil
	}
	t.s.mu.Unlock()
	if clean {
		lease.Put()
		return
	}
	// Mid-transaction: close it so nothing half done reaches another
	// client; the server rolls the transaction back.
	lease.Close()
}

// serverToClient relays the server's answers for one transaction and
// detaches when it ends.
func (t *txnSession) serverToClient(lease *pool.Lease) {
	s := t.s
	up := lease.Conn.(*upstream)
	for {
		hdr, err := up.br.Peek(5)
		if err != nil {
			t.fail(lease, err)
			return
		}
		typ := hdr[0]
		// Lock order wmu then mu: what complete pops is written before any
		// fake answer forward emits after seeing the queue empty.
		t.wmu.Lock()
		t.mu.Lock()
		drop, fakes := t.complete(typ)
		t.mu.Unlock()
		var n int
		var body []byte
		if drop {
			_, body, err = readFrame(up.br, 1<<30)
		} else {
			typ, body, n, err = copyFrame(up.br, s.cbw, 1<<30)
		}
		if err == nil && typ == 'Z' && len(body) == 1 {
			s.txStatus.Store(uint32(body[0]))
		}
		if err == nil {
			for _, f := range fakes {
				_, err = s.cbw.Write(s.patchStatus(f))
			}
		}
		if err == nil && up.br.Buffered() == 0 {
			err = s.cbw.Flush()
		}
		t.wmu.Unlock()
		if err != nil {
			t.fail(lease, err)
			return
		}
		s.bytesOut.Add(int64(n))
		if typ != 'Z' || len(body) != 1 {
			continue
		}
		t.mu.Lock()
		for t.writing && len(t.queue) == 0 && t.lease == lease {
			// The client reader is mid-write (e.g. a flush after a fake
			// answer): let it finish before the connection can go.
			t.quiet.Wait()
		}
		if body[0] == 'I' && len(t.queue) == 0 && t.lease == lease {
			// Checked and taken under one lock: forward cannot queue on
			// this connection in between.
			t.release(t.takeLocked(), true)
			return
		}
		t.mu.Unlock()
	}
}

// complete applies server message typ to the request queue and says
// whether to drop it and which fake answers follow it. t.mu is held.
func (t *txnSession) complete(typ byte) (drop bool, fakes [][]byte) {
	if len(t.queue) == 0 {
		return false, nil
	}
	head := t.queue[0]
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
		t.queue = t.queue[i:]
		return false, nil
	case head.completes(typ):
		t.queue = t.queue[1:]
		drop = head.action == actSwallow
		for len(t.queue) > 0 && t.queue[0].action == actFake {
			fakes = append(fakes, t.queue[0].fake)
			t.queue = t.queue[1:]
		}
	}
	return drop, fakes
}

// fail ends a transaction whose upstream broke: the client is told and
// the session ends (its transaction's fate is unknown to it otherwise).
func (t *txnSession) fail(lease *pool.Lease, err error) {
	t.mu.Lock()
	if t.lease != lease {
		t.mu.Unlock()
		return
	}
	t.broken = fmt.Errorf("upstream connection lost: %w", err)
	t.release(t.takeLocked(), false)
	// Unblock the client reader so the session ends promptly.
	_ = t.s.client.SetReadDeadline(time.Unix(1, 0))
}
