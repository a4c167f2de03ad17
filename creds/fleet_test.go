package creds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Short fleet timings so failover happens inside a unit test.
var testFleet = FleetOptions{Name: "orders", LockTTL: 2 * time.Second, PollInterval: 250 * time.Millisecond}

// patience bounds every wait: generous, because a loaded machine slows
// everything; the waits end as soon as their condition holds.
const patience = 20 * time.Second

// fleetNode is one dbproxy instance's source in a fleet test.
type fleetNode struct {
	*Source
	id     string
	m      *Metrics
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// kill stops the node's loop without leaving the fleet, like kill -9.
func (n *fleetNode) kill() {
	n.cancel()
	n.wg.Wait()
}

// leave stops the node the way a graceful shutdown does.
func (n *fleetNode) leave(t *testing.T) int {
	t.Helper()
	n.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.revokeAll(ctx)
}

// startFleetNode runs an instance named id against addr (fv's URL or a
// cutter in front of it) until the test ends.
func startFleetNode(t *testing.T, fv *fakeVault, addr, id string, lo LeaseOptions, log *zap.Logger) *fleetNode {
	t.Helper()
	c, err := NewClient(ClientOptions{Address: addr, RequestTimeout: 10 * time.Second,
		Auth: AuthOptions{Method: "token", TokenFile: writeFile(t, "token", fv.rootToken)}}, log, NewMetrics(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(nil)
	s := newSource(c, testBackend, "database", testRole, lo, log.With(zap.String("node", id)), m)
	o := testFleet
	o.InstanceID = id
	s.fleet = newFleetMember(o, c, m, testBackend, testRole)
	ctx, cancel := context.WithCancel(context.Background())
	n := &fleetNode{Source: s, id: id, m: m, cancel: cancel}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		s.Run(ctx)
	}()
	t.Cleanup(n.kill)
	return n
}

func startFleet(t *testing.T, fv *fakeVault, size int, lo LeaseOptions) ([]*fleetNode, *observer.ObservedLogs) {
	t.Helper()
	log, logs := fleetLogger(t)
	var nodes []*fleetNode
	for i := range size {
		nodes = append(nodes, startFleetNode(t, fv, fv.URL(), fmt.Sprintf("node%d", i), lo, log))
	}
	return nodes, logs
}

// fleetLogger is testLogger, printed when the test fails.
func fleetLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	log, logs := testLogger()
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("%s %s %s %v", e.Time.Format("15:04:05.000"), e.Level, e.Message, e.ContextMap())
			}
		}
	})
	return log, logs
}

// current waits up to d for node n to serve a generation numbered >= want.
func (n *fleetNode) current(t *testing.T, want uint64, d time.Duration) *Generation {
	t.Helper()
	return testSource{Source: n.Source}.current(t, want, d)
}

func issuers(nodes []*fleetNode) []*fleetNode {
	var out []*fleetNode
	for _, n := range nodes {
		if n.fleet.isIssuer() {
			out = append(out, n)
		}
	}
	return out
}

// waitIssuer waits for exactly one issuer among nodes and returns it.
func waitIssuer(t *testing.T, nodes []*fleetNode, d time.Duration) *fleetNode {
	t.Helper()
	var is []*fleetNode
	waitFor(t, d, "exactly one issuer", func() bool {
		is = issuers(nodes)
		return len(is) == 1
	})
	return is[0]
}

func followers(nodes []*fleetNode, issuer *fleetNode) []*fleetNode {
	var out []*fleetNode
	for _, n := range nodes {
		if n != issuer {
			out = append(out, n)
		}
	}
	return out
}

// TestFleet runs the fleet tests in parallel with each other (three at a
// time) but not with the rest of the package: they run several instances each, and the
// single-instance tests' timings should not pay for that.
func TestFleet(t *testing.T) {
	for _, tt := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"SharesOneGeneration", fleetSharesOneGeneration},
		{"NoHotLoop", fleetNoHotLoop},
		{"RotationWaitsForFollowersToDrain", fleetRotationWaitsForFollowersToDrain},
		{"DrainDeadlineRevokesWithoutStragglers", fleetDrainDeadlineRevokesWithoutStragglers},
		{"Failover", fleetFailover},
		{"PartitionedFollowerServesUntilLeaseEnd", fleetPartitionedFollowerServesUntilLeaseEnd},
		{"PartitionedIssuerStepsDown", fleetPartitionedIssuerStepsDown},
		{"LastMemberRevokes", fleetLastMemberRevokes},
		{"LeaveIgnoresDeadMembers", fleetLeaveIgnoresDeadMembers},
		{"IssuerDiesBeforeRotation", fleetIssuerDiesBeforeRotation},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A few at a time: each runs several instances, and on a
			// slow machine too many at once only make all of them slow.
			fleetSlots <- struct{}{}
			defer func() { <-fleetSlots }()
			tt.run(t)
		})
	}
}

