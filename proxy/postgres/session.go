package postgres

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// session is one client connection from accept to close. One goroutine
// runs it; other goroutines only read its snapshot fields (under mu or
// atomically) and interrupt it.
type session struct {
	srv      *Server
	log      *zap.Logger // with the session's fields from login on
	listener string
	raw      net.Conn      // as accepted
	client   net.Conn      // raw, or TLS over raw
	cbr      *bufio.Reader // borrowed while a request is relayed (idle.go)
	cbw      *bufio.Writer
	in       prefixReader // the client as cbr reads it
	started  time.Time
	// ctx is cancelled when the session is killed: it bounds a checkout
	// waiting for a connection.
	ctx    context.Context
	cancel context.CancelFunc

	id      identity.Identity
	backend *Backend
	params  *startupParams
	role    string

	pool    *pool.Pool
	poolKey string
	appName string // dbproxy:identity[:client application_name]
	dialer  pool.DialFunc
	txnMode bool
	rl      *txnSession

	mu        sync.Mutex
	lease     *pool.Lease // what info and cancel see; rl.lease is the relay's
	cancelPID uint32

	why  atomic.Int32 // interrupt reason (interrupt.go)
	busy atomic.Bool  // a request is being relayed
	// moveWanted: the held connection's credential is superseded; move
	// at the next idle moment (migrate.go). idleWaiting (under mu): the
	// session is blocked waiting for the client's next request.
	moveWanted  atomic.Bool
	idleWaiting bool
	// expiring: the held connection's credential expired while a request
	// ran; the request may finish (interrupt.go).
	expiring  atomic.Bool
	idleArmed bool          // the client read deadline is idle_transaction_timeout's
	txStatus  atomic.Uint32 // last ReadyForQuery status byte
	bytesIn   atomic.Int64
	bytesOut  atomic.Int64
	// console: the client asked for the admin console (console.go).
	console bool
	// stats counts transactions, queries and checkout waits from login
	// on (nil before: counts nothing).
	stats *frontend.SessionStats
	// serverPID is the BackendKeyData pid of the server connection held
	// now or last (audit.go); txns counts ReadyForQuery 'I' messages:
	// transactions ended, implicit ones included.
	serverPID atomic.Uint32
	txns      atomic.Int64
	// revokedWhy is why a reload ended the session (reload.go).
	revokedWhy atomic.Pointer[string]
}

func (srv *Server) handle(c net.Conn, lo ListenerOptions) {
	// The session's logger gets its fields once, at login, when they are
	// all known; until then failures name them themselves (fail).
	s := &session{srv: srv, raw: c, client: c, started: time.Now(), log: srv.log, listener: lo.Name}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer s.cancel()
	s.rl = newTxnSession(s)
	s.in.conn = c
	s.borrowBuffers()
	defer s.releaseBuffers()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(srv.opts.StartupTimeout))
	err := s.startup(lo)
	if err != nil {
		s.fail(err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	srv.front.Track(s)
	defer srv.front.Untrack(s)
	if s.console {
		s.runConsole() // console.go
		return
	}
	s.run()
}

// fail reports a startup error to the client, if it is still listening.
func (s *session) fail(err error) {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, errCancelHandled) {
		return
	}
	pe := asClientError(s.backendName(), err)
	s.srv.metrics.Errors.WithLabelValues(pe.Code[:2]).Inc()
	s.startupLog().Info("client refused", zap.String("sqlstate", pe.Code), zap.String("identity", s.id.Name),
		zap.String("backend", s.backendName()), zap.String("role", s.role), zap.Error(err))
	_ = s.client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = s.client.Write(pe.encode(nil))
}

// startupLog is the session's logger before login gives it its fields:
// for the failures of a connection that never became a session.
func (s *session) startupLog() *zap.Logger {
	return s.srv.log.With(zap.String("listener", s.listener), zap.String("remote", s.raw.RemoteAddr().String()))
}

func (s *session) backendName() string {
	if s.backend != nil {
		return s.backend.Name
	}
	if s.params != nil {
		return s.params.database
	}
	return ""
}

var errCancelHandled = errors.New("cancel request handled")

