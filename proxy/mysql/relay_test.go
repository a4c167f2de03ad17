package mysql

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

func TestLenenc(t *testing.T) {
	tests := []struct {
		in   []byte
		v    uint64
		n    int
		okay bool
	}{
		{[]byte{0}, 0, 1, true},
		{[]byte{250, 9}, 250, 1, true},
		{[]byte{0xfc, 0x34, 0x12}, 0x1234, 3, true},
		{[]byte{0xfd, 1, 2, 3}, 0x030201, 4, true},
		{[]byte{0xfe, 1, 0, 0, 0, 0, 0, 0, 1}, 1<<56 | 1, 9, true},
		{nil, 0, 0, false},
		{[]byte{0xfb}, 0, 0, false},
		{[]byte{0xff}, 0, 0, false},
		{[]byte{0xfc, 1}, 0, 0, false},
		{[]byte{0xfd, 1, 2}, 0, 0, false},
		{[]byte{0xfe, 1, 2, 3, 4, 5, 6, 7}, 0, 0, false},
	}
	for _, tt := range tests {
		v, n, ok := lenenc(tt.in)
		if v != tt.v || n != tt.n || ok != tt.okay {
			t.Errorf("lenenc(%x) = %d, %d, %v; want %d, %d, %v", tt.in, v, n, ok, tt.v, tt.n, tt.okay)
		}
	}
}

func TestOKAndEOFStatus(t *testing.T) {
	if s, ok := okStatus([]byte{0, 0xfc, 1, 1, 5, 3, 0, 0, 0}); !ok || s != 3 {
		t.Errorf("OK with a 3-byte affected rows: %d %v", s, ok)
	}
	if _, ok := okStatus([]byte{0, 0, 0, 3}); ok {
		t.Error("truncated OK parsed")
	}
	if _, ok := okStatus([]byte{0, 0xfc}); ok {
		t.Error("OK with a truncated integer parsed")
	}
	if s, ok := eofStatus([]byte{0xfe, 0, 0, 0x22, 0}); !ok || s != 0x22 {
		t.Errorf("EOF: %d %v", s, ok)
	}
}

func pkt(seq byte, payload []byte) []byte {
	b := make([]byte, 4+len(payload))
	putHeader(b, len(payload), seq)
	copy(b[4:], payload)
	return b
}

func TestPeekAndCopyPacket(t *testing.T) {
	big := bytes.Repeat([]byte{0xab}, 1000)
	in := append(append(pkt(3, []byte{0, 1, 2}), pkt(4, big)...), pkt(5, nil)...)
	r := bufio.NewReaderSize(bytes.NewReader(in), 64)
	var out bytes.Buffer
	for i, want := range []struct {
		n, head int
		seq     byte
	}{{3, 3, 3}, {1000, 64 - 4, 4}, {0, 0, 5}} {
		n, seq, head, err := peekPacket(r)
		if err != nil || n != want.n || seq != want.seq || len(head) != want.head {
			t.Fatalf("packet %d: n %d seq %d head %d, %v", i, n, seq, len(head), err)
		}
		if m, err := copyPacket(r, &out, n); err != nil || m != 4+n {
			t.Fatalf("copy %d: %d, %v", i, m, err)
		}
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatal("copied bytes differ")
	}
	if _, _, _, err := peekPacket(r); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last packet: %v", err)
	}
}

// Server packets for the tracker tests.
var (
	okP        = []byte{0, 0, 0, 2, 0, 0, 0}
	okInTrans  = []byte{0, 1, 0, 3, 0, 0, 0}
	okMore     = []byte{0, 0, 0, 0x0a, 0, 0, 0}
	errP       = append([]byte{0xff, 0x7a, 0x04, '#'}, "42S02no such table"...)
	eofP       = []byte{0xfe, 0, 0, 2, 0}
	eofMore    = []byte{0xfe, 0, 0, 0x0a, 0}
	eofCursor  = []byte{0xfe, 0, 0, 0x42, 0}
	okEOF      = []byte{0xfe, 0, 0, 2, 0, 0, 0}
	okEOFTrans = []byte{0xfe, 0, 0, 3, 0, 0, 0}
	okEOFMore  = []byte{0xfe, 0, 0, 0x0a, 0, 0, 0}
	colDef     = []byte{3, 'd', 'e', 'f', 0, 0, 0, 1, 'a', 0, 0x0c, 45, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0}
	// Rows that look like other packets at their first byte.
	rowEmpty   = []byte{0, 1, 'x'}        // text row: '' then 'x'
	rowNull    = []byte{0xfb}             // text row: NULL
	rowBinary  = []byte{0, 0, 1, 0, 0, 0} // binary row header 0x00
	rowLongish = append([]byte{0xfe}, make([]byte, 20)...)
)

