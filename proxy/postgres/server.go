// Package postgres is dbproxy's PostgreSQL front end: it speaks the wire
// protocol to clients (startup, TLS, identity, cancel), logs in upstream
// with a Vault credential through pgconn, and relays frames as bytes,
// decoding only what it must.
package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Authorizer decides which grant, if any, an identity uses on a backend.
type Authorizer interface {
	Authorize(id identity.Identity, backend, user string) (identity.Grant, error)
}

// Authenticator identifies the client of one listener. raw is the accepted
// connection (a *net.UnixConn on unix sockets); st is set after TLS.
type Authenticator func(raw net.Conn, st *tls.ConnectionState) (identity.Identity, error)

// Options configures a Server.
type Options struct {
	Backends map[string]*Backend
	// Pool returns the pool for a backend and Vault role, or nil.
	Pool       func(backend, role string) *pool.Pool
	Authorizer Authorizer
	Log        *zap.Logger
	Metrics    *Metrics
	// StartupTimeout bounds everything before the first ReadyForQuery.
	StartupTimeout time.Duration
	// MaxMessageBytes caps one client message. Default 128 MiB.
	MaxMessageBytes int
}

// ListenerOptions configures one listening socket.
type ListenerOptions struct {
	Name string
	// TLS, when set, accepts SSLRequest; RequireTLS refuses plaintext.
	TLS          *tls.Config
	RequireTLS   bool
	Authenticate Authenticator
	// Token, when set, makes clients send a token (Vault token or JWT)
	// as their password, asked for only over TLS or a unix socket; it
	// replaces Authenticate. Sessions end when the token expires.
	Token identity.TokenAuthenticator
	// MaxTokenBytes caps the password. Default
	// identity.DefaultMaxTokenBytes.
	MaxTokenBytes int
}

// Server accepts PostgreSQL clients on any number of listeners.
type Server struct {
	opts    Options
	log     *zap.Logger
	metrics *Metrics
	cancels *cancelKeys
	// greetings are the server parameters transaction-pool clients are
	// greeted with, by backend, role and startup parameters.
	greetings pool.Greetings[map[string]string]

	mu        sync.Mutex
	listeners []net.Listener
	sessions  map[*session]struct{}
	closing   chan struct{}
	wg        sync.WaitGroup
	// tokenWatch starts watchTokens (password.go) once.
	tokenWatch sync.Once
}

// NewServer makes a server; call Serve for each listener.
func NewServer(o Options) *Server {
	if o.StartupTimeout <= 0 {
		o.StartupTimeout = 15 * time.Second
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 128 << 20
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	return &Server{
		opts: o, log: o.Log, metrics: o.Metrics, cancels: newCancelKeys(),
		sessions: make(map[*session]struct{}), closing: make(chan struct{}),
	}
}

// Serve accepts clients on ln until Shutdown. It returns at once.
func (srv *Server) Serve(ln net.Listener, lo ListenerOptions) {
	srv.mu.Lock()
	srv.listeners = append(srv.listeners, ln)
	srv.mu.Unlock()
	if lo.Token != nil {
		srv.tokenWatch.Do(func() { srv.wg.Add(1); go srv.watchTokens() })
	}
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				select {
				case <-srv.closing:
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
				srv.log.Warn("accept failed", zap.String("listener", lo.Name), zap.Error(err))
				time.Sleep(100 * time.Millisecond)
				continue
			}
			srv.wg.Add(1)
			go func() {
				defer srv.wg.Done()
				srv.handle(c, lo)
			}()
		}
	}()
}

// Name implements the service interface of cmd/dbproxy.
func (srv *Server) Name() string { return "postgres" }

// Shutdown stops accepting, lets sessions finish until ctx ends, then
// closes the rest with 57P01 and reports how many were still open.
func (srv *Server) Shutdown(ctx context.Context) (int, error) {
	srv.mu.Lock()
	select {
	case <-srv.closing:
	default:
		close(srv.closing)
	}
	for _, ln := range srv.listeners {
		_ = ln.Close()
	}
	srv.mu.Unlock()

	done := make(chan struct{})
	go func() { srv.wg.Wait(); close(done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return 0, nil
		case <-tick.C:
			// Idle sessions can go now: nothing of theirs is in flight.
			srv.forEachSession(func(s *session) { s.closeIfIdle() })
		case <-ctx.Done():
			open := 0
			srv.forEachSession(func(s *session) { open++; s.kill(killShutdown) })
			<-done
			return open, nil
		}
	}
}

func (srv *Server) forEachSession(f func(*session)) {
	srv.mu.Lock()
	ss := make([]*session, 0, len(srv.sessions))
	for s := range srv.sessions {
		ss = append(ss, s)
	}
	srv.mu.Unlock()
	for _, s := range ss {
		f(s)
	}
}

// Sessions lists the open client sessions for the admin API.
func (srv *Server) Sessions() []SessionInfo {
	var out []SessionInfo
	srv.forEachSession(func(s *session) { out = append(out, s.info()) })
	return out
}
