package creds

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestBroker(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	log, _ := testLogger()
	c := newClient(t, fv, AuthOptions{Method: "token", TokenFile: writeFile(t, "token", fv.rootToken)}, log)
	specs := []SourceSpec{
		{Backend: "pg", Mount: "database", Role: "app"},
		{Backend: "pg", Mount: "database", Role: "app"}, // duplicate: one source
		{Backend: "pg", Mount: "database", Role: "ro"},
		{Backend: "mysql", Mount: "database", Role: "app"},
	}
	b := NewBroker(c, specs, log, nil) // nil metrics must not panic
	if b.Source("pg", "app") == nil || b.Source("pg", "ro") == nil || b.Source("mysql", "app") == nil || b.Source("pg", "nope") != nil {
		t.Fatal("Source lookup wrong")
	}
	if err := b.Ready(); err == nil {
		t.Error("Ready before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Run(ctx)
	waitFor(t, 3*time.Second, "every source ready", func() bool { return b.Ready() == nil })
	if n := fv.count(opCreds); n != 3 {
		t.Errorf("%d creds reads, want 3 (one per distinct source)", n)
	}
	if n := fv.count(opLookupSelf); n != 1 {
		t.Errorf("%d logins, want 1", n)
	}
	leases := b.Leases()
	want := []struct {
		backend, role string
		gen           uint64
	}{{"mysql", "app", 1}, {"pg", "app", 1}, {"pg", "ro", 1}}
	if len(leases) != len(want) {
		t.Fatalf("Leases() = %+v", leases)
	}
	for i, w := range want {
		if l := leases[i]; l.Backend != w.backend || l.Role != w.role || l.Generation != w.gen || l.State != "active" || l.LeaseID == "" || l.Username == "" {
			t.Errorf("Leases()[%d] = %+v, want %v", i, l, w)
		}
	}

	if err := b.Rotate("nope", "manual"); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("Rotate of an unknown backend: %v, want ErrUnknownBackend", err)
	}
	if err := b.Rotate("pg", "manual"); err != nil {
		t.Fatalf("Rotate(pg): %v", err)
	}
	waitFor(t, 3*time.Second, "pg rotated and old generations revoked", func() bool {
		l := b.Leases()
		return len(l) == 3 && l[0].Generation == 1 && l[1].Generation == 2 && l[2].Generation == 2
	})
	if n := fv.count(opRevoke); n != 2 {
		t.Errorf("%d revocations, want 2", n)
	}

	cancel()
	done := make(chan struct{})
	go func() { b.Wait(); close(done) }()
	if !closedWithin(done, 2*time.Second) {
		t.Fatal("Wait did not return after cancel")
	}
}

// A failed login at Run is not fatal: sources log in themselves later.
func TestBrokerLoginFailureRecovers(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.fail(opApprole, 503, "Vault is sealed")
	log, logs := testLogger()
	c := newClient(t, fv, AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID)}, log)
	b := NewBroker(c, []SourceSpec{{Backend: "pg", Mount: "database", Role: "app"}}, log, NewMetrics(nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); b.Wait() }()
	b.Run(ctx)
	if countLogs(logs, "vault login failed") != 1 {
		t.Error("login failure not logged")
	}
	s := testSource{Source: b.Source("pg", "app")}
	var nc *ErrNoCredential
	waitFor(t, 2*time.Second, "a fetch failing on the login", func() bool {
		return errors.As(b.Ready(), &nc) && nc.Cause != nil
	})
	if err := nc.Error(); !strings.Contains(err, "vault login") || !strings.Contains(err, "Vault is sealed") {
		t.Errorf("Ready() = %v, want the login failure", err)
	}
	fv.recover(opApprole)
	s.Rotate("manual") // skip the backoff
	g := s.current(t, 1, 3*time.Second)
	if g.N != 1 || fv.count(opCreds) != 1 {
		t.Errorf("generation %d after %d creds reads", g.N, fv.count(opCreds))
	}
}

// A backend with one role at its issuance cap is not rotated at all: no
// role gets a new credential, and the refusal names the capped role.
func TestBrokerRotateRefusedWhole(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	log, _ := testLogger()
	c := newClient(t, fv, AuthOptions{Method: "token", TokenFile: writeFile(t, "token", fv.rootToken)}, log)
	b := NewBroker(c, []SourceSpec{
		{Backend: "pg", Mount: "database", Role: "app", Lease: LeaseOptions{MaxIssuePerMinute: 1}},
		{Backend: "pg", Mount: "database", Role: "ro", Lease: LeaseOptions{MaxIssuePerMinute: 5}},
	}, log, NewMetrics(nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); b.Wait() }()
	b.Run(ctx)
	waitFor(t, 3*time.Second, "both sources ready", func() bool { return b.Ready() == nil })
	err := b.Rotate("pg", "manual")
	var ce *IssueCapError
	if !errors.As(err, &ce) || ce.Role != "app" || ce.RetryAfter() <= 0 || ce.RetryAfter() > time.Minute {
		t.Fatalf("Rotate(pg) = %v, want app's IssueCapError", err)
	}
	ro := b.Source("pg", "ro")
	ro.mu.Lock()
	pending := ro.wantRotate
	ro.mu.Unlock()
	if n := fv.count(opCreds); n != 2 || pending != "" {
		t.Errorf("%d creds reads, ro's pending rotation %q; want 2 and none: ro must not rotate alone", n, pending)
	}
}
