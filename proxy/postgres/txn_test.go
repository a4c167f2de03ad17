package postgres

import (
	"bytes"
	"testing"
	"time"
)

func TestRequestQueueCompletion(t *testing.T) {
	up := &upstream{prepared: map[string]bool{"dbproxy_a": true}}
	tr := &txnSession{up: up}
	// Parse (swallowed, proxy-injected), Bind, fake CloseComplete,
	// Execute, Sync.
	tr.queue = []request{
		{typ: 'P', action: actSwallow, pname: "dbproxy_a"},
		{typ: 'B'},
		{action: actFake, fake: []byte{'3', 0, 0, 0, 4}},
		{typ: 'E'},
		{typ: 'S'},
	}
	if drop, fakes := tr.complete('1'); !drop || fakes != nil {
		t.Fatalf("ParseComplete of an injected Parse: drop=%v fakes=%q", drop, fakes)
	}
	if drop, fakes := tr.complete('2'); drop || len(fakes) != 1 || !bytes.Equal(fakes[0], []byte{'3', 0, 0, 0, 4}) {
		t.Fatalf("BindComplete: drop=%v fakes=%q, want the fake CloseComplete after it", drop, fakes)
	}
	if drop, _ := tr.complete('D'); drop || len(tr.queue) != 2 {
		t.Fatalf("DataRow must not complete Execute: queue %v", tr.queue)
	}
	tr.complete('C')
	tr.complete('Z')
	if len(tr.queue) != 0 {
		t.Fatalf("queue not empty after ReadyForQuery: %v", tr.queue)
	}
}

func TestRequestQueueErrorSkipsToSync(t *testing.T) {
	up := &upstream{prepared: map[string]bool{"dbproxy_bad": true}}
	tr := &txnSession{up: up}
	tr.queue = []request{
		{typ: 'P', pname: "dbproxy_bad"},
		{typ: 'B'},
		{typ: 'E'},
		{typ: 'S'},
	}
	if drop, _ := tr.complete('E'); drop {
		t.Fatal("an ErrorResponse must reach the client")
	}
	if len(tr.queue) != 1 || tr.queue[0].typ != 'S' {
		t.Fatalf("after an error the queue should wait for Sync only: %v", tr.queue)
	}
	if up.prepared["dbproxy_bad"] {
		t.Fatal("a statement whose Parse failed is still marked prepared")
	}
	tr.complete('Z')
	if len(tr.queue) != 0 {
		t.Fatalf("queue: %v", tr.queue)
	}
}

func TestSessionFeature(t *testing.T) {
	for q, want := range map[string]string{
		"LISTEN chan":                            "LISTEN",
		"  listen\tx":                            "LISTEN",
		"select pg_advisory_lock(1)":             "a session-level advisory lock",
		"SELECT PG_TRY_ADVISORY_LOCK_SHARED (1)": "a session-level advisory lock",
		"select pg_advisory_xact_lock(1)":        "",
		"select 'listen to me'":                  "",
		"unlisten *":                             "",
	} {
		if got := sessionFeature([]byte(q)); got != want {
			t.Errorf("sessionFeature(%q) = %q, want %q", q, got, want)
		}
	}
}

func TestDeallocateTarget(t *testing.T) {
	for q, want := range map[string]string{
		"DEALLOCATE foo":           "foo",
		"deallocate prepare \"s\"": "s",
		"deallocate all;":          "all",
		"deallocate \"s":           "",
		"deallocate a, b":          "",
	} {
		got, ok := deallocateTarget([]byte(q))
		if ok != (want != "") || got != want {
			t.Errorf("deallocateTarget(%q) = %q %v, want %q", q, got, ok, want)
		}
	}
}

func TestRefusalSQLQuotes(t *testing.T) {
	q := refusalSQL("it's")
	if !bytes.Contains([]byte(q), []byte("it''s")) {
		t.Fatalf("single quote not doubled: %s", q)
	}
}

