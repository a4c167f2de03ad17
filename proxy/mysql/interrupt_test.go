package mysql

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/dbproxy/dbproxy/creds"
)

// send writes one command.
func (c *benchClient) send(t *testing.T, q string) {
	t.Helper()
	if _, err := c.c.Write(benchPacket(append([]byte{gomysql.COM_QUERY}, q...))); err != nil {
		t.Fatal(err)
	}
}

// next reads the next packet, waiting at most 10 seconds.
func (c *benchClient) next(t *testing.T) (byte, []byte) {
	t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	seq, p, err := readPacket(c.r, 1<<24)
	if err != nil {
		t.Fatalf("reading a packet: %v", err)
	}
	return seq, p
}

// rest reads the packets of an answer up to its last one, which it
// returns; first is the answer's first packet.
func (c *benchClient) rest(t *testing.T, first []byte) []byte {
	t.Helper()
	p := first
	for i := 0; ; i++ {
		switch {
		case p[0] == 0xff, i == 0 && p[0] == 0x00, i > 0 && p[0] == 0xfe && len(p) < 9:
			return p
		}
		_, p = c.next(t)
	}
}

// ask sends a query and returns the last packet of its answer.
func (c *benchClient) ask(t *testing.T, q string) []byte {
	t.Helper()
	c.send(t, q)
	_, p := c.next(t)
	return c.rest(t, p)
}

// closed checks that dbproxy closed the connection.
func (c *benchClient) closed(t *testing.T) {
	t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("want the connection closed, got %v", err)
	}
}

func wantErr(t *testing.T, p []byte, code uint16, text string) {
	t.Helper()
	if errCode(p) != code || !strings.Contains(string(p), text) {
		t.Fatalf("want ERR %d saying %q, got %q", code, text, p)
	}
}

func oneGen() fakeCreds { return fakeCreds{&creds.Generation{N: 1, Username: "v-test"}} }

func TestKillIdleSession(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			srv, addr := loopbackProxy(t, mode, &fakeServer{}, oneGen())
			victim := dialBench(t, addr)
			if p := victim.ask(t, "select 1"); p[0] != 0xfe {
				t.Fatalf("select: %q", p)
			}
			killer := dialBench(t, addr)
			if p := killer.ask(t, fmt.Sprintf("KILL CONNECTION %d", victim.id)); p[0] != 0 {
				t.Fatalf("KILL: %q", p)
			}
			seq, p := victim.next(t)
			wantErr(t, p, erConnectionKilled, "KILL CONNECTION through dbproxy")
			if seq != 1 {
				t.Fatalf("ERR with sequence %d, want 1 (the answer to the next command)", seq)
			}
			victim.closed(t)
			waitFor(t, func() bool { return len(srv.Sessions()) == 1 })
			if p := killer.ask(t, "select 2"); p[0] != 0xfe {
				t.Fatalf("the killer after the KILL: %q", p)
			}
		})
	}
}

func TestKillMidAnswer(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			f := &fakeServer{Stall: make(chan struct{})}
			t.Cleanup(func() { close(f.Stall) })
			srv, addr := loopbackProxy(t, mode, f, oneGen())
			pl := srv.opts.Pool("appdb", "r")
			victim := dialBench(t, addr)
			victim.send(t, "select stall")
			if _, p := victim.next(t); len(p) != 1 || p[0] != 1 {
				t.Fatalf("first packet of the answer: %q", p)
			}
			killer := dialBench(t, addr)
			if p := killer.ask(t, fmt.Sprintf("KILL %d", victim.id)); p[0] != 0 {
				t.Fatalf("KILL: %q", p)
			}
			// The ERR follows the packet the client has, in sequence.
			seq, p := victim.next(t)
			wantErr(t, p, erConnectionKilled, "Connection was killed")
			if seq != 2 {
				t.Fatalf("ERR with sequence %d, want 2", seq)
			}
			victim.closed(t)
			// Its server connection, mid-answer, is closed, not reused:
			// what is left open is the killer's own in session mode.
			open := 0
			if mode == "session" {
				open = 1
			}
			waitFor(t, func() bool { return len(srv.Sessions()) == 1 && pl.Stats().Open == open })
		})
	}
}

// swapCreds is a credential source whose current generation a test sets.
type swapCreds struct {
	gen atomic.Pointer[creds.Generation]
}

func (s *swapCreds) Current(context.Context) (*creds.Generation, error) { return s.gen.Load(), nil }

