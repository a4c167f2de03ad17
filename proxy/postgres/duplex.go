package postgres

import (
	"errors"
	"time"
)

// duplex is the two-direction relay a session switches to where one
// goroutine could deadlock: a second goroutine relays the server's
// answers while the session goroutine keeps forwarding the client's
// messages. The request queue, the upstream's prepared set and the client
// writer are then shared under txnSession.mu. At the next request
// boundary the session goroutine waits for the answers to be complete and
// the session is synchronous again (LISTEN in session mode stays duplex:
// notifications arrive unasked).
type duplex struct {
	done    chan error
	resume  chan struct{} // another COPY FROM STDIN: read the client again
	stop    bool          // under mu: exit once nothing is outstanding
	abort   bool          // under mu: exit now
	release bool          // under mu: a listening session stops too (to move, listen.go)
}

// errStopped ends an answer goroutine that was asked to stop.
var errStopped = errors.New("duplex relay stopped")

// startDuplex starts the answer goroutine, if not running.
func (t *txnSession) startDuplex() {
	if t.duplex != nil {
		return
	}
	d := &duplex{done: make(chan error, 1), resume: make(chan struct{}, 1)}
	t.mu.Lock()
	t.duplex = d
	t.mu.Unlock()
	t.s.srv.metrics.duplex.Inc()
	up := t.up
	go func() {
		err := t.answers(d, up)
		if err != nil && !errors.Is(err, errStopped) && !t.s.interrupted() {
			// Wake the session goroutine, which may be waiting for the
			// client, to report the failure. (An interrupt that stopped
			// this goroutine is the session's reason, not its failure.)
			t.s.interrupt(whyDuplex)
		}
		d.done <- err
	}()
}

// answers relays server messages until stopped with nothing outstanding.
func (t *txnSession) answers(d *duplex, up *upstream) error {
	for {
		t.mu.Lock()
		quit := d.abort || d.stop && t.onlyFakes() && (!(t.listening && !t.s.txnMode) || d.release)
		var err error
		if quit && !d.abort {
			err = t.emitHead()
		}
		t.mu.Unlock()
		if err != nil {
			return err
		}
		if quit {
			return errStopped
		}
		if _, err := up.br.Peek(5); err != nil {
			if isTimeout(err) && !t.s.interrupted() {
				continue // endDuplex woke us to look at stop
			}
			return upstreamLost(err)
		}
		copyIn, err := t.relayOne()
		if err != nil {
			return err
		}
		if copyIn {
			t.mu.Lock()
			if d.stop {
				d.stop = false
				d.resume <- struct{}{}
			}
			t.mu.Unlock()
		}
	}
}

// finishDuplex, at a request boundary, waits until every answer is
// relayed and returns the session to one goroutine.
func (t *txnSession) finishDuplex() error {
	if t.listening && !t.s.txnMode {
		return nil // stays duplex
	}
	return t.endDuplex()
}

// endDuplex stops the answer goroutine once nothing is outstanding.
func (t *txnSession) endDuplex() error {
	d := t.duplex
	if d == nil {
		return nil
	}
	t.mu.Lock()
	d.stop = true
	idle := t.onlyFakes()
	t.mu.Unlock()
	if idle {
		// It may be blocked reading a server with nothing to say.
		_ = t.up.conn.SetReadDeadline(time.Unix(1, 0))
	}
	var err error
	select {
	case err = <-d.done:
	case <-d.resume:
		return nil // the server wants more COPY data from the client
	}
	t.mu.Lock()
	t.duplex = nil
	t.mu.Unlock()
	if t.up != nil {
		_ = t.up.conn.SetReadDeadline(time.Time{})
	}
	if errors.Is(err, errStopped) {
		return t.flushClient()
	}
	return err
}

// stopDuplex ends the answer goroutine at once (the session is ending)
// and returns its error, if it failed on its own.
func (t *txnSession) stopDuplex() error {
	d := t.duplex
	if d == nil {
		return nil
	}
	t.mu.Lock()
	d.abort = true
	up := t.up
	t.mu.Unlock()
	if up != nil {
		_ = up.conn.SetReadDeadline(time.Unix(1, 0))
	}
	_ = t.s.client.SetWriteDeadline(time.Unix(1, 0))
	err := <-d.done
	t.mu.Lock()
	t.duplex = nil
	t.mu.Unlock()
	if errors.Is(err, errStopped) || isTimeout(err) {
		return nil
	}
	return err
}
