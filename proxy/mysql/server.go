// Package mysql is dbproxy's MySQL/MariaDB front end. It mirrors
// proxy/postgres: go-mysql's server package runs the handshake with the
// client (identity, TLS, grant), go-mysql's client package logs in
// upstream with a Vault credential, and after both handshakes packets are
// relayed as bytes, decoding only what the relay must know: command bytes,
// the shape of each answer and the status flags that carry the
// transaction state.
//
// During both handshakes go-mysql reads and writes through a gate (see
// handshake.go) that frames packets, does TLS itself and validates what
// go-mysql would parse, so that go-mysql's buffered reader never holds a
// byte beyond the last handshake packet and the relay can take over the
// raw connection with nothing lost.
package mysql

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/server"
	"go.uber.org/zap"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/dbproxy/dbproxy/creds"
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
	// StartupTimeout bounds everything before the OK that ends the
	// client's handshake, upstream login included.
	StartupTimeout time.Duration
	// MaxMessageBytes caps one client packet (all its 16 MiB parts
	// together). Default 128 MiB.
	MaxMessageBytes int
	// ServerVersion is what the greeting tells clients before dbproxy
	// knows their backend. Default "8.0.11-dbproxy"; SELECT VERSION()
	// answers with the backend's own.
	ServerVersion string
}

// ListenerOptions configures one listening socket.
type ListenerOptions struct {
	Name string
	// TLS, when set, is offered to clients (CLIENT_SSL); RequireTLS
	// refuses clients that do not take it.
	TLS          *tls.Config
	RequireTLS   bool
	Authenticate Authenticator
	// AuthPlugin is the plugin the greeting names:
	// mysql_native_password (default) or caching_sha2_password. Clients
	// may answer with either; the proxy checks no password.
	AuthPlugin string
	// Token, when set, makes clients send a token (Vault token or JWT)
	// as their password through mysql_clear_password, asked for only over
	// TLS or a unix socket; it replaces Authenticate and the greeting
	// names mysql_native_password. Sessions end when the token expires.
	Token identity.TokenAuthenticator
	// MaxTokenBytes caps the password. Default
	// identity.DefaultMaxTokenBytes.
	MaxTokenBytes int
}

// Server accepts MySQL clients on any number of listeners.
type Server struct {
	opts    Options
	log     *zap.Logger
	metrics *Metrics
	front   *frontend.Server[*session]
	routes  atomic.Pointer[Routes]
	nextID  atomic.Uint32

	gmMu sync.Mutex
	gm   map[string]*server.Server // by greeting auth plugin

	// greetings are the login status flags transaction-pool clients are
	// greeted with, by backend, role and pool key (see txn.go).
	greetings frontend.Greetings[uint16]

	// expired reports a generation past its drain deadline (tests
	// replace it: they cannot expire a generation).
	expired func(*creds.Generation) bool
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
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.ServerVersion == "" {
		o.ServerVersion = "8.0.11-dbproxy"
	}
	srv := &Server{
		opts: o, log: o.Log, metrics: o.Metrics, gm: map[string]*server.Server{},
		front:   frontend.NewServer[*session](o.Log),
		expired: func(g *creds.Generation) bool { return g.State() >= creds.Expired },
	}
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

// Revoke ends, with ER_CONNECTION_KILLED and the reason why returns,
// each open session that reason is given for; it returns how many.
func (srv *Server) Revoke(why func(frontend.Grant) string) int { return srv.front.Revoke(why) }

// ServeFunc is Serve for a listener whose options a reload may change:
// each accepted client gets the options lo returns then.
func (srv *Server) ServeFunc(ln net.Listener, name string, lo func() ListenerOptions) {
	srv.front.WatchExpiry() // a reload may make the listener take tokens
	srv.front.Serve(ln, name, func(c net.Conn) { srv.handle(c, tokenPlugin(lo())) })
}

// Close stops accepting on ln (a listener a reload removed).
func (srv *Server) Close(ln net.Listener) error { return srv.front.Close(ln) }

// tokenPlugin makes a token listener greet with mysql_native_password:
// one auth switch only (to mysql_clear_password, password.go), as
// clients such as go-sql-driver refuse a second one.
func tokenPlugin(lo ListenerOptions) ListenerOptions {
	if lo.Token != nil {
		lo.AuthPlugin = gomysql.AUTH_NATIVE_PASSWORD
	}
	return lo
}

// handshakeServer is the go-mysql server configuration for a greeting
// plugin. It has no TLS of its own: the gate does TLS (handshake.go).
func (srv *Server) handshakeServer(plugin string) *server.Server {
	if plugin != gomysql.AUTH_CACHING_SHA2_PASSWORD {
		plugin = gomysql.AUTH_NATIVE_PASSWORD
	}
	srv.gmMu.Lock()
	defer srv.gmMu.Unlock()
	if s := srv.gm[plugin]; s != nil {
		return s
	}
	// caching_sha2_password wants an RSA key for full authentication;
	// dbproxy never does full authentication (it checks no password), so
	// a throwaway key satisfies the constructor.
	s := server.NewServerWithAuth(srv.opts.ServerVersion, collationUTF8MB4GeneralCI, plugin, throwawayKey(plugin), nil, acceptIdentity{greeting: plugin})
	srv.gm[plugin] = s
	return s
}

// Serve accepts clients on ln until Shutdown. It returns at once.
func (srv *Server) Serve(ln net.Listener, lo ListenerOptions) {
	if lo.Token != nil {
		srv.front.WatchExpiry()
	}
	lo = tokenPlugin(lo)
	srv.front.Serve(ln, lo.Name, func(c net.Conn) { srv.handle(c, lo) })
}

// Name implements the service interface of cmd/dbproxy.
func (srv *Server) Name() string { return "mysql" }

// Shutdown stops accepting, lets sessions finish until ctx ends, then
// closes the rest with ER_SERVER_SHUTDOWN and reports how many were still
// open.
func (srv *Server) Shutdown(ctx context.Context) (int, error) { return srv.front.Shutdown(ctx) }

// Sessions lists the open client sessions for the admin API.
func (srv *Server) Sessions() []frontend.SessionInfo { return srv.front.Sessions() }
