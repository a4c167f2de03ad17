package creds

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// startKind runs a Static or KV source for testBackend/testRole.
func startKind(t *testing.T, fv *fakeVault, sp SourceSpec) testSource {
	t.Helper()
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := newSource(c, testBackend, "database", testRole, sp.Lease, log, NewMetrics(nil))
	s.kind, s.kv, s.poll = sp.Kind, sp.KV, sp.PollInterval
	nc := &nowCounter{}
	s.now = nc.now
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return testSource{s, nc}
}

func staticLease() LeaseOptions {
	return LeaseOptions{DrainTimeout: 2 * time.Second, SafetyMargin: 500 * time.Millisecond}
}

// A scheduled rotation: the source reads just after it, publishes the new
// password as a new generation, and the old one ends at the rotation plus
// the drain timeout (less the safety margin), held or not; it is retired
// without any revoke.
func TestStaticScheduledRotation(t *testing.T) {
	fv := newFakeVault(t)
	fv.addStatic(testRole, 3*time.Second, 500*time.Millisecond)
	s := startKind(t, fv, SourceSpec{Kind: Static, Lease: staticLease()})
	g1 := s.current(t, 1, 5*time.Second)
	if g1.Password() != fv.staticPassword(testRole) || g1.Username != "svc_"+testRole || g1.LeaseID != "" {
		t.Fatalf("generation 1 = %s/%q lease %q", g1.Username, g1.Password(), g1.LeaseID)
	}
	info := g1.Info()
	if info.Kind != "static" || info.NextRotation.IsZero() || info.Version == "" {
		t.Fatalf("info = %+v", info)
	}
	rotation := info.NextRotation
	if !g1.Acquire() {
		t.Fatal("acquire generation 1")
	}
	g2 := s.current(t, 2, 10*time.Second)
	if g2.Password() == g1.Password() || g2.Password() != fv.staticPassword(testRole) {
		t.Fatalf("generation 2 password %q, generation 1 %q, Vault %q", g2.Password(), g1.Password(), fv.staticPassword(testRole))
	}
	if g2.Info().Version == info.Version {
		t.Fatalf("version unchanged across a rotation: %q", info.Version)
	}
	// The old generation drains just after the new one is published.
	if !closedWithin(g1.Draining(), 5*time.Second) || g1.Reason() != reasonVaultRotation {
		t.Fatalf("generation 1 is %s (%q), want draining for %s", g1.State(), g1.Reason(), reasonVaultRotation)
	}
	// The deadline is fixed by the schedule, not by when dbproxy noticed.
	want := rotation.Add(2*time.Second - 500*time.Millisecond)
	if d := g1.Info().Deadline; d.After(want) {
		t.Fatalf("drain deadline %v is after the rotation + drain_timeout - safety_margin (%v)", d, want)
	}
	if !closedWithin(g1.Expired(), 10*time.Second) {
		t.Fatal("held generation 1 never reached its deadline")
	}
	g1.Release()
	waitFor(t, 5*time.Second, "generation 1 retired", func() bool { return len(s.Generations()) == 1 })
	if n := fv.count(opRevoke); n != 0 {
		t.Fatalf("%d revoke calls for a static credential", n)
	}
	if got := counterValue(t, s.m.revocations, testBackend, testRole, "no_lease"); got != 1 {
		t.Fatalf("revocations{result=no_lease} = %v, want 1", got)
	}
}

// Reads that find the same password keep the generation and are spaced
// by the poll interval, not a loop.
func TestStaticPollSamePassword(t *testing.T) {
	fv := newFakeVault(t)
	fv.addStatic(testRole, time.Hour, 0)
	s := startKind(t, fv, SourceSpec{Kind: Static, Lease: staticLease(), PollInterval: 200 * time.Millisecond})
	g1 := s.current(t, 1, 5*time.Second)
	waitFor(t, 10*time.Second, "five polls", func() bool { return fv.count(opStatic) >= 6 })
	if g, err := s.Current(context.Background()); err != nil || g != g1 || g1.State() != Active {
		t.Fatalf("after polls: current %v (%v), generation 1 %s", g, err, g1.State())
	}
	if n := s.clock.over(time.Second); n > 100 {
		t.Fatalf("source loop ran %d times in a second", n)
	}
}