func TestTracker(t *testing.T) {
	type step struct {
		p    []byte
		n    int // physical length when it differs from len(p)
		done bool
	}
	tests := []struct {
		name         string
		deprecateEOF bool
		kinds        []respKind
		steps        []step
		status       uint16
	}{
		{"OK", false, []respKind{respSimple}, []step{{p: okP, done: true}}, 2},
		{"ERR", false, []respKind{respQuery}, []step{{p: errP, done: true}}, 0},
		{"text result set with EOFs", false, []respKind{respQuery}, []step{
			{p: []byte{2}}, {p: colDef}, {p: colDef}, {p: eofP}, {p: rowEmpty}, {p: rowNull}, {p: rowLongish}, {p: eofP, done: true}}, 2},
		{"text result set, DEPRECATE_EOF", true, []respKind{respQuery}, []step{
			{p: []byte{1}}, {p: colDef}, {p: rowEmpty}, {p: rowNull}, {p: okEOFTrans, done: true}}, 3},
		{"row as long as a packet starting with 0xfe", true, []respKind{respQuery}, []step{
			{p: []byte{1}}, {p: colDef}, {p: rowLongish, n: maxPayload}, {p: okEOF, done: true}}, 2},
		{"multi-statement: OK, result set, OK", false, []respKind{respQuery}, []step{
			{p: okMore}, {p: []byte{1}}, {p: colDef}, {p: eofP}, {p: rowNull}, {p: eofMore}, {p: okInTrans, done: true}}, 3},
		{"multi-statement, DEPRECATE_EOF", true, []respKind{respQuery}, []step{
			{p: []byte{1}}, {p: colDef}, {p: rowNull}, {p: okEOFMore}, {p: []byte{1}}, {p: colDef}, {p: okEOF, done: true}}, 2},
		{"multi-statement ends in ERR", false, []respKind{respQuery}, []step{{p: okMore}, {p: errP, done: true}}, 0x0a},
		{"binary result set", false, []respKind{respExecute}, []step{
			{p: []byte{1}}, {p: colDef}, {p: eofP}, {p: rowBinary}, {p: rowBinary}, {p: eofP, done: true}}, 2},
		{"execute opens a cursor", false, []respKind{respExecute, respFetch}, []step{
			{p: []byte{1}}, {p: colDef}, {p: eofCursor, done: true}, {p: rowBinary}, {p: eofP, done: true}}, 2},
		{"execute opens a cursor, DEPRECATE_EOF", true, []respKind{respExecute}, []step{
			{p: []byte{1}}, {p: colDef}, {p: []byte{0xfe, 0, 0, 0x42, 0, 0, 0}, done: true}}, 0x42},
		{"prepare with parameters and columns", false, []respKind{respPrepare}, []step{
			{p: []byte{0, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0}}, {p: colDef}, {p: eofP}, {p: colDef}, {p: colDef}, {p: eofP, done: true}}, 0},
		{"prepare, DEPRECATE_EOF", true, []respKind{respPrepare}, []step{
			{p: []byte{0, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0}}, {p: colDef}, {p: colDef}, {p: colDef, done: true}}, 0},
		{"prepare without parameters or columns", false, []respKind{respPrepare}, []step{
			{p: []byte{0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, done: true}}, 0},
		{"prepare fails", false, []respKind{respPrepare}, []step{{p: errP, done: true}}, 0},
		{"field list", false, []respKind{respFieldList}, []step{{p: colDef}, {p: colDef}, {p: eofP, done: true}}, 2},
		{"statistics string", false, []respKind{respSimple}, []step{{p: []byte("Uptime: 5"), done: true}}, 0},
		{"pipelined commands", true, []respKind{respSimple, respQuery}, []step{
			{p: okP, done: true}, {p: []byte{1}}, {p: colDef}, {p: okEOFTrans, done: true}}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(tt.deprecateEOF)
			for _, k := range tt.kinds {
				tr.expect(k)
			}
			var status uint16
			for i, st := range tt.steps {
				n := st.n
				if n == 0 {
					n = len(st.p)
				}
				ev, err := tr.packet(st.p, n)
				if err != nil {
					t.Fatalf("packet %d (%x): %v", i, st.p, err)
				}
				if ev.done != st.done {
					t.Fatalf("packet %d (%x): done = %v", i, st.p, ev.done)
				}
				if ev.hasStatus {
					status = ev.status
				}
			}
			if !tr.idle() {
				t.Fatalf("tracker not idle after the answers (pending %d)", tr.pending.Load())
			}
			if status != tt.status {
				t.Fatalf("status %#x, want %#x", status, tt.status)
			}
		})
	}
}

