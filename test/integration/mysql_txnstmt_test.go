package integration

import (
	"encoding/binary"
	"strconv"
	"testing"
	"time"
)

// rawPrepare prepares q and returns the statement id dbproxy gave.
func (m *rawMy) rawPrepare(t *testing.T, q string) uint32 {
	t.Helper()
	m.write(t, 0, append([]byte{0x16}, q...))
	_, ok := m.read(t)
	if len(ok) < 12 || ok[0] != 0 {
		t.Fatalf("prepare %q: %q", q, ok)
	}
	cols, params := binary.LittleEndian.Uint16(ok[5:]), binary.LittleEndian.Uint16(ok[7:])
	for _, n := range []uint16{params, cols} {
		if n == 0 {
			continue
		}
		for range n + 1 { // definitions and their EOF
			m.read(t)
		}
	}
	return binary.LittleEndian.Uint32(ok[1:])
}

// rawExecute runs statement id with one BIGINT parameter v, sending its
// type only if withTypes, and returns the single value of its one row,
// or the ERR code.
func (m *rawMy) rawExecute(t *testing.T, id uint32, v int64, withTypes bool) (string, uint16) {
	t.Helper()
	p := []byte{0x17, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(p[1:], id)
	if withTypes {
		p = append(p, 1, 8, 0) // new-params-bound, MYSQL_TYPE_LONGLONG signed
	} else {
		p = append(p, 0)
	}
	p = binary.LittleEndian.AppendUint64(p, uint64(v))
	m.write(t, 0, p)
	_, b := m.read(t)
	if b[0] == 0xff {
		return "", binary.LittleEndian.Uint16(b[1:])
	}
	if b[0] != 1 {
		t.Fatalf("execute: want one column, got %q", b)
	}
	_, col := m.read(t)
	typ := colType(t, col)
	m.read(t) // EOF
	_, row := m.read(t)
	m.read(t)      // EOF
	val := row[2:] // header 0x00, NULL bitmap of one byte
	switch typ {
	case 8:
		return strconv.FormatInt(int64(binary.LittleEndian.Uint64(val)), 10), 0
	case 0xf6: // NEWDECIMAL: a length-encoded string
		return string(val[1 : 1+int(val[0])]), 0
	}
	t.Fatalf("result column of type %d", typ)
	return "", 0
}

// colType is the type of a column definition (protocol 4.1).
func colType(t *testing.T, b []byte) byte {
	t.Helper()
	pos := 0
	for range 6 { // catalog, schema, table, org_table, name, org_name
		pos += 1 + int(b[pos])
	}
	return b[pos+1+2+4]
}

// TestMySQLTxnStatementTypes: an execute that sends no parameter types
// (new-params-bound 0, "the types of my last execute") works when it
// lands on another server connection than that last execute: dbproxy
// prepares the statement there and sends the types itself.
func TestMySQLTxnStatementTypes(t *testing.T) {
	_, port := startMyTxnStack(t, "my-txnps", 2, time.Hour, 2*time.Hour)
	a := rawMyLogin(t, port, "app", "appdb")
	defer a.c.Close()
	id := a.rawPrepare(t, "select ? + 1")
	if v, code := a.rawExecute(t, id, 41, true); v != "42" {
		t.Fatalf("first execute: %q, error %d", v, code)
	}
	if v, code := a.rawExecute(t, id, 9, false); v != "10" {
		t.Fatalf("execute without types on the same connection: %q, error %d", v, code)
	}
	// b's transaction takes the connection a's statement ran on.
	b := rawMyLogin(t, port, "app", "appdb")
	defer b.c.Close()
	b.queryValue(t, "begin")
	tid := b.queryValue(t, "select connection_id()")
	if v, code := a.rawExecute(t, id, 99, false); v != "100" {
		t.Fatalf("execute without types on another connection: %q, error %d", v, code)
	}
	if got := a.queryValue(t, "select connection_id()"); got == tid {
		t.Fatalf("a ran on %s, the connection b's transaction holds", got)
	}
	b.queryValue(t, "commit")
	// Closed: the id is unknown, as the server would say.
	a.write(t, 0, []byte{0x19, byte(id), byte(id >> 8), byte(id >> 16), byte(id >> 24)})
	if _, code := a.rawExecute(t, id, 1, true); code != 1243 {
		t.Fatalf("execute after close: want ERR 1243, got %d", code)
	}
	if v := a.queryValue(t, "select 7"); v != "7" {
		t.Fatalf("after the error: %q", v)
	}
}
