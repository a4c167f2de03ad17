package mysql

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/identity"
)

// Capabilities of a typical modern client.
const testClientCaps = gomysql.CLIENT_LONG_PASSWORD | gomysql.CLIENT_LONG_FLAG | gomysql.CLIENT_CONNECT_WITH_DB |
	gomysql.CLIENT_PROTOCOL_41 | gomysql.CLIENT_TRANSACTIONS | gomysql.CLIENT_SECURE_CONNECTION |
	gomysql.CLIENT_MULTI_RESULTS | gomysql.CLIENT_PLUGIN_AUTH | gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA |
	gomysql.CLIENT_CONNECT_ATTRS | gomysql.CLIENT_DEPRECATE_EOF

// handshakeResponse41 builds a HandshakeResponse41 payload.
func handshakeResponse41(caps uint32, user string, auth []byte, db, plugin string, attrs ...string) []byte {
	b := make([]byte, 32)
	binary.LittleEndian.PutUint32(b, caps)
	b[8] = collationUTF8MB4GeneralCI
	b = append(b, user...)
	b = append(b, 0)
	if caps&gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
		b = append(b, gomysql.PutLengthEncodedInt(uint64(len(auth)))...)
	} else {
		b = append(b, byte(len(auth)))
	}
	b = append(b, auth...)
	if caps&gomysql.CLIENT_CONNECT_WITH_DB != 0 {
		b = append(b, db...)
		b = append(b, 0)
	}
	if caps&gomysql.CLIENT_PLUGIN_AUTH != 0 {
		b = append(b, plugin...)
		b = append(b, 0)
	}
	if caps&gomysql.CLIENT_CONNECT_ATTRS != 0 {
		var kv []byte
		for _, a := range attrs {
			kv = append(kv, gomysql.PutLengthEncodedString([]byte(a))...)
		}
		b = append(b, gomysql.PutLengthEncodedInt(uint64(len(kv)))...)
		b = append(b, kv...)
	}
	return b
}

// withAttrs is a response without attributes followed by raw attribute
// bytes, with CLIENT_CONNECT_ATTRS set.
func withAttrs(p []byte, raw ...byte) []byte {
	p = append(p, raw...)
	binary.LittleEndian.PutUint32(p, binary.LittleEndian.Uint32(p)|gomysql.CLIENT_CONNECT_ATTRS)
	return p
}

func TestParseHandshakeResponse(t *testing.T) {
	good := handshakeResponse41(testClientCaps, "app", []byte("0123456789abcdefghij"), "orders", "mysql_native_password",
		"_client_name", "libmariadb", "program_name", "mysql")
	r, err := parseHandshakeResponse(good)
	if err != nil {
		t.Fatal(err)
	}
	if r.user != "app" || r.db != "orders" || r.plugin != "mysql_native_password" || string(r.authData) != "0123456789abcdefghij" ||
		r.attrs["program_name"] != "mysql" || r.attrs["_client_name"] != "libmariadb" || r.collation != collationUTF8MB4GeneralCI {
		t.Fatalf("parsed %+v", r)
	}

	old := testClientCaps &^ (gomysql.CLIENT_PLUGIN_AUTH | gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | gomysql.CLIENT_CONNECT_ATTRS)
	r, err = parseHandshakeResponse(handshakeResponse41(old, "u", nil, "d", ""))
	if err != nil || r.plugin != gomysql.AUTH_NATIVE_PASSWORD || r.db != "d" {
		t.Fatalf("client without plugin auth: %+v, %v", r, err)
	}
	// A database may be left out entirely at the end of the packet.
	noDB := handshakeResponse41(testClientCaps&^(gomysql.CLIENT_PLUGIN_AUTH|gomysql.CLIENT_CONNECT_ATTRS), "u", nil, "", "")
	noDB = noDB[:len(noDB)-1]
	if r, err = parseHandshakeResponse(noDB); err != nil || r.db != "" {
		t.Fatalf("no database: %+v, %v", r, err)
	}

	bad := []struct {
		name string
		p    []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"SSL request only", good[:32], "too short"},
		{"no protocol 4.1", handshakeResponse41(testClientCaps&^gomysql.CLIENT_PROTOCOL_41, "u", nil, "d", "p"), "4.1"},
		{"no secure connection", handshakeResponse41(testClientCaps&^gomysql.CLIENT_SECURE_CONNECTION, "u", nil, "d", "p"), "SECURE"},
		{"user without NUL", append(good[:32:32], "app"...), "user name"},
		{"auth length beyond the packet", append(append(good[:32:32], "u\x00"...), 0x30, 'x'), "auth data"},
		{"truncated length-encoded auth length", append(append(good[:32:32], "u\x00"...), 0xfc, 1), "length of the auth data"},
		{"NULL auth length", append(append(good[:32:32], "u\x00"...), 0xfb), "length of the auth data"},
		{"database without NUL", append(append(good[:32:32], "u\x00"...), 0, 'd', 'b'), "database"},
		{"plugin without NUL", append(append(good[:32:32], "u\x00"...), 0, 'd', 0, 'p'), "plugin"},
		{"attributes longer than the packet", withAttrs(handshakeResponse41(testClientCaps&^gomysql.CLIENT_CONNECT_ATTRS, "u", nil, "d", "p"), 9, 1, 'a'), "attributes length"},
		{"attribute past the end", withAttrs(handshakeResponse41(testClientCaps&^gomysql.CLIENT_CONNECT_ATTRS, "u", nil, "d", "p"), 2, 5, 'a'), "attribute"},
		{"truncated attribute length", withAttrs(handshakeResponse41(testClientCaps&^gomysql.CLIENT_CONNECT_ATTRS, "u", nil, "d", "p"), 2, 0xfd, 1), "attribute"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseHandshakeResponse(tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one about %q", err, tt.want)
			}
		})
	}
}

