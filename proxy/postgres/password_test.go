package postgres

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/identity"
)

// fakeTokens accepts the token "good" as identity app and records what
// it was asked.
type fakeTokens struct {
	mu   sync.Mutex
	seen []string
}

func (f *fakeTokens) Kind() string { return "Vault token" }

func (f *fakeTokens) Authenticate(_ context.Context, tok string) (identity.Identity, error) {
	f.mu.Lock()
	f.seen = append(f.seen, tok)
	f.mu.Unlock()
	if tok != "good" {
		return identity.Identity{}, &identity.Error{Reason: identity.ReasonInvalidToken, Msg: "Vault does not accept this token"}
	}
	return identity.Identity{Name: "app", Method: identity.MethodVaultToken}, nil
}

func tokenServer() *Server {
	return NewServer(Options{Log: zap.NewNop(), Backends: map[string]*Backend{}, StartupTimeout: 5 * time.Second})
}

func sendStartup(t *testing.T, c net.Conn) *pgproto3.Frontend {
	t.Helper()
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "app", "database": "orders"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return fe
}

func TestTokenNotAskedWithoutTLS(t *testing.T) {
	f := &fakeTokens{}
	c, sc := net.Pipe()
	defer c.Close()
	go tokenServer().handle(sc, ListenerOptions{Name: "vt", Token: f})
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fe := sendStartup(t, c)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	er, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || er.Code != codeInvalidAuth || !strings.Contains(er.Message, "only over TLS") {
		t.Fatalf("got %#v; want 28000 naming TLS before any password request", msg)
	}
	if len(f.seen) != 0 {
		t.Fatal("the authenticator was called")
	}
}

func TestTokenOverUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), ".s.PGSQL.5432")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := tokenServer()
	f := &fakeTokens{}
	srv.Serve(ln, ListenerOptions{Name: "vt", Token: f, MaxTokenBytes: 64})
	defer func() { _, _ = srv.Shutdown(context.Background()) }()

	for _, tc := range []struct {
		name, password, code, msg string
		seen                      bool
	}{
		// A good token gets past authentication: the unknown backend is
		// the next thing refused.
		{"good", "good", codeInvalidCatalog, `backend "orders" does not exist`, true},
		{"bad", "bad", codeInvalidAuth, "Vault does not accept this token", true},
		{"oversized", strings.Repeat("x", 65), codeInvalidAuth, "at most 64", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.seen = nil
			f.mu.Unlock()
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			fe := sendStartup(t, c)
			msg, err := fe.Receive()
			if _, ok := msg.(*pgproto3.AuthenticationCleartextPassword); err != nil || !ok {
				t.Fatalf("got %#v, %v; want AuthenticationCleartextPassword", msg, err)
			}
			fe.Send(&pgproto3.PasswordMessage{Password: tc.password})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			msg, err = fe.Receive()
			er, ok := msg.(*pgproto3.ErrorResponse)
			if err != nil || !ok || er.Code != tc.code || !strings.Contains(er.Message, tc.msg) {
				t.Fatalf("got %#v, %v; want %s %q", msg, err, tc.code, tc.msg)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if got := len(f.seen) == 1 && f.seen[0] == tc.password; got != tc.seen {
				t.Fatalf("authenticator saw %d tokens; want it to see this one: %v", len(f.seen), tc.seen)
			}
		})
	}
}

func TestReadPasswordFraming(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		code string
	}{
		{"not a password message", "Q\x00\x00\x00\x05\x00", codeProtocolViolation},
		{"no NUL", "p\x00\x00\x00\x06ab", codeProtocolViolation},
		{"empty body", "p\x00\x00\x00\x04", codeInvalidAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &session{cbr: bufio.NewReader(strings.NewReader(tc.in))}
			_, err := s.readPassword(16, "JWT")
			wantCode(t, err, tc.code)
		})
	}
}
