package postgres

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Prepared statements and session features in transaction pooling: client
// statement names map to server statements named by content, prepared on
// whichever connection a transaction lands on.

// stmt is a client's named prepared statement.
type stmt struct {
	pname string // name on upstream connections
	parse []byte // Parse message body with pname, to prepare it anywhere
	// sql marks a statement from an SQL PREPARE (txnsql.go); parse is
	// then the PREPARE query under pname.
	sql bool
}

const (
	maxClientStatements = 10000
	// maxClientStatementBytes bounds the Parse messages kept per client:
	// the count alone would let a client pin 10000 huge queries.
	maxClientStatementBytes = 16 << 20
	maxUpstreamStatements   = 1000
)

// rewrite queues one message for the upstream (into t.stage), renaming
// named prepared statements. t.mu is held.
func (t *txnSession) rewrite(typ byte, body []byte) error {
	up := t.up
	switch typ {
	case 'P':
		name, rest, ok := cstring(body)
		if !ok {
			return fatal(codeProtocolViolation, "malformed Parse message")
		}
		t.endsTxn = endsTransaction(firstCString(rest))
		if guard := sessionFeature(firstCString(rest)); guard != "" {
			// Prepare a statement that raises the explanation instead.
			rest = append(appendCString(nil, []byte(refusalSQL(guard))), 0, 0)
			body = append(appendCString(nil, name), rest...)
		}
		if startsWithFold(rest, "set") || startsWithFold(rest, "reset") {
			// A SET through the extended protocol is not followed: the
			// connection is reset before anyone else uses it.
			up.tag = dirtyTag
		}
		if len(name) == 0 {
			return t.send(request{typ: 'P'}, typ, body)
		}
		pname := statementName(rest)
		st := stmt{pname: pname, parse: append(append([]byte(pname), 0), rest...)}
		t.remember(string(name), st)
		if up.prepared[st.pname] {
			return t.enqueueFake('1')
		}
		t.notePrepared(up, st.pname)
		return t.send(request{typ: 'P', pname: st.pname}, 'P', st.parse)
	case 'B':
		portal, rest, ok := cstring(body)
		name, tail, ok2 := cstring(rest)
		if !ok || !ok2 {
			return fatal(codeProtocolViolation, "malformed Bind message")
		}
		if len(name) == 0 {
			return t.send(request{typ: 'B'}, typ, body)
		}
		pname, err := t.ensure(name)
		if err != nil {
			return err
		}
		t.queue = append(t.queue, request{typ: 'B'})
		at := t.begin('B')
		t.stage = append(appendCString(t.stage, portal), pname...)
		t.stage = append(append(t.stage, 0), tail...)
		t.end(at)
		return nil
	case 'D', 'C':
		if len(body) < 2 || body[0] != 'S' {
			return t.send(request{typ: typ}, typ, body)
		}
		name, _, ok := cstring(body[1:])
		if !ok {
			return fatal(codeProtocolViolation, "malformed Describe or Close message")
		}
		if len(name) == 0 {
			return t.send(request{typ: typ}, typ, body)
		}
		if typ == 'C' {
			// Statements are shared by content across clients: forget the
			// client's name, keep the upstream's statement.
			t.forget(string(name))
			return t.enqueueFake('3')
		}
		pname, err := t.ensure(name)
		if err != nil {
			return err
		}
		t.queue = append(t.queue, request{typ: 'D'})
		at := t.begin('D')
		t.stage = append(append(t.stage, 'S'), pname...)
		t.stage = append(t.stage, 0)
		t.end(at)
		return nil
	case 'Q':
		q := firstCString(body)
		t.endsTxn = endsTransaction(q)
		if guard := sessionFeature(q); guard != "" {
			return t.send(request{typ: 'Q'}, 'Q', appendCString(nil, []byte(refusalSQL(guard))))
		}
		if name, def, ok := sqlPrepare(q); ok {
			return t.prepareSQL(name, def)
		} else if unfollowedPrepare(q) {
			// It would leave a statement under the client's name on a
			// connection other clients use.
			return t.send(request{typ: 'Q'}, 'Q', appendCString(nil, []byte(refusalSQL("PREPARE in a query with several statements"))))
		}
		if name, args, ok := sqlExecute(q); ok {
			if st, ok := t.stmts[name]; ok && st.sql {
				return t.executeSQL(st, args)
			}
		}
		if name, ok := deallocateTarget(q); ok {
			return t.deallocate(name, body)
		}
		if ch, refuse := classifySet(q); refuse != "" {
			return t.send(request{typ: 'Q'}, 'Q', appendCString(nil, []byte(refusalSQL(refuse))))
		} else if ch != nil {
			if ch.failed {
				up.tag = dirtyTag // not followed: never lent on as is
			}
			return t.send(request{typ: 'Q', set: ch}, typ, body)
		}
		return t.send(request{typ: 'Q'}, typ, body)
	case 'E', 'S', 'F':
		return t.send(request{typ: typ}, typ, body)
	case 'H':
		return t.write(typ, body) // Flush: no answer
	}
	return t.write(typ, body)
}

