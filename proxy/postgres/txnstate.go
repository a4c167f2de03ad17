package postgres

import (
	"bytes"
	"hash/fnv"
	"strings"
)

// Session state in transaction pooling. A client's session-level SET and
// RESET statements are recorded once the server accepted them, and
// applied on whichever server connection a transaction lands on. Each
// server connection carries a tag of the state applied on it (0: the
// defaults it logged in with): a client whose state matches sends
// nothing, any other sends "RESET ALL" plus its own SETs in front of its
// request, pipelined, answers swallowed. So nothing leaks between clients
// and a client's own SET holds across all its transactions.

// dirtyTag marks a connection whose state is unknown (a SET through the
// extended protocol, a failed apply): the next client resets it.
const dirtyTag = ^uint64(0)

// setStmt is one recorded SET, by parameter name (lower case).
type setStmt struct {
	name string
	sql  string
}

// setChange is a SET or RESET waiting for the server's answer.
type setChange struct {
	name   string // "" with all: RESET ALL
	sql    string // "" for a RESET
	all    bool
	failed bool
}

// classifySet reads a simple query: a session-level SET or RESET (ch),
// a statement that must be refused in transaction mode (refuse), or
// neither. SET LOCAL and SET TRANSACTION last one transaction: neither.
func classifySet(q []byte) (ch *setChange, refuse string) {
	isSet, isReset := startsWithFold(q, "set"), startsWithFold(q, "reset")
	if !isSet && !isReset {
		return nil, ""
	}
	f := strings.Fields(strings.ToLower(strings.TrimRight(string(q), "; \t\r\n")))
	if len(f) < 2 || f[0] != "set" && f[0] != "reset" {
		return nil, ""
	}
	if bytes.IndexByte(q, ';') >= 0 && bytes.IndexByte(q, ';') < len(bytes.TrimRight(q, "; \t\r\n")) {
		// Several statements: too much to follow; the connection is
		// marked dirty so that nothing leaks.
		return &setChange{failed: true}, ""
	}
	i := 1
	if f[0] == "set" && f[1] == "session" && len(f) > 2 {
		if f[2] == "authorization" {
			return nil, "SET SESSION AUTHORIZATION"
		}
		if f[2] == "characteristics" {
			return &setChange{failed: true}, ""
		}
		i = 2
	}
	name := strings.TrimRight(f[i], "=")
	if j := strings.IndexAny(name, "= "); j > 0 {
		name = name[:j]
	}
	switch {
	case name == "role" || f[0] == "reset" && name == "session":
		return nil, "SET ROLE"
	case name == "local" || name == "transaction" || name == "constraints":
		return nil, ""
	case f[0] == "reset" && name == "all":
		return &setChange{all: true}, ""
	case f[0] == "reset":
		return &setChange{name: name}, ""
	}
	return &setChange{name: name, sql: strings.TrimRight(string(q), "; \t\r\n")}, ""
}

// commitSet records a SET or RESET the server accepted.
func (t *txnSession) commitSet(c *setChange) {
	if c.failed {
		return
	}
	if c.all {
		t.sets = t.sets[:0]
	} else {
		for i, s := range t.sets {
			if s.name == c.name {
				t.sets = append(t.sets[:i], t.sets[i+1:]...)
				break
			}
		}
		if c.sql != "" {
			t.sets = append(t.sets, setStmt{name: c.name, sql: c.sql})
		}
	}
	t.setTag = stateTag(t.sets)
	if t.up != nil {
		t.up.tag = t.setTag // what the connection now has
	}
}

// stateTag names a list of SETs; 0 is none.
func stateTag(sets []setStmt) uint64 {
	if len(sets) == 0 {
		return 0
	}
	h := fnv.New64a()
	for _, s := range sets {
		_, _ = h.Write([]byte(s.sql))
		_, _ = h.Write([]byte{0})
	}
	if v := h.Sum64(); v != 0 && v != dirtyTag {
		return v
	}
	return 1
}

// applyState stages, in front of the request, what makes the held
// connection carry the client's state. t.mu is held.
func (t *txnSession) applyState() {
	up := t.up
	if up.tag == t.setTag {
		return
	}
	var b strings.Builder
	if up.tag != 0 {
		b.WriteString("RESET ALL;")
	}
	for _, s := range t.sets {
		b.WriteString(s.sql)
		b.WriteByte(';')
	}
	t.queue = append(t.queue, request{typ: 'Q', action: actSwallowAll})
	_ = t.write('Q', append([]byte(b.String()), 0))
	up.tag = t.setTag
}