// TestDrainDeadline: at a generation's drain deadline the pool calls
// Interrupt on the holders of its connections (here the test does, for
// every session: generations cannot be expired outside creds).
func TestDrainDeadline(t *testing.T) {
	gen1 := &creds.Generation{N: 1, Username: "v-one"}
	gen2 := &creds.Generation{N: 2, Username: "v-two"}
	var expired atomic.Bool
	deadlines := func(srv *Server) {
		srv.expired = func(g *creds.Generation) bool { return g == gen1 && expired.Load() }
	}
	deadline := func(srv *Server) {
		expired.Store(true)
		srv.front.ForEach(func(s *session) { s.Interrupt() })
	}
	src := &swapCreds{}
	src.gen.Store(gen1)
	srv, addr := loopbackProxy(t, "transaction", &fakeServer{}, src, deadlines)
	holder := dialBench(t, addr)
	if p := holder.ask(t, "begin"); p[0] != 0 {
		t.Fatalf("begin: %q", p)
	}
	idle := dialBench(t, addr)
	if p := idle.ask(t, "select 1"); p[0] != 0xfe {
		t.Fatalf("select: %q", p)
	}
	// A rotation (which closes generation 1's idle connections: the
	// pool sees gen1 as active, so Drain stands in), then generation 1's
	// drain deadline.
	src.gen.Store(gen2)
	srv.opts.Pool("appdb", "r").Drain()
	deadline(srv)
	_, p := holder.next(t)
	wantErr(t, p, erConnectionKilled, "its transaction outlived the database credential")
	holder.closed(t)
	// A session holding no connection is not touched: its next command
	// runs on the new generation.
	if p := idle.ask(t, "select 2"); p[0] != 0xfe {
		t.Fatalf("idle session after the deadline: %q", p)
	}
	waitFor(t, func() bool { return len(srv.Sessions()) == 1 })

	// In session mode every session holds its connection.
	expired.Store(false)
	src.gen.Store(gen1)
	srv, addr = loopbackProxy(t, "session", &fakeServer{}, src, deadlines)
	s := dialBench(t, addr)
	if p := s.ask(t, "select 1"); p[0] != 0xfe {
		t.Fatalf("select: %q", p)
	}
	deadline(srv)
	_, p = s.next(t)
	wantErr(t, p, erConnectionKilled, "has reached the end of its lease")
	s.closed(t)
}

func TestShutdownClosesOnlyIdleSessions(t *testing.T) {
	f := &fakeServer{Stall: make(chan struct{})}
	srv, addr := loopbackProxy(t, "session", f, oneGen())
	idle := dialBench(t, addr)
	if p := idle.ask(t, "select 1"); p[0] != 0xfe {
		t.Fatalf("select: %q", p)
	}
	inTxn := dialBench(t, addr)
	if p := inTxn.ask(t, "begin"); p[0] != 0 {
		t.Fatalf("begin: %q", p)
	}
	busy := dialBench(t, addr)
	busy.send(t, "select stall")
	if _, p := busy.next(t); len(p) != 1 {
		t.Fatalf("first packet of the answer: %q", p)
	}

	done := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		open, _ := srv.Shutdown(ctx)
		done <- open
	}()
	_, p := idle.next(t)
	wantErr(t, p, erServerShutdown, "this idle session was closed")
	idle.closed(t)

	// Neither the session in a transaction nor the one waiting for an
	// answer was touched: both finish.
	close(f.Stall)
	_, p = busy.next(t)
	if p = busy.rest(t, p); p[0] != 0xfe {
		t.Fatalf("the rest of the answer: %q", p)
	}
	if p := inTxn.ask(t, "commit"); p[0] != 0 {
		t.Fatalf("commit: %q", p)
	}
	// Now idle, they are closed too, and Shutdown had to force none.
	for _, c := range []*benchClient{busy, inTxn} {
		_, p := c.next(t)
		wantErr(t, p, erServerShutdown, "this idle session was closed")
		c.closed(t)
	}
	if open := <-done; open != 0 {
		t.Fatalf("Shutdown closed %d sessions by force", open)
	}
}

// An idle shutdown that finds the session inside a command (here: half
// a packet header read) is cleared; the command goes on.
func TestIdleShutdownSparesACommandInProgress(t *testing.T) {
	p := newRelayPair(t, false, 0)
	cmd := pkt(0, append([]byte{gomysql.COM_QUERY}, "select 1"...))
	if _, err := p.client.c.Write(cmd[:2]); err != nil {
		t.Fatal(err)
	}
	p.s.kill(killIdleShutdown)
	if _, err := p.client.c.Write(cmd[2:]); err != nil {
		t.Fatal(err)
	}
	if _, q, err := p.server.read(t); err != nil || string(q) != "\x03select 1" {
		t.Fatalf("server got %q, %v", q, err)
	}
	go func() { _ = p.server.write(okP) }()
	if _, b, err := p.client.read(t); err != nil || b[0] != 0 {
		t.Fatalf("client got %q, %v", b, err)
	}
	p.s.CloseIfIdle()
	_, b, err := p.client.read(t)
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, b, erServerShutdown, "idle session")
	if r, _ := p.end(t); r != "shutdown" {
		t.Fatalf("ended %s", r)
	}
}
