package mysql

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
)

// Handshake limits. Handshake packets are small (a client's connection
// attributes are at most 64 KiB); the budget also counts TLS bytes, so
// nobody can make the proxy buffer much before it knows who they are.
const (
	maxHandshakePacket = 128 << 10
	handshakeBudget    = 1 << 20
)

// collationUTF8MB4GeneralCI is the greeting's collation: one that MySQL
// and MariaDB both know by this id.
const collationUTF8MB4GeneralCI = 45

// Capabilities. proxyCaps are those dbproxy offers clients: each is
// either layout-neutral or one the relay understands and passes upstream
// unchanged. Compression, LOCAL INFILE, query attributes, optional result
// set metadata and expired-password sandboxing are not offered.
const (
	proxyCaps = gomysql.CLIENT_LONG_PASSWORD | gomysql.CLIENT_FOUND_ROWS | gomysql.CLIENT_LONG_FLAG |
		gomysql.CLIENT_CONNECT_WITH_DB | gomysql.CLIENT_IGNORE_SPACE | gomysql.CLIENT_PROTOCOL_41 |
		gomysql.CLIENT_TRANSACTIONS | gomysql.CLIENT_SECURE_CONNECTION | gomysql.CLIENT_MULTI_STATEMENTS |
		gomysql.CLIENT_MULTI_RESULTS | gomysql.CLIENT_PS_MULTI_RESULTS | gomysql.CLIENT_PLUGIN_AUTH |
		gomysql.CLIENT_CONNECT_ATTRS | gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA |
		gomysql.CLIENT_SESSION_TRACK | gomysql.CLIENT_DEPRECATE_EOF
	// upstreamCaps are the client-negotiated capabilities the upstream
	// session is opened with, so that both legs speak the same protocol.
	upstreamCaps = gomysql.CLIENT_FOUND_ROWS | gomysql.CLIENT_IGNORE_SPACE | gomysql.CLIENT_MULTI_STATEMENTS |
		gomysql.CLIENT_MULTI_RESULTS | gomysql.CLIENT_PS_MULTI_RESULTS | gomysql.CLIENT_SESSION_TRACK |
		gomysql.CLIENT_DEPRECATE_EOF
	// forbiddenUpstream never reach the server, whatever go-mysql sends.
	forbiddenUpstream = gomysql.CLIENT_LOCAL_FILES | gomysql.CLIENT_COMPRESS | gomysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM |
		gomysql.CLIENT_QUERY_ATTRIBUTES | gomysql.CLIENT_OPTIONAL_RESULTSET_METADATA
)

// gateConn is what go-mysql reads and writes during a handshake instead
// of the socket. It reads whole packets from the socket (never a byte
// past the packet go-mysql asked for), so whatever the peer sends after
// the handshake is still unread when go-mysql is done; it bounds sizes;
// and it does TLS itself, so it keeps the *tls.Conn (and every byte it
// buffered) for the relay. go-mysql never sees the TLS upgrade: packets
// after it are renumbered by offset in both directions.
type gateConn struct {
	raw    net.Conn
	conn   net.Conn // raw, or TLS over raw after the upgrade
	offset byte     // wire sequence = go-mysql's sequence + offset
	budget int

	in    []byte // the packet go-mysql is reading (header included)
	inOff int
	err   error // sticky; once set, the peer has been told
}

func newGateConn(c net.Conn) gateConn {
	return gateConn{raw: c, conn: c, budget: handshakeBudget}
}