var fleetSlots = make(chan struct{}, 3)

func (f *fakeVault) record(t *testing.T) fleetRecord {
	t.Helper()
	var r fleetRecord
	f.kvRecord(t, "dbproxy/fleet/orders/"+testBackend+"/"+testRole+"/generation", &r)
	return r
}

func fleetSharesOneGeneration(t *testing.T) {
	fv := newFakeVault(t)
	nodes, logs := startFleet(t, fv, 3, LeaseOptions{})
	var gens []*Generation
	for _, n := range nodes {
		gens = append(gens, n.current(t, 1, patience))
	}
	for _, g := range gens[1:] {
		if g.N != gens[0].N || g.Username != gens[0].Username || g.LeaseID != gens[0].LeaseID || g.Password() != gens[0].Password() {
			t.Fatalf("instances serve different credentials: %+v vs %+v", g.Info(), gens[0].Info())
		}
	}
	if n := fv.count(opCreds); n != 1 {
		t.Fatalf("%d credentials fetched for 3 instances; want 1", n)
	}
	waitFor(t, patience, "every member in the record", func() bool { return len(fv.record(t).Members) == 3 })
	waitFor(t, patience, "the issuer and a follower to agree on who issues", func() bool {
		is := issuers(nodes)
		if len(is) != 1 {
			return false
		}
		info := is[0].Generations()[0].Fleet
		fi := followers(nodes, is[0])[0].Generations()[0].Fleet
		return info != nil && fi != nil && info.Name == "orders" && info.Issuer == is[0].id && info.IsIssuer &&
			!fi.IsIssuer && fi.Issuer == is[0].id && fi.Instance != is[0].id && len(fi.Members) == 3
	})
	// The password travels through KV, never through the logs.
	assertNoSecrets(t, logs, fv.secrets())
}

func fleetNoHotLoop(t *testing.T) {
	fv := newFakeVault(t)
	nodes, _ := startFleet(t, fv, 2, LeaseOptions{})
	nodes[1].current(t, 1, patience)
	before := fv.totalHits()
	time.Sleep(2 * time.Second)
	// Two nodes polling two records every 100-200ms, plus heartbeats and
	// lock extensions: well under 100 requests in 2s. A hot loop makes
	// thousands.
	if n := fv.totalHits() - before; n > 150 {
		t.Fatalf("%d Vault requests in 2s from 2 idle instances", n)
	}
}

func fleetRotationWaitsForFollowersToDrain(t *testing.T) {
	fv := newFakeVault(t)
	nodes, _ := startFleet(t, fv, 3, LeaseOptions{DrainTimeout: time.Minute})
	for _, n := range nodes {
		n.current(t, 1, patience)
	}
	is := waitIssuer(t, nodes, patience)
	f := followers(nodes, is)
	g1 := f[0].current(t, 1, patience)
	if !g1.Acquire() { // a connection on the follower holds generation 1
		t.Fatal("cannot acquire generation 1")
	}
	// A follower asks for the rotation; the issuer performs it.
	if err := f[1].TryRotate("manual"); err != nil { // the operator path: POST /v1/backends/NAME/rotate
		t.Fatal(err)
	}
	for _, n := range nodes {
		if g := n.current(t, 2, patience); g.N != 2 {
			t.Fatalf("%s serves generation %d", n.id, g.N)
		}
	}
	if !closedWithin(g1.Draining(), patience) {
		t.Fatal("generation 1 does not drain on the follower that holds it")
	}
	// Everyone but the holder drains; the lease stays until it lets go.
	waitFor(t, patience, "the other instances to record that they drained", func() bool {
		r := fv.record(t)
		rg := r.gen(1)
		return rg != nil && len(rg.DrainedBy) == 2
	})
	time.Sleep(time.Second)
	if fv.wasRevoked(g1.LeaseID) {
		t.Fatal("generation 1 revoked while a follower still uses it")
	}
	g1.Release()
	waitFor(t, patience, "generation 1 revoked after the last instance drained", func() bool { return fv.wasRevoked(g1.LeaseID) })
	waitFor(t, patience, "generation 1 gone from every instance", func() bool {
		for _, n := range nodes {
			if len(n.Generations()) != 1 {
				return false
			}
		}
		r := fv.record(t)
		return r.gen(1) == nil
	})
	if n := fv.count(opCreds); n != 2 {
		t.Fatalf("%d credentials fetched for 2 generations", n)
	}
}