func TestTrackerRefuses(t *testing.T) {
	tr := newTracker(false)
	if ev, err := tr.packet(errP, len(errP)); err != nil || !ev.errPacket {
		t.Fatalf("unsolicited ERR (server going away): %+v, %v", ev, err)
	}
	if _, err := tr.packet(okP, len(okP)); err == nil {
		t.Fatal("unsolicited OK accepted")
	}
	tr.expect(respQuery)
	var e *Error
	if _, err := tr.packet([]byte{0xfb, 'f'}, 2); !errors.As(err, &e) || !strings.Contains(e.Message, "LOCAL INFILE") {
		t.Fatalf("LOCAL INFILE request: %v", err)
	}
	tr = newTracker(false)
	tr.expect(respQuery)
	if _, err := tr.packet(nil, 0); err == nil {
		t.Fatal("empty packet accepted")
	}
	tr = newTracker(false)
	tr.expect(respPrepare)
	if _, err := tr.packet([]byte{0, 1}, 2); err == nil {
		t.Fatal("short prepare OK accepted")
	}
}

func TestCommandResponse(t *testing.T) {
	for _, cmd := range []byte{gomysql.COM_CHANGE_USER, gomysql.COM_BINLOG_DUMP, gomysql.COM_BINLOG_DUMP_GTID,
		gomysql.COM_REGISTER_SLAVE, gomysql.COM_SHUTDOWN, gomysql.COM_SLEEP, gomysql.COM_CONNECT, gomysql.COM_TIME,
		gomysql.COM_DAEMON, gomysql.COM_CLONE, 0xfa, 0xfe} {
		if _, ok := commandResponse(cmd); ok {
			t.Errorf("command 0x%02x is relayed", cmd)
		}
	}
	if k, ok := commandResponse(gomysql.COM_STMT_CLOSE); !ok || k != respNone {
		t.Error("COM_STMT_CLOSE: relayed without an answer")
	}
}

// relayPair is a session between a client pipe and an upstream pipe,
// past both handshakes.
type relayPair struct {
	s      *session
	client *pipeClient // the application
	server *pipeClient // the database
	pool   *pool.Pool
	result chan string
}

