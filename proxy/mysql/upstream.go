package mysql

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/dbproxy/dbproxy/creds"
)

// Backend is one upstream MySQL or MariaDB server as the proxy needs it.
type Backend struct {
	Name     string
	Addr     string // host:port
	Database string
	// TLS is the client TLS config for the upstream; nil disables TLS.
	TLS *tls.Config
	// AllowCleartext lets the server switch to mysql_clear_password
	// without TLS (config allow_insecure_auth). Off, such a switch fails
	// the login before the password leaves dbproxy.
	AllowCleartext bool
	ConnectTimeout time.Duration
	// Mode is session or transaction (pooling, see txn.go).
	Mode string
}

// upstream is one authenticated connection to MySQL that dbproxy took
// over from go-mysql after the handshake.
type upstream struct {
	conn     net.Conn // raw, or the gate's TLS connection
	br       *bufio.Reader
	bw       *bufio.Writer
	threadID uint32
	version  string
	status   uint16 // after login or the last Reset
	db       string
	setNames string // restores the handshake's character set after a reset
	// stmts are the statements transaction pooling prepared here, by
	// query text (see stmt.go); COM_RESET_CONNECTION drops them all.
	stmts map[string]*upStmt
	// sqlStmts are the SQL-level statements prepared here, by the name
	// dbproxy gave them (sqlstmt.go); COM_RESET_CONNECTION drops them.
	sqlStmts map[string]bool
	// tag names the client session state applied here (txnstate.go):
	// 0 for the defaults of the login or the last Reset.
	tag uint64
}

// dialParams is what the upstream session takes from the client's
// handshake; key makes connections with the same ones interchangeable.
type dialParams struct {
	caps      uint32 // of upstreamCaps
	collation string
	charset   string
	attrs     map[string]string
}

