package integration

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// rawMy is a hand-made MySQL client for tests that need exact packets.
type rawMy struct {
	c net.Conn
	r *bufio.Reader
}

// Capabilities of rawMy: protocol 4.1 with EOF packets (no
// CLIENT_DEPRECATE_EOF), so that the relay's EOF path is covered too.
const rawMyCaps = 1 | // LONG_PASSWORD
	4 | // LONG_FLAG
	8 | // CONNECT_WITH_DB
	512 | // PROTOCOL_41
	8192 | // TRANSACTIONS
	32768 | // SECURE_CONNECTION
	1<<17 | // MULTI_RESULTS
	1<<19 // PLUGIN_AUTH

func rawMyDial(t *testing.T, addr string) *rawMy {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	m := &rawMy{c: c, r: bufio.NewReader(c)}
	seq, g := m.read(t)
	if seq != 0 || len(g) == 0 || g[0] != 10 {
		t.Fatalf("greeting: seq %d, %q", seq, g)
	}
	return m
}

func (m *rawMy) read(t *testing.T) (byte, []byte) {
	t.Helper()
	seq, b, err := m.tryRead()
	if err != nil {
		t.Fatalf("read packet: %v", err)
	}
	return seq, b
}

func (m *rawMy) tryRead() (byte, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(m.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
	b := make([]byte, n)
	if _, err := io.ReadFull(m.r, b); err != nil {
		return hdr[3], nil, err
	}
	return hdr[3], b, nil
}

func (m *rawMy) write(t *testing.T, seq byte, payload []byte) {
	t.Helper()
	b := make([]byte, 4+len(payload))
	b[0], b[1], b[2], b[3] = byte(len(payload)), byte(len(payload)>>8), byte(len(payload)>>16), seq
	copy(b[4:], payload)
	if _, err := m.c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// errPacket reads a packet and returns its error code and message; it
// fails unless the packet is an ERR.
func (m *rawMy) errPacket(t *testing.T) (uint16, string) {
	t.Helper()
	_, b := m.read(t)
	if len(b) < 9 || b[0] != 0xff {
		t.Fatalf("want an ERR packet, got %q", b)
	}
	return binary.LittleEndian.Uint16(b[1:]), string(b[9:])
}

// myHandshakeResponse is a HandshakeResponse41 without password.
func myHandshakeResponse(user, db string) []byte {
	b := make([]byte, 32)
	binary.LittleEndian.PutUint32(b, rawMyCaps)
	b[8] = 45 // utf8mb4_general_ci
	b = append(b, user...)
	b = append(b, 0, 0) // NUL, empty auth data
	b = append(b, db...)
	b = append(b, 0)
	b = append(b, "mysql_native_password"...)
	return append(b, 0)
}

// rawMyLogin logs in as user to database db through the proxy port.
func rawMyLogin(t *testing.T, port int, user, db string) *rawMy {
	t.Helper()
	m := rawMyDial(t, fmt.Sprintf("127.0.0.1:%d", port))
	m.write(t, 1, myHandshakeResponse(user, db))
	_, b := m.read(t)
	if len(b) == 0 || b[0] != 0 {
		t.Fatalf("login: %q", b)
	}
	return m
}

// queryValue runs q and returns the first column of the first row ("" for
// an OK answer, "NULL" for NULL); it fails on ERR.
func (m *rawMy) queryValue(t *testing.T, q string) string {
	t.Helper()
	m.write(t, 0, append([]byte{3}, q...))
	_, b := m.read(t)
	switch b[0] {
	case 0x00:
		return ""
	case 0xff:
		t.Fatalf("query %q: %s", q, b[9:])
	}
	cols := int(b[0])
	for range cols {
		m.read(t)
	}
	if _, eof := m.read(t); eof[0] != 0xfe {
		t.Fatalf("no EOF after the column definitions: %q", eof)
	}
	val := ""
	for first := true; ; first = false {
		_, row := m.read(t)
		if row[0] == 0xfe && len(row) < 9 {
			return val
		}
		if !first {
			continue
		}
		if row[0] == 0xfb {
			val = "NULL"
		} else {
			val = string(row[1 : 1+int(row[0])])
		}
	}
}

func (m *rawMy) quit(t *testing.T) {
	t.Helper()
	m.write(t, 0, []byte{1})
	_ = m.c.Close()
}
