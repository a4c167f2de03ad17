package postgres

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"sync"
	"time"
)

// cancelKeys maps the proxy-issued (pid, secret) that a client holds to
// its session, so a CancelRequest reaches the right upstream with the
// upstream's own key. Clients never learn upstream pids or keys.
type cancelKeys struct {
	mu   sync.Mutex
	byID map[uint32]*cancelEntry
}

type cancelEntry struct {
	secret [4]byte
	s      *session
}

func newCancelKeys() *cancelKeys { return &cancelKeys{byID: make(map[uint32]*cancelEntry)} }

// issue registers s and returns its proxy-side pid and secret.
func (k *cancelKeys) issue(s *session) (uint32, [4]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff
		if pid == 0 || k.byID[pid] != nil {
			continue
		}
		e := &cancelEntry{s: s}
		copy(e.secret[:], b[4:])
		k.byID[pid] = e
		return pid, e.secret
	}
}

func (k *cancelKeys) forget(pid uint32) {
	k.mu.Lock()
	delete(k.byID, pid)
	k.mu.Unlock()
}

// lookup returns the session for a valid key; unknown keys give nil.
func (k *cancelKeys) lookup(pid uint32, secret []byte) *session {
	k.mu.Lock()
	e := k.byID[pid]
	k.mu.Unlock()
	if e == nil || len(secret) != 4 || subtle.ConstantTimeCompare(e.secret[:], secret) != 1 {
		return nil
	}
	return e.s
}

// cancel forwards a client's CancelRequest. Like PostgreSQL, it answers
// nothing either way, so a wrong key tells the sender nothing.
func (srv *Server) cancel(ctx context.Context, pid uint32, secret []byte) {
	s := srv.cancels.lookup(pid, secret)
	if s == nil {
		srv.log.Debug("cancel request with unknown key ignored")
		srv.metrics.Cancels.WithLabelValues("unknown_key").Inc()
		return
	}
	up := s.currentUpstream()
	if up == nil {
		srv.metrics.Cancels.WithLabelValues("idle").Inc()
		return
	}
	if err := up.cancel(ctx, 5*time.Second); err != nil {
		srv.metrics.Cancels.WithLabelValues("error").Inc()
		s.log.Warn("forwarding cancel request failed", errField(err))
		return
	}
	srv.metrics.Cancels.WithLabelValues("forwarded").Inc()
}