// begin starts a message in the stage; end sets its length.
func (t *txnSession) begin(typ byte) int {
	at := len(t.stage)
	t.stage = append(t.stage, typ, 0, 0, 0, 0)
	return at
}

func (t *txnSession) end(at int) {
	binary.BigEndian.PutUint32(t.stage[at+1:], uint32(len(t.stage)-at-1))
}

// send queues r and stages the message.
func (t *txnSession) send(r request, typ byte, body []byte) error {
	t.queue = append(t.queue, r)
	return t.write(typ, body)
}

// write stages one message; forwardFrame writes the stage upstream.
func (t *txnSession) write(typ byte, body []byte) error {
	t.stage = appendFrame(t.stage, typ, body)
	return nil
}

// enqueueFake answers a request the proxy did not send, in its turn: now
// if nothing is outstanding, else right after the request before it.
func (t *txnSession) enqueueFake(typ byte) error {
	if typ == '1' {
		return t.enqueueFrames(parseComplete)
	}
	return t.enqueueFrames(closeComplete)
}

// Answers dbproxy fakes; shared, never modified.
var (
	parseComplete = []byte{'1', 0, 0, 0, 4}
	closeComplete = []byte{'3', 0, 0, 0, 4}
)

func (t *txnSession) enqueueFrames(frames []byte) error {
	if len(t.queue) == 0 && t.duplex != nil {
		// Every earlier answer was written: this one is due now.
		_, err := t.s.cbw.Write(t.s.patchStatus(frames))
		return err
	}
	// Held until the server's first answer shows the connection is alive
	// (or nothing else is due): a retry must not send the client an
	// answer twice.
	t.queue = append(t.queue, request{action: actFake, fake: frames})
	return nil
}