func TestRewriteGreeting(t *testing.T) {
	// A greeting as go-mysql writes it: version, id, scramble, caps...
	g := []byte{10}
	g = append(g, "8.0.11-dbproxy\x00"...)
	g = append(g, 1, 0, 0, 0)             // connection id
	g = append(g, 1, 2, 3, 4, 5, 6, 7, 8) // scramble 1
	g = append(g, 0, 0xff, 0xff, 45, 0, 0, 0xff, 0xff, 21)
	g = append(g, make([]byte, 10)...)
	g = append(g, "0123456789ab\x00mysql_native_password\x00"...)
	if err := rewriteGreeting(g, proxyCaps|gomysql.CLIENT_SSL, 1<<30|7); err != nil {
		t.Fatal(err)
	}
	gr, err := parseGreeting(g)
	if err != nil {
		t.Fatal(err)
	}
	if gr.caps != proxyCaps|gomysql.CLIENT_SSL || gr.threadID != 1<<30|7 || gr.status != gomysql.SERVER_STATUS_AUTOCOMMIT ||
		gr.version != "8.0.11-dbproxy" || gr.plugin != "mysql_native_password" {
		t.Fatalf("rewritten greeting parses as %+v", gr)
	}
	if err := rewriteGreeting(g[:20], proxyCaps, 1); err == nil {
		t.Fatal("short greeting rewritten")
	}
}

// pipeClient is the client end of a handshake with the gate and go-mysql.
type pipeClient struct {
	c   net.Conn
	seq byte
}

func (p *pipeClient) read(t testing.TB) (byte, []byte, error) {
	t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	seq, b, err := readPacket(p.c, 1<<24)
	p.seq = seq + 1
	return seq, b, err
}

func (p *pipeClient) write(payload []byte) error {
	b := make([]byte, 4+len(payload))
	putHeader(b, len(payload), p.seq)
	copy(b[4:], payload)
	_ = p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := p.c.Write(b)
	p.seq++
	return err
}

// refusingServer identifies every client as "app" and has no backends:
// a handshake runs up to the login and ends with ERR 1044, 1045 or 1046,
// never dialing anything.
func refusingServer() *Server {
	return NewServer(Options{Log: zap.NewNop(), Backends: map[string]*Backend{}, StartupTimeout: 5 * time.Second})
}

func appListener(tc *tls.Config, requireTLS bool) ListenerOptions {
	return ListenerOptions{Name: "test", TLS: tc, RequireTLS: requireTLS,
		Authenticate: func(net.Conn, *tls.ConnectionState) (identity.Identity, error) {
			return identity.Identity{Name: "app", Method: identity.MethodListener}, nil
		}}
}

// handshakeOverPipe serves one connection and returns the client end.
func handshakeOverPipe(t testing.TB, srv *Server, lo ListenerOptions) (*pipeClient, chan struct{}) {
	c, sc := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); srv.handle(sc, lo) }()
	t.Cleanup(func() { c.Close(); <-done })
	return &pipeClient{c: c}, done
}

func errCode(b []byte) uint16 {
	if len(b) < 3 || b[0] != 0xff {
		return 0
	}
	return binary.LittleEndian.Uint16(b[1:])
}

func TestClientHandshakeRefusals(t *testing.T) {
	srv := refusingServer()
	tests := []struct {
		name string
		resp []byte
		seq  byte
		want uint16
	}{
		{"unknown backend", handshakeResponse41(testClientCaps, "app", nil, "nosuch", "mysql_native_password"), 1, erDBAccessDenied},
		{"no database", handshakeResponse41(testClientCaps, "app", nil, "", "mysql_native_password"), 1, erNoDB},
		{"caching_sha2 client, unknown backend", handshakeResponse41(testClientCaps, "app", bytes.Repeat([]byte{1}, 32), "nosuch", "caching_sha2_password"), 1, erDBAccessDenied},
		{"malformed response", []byte{0xff, 0xff}, 1, erHandshake},
		{"zero-length response", nil, 1, erHandshake},
		{"sequence out of order", handshakeResponse41(testClientCaps, "app", nil, "x", "mysql_native_password"), 7, erNetPacketsOutOfOrder},
		{"SSL request where TLS is not offered", handshakeResponse41(testClientCaps|gomysql.CLIENT_SSL, "", nil, "", "")[:32], 1, erHandshake},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := handshakeOverPipe(t, srv, appListener(nil, false))
			_, g, err := p.read(t)
			if err != nil {
				t.Fatal(err)
			}
			gr, err := parseGreeting(g)
			if err != nil || gr.caps != proxyCaps || gr.threadID < 1<<30 {
				t.Fatalf("greeting %+v, %v", gr, err)
			}
			p.seq = tt.seq
			if err := p.write(tt.resp); err != nil {
				t.Fatal(err)
			}
			_, b, err := p.read(t)
			if err != nil {
				t.Fatal(err)
			}
			if b[0] == 0xfe {
				// caching_sha2 after a native greeting: the proxy asks
				// the client to switch to its own plugin.
				if !bytes.HasPrefix(b[1:], []byte("caching_sha2_password\x00")) || len(b) != 1+22+21 {
					t.Fatalf("auth switch %q", b)
				}
				if err := p.write(nil); err != nil {
					t.Fatal(err)
				}
				_, b, err = p.read(t)
				if err != nil {
					t.Fatal(err)
				}
			}
			if errCode(b) != tt.want {
				t.Fatalf("got %q, want ERR %d", b, tt.want)
			}
			if _, _, err := p.read(t); err == nil {
				t.Fatal("connection still open after the ERR")
			}
		})
	}
}

