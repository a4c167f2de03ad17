package creds

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for a source driven by hand (no Run loop).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// An operator's rotation over lease.max_issue_per_minute is refused with
// the time of the next allowed issuance, counted, and issues nothing; the
// initial credential counts toward the cap, and the window slides.
func TestTryRotateIssuanceCap(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 10*time.Minute, time.Hour }) // nothing renews or ends in this test
	log, logs := testLogger()
	c := tokenClient(t, fv, log)
	s := newSource(c, testBackend, "database", testRole, LeaseOptions{MaxIssuePerMinute: 3}, log, NewMetrics(nil))
	clk := &fakeClock{t: time.Now()}
	t0 := clk.now()
	s.now = clk.now
	ctx := context.Background()
	step := func() { s.step(ctx) }

	step() // the initial credential: 1 of 3
	for i, at := range []time.Duration{10 * time.Second, 20 * time.Second} {
		clk.advance(10 * time.Second)
		if err := s.TryRotate("manual"); err != nil {
			t.Fatalf("rotation %d at +%v: %v", i+1, at, err)
		}
		if err := s.TryRotate("manual"); err != nil { // absorbed by the pending one
			t.Fatalf("second request for rotation %d: %v", i+1, err)
		}
		step()
	}
	if n := fv.count(opCreds); n != 3 {
		t.Fatalf("%d creds reads, want 3", n)
	}

	clk.advance(15 * time.Second) // +35s: the next issue is allowed at +60s
	err := s.TryRotate("manual")
	var ce *IssueCapError
	if !errors.As(err, &ce) {
		t.Fatalf("TryRotate over the cap = %v, want an *IssueCapError", err)
	}
	if !ce.Next.Equal(t0.Add(time.Minute)) || ce.RetryAfter() != 25*time.Second || ce.Max != 3 {
		t.Errorf("refusal: next %v (want t0+60s), retry after %v (want 25s), max %d", ce.Next.Sub(t0), ce.RetryAfter(), ce.Max)
	}
	if msg := err.Error(); !strings.Contains(msg, "backend pg, role app: 3 credentials issued in the last minute (lease.max_issue_per_minute)") ||
		!strings.Contains(msg, t0.Add(time.Minute).UTC().Format(time.RFC3339)) || !strings.HasSuffix(msg, "in 25s") {
		t.Errorf("refusal says %q", msg)
	}
	step()
	if n := fv.count(opCreds); n != 3 {
		t.Errorf("%d creds reads after a refused rotation, want 3", n)
	}
	if n := counterValue(t, s.m.refused, testBackend, testRole, "manual"); n != 1 {
		t.Errorf("refused{manual} = %v, want 1", n)
	}
	if countLogs(logs, "rotation refused: credential issuance cap reached") != 1 {
		t.Error("the refusal was not logged once")
	}

	clk.advance(25*time.Second - time.Millisecond) // just before the window slides
	if err := s.TryRotate("manual"); err == nil {
		t.Fatal("accepted 1ms before the first issuance left the window")
	} else if err.(*IssueCapError).RetryAfter() != time.Second {
		t.Errorf("1ms before: retry after %v, want 1s (rounded up)", err.(*IssueCapError).RetryAfter())
	}
	clk.advance(time.Millisecond)
	if err := s.TryRotate("manual"); err != nil {
		t.Fatalf("at t0+60s: %v", err)
	}
	step()
	if n := fv.count(opCreds); n != 4 {
		t.Errorf("%d creds reads after the window slid, want 4", n)
	}
	if g, _ := s.Current(ctx); g == nil || g.N != 4 {
		t.Errorf("current generation %v, want 4", g)
	}
}

// A due rotation held back by the cap waits (it is not refused) and is
// counted once with its own reason, however often the loop wakes.
func TestDueRotationOverCapCountedOnce(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 10*time.Minute, time.Hour })
	log, logs := testLogger()
	c := tokenClient(t, fv, log)
	s := newSource(c, testBackend, "database", testRole, LeaseOptions{MaxIssuePerMinute: 1}, log, NewMetrics(nil))
	clk := &fakeClock{t: time.Now()}
	s.now = clk.now
	ctx := context.Background()
	s.step(ctx)
	s.Rotate("auth_failed")
	for range 5 {
		clk.advance(time.Second)
		if next := s.step(ctx); next.After(clk.now().Add(time.Minute)) {
			t.Errorf("waiting rotation sleeps until %v, past the window", next)
		}
	}
	if n := fv.count(opCreds); n != 1 {
		t.Errorf("%d creds reads, want 1", n)
	}
	if n := counterValue(t, s.m.refused, testBackend, testRole, "auth_failed"); n != 1 {
		t.Errorf("refused{auth_failed} = %v, want 1", n)
	}
	if n := countLogs(logs, "issuance cap reached; waiting"); n != 1 {
		t.Errorf("%d cap warnings, want 1", n)
	}
	clk.advance(time.Minute)
	s.step(ctx)
	if g, _ := s.Current(ctx); g == nil || g.N != 2 || fv.count(opCreds) != 2 {
		t.Errorf("after the window: generation %v, %d creds reads", g, fv.count(opCreds))
	}
}