func fleetDrainDeadlineRevokesWithoutStragglers(t *testing.T) {
	fv := newFakeVault(t)
	// Rotation 4s after issue, drain deadline 1s before the 8s hard end.
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 8*time.Second, 8*time.Second })
	nodes, _ := startFleet(t, fv, 2, LeaseOptions{SafetyMargin: time.Second})
	is := waitIssuer(t, nodes, patience)
	f := followers(nodes, is)[0]
	g1 := f.current(t, 1, patience)
	if !g1.Acquire() {
		t.Fatal("cannot acquire")
	}
	defer g1.Release()
	f.current(t, 2, patience)
	if !closedWithin(g1.Expired(), patience) {
		t.Fatal("the follower's connection outlives the shared drain deadline")
	}
	waitFor(t, patience, "revocation at the drain deadline", func() bool { return fv.wasRevoked(g1.LeaseID) })
}

func fleetFailover(t *testing.T) {
	fv := newFakeVault(t)
	// The lease must outlast a takeover (lock_ttl 2s): 6s.
	fv.set(func(f *fakeVault) { f.ttl = 6 * time.Second })
	nodes, logs := startFleet(t, fv, 3, LeaseOptions{})
	for _, n := range nodes {
		n.current(t, 1, patience)
	}
	old := waitIssuer(t, nodes, patience)
	g := old.current(t, 1, patience)
	old.kill()
	rest := followers(nodes, old)
	next := waitIssuer(t, rest, patience)
	renewed := fv.renewalsOf(g.LeaseID)
	// The successor renews the lease the dead issuer fetched, well past
	// its first 6s TTL, and nobody fetches a new credential for it.
	waitFor(t, patience, "renewals by the new issuer past the first lease period", func() bool {
		return fv.renewalsOf(g.LeaseID) >= renewed+2 && time.Since(g.IssuedAt) > 7*time.Second
	})
	for _, n := range rest {
		if c := n.current(t, 1, patience); c.N != 1 || c.State() != Active {
			t.Fatalf("%s serves generation %d (%v) after failover", n.id, c.N, c.State())
		}
	}
	if n := fv.count(opCreds); n != 1 {
		t.Fatalf("%d credentials fetched; failover should adopt, not fetch", n)
	}
	if v := counterValue(t, next.m.fleetIssuerChanges, testBackend, testRole); v != 1 {
		t.Fatalf("issuer changes on the successor = %v", v)
	}
	if countLogs(logs, "now the issuer") != 2 {
		t.Fatalf("want two issuers over the test (the first and its successor)")
	}
	// The successor rotates too.
	next.Rotate("manual")
	for _, n := range rest {
		n.current(t, 2, patience)
	}
}

func fleetPartitionedFollowerServesUntilLeaseEnd(t *testing.T) {
	fv := newFakeVault(t)
	// A short lease, so that the partition outlasts it; long enough that
	// a follower's view (one poll behind) does not fall behind its end.
	fv.set(func(f *fakeVault) { f.ttl = 4 * time.Second })
	log, _ := fleetLogger(t)
	a := startFleetNode(t, fv, fv.URL(), "a", LeaseOptions{}, log)
	a.current(t, 1, patience)
	waitIssuer(t, []*fleetNode{a}, patience)
	cut := newCutter(t, fv.URL())
	b := startFleetNode(t, fv, cut.srv.URL, "b", LeaseOptions{}, log)
	g := b.current(t, 1, patience)

	cut.cut.Store(true)
	// Cut off, b keeps serving what it has...
	if c, err := b.Current(context.Background()); err != nil || c.N != g.N {
		t.Fatalf("partitioned follower: %v, %v", c, err)
	}
	// ...until the lease end it last saw, then says why it cannot.
	if !closedWithin(g.Expired(), patience) {
		t.Fatal("partitioned follower serves past the lease end it knows")
	}
	var nc *ErrNoCredential
	if _, err := b.Current(context.Background()); !errors.As(err, &nc) || nc.Cause == nil {
		t.Fatalf("partitioned follower after lease end: %v", err)
	}
	// The issuer kept renewing. Back on the network, b rejoins on the
	// same generation without a new credential.
	cut.cut.Store(false)
	if c := b.current(t, 1, patience); c.N != g.N || c.Username != g.Username {
		t.Fatalf("rejoined on generation %d (%s), want %d", c.N, c.Username, g.N)
	}
	if n := fv.count(opCreds); n != 1 {
		t.Fatalf("%d credentials fetched", n)
	}
}

