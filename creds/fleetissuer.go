package creds

import (
	"context"
	"errors"
	"sort"
	"time"

	"go.uber.org/zap"
)

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
		if errors.Is(err, errCAS) {
			// Our own earlier write may have landed after its request
			// timed out: only another holder means the lock is lost.
			nv, err = s.reclaimLock(ctx, term)
		}
		if err != nil {
			if errors.Is(err, errCAS) || errors.Is(err, errFenced) || now.Sub(extended) >= ttl {
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

// reclaimLock reads the lock after a CAS mismatch: if it is still ours
// (a write of ours that timed out had landed), it extends it from that
// version; if another instance holds it, errFenced.
func (s *Source) reclaimLock(ctx context.Context, term uint64) (int, error) {
	f := s.fleet
	var lock lockRecord
	ver, err := f.kv.read(ctx, f.base+"/lock", &lock)
	if err != nil {
		return 0, err
	}
	if lock.Holder != f.o.InstanceID || lock.Term != term {
		return 0, errFenced
	}
	mine := lockRecord{Holder: f.o.InstanceID, Term: term, Expires: s.now().Add(f.o.LockTTL).UTC()}
	return f.kv.write(ctx, f.base+"/lock", mine, ver)
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
	if err == nil || (!fenced && s.publishedAnyway(ctx, g)) {
		return nil
	}
	if g.LeaseID != "" {
		rerr := s.client.api.Sys().RevokeWithContext(ctx, g.LeaseID)
		s.m.request("lease_revoke", rerr)
	}
	return err
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

// publishedAnyway reports whether g is in the record after a write that
// failed on our side (a timeout) but may have reached Vault.
func (s *Source) publishedAnyway(ctx context.Context, g *Generation) bool {
	var r fleetRecord
	if _, err := s.fleet.kv.read(ctx, s.fleet.base+"/generation", &r); err != nil {
		return false
	}
	rg := r.gen(g.N)
	return rg != nil && rg.LeaseID == g.LeaseID
}
