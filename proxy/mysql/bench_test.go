package mysql

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// The relay benchmarks: a client and a fake server in this process, the
// relay between them over loopback TCP. allocs/op counts the whole
// process, so the fake (Bench mode) and the client allocate nothing per
// command either: a non-zero figure is the relay's (or the pool's).

func BenchmarkRelayMySQLSessionQuery(b *testing.B)   { benchRelay(b, "session", false) }
func BenchmarkRelayMySQLSessionExecute(b *testing.B) { benchRelay(b, "session", true) }
func BenchmarkRelayMySQLTxnQuery(b *testing.B)       { benchRelay(b, "transaction", false) }
func BenchmarkRelayMySQLTxnExecute(b *testing.B)     { benchRelay(b, "transaction", true) }

// A 1 MiB query goes upstream as it arrives: the relay's memory does
// not grow with it (B/op stays near 0, not 1 MiB).
func BenchmarkRelayMySQLSessionLargeQuery(b *testing.B) { benchLarge(b, "session") }
func BenchmarkRelayMySQLTxnLargeQuery(b *testing.B)     { benchLarge(b, "transaction") }

func benchLarge(b *testing.B, mode string) {
	c := dialBench(b, benchProxy(b, mode))
	q := append([]byte{gomysql.COM_QUERY}, "select '"...)
	q = append(q, bytes.Repeat([]byte{'x'}, 1<<20)...)
	cmd := benchPacket(append(q, '\''))
	benchLoop(b, c, cmd)
}

func benchRelay(b *testing.B, mode string, execute bool) {
	addr := benchProxy(b, mode)
	c := dialBench(b, addr)
	cmd := benchPacket(append([]byte{gomysql.COM_QUERY}, "select 1"...))
	if execute {
		sid := c.prepare(b, "select ? + 1")
		// Like go-sql-driver: one BIGINT parameter, its type sent with
		// every execute.
		p := []byte{gomysql.COM_STMT_EXECUTE, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, gomysql.MYSQL_TYPE_LONGLONG, 0}
		binary.LittleEndian.PutUint32(p[1:], sid)
		cmd = benchPacket(binary.LittleEndian.AppendUint64(p, 41))
	}
	benchLoop(b, c, cmd)
}

func benchLoop(b *testing.B, c *benchClient, cmd []byte) {
	// Warm up: buffers, maps and the pool reach their size.
	for range 100 {
		if err := c.roundTrip(cmd); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.roundTrip(cmd); err != nil {
			b.Fatal(err)
		}
	}
}

// benchProxy starts a Server in the given pool mode in front of a fake
// in Bench mode and returns its address.
func benchProxy(b *testing.B, mode string) string {
	f := &fakeServer{Bench: true}
	_, addr := loopbackProxy(b, mode, f, fakeCreds{&creds.Generation{N: 1, Username: "v-bench"}})
	return addr
}

// loopbackProxy starts a Server with backend appdb in front of f, its
// pool taking credentials from c, listening on loopback TCP.
func loopbackProxy(tb testing.TB, mode string, f *fakeServer, c pool.Credentials, setup ...func(*Server)) (*Server, string) {
	up := f.start(tb)
	pl := pool.New(c, pool.Options{Backend: "appdb", Role: "r", MaxConnections: 4, Metrics: pool.NewMetrics(nil)})
	tb.Cleanup(pl.Close)
	policy, err := identity.NewPolicy(map[string]identity.Spec{"app": {Grants: []identity.Grant{{Backend: "appdb", Role: "r"}}}})
	if err != nil {
		tb.Fatal(err)
	}
	srv := NewServer(Options{
		Backends:   map[string]*Backend{"appdb": {Name: "appdb", Addr: up, Database: "appdb", ConnectTimeout: 5 * time.Second, Mode: mode}},
		Pool:       func(string, string) *pool.Pool { return pl },
		Authorizer: policy,
		Log:        zap.NewNop(),
	})
	for _, f := range setup {
		f(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv.Serve(ln, appListener(nil, false))
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = srv.Shutdown(ctx)
	})
	return srv, ln.Addr().String()
}

func benchPacket(payload []byte) []byte {
	b := make([]byte, 4+len(payload))
	putHeader(b, len(payload), 0)
	copy(b[4:], payload)
	return b
}

// benchClient is a client that knows just enough of the protocol to log
// in and tell where an answer ends, without allocating.
type benchClient struct {
	c  net.Conn
	r  *bufio.Reader
	id uint32 // the connection id of the greeting
}

func dialBench(b testing.TB, addr string) *benchClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	bc := &benchClient{c: c, r: bufio.NewReaderSize(c, 64<<10)}
	_, g, err := readPacket(bc.r, 1<<16)
	if err != nil || len(g) < 1 {
		b.Fatal(err)
	}
	if v := bytes.IndexByte(g, 0); v > 0 && len(g) >= v+5 {
		bc.id = binary.LittleEndian.Uint32(g[v+1:])
	}
	resp := handshakeResponse41(testClientCaps, "app", nil, "appdb", gomysql.AUTH_NATIVE_PASSWORD)
	login := benchPacket(resp)
	login[3] = 1
	if _, err := c.Write(login); err != nil {
		b.Fatal(err)
	}
	if _, p, err := readPacket(bc.r, 1<<16); err != nil || len(p) == 0 || p[0] != 0 {
		b.Fatalf("login: %q, %v", p, err)
	}
	return bc
}

