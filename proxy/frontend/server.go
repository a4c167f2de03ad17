package frontend

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Server accepts connections on any number of listeners and tracks the
// sessions they become, until Shutdown. The zero value is not usable:
// call NewServer.
type Server[S Session] struct {
	log *zap.Logger

	mu        sync.Mutex
	listeners []net.Listener
	sessions  map[S]*tracked
	closing   chan struct{}
	wg        sync.WaitGroup
	// expiryWatch starts the WatchExpiry goroutine once.
	expiryWatch sync.Once
}

// NewServer makes a server that logs accept failures to log (nil: none).
func NewServer[S Session](log *zap.Logger) *Server[S] {
	if log == nil {
		log = zap.NewNop()
	}
	return &Server[S]{log: log, sessions: make(map[S]*tracked), closing: make(chan struct{})}
}

// acceptBackoff spaces accept retries after an error that is not a
// timeout (out of file descriptors, say), so the loop does not spin.
const acceptBackoff = 100 * time.Millisecond

// Serve accepts connections on ln until Shutdown and runs handle for each
// on a goroutine of its own. It returns at once; name is the listener's,
// for the log.
func (f *Server[S]) Serve(ln net.Listener, name string, handle func(net.Conn)) {
	f.mu.Lock()
	f.listeners = append(f.listeners, ln)
	f.mu.Unlock()
	f.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				select {
				case <-f.closing:
					return
				default:
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				if errors.Is(err, net.ErrClosed) {
					return
				}
				f.log.Warn("accept failed", zap.String("listener", name), zap.Error(err))
				time.Sleep(acceptBackoff)
				continue
			}
			f.Go(func() { handle(c) })
		}
	})
}

// Close stops accepting on ln, one of the listeners Serve was given (a
// reload removed it); the sessions it accepted go on.
func (f *Server[S]) Close(ln net.Listener) error {
	f.mu.Lock()
	for i, l := range f.listeners {
		if l == ln {
			f.listeners = append(f.listeners[:i], f.listeners[i+1:]...)
			break
		}
	}
	f.mu.Unlock()
	return ln.Close()
}

// Revoke ends, with KillRevoked, every open session for which why
// returns a reason, and returns how many.
func (f *Server[S]) Revoke(why func(Grant) string) int {
	n := 0
	f.ForEach(func(s S) {
		if r := why(s.Grant()); r != "" {
			s.Revoke(r)
			n++
		}
	})
	return n
}

// expirySweep is how often WatchExpiry looks for expired identities.
const expirySweep = time.Second

// WatchExpiry stops, about once a second, each session whose identity
// has expired (KillTokenExpired), until Shutdown. Serve's caller starts
// it for listeners that identify clients by tokens; it starts once.
func (f *Server[S]) WatchExpiry() {
	f.expiryWatch.Do(func() {
		f.Go(func() {
			tick := time.NewTicker(expirySweep)
			defer tick.Stop()
			for {
				select {
				case <-f.closing:
					return
				case now := <-tick.C:
					f.ForEach(func(s S) {
						if exp := s.Expires(); !exp.IsZero() && !now.Before(exp) {
							s.Kill(KillTokenExpired)
						}
					})
				}
			}
		})
	})
}

// Go runs fn on a goroutine that Shutdown waits for.
func (f *Server[S]) Go(fn func()) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		fn()
	}()
}

// Track adds s to the open sessions, from its first relayed byte, under
// a new session ID.
func (f *Server[S]) Track(s S) {
	t := &tracked{id: nextSessionID.Add(1)}
	f.mu.Lock()
	f.sessions[s] = t
	f.mu.Unlock()
}

// Untrack removes s when it ends.
func (f *Server[S]) Untrack(s S) {
	f.mu.Lock()
	delete(f.sessions, s)
	f.mu.Unlock()
}

// ForEach calls fn for each open session, outside the registry's lock (fn
// may take a session's own lock or stop it).
func (f *Server[S]) ForEach(fn func(S)) {
	f.mu.Lock()
	ss := make([]S, 0, len(f.sessions))
	for s := range f.sessions {
		ss = append(ss, s)
	}
	f.mu.Unlock()
	for _, s := range ss {
		fn(s)
	}
}

// Sessions describes the open sessions for the admin API.
func (f *Server[S]) Sessions() []SessionInfo {
	out := []SessionInfo{}
	f.ForEach(func(s S) {
		si := s.Info()
		si.ID = f.id(s)
		out = append(out, si)
	})
	return out
}

// idleSweep is how often Shutdown looks for sessions that went idle.
const idleSweep = 50 * time.Millisecond

// Shutdown stops accepting and lets sessions finish; every idleSweep it
// closes those with nothing in flight. When ctx ends it stops the rest
// (KillShutdown), waits for their goroutines and reports how many were
// still open.
func (f *Server[S]) Shutdown(ctx context.Context) (int, error) {
	f.mu.Lock()
	select {
	case <-f.closing:
	default:
		close(f.closing)
	}
	for _, ln := range f.listeners {
		_ = ln.Close()
	}
	f.mu.Unlock()

	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	tick := time.NewTicker(idleSweep)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return 0, nil
		case <-tick.C:
			f.ForEach(func(s S) { s.CloseIfIdle() })
		case <-ctx.Done():
			open := 0
			f.ForEach(func(s S) { open++; s.Kill(KillShutdown) })
			<-done
			return open, nil
		}
	}
}
