package creds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// Revoke fetches the next generation first, then revokes the old lease in
// Vault and expires it at once, with the operator's reason, even while a
// connection holds it; the generation is retired (no second Vault call)
// once that connection is gone.
func TestOperatorRevoke(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{}, log)
	g1 := s.current(t, 1, 3*time.Second)
	if !g1.Acquire() {
		t.Fatal("Acquire failed")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s.Revoke(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.NewGeneration != 2 || len(res.Revoked) != 1 || res.Revoked[0].Generation != 1 ||
		res.Revoked[0].Connections != 1 || res.Revoked[0].Result != "ok" {
		t.Fatalf("result %+v", res)
	}
	if !fv.wasRevoked(g1.LeaseID) {
		t.Error("lease of generation 1 not revoked in Vault")
	}
	select {
	case <-g1.Expired():
	default:
		t.Fatal("generation 1 not expired: its sessions would go on")
	}
	if g1.Reason() != RevokeReason {
		t.Errorf("reason %q, want %q", g1.Reason(), RevokeReason)
	}
	if g1.Acquire() {
		t.Error("a revoked generation can still be acquired")
	}
	g2 := s.current(t, 2, time.Second)
	if g2.Username != res.NewUsername || g2.State() != Active {
		t.Errorf("current %+v, result %+v", g2.Info(), res)
	}
	revokes := fv.count(opRevoke)
	g1.Release()
	waitFor(t, 5*time.Second, "generation 1 to be retired", func() bool { return len(s.Generations()) == 1 })
	if n := fv.count(opRevoke); n != revokes {
		t.Errorf("%d more Vault revoke calls after the operator's", n-revokes)
	}
	if n := counterValue(t, s.m.revocations, testBackend, testRole, "ok"); n != 1 {
		t.Errorf("ok revocations = %v, want 1", n)
	}
	if n := counterValue(t, s.m.rotations, testBackend, testRole, "revoke"); n != 1 {
		t.Errorf("revoke rotations = %v, want 1", n)
	}
	// The event log has the story, newest first, the revoke once.
	var got []string
	for _, e := range s.ev.Events() {
		got = append(got, fmt.Sprintf("%s %d %s %s %d", e.Kind, e.Generation, e.Reason, e.Result, e.Connections))
	}
	if want := []string{"revoked 1 revoke ok 1", "issued 2 revoke ok 0", "issued 1 initial ok 0"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

// Without a new credential nothing is revoked: the old one keeps serving.
func TestOperatorRevokeNeedsNewCredential(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{}, log)
	g1 := s.current(t, 1, 3*time.Second)
	fv.fail(opCreds, 503, "Vault is sealed")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.Revoke(ctx)
	if err == nil {
		t.Fatal("Revoke succeeded without a new credential")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waited out the deadline instead of reporting the failed fetch: %v", err)
	}
	if fv.wasRevoked(g1.LeaseID) || g1.State() != Active {
		t.Errorf("generation 1 %v, revoked in Vault %v: want it active and not revoked", g1.State(), fv.wasRevoked(g1.LeaseID))
	}
}

// RevokePrefix fetches the next generation first, then revokes every lease
// under the prefix, dbproxy's old ones (closed with the reason) and those
// others hold, but not the new one and nothing of another role.
func TestOperatorRevokePrefix(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	log, _ := testLogger()
	c := tokenClient(t, fv, log)
	s := startSource(t, c, LeaseOptions{}, log)
	g1 := s.current(t, 1, 3*time.Second)
	if !g1.Acquire() {
		t.Fatal("Acquire failed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	read := func(role string) string {
		sec, err := c.api.Logical().ReadWithContext(ctx, "database/creds/"+role)
		if err != nil {
			t.Fatal(err)
		}
		return sec.LeaseID
	}
	someoneElse, otherRole := read(testRole), read("other")

	ids, err := s.LeasesUnder(ctx, "database/creds/"+testRole)
	if err != nil || !slices.Equal(ids, []string{g1.LeaseID, someoneElse}) {
		t.Fatalf("LeasesUnder = %v, %v; want %s and %s", ids, err, g1.LeaseID, someoneElse)
	}
	if _, err := s.RevokePrefix(ctx, "database/creds/"); err == nil {
		t.Fatal("a prefix wider than the role's path was accepted")
	}
	if fv.count(opCreds) != 3 {
		t.Fatal("a refused prefix fetched a credential")
	}

	res, err := s.RevokePrefix(ctx, "database/creds/"+testRole+"/")
	if err != nil {
		t.Fatal(err)
	}
	if res.NewGeneration != 2 || len(res.Revoked) != 1 || res.Revoked[0].Generation != 1 || res.Revoked[0].Result != "ok" ||
		len(res.Others) != 1 || res.Others[0].LeaseID != someoneElse || res.Others[0].Result != "ok" {
		t.Fatalf("result %+v", res)
	}
	g2 := s.current(t, 2, time.Second)
	if !fv.wasRevoked(g1.LeaseID) || !fv.wasRevoked(someoneElse) || fv.wasRevoked(g2.LeaseID) || fv.wasRevoked(otherRole) {
		t.Errorf("revoked: gen 1 %v, someone else's %v (want both); new %v, other role %v (want neither)",
			fv.wasRevoked(g1.LeaseID), fv.wasRevoked(someoneElse), fv.wasRevoked(g2.LeaseID), fv.wasRevoked(otherRole))
	}
	if !isClosed(g1.Expired()) || g1.Reason() != RevokeReason || g2.State() != Active {
		t.Errorf("generation 1 expired %v reason %q; generation 2 %v", isClosed(g1.Expired()), g1.Reason(), g2.State())
	}
	g1.Release()
}