func (p dialParams) key() string {
	ks := make([]string, 0, len(p.attrs))
	for k := range p.attrs {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	fmt.Fprintf(&b, "%08x/%s", p.caps, p.collation)
	for _, k := range ks {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(p.attrs[k])
	}
	return b.String()
}

// dial logs in to b with g's credential through go-mysql's client, then
// takes the connection over. go-mysql talks through a clientGate that does
// the TLS upgrade and reads whole packets, so nothing the server sends
// after its final OK sits in go-mysql's buffers.
func dial(ctx context.Context, b *Backend, g *creds.Generation, p dialParams) (*upstream, error) {
	timeout := b.ConnectTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	var (
		mu   sync.Mutex
		gate *clientGate
	)
	dialer := func(ctx context.Context, _, addr string) (net.Conn, error) {
		d := net.Dialer{Deadline: deadline}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(deadline)
		mu.Lock()
		gate = newClientGate(c, b.TLS, b.AllowCleartext, p.caps)
		mu.Unlock()
		return gate, nil
	}
	// go-mysql takes no context after dialing; a cancelled context
	// interrupts the handshake through the deadline.
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if gate != nil {
			_ = gate.raw.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()
	// go-mysql sends the password in clear for caching_sha2_password full
	// authentication only when it believes the transport is secure, which
	// it judges by its own TLS config or a "unix" network. TLS is the
	// gate's, so say "unix" when there is TLS (the dialer always uses tcp);
	// without TLS go-mysql uses the server's RSA key.
	network := "tcp"
	if b.TLS != nil {
		network = "unix"
	}
	cc, err := connect(ctx, network, b.Addr, g.Username, g.Password(), b.Database, dialer, func(c *client.Conn) error {
		c.SetAttributes(p.attrs)
		if err := c.SetCollation(p.collation); err != nil {
			return err
		}
		c.UnsetCapability(gomysql.CLIENT_QUERY_ATTRIBUTES)
		if p.caps&gomysql.CLIENT_DEPRECATE_EOF == 0 {
			c.UnsetCapability(gomysql.CLIENT_DEPRECATE_EOF)
		}
		for _, f := range []uint32{gomysql.CLIENT_FOUND_ROWS, gomysql.CLIENT_IGNORE_SPACE, gomysql.CLIENT_MULTI_STATEMENTS,
			gomysql.CLIENT_MULTI_RESULTS, gomysql.CLIENT_PS_MULTI_RESULTS, gomysql.CLIENT_SESSION_TRACK} {
			if p.caps&f != 0 {
				if err := c.SetCapability(f); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		mu.Lock()
		if gate != nil && gate.err != nil {
			err = gate.err // the gate's reason is the real one
		}
		mu.Unlock()
		return nil, fmt.Errorf("upstream login to %s as %s: %w", b.Addr, g.Username, err)
	}
	if !gate.consumed() || !gate.authOK {
		_ = gate.Close()
		return nil, fmt.Errorf("upstream login to %s: handshake did not end on a packet boundary", b.Addr)
	}
	_ = gate.conn.SetDeadline(time.Time{})
	return &upstream{
		conn: gate.conn, br: bufio.NewReaderSize(gate.conn, 64<<10), bw: bufio.NewWriterSize(gate.conn, 64<<10),
		threadID: cc.GetConnectionID(), version: gate.greeting.version, status: gate.status, db: b.Database,
		setNames: fmt.Sprintf("SET NAMES %s COLLATE %s", p.charset, p.collation),
	}, nil
}

// connect is go-mysql's ConnectWithDialer; a panic in its parsing (the
// gate checks the greeting first) fails this login, not the process.
func connect(ctx context.Context, network, addr, user, password, db string, d client.Dialer, opt client.Option) (c *client.Conn, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("go-mysql client handshake panicked: %v", r)
		}
	}()
	return client.ConnectWithDialer(ctx, network, addr, user, password, db, d, opt)
}

// Reset makes the connection fit for another client: COM_RESET_CONNECTION
// (rolls back, drops temporary tables, prepared statements, user
// variables and session variables), then the backend's database and the
// handshake's character set, which the reset does not keep. The three go
// out together and cost one round trip.
func (u *upstream) Reset(ctx context.Context) error {
	u.stmts, u.sqlStmts = nil, nil
	u.tag = dirtyTag // until the reset is known to have worked
	cmds := [][]byte{
		{gomysql.COM_RESET_CONNECTION},
		append([]byte{gomysql.COM_INIT_DB}, u.db...),
		append([]byte{gomysql.COM_QUERY}, u.setNames...),
	}
	if err := u.run(ctx, cmds); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	if u.status&gomysql.SERVER_STATUS_IN_TRANS != 0 {
		return errors.New("connection still in a transaction after COM_RESET_CONNECTION")
	}
	u.tag = 0
	return nil
}

func (u *upstream) writeCommand(payload []byte) error {
	var hdr [4]byte
	putHeader(hdr[:], len(payload), 0)
	if _, err := u.bw.Write(hdr[:]); err != nil {
		return err
	}
	_, err := u.bw.Write(payload)
	return err
}

// exec runs one statement that answers with OK or ERR (KILL).
func (u *upstream) exec(ctx context.Context, query string) error {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(5 * time.Second)
	}
	_ = u.conn.SetDeadline(dl)
	defer func() { _ = u.conn.SetDeadline(time.Time{}) }()
	if err := u.writeCommand(append([]byte{gomysql.COM_QUERY}, query...)); err != nil {
		return err
	}
	if err := u.bw.Flush(); err != nil {
		return err
	}
	_, b, err := readPacket(u.br, 1<<20)
	if err != nil {
		return err
	}
	if len(b) > 0 && b[0] == 0xff {
		return parseErrPacket(b)
	}
	return nil
}

// parseErrPacket decodes an ERR packet (protocol 4.1) into an *Error that
// can go to the client as it is.
func parseErrPacket(b []byte) *Error {
	e := &Error{Code: erUnknownError, State: "HY000", Message: "unknown error"}
	if len(b) < 3 {
		return e
	}
	e.Code = binary.LittleEndian.Uint16(b[1:])
	rest := b[3:]
	if len(rest) >= 6 && rest[0] == '#' {
		e.State = string(rest[1:6])
		rest = rest[6:]
	}
	e.Message = string(rest)
	return e
}

func (u *upstream) Close() error {
	// Say goodbye so the server logs a clean disconnect, not an abort.
	_ = u.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = u.conn.Write([]byte{1, 0, 0, 0, gomysql.COM_QUIT})
	return u.conn.Close()
}

// clientGate is the gate between go-mysql's client handshake and the
// server (see gateConn). It upgrades to TLS itself when the backend wants
// TLS, and it refuses what go-mysql would not: a server without the
// capabilities the client negotiated, and a switch to clear-text password
// authentication on a connection that is not encrypted.
type clientGate struct {
	gateConn
	tlsCfg     *tls.Config
	allowClear bool
	want       uint32 // capabilities the server must have
	greeting   *greeting
	reads      int
	writes     int
	authOK     bool
	status     uint16
}

func newClientGate(c net.Conn, tlsCfg *tls.Config, allowClear bool, want uint32) *clientGate {
	return &clientGate{gateConn: newGateConn(c), tlsCfg: tlsCfg, allowClear: allowClear, want: want}
}

func (g *clientGate) Read(p []byte) (int, error) {
	if g.inOff < len(g.in) {
		return g.serve(p), nil
	}
	if g.err != nil {
		return 0, g.err
	}
	seq, payload, err := g.readWire()
	if err == nil {
		payload, err = g.check(payload)
	}
	if err != nil {
		g.err = err
		return 0, err
	}
	g.reads++
	g.setIn(seq-g.offset, payload)
	return g.serve(p), nil
}

// check vets a server packet before go-mysql parses it, and normalizes
// what go-mysql would index blindly: it is a server we log in to with a
// secret, but a broken or hostile one must cost a failed login, not the
// process (connect also recovers, as a last resort).
func (g *clientGate) check(p []byte) ([]byte, error) {
	if len(p) == 0 {
		return nil, errors.New("empty packet from the server")
	}
	if g.reads == 0 {
		if p[0] == 0xff {
			if len(p) < 3 {
				return nil, errors.New("truncated ERR packet from the server")
			}
			return p, nil // go-mysql reports the server's refusal
		}
		gr, err := parseGreeting(p)
		if err != nil {
			return nil, fmt.Errorf("server greeting: %w", err)
		}
		g.greeting = gr
		if g.tlsCfg != nil && gr.caps&gomysql.CLIENT_SSL == 0 {
			return nil, errors.New("the server does not offer TLS, which the backend's tls mode requires")
		}
		if missing := g.want &^ gr.caps; missing != 0 {
			return nil, fmt.Errorf("the server lacks capabilities the client negotiated with dbproxy: %s", capNames(missing))
		}
		return p, nil
	}
	switch p[0] {
	case 0xfe: // auth switch request
		name, data, found := bytes.Cut(p[1:], []byte{0})
		if !found {
			return nil, errors.New("auth switch request without a NUL-terminated plugin name")
		}
		if !upstreamPluginAllowed(string(name), g.tlsCfg != nil, g.allowClear) {
			if string(name) == gomysql.AUTH_CLEAR_PASSWORD {
				return nil, fmt.Errorf("the server asked for authentication plugin %q, which would send the password in clear text over a connection that is not encrypted: set the backend's tls mode (or allow_insecure_auth)", name)
			}
			return nil, fmt.Errorf("the server asked for authentication plugin %q, which dbproxy does not support: give Vault's database users mysql_native_password, caching_sha2_password, sha256_password or ed25519", name)
		}
		if (string(name) == gomysql.AUTH_NATIVE_PASSWORD || string(name) == gomysql.AUTH_CACHING_SHA2_PASSWORD) && len(data) < 20 {
			return nil, fmt.Errorf("auth switch to %s with a %d byte scramble", name, len(data))
		}
	case gomysql.MORE_DATE_HEADER:
		switch {
		case len(p) < 2:
			return nil, errors.New("empty AuthMoreData packet from the server")
		case len(p) > 2:
			// A public key (sha256_password, caching_sha2_password
			// without TLS); go-mysql assumes a PEM RSA key.
			blk, _ := pem.Decode(p[1:])
			if blk == nil {
				return nil, errors.New("the server's public key is not PEM")
			}
			if k, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
				return nil, fmt.Errorf("the server's public key: %w", err)
			} else if _, ok := k.(*rsa.PublicKey); !ok {
				return nil, fmt.Errorf("the server's public key is a %T, not RSA", k)
			}
		}
	case 0x00:
		st, ok := okStatus(p)
		if !ok {
			return nil, errors.New("malformed OK packet from the server")
		}
		g.authOK = true
		g.status = st
		// go-mysql needs only the status; session state changes in a
		// login OK are not the client's business (it gets its own OK).
		st &^= gomysql.SERVER_SESSION_STATE_CHANGED
		return []byte{0, 0, 0, byte(st), byte(st >> 8), 0, 0}, nil
	case 0xff:
		if len(p) < 9 || p[3] != '#' {
			// Pre-4.1 form, without SQLSTATE; go-mysql reads one.
			if len(p) < 3 {
				return nil, errors.New("truncated ERR packet from the server")
			}
			return append(append([]byte{0xff, p[1], p[2], '#'}, "HY000"...), p[3:]...), nil
		}
	default:
		// go-mysql would take it for an ERR packet.
		return nil, fmt.Errorf("unexpected packet 0x%02x from the server during login", p[0])
	}
	return p, nil
}

// upstreamPluginAllowed: plugins that never reveal the password, and clear
// text over TLS (or when the operator allowed it).
func upstreamPluginAllowed(name string, secure, allowClear bool) bool {
	switch name {
	case gomysql.AUTH_NATIVE_PASSWORD, gomysql.AUTH_CACHING_SHA2_PASSWORD, gomysql.AUTH_SHA256_PASSWORD, gomysql.AUTH_MARIADB_ED25519:
		return true
	case gomysql.AUTH_CLEAR_PASSWORD:
		return secure || allowClear
	}
	return false
}

func (g *clientGate) Write(b []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	out := make([]byte, len(b))
	copy(out, b)
	err := splitPackets(out, func(pkt []byte) error {
		if g.writes == 0 && len(pkt) >= 4+sslRequestLen {
			// The handshake response: capabilities the relay does not
			// carry never reach the server.
			caps := binary.LittleEndian.Uint32(pkt[4:]) &^ forbiddenUpstream
			if g.tlsCfg != nil {
				caps |= gomysql.CLIENT_SSL
				binary.LittleEndian.PutUint32(pkt[4:], caps)
				if err := g.startTLS(pkt); err != nil {
					return err
				}
			}
			binary.LittleEndian.PutUint32(pkt[4:], caps)
		}
		g.writes++
		pkt[3] += g.offset
		return nil
	})
	if err != nil {
		g.err = err
		return 0, err
	}
	if _, err := g.conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// startTLS sends an SSLRequest (the response's first 32 bytes) and does
// the TLS handshake; the response then goes out encrypted, one sequence
// number later than go-mysql thinks.
func (g *clientGate) startTLS(resp []byte) error {
	req := make([]byte, 4+sslRequestLen)
	copy(req[4:], resp[4:4+sslRequestLen])
	putHeader(req, sslRequestLen, resp[3])
	if _, err := g.raw.Write(req); err != nil {
		return err
	}
	tc := tls.Client(&budgetConn{Conn: g.raw, g: &g.gateConn}, g.tlsCfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("tls handshake with the server: %w", err)
	}
	g.conn = tc
	g.offset = 1
	return nil
}

// greeting is the server's HandshakeV10.
type greeting struct {
	version  string
	threadID uint32
	caps     uint32
	status   uint16
	plugin   string
}

// parseGreeting checks a HandshakeV10 against what go-mysql's parser
// indexes without bounds checks.
func parseGreeting(p []byte) (*greeting, error) {
	if p[0] != 10 {
		return nil, fmt.Errorf("protocol version %d, want 10", p[0])
	}
	end := bytes.IndexByte(p[1:], 0)
	if end < 0 {
		return nil, errors.New("no server version")
	}
	gr := &greeting{version: string(p[1 : 1+end])}
	pos := 1 + end + 1
	if len(p) < pos+4+8+1+2 {
		return nil, errors.New("truncated")
	}
	gr.threadID = binary.LittleEndian.Uint32(p[pos:])
	pos += 4 + 8
	if p[pos] != 0 {
		return nil, errors.New("no filler after the scramble")
	}
	pos++
	gr.caps = uint32(binary.LittleEndian.Uint16(p[pos:]))
	pos += 2
	if gr.caps&gomysql.CLIENT_PROTOCOL_41 == 0 {
		return nil, errors.New("the server does not speak protocol 4.1")
	}
	if len(p) < pos+1+2+2+1+10 {
		return nil, errors.New("truncated")
	}
	pos++ // character set
	gr.status = binary.LittleEndian.Uint16(p[pos:])
	pos += 2
	gr.caps |= uint32(binary.LittleEndian.Uint16(p[pos:])) << 16
	pos += 2
	authLen := int(p[pos])
	pos += 1 + 10
	// Every password plugin wants the 20-byte scramble, whose second
	// part only a CLIENT_SECURE_CONNECTION greeting has.
	if gr.caps&gomysql.CLIENT_SECURE_CONNECTION == 0 {
		return nil, errors.New("the server does not offer CLIENT_SECURE_CONNECTION")
	}
	if gr.caps&gomysql.CLIENT_PLUGIN_AUTH == 0 && authLen > 0 {
		return nil, errors.New("auth data length without CLIENT_PLUGIN_AUTH")
	}
	pos += max(authLen-8, 13)
	if len(p) < pos {
		return nil, errors.New("truncated scramble")
	}
	if gr.caps&gomysql.CLIENT_PLUGIN_AUTH != 0 {
		i := bytes.IndexByte(p[pos:], 0)
		if i < 0 {
			return nil, errors.New("auth plugin name is not NUL-terminated")
		}
		gr.plugin = string(p[pos : pos+i])
	}
	return gr, nil
}

func capNames(caps uint32) string {
	var names []string
	for bit := uint32(1); bit != 0; bit <<= 1 {
		if caps&bit != 0 {
			if n, ok := gomysql.CapNames[bit]; ok {
				names = append(names, n)
			} else {
				names = append(names, fmt.Sprintf("0x%x", bit))
			}
		}
	}
	return strings.Join(names, ", ")
}
