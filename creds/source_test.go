package creds

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/events"
)

// The full life of a credential whose role tells its max_ttl: renewed,
// rotated before its hard end, drained while held, expired at its drain
// deadline, revoked once released.
func TestSourceLifecycle(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 3*time.Second, 8*time.Second })
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	// Hard end 8s, rotate 4s before (half the life), drain until 3s
	// before the hard end.
	s := startSource(t, c, LeaseOptions{SafetyMargin: 3 * time.Second}, log)

	g1 := s.current(t, 1, 3*time.Second)
	l1 := fv.lease(g1.LeaseID)
	if g1.N != 1 || g1.Backend != testBackend || g1.Role != testRole || g1.Username != l1.username || g1.Password() != l1.password {
		t.Fatalf("generation 1 = %+v (password %q), want the fake's lease %+v", g1.Info(), g1.Password(), l1)
	}
	info := g1.Info()
	if info.State != "active" || !info.HardEnd.Equal(g1.IssuedAt.Add(8*time.Second)) {
		t.Fatalf("generation 1 info = %+v, want active with hard end issued+8s", info)
	}
	if g1.IssuedAt.After(l1.issued) {
		t.Errorf("issued at %v, after Vault issued the lease at %v", g1.IssuedAt, l1.issued)
	}
	for range 2 {
		if !g1.Acquire() {
			t.Fatal("Acquire on an active generation failed")
		}
	}

	waitFor(t, 4*time.Second, "a renewal of generation 1", func() bool { return fv.renewalsOf(g1.LeaseID) >= 1 })
	body := fv.bodiesOf(opRenew)[0]
	if body["lease_id"] != g1.LeaseID || body["increment"] != float64(3) {
		t.Errorf("renew body = %v, want lease_id %s and increment 3", body, g1.LeaseID)
	}

	if !closedWithin(g1.Draining(), 5*time.Second) {
		t.Fatalf("generation 1 never started draining: %+v", g1.Info())
	}
	drainedAt := time.Now()
	hardEnd := g1.Info().HardEnd
	if left := hardEnd.Sub(drainedAt); left < 3*time.Second {
		t.Errorf("rotation %v before the hard end, want about 4s", left)
	}
	if g1.Reason() != "max_ttl" || g1.State() != Draining || isClosed(g1.Expired()) {
		t.Errorf("generation 1: reason %q, state %v, expired %v; want max_ttl, draining, not expired", g1.Reason(), g1.State(), isClosed(g1.Expired()))
	}
	g2 := s.current(t, 2, time.Second)
	if g2.N != 2 || g2.LeaseID == g1.LeaseID || g2.Username == g1.Username {
		t.Fatalf("generation 2 = %+v, want a new lease", g2.Info())
	}
	if g2.IssuedAt.After(hardEnd) {
		t.Errorf("generation 2 issued at %v, after generation 1's hard end %v", g2.IssuedAt, hardEnd)
	}
	if gens := s.Generations(); len(gens) != 2 || gens[0].State != "draining" || gens[1].State != "active" {
		t.Errorf("Generations() = %+v, want generation 1 draining and 2 active", gens)
	}
	if n := counterValue(t, s.m.rotations, testBackend, testRole, "max_ttl"); n != 1 {
		t.Errorf("max_ttl rotations = %v, want 1", n)
	}

	// One holder leaves; the other keeps generation 1 alive.
	g1.Release()
	time.Sleep(300 * time.Millisecond)
	if fv.wasRevoked(g1.LeaseID) {
		t.Fatal("generation 1 revoked while still held")
	}

	// Held past the drain deadline (hard end - 3s): expired.
	if !closedWithin(g1.Expired(), 3*time.Second) {
		t.Fatalf("generation 1 held past its deadline never expired: %+v", g1.Info())
	}
	if dl := g1.Info().Deadline; time.Now().Before(dl) || !dl.Equal(hardEnd.Add(-3*time.Second)) {
		t.Errorf("expired at %v, drain deadline %v; want the deadline at hard end - 3s (%v), passed", time.Now(), dl, hardEnd.Add(-3*time.Second))
	}
	if g1.Acquire() {
		t.Error("Acquire succeeded on an expired generation")
	}
	if fv.wasRevoked(g1.LeaseID) {
		t.Fatal("generation 1 revoked while still held")
	}

	// The last holder leaves: the lease is revoked at once.
	g1.Release()
	waitFor(t, 1500*time.Millisecond, "revocation of generation 1's lease", func() bool { return fv.wasRevoked(g1.LeaseID) })
	if b := fv.bodiesOf(opRevoke); len(b) != 1 || b[0]["lease_id"] != g1.LeaseID {
		t.Errorf("revoke bodies = %v, want one for %s", b, g1.LeaseID)
	}
	waitFor(t, time.Second, "generation 1 to leave Generations()", func() bool { return len(s.Generations()) == 1 })
	if g1.State() != Revoked || fv.wasRevoked(g2.LeaseID) {
		t.Errorf("generation 1 state %v, generation 2 revoked %v", g1.State(), fv.wasRevoked(g2.LeaseID))
	}
	if n := counterValue(t, s.m.revocations, testBackend, testRole, "ok"); n != 1 {
		t.Errorf("ok revocations = %v, want 1", n)
	}
	if fv.renewalsOf(g1.LeaseID) < 2 {
		t.Errorf("generation 1 renewed %d times, want at least 2 (it renews while draining)", fv.renewalsOf(g1.LeaseID))
	}
	// The event log: issued 1, issued 2 (max_ttl), generation 1 revoked
	// for max_ttl; renewals only counted.
	ev := s.ev.Events()
	if len(ev) != 3 || ev[0].Kind != events.Revoked || ev[0].Generation != 1 || ev[0].Reason != "max_ttl" || ev[0].Result != "ok" ||
		ev[1].Kind != events.Issued || ev[1].Generation != 2 || ev[1].Reason != "max_ttl" || ev[2].Reason != "initial" {
		t.Errorf("events %+v", ev)
	}
	renewed := 0
	for _, c := range s.ev.Counts() {
		if c.Kind == events.Renewed {
			renewed += c.N
		}
	}
	if renewed < 2 {
		t.Errorf("%d renewals counted, want at least 2", renewed)
	}
}

