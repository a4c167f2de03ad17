package postgres

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Backend is one upstream PostgreSQL server as the proxy needs it.
type Backend struct {
	Name     string
	Host     string
	Port     uint16
	Database string
	// TLS is the client TLS config for the upstream; nil disables TLS.
	TLS *tls.Config
	// RequireAuth lists acceptable upstream auth methods, as libpq's
	// require_auth. Default scram-sha-256.
	RequireAuth    string
	ConnectTimeout time.Duration
	// Mode is session or transaction (pooling).
	Mode string
	// IdleTxnTimeout ends a transaction-mode session idle inside a
	// transaction this long (0: never).
	IdleTxnTimeout time.Duration
}

// upstream is one hijacked, authenticated connection to PostgreSQL.
type upstream struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *outbuf
	pid  uint32
	key  []byte
	// greeting is the AuthenticationOk and ParameterStatus messages a
	// client logging in on this connection is sent (greeting.go).
	greeting []byte
	addr     string
	// prepared holds the statements the proxy prepared here under its own
	// names (transaction pooling); only the session's relay touches it.
	prepared map[string]bool
	// tag names the session state a transaction-mode client applied here
	// (txnstate.go); 0 is the state it logged in with.
	tag uint64
}

// dial logs in to the backend with g's credential via pgconn, then takes
// the raw connection over.
func dial(ctx context.Context, b *Backend, g *creds.Generation, runtime map[string]string) (*upstream, error) {
	// ParseConfig reads PG* environment variables for anything the string
	// leaves out; name everything that matters so the environment cannot
	// add options or fallbacks, then override the rest field by field.
	cfg, err := pgconn.ParseConfig("host=" + b.Host + " port=" + strconv.Itoa(int(b.Port)) + " sslmode=disable")
	if err != nil {
		return nil, fmt.Errorf("upstream config: %w", err)
	}
	cfg.User = g.Username
	cfg.Password = g.Password()
	cfg.Database = b.Database
	cfg.TLSConfig = b.TLS
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = b.ConnectTimeout
	cfg.RuntimeParams = runtime
	cfg.RequireAuth = b.RequireAuth
	if cfg.RequireAuth == "" {
		cfg.RequireAuth = "scram-sha-256"
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// pgconn may still have a background read pending on the socket from
	// the handshake; hijacking then would lose the server's next reply to
	// that reader (a session hangs on its first query). SyncConn waits it out.
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(ctx)
		return nil, fmt.Errorf("upstream sync: %w", err)
	}
	hj, err := pc.Hijack()
	if err != nil {
		_ = pc.Close(ctx)
		return nil, fmt.Errorf("upstream hijack: %w", err)
	}
	return &upstream{
		conn: hj.Conn, br: bufio.NewReaderSize(hj.Conn, 32<<10), bw: newOutbuf(hj.Conn, 32<<10),
		pid: hj.PID, key: hj.SecretKey, greeting: encodeGreeting(hj.ParameterStatuses),
		addr:     net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port))),
		prepared: map[string]bool{},
	}, nil
}

// Reset runs DISCARD ALL so the next client starts from session defaults.
func (u *upstream) Reset(ctx context.Context) error {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(5 * time.Second)
	}
	_ = u.conn.SetDeadline(dl)
	defer func() { _ = u.conn.SetDeadline(time.Time{}) }()
	clear(u.prepared) // DISCARD ALL drops them
	u.tag = 0
	buf, _ := (&pgproto3.Query{String: "DISCARD ALL"}).Encode(nil)
	if _, err := u.bw.Write(buf); err != nil {
		return err
	}
	if err := u.bw.Flush(); err != nil {
		return err
	}
	var failed error
	for {
		typ, body, err := readFrame(u.br, 1<<20)
		if err != nil {
			return err
		}
		switch typ {
		case 'E':
			failed = fmt.Errorf("DISCARD ALL failed")
		case 'Z':
			if failed == nil && (len(body) != 1 || body[0] != 'I') {
				failed = fmt.Errorf("connection not idle after DISCARD ALL")
			}
			return failed
		}
	}
}

// alive reports whether an idle connection is still open: nothing may
// be waiting on it (an idle server says nothing but its goodbye), checked
// with a non-blocking peek at the socket. A connection it cannot peek at
// (TLS) is assumed alive; the relay's retry covers it.
func (u *upstream) alive() bool {
	return u.br.Buffered() == 0 && pool.PeerOpen(u.conn)
}

func (u *upstream) Close() error {
	// Say goodbye so the server logs a clean disconnect, not an EOF.
	_ = u.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = u.conn.Write([]byte{'X', 0, 0, 0, 4})
	return u.conn.Close()
}

// cancel asks the upstream to cancel what it is running, with its own key.
func (u *upstream) cancel(ctx context.Context, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", u.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	buf, err := (&pgproto3.CancelRequest{ProcessID: u.pid, SecretKey: u.key}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := c.Write(buf); err != nil {
		return err
	}
	// The server closes the connection when done; wait for that so the
	// cancel has been processed before we report success.
	var one [1]byte
	_, _ = c.Read(one[:])
	return nil
}

// statementName is the proxy's name for a prepared statement: a hash of
// the Parse message after the name (query and parameter types), so equal
// statements share one server-side statement across clients.
func statementName(parseRest []byte) string {
	h := sha256.Sum256(parseRest)
	return "dbproxy_" + hex.EncodeToString(h[:12])
}
