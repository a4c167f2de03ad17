package events

import (
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)} }
func count(cs []Count, k Kind, reason string) int {
	n := 0
	for _, c := range cs {
		if c.Kind == k && (reason == "*" || c.Reason == reason) {
			n += c.N
		}
	}
	return n
}

func TestListIsBoundedByCountNewestFirst(t *testing.T) {
	c := newClock()
	l := New(Options{MaxEvents: 3, Now: c.now})
	for g := uint64(1); g <= 5; g++ {
		l.Record(Event{Kind: Issued, Backend: "b", Role: "r", Generation: g, Reason: "max_ttl"})
		c.advance(time.Second)
	}
	got := l.Events()
	if len(got) != 3 || got[0].Generation != 5 || got[2].Generation != 3 {
		t.Fatalf("events = %+v, want generations 5, 4, 3", got)
	}
	// Dropped from the list, still counted.
	if n := count(l.Counts(), Issued, "max_ttl"); n != 5 {
		t.Errorf("issued count = %d, want 5", n)
	}
}

func TestWindowDropsOldEventsAndCounts(t *testing.T) {
	c := newClock()
	l := New(Options{Now: c.now})
	l.Record(Event{Kind: Issued, Backend: "b", Role: "r", Generation: 1, Reason: "initial"})
	l.Count(Renewed, "b", "r", "")
	c.advance(20 * time.Hour)
	l.Record(Event{Kind: Issued, Backend: "b", Role: "r", Generation: 2, Reason: "max_ttl"})
	l.Record(Event{Kind: Revoked, Backend: "b", Role: "r", Generation: 1, Reason: "max_ttl", Result: "ok"})
	l.Count(Renewed, "b", "r", "capped")
	if n := count(l.Counts(), Issued, "*"); n != 2 {
		t.Fatalf("after 20h: issued = %d, want 2", n)
	}
	c.advance(5 * time.Hour) // generation 1's issue and first renewal are now 25h old
	cs := l.Counts()
	if n := count(cs, Issued, "*"); n != 1 {
		t.Errorf("after 25h: issued = %d, want 1 (the 25h old one dropped)", n)
	}
	if n := count(cs, Renewed, "*"); n != 1 {
		t.Errorf("after 25h: renewals = %d, want 1", n)
	}
	if ev := l.Events(); len(ev) != 2 || ev[0].Kind != Revoked || ev[1].Generation != 2 {
		t.Errorf("after 25h: events = %+v, want the revoke and generation 2", ev)
	}
	c.advance(24 * time.Hour)
	if cs, ev := l.Counts(), l.Events(); len(cs) != 0 || len(ev) != 0 {
		t.Errorf("after 49h: counts %+v, events %+v, want none", cs, ev)
	}
}

func TestCountsPerBackendRoleAndBucketed(t *testing.T) {
	c := newClock()
	l := New(Options{Now: c.now})
	for i := 0; i < 1500; i++ { // more renewals than there are minutes in a day
		l.Count(Renewed, "b", "r1", "")
		c.advance(30 * time.Second)
	}
	l.Count(Renewed, "b", "r2", "")
	var r1, r2 int
	for _, x := range l.Counts() {
		switch x.Role {
		case "r1":
			r1 += x.N
		case "r2":
			r2 += x.N
		}
	}
	if r1 != 1500 || r2 != 1 {
		t.Errorf("renewals r1 = %d (want 1500, all within 12.5h), r2 = %d (want 1)", r1, r2)
	}
	if b := len(l.counts[countKey{"b", "r1", Renewed, ""}]); b > 24*60+1 {
		t.Errorf("%d buckets kept, want at most one a minute for a day", b)
	}
}

func TestNilLogIsANoOp(t *testing.T) {
	var l *Log
	l.Record(Event{Kind: Issued})
	l.Count(Renewed, "b", "r", "")
	if len(l.Events()) != 0 || len(l.Counts()) != 0 {
		t.Error("a nil log listed something")
	}
}
