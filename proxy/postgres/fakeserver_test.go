package postgres

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// fakeServer is a minimal PostgreSQL backend after authentication: it
// answers every simple query with one row, and the extended protocol
// message by message, so relay tests and benchmarks run without a real
// server.
type fakeServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newFakeServer(t testing.TB) *fakeServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Small socket buffers make stalls (a server blocked writing
			// answers nobody reads) happen at test sizes.
			_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
			_ = c.(*net.TCPConn).SetReadBuffer(16 << 10)
			_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
			f.mu.Lock()
			f.conns = append(f.conns, c)
			f.mu.Unlock()
			go f.serve(c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			_ = c.Close()
		}
		f.mu.Unlock()
	})
	return f
}

// terminateAll ends every server connection, as pg_terminate_backend
// does: with a FATAL ErrorResponse first if goodbye.
func (f *fakeServer) terminateAll(goodbye bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		if goodbye {
			_, _ = c.Write(frameOf('E', "SFATAL\x00VFATAL\x00C57P01\x00Mterminating connection due to administrator command\x00\x00"))
		}
		_ = c.Close()
	}
	f.conns = nil
}

// Canned answers.
var (
	fakeRow = func() []byte {
		var b []byte
		b = append(b, 'T', 0, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, 1)
		b = append(b, "x\x00"...)
		b = append(b, make([]byte, 18)...)
		binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
		return b
	}()
	fakeData     = []byte{'D', 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, '1'}
	fakeCmd      = append([]byte{'C', 0, 0, 0, 13}, "SELECT 1\x00"...)
	fakeZ        = []byte{'Z', 0, 0, 0, 5, 'I'}
	bindComplete = []byte{'2', 0, 0, 0, 4}
)

