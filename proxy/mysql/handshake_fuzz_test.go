package mysql

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"
)

// FuzzClientHandshake sends arbitrary bytes as the client's handshake
// response (and as its answer to an auth switch) through the gate and
// go-mysql's server handshake, as dbproxy runs them before it knows who
// the client is. It checks that parseHandshakeResponse never panics, that
// go-mysql never panics on what reaches it (clientHandshake would report a
// recovered panic), and that the two agree: a response the gate accepts
// from a mysql_native_password client gets as far as dbproxy's login (which
// refuses it here: the server has no backends), and a malformed one is
// refused by the gate with an ERR of its own.
func FuzzClientHandshake(f *testing.F) {
	caps := testClientCaps
	seed := func(resp []byte, seq byte, reply []byte) { f.Add(resp, seq, reply) }
	seed(handshakeResponse41(caps, "app", nil, "appdb", "mysql_native_password"), 1, nil)
	seed(handshakeResponse41(caps, "app", make([]byte, 20), "appdb", "mysql_native_password",
		"_client_name", "libmariadb", "_os", "Linux", "program_name", "mysql"), 1, nil)
	seed(handshakeResponse41(caps, "app", make([]byte, 32), "nosuch", "caching_sha2_password"), 1, []byte{})
	seed(handshakeResponse41(caps, "app", nil, "appdb", "dialog"), 1, []byte("secret\x00"))
	seed(handshakeResponse41(caps&^(gomysql.CLIENT_PLUGIN_AUTH|gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA|gomysql.CLIENT_CONNECT_ATTRS), "u", nil, "d", ""), 1, nil)
	seed(handshakeResponse41(caps|gomysql.CLIENT_SSL, "", nil, "", "")[:32], 1, nil)
	seed(handshakeResponse41(caps, "app", nil, "appdb", "mysql_native_password"), 4, nil)
	seed(withAttrs(handshakeResponse41(caps&^gomysql.CLIENT_CONNECT_ATTRS, "u", nil, "d", "p"), 2, 0xfd, 1), 1, nil)
	seed([]byte{}, 1, nil)
	seed([]byte{0x0f, 0x02}, 1, nil)

	srv := refusingServer()
	f.Fuzz(func(t *testing.T, resp []byte, seq byte, reply []byte) {
		if len(resp) > maxHandshakePacket || len(reply) > maxHandshakePacket {
			return // the gate refuses these unread; TestGateBudget covers it
		}
		r, perr := parseHandshakeResponse(resp)
		if perr == nil && (r == nil || len(resp) <= sslRequestLen) {
			t.Fatalf("accepted %d bytes as %+v", len(resp), r)
		}

		c, sc := net.Pipe()
		deadline := time.Now().Add(5 * time.Second)
		_ = c.SetDeadline(deadline)
		_ = sc.SetDeadline(deadline)
		g := newServerGate(sc, nil, 1)
		s := &session{srv: srv, log: zap.NewNop(), raw: sc, client: sc, started: time.Now()}
		a := &clientAuth{s: s, g: g, lo: appListener(nil, false)}
		clientDone := make(chan struct{})
		go func() {
			defer close(clientDone)
			defer c.Close()
			p := &pipeClient{c: c}
			if _, _, err := p.read(t); err != nil {
				return
			}
			p.seq = seq
			if p.write(resp) != nil {
				return
			}
			for {
				_, b, err := p.read(t)
				if err != nil {
					return
				}
				if len(b) > 0 && b[0] == 0xfe {
					if p.write(reply) != nil {
						return
					}
				}
			}
		}()
		err := clientHandshake(srv.handshakeServer(gomysql.AUTH_NATIVE_PASSWORD), g, a)
		sc.Close()
		<-clientDone
		if err != nil && strings.Contains(err.Error(), "panicked") {
			t.Fatalf("go-mysql panicked on a response the gate let through: %v", err)
		}
		if err == nil {
			t.Fatal("handshake succeeded on a server without backends")
		}
		var ge *Error
		switch {
		case seq != 1:
			if !errors.As(g.err, &ge) || ge.Code != erNetPacketsOutOfOrder {
				t.Fatalf("sequence %d: gate error %v", seq, g.err)
			}
		case len(resp) == sslRequestLen:
			if !errors.As(g.err, &ge) || ge.Code != erHandshake {
				t.Fatalf("SSL request without TLS: gate error %v", g.err)
			}
		case perr != nil:
			if !errors.As(g.err, &ge) || ge.Code != erHandshake {
				t.Fatalf("malformed response (%v): gate error %v", perr, g.err)
			}
		case r.plugin == gomysql.AUTH_NATIVE_PASSWORD:
			var le *Error
			if !errors.As(a.loginErr, &le) || (le.Code != erDBAccessDenied && le.Code != erNoDB) {
				t.Fatalf("well-formed response %+v did not reach the login: %v (login %v)", r, err, a.loginErr)
			}
		}
	})
}

