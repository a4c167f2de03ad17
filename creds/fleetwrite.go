package creds

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

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

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
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