// A rotation outside the schedule (database/rotate-role) is found by the
// next poll, and the old generation gets the drain timeout from then.
func TestStaticForcedRotationByPoll(t *testing.T) {
	fv := newFakeVault(t)
	fv.addStatic(testRole, time.Hour, 0)
	s := startKind(t, fv, SourceSpec{Kind: Static, Lease: staticLease(), PollInterval: 200 * time.Millisecond})
	g1 := s.current(t, 1, 5*time.Second)
	pass := fv.rotateStatic(testRole)
	forced := time.Now()
	g2 := s.current(t, 2, 5*time.Second)
	if g2.Password() != pass {
		t.Fatalf("generation 2 has %q, Vault %q", g2.Password(), pass)
	}
	if !closedWithin(g1.Draining(), 5*time.Second) {
		t.Fatal("generation 1 not draining")
	}
	d := g1.Info().Deadline
	if d.Before(forced) || d.After(time.Now().Add(2*time.Second)) {
		t.Fatalf("drain deadline %v not within the drain timeout of the forced rotation at %v", d, forced)
	}
	if !closedWithin(g1.Draining(), 5*time.Second) {
		t.Fatal("generation 1 not draining")
	}
}

// Without polling, a refused login makes the source read again: the new
// password becomes a generation, and the refused one is not cut short
// (its open connections stay logged in).
func TestStaticAuthFailedRereads(t *testing.T) {
	fv := newFakeVault(t)
	fv.addStatic(testRole, time.Hour, 0)
	s := startKind(t, fv, SourceSpec{Kind: Static, Lease: staticLease()})
	g1 := s.current(t, 1, 5*time.Second)
	reads := fv.count(opStatic)
	g1.AuthFailed()
	if st := g1.State(); st != Active {
		t.Fatalf("a refused login drained generation 1 at once: %s", st)
	}
	waitFor(t, 5*time.Second, "a second read", func() bool { return fv.count(opStatic) > reads })
	if g, _ := s.Current(context.Background()); g != g1 {
		t.Fatal("the same password became a new generation")
	}
	pass := fv.rotateStatic(testRole)
	g1.AuthFailed()
	g2 := s.current(t, 2, 5*time.Second)
	if g2.Password() != pass || !closedWithin(g1.Draining(), 5*time.Second) || g1.Reason() != reasonVaultRotation {
		t.Fatalf("generation 2 %q (Vault %q), generation 1 reason %q", g2.Password(), pass, g1.Reason())
	}
	// Many refusals in a burst are one read per minReread, not one each.
	before := fv.count(opStatic)
	for range 50 {
		g2.AuthFailed()
	}
	time.Sleep(1500 * time.Millisecond)
	if n := fv.count(opStatic) - before; n > 3 {
		t.Fatalf("50 refused logins caused %d reads", n)
	}
}