// Without read access to the role, the hard end is learnt from the first
// renewal that Vault caps, and rotation follows before that end.
func TestCappedRenewalLearnsHardEnd(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 4*time.Second, 7*time.Second })
	fv.fail(opRole, 403, "permission denied")
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{SafetyMargin: 500 * time.Millisecond}, log)

	g1 := s.current(t, 1, 3*time.Second)
	if h := g1.Info().HardEnd; !h.IsZero() {
		t.Fatalf("hard end %v known before any capped renewal", h)
	}
	g2 := s.current(t, 2, 7*time.Second)
	info := g1.Info()
	maxEnd := fv.lease(g1.LeaseID).maxEnd
	if info.HardEnd.IsZero() || info.HardEnd.After(maxEnd) || info.HardEnd.Before(maxEnd.Add(-2*time.Second)) {
		t.Errorf("learnt hard end %v, want at most 2s before Vault's %v", info.HardEnd, maxEnd)
	}
	if !g2.IssuedAt.Before(info.HardEnd) {
		t.Errorf("generation 2 issued at %v, not before generation 1's hard end %v", g2.IssuedAt, info.HardEnd)
	}
	if g1.Reason() != "max_ttl" {
		t.Errorf("rotation reason %q, want max_ttl", g1.Reason())
	}
	if n := counterValue(t, s.m.renewals, testBackend, testRole, "capped"); n != 1 {
		t.Errorf("capped renewals = %v, want 1", n)
	}
	renewals := fv.renewalsOf(g1.LeaseID)
	waitFor(t, time.Second, "revocation of generation 1", func() bool { return fv.wasRevoked(g1.LeaseID) })
	time.Sleep(300 * time.Millisecond)
	if r := fv.renewalsOf(g1.LeaseID); r != renewals {
		t.Errorf("generation 1 renewed after its capped renewal (%d, then %d)", renewals, r)
	}
}

// While Vault grants every renewal in full and the role cannot be read,
// the hard end stays unknown and the generation is simply kept alive.
func TestUncappedRenewalsKeepGeneration(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL, f.noCap = 2*time.Second, 3*time.Second, true })
	fv.fail(opRole, 403, "permission denied")
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{}, log)
	g1 := s.current(t, 1, 3*time.Second)
	time.Sleep(time.Until(g1.IssuedAt.Add(4 * time.Second)))
	if n := fv.renewalsOf(g1.LeaseID); n < 2 {
		t.Errorf("%d renewals in 4s of a 2s lease, want at least 2", n)
	}
	i := g1.Info()
	if i.State != "active" || !i.HardEnd.IsZero() || fv.count(opCreds) != 1 || !i.LeaseEnd.After(time.Now()) {
		t.Errorf("generation 1 %+v after %d creds reads; want still active, hard end unknown, lease ahead", i, fv.count(opCreds))
	}
	if n := counterValue(t, s.m.renewals, testBackend, testRole, "ok"); n < 2 {
		t.Errorf("ok renewals = %v", n)
	}
}

