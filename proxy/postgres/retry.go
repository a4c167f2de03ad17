package postgres

import (
	"encoding/binary"
	"errors"

	"go.uber.org/zap"
)

// Transparent retry: a pooled connection the server ended while it sat
// idle (pg_terminate_backend, an idle-session killer, a failover) is only
// found out when a request is sent on it. If that request checked the
// connection out and nothing of its answer has reached the client, nothing
// ran: dbproxy closes the dead connection, takes another and sends the
// request again. The client never sees the fault.

// maxRetries bounds the retries of one request.
const maxRetries = 2

// retryState records the request a fresh checkout carries.
type retryState struct {
	ok      bool   // the request may still be sent again
	frames  []byte // the client's messages of it, as received
	bytes   int64  // s.bytesOut when the connection was checked out
	retries int
}

// errDeadOnArrival is a connection whose first answer was the server's
// goodbye (FATAL), e.g. after pg_terminate_backend while it was idle.
var errDeadOnArrival = &upstreamError{err: errors.New("the server had closed the pooled connection")}

// armRetry starts recording the request a fresh connection carries.
func (t *txnSession) armRetry() {
	r := &t.retry
	r.ok = t.s.txnMode
	r.frames = r.frames[:0]
	r.bytes = t.s.bytesOut.Load()
}

// record keeps a copy of a client message while a retry is possible;
// body nil means the message is copied as is (COPY data, Flush).
func (t *txnSession) record(typ byte, body []byte) {
	r := &t.retry
	if !r.ok {
		return
	}
	if body == nil && typ != 'H' {
		r.ok = false // COPY data streams through: not kept
		return
	}
	r.frames = appendFrame(r.frames, typ, body)
	if len(r.frames) > 1<<20 {
		r.ok = false // not worth holding
	}
}

// freshAnswer reports that nothing of the retryable request's answer has
// reached the client: a goodbye now means the connection died while idle.
func (t *txnSession) freshAnswer() bool {
	r := &t.retry
	return r.ok && t.s.bytesOut.Load() == r.bytes
}

// canRetry reports whether err on the held connection can be absorbed.
func (t *txnSession) canRetry(err error) bool {
	r := &t.retry
	var ue *upstreamError
	return t.duplex == nil && r.ok && r.retries < maxRetries && t.s.txnMode && !t.s.interrupted() &&
		t.s.bytesOut.Load() == r.bytes && errors.As(err, &ue)
}

// resend closes the dead connection, checks out another and sends the
// recorded messages on it. complete says the whole request was read (so
// it is flushed now).
func (t *txnSession) resend(cause error, complete bool) error {
	s := t.s
	r := &t.retry
	retries := r.retries + 1
	frames := append([]byte(nil), r.frames...)
	s.log.Info("server connection was dead; request sent again on another", zap.Error(cause), zap.Int("retry", retries))
	s.srv.metrics.Retries.Inc()
	t.release(false)
	// Its idle siblings were likely ended with it (a DBA's sweep, a
	// failover): skip the dead ones this time.
	lease, err := s.checkoutAlive(s.ctx)
	if err != nil {
		return &checkoutError{err}
	}
	t.hold(lease)
	r.retries = retries
	for len(frames) >= 5 {
		typ := frames[0]
		n := int(binary.BigEndian.Uint32(frames[1:])) + 1
		body := frames[5:n]
		frames = frames[n:]
		t.record(typ, body)
		t.mu.Lock()
		err := t.rewrite(typ, body)
		t.mu.Unlock()
		if err != nil {
			return err
		}
	}
	err = t.writeUp(t.stage)
	t.stage = t.stage[:0]
	if err == nil && complete {
		err = t.flushUp()
	}
	return err
}