// Vault's queue late with a due rotation: the source reads with backoff,
// keeps the current generation alive (its end moves with each read) and
// takes the password once it changes.
func TestStaticRotationLateBacksOff(t *testing.T) {
	fv := newFakeVault(t)
	fv.addStatic(testRole, 2*time.Second, 4*time.Second)
	s := startKind(t, fv, SourceSpec{Kind: Static, Lease: staticLease()})
	g1 := s.current(t, 1, 5*time.Second)
	// Which generation was newest when generation 1 expired.
	newest := make(chan uint64, 1)
	go func() {
		<-g1.Expired()
		s.mu.Lock()
		newest <- s.lastN
		s.mu.Unlock()
	}()
	g2 := s.current(t, 2, 15*time.Second)
	if !closedWithin(g1.Draining(), 5*time.Second) || g2.Password() != fv.staticPassword(testRole) {
		t.Fatalf("generation 1 %s, generation 2 password %q", g1.State(), g2.Password())
	}
	// Between the due time (2s) and the late rotation (6s) the reads back
	// off: 1s, 2s, 4s... so a handful, not one per loop turn.
	if n := fv.count(opStatic); n > 8 {
		t.Fatalf("%d static-creds reads for one late rotation", n)
	}
	select {
	case n := <-newest:
		if n < 2 {
			t.Fatal("generation 1 expired while Vault's rotation was late, before its password changed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("generation 1 never expired after it was replaced")
	}
}

// An operator's rotate makes a new generation even with the same
// password; revoke is refused: there is no lease.
func TestStaticManualRotateAndRevoke(t *testing.T) {
	fv := newFakeVault(t)
	fv.addStatic(testRole, time.Hour, 0)
	s := startKind(t, fv, SourceSpec{Kind: Static, Lease: staticLease()})
	g1 := s.current(t, 1, 5*time.Second)
	if err := s.TryRotate("manual"); err != nil {
		t.Fatal(err)
	}
	g2 := s.current(t, 2, 5*time.Second)
	if g2.Password() != g1.Password() || !closedWithin(g1.Draining(), 5*time.Second) || g1.Reason() != "manual" {
		t.Fatalf("manual rotate: %q vs %q, reason %q", g2.Password(), g1.Password(), g1.Reason())
	}
	if _, err := s.Revoke(context.Background()); !errors.Is(err, ErrNoLease) {
		t.Fatalf("revoke: %v, want ErrNoLease", err)
	}
}

// A KV v2 secret: a new version is a new generation, polls of the same
// version are not, and a secret without the fields is an error that names
// them (and not the secret's values).
func TestKVSourceVersions(t *testing.T) {
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) {
		f.kv["db/legacy"] = &fakeKV{version: 1, data: map[string]any{"user": "legacy_app", "pass": "KV-PASSWORD-1"}}
	})
	s := startKind(t, fv, SourceSpec{Kind: KV, Lease: staticLease(), PollInterval: 200 * time.Millisecond,
		KV: KVSecret{Mount: "secret", Path: "db/legacy", UsernameField: "user", PasswordField: "pass"}})
	g1 := s.current(t, 1, 5*time.Second)
	if g1.Username != "legacy_app" || g1.Password() != "KV-PASSWORD-1" || g1.Info().Version != "1" || g1.Info().Kind != "kv" {
		t.Fatalf("generation 1 = %+v", g1.Info())
	}
	waitFor(t, 5*time.Second, "polls", func() bool { return fv.count(opKVRead) >= 4 })
	if g, _ := s.Current(context.Background()); g != g1 {
		t.Fatal("the same version became a new generation")
	}
	fv.set(func(f *fakeVault) {
		f.kv["db/legacy"] = &fakeKV{version: 2, data: map[string]any{"user": "legacy_app", "pass": "KV-PASSWORD-2"}}
	})
	g2 := s.current(t, 2, 5*time.Second)
	if g2.Password() != "KV-PASSWORD-2" || !closedWithin(g1.Draining(), 5*time.Second) || g1.Reason() != reasonKVVersion {
		t.Fatalf("generation 2 %q, generation 1 reason %q", g2.Password(), g1.Reason())
	}
	// A KV credential has no end of its own: generation 1 drains by the
	// drain timeout, generation 2 does not expire.
	if !closedWithin(g1.Expired(), 10*time.Second) {
		t.Fatal("generation 1 did not end at its drain deadline")
	}
	if g2.State() != Active {
		t.Fatalf("generation 2 %s", g2.State())
	}

	fv.set(func(f *fakeVault) {
		f.kv["db/legacy"] = &fakeKV{version: 3, data: map[string]any{"username": "x", "password": "KV-PASSWORD-3"}}
	})
	waitFor(t, 5*time.Second, "the read error", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.lastErr != nil
	})
	s.mu.Lock()
	msg := s.lastErr.Error()
	s.mu.Unlock()
	if want := `version 3 has no string fields "user" and "pass"`; !strings.Contains(msg, want) || strings.Contains(msg, "KV-PASSWORD") {
		t.Fatalf("error %q, want it to say %q and no password", msg, want)
	}
	if g, err := s.Current(context.Background()); err != nil || g != g2 {
		t.Fatalf("a bad new version took generation 2 away: %v %v", g, err)
	}
}
