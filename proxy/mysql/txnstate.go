package mysql

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// Session state in transaction pooling. The session variables a client
// sets with SET (autocommit, sql_mode, time_zone, NAMES, SESSION
// TRANSACTION, user variables with a literal value, ...) and its default
// database are recorded once the server accepted them, and applied on
// whichever server connection the client's next transaction lands on.
// Each server connection carries a tag of the state applied on it (0:
// the defaults it logged in with); a client whose tag matches sends
// nothing, any other resets the connection (COM_RESET_CONNECTION) and
// replays its own state, pipelined, before its command. So a client's SET
// holds across all its transactions and nothing leaks between clients.
//
// Session state tracking (CLIENT_SESSION_TRACK) is not used: MariaDB
// reports only the variables listed in session_track_system_variables and
// never user variables, and its OK packets would have to be rewritten for
// clients that did not ask for it. Parsing the SET statement is enough
// because only literal values are recorded: a replay of the same SETs in
// the same order on a reset connection gives the same state.

// dirtyTag marks a connection whose state is unknown: the next client
// resets it.
const dirtyTag = ^uint64(0)

// maxTrackedVars bounds the state recorded per client; one more variable
// pins the session to its connection instead.
const maxTrackedVars = 64

// sessVar is one recorded assignment, replayed as its own SET.
type sessVar struct {
	name string // lower case; "names", "character set", "session transaction" for the special forms
	sql  string
}

// sessState is what a client changed in its session.
type sessState struct {
	vars  []sessVar
	db    string // "" when the client did not change it
	dbSet bool
	tag   uint64
}

// stateChange is what a statement does to a client's session state.
type stateChange struct {
	vars []sessVar
	db   string
	use  bool
	// pin names state dbproxy cannot replay (a SET with a computed
	// value): the session keeps its connection.
	pin string
}

// set records an accepted change and recomputes the tag.
func (st *sessState) set(c *stateChange) {
	for _, v := range c.vars {
		for i, old := range st.vars {
			if old.name == v.name {
				// A pure overwrite: the new value goes last, so the
				// replay order keeps what overrides what.
				st.vars = append(st.vars[:i], st.vars[i+1:]...)
				break
			}
		}
		st.vars = append(st.vars, v)
	}
	if c.use {
		st.db, st.dbSet = c.db, true
	}
	st.retag()
}

func (st *sessState) clear() {
	*st = sessState{}
}

func (st *sessState) retag() {
	if len(st.vars) == 0 && !st.dbSet {
		st.tag = 0
		return
	}
	h := fnv.New64a()
	if st.dbSet {
		_, _ = h.Write([]byte("db:" + st.db))
	}
	for _, v := range st.vars {
		_, _ = h.Write([]byte{0})
		_, _ = h.Write([]byte(v.sql))
	}
	st.tag = h.Sum64()
	if st.tag == 0 || st.tag == dirtyTag {
		st.tag = 1
	}
}

// commands is the replay of st on a connection fresh from a reset.
func (st *sessState) commands(up *upstream) [][]byte {
	var cmds [][]byte
	if st.dbSet && st.db != up.db {
		cmds = append(cmds, append([]byte{gomysql.COM_INIT_DB}, st.db...))
	}
	for _, v := range st.vars {
		cmds = append(cmds, append([]byte{gomysql.COM_QUERY}, v.sql...))
	}
	return cmds
}

// applyState makes the held connection carry the client's state, when
// its tag says it does not.
func (t *txnSession) applyState() error {
	up := t.up
	if up.tag == t.state.tag {
		return nil
	}
	ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
	defer cancel()
	if up.tag != 0 {
		if err := up.Reset(ctx); err != nil {
			up.tag = dirtyTag
			return fmt.Errorf("reset before applying session state: %w", err)
		}
	}
	if err := up.run(ctx, t.state.commands(up)); err != nil {
		up.tag = dirtyTag
		return fmt.Errorf("applying the session's variables on a pooled connection: %w", err)
	}
	up.tag = t.state.tag
	t.status = up.status
	return nil
}

