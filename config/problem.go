package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration file, located at the
// line and column of the offending key or value (1-based). YAML syntax
// errors carry only a line number from the parser; they are reported at
// column 1 of that line. A Config built in code has no positions: Line and
// Col are 0 and File may be empty.
type Problem struct {
	File string
	Line int
	Col  int
	Msg  string
}

// String formats the problem as "FILE:LINE:COL: msg".
func (p Problem) String() string {
	switch {
	case p.Line > 0:
		return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
	case p.File != "":
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	default:
		return p.Msg
	}
}

// Problems is every problem found in a configuration. It is the error type
// returned by Load and Validate; use errors.As to get at the list.
type Problems []Problem

// Error returns one line per problem, "FILE:LINE:COL: msg".
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}
