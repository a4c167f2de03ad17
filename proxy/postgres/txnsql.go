package postgres

import (
	"bytes"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SQL-level prepared statements in transaction pooling: PREPARE name AS
// ..., EXECUTE name(...), DEALLOCATE name, as simple queries. Like
// protocol-level statements (txnstmt.go) they are recorded per client and
// live on server connections under a name dbproxy derives from their
// definition, so equal statements of different clients share one server
// statement and a client's statement works on whichever connection its
// transaction lands on: an EXECUTE on a connection that lacks it is
// preceded by the PREPARE, its answer swallowed. PostgreSQL's statement
// namespace is shared by both kinds; so is the client's record here.
//
// Only the plain single-statement forms are followed; anything else
// (EXPLAIN EXECUTE, CREATE TABLE AS EXECUTE, PREPARE in a multi-statement
// query) reaches the server unchanged, under the client's name.

var (
	prepareRE    = regexp.MustCompile(`(?is)^\s*prepare\s+("[^"]+"|[a-z_][\w$]*)(\s*(?:\([^)]*\))?\s+as\s+.*?)\s*;?\s*$`)
	prepareTxnRE = regexp.MustCompile(`(?is)^\s*prepare\s+transaction\b`)
	executeRE    = regexp.MustCompile(`(?is)^\s*execute\s+("[^"]+"|[a-z_][\w$]*)\s*(\(.*\))?\s*;?\s*$`)
)

// sqlPrepare splits a PREPARE statement into the statement name (as the
// server folds it) and its definition: parameter types and the query.
func sqlPrepare(q []byte) (name string, def []byte, ok bool) {
	if !startsWithFold(q, "prepare") || bytes.IndexByte(q, ';') >= 0 && bytes.IndexByte(q, ';') < len(bytes.TrimRight(q, "; \t\r\n")) {
		return "", nil, false
	}
	m := prepareRE.FindSubmatch(q)
	if m == nil {
		return "", nil, false
	}
	return identName(m[1]), m[2], true
}

// unfollowedPrepare reports a PREPARE that sqlPrepare does not follow (one
// statement among several); PREPARE TRANSACTION is not one.
func unfollowedPrepare(q []byte) bool {
	return startsWithFold(q, "prepare") && !prepareTxnRE.Match(q) && !bytes.HasPrefix(bytes.ToLower(bytes.TrimLeft(q, " \t\r\n")), []byte("prepared"))
}

// sqlExecute splits an EXECUTE statement into the statement name and its
// argument list (with parentheses, or empty).
func sqlExecute(q []byte) (name string, args []byte, ok bool) {
	if !startsWithFold(q, "execute") {
		return "", nil, false
	}
	m := executeRE.FindSubmatch(q)
	if m == nil {
		return "", nil, false
	}
	return identName(m[1]), m[2], true
}

// identName is an SQL identifier as PostgreSQL names it: unquoted ones
// fold to lower case.
func identName(id []byte) string {
	if len(id) >= 2 && id[0] == '"' {
		return string(id[1 : len(id)-1])
	}
	return strings.ToLower(string(id))
}

// prepareSQL handles a client's PREPARE: recorded once the server
// accepts it, answered by dbproxy when the connection already has the
// same statement. t.mu is held.
func (t *txnSession) prepareSQL(name string, def []byte) error {
	pname := statementName(append([]byte("sql\x00"), def...))
	if old, ok := t.stmts[name]; ok && old.pname != pname {
		// As PostgreSQL would: the name is taken. (The same definition
		// again is taken as the same statement: a request sent again on
		// another connection after a dead one repeats its PREPARE.)
		return t.send(request{typ: 'Q'}, 'Q', appendCString(nil, []byte(duplicateSQL(name))))
	}
	st := stmt{pname: pname, parse: append([]byte("PREPARE "+pname), def...), sql: true}
	t.remember(name, st)
	if t.up.prepared[pname] {
		return t.enqueueFrames(prepareAnswer)
	}
	t.up.prepared[pname] = true
	return t.send(request{typ: 'Q', pname: pname, client: name}, 'Q', appendCString(nil, st.parse))
}

// executeSQL sends a client's EXECUTE under the server's name, preparing
// the statement first where it is missing. t.mu is held.
func (t *txnSession) executeSQL(st stmt, args []byte) error {
	if !t.up.prepared[st.pname] {
		t.up.prepared[st.pname] = true
		t.queue = append(t.queue, request{typ: 'Q', action: actSwallowAll, pname: st.pname})
		_ = t.write('Q', appendCString(nil, st.parse))
	}
	q := append([]byte("EXECUTE "+st.pname), args...)
	return t.send(request{typ: 'Q'}, 'Q', appendCString(nil, q))
}

// failedSQLPrepare undoes the record of a PREPARE the server refused.
func (t *txnSession) failedSQLPrepare(r request) {
	delete(t.up.prepared, r.pname)
	if st, ok := t.stmts[r.client]; ok && st.pname == r.pname {
		t.forget(r.client)
	}
}

// duplicateSQL raises PostgreSQL's own error for a name already in use.
func duplicateSQL(name string) string {
	return raiseSQL("duplicate_prepared_statement", `prepared statement "`+name+`" already exists`)
}

// prepareAnswer is what PostgreSQL answers a PREPARE query; the
// ReadyForQuery status is patched in when it is written.
var prepareAnswer = func() []byte {
	b, _ := (&pgproto3.CommandComplete{CommandTag: []byte("PREPARE")}).Encode(nil)
	b, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(b)
	return b
}()
