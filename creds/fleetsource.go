package creds

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

// fleetMember is one Source's part in a fleet (see fleet.go): its view of
// the shared records and whether it is the issuer. The Run goroutine does
// all KV I/O; mu guards what the admin API and Rotate read or set.
type fleetMember struct {
	o    FleetOptions
	kv   *kvStore
	base string // <kv_path>/<fleet>/<backend>/<role>

	mu        sync.Mutex
	issuer    bool
	term      uint64
	lock      lockRecord
	lockVer   int
	lockSince time.Time // local time lockVer was first seen
	extended  time.Time // local time this issuer last extended the lock
	rec       fleetRecord
	recVer    int
	readAt    time.Time // last successful read of both records
	beats     map[string]beatSeen
	beat      uint64
	beatAt    time.Time
	fails     int
	nextPoll  time.Time
	rotate    *rotateRequest // for the issuer, sent with the next write
	left      bool           // fleetLeave ran: write nothing more
}

type beatSeen struct {
	beat uint64
	at   time.Time // local time the beat last changed
}

var errFenced = errors.New("another instance became the issuer")

// casAttempts bounds one read-modify-write of the generation record.
const casAttempts = 10

func newFleetMember(o FleetOptions, c *Client, m *Metrics, backend, role string) *fleetMember {
	o = o.withDefaults()
	return &fleetMember{
		o: o, kv: &kvStore{c: c, mount: o.KVMount, m: m},
		base:  o.KVPath + "/" + o.Name + "/" + backend + "/" + role,
		rec:   fleetRecord{Members: map[string]member{}},
		beats: map[string]beatSeen{},
	}
}

func (f *fleetMember) isIssuer() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.issuer
}

// liveLocked lists the instances whose heartbeat changed recently.
func (f *fleetMember) liveLocked(now time.Time) map[string]bool {
	live := map[string]bool{f.o.InstanceID: true}
	for id := range f.rec.Members {
		if b, ok := f.beats[id]; ok && now.Sub(b.at) <= f.o.liveWindow() {
			live[id] = true
		}
	}
	return live
}

// observeLocked notes which heartbeats changed since the last read.
func (f *fleetMember) observeLocked(now time.Time) {
	for id, m := range f.rec.Members {
		if b, ok := f.beats[id]; !ok || b.beat != m.Beat {
			f.beats[id] = beatSeen{m.Beat, now}
		}
	}
}

