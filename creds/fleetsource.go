package creds

import (
	"context"
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