func TestClientHandshakeTLSRequired(t *testing.T) {
	srv := refusingServer()
	p, _ := handshakeOverPipe(t, srv, appListener(testServerTLS(t), true))
	_, g, _ := p.read(t)
	if gr, _ := parseGreeting(g); gr == nil || gr.caps&gomysql.CLIENT_SSL == 0 {
		t.Fatalf("greeting does not offer TLS: %q", g)
	}
	if err := p.write(handshakeResponse41(testClientCaps, "app", nil, "appdb", "mysql_native_password")); err != nil {
		t.Fatal(err)
	}
	_, b, _ := p.read(t)
	if errCode(b) != erSecureTransportRequired || !strings.Contains(string(b), "requires TLS") {
		t.Fatalf("plaintext on a TLS-required listener: %q", b)
	}
}

func TestClientHandshakeOverTLS(t *testing.T) {
	srv := refusingServer()
	p, _ := handshakeOverPipe(t, srv, appListener(testServerTLS(t), true))
	if _, _, err := p.read(t); err != nil {
		t.Fatal(err)
	}
	resp := handshakeResponse41(testClientCaps|gomysql.CLIENT_SSL, "app", nil, "nosuch", "mysql_native_password")
	if err := p.write(resp[:32]); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(p.c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test server
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	p.c = tc
	p.seq = 2
	if err := p.write(resp); err != nil {
		t.Fatal(err)
	}
	seq, b, err := p.read(t)
	if err != nil {
		t.Fatal(err)
	}
	// The refusal comes over TLS with the client's numbering (go-mysql
	// numbered it 2, the gate adds the SSLRequest).
	if seq != 3 || errCode(b) != erDBAccessDenied {
		t.Fatalf("over TLS: seq %d, %q", seq, b)
	}
}

func TestGateReadsNoFurtherThanTheHandshake(t *testing.T) {
	// A client that sends its first command right behind the handshake
	// response: go-mysql must not swallow it. The gate is read through a
	// bufio.Reader larger than both packets, as go-mysql does.
	c, sc := net.Pipe()
	defer c.Close()
	g := newServerGate(sc, nil, 1)
	g.wantSeq = 1 // as after the greeting
	resp := handshakeResponse41(testClientCaps, "app", nil, "db", "mysql_native_password")
	cmd := []byte{3, 's', 'e', 'l', 'e', 'c', 't', ' ', '1'}
	go func() {
		b := make([]byte, 4+len(resp), 8+len(resp)+len(cmd))
		putHeader(b, len(resp), 1)
		copy(b[4:], resp)
		h := make([]byte, 4)
		putHeader(h, len(cmd), 0)
		b = append(append(b, h...), cmd...)
		_, _ = c.Write(b)
	}()
	buf := make([]byte, 64<<10)
	n, err := g.Read(buf)
	if err != nil || n != 4+len(resp) {
		t.Fatalf("first read: %d, %v", n, err)
	}
	if !g.consumed() {
		t.Fatal("gate not consumed after reading the whole packet")
	}
	// The command is still in the connection.
	_ = sc.SetReadDeadline(time.Now().Add(time.Second))
	seq, b, err := readPacket(sc, 100)
	if err != nil || seq != 0 || !bytes.Equal(b, cmd) {
		t.Fatalf("command after the handshake: %d %q %v", seq, b, err)
	}
}

func TestGateBudget(t *testing.T) {
	c, sc := net.Pipe()
	defer c.Close()
	g := newServerGate(sc, nil, 1)
	g.wantSeq = 1
	go func() {
		h := make([]byte, 4)
		putHeader(h, maxPayload, 1)
		_, _ = c.Write(h)
		_, _ = io.Copy(io.Discard, c) // the ERR
	}()
	_, err := g.Read(make([]byte, 100))
	var e *Error
	if !errors.As(err, &e) || e.Code != erNetPacketTooLarge {
		t.Fatalf("16 MiB handshake packet: %v", err)
	}
}
