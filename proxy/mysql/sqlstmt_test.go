package mysql

import "testing"

func TestSQLStatementForms(t *testing.T) {
	for _, c := range []struct {
		q    string
		re   string
		name string
		ok   bool
	}{
		{"PREPARE s1 FROM 'SELECT ?'", "prepare", "s1", true},
		{"prepare `My S` from \"select 1\";", "prepare", "my s", true},
		{"PREPARE s1 FROM 'it''s'", "prepare", "s1", true},
		{"PREPARE s1 FROM @q", "prepare", "", false},
		{"PREPARE s1 FROM 'a'; SELECT 1", "prepare", "", false},
		{"EXECUTE S1 USING @a, @b", "execute", "s1", true},
		{"execute s1", "execute", "s1", true},
		{"EXECUTE s1 USING @a; DROP TABLE t", "execute", "", false},
		{"DEALLOCATE PREPARE s1", "drop", "s1", true},
		{"DROP PREPARE `S1`", "drop", "s1", true},
	} {
		re := map[string]interface{ FindSubmatch([]byte) [][]byte }{"prepare": sqlPrepareRE, "execute": sqlExecuteRE, "drop": sqlDropRE}[c.re]
		m := re.FindSubmatch([]byte(c.q))
		if (m != nil) != c.ok || m != nil && sqlName(m[1]) != c.name {
			t.Errorf("%q: %q, want %q %v", c.q, m, c.name, c.ok)
		}
	}
}