// FuzzUpstreamHandshake plays a server that answers dbproxy's upstream
// login with arbitrary bytes: a greeting, then one more packet (OK, ERR,
// an auth switch...). Whatever it sends, the login fails or succeeds
// without a panic, and never sends the password in clear text on a
// connection without TLS.
func FuzzUpstreamHandshake(f *testing.F) {
	greet := func(caps uint32, plugin string) []byte {
		g := []byte{10}
		g = append(g, "10.11.9-MariaDB\x00"...)
		g = append(g, 7, 0, 0, 0, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 0, byte(caps), byte(caps>>8), 45, 2, 0, byte(caps>>16), byte(caps>>24), 21)
		g = append(g, make([]byte, 10)...)
		g = append(g, "ijklmnopqrst\x00"...)
		return append(append(g, plugin...), 0)
	}
	f.Add(greet(fakeCaps, "mysql_native_password"), []byte{0, 0, 0, 2, 0, 0, 0})
	f.Add(greet(fakeCaps, "caching_sha2_password"), []byte{1, 3})
	f.Add(greet(fakeCaps, "mysql_native_password"), append([]byte{0xfe}, "mysql_clear_password\x00"...))
	f.Add(greet(fakeCaps, "mysql_native_password"), append([]byte{0xfe}, "client_ed25519\x00abcdefghijklmnopqrstuvwxyz012345\x00"...))
	f.Add(greet(fakeCaps, "mysql_native_password"), append([]byte{0xff, 0x15, 0x04}, "#28000denied"...))
	f.Add(greet(proxyCaps&^gomysql.CLIENT_PLUGIN_AUTH, ""), []byte{0, 0, 0, 2, 0, 0, 0})
	f.Add([]byte{10, 'x'}, []byte{})
	f.Add([]byte{0xff, 0x10, 0x04, 'T', 'o', 'o'}, []byte{})

	f.Fuzz(func(t *testing.T, greeting, answer []byte) {
		if len(greeting) > maxHandshakePacket || len(answer) > maxHandshakePacket {
			return
		}
		c, sc := net.Pipe()
		// The fake says one thing and then waits: a login that wants
		// more ends at this deadline.
		deadline := time.Now().Add(500 * time.Millisecond)
		_ = c.SetDeadline(deadline)
		_ = sc.SetDeadline(deadline)
		var gate *clientGate
		dialer := func(context.Context, string, string) (net.Conn, error) {
			gate = newClientGate(c, nil, false, gomysql.CLIENT_DEPRECATE_EOF)
			return gate, nil
		}
		const password = "s3cr3t-pass"
		server := make(chan []byte, 1)
		go func() {
			defer sc.Close()
			var got []byte
			defer func() { server <- got }()
			p := &pipeClient{c: sc}
			if p.write(greeting) != nil {
				return
			}
			for i := 0; i < 3; i++ {
				_, b, err := p.read(t)
				if err != nil {
					return
				}
				got = append(got, b...)
				if i == 0 && p.write(answer) != nil {
					return
				}
			}
		}()
		_, err := connect(context.Background(), "tcp", "fake:3306", "v-user", password, "appdb", dialer, func(*client.Conn) error { return nil })
		c.Close()
		sent := <-server
		if err != nil && strings.Contains(err.Error(), "panicked") {
			t.Fatalf("go-mysql client panicked behind the gate: %v", err)
		}
		if strings.Contains(string(sent), password) {
			t.Fatalf("password sent in clear text without TLS (greeting %x, answer %x)", greeting, answer)
		}
	})
}