// run sends commands that each answer OK or ERR in one pipelined round
// trip and reads their answers; the first ERR is returned.
func (u *upstream) run(ctx context.Context, cmds [][]byte) error {
	if len(cmds) == 0 {
		return nil
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(5 * time.Second)
	}
	_ = u.conn.SetDeadline(dl)
	defer func() { _ = u.conn.SetDeadline(time.Time{}) }()
	for _, c := range cmds {
		if err := u.writeCommand(c); err != nil {
			return err
		}
	}
	if err := u.bw.Flush(); err != nil {
		return err
	}
	var failed error
	for range cmds {
		_, b, err := readPacket(u.br, 1<<20)
		if err != nil {
			return err
		}
		switch {
		case len(b) > 0 && b[0] == 0xff:
			if failed == nil {
				failed = parseErrPacket(b)
			}
		case len(b) > 0 && b[0] == 0x00:
			if st, ok := okStatus(b); ok {
				u.status = st
			}
		default:
			return fmt.Errorf("unexpected answer 0x%x to a session state command", b)
		}
	}
	return failed
}

var errNotState = errors.New("not a session state statement")

var (
	// setUseRE finds SET or USE in a multi-statement query.
	setUseRE = regexp.MustCompile(`(?is)(?:^|;)\s*(?:set|use)\b`)
	// userAssignRE finds a user variable assigned outside SET:
	// SELECT @x := ..., SELECT ... INTO @x.
	userAssignRE = regexp.MustCompile(`(?is):=|\binto\s+@`)
)

// stateChange judges a query for session state: a change to record once
// the server accepts it, state that pins the session, or nil (nothing
// dbproxy follows; sessionChange's marks apply).
func (t *txnSession) stateChange(q []byte) *stateChange {
	body := bytes.TrimRight(q, " \t\r\n;")
	if bytes.IndexByte(body, ';') >= 0 {
		if setUseRE.Match(body) {
			return &stateChange{pin: "SET or USE in a multi-statement query"}
		}
	} else if wordIn(firstWord(body), "set", "use") {
		ch, err := parseStateChange(body)
		if err != nil {
			return &stateChange{pin: "a SET or USE statement dbproxy cannot parse"}
		}
		if len(t.state.vars)+len(ch.vars) > maxTrackedVars {
			return &stateChange{pin: fmt.Sprintf("more than %d session variables", maxTrackedVars)}
		}
		return ch
	}
	if bytes.IndexByte(body, '@') >= 0 && userAssignRE.Match(body) {
		return &stateChange{pin: "a user variable assigned outside SET"}
	}
	return nil
}

// tracked runs a command that changes session state and records the
// change when the server accepted it.
func (t *txnSession) tracked(p []byte, kind respKind, mark int, ch *stateChange) error {
	if ok, err := t.hold(kind); !ok {
		return err
	}
	if ch.pin != "" {
		t.pin(ch.pin)
		mark |= markDirty
	}
	t.apply(mark)
	if err := t.writeUp(p); err != nil {
		return err
	}
	accepted := false
	if _, err := t.answer(kind, false, func(b []byte) { accepted = len(b) > 0 && b[0] == 0x00 }); err != nil {
		return err
	}
	if accepted && ch.pin == "" {
		old := t.state.tag
		t.state.set(ch)
		if t.up.tag == old { // else the connection has more than the state
			t.up.tag = t.state.tag
		}
	}
	t.settle()
	return nil
}

// parseStateChange reads one statement (no ';' inside) that changes
// session state: SET or USE. It returns errNotState for anything else
// and a change with pin set for a SET it cannot replay.
func parseStateChange(q []byte) (*stateChange, error) {
	toks, ok := tokenize(q)
	if !ok || len(toks) < 2 {
		return nil, errNotState
	}
	if strings.EqualFold(toks[1], "statement") {
		// SET STATEMENT ... FOR: settings for one statement only.
		return &stateChange{}, nil
	}
	switch strings.ToLower(toks[0]) {
	case "use":
		if len(toks) != 2 {
			return nil, errNotState
		}
		return &stateChange{use: true, db: unquoteIdent(toks[1])}, nil
	case "set":
	default:
		return nil, errNotState
	}
	c := &stateChange{}
	for _, a := range splitCommas(toks[1:]) {
		v, pin := parseAssignment(a)
		switch {
		case pin != "":
			return &stateChange{pin: pin}, nil
		case v == nil: // a global variable, a password: not session state
		default:
			c.vars = append(c.vars, *v)
		}
	}
	return c, nil
}

