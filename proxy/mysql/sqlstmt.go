package mysql

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// SQL-level prepared statements in transaction pooling: PREPARE name FROM
// '...', EXECUTE name [USING @v, ...], {DEALLOCATE | DROP} PREPARE name.
// Like binary statements (stmt.go) they are recorded per client and live
// on server connections under a name derived from their text, so equal
// statements of different clients share one and a client's statement
// works on whichever connection its transaction lands on: an EXECUTE on a
// connection that lacks it is preceded by the PREPARE, answer swallowed.
// The user variables of USING go with the client's session state
// (txnstate.go). Only these single-statement forms with a string literal
// are followed; PREPARE ... FROM @var still lasts one transaction.

var (
	sqlPrepareRE = regexp.MustCompile("(?is)^\\s*prepare\\s+(\\w+|`[^`]+`)\\s+from\\s+('(?:[^'\\\\]|\\\\.|'')*'|\"(?:[^\"\\\\]|\\\\.|\"\")*\")\\s*;?\\s*$")
	sqlExecuteRE = regexp.MustCompile("(?is)^\\s*execute\\s+(\\w+|`[^`]+`)(\\s+using\\s+[^;]*?)?\\s*;?\\s*$")
	sqlDropRE    = regexp.MustCompile("(?is)^\\s*(?:deallocate|drop)\\s+prepare\\s+(\\w+|`[^`]+`)\\s*;?\\s*$")
)

// sqlStmt is a client's SQL-level prepared statement.
type sqlStmt struct {
	pname   string // its name on server connections
	prepare string // the PREPARE under pname
}

// sqlName is a statement name as MySQL compares them: case-insensitive.
func sqlName(id []byte) string {
	s := string(id)
	if len(s) > 1 && s[0] == '`' {
		s = s[1 : len(s)-1]
	}
	return strings.ToLower(s)
}

// sqlStatement handles a client's SQL PREPARE, EXECUTE or DEALLOCATE of
// a statement it follows, and reports whether q was one.
func (t *txnSession) sqlStatement(q []byte, kind respKind) (bool, error) {
	switch w := firstWord(q); {
	case wordIn(w, "prepare"):
		m := sqlPrepareRE.FindSubmatch(q)
		if m == nil {
			return false, nil
		}
		h := sha256.Sum256(m[2])
		pname := "dbproxy_" + hex.EncodeToString(h[:12])
		// A PREPARE of a name in use replaces it, as in MySQL.
		st := &sqlStmt{pname: pname, prepare: "PREPARE " + pname + " FROM " + string(m[2])}
		return true, t.prepareSQL(sqlName(m[1]), st, kind)
	case wordIn(w, "execute"):
		m := sqlExecuteRE.FindSubmatch(q)
		if m == nil || t.sqlStmts[sqlName(m[1])] == nil {
			return false, nil
		}
		return true, t.executeSQL(t.sqlStmts[sqlName(m[1])], m[2], kind)
	case wordIn(w, "deallocate", "drop"):
		m := sqlDropRE.FindSubmatch(q)
		if m == nil || t.sqlStmts[sqlName(m[1])] == nil {
			return false, nil
		}
		// Other clients may share the server's statement: it stays.
		delete(t.sqlStmts, sqlName(m[1]))
		return true, t.s.reply(okPacket(1, t.status))
	}
	return false, nil
}

// prepareSQL prepares a client's statement where its transaction runs, or
// answers for a connection that has it already.
func (t *txnSession) prepareSQL(name string, st *sqlStmt, kind respKind) error {
	if ok, err := t.hold(kind); !ok {
		return err
	}
	if t.sqlStmts == nil {
		t.sqlStmts = map[string]*sqlStmt{}
	}
	if len(t.sqlStmts) >= maxClientStatements && t.sqlStmts[name] == nil {
		for k := range t.sqlStmts { // evict one at random
			delete(t.sqlStmts, k)
			break
		}
	}
	up := t.up
	if up.sqlStmts[st.pname] {
		t.sqlStmts[name] = st
		err := t.s.reply(okPacket(1, t.status))
		t.settle()
		return err
	}
	if err := t.writeUp([]byte("\x03" + st.prepare)); err != nil {
		return err
	}
	accepted := false
	if _, err := t.answer(kind, false, func(b []byte) { accepted = len(b) > 0 && b[0] == 0x00 }); err != nil {
		return err
	}
	if accepted {
		t.sqlStmts[name] = st
		if err := t.notePrepared(up, st.pname, kind); err != nil {
			return err
		}
	} else {
		delete(t.sqlStmts, name) // a failed PREPARE drops the name in MySQL too
	}
	t.settle()
	return nil
}

// executeSQL runs a client's EXECUTE under the server's name, preparing
// the statement first where it is missing.
func (t *txnSession) executeSQL(st *sqlStmt, using []byte, kind respKind) error {
	if ok, err := t.hold(kind); !ok {
		return err
	}
	up := t.up
	if !up.sqlStmts[st.pname] {
		if err := t.writeUp([]byte("\x03" + st.prepare)); err != nil {
			return err
		}
		first, err := t.answer(kind, true, nil)
		if err != nil {
			return err
		}
		if len(first) == 0 || first[0] != 0x00 {
			// It cannot be prepared here (a table was dropped): the
			// server's reason answers the EXECUTE.
			err := t.s.reply(parseErrPacket(first).packet(1))
			t.settle()
			return err
		}
		if err := t.notePrepared(up, st.pname, kind); err != nil {
			return err
		}
	}
	q := append([]byte("\x03EXECUTE "+st.pname), using...)
	if err := t.writeUp(q); err != nil {
		return err
	}
	if _, err := t.answer(kind, false, nil); err != nil {
		return err
	}
	t.settle()
	return nil
}

// notePrepared records an SQL statement on up; at the per-connection cap
// one there is deallocated first (its answer swallowed).
func (t *txnSession) notePrepared(up *upstream, pname string, kind respKind) error {
	if up.sqlStmts == nil {
		up.sqlStmts = map[string]bool{}
	}
	for victim := range up.sqlStmts {
		if len(up.sqlStmts) < maxUpstreamStatements {
			break
		}
		delete(up.sqlStmts, victim)
		if err := t.writeUp([]byte("\x03DEALLOCATE PREPARE " + victim)); err != nil {
			return err
		}
		if _, err := t.answer(kind, true, nil); err != nil {
			return err
		}
	}
	up.sqlStmts[pname] = true
	return nil
}
