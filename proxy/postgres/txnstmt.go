package postgres

import (
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
}

const (
	maxClientStatements = 10000
	// maxClientStatementBytes bounds the Parse messages kept per client:
	// the count alone would let a client pin 10000 huge queries.
	maxClientStatementBytes = 16 << 20
	maxUpstreamStatements   = 1000
)

// rewrite queues and writes one message to the upstream, renaming named
// prepared statements. t.mu is held.
func (t *txnSession) rewrite(typ byte, body []byte) error {
	up := t.up
	switch typ {
	case 'P':
		name, rest, ok := cstring(body)
		if !ok {
			return fatal(codeProtocolViolation, "malformed Parse message")
		}
		if guard := sessionFeature(firstCString(rest)); guard != "" {
			// Prepare a statement that raises the explanation instead.
			rest = append(appendCString(nil, refusalSQL(guard)), 0, 0)
			body = append(appendCString(nil, name), rest...)
		}
		if name == "" {
			return t.send(request{typ: 'P'}, typ, body)
		}
		st := t.remember(name, rest)
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
		if name == "" {
			return t.send(request{typ: 'B'}, typ, body)
		}
		st, err := t.ensure(name)
		if err != nil {
			return err
		}
		nb := appendCString(appendCString(make([]byte, 0, len(body)+len(st.pname)), portal), st.pname)
		return t.send(request{typ: 'B'}, 'B', append(nb, tail...))
	case 'D', 'C':
		if len(body) < 2 || body[0] != 'S' {
			return t.send(request{typ: typ}, typ, body)
		}
		name, _, ok := cstring(body[1:])
		if !ok {
			return fatal(codeProtocolViolation, "malformed Describe or Close message")
		}
		if name == "" {
			return t.send(request{typ: typ}, typ, body)
		}
		if typ == 'C' {
			// Statements are shared by content across clients: forget the
			// client's name, keep the upstream's statement.
			t.forget(name)
			return t.enqueueFake('3')
		}
		st, err := t.ensure(name)
		if err != nil {
			return err
		}
		return t.send(request{typ: 'D'}, 'D', appendCString([]byte{'S'}, st.pname))
	case 'Q':
		q := firstCString(body)
		if guard := sessionFeature(q); guard != "" {
			return t.send(request{typ: 'Q'}, 'Q', appendCString(nil, refusalSQL(guard)))
		}
		if name, ok := deallocateTarget(q); ok {
			return t.deallocate(name, body)
		}
		return t.send(request{typ: 'Q'}, typ, body)
	case 'E', 'S', 'F':
		return t.send(request{typ: typ}, typ, body)
	case 'H':
		return t.write(typ, body) // Flush: no answer
	}
	return t.write(typ, body)
}

// send queues r and writes the message.
func (t *txnSession) send(r request, typ byte, body []byte) error {
	t.queue = append(t.queue, r)
	return t.write(typ, body)
}

func (t *txnSession) write(typ byte, body []byte) error {
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
	if _, err := t.up.bw.Write(hdr[:]); err != nil {
		return err
	}
	_, err := t.up.bw.Write(body)
	return err
}

// enqueueFake answers a request the proxy did not send, in its turn: now
// if nothing is outstanding, else right after the request before it.
func (t *txnSession) enqueueFake(typ byte) error {
	return t.enqueueFrames([]byte{typ, 0, 0, 0, 4})
}

func (t *txnSession) enqueueFrames(frames []byte) error {
	if len(t.queue) == 0 {
		t.emitNow = append(t.emitNow, frames)
		return nil
	}
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

// remember records a client's Parse under its name.
func (t *txnSession) remember(name string, rest []byte) stmt {
	pname := statementName(rest)
	st := stmt{pname: pname, parse: append(appendCString(nil, pname), rest...)}
	t.forget(name)
	for k := range t.stmts { // evict at random (map order) until it fits
		if len(t.stmts) < maxClientStatements && t.stmtBytes+len(st.parse) <= maxClientStatementBytes {
			break
		}
		t.forget(k)
	}
	t.stmts[name] = st
	t.stmtBytes += len(st.parse)
	return st
}

// forget drops a client statement name.
func (t *txnSession) forget(name string) {
	if st, ok := t.stmts[name]; ok {
		t.stmtBytes -= len(st.parse)
		delete(t.stmts, name)
	}
}

// ensure makes the client's statement exist on the current upstream,
// preparing it there first (answer swallowed) if needed.
func (t *txnSession) ensure(name string) (stmt, error) {
	st, ok := t.stmts[name]
	if !ok {
		// Not ours to rename: let the server report it.
		return stmt{pname: name}, nil
	}
	if t.up.prepared[st.pname] {
		return st, nil
	}
	t.notePrepared(t.up, st.pname)
	return st, t.send(request{typ: 'P', action: actSwallow, pname: st.pname}, 'P', st.parse)
}

// notePrepared records pname on up, closing an old statement there when
// the per-connection cap is reached.
func (t *txnSession) notePrepared(up *upstream, pname string) {
	if len(up.prepared) >= maxUpstreamStatements {
		for victim := range up.prepared {
			delete(up.prepared, victim)
			t.queue = append(t.queue, request{typ: 'C', action: actSwallow})
			_ = t.write('C', appendCString([]byte{'S'}, victim))
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
	return "DO $dbproxy$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = '" + strings.ReplaceAll(msg, "'", "''") + "'; END $dbproxy$"
}

// sessionFeature names a session-level feature in q that cannot work when
// transactions land on different connections, or "".
func sessionFeature(q string) string {
	// The cheap tests first: this runs for every query.
	switch {
	case startsWithFold(q, "listen") && listenRE.MatchString(q):
		return "LISTEN"
	case containsFold(q, "advisory_") && advisoryRE.MatchString(q):
		return "a session-level advisory lock"
	}
	return ""
}

// startsWithFold reports whether q, after leading white space, starts
// with the ASCII word w in any case.
func startsWithFold(q, w string) bool {
	q = strings.TrimLeft(q, " \t\r\n")
	return len(q) >= len(w) && strings.EqualFold(q[:len(w)], w)
}

// containsFold is strings.Contains ignoring ASCII case, without
// allocating a lowered copy of q.
func containsFold(q, sub string) bool {
	first := sub[0] | 0x20 // sub is lower-case ASCII
	for i := 0; i+len(sub) <= len(q); i++ {
		if q[i]|0x20 == first && strings.EqualFold(q[i:i+len(sub)], sub) {
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
func deallocateTarget(q string) (string, bool) {
	if !startsWithFold(q, "deallocate") {
		return "", false
	}
	m := deallocateRE.FindStringSubmatch(q)
	if m == nil || m[1] != m[3] {
		return "", false
	}
	return m[2], true
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

func firstCString(b []byte) string {
	s, _, _ := cstring(b)
	return s
}

func appendCString(dst []byte, s string) []byte {
	return append(append(dst, s...), 0)
}