// A token that dies before the credential's max_ttl is the hard end: the
// source logs in again and rotates before it, with reason "token".
func TestTokenEndCapsCredential(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.tokenTTL, f.tokenRenewable = 6*time.Second, false })
	log, _ := testLogger()
	c := newClient(t, fv, AuthOptions{
		Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID),
	}, log)
	if err := c.Login(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := startSource(t, c, LeaseOptions{SafetyMargin: time.Second}, log)
	g1 := s.current(t, 1, 3*time.Second)
	if h, te := g1.Info().HardEnd, c.TokenEnd(); h.IsZero() || h.After(te) {
		t.Fatalf("hard end %v, want at most the token end %v", h, te)
	}
	g2 := s.current(t, 2, 5*time.Second)
	if g1.Reason() != "token" {
		t.Errorf("rotation reason %q, want token", g1.Reason())
	}
	if !g2.Info().HardEnd.After(g1.Info().HardEnd) {
		t.Errorf("generation 2 hard end %v not after generation 1's %v: no new token", g2.Info().HardEnd, g1.Info().HardEnd)
	}
	if n := fv.count(opApprole); n < 3 {
		t.Errorf("%d approle logins, want at least 3 (start, then one before each fetch)", n)
	}
}

func TestExternalRevoke(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		break_ func(fv *fakeVault, g *Generation)
		reason string
	}{
		{"renew says lease not found", func(fv *fakeVault, g *Generation) { fv.revokeLease(g.LeaseID) }, "external_revoke"},
		{"renew says invalid lease", func(fv *fakeVault, g *Generation) { fv.failLease(g.LeaseID, 400, "invalid lease ID") }, "external_revoke"},
		{"renew forbidden", func(fv *fakeVault, g *Generation) { fv.failLease(g.LeaseID, 403, "permission denied") }, "external_revoke"},
		{"database refuses the user", func(fv *fakeVault, g *Generation) { g.AuthFailed() }, "auth_failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fv := newFakeVault(t)
			fv.set(func(f *fakeVault) { f.ttl = 2 * time.Second })
			log, _ := testLogger()
			c := tokenClient(t, fv, log)
			s := startSource(t, c, LeaseOptions{RevokeGrace: time.Second}, log)

			g1 := s.current(t, 1, 3*time.Second)
			if !g1.Acquire() {
				t.Fatal("Acquire failed")
			}
			tc.break_(fv, g1)
			if !closedWithin(g1.Draining(), 3*time.Second) {
				t.Fatalf("generation 1 did not drain: %+v", g1.Info())
			}
			drained := time.Now()
			if g1.Reason() != tc.reason {
				t.Errorf("reason %q, want %q", g1.Reason(), tc.reason)
			}
			g2 := s.current(t, 2, 2*time.Second)
			if g2.LeaseID == g1.LeaseID {
				t.Fatal("generation 2 reuses the lease")
			}
			if n := counterValue(t, s.m.rotations, testBackend, testRole, tc.reason); n != 1 {
				t.Errorf("%s rotations = %v, want 1", tc.reason, n)
			}
			if tc.reason == "external_revoke" {
				if n := counterValue(t, s.m.renewals, testBackend, testRole, "gone"); n != 1 {
					t.Errorf("gone renewals = %v, want 1", n)
				}
			}
			// Held: it may serve for the revoke grace, no longer.
			if !closedWithin(g1.Expired(), 2*time.Second) {
				t.Fatalf("held generation 1 not expired after the revoke grace: %+v", g1.Info())
			}
			if took := time.Since(drained); took > 1500*time.Millisecond {
				t.Errorf("expired %v after draining, want about the 1s grace", took)
			}
			g1.Release()
			waitFor(t, time.Second, "generation 1 to be dropped", func() bool { return len(s.Generations()) == 1 })
			if g2.State() != Active {
				t.Errorf("generation 2 is %v", g2.State())
			}
		})
	}
}

