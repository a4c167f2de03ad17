package mysql

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/pingcap/tidb/pkg/parser/charset"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// session is one client connection from accept to close. One goroutine
// runs it; fields without a note are that goroutine's.
type session struct {
	srv      *Server
	log      *zap.Logger // with the session's fields from login on
	listener string
	raw      net.Conn      // as accepted
	client   net.Conn      // raw, or TLS over raw
	cbr      *bufio.Reader // borrowed while a command is in flight (idle.go)
	cbw      *bufio.Writer
	in       idleIn // the idle wait's small buffer, read before cbr's
	started  time.Time
	connID   uint32 // the connection id the greeting gave the client

	id      identity.Identity
	backend *Backend
	dbName  string // as the client sent it
	user    string // as the client sent it
	role    string
	caps    uint32 // negotiated with the client
	track   *tracker

	// Transaction pooling (txn.go): where each transaction's upstream
	// connection comes from.
	txnMode bool
	pool    *pool.Pool
	poolKey string
	dialer  pool.DialFunc

	// mu guards lease and cancel for other goroutines (admin API, KILL,
	// interrupt); the session goroutine alone writes them.
	mu     sync.Mutex
	lease  *pool.Lease
	cancel context.CancelFunc // ends a checkout in transaction pooling

	reason  atomic.Uint32 // a killReason: why the session is being stopped (interrupt.go)
	stop    killReason    // the reason that stopped a client read or write
	waiting bool          // reading the first bytes of the next command
	torn    bool          // a server packet reached the client in part

	status   atomic.Uint32              // server status flags of the last OK/EOF
	nextSeq  atomic.Uint32              // sequence number an ERR from dbproxy should carry
	rl       atomic.Pointer[txnSession] // the relay's state, for Superseded (move.go)
	bytesIn  atomic.Int64
	bytesOut atomic.Int64
	// stats counts commands, transactions and checkout waits from login
	// on (nil before: counts nothing; stats.go).
	stats *frontend.SessionStats
	// serverThread is the thread id of the server connection held now or
	// last (audit.go); txns counts answers that left no transaction open.
	serverThread atomic.Uint32
	txns         atomic.Int64
	// revokedWhy is why a reload ended the session (reload.go).
	revokedWhy atomic.Pointer[string]
}

func (srv *Server) handle(c net.Conn, lo ListenerOptions) {
	s := &session{
		srv: srv, raw: c, client: c, started: time.Now(),
		connID: srv.issueID(), listener: lo.Name,
		// The session's logger gets its fields once, at login, when
		// they are all known; until then refused names them itself.
		log: srv.log,
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(srv.opts.StartupTimeout))
	g := newServerGate(c, lo.TLS, s.connID)
	a := &clientAuth{s: s, g: g, lo: lo}
	err := clientHandshake(srv.handshakeServer(lo.AuthPlugin), g, a)
	if err == nil && !g.consumed() {
		err = errors.New("handshake ended inside a packet")
	}
	if err != nil {
		s.refused(err, a.loginErr, g.err)
		if s.lease != nil {
			// Logged in upstream, but the client is gone.
			s.lease.Close()
		}
		return
	}
	// The gate read no byte beyond the handshake, so the client's first
	// command, even if it came early, is still in the socket or in the
	// TLS connection's buffer.
	s.client = g.conn
	s.borrowBuffers()
	defer s.releaseBuffers()
	_ = c.SetDeadline(time.Time{})
	srv.front.Track(s)
	defer srv.front.Untrack(s)
	s.run()
}

// issueID gives each client a connection id of its own for the greeting.
// They start at 2^30 so that they do not collide with the small thread ids
// of the servers behind the proxy (KILL accepts both, see cancel.go).
func (srv *Server) issueID() uint32 {
	return 1<<30 | srv.nextID.Add(1)&(1<<30-1)
}

// refused logs and counts a failed handshake. The client has been told
// already: by go-mysql (login errors) or by the gate (malformed packets).
func (s *session) refused(err, loginErr, gateErr error) {
	cause := err
	switch {
	case gateErr != nil:
		cause = gateErr
	case loginErr != nil:
		cause = loginErr
	}
	log := s.startupLog()
	if errors.Is(cause, io.EOF) || errors.Is(cause, io.ErrUnexpectedEOF) || errors.Is(cause, net.ErrClosed) {
		log.Debug("client left during the handshake", zap.Error(err))
		return
	}
	var told *Error
	if errors.As(cause, &told) || loginErr != nil {
		ce := asClientError(s.backendName(), cause)
		s.srv.metrics.Errors.WithLabelValues(ce.class()).Inc()
		log.Info("client refused", zap.Uint16("code", ce.Code), zap.String("sqlstate", ce.State),
			zap.String("identity", s.id.Name), zap.String("backend", s.backendName()), zap.String("role", s.role), zap.Error(cause))
		return
	}
	// TLS or go-mysql's own failure: nothing of dbproxy's reached the
	// client.
	log.Info("client handshake failed", zap.String("backend", s.backendName()), zap.Error(cause))
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
	return s.dbName
}

