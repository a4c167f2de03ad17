package postgres

import "testing"

func TestSQLPrepareAndExecuteParsing(t *testing.T) {
	for _, c := range []struct {
		q, name, def string
		ok           bool
	}{
		{"PREPARE foo(int) AS SELECT $1", "foo", "(int) AS SELECT $1", true},
		{"  prepare Foo as select 1 ;", "foo", " as select 1", true},
		{`PREPARE "Mixed" (text, int) AS insert into t values ($1, $2)`, "Mixed", " (text, int) AS insert into t values ($1, $2)", true},
		{"PREPARE foo AS SELECT 1; SELECT 2", "", "", false},
		{"PREPARE TRANSACTION 'x'", "", "", false},
		{"prepared_statements", "", "", false},
	} {
		name, def, ok := sqlPrepare([]byte(c.q))
		if ok != c.ok || name != c.name || string(def) != c.def {
			t.Errorf("%q: %q %q %v, want %q %q %v", c.q, name, def, ok, c.name, c.def, c.ok)
		}
	}
	for _, c := range []struct {
		q, name, args string
		ok            bool
	}{
		{"EXECUTE foo(1, 'a')", "foo", "(1, 'a')", true},
		{"execute FOO;", "foo", "", true},
		{`EXECUTE "Foo" (2)`, "Foo", "(2)", true},
		{"EXECUTE foo(1); DROP TABLE t", "", "", false},
		{"EXPLAIN EXECUTE foo(1)", "", "", false},
	} {
		name, args, ok := sqlExecute([]byte(c.q))
		if ok != c.ok || name != c.name || string(args) != c.args {
			t.Errorf("%q: %q %q %v, want %q %q %v", c.q, name, args, ok, c.name, c.args, c.ok)
		}
	}
}