// A renewal failing for a reason other than a vanished lease is retried
// with backoff and the generation keeps serving.
func TestRenewTransientErrorKeepsGeneration(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	// First renewal at 3-3.5s; its retry within 1s, before the lease ends.
	fv.set(func(f *fakeVault) { f.ttl = 5 * time.Second })
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{}, log)
	g1 := s.current(t, 1, 3*time.Second)
	fv.failLease(g1.LeaseID, 500, "internal error")
	waitFor(t, 4*time.Second, "a failed renewal", func() bool { return fv.count(opRenew) >= 1 })
	if g1.State() != Active || isClosed(g1.Draining()) {
		t.Fatalf("transient renewal errors drained generation 1: %+v", g1.Info())
	}
	if g, err := s.Current(context.Background()); err != nil || g != g1 {
		t.Fatalf("Current = %v, %v; want generation 1", g, err)
	}
	fv.set(func(f *fakeVault) { delete(f.leaseFail, g1.LeaseID) })
	waitFor(t, 1500*time.Millisecond, "a successful renewal", func() bool { return fv.renewalsOf(g1.LeaseID) >= 1 })
	if n := counterValue(t, s.m.renewals, testBackend, testRole, "error"); n != 1 {
		t.Errorf("error renewals = %v, want 1", n)
	}
	if g1.State() != Active || fv.count(opCreds) != 1 {
		t.Errorf("generation 1 %v, %d creds reads; want active and 1", g1.State(), fv.count(opCreds))
	}
}

// Vault down at start: Current fails promptly with the cause, retries back
// off, and the first fetch after Vault recovers serves.
func TestCredsUnavailableAtStart(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.fail(opCreds, 503, "Vault is sealed")
	fv.delay(opCreds, 200*time.Millisecond) // Current waits before the first failure
	log, logs := testLogger()
	c := tokenClient(t, fv, log)
	start := time.Now()
	s := startSource(t, c, LeaseOptions{}, log)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := s.Current(ctx)
	took := time.Since(start)
	if g != nil || err == nil {
		t.Fatalf("Current = %v, %v; want an error", g, err)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("Current took %v to fail, want about the 200ms of the failing request", took)
	}
	var nc *ErrNoCredential
	if !errors.As(err, &nc) {
		t.Fatalf("error %T %v, want *ErrNoCredential", err, err)
	}
	if nc.Backend != testBackend || nc.Since.IsZero() || nc.Cause == nil ||
		!strings.Contains(err.Error(), "Vault is sealed") || !strings.Contains(err.Error(), "503") {
		t.Errorf("ErrNoCredential = %+v (%v), want backend pg, a since and the 503 cause", nc, err)
	}
	if err := s.Ready(); err == nil || !errors.As(err, &nc) {
		t.Errorf("Ready() = %v, want *ErrNoCredential", err)
	}

	time.Sleep(time.Until(start.Add(2500 * time.Millisecond)))
	// Attempts at 0, then after 0.5-1s, then 1-2s more: three at most.
	if n := fv.count(opCreds); n < 2 || n > 3 {
		t.Errorf("%d creds reads in 2.5s, want 2 or 3 (backoff, no hot loop)", n)
	}
	if n := fv.totalHits(); n != fv.count(opCreds)+1 { // + the login's lookup-self
		t.Errorf("%d requests in all, want only the creds reads and one lookup", n)
	}
	if n, reads := countLogs(logs, "fetching credential failed"), fv.count(opCreds); n > reads || n < reads-1 {
		t.Errorf("%d failure logs for %d reads", n, reads)
	}

	fv.recover(opCreds)
	g = s.current(t, 1, 6*time.Second)
	if err := s.Ready(); err != nil {
		t.Errorf("Ready() = %v after recovery", err)
	}
	if g.N != 1 {
		t.Errorf("first generation is %d", g.N)
	}
	s.mu.Lock()
	failing, fails := s.lastErr != nil || !s.failingSince.IsZero(), s.fetchFails
	s.mu.Unlock()
	if failing || fails != 0 {
		t.Errorf("failure state not cleared: failing %v, fails %d", failing, fails)
	}
}