func (g *gateConn) readWire() (byte, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(g.conn, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := payloadLen(hdr[:])
	g.budget -= 4 + n
	if n > maxHandshakePacket || g.budget < 0 {
		return hdr[3], nil, &Error{Code: erNetPacketTooLarge, State: "08S01",
			Message: fmt.Sprintf("handshake packet of %d bytes: dbproxy accepts at most %d bytes per handshake packet", n, maxHandshakePacket)}
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(g.conn, payload); err != nil {
		return hdr[3], nil, err
	}
	return hdr[3], payload, nil
}

// serve hands go-mysql the packet in g.in, at most up to its end.
func (g *gateConn) serve(p []byte) int {
	n := copy(p, g.in[g.inOff:])
	g.inOff += n
	return n
}

func (g *gateConn) setIn(seq byte, payload []byte) {
	g.in = make([]byte, 4+len(payload))
	putHeader(g.in, len(payload), seq)
	copy(g.in[4:], payload)
	g.inOff = 0
}

// consumed reports that go-mysql read every byte the gate gave it.
func (g *gateConn) consumed() bool { return g.inOff == len(g.in) }

// splitPackets calls f for each whole packet in b; go-mysql writes whole
// packets, one or more per call.
func splitPackets(b []byte, f func(pkt []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 || len(b) < 4+payloadLen(b) {
			return errors.New("handshake write is not a whole packet")
		}
		n := 4 + payloadLen(b)
		if err := f(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func (g *gateConn) Close() error                       { return g.conn.Close() }
func (g *gateConn) LocalAddr() net.Addr                { return g.raw.LocalAddr() }
func (g *gateConn) RemoteAddr() net.Addr               { return g.raw.RemoteAddr() }
func (g *gateConn) SetDeadline(t time.Time) error      { return g.conn.SetDeadline(t) }
func (g *gateConn) SetReadDeadline(t time.Time) error  { return g.conn.SetReadDeadline(t) }
func (g *gateConn) SetWriteDeadline(t time.Time) error { return g.conn.SetWriteDeadline(t) }

// serverGate is the gate between go-mysql's server handshake and a client.
type serverGate struct {
	gateConn
	tlsCfg   *tls.Config
	tlsState *tls.ConnectionState
	caps     uint32 // what the greeting offers
	connID   uint32
	wantSeq  byte // wire sequence the client's next packet must have
	writes   int
	resp     *handshakeResponse
}

func newServerGate(c net.Conn, tlsCfg *tls.Config, connID uint32) *serverGate {
	g := &serverGate{gateConn: newGateConn(c), tlsCfg: tlsCfg, connID: connID, caps: proxyCaps}
	if tlsCfg != nil {
		g.caps |= gomysql.CLIENT_SSL
	}
	return g
}

// fail tells the client e in an ERR packet and stops the handshake; what
// go-mysql writes afterwards is dropped.
func (g *serverGate) fail(e *Error) error {
	if g.err == nil {
		_, _ = g.conn.Write(e.packet(g.wantSeq))
		g.err = e
	}
	return g.err
}

func (g *serverGate) Read(p []byte) (int, error) {
	if g.inOff < len(g.in) {
		return g.serve(p), nil
	}
	if g.err != nil {
		return 0, g.err
	}
	seq, payload, err := g.next()
	if err != nil {
		return 0, err
	}
	if g.resp == nil && g.tlsState == nil && len(payload) == sslRequestLen {
		if err := g.startTLS(payload); err != nil {
			return 0, err
		}
		if seq, payload, err = g.next(); err != nil {
			return 0, err
		}
	}
	if g.resp == nil {
		r, err := parseHandshakeResponse(payload)
		if err != nil {
			return 0, g.fail(&Error{Code: erHandshake, State: "08S01", Message: "Bad handshake: " + err.Error(), Err: err})
		}
		g.resp = r
	}
	g.wantSeq = seq + 1
	g.setIn(seq-g.offset, payload)
	return g.serve(p), nil
}

// next reads the client's next packet and checks its size and sequence
// number.
func (g *serverGate) next() (byte, []byte, error) {
	seq, payload, err := g.readWire()
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			return 0, nil, g.fail(pe)
		}
		g.err = err
		return 0, nil, err
	}
	if seq != g.wantSeq {
		return 0, nil, g.fail(outOfOrder(g.wantSeq, seq))
	}
	return seq, payload, nil
}

// sslRequestLen is the payload length of an SSLRequest: the first 32
// bytes of a handshake response, without the user name.
const sslRequestLen = 32

// startTLS answers an SSLRequest with a TLS handshake. go-mysql sees none
// of it: the handshake response that follows is renumbered to look like
// the first packet of the client.
func (g *serverGate) startTLS(req []byte) error {
	if g.tlsCfg == nil {
		return g.fail(&Error{Code: erHandshake, State: "08S01", Message: "Bad handshake: this dbproxy listener does not offer TLS; connect without SSL"})
	}
	if binary.LittleEndian.Uint32(req)&gomysql.CLIENT_SSL == 0 {
		return g.fail(&Error{Code: erHandshake, State: "08S01", Message: "Bad handshake: SSL request without CLIENT_SSL"})
	}
	tc := tls.Server(&budgetConn{Conn: g.raw, g: &g.gateConn}, g.tlsCfg)
	if err := tc.Handshake(); err != nil {
		g.err = fmt.Errorf("tls handshake: %w", err)
		return g.err
	}
	st := tc.ConnectionState()
	g.tlsState = &st
	g.conn = tc
	g.offset = 1
	g.wantSeq++
	return nil
}

func (g *serverGate) Write(b []byte) (int, error) {
	if g.err != nil {
		return len(b), nil
	}
	out := make([]byte, len(b))
	copy(out, b)
	err := splitPackets(out, func(pkt []byte) error {
		pkt[3] += g.offset
		if g.writes == 0 {
			if err := rewriteGreeting(pkt[4:], g.caps, g.connID); err != nil {
				return err
			}
		}
		g.writes++
		g.wantSeq = pkt[3] + 1
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

// budgetConn charges the bytes TLS reads to the gate's budget.
type budgetConn struct {
	net.Conn
	g *gateConn
}

func (b *budgetConn) Read(p []byte) (int, error) {
	if b.g.budget <= 0 {
		return 0, errors.New("handshake budget exceeded")
	}
	n, err := b.Conn.Read(p[:min(len(p), b.g.budget)])
	b.g.budget -= n
	return n, err
}

// rewriteGreeting puts dbproxy's capabilities, connection id and status
// into go-mysql's greeting (HandshakeV10), whose are fixed: it offers no
// DEPRECATE_EOF, MULTI_RESULTS or SESSION_TRACK and numbers connections
// itself.
func rewriteGreeting(p []byte, caps, connID uint32) error {
	if len(p) < 1 || p[0] != 10 {
		return errors.New("greeting is not protocol version 10")
	}
	end := bytes.IndexByte(p[1:], 0)
	if end < 0 {
		return errors.New("greeting without server version")
	}
	pos := 1 + end + 1
	if len(p) < pos+4+8+1+2+1+2+2 {
		return errors.New("greeting too short")
	}
	binary.LittleEndian.PutUint32(p[pos:], connID)
	pos += 4 + 8 + 1
	binary.LittleEndian.PutUint16(p[pos:], uint16(caps))
	pos += 2 + 1
	binary.LittleEndian.PutUint16(p[pos:], gomysql.SERVER_STATUS_AUTOCOMMIT)
	pos += 2
	binary.LittleEndian.PutUint16(p[pos:], uint16(caps>>16))
	return nil
}

// handshakeResponse is the client's HandshakeResponse41.
type handshakeResponse struct {
	caps      uint32
	collation uint8
	user      string
	authData  []byte
	db        string
	plugin    string
	attrs     map[string]string
}

// parseHandshakeResponse checks a HandshakeResponse41 against everything
// go-mysql's parser indexes without bounds checks (it panics on a user
// name, database or plugin name without its NUL and on a truncated
// length-encoded integer) and returns its fields. It is strict where
// go-mysql is: protocol 4.1 and secure connection are required.
func parseHandshakeResponse(p []byte) (*handshakeResponse, error) {
	if len(p) < sslRequestLen+1 {
		return nil, fmt.Errorf("handshake response of %d bytes is too short", len(p))
	}
	r := &handshakeResponse{caps: binary.LittleEndian.Uint32(p), collation: p[8], plugin: gomysql.AUTH_NATIVE_PASSWORD}
	if r.caps&gomysql.CLIENT_PROTOCOL_41 == 0 {
		return nil, errors.New("dbproxy needs a client that speaks protocol 4.1 (CLIENT_PROTOCOL_41)")
	}
	if r.caps&gomysql.CLIENT_SECURE_CONNECTION == 0 {
		return nil, errors.New("dbproxy needs a client with CLIENT_SECURE_CONNECTION")
	}
	pos := sslRequestLen
	cstr := func(what string) (string, error) {
		i := bytes.IndexByte(p[pos:], 0)
		if i < 0 {
			return "", fmt.Errorf("%s is not NUL-terminated", what)
		}
		s := string(p[pos : pos+i])
		pos += i + 1
		return s, nil
	}
	var err error
	if r.user, err = cstr("user name"); err != nil {
		return nil, err
	}
	var n uint64
	if r.caps&gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
		var m int
		var ok bool
		if n, m, ok = lenenc(p[pos:]); !ok {
			return nil, errors.New("malformed length of the auth data")
		}
		pos += m
	} else {
		if pos >= len(p) {
			return nil, errors.New("auth data missing")
		}
		n = uint64(p[pos])
		pos++
	}
	if n > uint64(len(p)-pos) {
		return nil, errors.New("auth data longer than the packet")
	}
	r.authData = p[pos : pos+int(n)]
	pos += int(n)
	if r.caps&gomysql.CLIENT_CONNECT_WITH_DB != 0 && pos < len(p) {
		if r.db, err = cstr("database name"); err != nil {
			return nil, err
		}
	}
	if r.caps&gomysql.CLIENT_PLUGIN_AUTH != 0 {
		if r.plugin, err = cstr("auth plugin name"); err != nil {
			return nil, err
		}
	}
	if r.caps&gomysql.CLIENT_CONNECT_ATTRS != 0 && pos < len(p) {
		total, m, ok := lenenc(p[pos:])
		if !ok || total > uint64(len(p)-pos-m) {
			return nil, errors.New("malformed connection attributes length")
		}
		pos += m
		// go-mysql reads attributes up to the end of the packet, not of
		// the attribute block; check what it will read.
		r.attrs = map[string]string{}
		var key string
		for i := 0; pos < len(p); i++ {
			if p[pos] == 0xfb {
				break
			}
			l, m, ok := lenenc(p[pos:])
			if !ok || l > uint64(len(p)-pos-m) {
				return nil, errors.New("malformed connection attribute")
			}
			s := string(p[pos+m : pos+m+int(l)])
			pos += m + int(l)
			if i%2 == 0 {
				key = s
			} else {
				r.attrs[key] = s
			}
		}
	}
	return r, nil
}

// emptyPassword: what clients send when they have no password.
func emptyPassword(b []byte) bool { return len(b) == 0 || (len(b) == 1 && b[0] == 0) }

// acceptIdentity is go-mysql's AuthenticationProvider for dbproxy: the
// client is who its listener, peer uid or certificate says, so any
// password (normally none) is accepted, and clear text is never asked for.
type acceptIdentity struct {
	greeting string // the plugin the greeting names
}

func (acceptIdentity) Validate(plugin string) bool {
	return plugin == gomysql.AUTH_NATIVE_PASSWORD || plugin == gomysql.AUTH_CACHING_SHA2_PASSWORD
}

func (a acceptIdentity) Authenticate(c *server.Conn, plugin string, authData []byte) error {
	if plugin != a.greeting {
		// The client chose another plugin than the greeting's. Some
		// clients (libmariadb) then send no auth data and wait for an
		// AuthSwitchRequest with a scramble for their plugin, as a server
		// would send; clients that did answer accept one too.
		sw := make([]byte, 4, 4+1+len(plugin)+1+21)
		sw = append(sw, gomysql.EOF_HEADER)
		sw = append(sw, plugin...)
		sw = append(sw, 0)
		sw = append(sw, gomysql.RandomBuf(20)...)
		sw = append(sw, 0)
		if err := c.WritePacket(sw); err != nil {
			return err
		}
		var err error
		if authData, err = c.ReadPacket(); err != nil {
			return err
		}
	}
	if plugin == gomysql.AUTH_CACHING_SHA2_PASSWORD && !emptyPassword(authData) {
		// A client that sent a scramble waits for "fast auth success"
		// before the OK; one without a password expects the OK at once.
		return c.WritePacket([]byte{0, 0, 0, 0, gomysql.MORE_DATE_HEADER, gomysql.CACHE_SHA2_FAST_AUTH})
	}
	return nil
}

func throwawayKey(plugin string) *rsa.PrivateKey {
	if plugin != gomysql.AUTH_CACHING_SHA2_PASSWORD {
		return nil
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(fmt.Sprintf("rsa key: %v", err))
	}
	return k
}

// clientAuth is go-mysql's per-connection AuthenticationHandler: it names
// the plugin the client already chose (no auth switch round trip) and runs
// dbproxy's login (identity, grant, upstream) before go-mysql sends OK.
type clientAuth struct {
	s        *session
	g        *serverGate
	lo       ListenerOptions
	loginErr error
}

func (a *clientAuth) GetCredential(string) (server.Credential, bool, error) {
	plugin := gomysql.AUTH_NATIVE_PASSWORD
	if a.lo.Token == nil && a.g.resp != nil && a.g.resp.plugin == gomysql.AUTH_CACHING_SHA2_PASSWORD {
		plugin = gomysql.AUTH_CACHING_SHA2_PASSWORD
	}
	// acceptIdentity never compares this; go-mysql only needs one.
	return server.Credential{Passwords: []string{"unused"}, AuthPluginName: plugin}, true, nil
}

func (a *clientAuth) OnAuthSuccess(c *server.Conn) error {
	lo, err := a.tokenListener(c) // password.go
	if err != nil {
		a.loginErr = err
		return asClientError(a.s.backendName(), err).myError()
	}
	if err := a.s.login(lo, a.g); err != nil {
		a.loginErr = err
		return asClientError(a.s.backendName(), err).myError()
	}
	c.SetStatus(uint16(a.s.status.Load()))
	return nil
}

func (a *clientAuth) OnAuthFailure(_ *server.Conn, err error) {
	if a.loginErr == nil {
		a.loginErr = err
	}
}

// noCommands is go-mysql's command Handler; the relay handles commands,
// so only UseDB (the database in the handshake) is ever called.
type noCommands struct{ server.EmptyHandler }

func (noCommands) UseDB(string) error { return nil }

// clientHandshake runs go-mysql's server handshake over the gate. A panic
// in go-mysql's parsing (the gate checks what it knows of) ends this
// connection, not the process.
func clientHandshake(gs *server.Server, g *serverGate, a *clientAuth) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("go-mysql handshake panicked: %v", r)
		}
	}()
	_, err = gs.NewCustomizedConn(g, a, noCommands{})
	return err
}
