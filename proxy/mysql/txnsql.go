package mysql

import (
	"bytes"
	"regexp"
)

// What transaction pooling must know about a statement's text. These are
// cheap heuristics, not a parser: a keyword test first, a regexp only for
// the few statements that may match (this runs for every query).

var (
	getLockRE    = regexp.MustCompile(`(?i)\bget_lock\s*\(`)
	lockTablesRE = regexp.MustCompile(`(?is)(?:^|;)\s*lock\s+tables?\b`)
	// Statements that change session state another client must not
	// inherit: SET (variables, NAMES, ...), USE, SQL-level PREPARE,
	// temporary tables, HANDLER.
	sessionStmtRE = regexp.MustCompile(`(?is)(?:^|;)\s*(?:set|use|prepare|handler|create\s+(?:or\s+replace\s+)?temporary)\b`)
	// User variables: @name, but not @@system_variable.
	userVarRE = regexp.MustCompile(`(?:^|[^@\w])@[\w$` + "`" + `'"]`)
	// SET TRANSACTION without SESSION or GLOBAL applies to the next
	// transaction, which must start on the same connection.
	setNextTxnRE = regexp.MustCompile(`(?is)^\s*set\s+transaction\b`)
)

// sessionLock names a session-level lock in q that cannot work when a
// client's transactions land on different connections, or "".
func sessionLock(q []byte) string {
	switch {
	case containsFold(q, "get_lock") && getLockRE.Match(q):
		return "GET_LOCK"
	case containsFold(q, "lock") && lockTablesRE.Match(q):
		return "LOCK TABLES"
	}
	return ""
}

// sessionChange returns the marks (see txn.go) a query puts on the
// connection it runs on.
func sessionChange(q []byte) int {
	mark := markNone
	word := firstWord(q)
	if bytes.IndexByte(q, ';') >= 0 || wordIn(word, "set", "use", "prepare", "handler", "create") {
		if sessionStmtRE.Match(q) {
			mark |= markDirty
		}
	}
	if bytes.IndexByte(q, '@') >= 0 && userVarRE.Match(q) {
		mark |= markDirty
	}
	if wordIn(word, "set") && setNextTxnRE.Match(q) {
		mark |= markPinOnce
	}
	return mark
}

// firstWord returns q's first word after white space.
func firstWord(q []byte) []byte {
	q = bytes.TrimLeft(q, " \t\r\n(")
	i := 0
	for i < len(q) && (q[i]|0x20 >= 'a' && q[i]|0x20 <= 'z') {
		i++
	}
	return q[:i]
}

func wordIn(w []byte, words ...string) bool {
	for _, x := range words {
		if bytes.EqualFold(w, []byte(x)) {
			return true
		}
	}
	return false
}

// containsFold is bytes.Contains ignoring ASCII case, without allocating
// a lowered copy of q; sub is lower-case ASCII.
func containsFold(q []byte, sub string) bool {
	first := sub[0]
	for i := 0; i+len(sub) <= len(q); i++ {
		if q[i]|0x20 == first && bytes.EqualFold(q[i:i+len(sub)], []byte(sub)) {
			return true
		}
	}
	return false
}