// prepare prepares q and returns the statement id the client got.
func (c *benchClient) prepare(b *testing.B, q string) uint32 {
	if _, err := c.c.Write(benchPacket(append([]byte{gomysql.COM_STMT_PREPARE}, q...))); err != nil {
		b.Fatal(err)
	}
	_, ok, err := readPacket(c.r, 1<<16)
	if err != nil || len(ok) < 12 || ok[0] != 0 {
		b.Fatalf("prepare: %q, %v", ok, err)
	}
	// Parameter and column definitions (no EOFs: DEPRECATE_EOF).
	for range int(binary.LittleEndian.Uint16(ok[5:])) + int(binary.LittleEndian.Uint16(ok[7:])) {
		if _, _, err := readPacket(c.r, 1<<16); err != nil {
			b.Fatal(err)
		}
	}
	return binary.LittleEndian.Uint32(ok[1:])
}

var errBenchAnswer = errors.New("bench: ERR or malformed answer")

// roundTrip sends one command packet and reads its answer: an OK or ERR,
// or a result set up to the OK that ends it.
func (c *benchClient) roundTrip(cmd []byte) error {
	if _, err := c.c.Write(cmd); err != nil {
		return err
	}
	for i := 0; ; i++ {
		hdr, err := c.r.Peek(4)
		if err != nil {
			return err
		}
		n := payloadLen(hdr)
		p, err := c.r.Peek(4 + n)
		if err != nil || n == 0 {
			return errBenchAnswer
		}
		first := p[4]
		_, _ = c.r.Discard(4 + n)
		switch {
		case first == 0xff:
			return errBenchAnswer
		case i == 0 && first == 0x00, i > 0 && first == 0xfe && n < 9:
			return nil
		}
	}
}

// benchServe is the fake server's command loop in Bench mode: a one-row
// result set for COM_QUERY (text) and COM_STMT_EXECUTE (binary), a
// statement with one parameter and one column for COM_STMT_PREPARE, OK
// for the rest.
func benchServe(w io.Writer, r *bufio.Reader, deprecateEOF bool) {
	const status = gomysql.SERVER_STATUS_AUTOCOMMIT
	end := []byte{0xfe, 0, 0, byte(status), 0}
	if deprecateEOF {
		end = []byte{0xfe, 0, 0, byte(status), 0, 0, 0}
	}
	col := func(typ byte) []byte {
		return []byte{3, 'd', 'e', 'f', 0, 0, 0, 1, 'v', 0, 0x0c, 63, 0, 20, 0, 0, 0, typ, 0, 0, 0, 0, 0}
	}
	answer := func(pkts ...[]byte) []byte {
		var buf bytes.Buffer
		for _, p := range pkts {
			if p != nil { // nil: the EOF DEPRECATE_EOF leaves out
				_ = writePkt(&buf, 0, p)
			}
		}
		return renumber(buf.Bytes())
	}
	eof := []byte(nil)
	if !deprecateEOF {
		eof = []byte{0xfe, 0, 0, byte(status), 0}
	}
	query := answer([]byte{1}, col(gomysql.MYSQL_TYPE_VAR_STRING), eof, []byte{1, '1'}, end)
	execute := answer([]byte{1}, col(gomysql.MYSQL_TYPE_LONGLONG), eof, []byte{0, 0, 42, 0, 0, 0, 0, 0, 0, 0}, end)
	prepare := answer([]byte{0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0}, col(gomysql.MYSQL_TYPE_LONGLONG), eof, col(gomysql.MYSQL_TYPE_LONGLONG), eof)
	ok := answer([]byte{0, 0, 0, byte(status), 0, 0, 0})
	buf := make([]byte, 1<<16)
	for {
		if _, err := io.ReadFull(r, buf[:4]); err != nil {
			return
		}
		n := payloadLen(buf)
		if n == 0 {
			return
		}
		// A command larger than buf: its start is kept, the rest (and
		// any further 16 MiB parts) skipped.
		if _, err := io.ReadFull(r, buf[:min(n, len(buf))]); err != nil {
			return
		}
		if discardRest(r, n-min(n, len(buf)), n) != nil {
			return
		}
		var out []byte
		switch buf[0] {
		case gomysql.COM_QUIT:
			return
		case gomysql.COM_STMT_CLOSE, gomysql.COM_STMT_SEND_LONG_DATA:
			continue
		case gomysql.COM_QUERY:
			out = query
		case gomysql.COM_STMT_EXECUTE:
			out = execute
		case gomysql.COM_STMT_PREPARE:
			out = prepare
		default:
			out = ok
		}
		if _, err := w.Write(out); err != nil {
			return
		}
	}
}

// discardRest skips skip bytes of a packet of n payload bytes, then the
// packets that continue it.
func discardRest(r *bufio.Reader, skip, n int) error {
	for {
		if _, err := r.Discard(skip); err != nil || n < maxPayload {
			return err
		}
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		n = payloadLen(hdr[:])
		skip = n
	}
}

// renumber gives the packets in b the sequence numbers 1, 2, ...
func renumber(b []byte) []byte {
	seq := byte(1)
	for i := 0; i+4 <= len(b); i += 4 + payloadLen(b[i:]) {
		b[i+3] = seq
		seq++
	}
	return b
}
