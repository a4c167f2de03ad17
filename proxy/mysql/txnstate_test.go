package mysql

import (
	"reflect"
	"testing"
)

func TestParseStateChange(t *testing.T) {
	tracked := map[string][]sessVar{
		"SET autocommit=0":                      {{"autocommit", "SET @@session.autocommit = 0"}},
		"set session sql_mode = 'ANSI' ;":       {{"sql_mode", "SET @@session.sql_mode = 'ANSI'"}},
		"SET @@SESSION.time_zone='+00:00'":      {{"time_zone", "SET @@session.time_zone = '+00:00'"}},
		"SET @@time_zone = SYSTEM, @x := -1.5":  {{"time_zone", "SET @@session.time_zone = SYSTEM"}, {"@x", "SET @x = -1.5"}},
		"SET NAMES utf8mb4 COLLATE utf8mb4_bin": {{"names", "SET NAMES utf8mb4 COLLATE utf8mb4_bin"}},
		"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED": {
			{"session transaction isolation", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"}},
		"set @`Odd, name` = 'a;b'":                               {{"@odd, name", "SET @`Odd, name` = 'a;b'"}},
		"SET @x = NULL":                                          {{"@x", "SET @x = NULL"}},
		"SET GLOBAL max_connections = 10":                        nil,
		"SET TRANSACTION READ ONLY":                              nil,
		"SET STATEMENT max_statement_time=1 FOR SELECT SLEEP(2)": nil,
	}
	for q, want := range tracked {
		c, err := parseStateChange([]byte(q))
		if err != nil || c.pin != "" || !reflect.DeepEqual(c.vars, want) {
			t.Errorf("%q: got %+v, %v; want vars %v", q, c, err, want)
		}
	}
	pinned := []string{
		"SET @x = NOW()",
		"SET @x = (SELECT 1)",
		"SET sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
		"SET @x = CURRENT_USER",
		"SET @x = col",
		"SET @a = @b",
		"SET time_zone = @@global.time_zone",
	}
	for _, q := range pinned {
		c, err := parseStateChange([]byte(q))
		if err != nil || c.pin == "" {
			t.Errorf("%q: got %+v, %v; want a pin", q, c, err)
		}
	}
	if c, err := parseStateChange([]byte("USE `my``db`")); err != nil || !c.use || c.db != "my`db" {
		t.Errorf("USE: got %+v, %v", c, err)
	}
	for _, q := range []string{"SELECT 1", "SET /* x */ a = 1", "SET a = 'unterminated"} {
		if _, err := parseStateChange([]byte(q)); err == nil {
			t.Errorf("%q: parsed", q)
		}
	}
}

func TestStateChangeJudgesQueries(t *testing.T) {
	ts := &txnSession{}
	for q, pin := range map[string]bool{
		"select @x := 1":                true,
		"select 1 into @x":              true,
		"select @x":                     false,
		"set autocommit = 0; select 1":  true,
		"select 1; select 2":            false,
		"SET /* comment */ sql_mode=''": true,
	} {
		c := ts.stateChange([]byte(q))
		got := c != nil && c.pin != ""
		if got != pin {
			t.Errorf("%q: pinned %v, want %v (%+v)", q, got, pin, c)
		}
	}
}

func TestStateTag(t *testing.T) {
	var a, b sessState
	if a.tag != 0 {
		t.Fatal("empty state has a tag")
	}
	a.set(&stateChange{vars: []sessVar{{"autocommit", "SET @@session.autocommit = 0"}}})
	b.set(&stateChange{vars: []sessVar{{"autocommit", "SET @@session.autocommit = 1"}}})
	b.set(&stateChange{vars: []sessVar{{"autocommit", "SET @@session.autocommit = 0"}}})
	if a.tag == 0 || a.tag != b.tag || len(b.vars) != 1 {
		t.Fatalf("same state, tags %x %x, vars %v", a.tag, b.tag, b.vars)
	}
	b.set(&stateChange{use: true, db: "x"})
	if a.tag == b.tag {
		t.Fatal("a different database keeps the tag")
	}
}