func (f *fakeServer) serve(c net.Conn) {
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		head, _ := r.Peek(min(n, 3))
		big := hdr[0] == 'Q' && string(head) == "BIG"
		if _, err := r.Discard(n); err != nil {
			return
		}
		switch hdr[0] {
		case 'Q':
			if big {
				// 1 MB of rows before anything else is read.
				row := frameOf('D', "\x00\x01\x00\x00\x03\xfc"+strings.Repeat("r", 1020))
				_, _ = w.Write(fakeRow)
				for range 1000 {
					_, _ = w.Write(row)
				}
				_, _ = w.Write(fakeCmd)
				_, _ = w.Write(fakeZ)
				break
			}
			_, _ = w.Write(fakeRow)
			_, _ = w.Write(fakeData)
			_, _ = w.Write(fakeCmd)
			_, _ = w.Write(fakeZ)
		case 'P':
			_, _ = w.Write(parseComplete)
		case 'B':
			_, _ = w.Write(bindComplete)
		case 'D':
			_, _ = w.Write(fakeRow)
		case 'E':
			_, _ = w.Write(fakeData)
			_, _ = w.Write(fakeCmd)
		case 'C':
			_, _ = w.Write(closeComplete)
		case 'S':
			_, _ = w.Write(fakeZ)
		case 'X':
			return
		}
		// Like PostgreSQL: flush at ReadyForQuery, or when no input waits.
		if hdr[0] == 'Q' || hdr[0] == 'S' || r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

type oneGen struct{ g *creds.Generation }

func (o oneGen) Current(context.Context) (*creds.Generation, error) { return o.g, nil }

// relayHarness is a session relaying between a loopback client and a
// fake server, started past login.
type relayHarness struct {
	client net.Conn
	cr     *bufio.Reader
	done   chan string
	pool   *pool.Pool
	s      *session
	fake   *fakeServer
}

// srvKillIdle is Shutdown's idle sweep: it retries while the session
// finishes the step a client already has the answer of.
func (h *relayHarness) srvKillIdle() {
	for range 20 {
		if h.s.CloseIfIdle(); h.s.interrupted() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
func (h *relayHarness) srvKill() { h.s.Kill(frontend.KillShutdown) }

func startRelay(t testing.TB, mode string) *relayHarness {
	f := newFakeServer(t)
	gen := &creds.Generation{N: 1, Backend: "b", Role: "r", Username: "v-r-1"}
	pl := pool.New(oneGen{gen}, pool.Options{Backend: "b", Role: "r", MaxConnections: 4})
	t.Cleanup(pl.Close)
	dial := func(ctx context.Context, g *creds.Generation) (pool.Conn, error) {
		c, err := net.Dial("tcp", f.ln.Addr().String())
		if err != nil {
			return nil, err
		}
		_ = c.(*net.TCPConn).SetReadBuffer(16 << 10)
		_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
		return &upstream{conn: c, br: bufio.NewReaderSize(c, 32<<10), bw: newOutbuf(c, 32<<10), prepared: map[string]bool{}}, nil
	}
	srv := NewServer(Options{Log: zap.NewNop(), Backends: map[string]*Backend{}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(); _ = sc.Close() })
	s := &session{srv: srv, log: zap.NewNop(), raw: sc, client: sc,
		id: identity.Identity{Name: "app"}, backend: &Backend{Name: "b", Mode: mode},
		pool: pl, poolKey: "k", dialer: dial, txnMode: mode == "transaction"}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.stats = srv.metrics.Stats("b", "app") // as login sets it: the benchmarks count too
	s.rl = newTxnSession(s)
	s.in.conn = sc
	s.borrowBuffers()
	s.txStatus.Store('I')
	lease, err := pl.CheckoutFor(s.ctx, "k", dial, s)
	if err != nil {
		t.Fatal(err)
	}
	s.lease = lease
	s.rl.lease, s.rl.up = lease, lease.Conn.(*upstream)
	h := &relayHarness{client: client, cr: bufio.NewReaderSize(client, 16<<10), done: make(chan string, 1), pool: pl, s: s, fake: f}
	srv.front.Track(s)
	go func() {
		s.run()
		srv.front.Untrack(s)
		h.done <- "done"
	}()
	return h
}

// roundTrip sends req and reads until ReadyForQuery, without allocating.
func (h *relayHarness) roundTrip(tb testing.TB, req []byte) byte {
	if _, err := h.client.Write(req); err != nil {
		tb.Fatal(err)
	}
	for {
		hdr, err := h.cr.Peek(5)
		if err != nil {
			tb.Fatal(err)
		}
		typ := hdr[0]
		n := int(binary.BigEndian.Uint32(hdr[1:])) + 1
		if typ == 'Z' {
			b, _ := h.cr.Peek(6)
			st := b[5]
			_, _ = h.cr.Discard(n)
			return st
		}
		if typ == 'E' {
			tb.Fatalf("error from relay")
		}
		_, _ = h.cr.Discard(n)
	}
}

func frameOf(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)+4))
	return append(b, body...)
}

var (
	simpleQuery = frameOf('Q', "SELECT 1\x00")
	// Parse (unnamed), Bind, Describe portal, Execute, Sync: pgbench -M extended.
	extendedTxn = append(append(append(append(
		frameOf('P', "\x00SELECT 1\x00\x00\x00"),
		frameOf('B', "\x00\x00\x00\x00\x00\x00\x00\x00")...),
		frameOf('D', "P\x00")...),
		frameOf('E', "\x00\x00\x00\x00\x00")...),
		frameOf('S', "")...)
	// Bind and Execute of a named statement prepared once: -M prepared.
	prepareStmt  = append(frameOf('P', "s1\x00SELECT 1\x00\x00\x00"), frameOf('S', "")...)
	preparedExec = append(append(
		frameOf('B', "\x00s1\x00\x00\x00\x00\x00\x00\x00"),
		frameOf('E', "\x00\x00\x00\x00\x00")...),
		frameOf('S', "")...)
)