// startup runs the startup loop through to ReadyForQuery.
func (s *session) startup(lo ListenerOptions) error {
	var tlsState *tls.ConnectionState
	for {
		msg, err := readStartup(s.cbr)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if tlsState != nil {
				return fatal(codeProtocolViolation, "SSLRequest received twice")
			}
			if lo.TLS == nil {
				if _, err := s.raw.Write([]byte{'N'}); err != nil {
					return err
				}
				continue
			}
			// Bytes that arrived with the SSLRequest were sent before the
			// handshake and could be injected by a man in the middle
			// (CVE-2021-23214): refuse them.
			if s.cbr.Buffered() > 0 {
				return fatal(codeProtocolViolation, "received unencrypted data after SSL request: the client must wait for the server's answer before starting TLS")
			}
			if _, err := s.raw.Write([]byte{'S'}); err != nil {
				return err
			}
			tc := tls.Server(s.raw, lo.TLS)
			if err := tc.Handshake(); err != nil {
				return fmt.Errorf("tls handshake: %w", err)
			}
			st := tc.ConnectionState()
			tlsState = &st
			s.client = tc
			s.in.conn = tc
			s.cbr.Reset(&s.in)
			s.cbw.Reset(tc)
		case *pgproto3.GSSEncRequest:
			if _, err := s.raw.Write([]byte{'N'}); err != nil {
				return err
			}
		case *pgproto3.CancelRequest:
			s.srv.cancel(context.Background(), m.ProcessID, m.SecretKey)
			return errCancelHandled
		case *pgproto3.StartupMessage:
			return s.tokenThenLogin(lo, m, tlsState)
		}
	}
}

// login authenticates, authorizes, connects upstream and greets the client.
func (s *session) login(lo ListenerOptions, m *pgproto3.StartupMessage, st *tls.ConnectionState) error {
	if lo.RequireTLS && st == nil {
		return fatal(codeInvalidAuth, fmt.Sprintf("listener %s requires TLS: connect with sslmode=require or stronger", lo.Name))
	}
	p, err := parseStartup(m)
	if err != nil {
		return err
	}
	s.params = p
	id, err := lo.Authenticate(s.raw, st)
	if err != nil {
		return err
	}
	s.id = id
	if s.wantsConsole(p) { // console.go
		return nil
	}
	routes := s.srv.routes.Load()
	b := routes.Backends[p.database]
	if b == nil {
		return fatal(codeInvalidCatalog, fmt.Sprintf("backend %q does not exist: set database to one of the backends configured in dbproxy", p.database))
	}
	s.backend = b
	g, err := routes.Authorizer.Authorize(id, b.Name, p.user)
	if err != nil {
		return err
	}
	s.role = g.Role
	pl := routes.Pool(b.Name, g.Role)
	if pl == nil {
		return fatal(codeInvalidAuth, fmt.Sprintf("no pool for backend %s and role %s: dbproxy configuration is incomplete", b.Name, g.Role))
	}
	s.log = s.srv.log.With(zap.String("listener", lo.Name), zap.String("remote", s.raw.RemoteAddr().String()),
		zap.String("identity", id.Name), zap.String("backend", b.Name), zap.String("role", g.Role))
	s.stats = s.srv.metrics.Stats(b.Name, id.Name)

	appName := "dbproxy:" + id.Name
	if p.appName != "" {
		appName += ":" + p.appName
	}
	runtime := map[string]string{"application_name": appName}
	for k, v := range p.forward {
		runtime[k] = v
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(s.srv.opts.StartupTimeout))
	defer cancel()
	s.pool, s.txnMode, s.appName = pl, b.Mode == "transaction", appName
	poolApp := appName
	if s.txnMode {
		// The client's application name is session state applied per
		// transaction, not part of the pool key: clients that differ only
		// in it share server connections.
		poolApp = "dbproxy:" + id.Name
		runtime["application_name"] = poolApp
		if appName != poolApp {
			s.rl.sets = []setStmt{{name: "application_name", sql: "SET application_name = '" + strings.ReplaceAll(appName, "'", "''") + "'"}}
			s.rl.setTag = stateTag(s.rl.sets)
		}
	}
	s.poolKey = p.key(poolApp)
	s.dialer = func(ctx context.Context, gen *creds.Generation) (pool.Conn, error) {
		u, err := dial(ctx, b, gen, runtime)
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && (pe.Code == "28P01" || pe.Code == "28000") {
				// The database refused a credential Vault gave us: the
				// lease was revoked behind our back.
				gen.AuthFailed()
			}
			return nil, err
		}
		return u, nil
	}
	greetKey := frontend.GreetingKey(b.Name, g.Role, s.poolKey)
	if s.txnMode {
		// Clients of a transaction pool connect without waiting for a
		// free server connection: the greeting is the last one's. The
		// credential check keeps "no valid credential" a login error.
		if gr, ok := s.srv.greetings.Get(greetKey); ok {
			if _, err := pl.Credential(ctx); err != nil {
				return err
			}
			return s.greet(m.ProtocolVersion, gr)
		}
	}
	lease, err := s.checkoutAlive(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.lease = lease
	s.mu.Unlock()
	s.rl.lease, s.rl.up = lease, lease.Conn.(*upstream)
	s.serverPID.Store(s.rl.up.pid)
	gr := lease.Conn.(*upstream).greeting
	if s.txnMode {
		s.srv.greetings.Put(greetKey, gr)
	}
	return s.greet(m.ProtocolVersion, gr)
}