func newRelayPair(t *testing.T, deprecateEOF bool, maxMsg int) *relayPair {
	t.Helper()
	cc, sc := net.Pipe()
	uc, us := net.Pipe()
	srv := NewServer(Options{Log: zap.NewNop(), MaxMessageBytes: maxMsg})
	up := &upstream{conn: uc, br: bufio.NewReaderSize(uc, 64<<10), bw: bufio.NewWriterSize(uc, 64<<10), threadID: 9}
	pl := pool.New(oneGen(), pool.Options{Backend: "appdb", Role: "r", MaxConnections: 1, Metrics: pool.NewMetrics(nil)})
	t.Cleanup(pl.Close)
	lease, err := pl.Checkout(context.Background(), "k", func(context.Context, *creds.Generation) (pool.Conn, error) { return up, nil })
	if err != nil {
		t.Fatal(err)
	}
	s := &session{srv: srv, log: zap.NewNop(), raw: sc, client: sc, backend: &Backend{Name: "appdb"},
		track: newTracker(deprecateEOF), lease: lease, pool: pl, poolKey: "k"}
	s.cbr, s.cbw = bufio.NewReaderSize(clientIO{s}, 64<<10), bufio.NewWriterSize(clientIO{s}, 64<<10)
	s.nextSeq.Store(1)
	p := &relayPair{s: s, pool: pl, client: &pipeClient{c: cc}, server: &pipeClient{c: us}, result: make(chan string, 1)}
	go func() { p.result <- s.runTxn() }()
	t.Cleanup(func() { cc.Close(); us.Close(); uc.Close(); sc.Close() })
	return p
}

// end waits for the session to end and reports how, and whether its
// connection went back to the pool (after a reset, which it answers).
func (p *relayPair) end(t *testing.T) (string, bool) {
	t.Helper()
	go func() {
		// COM_RESET_CONNECTION, COM_INIT_DB and SET NAMES, pipelined.
		for range 3 {
			if _, _, err := readPacket(p.server.c, 1<<24); err != nil {
				return
			}
		}
		for range 3 {
			p.server.seq = 1
			_ = p.server.write(okP)
		}
	}()
	select {
	case r := <-p.result:
		return r, p.pool.Stats().Idle == 1
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end")
		return "", false
	}
}

func TestRelayQueryAndCleanQuit(t *testing.T) {
	p := newRelayPair(t, true, 0)
	_ = p.client.write(append([]byte{gomysql.COM_QUERY}, "select 1"...))
	_, q, err := p.server.read(t)
	if err != nil || string(q) != "\x03select 1" {
		t.Fatalf("server got %q, %v", q, err)
	}
	answer := [][]byte{{1}, colDef, rowEmpty, okEOFTrans}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for _, a := range answer {
			_ = p.server.write(a)
		}
	}()
	for i, want := range answer {
		seq, b, err := p.client.read(t)
		if err != nil || !bytes.Equal(b, want) || seq != byte(i+1) {
			t.Fatalf("client packet %d: seq %d %x, %v", i, seq, b, err)
		}
	}
	<-wrote
	if !p.s.inTransaction() || !p.s.track.idle() {
		t.Fatal("transaction state not tracked")
	}
	p.client.seq = 0
	_ = p.client.write(append([]byte{gomysql.COM_QUERY}, "commit"...))
	_, _, _ = p.server.read(t)
	wrote = make(chan struct{})
	go func() { defer close(wrote); _ = p.server.write(okP) }()
	if _, b, _ := p.client.read(t); !bytes.Equal(b, okP) {
		t.Fatalf("client got %x", b)
	}
	<-wrote
	if p.s.inTransaction() {
		t.Fatal("still in a transaction after COMMIT's OK")
	}
	p.client.seq = 0
	_ = p.client.write([]byte{gomysql.COM_QUIT})
	if r, reusable := p.end(t); r != "ok" || !reusable {
		t.Fatalf("clean quit: %s reusable %v", r, reusable)
	}
}

func TestRelayQuitInTransactionIsNotReusable(t *testing.T) {
	p := newRelayPair(t, false, 0)
	_ = p.client.write(append([]byte{gomysql.COM_QUERY}, "begin"...))
	_, _, _ = p.server.read(t)
	_ = p.server.write(okInTrans)
	_, _, _ = p.client.read(t)
	p.client.seq = 0
	_ = p.client.write([]byte{gomysql.COM_QUIT})
	if r, reusable := p.end(t); r != "ok" || reusable {
		t.Fatalf("quit in a transaction: %s reusable %v", r, reusable)
	}
}