// onlyBackend returns the one mysql backend id is granted, or "".
func (srv *Server) onlyBackend(routes *Routes, id identity.Identity) string {
	gl, ok := routes.Authorizer.(interface {
		GrantedBackends(identity.Identity) []string
	})
	if !ok {
		return ""
	}
	only := ""
	for _, b := range gl.GrantedBackends(id) {
		if routes.Backends[b] == nil {
			continue // another protocol's backend
		}
		if only != "" {
			return ""
		}
		only = b
	}
	return only
}

// login authenticates, authorizes and connects upstream. go-mysql calls it
// (through clientAuth.OnAuthSuccess) after the client's auth exchange and
// before it sends OK; an error goes to the client as an ERR packet.
func (s *session) login(lo ListenerOptions, g *serverGate) error {
	r := g.resp
	s.dbName = r.db
	if lo.RequireTLS && g.tlsState == nil {
		return &Error{Code: erSecureTransportRequired, State: "08004",
			Message: fmt.Sprintf("Connections using insecure transport are prohibited: dbproxy listener %s requires TLS; connect with --ssl (mariadb) or tls=true (Go driver)", lo.Name)}
	}
	id, err := lo.Authenticate(s.raw, g.tlsState)
	if err != nil {
		return &Error{Code: erAccessDenied, State: "28000",
			Message: fmt.Sprintf("Access denied to backend %q: %v", r.db, err), Err: err}
	}
	s.id = id
	s.user = r.user
	routes := s.srv.routes.Load()
	if r.db == "" {
		// The only mysql backend the identity may use needs no naming:
		// the mariadb client's Ctrl-C opens its KILL connection with no
		// database, and so do ad hoc sessions.
		r.db = s.srv.onlyBackend(routes, id)
		s.dbName = r.db
	}
	if r.db == "" {
		return &Error{Code: erNoDB, State: "3D000",
			Message: fmt.Sprintf("No database selected: identity %q must name the dbproxy backend to use as the database (e.g. mariadb -D <backend>)", id.Name)}
	}
	b := routes.Backends[r.db]
	if b == nil {
		return &Error{Code: erDBAccessDenied, State: "42000",
			Message: fmt.Sprintf("identity %q: backend %q does not exist: set the database to one of the backends configured in dbproxy", id.Name, r.db)}
	}
	s.backend = b
	grant, err := routes.Authorizer.Authorize(id, b.Name, r.user)
	if err != nil {
		return err
	}
	s.role = grant.Role
	pl := routes.Pool(b.Name, grant.Role)
	if pl == nil {
		return &Error{Code: erUnknownError, State: "HY000",
			Message: fmt.Sprintf("no pool for backend %s and role %s: dbproxy configuration is incomplete", b.Name, grant.Role)}
	}
	coll, err := charset.GetCollationByID(int(r.collation))
	if err != nil {
		return &Error{Code: erUnknownCollation, State: "HY000",
			Message: fmt.Sprintf("Unknown collation id %d: dbproxy must name it to the backend; connect with a MySQL collation such as utf8mb4_general_ci", r.collation), Err: err}
	}
	s.caps = r.caps & g.caps &^ gomysql.CLIENT_SSL
	s.log = s.srv.log.With(zap.String("listener", lo.Name), zap.String("remote", s.raw.RemoteAddr().String()),
		zap.String("identity", id.Name), zap.String("backend", b.Name), zap.String("role", grant.Role))
	s.stats = s.srv.metrics.Stats(b.Name, id.Name)

	program := "dbproxy:" + id.Name
	if p := r.attrs["program_name"]; p != "" {
		program += ":" + p
	}
	params := dialParams{caps: s.caps & upstreamCaps, collation: coll.Name, charset: coll.CharsetName,
		attrs: map[string]string{"program_name": program}}
	ctx, cancel := context.WithDeadline(context.Background(), s.started.Add(s.srv.opts.StartupTimeout))
	defer cancel()
	s.pool, s.poolKey, s.txnMode = pl, params.key(), b.Mode == "transaction"
	s.dialer = func(ctx context.Context, gen *creds.Generation) (pool.Conn, error) {
		u, err := dial(ctx, b, gen, params)
		if err != nil {
			var me *gomysql.MyError
			if errors.As(err, &me) && me.Code == erAccessDenied {
				// The database refused a credential Vault gave us: the
				// lease was revoked behind our back.
				gen.AuthFailed()
			}
			return nil, err
		}
		return u, nil
	}
	s.nextSeq.Store(1)
	s.track = newTracker(s.caps&gomysql.CLIENT_DEPRECATE_EOF != 0)
	greetKey := frontend.GreetingKey(b.Name, grant.Role, s.poolKey)
	if s.txnMode {
		// Clients of a transaction pool log in without waiting for a free
		// server connection: the login status is the last one's. The
		// credential check keeps "no valid credential" a login error.
		if st, ok := s.srv.greetings.Get(greetKey); ok {
			if _, err := pl.Credential(ctx); err != nil {
				return err
			}
			s.status.Store(uint32(st))
			return nil
		}
	}
	if !s.txnMode {
		lease, err := s.checkoutOpen(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.lease = lease
		s.mu.Unlock()
		s.status.Store(uint32(lease.Conn.(*upstream).status))
		s.serverThread.Store(lease.Conn.(*upstream).threadID)
		return nil
	}
	lease, err := pl.Checkout(ctx, s.poolKey, s.dialer)
	if err != nil {
		return err
	}
	// One login proves the backend takes this key's capabilities; the
	// connection serves the session's first transaction or another
	// client's.
	st := lease.Conn.(*upstream).status
	s.srv.greetings.Put(greetKey, st)
	s.status.Store(uint32(st))
	lease.Put()
	return nil
}

// checkoutOpen checks a connection out for a new session, skipping those
// the server closed while they sat in the pool (a session's connection is
// checked once; the check costs a system call).
func (s *session) checkoutOpen(ctx context.Context) (*pool.Lease, error) {
	for {
		// Each dead one is closed, so this ends with an open or new one.
		start := mono()
		lease, err := s.pool.CheckoutFor(ctx, s.poolKey, s.dialer, s)
		if err != nil || pool.PeerOpen(lease.Conn.(*upstream).conn) {
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
	if s.txnMode {
		// Each transaction has its own server connection and may have
		// its own database user; the log lines say so.
		s.log.Info("session start", s.auditStart(nil)...)
		result := s.runTxn()
		s.logEnd(result, nil)
		return
	}
	gen := s.lease.Gen
	s.log.Info("session start", s.auditStart(gen)...)

	// The transaction-pooling relay keeps the session's connection in
	// session mode, and moves it at a rotation (move.go).
	result := s.runTxn()
	s.logEnd(result, gen)
}

// logEnd counts and logs the end of a session; gen is nil in transaction
// pooling, where the session used many.
func (s *session) logEnd(result string, gen *creds.Generation) {
	s.srv.metrics.SessionEnded(s.backend.Name, s.id.Name, result, s.bytesIn.Load(), s.bytesOut.Load())
	s.log.Info("session end", s.auditEnd(result, gen)...)
}

// sendError tells the client e, after whatever whole packets it has not
// been sent yet; e nil sends only those. After a server packet reached
// it in part nothing more can be said: the client sees the connection
// close.
func (s *session) sendError(e *Error) {
	if e != nil {
		s.srv.metrics.Errors.WithLabelValues(e.class()).Inc()
	}
	if s.torn {
		return
	}
	_ = s.client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if e != nil {
		_, _ = s.cbw.Write(e.packet(byte(s.nextSeq.Load())))
	}
	_ = s.cbw.Flush()
}

// reply writes dbproxy's own answer to a command (KILL, see cancel.go).
func (s *session) reply(pkt []byte) error {
	s.bytesOut.Add(int64(len(pkt)))
	if _, err := s.cbw.Write(pkt); err != nil {
		return err
	}
	return s.cbw.Flush()
}

func (s *session) inTransaction() bool {
	return uint16(s.status.Load())&gomysql.SERVER_STATUS_IN_TRANS != 0
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
	si := frontend.SessionInfo{Protocol: "mysql", Identity: s.id.Name, Method: string(s.id.Method), Role: s.role,
		Since: s.started, Remote: s.raw.RemoteAddr().String(), ConnectionID: s.connID, State: "idle",
		RequestTime: s.stats.LastRequest(),
		Listener:    s.listener, BackendPID: s.serverThread.Load(), Transactions: s.txns.Load(),
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load()}
	if s.backend != nil {
		si.Backend = s.backend.Name
	}
	switch {
	case s.track != nil && !s.track.idle():
		si.State = "active"
	case s.inTransaction():
		si.State = "idle in transaction"
	}
	s.mu.Lock()
	if s.lease != nil {
		si.DBUser, si.LeaseID, si.Generation = s.lease.Gen.Username, s.lease.Gen.LeaseID, s.lease.Gen.N
		si.ThreadID = s.lease.Conn.(*upstream).threadID
		si.BackendPID, si.BackendPIDHeld = si.ThreadID, true
	}
	if t := s.rl.Load(); t != nil && !s.txnMode {
		si.Pinned = t.pinned
	}
	s.mu.Unlock()
	return si
}
