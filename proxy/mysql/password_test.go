package mysql

import (
	"bytes"
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/dbproxy/dbproxy/identity"
)

// fakeTokens accepts the token "good" as identity app and records what
// it was asked.
type fakeTokens struct {
	mu   sync.Mutex
	seen []string
}

func (f *fakeTokens) Kind() string { return "JWT" }

func (f *fakeTokens) Authenticate(_ context.Context, tok string) (identity.Identity, error) {
	f.mu.Lock()
	f.seen = append(f.seen, tok)
	f.mu.Unlock()
	if tok != "good" {
		return identity.Identity{}, &identity.Error{Reason: identity.ReasonExpiredToken, Msg: "the JWT expired at 2026-01-01T00:00:00Z: get a fresh token"}
	}
	return identity.Identity{Name: "app", Method: identity.MethodJWT}, nil
}

func TestTokenNotAskedWithoutTLS(t *testing.T) {
	f := &fakeTokens{}
	p, _ := handshakeOverPipe(t, refusingServer(), ListenerOptions{Name: "k8s", Token: f})
	if _, _, err := p.read(t); err != nil {
		t.Fatal(err)
	}
	if err := p.write(handshakeResponse41(testClientCaps, "app", nil, "nosuch", "mysql_native_password")); err != nil {
		t.Fatal(err)
	}
	_, b, err := p.read(t)
	if err != nil {
		t.Fatal(err)
	}
	if errCode(b) != erAccessDenied || !strings.Contains(string(b), "only over TLS") {
		t.Fatalf("got %q; want ERR 1045 naming TLS and no auth switch", b)
	}
	if len(f.seen) != 0 {
		t.Fatal("the authenticator was called")
	}
}

func TestTokenOverTLS(t *testing.T) {
	for _, tc := range []struct {
		name, password string
		want           uint16
		msg            string
	}{
		// A good token gets past authentication: the unknown backend is
		// the next thing refused.
		{"good", "good", erDBAccessDenied, "nosuch"},
		{"expired", "old", erAccessDenied, "JWT refused: the JWT expired"},
		{"oversized", strings.Repeat("x", identity.DefaultMaxTokenBytes+1), erAccessDenied, "at most 16384"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTokens{}
			p, _ := handshakeOverPipe(t, refusingServer(), ListenerOptions{Name: "k8s", TLS: testServerTLS(t), Token: f})
			if _, _, err := p.read(t); err != nil {
				t.Fatal(err)
			}
			resp := handshakeResponse41(testClientCaps|gomysql.CLIENT_SSL, "app", bytes.Repeat([]byte{7}, 20), "nosuch", "mysql_native_password")
			if err := p.write(resp[:32]); err != nil {
				t.Fatal(err)
			}
			tc2 := tls.Client(p.c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test server
			if err := tc2.Handshake(); err != nil {
				t.Fatal(err)
			}
			p.c, p.seq = tc2, 2
			if err := p.write(resp); err != nil {
				t.Fatal(err)
			}
			seq, b, err := p.read(t)
			if err != nil || !bytes.Equal(b, []byte("\xfemysql_clear_password\x00")) {
				t.Fatalf("got %q, %v; want an auth switch to mysql_clear_password", b, err)
			}
			p.seq = seq + 1
			if err := p.write(append([]byte(tc.password), 0)); err != nil {
				t.Fatal(err)
			}
			_, b, err = p.read(t)
			if err != nil || errCode(b) != tc.want || !strings.Contains(string(b), tc.msg) {
				t.Fatalf("got %q, %v; want ERR %d with %q", b, err, tc.want, tc.msg)
			}
			if strings.Contains(string(b), tc.password) && tc.password != "good" {
				t.Fatalf("the error repeats the token: %q", b)
			}
		})
	}
}
