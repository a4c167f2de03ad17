package mysql

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/dbproxy/dbproxy/creds"
)

// testServerTLS is a TLS config with a throwaway self-signed certificate.
func testServerTLS(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

// fakeServer is a minimal MySQL server for unit tests: it greets, takes
// any login, and answers COM_QUERY "select N" with one row, anything
// else that expects an answer with OK.
type fakeServer struct {
	TLS        *tls.Config // offer TLS
	Caps       uint32      // greeting capabilities; default fakeCaps
	AuthSwitch string      // plugin to switch the client to after its response
	DenyLogin  bool        // answer the login with ERR 1045
	// Bench answers from prepared bytes and records nothing, so that a
	// benchmark counts only the relay's allocations (see bench_test.go).
	Bench bool
	// Stall, when set, holds the answer to "select stall" after its
	// first packet until it is closed (or receives).
	Stall chan struct{}
	// Drop, while above 0, makes a "select drop..." the last command of
	// its connection, counted down: closed unanswered, or after the
	// goodbye ERR 1927 when DropSaysKilled.
	Drop           atomic.Int32
	DropSaysKilled bool

	mu       sync.Mutex
	logins   []*fakeLogin
	commands []string // "<cmd byte> <payload>" of every command after login
	executes []fakeExec
	ln       net.Listener
}

// fakeExec is a COM_STMT_EXECUTE the fake saw.
type fakeExec struct {
	conn, stmt uint32
	known      bool   // the id was prepared on that connection
	types      []byte // the parameter types sent with new-params-bound 1
	bound      []byte // the types the statement had when it ran
}

// fakeLogin is what the fake saw of one login.
type fakeLogin struct {
	resp        *handshakeResponse
	tls         bool
	switchReply []byte
}

const fakeCaps = proxyCaps | gomysql.CLIENT_LOCAL_FILES | gomysql.CLIENT_QUERY_ATTRIBUTES

func (f *fakeServer) start(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(func() { ln.Close() })
	go func() {
		for id := uint32(1); ; id++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c, id)
		}
	}()
	return ln.Addr().String()
}

func (f *fakeServer) seen() ([]*fakeLogin, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*fakeLogin(nil), f.logins...), append([]string(nil), f.commands...)
}

func writePkt(w io.Writer, seq byte, payload []byte) error {
	b := make([]byte, 4+len(payload))
	putHeader(b, len(payload), seq)
	copy(b[4:], payload)
	_, err := w.Write(b)
	return err
}

func (f *fakeServer) serve(c net.Conn, id uint32) {
	defer c.Close()
	caps := f.Caps
	if caps == 0 {
		caps = fakeCaps
	}
	if f.TLS != nil {
		caps |= gomysql.CLIENT_SSL
	}
	g := []byte{10}
	g = append(g, "10.11.99-MariaDB-fake\x00"...)
	g = binary.LittleEndian.AppendUint32(g, id)
	g = append(g, "abcdefgh\x00"...)
	g = binary.LittleEndian.AppendUint16(g, uint16(caps))
	g = append(g, 45)
	g = binary.LittleEndian.AppendUint16(g, gomysql.SERVER_STATUS_AUTOCOMMIT)
	g = binary.LittleEndian.AppendUint16(g, uint16(caps>>16))
	g = append(g, 21)
	g = append(g, make([]byte, 10)...)
	g = append(g, "ijklmnopqrst\x00mysql_native_password\x00"...)
	if writePkt(c, 0, g) != nil {
		return
	}
	var conn net.Conn = c
	// The first packet is read unbuffered: after an SSLRequest the TLS
	// handshake follows at once.
	seq, p, err := readPacket(c, 1<<20)
	r := bufio.NewReader(conn)
	if err != nil {
		return
	}
	login := &fakeLogin{}
	if len(p) == 32 && f.TLS != nil {
		tc := tls.Server(c, f.TLS)
		if tc.Handshake() != nil {
			return
		}
		conn, login.tls = tc, true
		r = bufio.NewReader(conn)
		if seq, p, err = readPacket(r, 1<<20); err != nil {
			return
		}
	}
	if login.resp, err = parseHandshakeResponse(p); err != nil {
		return
	}
	seq++
	if f.AuthSwitch != "" {
		if writePkt(conn, seq, append(append([]byte{0xfe}, f.AuthSwitch...), "\x00abcdefghijklmnopqrst\x00"...)) != nil {
			return
		}
		if seq, login.switchReply, err = readPacket(r, 1<<20); err != nil {
			return
		}
		seq++
	}
	f.mu.Lock()
	f.logins = append(f.logins, login)
	f.mu.Unlock()
	if f.DenyLogin {
		_ = writePkt(conn, seq, append([]byte{0xff, 0x15, 0x04}, "#28000Access denied for user"...))
		return
	}
	deprecateEOF := login.resp.caps&caps&gomysql.CLIENT_DEPRECATE_EOF != 0
	status := gomysql.SERVER_STATUS_AUTOCOMMIT
	ok := func(seq byte) error {
		return writePkt(conn, seq, []byte{0, 0, 0, byte(status), byte(status >> 8), 0, 0})
	}
	if ok(seq) != nil {
		return
	}
	if f.Bench {
		benchServe(conn, r, deprecateEOF)
		return
	}
	stmts := map[uint32]*fakeStmt{} // prepared on this connection
	nextStmt := id * 1000
	for {
		_, p, err := readPacket(r, 1<<24)
		if err != nil || len(p) == 0 {
			return
		}
		f.mu.Lock()
		f.commands = append(f.commands, fmt.Sprintf("%02x %s", p[0], p[1:]))
		f.mu.Unlock()
		switch p[0] {
		case gomysql.COM_QUIT:
			return
		case gomysql.COM_STMT_CLOSE:
			delete(stmts, binary.LittleEndian.Uint32(p[1:]))
			continue
		case gomysql.COM_STMT_SEND_LONG_DATA:
			continue
		case gomysql.COM_STMT_PREPARE:
			nextStmt++
			st := &fakeStmt{params: strings.Count(string(p[1:]), "?")}
			stmts[nextStmt] = st
			if f.prepareOK(conn, nextStmt, st.params, deprecateEOF) != nil {
				return
			}
			continue
		case gomysql.COM_STMT_EXECUTE:
			sid := binary.LittleEndian.Uint32(p[1:])
			st := stmts[sid]
			ex := fakeExec{conn: id, stmt: sid, known: st != nil}
			if st != nil && st.params > 0 {
				pos := 10 + (st.params+7)/8
				if p[pos] == 1 {
					ex.types = append([]byte(nil), p[pos+1:pos+1+2*st.params]...)
					st.types = ex.types
				}
				ex.bound = st.types
			}
			f.mu.Lock()
			f.executes = append(f.executes, ex)
			f.mu.Unlock()
			if st == nil {
				if writePkt(conn, 1, append([]byte{0xff, 0xdb, 0x04}, "#HY000Unknown prepared statement handler"...)) != nil {
					return
				}
				continue
			}
		case gomysql.COM_QUERY:
			q := strings.ToLower(string(p[1:]))
			switch {
			case q == "begin" || strings.HasPrefix(q, "start transaction"):
				status |= gomysql.SERVER_STATUS_IN_TRANS
			case q == "commit" || q == "rollback":
				status &^= gomysql.SERVER_STATUS_IN_TRANS
			case q == "select stall" && f.Stall != nil:
				if writePkt(conn, 1, []byte{1}) != nil {
					return
				}
				<-f.Stall
				if f.resultSetFrom(conn, 2, "stall", status, deprecateEOF) != nil {
					return
				}
				continue
			case strings.HasPrefix(q, "select drop") && f.Drop.Add(-1) >= 0:
				if f.DropSaysKilled {
					_ = writePkt(conn, 0, append([]byte{0xff, 0x87, 0x07}, "#70100Connection was killed"...))
				}
				return
			case strings.HasPrefix(q, "select "):
				if f.resultSet(conn, q[len("select "):], status, deprecateEOF) != nil {
					return
				}
				continue
			}
		case gomysql.COM_RESET_CONNECTION:
			status &^= gomysql.SERVER_STATUS_IN_TRANS
		}
		if ok(1) != nil {
			return
		}
	}
}