// Manual rotations beyond the issuance cap wait for the window.
func TestIssuanceCap(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	log, logs := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{MaxIssuePerMinute: 2}, log)
	g1 := s.current(t, 1, 3*time.Second)
	for range 5 {
		s.Rotate("manual")
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if n := fv.count(opCreds); n != 2 {
		t.Errorf("%d creds reads, want 2 (the cap)", n)
	}
	g2 := s.current(t, 2, time.Second)
	if g2.N != 2 || g1.Reason() != "manual" {
		t.Errorf("current generation %d, generation 1 reason %q; want 2 and manual", g2.N, g1.Reason())
	}
	if n := counterValue(t, s.m.rotations, testBackend, testRole, "manual"); n != 1 {
		t.Errorf("manual rotations = %v, want 1", n)
	}
	if n := countLogs(logs, "issuance cap reached"); n < 1 || n > 5 {
		t.Errorf("%d cap warnings for 4 refused rotations", n)
	}
	if n := s.clock.over(time.Second); n > 50 {
		t.Errorf("%d clock reads in an idle second while capped: the loop spins", n)
	}
}

// A rotation that is due but must wait (Vault down, or the issuance cap)
// keeps serving the current generation and does not spin the loop.
func TestDueRotationWaitsWithoutSpinning(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		opts  LeaseOptions
		after func(fv *fakeVault)
	}{
		{"vault down", LeaseOptions{}, func(fv *fakeVault) { fv.fail(opCreds, 503, "Vault is sealed") }},
		{"issuance cap", LeaseOptions{MaxIssuePerMinute: 1}, func(*fakeVault) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fv := newFakeVault(t)
			// Not renewable past 4s: rotation due 2s after issue.
			fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 4*time.Second, 4*time.Second })
			log, logs := testLogger()
			c := tokenClient(t, fv, log)
			s := startSource(t, c, tc.opts, log)
			g1 := s.current(t, 1, 3*time.Second)
			tc.after(fv)
			time.Sleep(time.Until(g1.IssuedAt.Add(2200 * time.Millisecond)))
			reads := fv.count(opCreds)
			if n := s.clock.over(1300 * time.Millisecond); n > 60 {
				t.Errorf("%d clock reads in 1.3s while the rotation waits: the loop spins", n)
			}
			if n := fv.count(opCreds) - reads; n > 2 {
				t.Errorf("%d creds reads in 1.3s", n)
			}
			if n := countLogs(logs, "issuance cap reached"); n > 3 {
				t.Errorf("%d cap warnings", n)
			}
			g, err := s.Current(context.Background())
			if err != nil || g != g1 {
				t.Errorf("Current = %v, %v; want generation 1 until its end", g, err)
			}
		})
	}
}

// A generation held past its drain deadline expires, and the loop then
// sleeps until the last holder releases it.
func TestHeldExpiredGenerationWaitsForRelease(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.fail(opRole, 403, "permission denied") // hard end unknown: DrainTimeout applies
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{DrainTimeout: 500 * time.Millisecond}, log)
	g1 := s.current(t, 1, 3*time.Second)
	if !g1.Acquire() {
		t.Fatal("Acquire failed")
	}
	s.Rotate("manual")
	if !closedWithin(g1.Draining(), 2*time.Second) {
		t.Fatal("generation 1 did not drain on manual rotation")
	}
	if !closedWithin(g1.Expired(), 1500*time.Millisecond) {
		t.Fatalf("generation 1 did not expire at the drain timeout: %+v", g1.Info())
	}
	if n := s.clock.over(1500 * time.Millisecond); n > 60 {
		t.Errorf("%d clock reads in 1.5s while an expired generation is held: the loop spins", n)
	}
	if fv.wasRevoked(g1.LeaseID) {
		t.Fatal("revoked while held")
	}
	g1.Release()
	waitFor(t, time.Second, "revocation after the last release", func() bool { return fv.wasRevoked(g1.LeaseID) })
}

