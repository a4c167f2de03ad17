package console

import (
	"reflect"
	"strings"
	"testing"
)

func TestSplitStatements(t *testing.T) {
	got := splitStatements(" show pools ; KILL 3 'a;b' ;; \n")
	want := []string{"show pools", "KILL 3 'a;b'"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("splitStatements = %q, want %q", got, want)
	}
	if got := splitStatements(" ; "); len(got) != 0 {
		t.Fatalf("empty query split into %q", got)
	}
}

func TestParse(t *testing.T) {
	for stmt, want := range map[string]command{
		"show pools":                        {verb: "SHOW", what: "POOLS"},
		"SHOW\tClients":                     {verb: "SHOW", what: "CLIENTS"},
		"help":                              {verb: "SHOW", what: "HELP"},
		"PAUSE":                             {verb: "PAUSE"},
		"pause orders":                      {verb: "PAUSE", backend: "orders"},
		`resume "Odd Name"`:                 {verb: "RESUME", backend: "Odd Name"},
		"RECONNECT appdb":                   {verb: "RECONNECT", backend: "appdb"},
		"rotate appdb":                      {verb: "ROTATE", backend: "appdb"},
		"wait_close":                        {verb: "WAIT_CLOSE"},
		"KILL 17":                           {verb: "KILL", id: 17},
		"kill_client 17 runaway report":     {verb: "KILL", id: 17, reason: "runaway report"},
		"KILL 17 'it''s the deploy window'": {verb: "KILL", id: 17, reason: "it's the deploy window"},
	} {
		got, err := parse(stmt)
		if err != nil || got != want {
			t.Errorf("parse(%q) = %+v, %v; want %+v", stmt, got, err, want)
		}
	}
	for stmt, msg := range map[string]string{
		"SELECT 1":         "does not understand \"SELECT 1\"",
		"SHOW":             "does not understand",
		"SHOW DATABASES":   "SHOW DATABASES: the console shows POOLS",
		"SHOW POOLS extra": `unexpected "extra"`,
		"ROTATE":           "ROTATE needs a backend",
		"KILL":             "KILL needs a client id",
		"KILL abc":         "KILL needs a client id",
		"KILL 0":           "KILL needs a client id",
		"KILL 3 'open":     "unterminated quoted reason",
		"KILL 3 'a'b'":     "must be doubled",
		`PAUSE "x`:         "unterminated quoted name",
	} {
		_, err := parse(stmt)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("parse(%q) error = %v, want one containing %q", stmt, err, msg)
		}
	}
	// Every unknown statement's error lists the commands.
	if _, err := parse("VACUUM"); err == nil || !strings.Contains(err.Error(), commandList) {
		t.Errorf("unknown command error does not list the commands: %v", err)
	}
}