func fleetPartitionedIssuerStepsDown(t *testing.T) {
	fv := newFakeVault(t)
	log, _ := fleetLogger(t)
	cut := newCutter(t, fv.URL())
	a := startFleetNode(t, fv, cut.srv.URL, "a", LeaseOptions{}, log)
	a.current(t, 1, patience)
	waitIssuer(t, []*fleetNode{a}, patience)
	b := startFleetNode(t, fv, fv.URL(), "b", LeaseOptions{}, log)
	b.current(t, 1, patience)

	cut.cut.Store(true)
	waitFor(t, patience, "b to take over from the cut-off issuer", func() bool { return b.fleet.isIssuer() })
	waitFor(t, patience, "a to step down", func() bool { return !a.fleet.isIssuer() })
	b.Rotate("manual")
	b.current(t, 2, patience)
	cut.cut.Store(false)
	// Back, a follows b's generation instead of issuing its own.
	a.current(t, 2, patience)
	if a.fleet.isIssuer() || !b.fleet.isIssuer() {
		t.Fatalf("issuers after the partition healed: a=%v b=%v", a.fleet.isIssuer(), b.fleet.isIssuer())
	}
	if n := fv.count(opCreds); n != 2 {
		t.Fatalf("%d credentials fetched for 2 generations", n)
	}
}

func fleetLastMemberRevokes(t *testing.T) {
	fv := newFakeVault(t)
	nodes, _ := startFleet(t, fv, 3, LeaseOptions{})
	for _, n := range nodes {
		n.current(t, 1, patience)
	}
	waitFor(t, patience, "every member in the record", func() bool { return len(fv.record(t).Members) == 3 })
	g := nodes[0].current(t, 1, patience)
	is := waitIssuer(t, nodes, patience)
	rest := followers(nodes, is)
	// The issuer leaves first: a follower takes over at once, and the
	// lease lives on for the others.
	if n := is.leave(t); n != 0 {
		t.Fatalf("the first instance to leave revoked %d leases", n)
	}
	waitIssuer(t, rest, patience)
	if n := rest[0].leave(t); n != 0 || fv.wasRevoked(g.LeaseID) {
		t.Fatalf("the second instance to leave revoked %d leases", n)
	}
	if n := rest[1].leave(t); n != 1 || !fv.wasRevoked(g.LeaseID) {
		t.Fatalf("the last instance revoked %d leases (lease revoked: %v)", n, fv.wasRevoked(g.LeaseID))
	}
	if r := fv.record(t); len(r.Generations) != 0 || len(r.Members) != 0 {
		t.Fatalf("record after the fleet stopped: %+v", r)
	}
}

func fleetLeaveIgnoresDeadMembers(t *testing.T) {
	fv := newFakeVault(t)
	nodes, _ := startFleet(t, fv, 2, LeaseOptions{})
	g := nodes[1].current(t, 1, patience)
	waitFor(t, patience, "both members in the record", func() bool { return len(fv.record(t).Members) == 2 })
	nodes[0].kill() // kill -9: never leaves
	// Past the heartbeat window the dead instance no longer counts.
	time.Sleep(testFleet.liveWindow() + 500*time.Millisecond)
	if n := nodes[1].leave(t); n != 1 || !fv.wasRevoked(g.LeaseID) {
		t.Fatalf("the last live instance revoked %d leases", n)
	}
}

// The issuer dies just before it would rotate: its successor rotates in
// its place, and the other instances never lack a credential.
func fleetIssuerDiesBeforeRotation(t *testing.T) {
	fv := newFakeVault(t)
	// Rotation 6s after issue, drain deadline 1s before the 12s hard end:
	// room for a takeover (lock_ttl 2s) between the kill and the deadline.
	fv.set(func(f *fakeVault) { f.ttl, f.maxTTL = 12*time.Second, 12*time.Second })
	nodes, _ := startFleet(t, fv, 3, LeaseOptions{SafetyMargin: time.Second})
	for _, n := range nodes {
		n.current(t, 1, patience)
	}
	old := waitIssuer(t, nodes, patience)
	g1 := old.current(t, 1, patience)
	rest := followers(nodes, old)

	// Watch a survivor: it must always have an active generation.
	stop := make(chan struct{})
	var failures []error
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if _, err := rest[0].Current(ctx); err != nil {
				failures = append(failures, err)
			}
			cancel()
		}
	})
	time.Sleep(time.Until(g1.IssuedAt.Add(5800 * time.Millisecond)))
	if old.current(t, 1, patience).N != 1 {
		t.Fatal("the issuer rotated before it was killed")
	}
	old.kill()
	for _, n := range rest {
		n.current(t, 2, patience)
	}
	waitFor(t, patience, "the dead issuer's generation revoked by its successor", func() bool { return fv.wasRevoked(g1.LeaseID) })
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d times without a credential, first: %v", len(failures), failures[0])
	}
	if len(issuers(rest)) != 1 {
		t.Fatal("no single successor")
	}
}
