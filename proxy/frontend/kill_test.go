package frontend

import (
	"strings"
	"sync"
	"testing"
)

func TestKillIDStopsOneSessionWithItsReason(t *testing.T) {
	srv := NewServer[*fakeSession](nil)
	a, b := newFake("a", true), newFake("b", true)
	var tracked sync.WaitGroup
	tracked.Add(2)
	// a stays in the registry until its note is read: KillNote of an
	// untracked session is "".
	noteRead := make(chan struct{})
	srv.Go(func() {
		srv.Track(a)
		tracked.Done()
		<-a.done
		<-noteRead
		srv.Untrack(a)
	})
	run(srv, b, &tracked, func() {})
	tracked.Wait()
	ids := map[string]uint64{}
	for _, si := range srv.Sessions() {
		if si.ID == 0 {
			t.Fatalf("session %s listed without an ID", si.Identity)
		}
		ids[si.Identity] = si.ID
	}
	if ids["a"] == ids["b"] {
		t.Fatalf("two sessions share ID %d", ids["a"])
	}
	if _, ok := srv.KillID(ids["b"]+ids["a"]+100, "x"); ok {
		t.Fatal("KillID of an unknown ID reported a session")
	}
	si, ok := srv.KillID(ids["a"], " maintenance\nwindow ")
	if !ok || si.Identity != "a" || si.ID != ids["a"] {
		t.Fatalf("KillID = %+v, %v", si, ok)
	}
	<-a.done
	if a.killed != KillByOperator {
		t.Fatalf("a stopped for %d, want KillByOperator", a.killed)
	}
	got := srv.KillNote(a)
	close(noteRead)
	if got != "maintenance window" {
		t.Fatalf("KillNote = %q", got)
	}
	if srv.KillNote(b) != "" || b.killed != KillNone {
		t.Fatalf("b was touched: note %q, killed %d", srv.KillNote(b), b.killed)
	}
	if KillByOperator.Rank() != KillShutdown || KillByOperator.Result() != "operator_kill" {
		t.Fatal("an operator's kill must rank as shutdown and count as operator_kill")
	}
	b.stop(KillShutdown)
}

func TestCleanKillReason(t *testing.T) {
	long := strings.Repeat("é", MaxKillReason) // 2 bytes each
	got := CleanKillReason(long)
	if len(got) > MaxKillReason || !strings.HasPrefix(long, got) || len(got) < MaxKillReason-1 {
		t.Fatalf("capped reason is %d bytes: %q", len(got), got)
	}
	if got := CleanKillReason("a\x00b\tc"); got != "a b c" {
		t.Fatalf("control characters kept: %q", got)
	}
	if got := OperatorKillText(""); got != "an operator of dbproxy killed this session" {
		t.Fatalf("OperatorKillText(\"\") = %q", got)
	}
}