func TestRelayClientErrors(t *testing.T) {
	tests := []struct {
		name   string
		send   []byte
		maxMsg int
		code   uint16
	}{
		{"sequence out of order", pkt(2, []byte{gomysql.COM_PING}), 0, erNetPacketsOutOfOrder},
		{"empty command", pkt(0, nil), 0, erMalformedPacket},
		{"COM_CHANGE_USER", pkt(0, []byte{gomysql.COM_CHANGE_USER, 'u', 0}), 0, erNotSupportedYet},
		{"binlog dump", pkt(0, []byte{gomysql.COM_BINLOG_DUMP, 0, 0, 0, 0}), 0, erNotSupportedYet},
		{"over max_message_bytes", pkt(0, append([]byte{gomysql.COM_QUERY}, make([]byte, 100)...)), 50, erNetPacketTooLarge},
		{"continuation out of order", append(pkt(0, append([]byte{gomysql.COM_QUERY}, make([]byte, maxPayload-1)...)), pkt(5, []byte{1})...), 0, erNetPacketsOutOfOrder},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newRelayPair(t, false, tt.maxMsg)
			go func() {
				_ = p.client.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				_, _ = p.client.c.Write(tt.send)
			}()
			go func() { _, _ = io.Copy(io.Discard, p.server.c) }()
			_, b, err := p.client.read(t)
			if err != nil || errCode(b) != tt.code {
				t.Fatalf("client got %q, %v; want ERR %d", b, err, tt.code)
			}
			if r, reusable := p.end(t); r != "client_error" || reusable {
				t.Fatalf("ended %s reusable %v", r, reusable)
			}
		})
	}
}

func TestRelayRefusesLocalInfile(t *testing.T) {
	p := newRelayPair(t, false, 0)
	_ = p.client.write(append([]byte{gomysql.COM_QUERY}, "load data local infile '/etc/passwd' into table t"...))
	_, _, _ = p.server.read(t)
	_ = p.server.write(append([]byte{0xfb}, "/etc/passwd"...))
	_, b, err := p.client.read(t)
	if err != nil || errCode(b) != erNotSupportedYet || !strings.Contains(string(b), "LOCAL INFILE") {
		t.Fatalf("client got %q, %v", b, err)
	}
	if r, _ := p.end(t); r != "server_error" {
		t.Fatalf("ended %s", r)
	}
}

func TestRelayLeaseEndAndServerLoss(t *testing.T) {
	p := newRelayPair(t, false, 0)
	// A command in flight when the server goes away: the client hears why.
	_ = p.client.write(append([]byte{gomysql.COM_QUERY}, "select sleep(10)"...))
	_, _, _ = p.server.read(t)
	p.server.c.Close()
	_, b, err := p.client.read(t)
	if err != nil || errCode(b) != erUnknownError || !strings.Contains(string(b), "Lost connection to backend appdb") {
		t.Fatalf("client got %q, %v", b, err)
	}
	if r, _ := p.end(t); r != "server_closed" {
		t.Fatalf("ended %s", r)
	}

	p = newRelayPair(t, false, 0)
	p.s.kill(killByClient)
	seq, b, err := p.client.read(t)
	if err != nil || errCode(b) != erConnectionKilled || seq != 1 {
		t.Fatalf("killed session: seq %d %q, %v", seq, b, err)
	}
	if r, _ := p.end(t); r != "killed" {
		t.Fatalf("ended %s", r)
	}
}

// TestRelayServerHangsUpAfterERR: after an ERR with which the server
// closes the connection (here: packet too large) the session ends too.
func TestRelayServerHangsUpAfterERR(t *testing.T) {
	p := newRelayPair(t, false, 0)
	_ = p.client.write(append([]byte{gomysql.COM_QUERY}, "select 1"...))
	_, _, _ = p.server.read(t)
	tooLarge := append([]byte{0xff, 0x81, 0x04, '#'}, "08S01Got a packet bigger than 'max_allowed_packet' bytes"...)
	go func() { _ = p.server.write(tooLarge) }()
	if _, b, err := p.client.read(t); err != nil || errCode(b) != erNetPacketTooLarge {
		t.Fatalf("client got %q, %v", b, err)
	}
	if r, reusable := p.end(t); r != "server_closed" || reusable {
		t.Fatalf("ended %s reusable %v", r, reusable)
	}
}
