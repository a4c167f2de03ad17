package postgres

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// benchParams are what PostgreSQL 15 reports after login.
var benchParams = map[string]string{
	"application_name": "dbproxy:app", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
	"default_transaction_read_only": "off", "in_hot_standby": "off", "integer_datetimes": "on",
	"IntervalStyle": "postgres", "is_superuser": "off", "server_encoding": "UTF8",
	"server_version": "15.8", "session_authorization": "v-token-r-1", "standard_conforming_strings": "on",
	"TimeZone": "Etc/UTC", "scram_iterations": "4096",
}

type allowAll struct{}

func (allowAll) Authorize(id identity.Identity, backend, user string) (identity.Grant, error) {
	return identity.Grant{Backend: backend, Role: "r"}, nil
}

// BenchmarkLoginPostgresTxn is the new-connection path of a transaction
// pool (pgbench -C): startup, identity, grant, the cached greeting,
// session start and end, with the client on a pipe.
func BenchmarkLoginPostgresTxn(b *testing.B) {
	gen := &creds.Generation{N: 1, Backend: "b", Role: "r", Username: "v-token-r-1"}
	pl := pool.New(oneGen{gen}, pool.Options{Backend: "b", Role: "r", MaxConnections: 4})
	b.Cleanup(pl.Close)
	// A production logger writing nowhere: the log lines are part of
	// the cost of a connection.
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel))
	srv := NewServer(Options{Log: log,
		Backends:   map[string]*Backend{"b": {Name: "b", Mode: "transaction"}},
		Pool:       func(string, string) *pool.Pool { return pl },
		Authorizer: allowAll{},
	})
	lo := ListenerOptions{Name: "bench", Authenticate: func(net.Conn, *tls.ConnectionState) (identity.Identity, error) {
		return identity.Identity{Name: "app", Method: "listener"}, nil
	}}
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "app", "database": "b", "application_name": "pgbench"}}).Encode(nil)
	seedGreeting(b, srv, startup)
	terminate := []byte{'X', 0, 0, 0, 4}
	br := bufio.NewReaderSize(nil, 4096)
	b.ReportAllocs()
	for b.Loop() {
		c, sc := net.Pipe()
		go srv.handle(sc, lo)
		if _, err := c.Write(startup); err != nil {
			b.Fatal(err)
		}
		br.Reset(c)
		readUntilReady(b, br)
		if _, err := c.Write(terminate); err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, br); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

func readUntilReady(b *testing.B, br *bufio.Reader) {
	for {
		hdr, err := br.Peek(5)
		if err != nil {
			b.Fatal(err)
		}
		if hdr[0] == 'E' {
			b.Fatal("login refused")
		}
		typ, n := hdr[0], int(binary.BigEndian.Uint32(hdr[1:]))+1
		if _, err := br.Discard(n); err != nil {
			b.Fatal(err)
		}
		if typ == 'Z' {
			return
		}
	}
}

// seedGreeting stores the greeting a first login would have stored.
func seedGreeting(b *testing.B, srv *Server, startup []byte) {
	var m pgproto3.StartupMessage
	if err := m.Decode(startup[4:]); err != nil {
		b.Fatal(err)
	}
	p, err := parseStartup(&m)
	if err != nil {
		b.Fatal(err)
	}
	srv.greetings.Put(frontend.GreetingKey("b", "r", p.key("dbproxy:app")), encodeGreeting(benchParams))
}