// Failed renewals and revocations back off exponentially per lease, and a
// success resets the backoff. One failure is one request.
func TestLeaseRetryBackoff(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = time.Hour, 24*time.Hour })
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := newSource(c, testBackend, "database", testRole, LeaseOptions{}, log, NewMetrics(nil))
	ctx := context.Background()
	g, err := s.fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}

	fv.fail(opRenew, 503, "Vault is sealed")
	for n := 1; n <= 8; n++ {
		before := time.Now()
		s.renew(ctx, g)
		after := time.Now()
		g.mu.Lock()
		next := g.nextRenew
		g.mu.Unlock()
		// The backoff counts from when the failure came back, somewhere
		// between before and after: bound it by both, not by a slack that
		// a loaded machine exceeds.
		hi := min(time.Second<<(n-1), 60*time.Second)
		if next.Before(before.Add(hi/2)) || next.After(after.Add(hi)) {
			t.Errorf("after renewal failure %d: retry in %v (the request took %v), want within [%v, %v]",
				n, next.Sub(before), after.Sub(before), hi/2, hi)
		}
		if got := fv.count(opRenew); got != n {
			t.Fatalf("%d renew requests after %d renewals", got, n)
		}
	}
	if g.State() != Active {
		t.Fatalf("transient failures changed the state to %v", g.State())
	}
	fv.recover(opRenew)
	s.renew(ctx, g)
	if i := g.Info(); i.Renewals != 1 || time.Until(i.LeaseEnd) < 59*time.Minute {
		t.Fatalf("after a successful renewal: %+v", i)
	}
	fv.fail(opRenew, 503, "Vault is sealed")
	before := time.Now()
	s.renew(ctx, g)
	if wait := g.Info().LeaseEnd; wait.IsZero() {
		t.Fatal("lease end lost")
	}
	g.mu.Lock()
	wait := g.nextRenew.Sub(before)
	g.mu.Unlock()
	if wait > 1100*time.Millisecond {
		t.Errorf("first failure after a success retries in %v, want at most 1s", wait)
	}

	g.startDrain("manual", time.Now().Add(time.Minute))
	fv.fail(opRevoke, 503, "Vault is sealed")
	var last time.Duration
	for n := 1; n <= 5; n++ {
		before := time.Now()
		at := s.revoke(ctx, g)
		if at.IsZero() {
			t.Fatal("failed revocation reported done")
		}
		last = at.Sub(before)
	}
	if last < 8*time.Second {
		t.Errorf("fifth consecutive failure retries in %v, want backoff of at least 8s", last)
	}
	if n := fv.count(opRevoke); n != 5 {
		t.Errorf("%d revoke requests for 5 attempts", n)
	}
	if g.State() != Draining {
		t.Errorf("state %v after failed revocations, want draining", g.State())
	}
	fv.recover(opRevoke)
	if at := s.revoke(ctx, g); !at.IsZero() || g.State() != Revoked || !fv.wasRevoked(g.LeaseID) {
		t.Errorf("revoke after recovery: retry %v, state %v, revoked %v", at, g.State(), fv.wasRevoked(g.LeaseID))
	}
}

// Lease times are counted from the request, not the answer: with a slow
// Vault dbproxy must never think a lease outlives what Vault granted.
func TestLeaseTimesNotLaterThanVault(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 5*time.Second, 20*time.Second })
	fv.delay(opCreds, 700*time.Millisecond)
	fv.delay(opRenew, 700*time.Millisecond)
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := newSource(c, testBackend, "database", testRole, LeaseOptions{}, log, NewMetrics(nil))
	ctx := context.Background()
	g, err := s.fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := fv.lease(g.LeaseID)
	if i := g.Info(); i.LeaseEnd.After(l.expires) || i.HardEnd.After(l.maxEnd) {
		t.Errorf("after issue: lease end %v / hard end %v, Vault's %v / %v", i.LeaseEnd, i.HardEnd, l.expires, l.maxEnd)
	}
	s.renew(ctx, g)
	l = fv.lease(g.LeaseID)
	if i := g.Info(); i.Renewals != 1 || i.LeaseEnd.After(l.expires) {
		t.Errorf("after renewal: lease end %v, Vault's %v (%d renewals)", i.LeaseEnd, l.expires, i.Renewals)
	}
}

// Current returns at once when the source had a generation and lost it,
// and Acquire refuses a revoked generation.
func TestCurrentAfterLoss(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl = 2 * time.Second })
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{}, log)
	g1 := s.current(t, 1, 3*time.Second)
	fv.fail(opCreds, 503, "Vault is sealed")
	fv.revokeLease(g1.LeaseID)
	waitFor(t, 3*time.Second, "generation 1 to be dropped", func() bool { return g1.State() == Revoked })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	g, err := s.Current(ctx)
	var nc *ErrNoCredential
	if g != nil || !errors.As(err, &nc) || time.Since(start) > 100*time.Millisecond {
		t.Errorf("Current = %v, %v after %v; want *ErrNoCredential at once", g, err, time.Since(start))
	}
	if g1.Acquire() {
		t.Error("Acquire succeeded on a revoked generation")
	}
}
