package mysql

import (
	"bytes"
	"encoding/binary"
	"fmt"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// Binary prepared statements in transaction pooling. The server numbers
// statements per connection, and a client's statement must work on
// whichever connection its next command lands on. So dbproxy gives the
// client ids of its own and keeps, per client, each statement's text and
// parameter count; per upstream connection, the server's id for each
// statement text it prepared there. A command for a statement the
// connection lacks prepares it there first (the answer swallowed) and is
// rewritten to the server's id.
//
// Statements are shared by text across the clients of a connection: a
// client's COM_STMT_CLOSE forgets its id and leaves the server's
// statement for the next client that prepares the same text.

// clientStmt is a statement a client prepared.
type clientStmt struct {
	query  string
	params int
	// types is the parameter type block (2 bytes a parameter) of the
	// client's last COM_STMT_EXECUTE that sent one: a later execute
	// without types means these.
	types []byte
}

// upStmt is a statement prepared on one upstream connection.
type upStmt struct {
	id uint32
	// types are the parameter types the server last had bound for it.
	types []byte
}

const (
	// lastPrepared is the statement id MariaDB clients use for the
	// statement this connection prepared last.
	lastPrepared        = 0xffffffff
	maxClientStatements = 10000
	// maxUpstreamStatements bounds statements per server connection;
	// MariaDB caps them per server (max_prepared_stmt_count, 16382 by
	// default), so pool size times this must stay below it.
	maxUpstreamStatements = 256
)

// prepare forwards a client's COM_STMT_PREPARE and answers with an id of
// dbproxy's.
func (t *txnSession) prepare(p []byte) error {
	if ok, err := t.hold(respPrepare); !ok {
		return err
	}
	if err := t.writeUp(p); err != nil {
		return err
	}
	up := t.up
	query := string(p[1:])
	_, err := t.answer(respPrepare, false, func(b []byte) {
		if b[0] != 0x00 || len(b) < 9 {
			return // ERR: relayed as it is
		}
		sid := binary.LittleEndian.Uint32(b[1:])
		params := int(binary.LittleEndian.Uint16(b[7:]))
		t.rememberUp(up, query, sid)
		binary.LittleEndian.PutUint32(b[1:], t.remember(query, params))
	})
	if err != nil {
		return err
	}
	t.settle()
	return nil
}

// remember records a client statement and returns its new client id.
func (t *txnSession) remember(query string, params int) uint32 {
	if len(t.stmts) >= maxClientStatements {
		for k := range t.stmts { // evict one; Go's map order is random
			delete(t.stmts, k)
			break
		}
	}
	t.nextStmt++
	if t.nextStmt == 0 {
		t.nextStmt = 1
	}
	t.stmts[t.nextStmt] = &clientStmt{query: query, params: params}
	return t.nextStmt
}

// rememberUp records the server's id for query on up, closing a statement
// there if up is at its cap or already had one for query.
func (t *txnSession) rememberUp(up *upstream, query string, sid uint32) {
	if up.stmts == nil {
		up.stmts = map[string]*upStmt{}
	}
	if old := up.stmts[query]; old != nil && old.id != sid {
		t.closeUp(old.id)
	}
	if _, ok := up.stmts[query]; !ok && len(up.stmts) >= maxUpstreamStatements {
		for q, victim := range up.stmts {
			delete(up.stmts, q)
			t.closeUp(victim.id)
			break
		}
	}
	up.stmts[query] = &upStmt{id: sid}
}

// closeUp queues COM_STMT_CLOSE, which has no answer, for a server id;
// it goes out with the next command.
func (t *txnSession) closeUp(sid uint32) {
	var b [4 + 5]byte
	putHeader(b[:], 5, 0)
	b[4] = gomysql.COM_STMT_CLOSE
	binary.LittleEndian.PutUint32(b[5:], sid)
	_, _ = t.up.bw.Write(b[:])
}

// stmtCommand handles the commands that name a statement by id.
func (t *txnSession) stmtCommand(p []byte, kind respKind) error {
	if len(p) < 5 {
		return &Error{Code: erMalformedPacket, State: "HY000", Message: "malformed packet: a statement command without a statement id"}
	}
	cmd := p[0]
	cid := binary.LittleEndian.Uint32(p[1:])
	if cid == lastPrepared {
		// MariaDB's direct execute: PREPARE and EXECUTE sent together,
		// the second naming "the statement just prepared".
		cid = t.nextStmt
	}
	cs := t.stmts[cid]
	switch {
	case cmd == gomysql.COM_STMT_CLOSE:
		delete(t.stmts, cid)
		return nil
	case cs == nil && kind == respNone:
		return nil // the server drops long data for an unknown id too
	case cs == nil:
		return t.unknownStmt(cid, cmd)
	case cmd == gomysql.COM_STMT_RESET && t.up == nil:
		// Nothing of the statement lives on any connection (long data
		// and cursors pin theirs): the reset has nothing to do.
		return t.s.reply(okPacket(1, t.status))
	}
	if ok, err := t.hold(kind); !ok {
		return err
	}
	us, errPkt, err := t.ensure(cs)
	if err != nil {
		return err
	}
	if errPkt != nil {
		// The statement cannot be prepared here (a table was dropped):
		// the server's reason is the answer to the client's command.
		if kind == respNone {
			return nil
		}
		e := parseErrPacket(errPkt)
		if err := t.s.reply(e.packet(1)); err != nil {
			return err
		}
		t.settle()
		return nil
	}
	// The command is the client's buffer, which is dbproxy's to change.
	q := p
	binary.LittleEndian.PutUint32(q[1:], us.id)
	switch cmd {
	case gomysql.COM_STMT_EXECUTE:
		if t.large && rebinds(q, cs, us) {
			// The types go in the middle of a command being streamed.
			var err error
			if q, err = t.readWhole(); err != nil {
				return err
			}
			binary.LittleEndian.PutUint32(q[1:], us.id)
		}
		q = bindTypes(q, cs, us)
	case gomysql.COM_STMT_SEND_LONG_DATA:
		t.longData = true
	case gomysql.COM_STMT_RESET:
		t.longData, t.cursor = false, false
	}
	if err := t.sendCommand(q); err != nil {
		return err
	}
	if kind == respNone {
		return nil
	}
	if _, err := t.answer(kind, false, nil); err != nil {
		return err
	}
	if cmd == gomysql.COM_STMT_EXECUTE {
		t.longData = false // the server consumed it
	}
	t.settle()
	return nil
}

// unknownStmt answers a command for an id dbproxy never gave out, as the
// server would.
func (t *txnSession) unknownStmt(cid uint32, cmd byte) error {
	name := "mysqld_stmt_execute"
	switch cmd {
	case gomysql.COM_STMT_FETCH:
		name = "mysqld_stmt_fetch"
	case gomysql.COM_STMT_RESET:
		name = "mysqld_stmt_reset"
	}
	e := &Error{Code: gomysql.ER_UNKNOWN_STMT_HANDLER, State: "HY000",
		Message: fmt.Sprintf("Unknown prepared statement handler (%d) given to %s", cid, name)}
	return t.s.reply(e.packet(1))
}

// ensure makes cs exist on the held upstream, preparing it there (answer
// swallowed) if needed. errPkt is the server's ERR when that fails.
func (t *txnSession) ensure(cs *clientStmt) (us *upStmt, errPkt []byte, err error) {
	up := t.up
	if us := up.stmts[cs.query]; us != nil {
		return us, nil, nil
	}
	if err := t.writeUp(append([]byte{gomysql.COM_STMT_PREPARE}, cs.query...)); err != nil {
		return nil, nil, err
	}
	first, err := t.answer(respPrepare, true, nil)
	if err != nil {
		return nil, nil, err
	}
	if len(first) < 9 || first[0] != 0x00 {
		return nil, first, nil
	}
	t.rememberUp(up, cs.query, binary.LittleEndian.Uint32(first[1:]))
	return up.stmts[cs.query], nil, nil
}

// rebinds reports whether bindTypes would rebuild pkt.
func rebinds(pkt []byte, cs *clientStmt, us *upStmt) bool {
	n := cs.params
	pos := 1 + 4 + 1 + 4 + (n+7)/8
	return n > 0 && len(pkt) > pos && pkt[pos] != 1 && cs.types != nil && !bytes.Equal(us.types, cs.types)
}

// bindTypes keeps the parameter types the server has for a statement
// those the client means. An execute whose new-params-bound flag is 0
// means "the types I sent last time", which the server knows only if that
// execute ran on this connection: if the statement's types here are not
// the client's last ones, dbproxy sends them (flag 1). pkt is the execute
// packet with the server's statement id; it is returned, perhaps rebuilt.
func bindTypes(pkt []byte, cs *clientStmt, us *upStmt) []byte {
	n := cs.params
	if n == 0 {
		return pkt
	}
	// command, id, flags, iteration count, NULL bitmap
	pos := 1 + 4 + 1 + 4 + (n+7)/8
	if len(pkt) <= pos {
		return pkt // malformed: the server says so
	}
	if pkt[pos] == 1 {
		if len(pkt) < pos+1+2*n {
			return pkt
		}
		// Copied into the arrays they have: most drivers send the
		// types with every execute.
		types := pkt[pos+1 : pos+1+2*n]
		cs.types = append(cs.types[:0], types...)
		us.types = append(us.types[:0], types...)
		return pkt
	}
	if cs.types == nil || bytes.Equal(us.types, cs.types) {
		return pkt
	}
	out := make([]byte, 0, len(pkt)+2*n)
	out = append(out, pkt[:pos]...)
	out = append(out, 1)
	out = append(out, cs.types...)
	out = append(out, pkt[pos+1:]...)
	us.types = append(us.types[:0], cs.types...)
	return out
}