type fakeStmt struct {
	params int
	types  []byte
}

// prepareOK answers COM_STMT_PREPARE: no result columns, params
// parameter definitions.
func (f *fakeServer) prepareOK(w io.Writer, sid uint32, params int, deprecateEOF bool) error {
	b := []byte{0}
	b = binary.LittleEndian.AppendUint32(b, sid)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(params))
	b = append(b, 0, 0, 0)
	if err := writePkt(w, 1, b); err != nil {
		return err
	}
	seq := byte(2)
	col := []byte{3, 'd', 'e', 'f', 0, 0, 0, 1, '?', 0, 0x0c, 63, 0, 0, 0, 0, 0, 0xfd, 0x80, 0, 0, 0, 0}
	for range params {
		if err := writePkt(w, seq, col); err != nil {
			return err
		}
		seq++
	}
	if params > 0 && !deprecateEOF {
		return writePkt(w, seq, []byte{0xfe, 0, 0, 2, 0})
	}
	return nil
}

// resultSet answers with one column and one row holding v.
func (f *fakeServer) resultSet(w io.Writer, v string, status uint16, deprecateEOF bool) error {
	if err := writePkt(w, 1, []byte{1}); err != nil {
		return err
	}
	return f.resultSetFrom(w, 2, v, status, deprecateEOF)
}

// resultSetFrom sends the packets of resultSet after the column count,
// from sequence number seq.
func (f *fakeServer) resultSetFrom(w io.Writer, seq byte, v string, status uint16, deprecateEOF bool) error {
	send := func(p []byte) error { err := writePkt(w, seq, p); seq++; return err }
	col := []byte{3, 'd', 'e', 'f', 0, 0, 0, 1, 'v', 0, 0x0c, 45, 0, 255, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0}
	eof := []byte{0xfe, 0, 0, byte(status), byte(status >> 8)}
	end := eof
	if deprecateEOF {
		end = []byte{0xfe, 0, 0, byte(status), byte(status >> 8), 0, 0}
	}
	if err := send(col); err != nil {
		return err
	}
	if !deprecateEOF {
		if err := send(eof); err != nil {
			return err
		}
	}
	if err := send(append([]byte{byte(len(v))}, v...)); err != nil {
		return err
	}
	return send(end)
}

// fakeCreds hands out one generation; its password is empty (the field
// is creds' own), which the fake server does not check.
type fakeCreds struct{ gen *creds.Generation }

func (f fakeCreds) Current(context.Context) (*creds.Generation, error) { return f.gen, nil }