func jittered(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// fleetBefore reads the records when due, keeps or takes the lock, and
// (as a follower) adopts what the issuer published. It returns when it
// next wants to run.
func (s *Source) fleetBefore(ctx context.Context) time.Time {
	f := s.fleet
	now := s.now()
	f.mu.Lock()
	next := f.nextPoll
	f.mu.Unlock()
	if now.Before(next) {
		return next
	}
	var lock lockRecord
	var rec fleetRecord
	lockVer, err := f.kv.read(ctx, f.base+"/lock", &lock)
	recVer := 0
	if err == nil {
		recVer, err = f.kv.read(ctx, f.base+"/generation", &rec)
	}
	if err != nil {
		s.fleetReadFailed(now, err)
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.nextPoll
	}
	if rec.Members == nil {
		rec.Members = map[string]member{}
	}
	f.mu.Lock()
	f.fails = 0
	if lockVer != f.lockVer || f.lockSince.IsZero() {
		f.lockSince = now
	}
	// The lock keeper may have written a newer version meanwhile. (Only
	// then: versions restart at 1 if an operator deletes the records.)
	if lockVer >= f.lockVer || !f.issuer {
		f.lock, f.lockVer = lock, lockVer
	}
	f.rec, f.recVer = rec, recVer
	f.readAt = now
	f.observeLocked(now)
	f.nextPoll = now.Add(jittered(f.o.PollInterval))
	rec = f.rec
	f.mu.Unlock()

	s.fleetLock(ctx, now)
	if !s.fleet.isIssuer() {
		s.mu.Lock()
		if s.lastErr != nil {
			s.lastErr, s.failingSince = nil, time.Time{}
		}
		s.mu.Unlock()
		s.adopt(rec, now)
	} else if rec.Rotate != nil {
		s.mu.Lock()
		if s.wantRotate == "" && (s.cur == nil || rec.Rotate.At.After(s.cur.IssuedAt)) {
			s.wantRotate = rec.Rotate.Reason
		}
		s.mu.Unlock()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nextPoll
}

// fleetReadFailed backs off. A follower keeps its generations until
// their lease ends; an issuer that cannot extend its lock steps down.
func (s *Source) fleetReadFailed(now time.Time, err error) {
	f := s.fleet
	f.mu.Lock()
	f.fails++
	f.nextPoll = now.Add(min(Backoff(f.fails), 10*f.o.PollInterval))
	fails, issuer, stale := f.fails, f.issuer, now.Sub(f.extended) >= f.o.LockTTL
	f.mu.Unlock()
	if fails == 1 {
		s.log.Warn("fleet: reading the shared records failed; serving the current generation until its lease ends", zap.Error(err))
	}
	if issuer && stale {
		s.stepDown("could not extend the fleet lock")
	}
	if !issuer {
		s.mu.Lock()
		if s.lastErr == nil {
			s.failingSince = now
		}
		s.lastErr = err
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

// fleetLock notices a lost lock (issuer) or takes the lock over when its
// holder has not extended it for LockTTL on this instance's clock.
func (s *Source) fleetLock(ctx context.Context, now time.Time) {
	f := s.fleet
	f.mu.Lock()
	lock, ver, since, issuer, term := f.lock, f.lockVer, f.lockSince, f.issuer, f.term
	recTerm := f.rec.Term
	id, ttl := f.o.InstanceID, f.o.LockTTL
	f.mu.Unlock()
	if issuer {
		if lock.Holder != id || lock.Term != term || recTerm > term {
			s.stepDown("another instance holds the fleet lock")
		}
		return
	}
	if ver != 0 && lock.Holder != "" && now.Sub(since) < ttl {
		return
	}
	term = max(lock.Term, recTerm) + 1
	mine := lockRecord{Holder: id, Term: term, Expires: now.Add(ttl).UTC()}
	nv, err := f.kv.write(ctx, f.base+"/lock", mine, ver)
	if err != nil {
		if !errors.Is(err, errCAS) {
			s.log.Warn("fleet: taking the issuer lock failed", zap.Error(err))
		}
		return
	}
	f.mu.Lock()
	f.lock, f.lockVer, f.lockSince = mine, nv, now
	f.mu.Unlock()
	s.becomeIssuer(ctx, term, lock.Holder, now)
}

// keepLock extends the issuer's lock every LockTTL/3 on its own goroutine,
// so that a slow Vault request in the Run loop does not cost the lock.
func (s *Source) keepLock(ctx context.Context, term uint64) {
	f := s.fleet
	id, ttl := f.o.InstanceID, f.o.LockTTL
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		if !f.issuer || f.term != term {
			f.mu.Unlock()
			return
		}
		ver, extended := f.lockVer, f.extended
		f.mu.Unlock()
		now := s.now()
		mine := lockRecord{Holder: id, Term: term, Expires: now.Add(ttl).UTC()}
		nv, err := f.kv.write(ctx, f.base+"/lock", mine, ver)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if errors.Is(err, errCAS) || now.Sub(extended) >= ttl {
				s.stepDown("could not extend the fleet lock: " + err.Error())
				s.poke()
				return
			}
			continue
		}
		f.mu.Lock()
		if f.term == term && nv > f.lockVer {
			f.lock, f.lockVer, f.lockSince, f.extended = mine, nv, now, now
		}
		f.mu.Unlock()
	}
}

// becomeIssuer fences the previous issuer with the new term, adopts the
// published generations and takes over their renewals and rotation.
func (s *Source) becomeIssuer(ctx context.Context, term uint64, previous string, now time.Time) {
	f := s.fleet
	f.mu.Lock()
	f.term, f.extended = term, now
	f.mu.Unlock()
	err := s.fleetUpdate(ctx, func(r *fleetRecord) bool {
		if r.Term > term {
			return false
		}
		r.Term, r.Issuer = term, f.o.InstanceID
		return true
	})
	f.mu.Lock()
	rec := f.rec
	f.mu.Unlock()
	if err == nil && rec.Term != term {
		err = errFenced
	}
	if err != nil {
		f.mu.Lock()
		f.term = 0
		f.mu.Unlock()
		s.log.Warn("fleet: claiming the generation record failed", zap.Error(err))
		return
	}
	s.adopt(rec, now)
	s.mu.Lock()
	for _, g := range s.gens {
		if rg := rec.gen(g.N); rg != nil {
			g.mu.Lock()
			g.renewable, g.ttl, g.endsWithToken = rg.Renewable, time.Duration(rg.TTL)*time.Second, rg.ByToken
			g.nextRenew = now // a dead issuer may have left little of the lease
			g.mu.Unlock()
		}
		s.lastN = max(s.lastN, g.N)
	}
	for _, rg := range rec.Generations {
		s.lastN = max(s.lastN, rg.N)
	}
	if s.cur != nil && s.wantRotate == "initial" {
		s.wantRotate = "" // set at start; the fleet's generation serves
	}
	s.lastErr, s.failingSince = nil, time.Time{}
	s.mu.Unlock()
	f.mu.Lock()
	f.issuer = true
	f.mu.Unlock()
	go s.keepLock(ctx, term)
	s.m.fleetIssuerChanges.WithLabelValues(s.backend, s.role).Inc()
	s.log.Info("fleet: this instance is now the issuer", zap.String("fleet", f.o.Name),
		zap.String("instance", f.o.InstanceID), zap.Uint64("term", term), zap.String("previous", previous))
}

// stepDown stops renewing and rotating; the generations stay in use.
func (s *Source) stepDown(why string) {
	f := s.fleet
	f.mu.Lock()
	was := f.issuer
	f.issuer, f.term = false, 0
	f.mu.Unlock()
	if !was {
		return
	}
	s.mu.Lock()
	for _, g := range s.gens {
		g.mu.Lock()
		g.renewable = false
		g.mu.Unlock()
	}
	s.mu.Unlock()
	s.m.fleetIssuerChanges.WithLabelValues(s.backend, s.role).Inc()
	s.log.Warn("fleet: this instance is no longer the issuer", zap.String("reason", why))
}

// adopt makes the published generations this instance's own: the newest
// active one becomes Current, superseded ones drain by their published
// deadline, and ones no longer published (revoked) end.
func (s *Source) adopt(rec fleetRecord, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	local := map[uint64]*Generation{}
	for _, g := range s.gens {
		local[g.N] = g
	}
	var newest *Generation
	published := map[uint64]bool{}
	for _, rg := range rec.Generations {
		published[rg.N] = true
		g := local[rg.N]
		if g != nil && g.State() >= Expired && rg.State == "active" && now.Before(rg.LeaseEnd) {
			// Expired here while cut off from Vault, renewed meanwhile.
			s.dropLocked(g)
			g = nil
		}
		if g == nil {
			if rg.State != "active" && rg.State != "draining" {
				continue
			}
			g = newGeneration(s, rg.N)
			g.Backend, g.Role, g.Username, g.password, g.LeaseID = s.backend, s.role, rg.Username, rg.Password, rg.LeaseID
			g.IssuedAt = rg.IssuedAt
			s.gens = append(s.gens, g)
			local[rg.N] = g
		}
		g.mu.Lock()
		g.leaseEnd, g.hardEnd, g.endsWithToken = rg.LeaseEnd, rg.HardEnd, rg.ByToken
		g.ttl = time.Duration(rg.TTL) * time.Second
		g.mu.Unlock()
		switch rg.State {
		case "active":
			if g.State() == Active && (newest == nil || g.N > newest.N) {
				newest = g
			}
		default:
			g.startDrain(rg.Reason, rg.Deadline)
		}
	}
	for _, g := range append([]*Generation(nil), s.gens...) {
		if !published[g.N] {
			s.dropLocked(g)
		}
	}
	if newest != nil && newest != s.cur {
		s.cur = newest
		close(s.changed)
		s.changed = make(chan struct{})
		s.m.generation.WithLabelValues(s.backend, s.role).Set(float64(newest.N))
		s.log.Info("fleet: adopted credential generation", zap.Uint64("generation", newest.N),
			zap.String("db_user", newest.Username), zap.String("issuer", rec.Issuer))
	}
	if s.cur != nil && !published[s.cur.N] {
		s.cur = nil
	}
}

// dropLocked ends a local generation the fleet no longer publishes.
func (s *Source) dropLocked(g *Generation) {
	g.expire()
	g.mu.Lock()
	g.state = Revoked
	g.mu.Unlock()
	for i, x := range s.gens {
		if x == g {
			s.gens = append(s.gens[:i], s.gens[i+1:]...)
			break
		}
	}
	n := genLabel(g.N)
	s.m.leaseLeft.DeleteLabelValues(s.backend, s.role, n)
	s.m.hardLeft.DeleteLabelValues(s.backend, s.role, n)
}

// fleetAfter writes what this instance owes the record: its heartbeat,
// the generations it has drained, a rotation request, and as issuer the
// current state of every generation. At most one write per step.
func (s *Source) fleetAfter(ctx context.Context) {
	f := s.fleet
	now := s.now()
	f.mu.Lock()
	if f.fails > 0 || f.readAt.IsZero() || f.left || ctx.Err() != nil {
		f.mu.Unlock()
		return
	}
	issuer, term, id := f.issuer, f.term, f.o.InstanceID
	beatDue := now.Sub(f.beatAt) >= f.o.heartbeat()
	req := f.rotate
	live := f.liveLocked(now)
	f.lag(s, now)
	f.mu.Unlock()

	fenced := false
	err := s.fleetUpdate(ctx, func(r *fleetRecord) bool {
		changed := false
		f.mu.Lock()
		left := f.left
		if beatDue && !left {
			f.beat++
			r.Members[id] = member{Seen: now.UTC(), Beat: f.beat}
			changed = true
		}
		f.mu.Unlock()
		if left {
			return false // a step that raced with shutdown must not re-add us
		}
		if issuer {
			if r.Term != term {
				fenced = true
				return false
			}
			changed = s.publishInto(r, live, now) || changed
		} else if req != nil && (r.Rotate == nil || r.Rotate.At.Before(req.At)) {
			r.Rotate = req
			changed = true
		}
		return s.markDrained(r, id, now) || changed
	})
	switch {
	case fenced:
		s.stepDown(errFenced.Error())
	case err != nil:
		s.log.Warn("fleet: writing the generation record failed; will retry", zap.Error(err))
	default:
		f.mu.Lock()
		if beatDue {
			f.beatAt = now
		}
		if f.rotate == req {
			f.rotate = nil
		}
		f.mu.Unlock()
	}
}

func (f *fleetMember) lag(s *Source, now time.Time) {
	s.m.fleetLag.WithLabelValues(s.backend, s.role).Set(now.Sub(f.readAt).Seconds())
}

// markDrained records each superseded generation this instance no longer
// uses. retireIfUnused makes "no longer" final: no connection can start
// on it after the mark.
func (s *Source) markDrained(r *fleetRecord, id string, now time.Time) bool {
	changed := false
	for i := range r.Generations {
		rg := &r.Generations[i]
		if rg.State == "active" {
			continue
		}
		if _, done := rg.DrainedBy[id]; done {
			continue
		}
		if g := s.local(rg.N); g != nil && !g.retireIfUnused() {
			continue
		}
		if rg.DrainedBy == nil {
			rg.DrainedBy = map[string]time.Time{}
		}
		rg.DrainedBy[id] = now.UTC()
		changed = true
	}
	return changed
}

func (s *Source) local(n uint64) *Generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.gens {
		if g.N == n {
			return g
		}
	}
	return nil
}

// publishInto writes the issuer's generations into r, keeping what
// followers wrote (drained_by), dropping members long gone and a rotation
// request the current generation already answers.
func (s *Source) publishInto(r *fleetRecord, live map[string]bool, now time.Time) bool {
	s.mu.Lock()
	gens := append([]*Generation(nil), s.gens...)
	cur := s.cur
	s.mu.Unlock()
	want := make([]genRecord, 0, len(gens))
	for _, g := range gens {
		rg := g.record()
		if old := r.gen(g.N); old != nil {
			rg.DrainedBy = old.DrainedBy
		}
		want = append(want, rg)
	}
	sort.Slice(want, func(i, j int) bool { return want[i].N < want[j].N })
	changed := false
	if a, b := mustJSON(want), mustJSON(r.Generations); a != b {
		r.Generations = want
		changed = true
	}
	if r.Rotate != nil && cur != nil && !r.Rotate.At.After(cur.IssuedAt) {
		r.Rotate = nil
		changed = true
	}
	for id, m := range r.Members {
		if !live[id] && now.Sub(m.Seen) > 10*s.fleet.o.liveWindow() {
			delete(r.Members, id)
			changed = true
		}
	}
	return changed
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// record is g as published.
func (g *Generation) record() genRecord {
	g.mu.Lock()
	defer g.mu.Unlock()
	return genRecord{
		N: g.N, Username: g.Username, Password: g.password, LeaseID: g.LeaseID,
		Renewable: g.renewable, TTL: int64(g.ttl / time.Second), IssuedAt: g.IssuedAt.UTC(),
		LeaseEnd: g.leaseEnd.UTC(), HardEnd: g.hardEnd.UTC(), ByToken: g.endsWithToken,
		State: g.state.String(), Reason: g.reason, Deadline: g.deadline.UTC(),
	}
}

// fleetPublishNew publishes a just-fetched generation, and the current
// one as draining, before anything uses it; if that fails the new lease is
// revoked at once so that no database user is left unpublished.
func (s *Source) fleetPublishNew(ctx context.Context, g *Generation, reason string) error {
	f := s.fleet
	f.mu.Lock()
	term := f.term
	f.mu.Unlock()
	s.mu.Lock()
	old := s.cur
	s.mu.Unlock()
	var deadline time.Time
	if old != nil {
		deadline = s.drainDeadline(old, reason)
	}
	fenced := false
	err := s.fleetUpdate(ctx, func(r *fleetRecord) bool {
		if r.Term != term {
			fenced = true
			return false
		}
		s.publishInto(r, map[string]bool{}, s.now())
		if old != nil {
			if rg := r.gen(old.N); rg != nil && rg.State == "active" {
				rg.State, rg.Reason, rg.Deadline = "draining", reason, deadline.UTC()
			}
		}
		r.Generations = append(r.Generations, g.record())
		r.Rotate = nil
		return true
	})
	if fenced {
		err = errFenced
		s.stepDown(err.Error())
	}
	if err == nil {
		return nil
	}
	if g.LeaseID != "" {
		rerr := s.client.api.Sys().RevokeWithContext(ctx, g.LeaseID)
		s.m.request("lease_revoke", rerr)
	}
	return err
}

// fleetUpdate applies change to the latest record and writes it with CAS,
// reading again and re-applying when another instance wrote first. A
// change that returns false writes nothing.
func (s *Source) fleetUpdate(ctx context.Context, change func(*fleetRecord) bool) error {
	f := s.fleet
	path := f.base + "/generation"
	f.mu.Lock()
	rec, ver := f.rec.clone(), f.recVer
	f.mu.Unlock()
	for attempt := 1; ; attempt++ {
		if !change(&rec) {
			return nil
		}
		nv, err := f.kv.write(ctx, path, rec, ver)
		if err == nil {
			f.mu.Lock()
			f.rec, f.recVer = rec, nv
			f.mu.Unlock()
			return nil
		}
		if !errors.Is(err, errCAS) || attempt == casAttempts {
			return err
		}
		// Another member wrote in between (a heartbeat, most likely):
		// read again after a short random pause so writers spread out.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(rand.Int64N(int64(20*time.Millisecond))) + time.Millisecond):
		}
		var fresh fleetRecord
		if ver, err = f.kv.read(ctx, path, &fresh); err != nil {
			return err
		}
		if fresh.Members == nil {
			fresh.Members = map[string]member{}
		}
		f.mu.Lock()
		f.rec, f.recVer = fresh, ver
		f.observeLocked(s.now())
		f.mu.Unlock()
		rec = fresh.clone()
	}
}

// mayRevoke: outside a fleet, always. In a fleet only the issuer revokes,
// once every live instance has drained g, or at g's deadline or end.
func (s *Source) mayRevoke(g *Generation, now time.Time) bool {
	f := s.fleet
	if f == nil {
		return true
	}
	g.mu.Lock()
	deadline, leaseEnd := g.deadline, g.leaseEnd
	g.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.issuer {
		return false
	}
	if (!deadline.IsZero() && !now.Before(deadline)) || !now.Before(leaseEnd) {
		return true
	}
	rg := f.rec.gen(g.N)
	if rg == nil {
		return true
	}
	for id := range f.liveLocked(now) {
		if _, ok := rg.DrainedBy[id]; !ok && id != f.o.InstanceID {
			return false
		}
	}
	return true
}

// fleetRenewBy is when an issuer renews g at the latest: early enough
// that a successor can take over before the lease runs out.
func (s *Source) fleetRenewBy(nextRenew, leaseEnd time.Time, ttl time.Duration) time.Time {
	if s.fleet == nil {
		return nextRenew
	}
	// Capped so that short leases are renewed every third of their TTL
	// at most, not continuously.
	lead := min(s.fleet.o.renewLead(), ttl*2/3)
	if t := leaseEnd.Add(-lead); t.Before(nextRenew) {
		return t
	}
	return nextRenew
}

// fleetRequestRotate passes a rotation wish to the issuer.
func (s *Source) fleetRequestRotate(reason string) {
	f := s.fleet
	f.mu.Lock()
	f.rotate = &rotateRequest{Reason: reason, By: f.o.InstanceID, At: s.now().UTC()}
	f.nextPoll = time.Time{}
	f.mu.Unlock()
}

// fleetLeave takes this instance out of the fleet at shutdown. The
// issuer frees its lock for a successor; the last live member revokes
// every lease, so the fleet leaves no database user behind.
func (s *Source) fleetLeave(ctx context.Context) int {
	f := s.fleet
	now := s.now()
	f.mu.Lock()
	id, issuer, term, lockVer := f.o.InstanceID, f.issuer, f.term, f.lockVer
	f.issuer, f.left = false, true
	f.mu.Unlock()
	var last []genRecord
	err := s.fleetUpdate(ctx, func(r *fleetRecord) bool {
		delete(r.Members, id)
		f.mu.Lock()
		live := f.liveLocked(now)
		f.mu.Unlock()
		last = nil
		for m := range r.Members {
			if live[m] {
				return true
			}
		}
		last, r.Generations, r.Issuer = r.Generations, []genRecord{}, ""
		return true
	})
	if err != nil {
		s.log.Warn("fleet: leaving failed; the others will stop waiting for this instance after the heartbeat window", zap.Error(err))
	}
	if issuer {
		_, lerr := f.kv.write(ctx, f.base+"/lock", lockRecord{Term: term, Expires: now.UTC()}, lockVer)
		if lerr != nil {
			s.log.Warn("fleet: freeing the issuer lock failed; a successor takes over after lock_ttl", zap.Error(lerr))
		}
	}
	n := 0
	for _, rg := range last {
		if rg.LeaseID == "" {
			continue
		}
		rerr := s.client.api.Sys().RevokeWithContext(ctx, rg.LeaseID)
		s.m.request("lease_revoke", rerr)
		if rerr != nil && !isLeaseGone(rerr) {
			s.log.Warn("revoking lease at shutdown failed; Vault will expire it", zap.Uint64("generation", rg.N), zap.Error(rerr))
			continue
		}
		n++
	}
	s.mu.Lock()
	gens := append([]*Generation(nil), s.gens...)
	s.mu.Unlock()
	for _, g := range gens {
		g.expire()
	}
	s.log.Info("fleet: left", zap.Bool("last_member", last != nil), zap.Int("revoked", n))
	return n
}

// annotate adds the fleet's view to each generation's Info.
func (f *fleetMember) annotate(infos []Info, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	live := f.liveLocked(now)
	members := make([]FleetMember, 0, len(f.rec.Members))
	for id, m := range f.rec.Members {
		members = append(members, FleetMember{ID: id, Seen: m.Seen, Live: live[id]})
	}
	sort.Slice(members, func(i, j int) bool { return members[i].ID < members[j].ID })
	for i := range infos {
		fi := &FleetInfo{
			Name: f.o.Name, Instance: f.o.InstanceID, Issuer: f.lock.Holder, IsIssuer: f.issuer,
			Term: max(f.lock.Term, f.rec.Term), Members: members,
		}
		if !f.readAt.IsZero() {
			fi.LagSeconds = now.Sub(f.readAt).Seconds()
		}
		if rg := f.rec.gen(infos[i].Generation); rg != nil && len(rg.DrainedBy) > 0 {
			fi.DrainedBy = rg.DrainedBy
		}
		infos[i].Fleet = fi
	}
}