func TestContainsFold(t *testing.T) {
	for _, c := range []struct {
		q, sub string
		want   bool
	}{
		{"select PG_ADVISORY_LOCK(1)", "advisory_", true},
		{"select 1", "advisory_", false},
		{"advisory", "advisory_", false},
		{"", "advisory_", false},
	} {
		if got := containsFold([]byte(c.q), c.sub); got != c.want {
			t.Errorf("containsFold(%q, %q) = %v", c.q, c.sub, got)
		}
	}
}

func TestPatchStatus(t *testing.T) {
	s := &session{}
	s.txStatus.Store('T')
	got := s.patchStatus(deallocateAnswer)
	if got[len(got)-1] != 'T' || deallocateAnswer[len(deallocateAnswer)-1] != 'I' {
		t.Fatalf("patched %q, template %q", got, deallocateAnswer)
	}
	cc := []byte{'3', 0, 0, 0, 4}
	if !bytes.Equal(s.patchStatus(cc), cc) {
		t.Fatal("a frame without ReadyForQuery changed")
	}
}

func TestRememberBoundsBytes(t *testing.T) {
	tr := &txnSession{stmts: map[string]stmt{}}
	big := make([]byte, 1<<20) // a 1 MiB query
	for i := range 40 {
		big[0] = byte(i) // distinct statements
		tr.remember(string(rune('a'+i)), stmt{pname: "p", parse: append(big[:len(big):len(big)], 0, 0, 0)})
	}
	if tr.stmtBytes > maxClientStatementBytes || len(tr.stmts) > 16 {
		t.Fatalf("%d statements, %d bytes kept; want at most %d bytes", len(tr.stmts), tr.stmtBytes, maxClientStatementBytes)
	}
	sum := 0
	for _, st := range tr.stmts {
		sum += len(st.parse)
	}
	if sum != tr.stmtBytes {
		t.Fatalf("stmtBytes %d, actual %d", tr.stmtBytes, sum)
	}
	tr.remember("a", stmt{pname: "p", parse: []byte("select 1\x00\x00\x00")})
	tr.remember("a", stmt{pname: "q", parse: []byte("select 2\x00\x00\x00")}) // redefined: counted once
	tr.forget("a")
	tr.forget("a")
	sum = 0
	for _, st := range tr.stmts {
		sum += len(st.parse)
	}
	if sum != tr.stmtBytes {
		t.Fatalf("after forget: stmtBytes %d, actual %d", tr.stmtBytes, sum)
	}
}

func TestIdleTxnErrorNamesTheSetting(t *testing.T) {
	s := &session{backend: &Backend{Name: "orders", IdleTxnTimeout: time.Minute}}
	e := s.idleTxnError()
	if e.Code != "25P03" || !bytes.Contains([]byte(e.Message), []byte("pool.idle_transaction_timeout")) {
		t.Fatalf("%+v", e)
	}
}

func TestClassifySet(t *testing.T) {
	for q, want := range map[string]string{
		"SET search_path = x":               "set search_path",
		"set statement_timeout to '1s';":    "set statement_timeout",
		"SET SESSION TimeZone = 'UTC'":      "set timezone",
		"RESET search_path":                 "reset search_path",
		"reset all":                         "reset all",
		"SET LOCAL search_path = x":         "",
		"SET TRANSACTION ISOLATION LEVEL x": "",
		"SET ROLE admin":                    "refuse SET ROLE",
		"RESET ROLE":                        "refuse SET ROLE",
		"SET SESSION AUTHORIZATION bob":     "refuse SET SESSION AUTHORIZATION",
		"SET a = 1; SET b = 2":              "untracked",
		"select 1":                          "",
		"settings":                          "",
	} {
		ch, refuse := classifySet([]byte(q))
		got := ""
		switch {
		case refuse != "":
			got = "refuse " + refuse
		case ch == nil:
		case ch.failed:
			got = "untracked"
		case ch.all:
			got = "reset all"
		case ch.sql == "":
			got = "reset " + ch.name
		default:
			got = "set " + ch.name
		}
		if got != want {
			t.Errorf("classifySet(%q) = %q, want %q", q, got, want)
		}
	}
}