// deallocateAnswer is what PostgreSQL answers a DEALLOCATE query; the
// ReadyForQuery status is patched in when it is written.
var deallocateAnswer = func() []byte {
	b, _ := (&pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE")}).Encode(nil)
	b, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(b)
	return b
}()

// patchStatus returns frames with a trailing fake ReadyForQuery set to
// the session's transaction status, which is known only when it is written
// (after the real ReadyForQuery before it).
func (s *session) patchStatus(frames []byte) []byte {
	n := len(frames)
	if n >= 6 && frames[n-6] == 'Z' && frames[n-3] == 0 && frames[n-2] == 5 {
		out := append([]byte(nil), frames...)
		out[n-1] = byte(s.txStatus.Load())
		return out
	}
	return frames
}

// remember records a client's statement under its name.
func (t *txnSession) remember(name string, st stmt) {
	t.forget(name)
	for k := range t.stmts { // evict at random (map order) until it fits
		if len(t.stmts) < maxClientStatements && t.stmtBytes+len(st.parse) <= maxClientStatementBytes {
			break
		}
		t.forget(k)
	}
	t.stmts[name] = st
	t.stmtBytes += len(st.parse)
}

// forget drops a client statement name.
func (t *txnSession) forget(name string) {
	if st, ok := t.stmts[name]; ok {
		t.stmtBytes -= len(st.parse)
		delete(t.stmts, name)
	}
}

// ensure makes the client's statement exist on the current upstream,
// preparing it there first (answer swallowed) if needed, and returns its
// name there.
func (t *txnSession) ensure(name []byte) (string, error) {
	st, ok := t.stmts[string(name)]
	if !ok {
		// Not ours to rename: let the server report it.
		return string(name), nil
	}
	if t.up.prepared[st.pname] || st.sql {
		// An SQL statement bound through the protocol works where it was
		// prepared or executed in this transaction.
		return st.pname, nil
	}
	t.notePrepared(t.up, st.pname)
	return st.pname, t.send(request{typ: 'P', action: actSwallow, pname: st.pname}, 'P', st.parse)
}

// notePrepared records pname on up, closing an old statement there when
// the per-connection cap is reached.
func (t *txnSession) notePrepared(up *upstream, pname string) {
	if len(up.prepared) >= maxUpstreamStatements {
		for victim := range up.prepared {
			delete(up.prepared, victim)
			_ = t.send(request{typ: 'C', action: actSwallow}, 'C', append(append([]byte{'S'}, victim...), 0))
			break
		}
	}
	up.prepared[pname] = true
}

// deallocate handles SQL DEALLOCATE of a protocol-level statement, whose
// server-side name the client does not know.
func (t *txnSession) deallocate(name string, body []byte) error {
	if strings.EqualFold(name, "all") {
		// Other clients' statements on this connection go too: they are
		// prepared again when next used.
		clear(t.stmts)
		t.stmtBytes = 0
		clear(t.up.prepared)
		return t.send(request{typ: 'Q'}, 'Q', body)
	}
	if _, ok := t.stmts[name]; !ok {
		return t.send(request{typ: 'Q'}, 'Q', body) // an SQL PREPARE: server's
	}
	t.forget(name)
	// Answered by dbproxy: the server statement may be shared with other
	// clients, and stays.
	return t.enqueueFrames(deallocateAnswer)
}

// refusalSQL raises the explanation for a session-level feature from
// the server itself, so the transaction state the client sees is true.
func refusalSQL(feature string) string {
	msg := fmt.Sprintf("%s is not supported in transaction pooling mode: it needs the same server connection across transactions; use a backend with pool mode session", feature)
	return raiseSQL("feature_not_supported", msg)
}

// raiseSQL is a statement that makes the server raise an error with code
// (a condition name) and msg, so the client hears it in the transaction
// state the server really has. '$' is dropped from msg: it could end the
// dollar quote.
func raiseSQL(code, msg string) string {
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "'", "''"), "$", "")
	return "DO $dbproxy$ BEGIN RAISE EXCEPTION USING ERRCODE = '" + code + "', MESSAGE = '" + msg + "'; END $dbproxy$"
}

// sessionFeature names a session-level feature in q that cannot work when
// transactions land on different connections, or "".
func sessionFeature(q []byte) string {
	// The cheap tests first: this runs for every query.
	switch {
	case startsWithFold(q, "listen") && listenRE.Match(q):
		return "LISTEN"
	case containsFold(q, "advisory_") && advisoryRE.Match(q):
		return "a session-level advisory lock"
	}
	return ""
}

// startsWithFold reports whether q, after leading white space, starts
// with the ASCII word w in any case.
func startsWithFold(q []byte, w string) bool {
	q = bytes.TrimLeft(q, " \t\r\n")
	return len(q) >= len(w) && strings.EqualFold(string(q[:len(w)]), w)
}

// containsFold is a case-insensitive bytes.Contains for a lower-case
// ASCII sub, without allocating a lowered copy of q.
func containsFold(q []byte, sub string) bool {
	first := sub[0] | 0x20
	for i := 0; i+len(sub) <= len(q); i++ {
		if q[i]|0x20 == first && strings.EqualFold(string(q[i:i+len(sub)]), sub) {
			return true
		}
	}
	return false
}

var (
	listenRE     = regexp.MustCompile(`(?i)^\s*listen\s`)
	advisoryRE   = regexp.MustCompile(`(?i)\bpg_(try_)?advisory_lock(_shared)?\s*\(`)
	deallocateRE = regexp.MustCompile(`(?i)^\s*deallocate\s+(?:prepare\s+)?("?)([\w$]+)("?)\s*;?\s*$`)
)

// deallocateTarget returns the statement name of a DEALLOCATE command.
func deallocateTarget(q []byte) (string, bool) {
	if !startsWithFold(q, "deallocate") {
		return "", false
	}
	m := deallocateRE.FindSubmatch(q)
	if m == nil || !bytes.Equal(m[1], m[3]) {
		return "", false
	}
	return string(m[2]), true
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) ([]byte, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

func firstCString(b []byte) []byte {
	s, _, _ := cstring(b)
	return s
}

func appendCString(dst []byte, s []byte) []byte {
	return append(append(dst, s...), 0)
}
