// Package postgres is dbproxy's PostgreSQL front end: it speaks the wire
// protocol to clients (startup, TLS, identity, cancel), logs in upstream
// with a Vault credential through pgconn, and relays frames as bytes,
// decoding only what it must.
package postgres

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Authorizer decides which grant, if any, an identity uses on a backend.
type Authorizer interface {
	Authorize(id identity.Identity, backend, user string) (identity.Grant, error)
}

// Authenticator identifies the client of one listener. raw is the accepted
// connection (a *net.UnixConn on unix sockets); st is set after TLS.
type Authenticator func(raw net.Conn, st *tls.ConnectionState) (identity.Identity, error)

// Routes are what a login looks up: the backends, who may use them and
// their pools. Reconfigure replaces them whole, so one login sees one
// configuration.
type Routes struct {
	Backends map[string]*Backend
	// Pool returns the pool for a backend and Vault role, or nil.
	Pool       func(backend, role string) *pool.Pool
	Authorizer Authorizer
}

// Options configures a Server.
type Options struct {
	Backends map[string]*Backend
	// Pool returns the pool for a backend and Vault role, or nil.
	Pool       func(backend, role string) *pool.Pool
	Authorizer Authorizer
	Log        *zap.Logger
	// Metrics are the front end's collectors (NewMetrics).
	Metrics *Metrics
	// StartupTimeout bounds everything before the first ReadyForQuery.
	StartupTimeout time.Duration
	// MaxMessageBytes caps one client message. Default 128 MiB.
	MaxMessageBytes int
	// Console, when set, serves identified clients whose startup packet
	// asks for database ConsoleDatabase: the SQL admin console
	// (admin/console), which refuses identities that are not admins.
	Console         func(ctx context.Context, identity string, r io.Reader, w io.Writer) error
	ConsoleDatabase string
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
	front   *frontend.Server[*session]
	routes  atomic.Pointer[Routes]
	cancels *cancelKeys
	// greetings are the encoded greetings (greeting.go) transaction-pool
	// clients are greeted with, by backend, role and pool key.
	greetings frontend.Greetings[[]byte]
}

// NewServer makes a server; call Serve for each listener.
func NewServer(o Options) *Server {
	if o.StartupTimeout <= 0 {
		o.StartupTimeout = 15 * time.Second
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 128 << 20
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil, nil)
	}
	srv := &Server{opts: o, log: o.Log, metrics: o.Metrics, cancels: newCancelKeys(),
		front: frontend.NewServer[*session](o.Log)}
	srv.routes.Store(&Routes{Backends: o.Backends, Pool: o.Pool, Authorizer: o.Authorizer})
	return srv
}

// Reconfigure makes logins from now on use r; open sessions keep what
// they logged in with (see Revoke). Cached greetings are dropped: a
// backend may now be another server.
func (srv *Server) Reconfigure(r Routes) {
	srv.routes.Store(&r)
	srv.greetings.Clear()
}

// Revoke ends, with 57P01 and the reason why returns, each open session
// that reason is given for; it returns how many.
func (srv *Server) Revoke(why func(frontend.Grant) string) int { return srv.front.Revoke(why) }

// ServeFunc is Serve for a listener whose options a reload may change:
// each accepted client gets the options lo returns then.
func (srv *Server) ServeFunc(ln net.Listener, name string, lo func() ListenerOptions) {
	srv.front.WatchExpiry() // a reload may make the listener take tokens
	srv.front.Serve(ln, name, func(c net.Conn) { srv.handle(c, lo()) })
}

// Close stops accepting on ln (a listener a reload removed).
func (srv *Server) Close(ln net.Listener) error { return srv.front.Close(ln) }

// Serve accepts clients on ln until Shutdown. It returns at once.
func (srv *Server) Serve(ln net.Listener, lo ListenerOptions) {
	if lo.Token != nil {
		srv.front.WatchExpiry()
	}
	srv.front.Serve(ln, lo.Name, func(c net.Conn) { srv.handle(c, lo) })
}

// Name implements the service interface of cmd/dbproxy.
func (srv *Server) Name() string { return "postgres" }

// Shutdown stops accepting, lets sessions finish until ctx ends, then
// closes the rest with 57P01 and reports how many were still open.
func (srv *Server) Shutdown(ctx context.Context) (int, error) { return srv.front.Shutdown(ctx) }

// Sessions lists the open client sessions for the admin API.
func (srv *Server) Sessions() []frontend.SessionInfo { return srv.front.Sessions() }
