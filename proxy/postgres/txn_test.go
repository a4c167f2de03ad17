package postgres

import (
	"bytes"
	"testing"
)

func TestRequestQueueCompletion(t *testing.T) {
	up := &upstream{prepared: map[string]bool{"dbproxy_a": true}}
	tr := &txnSession{up: up}
	// Parse (swallowed, proxy-injected), Bind, fake CloseComplete,
	// Execute, Sync.
	tr.queue = []request{
		{typ: 'P', action: actSwallow, pname: "dbproxy_a"},
		{typ: 'B'},
		{action: actFake, fake: '3'},
		{typ: 'E'},
		{typ: 'S'},
	}
	if drop, fakes := tr.complete('1'); !drop || fakes != nil {
		t.Fatalf("ParseComplete of an injected Parse: drop=%v fakes=%q", drop, fakes)
	}
	if drop, fakes := tr.complete('2'); drop || !bytes.Equal(fakes, []byte{'3'}) {
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
		if got := sessionFeature(q); got != want {
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
		got, ok := deallocateTarget(q)
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
		if got := containsFold(c.q, c.sub); got != c.want {
			t.Errorf("containsFold(%q, %q) = %v", c.q, c.sub, got)
		}
	}
}
