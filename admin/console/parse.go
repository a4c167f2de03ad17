package console

import (
	"fmt"
	"strconv"
	"strings"
)

// command is one parsed console statement.
type command struct {
	verb string // SHOW, PAUSE, RESUME, RECONNECT, ROTATE, KILL, WAIT_CLOSE
	// what is SHOW's item (POOLS, CLIENTS, ...), upper case.
	what string
	// backend is the optional (ROTATE: required) backend name.
	backend string
	// id and reason are KILL's.
	id     uint64
	reason string
}

// commandList is the answer to anything the console does not know.
const commandList = "SHOW POOLS | CLIENTS | SERVERS | LEASES | STATS | CONFIG | VERSION | HELP; " +
	"PAUSE [backend]; RESUME [backend]; RECONNECT [backend]; ROTATE backend; KILL client_id ['reason']; WAIT_CLOSE [backend]"

// showItems are what SHOW answers.
var showItems = map[string]bool{"POOLS": true, "CLIENTS": true, "SERVERS": true, "LEASES": true,
	"STATS": true, "CONFIG": true, "VERSION": true, "HELP": true}

// syntaxError is a statement the console does not understand.
type syntaxError struct{ msg string }

func (e *syntaxError) Error() string { return e.msg }

func unknown(stmt string) error {
	if len(stmt) > 60 {
		stmt = stmt[:60] + "..."
	}
	return &syntaxError{fmt.Sprintf("the dbproxy admin console does not understand %q; it answers: %s", stmt, commandList)}
}

// splitStatements splits a simple Query's text at semicolons outside
// single quotes and drops empty statements.
func splitStatements(q string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case '\'':
			quoted = !quoted
		case ';':
			if !quoted {
				out = appendStmt(out, q[start:i])
				start = i + 1
			}
		}
	}
	return appendStmt(out, q[start:])
}

func appendStmt(out []string, s string) []string {
	if s = strings.TrimSpace(s); s != "" {
		out = append(out, s)
	}
	return out
}

// parse parses one statement (no semicolon).
func parse(stmt string) (command, error) {
	verb, rest := cutWord(stmt)
	c := command{verb: strings.ToUpper(verb)}
	switch c.verb {
	case "HELP":
		c.verb, c.what = "SHOW", "HELP"
		return c, noMore(stmt, rest)
	case "SHOW":
		item, more := cutWord(rest)
		c.what = strings.ToUpper(item)
		if !showItems[c.what] {
			if item == "" {
				return c, unknown(stmt)
			}
			return c, &syntaxError{fmt.Sprintf("SHOW %s: the console shows POOLS, CLIENTS, SERVERS, LEASES, STATS, CONFIG, VERSION or HELP", item)}
		}
		return c, noMore(stmt, more)
	case "PAUSE", "RESUME", "RECONNECT", "WAIT_CLOSE", "ROTATE":
		name, more := cutName(rest)
		b, err := identifier(name)
		if err != nil {
			return c, err
		}
		if c.verb == "ROTATE" && b == "" {
			return c, &syntaxError{"ROTATE needs a backend: ROTATE backend (see SHOW LEASES)"}
		}
		c.backend = b
		return c, noMore(stmt, more)
	case "KILL", "KILL_CLIENT":
		c.verb = "KILL"
		idText, more := cutWord(rest)
		id, err := strconv.ParseUint(idText, 10, 64)
		if err != nil || id == 0 {
			return c, &syntaxError{fmt.Sprintf("KILL needs a client id, a number from SHOW CLIENTS (got %q): KILL client_id ['reason']", idText)}
		}
		c.id = id
		c.reason, err = reasonText(more)
		return c, err
	}
	return c, unknown(stmt)
}

// cutWord splits off the first whitespace-separated word.
func cutWord(s string) (word, rest string) {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, " \t\r\n")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i:])
}

// cutName is cutWord for a name that may be double-quoted with spaces
// inside ("" for a quote).
func cutName(s string) (name, rest string) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, `"`) {
		return cutWord(s)
	}
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			i++
			continue
		}
		return s[:i+1], strings.TrimSpace(s[i+1:])
	}
	return s, ""
}

func noMore(stmt, rest string) error {
	if rest != "" {
		return &syntaxError{fmt.Sprintf("unexpected %q after the command in %q; the console answers: %s", rest, stmt, commandList)}
	}
	return nil
}

// identifier is a backend name as written: bare (case kept, as backend
// names in the configuration are) or in double quotes.
func identifier(s string) (string, error) {
	if strings.HasPrefix(s, `"`) {
		if len(s) < 2 || !strings.HasSuffix(s, `"`) {
			return "", &syntaxError{fmt.Sprintf("unterminated quoted name %s", s)}
		}
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`), nil
	}
	return s, nil
}

// reasonText is KILL's optional reason: a single-quoted string (” for a
// quote) or the bare rest of the statement.
func reasonText(s string) (string, error) {
	if !strings.HasPrefix(s, "'") {
		return s, nil
	}
	if len(s) < 2 || !strings.HasSuffix(s, "'") {
		return "", &syntaxError{"unterminated quoted reason: write KILL 17 'the reason'"}
	}
	inner := s[1 : len(s)-1]
	if strings.Count(strings.ReplaceAll(inner, "''", ""), "'") > 0 {
		return "", &syntaxError{"a quote inside the reason must be doubled: KILL 17 'it''s done'"}
	}
	return strings.ReplaceAll(inner, "''", "'"), nil
}