// parseAssignment reads one element of a SET list. A nil var with no pin
// is not session state.
func parseAssignment(a []string) (*sessVar, string) {
	if len(a) == 0 {
		return nil, "SET with an empty assignment"
	}
	w := strings.ToLower(a[0])
	switch w {
	case "global", "password", "default", "persist", "persist_only":
		// Global settings, passwords, default roles leave this
		// session's state alone.
		return nil, ""
	case "names", "charset":
		return special(w, a)
	case "character":
		if len(a) > 1 && strings.EqualFold(a[1], "set") {
			return special("character set", a)
		}
	case "session", "local":
		if len(a) > 1 && strings.EqualFold(a[1], "transaction") {
			return special("session transaction", a[1:])
		}
		a = a[1:]
	case "transaction":
		// SET TRANSACTION: the next transaction only (pinOnce).
		return nil, ""
	case "role":
		return special("role", a)
	}
	if len(a) < 3 || a[1] != "=" && a[1] != ":=" {
		return nil, "SET " + strings.Join(a, " ")
	}
	name := strings.ToLower(a[0])
	user := strings.HasPrefix(name, "@") && !strings.HasPrefix(name, "@@")
	switch {
	case strings.HasPrefix(name, "@@global."):
		return nil, ""
	case strings.HasPrefix(name, "@@session."):
		name = name[len("@@session."):]
	case strings.HasPrefix(name, "@@local."):
		name = name[len("@@local."):]
	case strings.HasPrefix(name, "@@"):
		name = name[2:]
	}
	if user {
		// User variable names are case insensitive; quoted forms
		// keep their quotes in sql, which the server accepts as sent.
		name = "@" + unquoteIdent(name[1:])
	}
	if len(a) != 3 || !literal(a[2], user) {
		return nil, "SET " + strings.Join(a, " ") + " (a value dbproxy cannot replay)"
	}
	target := a[0] // a user variable as the client wrote it
	if !user {
		target = "@@session." + name
	}
	return &sessVar{name: name, sql: "SET " + target + " = " + a[2]}, ""
}

// special records SET NAMES / CHARACTER SET / SESSION TRANSACTION / ROLE
// as written when all its words are literals.
func special(name string, a []string) (*sessVar, string) {
	for _, w := range a {
		if !literal(w, false) {
			return nil, "SET " + strings.Join(a, " ") + " (a value dbproxy cannot replay)"
		}
	}
	if name == "session transaction" {
		// ISOLATION LEVEL and READ ONLY/WRITE are separate settings.
		if len(a) > 1 && strings.EqualFold(a[1], "isolation") {
			name += " isolation"
		} else {
			name += " access"
		}
		return &sessVar{name: name, sql: "SET SESSION " + strings.Join(a, " ")}, ""
	}
	return &sessVar{name: name, sql: "SET " + strings.Join(a, " ")}, ""
}

// bareNonLiterals are words that look like literals but are evaluated
// when run (and so differ on replay).
var bareNonLiterals = map[string]bool{
	"current_user": true, "current_role": true, "current_timestamp": true, "current_date": true,
	"current_time": true, "localtime": true, "localtimestamp": true, "utc_date": true,
	"utc_time": true, "utc_timestamp": true,
}