// checkoutAlive checks a connection out for a new session, skipping
// pooled ones the server ended while they were idle: a session-mode
// client keeps its connection, so a dead one would fail its first query.
func (s *session) checkoutAlive(ctx context.Context) (*pool.Lease, error) {
	for {
		// Each dead one is closed, so this ends with a live or new one.
		start := frontend.Mono()
		lease, err := s.pool.CheckoutFor(ctx, s.poolKey, s.dialer, s)
		if err != nil || lease.Conn.(*upstream).alive() {
			if err == nil {
				s.stats.Waited(start)
			}
			return lease, err
		}
		s.log.Info("pooled server connection was closed by the server; using another")
		lease.Close()
	}
}

// run relays until the session ends, then returns or closes the upstream.
func (s *session) run() {
	m := s.srv.metrics
	b := s.backend.Name
	m.Connect.WithLabelValues(b).Observe(time.Since(s.started).Seconds())
	clients := m.Clients.WithLabelValues(b, s.id.Name)
	clients.Inc()
	defer clients.Dec()
	defer s.srv.cancels.forget(s.cancelPID)
	if s.txnMode {
		// Each transaction has its own server connection and database
		// user; the log lines of a transaction pool say so.
		s.log.Info("session start", s.auditStart(true, nil)...)
		s.rl.release(true) // the greeting's, until the first transaction
		result := s.serve()
		s.rl.release(false) // still held: the session ended mid-transaction
		s.logEnd(b, result)
		return
	}
	gen := s.rl.lease.Gen
	s.log.Info("session start", s.auditStart(false, gen)...)
	result := s.serve()
	if result == "ok" && !s.rl.outstanding() && byte(s.txStatus.Load()) == 'I' && s.rl.up != nil && s.rl.up.bw.Buffered() == 0 {
		s.rl.returnSession()
	} else {
		s.rl.release(false)
	}
	s.logEnd(b, result, zap.String("db_user", gen.Username), zap.Uint64("generation", gen.N), zap.String("lease_id", gen.LeaseID))
}

// logEnd counts and logs the end of a session.
func (s *session) logEnd(backend, result string, fields ...zap.Field) {
	s.srv.metrics.SessionEnded(backend, s.id.Name, result, s.bytesIn.Load(), s.bytesOut.Load())
	s.log.Info("session end", append(fields, s.auditEnd(result)...)...)
}

func (s *session) sendFatal(e *Error) {
	s.srv.metrics.Errors.WithLabelValues(e.Code[:2]).Inc()
	_ = s.client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	// Straight to the socket: the buffered writer may hold a write error
	// from the deadline that interrupted the relay.
	_, _ = s.client.Write(e.encode(nil))
}

func (s *session) currentUpstream() *upstream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lease == nil {
		return nil
	}
	return s.lease.Conn.(*upstream)
}

// Info implements frontend.Session.
func (s *session) Info() frontend.SessionInfo {
	si := frontend.SessionInfo{Protocol: "postgres", Identity: s.id.Name, Method: string(s.id.Method), Role: s.role,
		Since: s.started, Remote: s.raw.RemoteAddr().String(), State: txState(byte(s.txStatus.Load()), s.busy.Load()),
		RequestTime: s.stats.LastRequest(),
		Listener:    s.listener, BackendPID: s.serverPID.Load(), Transactions: s.txns.Load(),
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load()}
	if s.backend != nil {
		si.Backend = s.backend.Name
	}
	s.mu.Lock()
	if s.lease != nil {
		si.DBUser, si.LeaseID, si.Generation = s.lease.Gen.Username, s.lease.Gen.LeaseID, s.lease.Gen.N
		si.BackendPID, si.BackendPIDHeld = s.lease.Conn.(*upstream).pid, true
	}
	if s.rl != nil {
		si.Pinned = s.rl.pin
	}
	s.mu.Unlock()
	return si
}

func txState(status byte, busy bool) string {
	switch {
	case busy:
		return "active"
	case status == 'T':
		return "idle in transaction"
	case status == 'E':
		return "idle in failed transaction"
	default:
		return "idle"
	}
}