// literal says whether w has the same value wherever it runs.
func literal(w string, user bool) bool {
	if w == "" {
		return false
	}
	switch c := w[0]; {
	case c == '\'' || c == '"':
		return true
	case c == '@' || c == '(' || c == '`':
		return false
	}
	lw := strings.ToLower(w)
	if bareNonLiterals[lw] {
		return false
	}
	if (lw[0] == 'x' || lw[0] == 'b') && len(lw) > 1 && lw[1] == '\'' {
		return true
	}
	if num(lw) {
		return true
	}
	if user {
		// A bare word in a user variable's value is a column or a
		// function: only these are constants.
		return lw == "null" || lw == "true" || lw == "false"
	}
	for i := 0; i < len(lw); i++ {
		c := lw[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '$' || c == '.' || c == '-' || c == '+') {
			return false
		}
	}
	return true
}

func num(w string) bool {
	if w[0] == '-' || w[0] == '+' {
		w = w[1:]
	}
	if w == "" {
		return false
	}
	digits := false
	for i := 0; i < len(w); i++ {
		c := w[i]
		switch {
		case c >= '0' && c <= '9':
			digits = true
		case c == '.' || c == 'e' || c == 'x' || c >= 'a' && c <= 'f':
			// 1.5, 1e3, 0x1f
		default:
			return false
		}
	}
	return digits && w[0] >= '0' && w[0] <= '9'
}

// tokenize splits a statement into words, quoted strings and identifiers
// (quotes kept), operators and single punctuation. ok is false for what
// it cannot follow: comments, unbalanced quotes.
func tokenize(q []byte) (toks []string, ok bool) {
	q = bytes.TrimRight(q, " \t\r\n;")
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == '#' || c == '-' && i+1 < len(q) && q[i+1] == '-' || c == '/' && i+1 < len(q) && q[i+1] == '*':
			return nil, false
		case c == '\'' || c == '"' || c == '`':
			j := i + 1
			for ; j < len(q); j++ {
				if q[j] == '\\' && c != '`' {
					j++
					continue
				}
				if q[j] == c {
					if j+1 < len(q) && q[j+1] == c { // doubled quote
						j++
						continue
					}
					break
				}
			}
			if j >= len(q) {
				return nil, false
			}
			toks = append(toks, string(q[i:j+1]))
			i = j + 1
		case c == ':' && i+1 < len(q) && q[i+1] == '=':
			toks = append(toks, ":=")
			i += 2
		case c == '=' || c == ',' || c == '(' || c == ')':
			toks = append(toks, string(c))
			i++
		default:
			j := i
			for j < len(q) && !bytes.ContainsAny(q[j:j+1], " \t\r\n=,():'\"`") {
				j++
			}
			if j < len(q) && q[j] == '\'' && j == i+1 && (c|0x20 == 'x' || c|0x20 == 'b') || j == i {
				// x'..' / b'..' literals, or a lone character.
				k := bytes.IndexByte(q[j+1:], '\'')
				if j == i || k < 0 {
					toks = append(toks, string(q[i:i+1]))
					i++
					continue
				}
				j += k + 2
			}
			// @'quoted' / @`quoted` user variables.
			if j == i+1 && c == '@' && j < len(q) && (q[j] == '\'' || q[j] == '`' || q[j] == '"') {
				k := bytes.IndexByte(q[j+1:], q[j])
				if k < 0 {
					return nil, false
				}
				j += k + 2
			}
			toks = append(toks, string(q[i:j]))
			i = j
		}
	}
	return toks, true
}

// splitCommas splits a SET list at the commas outside parentheses.
func splitCommas(toks []string) [][]string {
	var out [][]string
	depth, start := 0, 0
	for i, t := range toks {
		switch t {
		case "(":
			depth++
		case ")":
			depth--
		case ",":
			if depth == 0 {
				out = append(out, toks[start:i])
				start = i + 1
			}
		}
	}
	return append(out, toks[start:])
}

// unquoteIdent strips `backquotes` (or quotes) from a name.
func unquoteIdent(s string) string {
	if len(s) >= 2 && (s[0] == '`' || s[0] == '\'' || s[0] == '"') && s[len(s)-1] == s[0] {
		q := s[:1]
		return strings.ReplaceAll(s[1:len(s)-1], q+q, q)
	}
	return s
}
