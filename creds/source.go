package creds

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/events"
)

// LeaseOptions tunes one source's rotation. Zero values take defaults.
type LeaseOptions struct {
	// RotateBefore starts rotation this long before the hard end. Zero:
	// the larger of 30s and 20% of the credential's life, but never more
	// than half of it.
	RotateBefore time.Duration
	// DrainTimeout bounds draining when the hard end is unknown (manual
	// rotation of a credential that could live on).
	DrainTimeout time.Duration
	// SafetyMargin: remaining connections close this long before the end.
	SafetyMargin time.Duration
	// RevokeGrace: how long a credential revoked outside dbproxy may serve.
	RevokeGrace time.Duration
	// MaxIssuePerMinute caps credentials fetched per minute.
	MaxIssuePerMinute int
}

func (o LeaseOptions) withDefaults() LeaseOptions {
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	if o.SafetyMargin <= 0 {
		o.SafetyMargin = 5 * time.Second
	}
	if o.RevokeGrace <= 0 {
		o.RevokeGrace = 5 * time.Second
	}
	if o.MaxIssuePerMinute <= 0 {
		o.MaxIssuePerMinute = 6
	}
	return o
}

// ErrNoCredential is returned when a source has no usable generation.
type ErrNoCredential struct {
	Backend string
	Since   time.Time
	Cause   error
}

func (e *ErrNoCredential) Error() string {
	if e.Cause == nil {
		return fmt.Sprintf("no valid credential for backend %s yet", e.Backend)
	}
	return fmt.Sprintf("no valid credential for backend %s: Vault unreachable since %s: %v",
		e.Backend, e.Since.UTC().Format(time.RFC3339), e.Cause)
}

func (e *ErrNoCredential) Unwrap() error { return e.Cause }

// IssueCapError refuses a credential issuance that would exceed the
// (backend, role)'s MaxIssuePerMinute.
type IssueCapError struct {
	Backend, Role string
	Max           int           // the cap per minute
	Next          time.Time     // when the next issuance is allowed
	Wait          time.Duration // from the refusal until Next
}

func (e *IssueCapError) Error() string {
	return fmt.Sprintf("credential issuance cap reached for backend %s, role %s: %d credentials issued in the last minute "+
		"(lease.max_issue_per_minute); the next one may be issued at %s, in %s",
		e.Backend, e.Role, e.Max, e.Next.UTC().Format(time.RFC3339), e.RetryAfter())
}

// RetryAfter is how long to wait before asking again, in whole seconds
// rounded up (at least one), as HTTP's Retry-After wants.
func (e *IssueCapError) RetryAfter() time.Duration {
	secs := (e.Wait + time.Second - 1) / time.Second
	return max(1, secs) * time.Second
}

// Source keeps the credentials of one (backend, Vault role) pair: it
// fetches, renews, rotates, drains and revokes them. All Vault work for the
// source happens on its Run goroutine, so there is exactly one retry loop.
type Source struct {
	backend, mount, role string
	opts                 LeaseOptions
	client               *Client
	log                  *zap.Logger
	m                    *Metrics
	now                  func() time.Time

	pokeCh chan struct{}

	mu           sync.Mutex
	cur          *Generation
	gens         []*Generation
	lastN        uint64
	wantRotate   string // pending rotation reason
	stopped      bool   // RevokeAll ran: no more fetches or renewals
	fetchFails   int
	retryAt      time.Time
	lastErr      error
	failingSince time.Time
	issued       []time.Time   // issuances in the last minute, oldest first
	capWaiting   bool          // a due rotation waits for the issuance cap
	changed      chan struct{} // closed and replaced when cur changes or a fetch fails

	fleet *fleetMember // nil outside fleet mode
	ev    *events.Log  // nil: no event log (events.go)

	// kind says where credentials come from (static.go); kv and poll
	// configure the Static and KV kinds. pending counts reads in a row
	// that found a due static rotation not yet done (only the Run
	// goroutine touches it); lastRead is when the last read of either
	// kind started, refusedAt when a login with it was last refused.
	kind      Kind
	kv        KVSecret
	poll      time.Duration
	pending   int
	lastRead  time.Time
	refusedAt time.Time
}

func newSource(c *Client, backend, mount, role string, o LeaseOptions, log *zap.Logger, m *Metrics) *Source {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Source{
		backend: backend, mount: mount, role: role, opts: o.withDefaults(),
		client: c, log: log.With(zap.String("backend", backend), zap.String("role", role)),
		m: m, now: c.now, pokeCh: make(chan struct{}, 1), changed: make(chan struct{}),
		wantRotate: "initial",
	}
}

// Current returns the generation new connections should use, waiting for
// the first one until ctx ends. The caller must Acquire it.
func (s *Source) Current(ctx context.Context) (*Generation, error) {
	for {
		s.mu.Lock()
		cur, ch := s.cur, s.changed
		if cur != nil && cur.State() == Active {
			s.mu.Unlock()
			return cur, nil
		}
		err := s.unavailableLocked()
		failing := s.lastErr != nil
		s.mu.Unlock()
		if cur != nil || failing {
			// Had a credential and lost it, or Vault is failing: say so
			// now rather than make the client wait out its timeout.
			return nil, err
		}
		select {
		case <-ctx.Done():
			s.mu.Lock()
			err = s.unavailableLocked()
			s.mu.Unlock()
			return nil, err
		case <-ch:
		}
	}
}

func (s *Source) unavailableLocked() error {
	return &ErrNoCredential{Backend: s.backend, Since: s.failingSince, Cause: s.lastErr}
}

// Ready reports whether new connections can get a credential.
func (s *Source) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && s.cur.State() == Active {
		return nil
	}
	return s.unavailableLocked()
}

// Rotate asks for a new generation now, for the given reason. Over the
// issuance cap the rotation waits for the window; an operator's request
// should use TryRotate, which says so instead.
func (s *Source) Rotate(reason string) {
	if s.fleet != nil && !s.fleet.isIssuer() {
		s.fleetRequestRotate(reason)
		s.poke()
		return
	}
	s.mu.Lock()
	s.wantRotate = reason
	s.retryAt = time.Time{}
	s.mu.Unlock()
	s.poke()
}

// TryRotate asks for a new generation now unless the issuance cap is
// reached, in which case it returns an *IssueCapError saying when the next
// credential may be issued. A rotation already pending absorbs the
// request: it would fetch the same credential.
func (s *Source) TryRotate(reason string) error {
	if s.fleet != nil && !s.fleet.isIssuer() {
		// The issuer fetches and applies its own cap.
		s.fleetRequestRotate(reason)
		s.poke()
		return nil
	}
	now := s.now()
	s.mu.Lock()
	if err := s.capErrLocked(now); err != nil {
		s.mu.Unlock()
		return s.refuse(reason, err)
	}
	if s.wantRotate == "" {
		s.wantRotate = reason
	}
	s.retryAt = time.Time{}
	s.mu.Unlock()
	s.poke()
	return nil
}

// overCap returns the refusal of an issuance for reason now, or nil.
func (s *Source) overCap(reason string) error {
	s.mu.Lock()
	err := s.capErrLocked(s.now())
	s.mu.Unlock()
	if err == nil {
		return nil
	}
	return s.refuse(reason, err)
}

// refuse counts and logs a refused rotation request.
func (s *Source) refuse(reason string, err *IssueCapError) error {
	s.m.refused.WithLabelValues(s.backend, s.role, reason).Inc()
	s.log.Warn("rotation refused: credential issuance cap reached", zap.String("reason", reason),
		zap.Int("max_issue_per_minute", s.opts.MaxIssuePerMinute), zap.Time("next_issue_at", err.Next))
	return err
}

// capErrLocked is the error refusing an issuance at now, or nil.
func (s *Source) capErrLocked(now time.Time) *IssueCapError {
	at := s.rateLimitedUntilLocked(now)
	if at.IsZero() || s.kind != Dynamic {
		return nil
	}
	return &IssueCapError{Backend: s.backend, Role: s.role, Max: s.opts.MaxIssuePerMinute, Next: at, Wait: at.Sub(now)}
}

// Generations returns snapshots of every generation not yet revoked.
func (s *Source) Generations() []Info {
	s.mu.Lock()
	out := make([]Info, 0, len(s.gens))
	for _, g := range s.gens {
		out = append(out, g.Info())
	}
	s.mu.Unlock()
	if s.fleet != nil {
		s.fleet.annotate(out, s.now())
	}
	return out
}

func (s *Source) poke() {
	select {
	case s.pokeCh <- struct{}{}:
	default:
	}
}

// reportGone handles a lease that vanished outside dbproxy: the generation
// drains within the revoke grace and, if current, is replaced.
func (s *Source) reportGone(g *Generation, reason string) {
	if s.kind != Dynamic {
		// No lease to lose: a refused login means the password changed.
		s.recheck(g)
		return
	}
	if g.State() == Active {
		s.event(events.Lost, g, reason, "draining", 0)
	}
	g.startDrain(reason, s.now().Add(s.opts.RevokeGrace))
	s.mu.Lock()
	cur := s.cur == g
	follower := s.fleet != nil && !s.fleet.isIssuer()
	if cur && s.wantRotate == "" && !follower {
		s.wantRotate = reason
	}
	s.mu.Unlock()
	if cur && follower {
		s.fleetRequestRotate(reason)
	}
	s.poke()
}

// Run drives the source until ctx ends.
func (s *Source) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.pokeCh:
		}
		next := s.step(ctx)
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timer.Reset(max(next.Sub(s.now()), 10*time.Millisecond))
	}
}

// step does whatever is due and returns when it next has work.
func (s *Source) step(ctx context.Context) time.Time {
	now := s.now()
	next := now.Add(time.Minute)
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	if stopped {
		return next
	}
	soonest := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	issuer := true // outside a fleet every instance is its own issuer
	if s.fleet != nil {
		soonest(s.fleetBefore(ctx))
		issuer = s.fleet.isIssuer()
		defer s.fleetAfter(ctx)
	}

	var waiting time.Time // a due rotation waits until then
	if !issuer {
		// Followers adopt; they neither fetch nor rotate.
	} else if reason := s.rotationDue(now); reason != "" {
		waiting = s.tryFetch(ctx, reason)
		soonest(waiting)
	}
	s.mu.Lock()
	gens := append([]*Generation(nil), s.gens...)
	cur := s.cur
	s.mu.Unlock()
	if cur != nil && issuer {
		// A rotateAt already past while the rotation waits out a backoff
		// or the issuance cap would wake the loop every 10ms.
		if at := s.rotateAt(cur); waiting.IsZero() || at.After(now) {
			soonest(at)
		}
	}
	for _, g := range gens {
		soonest(s.tend(ctx, g))
	}
	return next
}

// rotationDue says why a new generation is needed now, or "".
func (s *Source) rotationDue(now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wantRotate != "" {
		return s.wantRotate
	}
	if s.cur == nil {
		return "initial"
	}
	if s.cur.State() != Active {
		return "expired"
	}
	if at := s.rotateAt(s.cur); !at.IsZero() && !now.Before(at) {
		return s.endReason(s.cur)
	}
	return ""
}

// endReason names what ends a generation: the token's life or max_ttl.
func (s *Source) endReason(g *Generation) string {
	if s.kind != Dynamic {
		return reasonPoll
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.endsWithToken {
		return "token"
	}
	return "max_ttl"
}

// rotateAt is when g should be replaced; zero while its end is unknown.
func (s *Source) rotateAt(g *Generation) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.kind != Dynamic {
		return g.checkAt
	}
	end := g.hardEnd
	if end.IsZero() && !g.renewable {
		end = g.leaseEnd
	}
	if end.IsZero() {
		return time.Time{}
	}
	return end.Add(-RotateBefore(s.opts.RotateBefore, end.Sub(g.IssuedAt)))
}

// RotateBefore is the configured lead time, or the default: the larger of
// 30s and 20% of the credential's life, capped at half of it so that a
// short-lived credential is not replaced the moment it arrives.
func RotateBefore(configured, life time.Duration) time.Duration {
	d := configured
	if d <= 0 {
		d = max(30*time.Second, life/5)
	}
	return min(d, life/2)
}

// tryFetch fetches a new generation unless backing off or rate limited,
// and returns when to try again (zero on success).
func (s *Source) tryFetch(ctx context.Context, reason string) time.Time {
	now := s.now()
	s.mu.Lock()
	if now.Before(s.retryAt) {
		at := s.retryAt
		s.mu.Unlock()
		return at
	}
	if at := s.rateLimitedUntilLocked(now); !at.IsZero() && s.kind == Dynamic {
		// Count and log a wait once, not at every wake-up of the loop.
		first := !s.capWaiting
		s.capWaiting = true
		s.mu.Unlock()
		if first {
			s.m.refused.WithLabelValues(s.backend, s.role, reason).Inc()
			s.log.Warn("credential issuance cap reached; waiting", zap.String("reason", reason),
				zap.Int("max_issue_per_minute", s.opts.MaxIssuePerMinute), zap.Time("until", at))
		}
		return at
	}
	s.capWaiting = false
	if s.kind == Dynamic {
		s.issued = append(s.issued, now)
	}
	s.mu.Unlock()

	g, err := s.read(ctx)
	if err == nil && s.kind != Dynamic {
		var same bool
		if reason, same = s.compare(g, reason); same {
			return time.Time{}
		}
	}
	if err == nil && s.fleet != nil {
		err = s.fleetPublishNew(ctx, g, reason)
	}
	s.mu.Lock()
	if err != nil {
		s.fetchFails++
		if s.lastErr == nil {
			s.failingSince = now
		}
		s.lastErr = err
		s.retryAt = s.now().Add(Backoff(s.fetchFails))
		at, first := s.retryAt, s.fetchFails == 1
		// Wake Current's waiters: they report the failure now.
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
		if first { // one event per outage, not one per retry
			s.event(events.IssueFailed, nil, reason, err.Error(), 0)
		}
		s.log.Warn("fetching credential failed", zap.String("reason", reason), zap.Error(err), zap.Time("retry_at", at))
		return at
	}
	old := s.cur
	s.cur = g
	s.gens = append(s.gens, g)
	s.wantRotate = ""
	s.fetchFails, s.lastErr, s.failingSince, s.retryAt = 0, nil, time.Time{}, time.Time{}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()

	s.m.rotations.WithLabelValues(s.backend, s.role, reason).Inc()
	s.m.generation.WithLabelValues(s.backend, s.role).Set(float64(g.N))
	s.event(events.Issued, g, reason, "ok", 0)
	s.log.Info("credential generation published", zap.Uint64("generation", g.N), zap.String("reason", reason),
		zap.String("db_user", g.Username), zap.Time("lease_end", g.leaseEnd), zap.Time("hard_end", g.hardEnd))
	if old != nil {
		s.endSuperseded(old)
		old.startDrain(reason, s.drainDeadline(old, reason))
		s.poke()
	}
	return time.Time{}
}

func (s *Source) rateLimitedUntilLocked(now time.Time) time.Time {
	keep := s.issued[:0]
	for _, t := range s.issued {
		if now.Sub(t) < time.Minute {
			keep = append(keep, t)
		}
	}
	s.issued = keep
	if len(s.issued) < s.opts.MaxIssuePerMinute {
		return time.Time{}
	}
	return s.issued[0].Add(time.Minute)
}

// drainDeadline is when a superseded generation's last sessions close.
func (s *Source) drainDeadline(g *Generation, reason string) time.Time {
	now := s.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case reason == "external_revoke" || reason == "auth_failed":
		return now.Add(s.opts.RevokeGrace)
	case !g.hardEnd.IsZero():
		return g.hardEnd.Add(-s.opts.SafetyMargin)
	default:
		return now.Add(s.opts.DrainTimeout)
	}
}

// fetch reads database/creds/ROLE and learns what it can of its end.
func (s *Source) fetch(ctx context.Context) (*Generation, error) {
	need := RotateBefore(s.opts.RotateBefore, time.Hour) + s.opts.SafetyMargin
	if err := s.client.EnsureToken(ctx, need); err != nil {
		return nil, fmt.Errorf("vault login: %w", err)
	}
	path := s.mount + "/creds/" + s.role
	// The lease starts when Vault handles the read, before the answer
	// arrives: times counted from the request err on the early side.
	now := s.now()
	sec, err := s.client.api.Logical().ReadWithContext(ctx, path)
	s.m.request("creds_read", err)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("read %s: empty response", path)
	}
	user, _ := sec.Data["username"].(string)
	pass, _ := sec.Data["password"].(string)
	if user == "" || pass == "" {
		return nil, fmt.Errorf("read %s: response has no username or password", path)
	}
	s.mu.Lock()
	s.lastN++
	n := s.lastN
	s.mu.Unlock()
	g := newGeneration(s, n)
	g.Backend, g.Role, g.Username, g.password, g.LeaseID = s.backend, s.role, user, pass, sec.LeaseID
	g.IssuedAt = now
	g.renewable = sec.Renewable
	g.ttl = time.Duration(sec.LeaseDuration) * time.Second
	g.leaseEnd = now.Add(g.ttl)
	if maxTTL := s.roleMaxTTL(ctx); maxTTL > 0 {
		g.hardEnd = now.Add(maxTTL)
	}
	if te := s.client.TokenEnd(); !te.IsZero() && (g.hardEnd.IsZero() || te.Before(g.hardEnd)) {
		g.hardEnd = te
		g.endsWithToken = true
	}
	if !g.hardEnd.IsZero() && g.leaseEnd.After(g.hardEnd) {
		g.leaseEnd = g.hardEnd
	}
	g.nextRenew = renewAt(now, g.leaseEnd)
	s.m.issued.WithLabelValues(s.backend, s.role).Inc()
	return g, nil
}

// roleMaxTTL reads the role's max_ttl, which tells the hard end at once.
// It is best effort: a policy without read on the role just means the hard
// end is learnt from the first capped renewal instead.
func (s *Source) roleMaxTTL(ctx context.Context) time.Duration {
	sec, err := s.client.api.Logical().ReadWithContext(ctx, s.mount+"/roles/"+s.role)
	s.m.request("role_read", err)
	if err != nil || sec == nil {
		return 0
	}
	return secondsField(sec.Data["max_ttl"])
}

func secondsField(v any) time.Duration {
	switch x := v.(type) {
	case json.Number:
		n, err := x.Int64()
		if err == nil {
			return time.Duration(n) * time.Second
		}
	case float64:
		return time.Duration(x) * time.Second
	case int:
		return time.Duration(x) * time.Second
	case string:
		if n, err := strconv.Atoi(x); err == nil {
			return time.Duration(n) * time.Second
		}
		if d, err := time.ParseDuration(x); err == nil {
			return d
		}
	}
	return 0
}

// renewAt is about two thirds of the way to the lease end (a third for
// short leases), with jitter so that many leases do not renew in lockstep.
func renewAt(now, leaseEnd time.Time) time.Time {
	left := leaseEnd.Sub(now)
	if left <= 0 {
		return now
	}
	frac := 0.6 + 0.1*rand.Float64()
	if left < time.Minute {
		// A short lease renews at 30-40%: a Vault outage of a few seconds
		// plus a timed-out request must still fit before it ends.
		frac -= 0.3
	}
	return now.Add(time.Duration(float64(left) * frac))
}

// Backoff is the wait before retry number n (1-based): exponential from 1s
// to 60s, with full jitter over its upper half.
func Backoff(n int) time.Duration {
	d := time.Second << min(max(n-1, 0), 6)
	d = min(d, 60*time.Second)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// tend renews, expires and revokes one generation as due, and returns
// when it next needs attention.
func (s *Source) tend(ctx context.Context, g *Generation) time.Time {
	now := s.now()
	g.mu.Lock()
	state, refs, deadline, leaseEnd, hardEnd, nextRenew, ttl := g.state, g.refs, g.deadline, g.leaseEnd, g.hardEnd, g.nextRenew, g.ttl
	canRenew := g.renewable && (hardEnd.IsZero() || leaseEnd.Before(hardEnd))
	g.mu.Unlock()

	gen := genLabel(g.N)
	if !leaseEnd.IsZero() {
		s.m.leaseLeft.WithLabelValues(s.backend, s.role, gen).Set(max(leaseEnd.Sub(now).Seconds(), 0))
	}
	if !hardEnd.IsZero() {
		s.m.hardLeft.WithLabelValues(s.backend, s.role, gen).Set(max(hardEnd.Sub(now).Seconds(), 0))
	}
	// A KV credential has no end of its own (zero leaseEnd).
	ended := !leaseEnd.IsZero() && !now.Before(leaseEnd)
	pastDeadline := state == Draining && !deadline.IsZero() && !now.Before(deadline)
	if pastDeadline || ended {
		if state < Expired {
			s.log.Info("credential generation expired", zap.Uint64("generation", g.N), zap.Int("connections", refs))
			g.expire()
			state = Expired
		}
	}
	if state != Active && refs == 0 && s.mayRevoke(g, now) && g.retireIfUnused() {
		return s.revoke(ctx, g)
	}
	if state >= Expired {
		// Past its end but still held: nothing to do until the last
		// Release pokes the source. Its past deadline would spin the loop.
		return time.Time{}
	}
	if state < Expired && canRenew {
		if !now.Before(s.fleetRenewBy(nextRenew, leaseEnd, ttl)) {
			s.renew(ctx, g)
		}
		g.mu.Lock()
		nextRenew = s.fleetRenewBy(g.nextRenew, g.leaseEnd, ttl)
		g.mu.Unlock()
		return earliest(nextRenew, deadline, leaseEnd)
	}
	return earliest(deadline, leaseEnd)
}

func earliest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if !t.IsZero() && (out.IsZero() || t.Before(out)) {
			out = t
		}
	}
	return out
}

// renew extends g's lease by its original TTL. Vault granting less than
// asked means the max TTL (or the token's life) caps it: the hard end.
func (s *Source) renew(ctx context.Context, g *Generation) {
	inc := max(int(g.ttl.Seconds()), 1)
	sent := s.now() // the granted TTL counts from about here, not from the answer
	sec, err := s.client.api.Sys().RenewWithContext(ctx, g.LeaseID, inc)
	s.m.request("lease_renew", err)
	now := s.now()
	if err != nil {
		if isLeaseGone(err) {
			s.m.renewals.WithLabelValues(s.backend, s.role, "gone").Inc()
			s.ev.Count(events.Renewed, s.backend, s.role, "gone")
			s.log.Warn("lease revoked outside dbproxy; draining", zap.Uint64("generation", g.N), zap.Error(err))
			s.reportGone(g, "external_revoke")
			g.mu.Lock()
			g.renewable = false
			g.mu.Unlock()
			return
		}
		s.m.renewals.WithLabelValues(s.backend, s.role, "error").Inc()
		s.ev.Count(events.Renewed, s.backend, s.role, "error")
		g.mu.Lock()
		g.fails++
		g.nextRenew = now.Add(min(Backoff(g.fails), max(g.leaseEnd.Sub(now)/3, time.Second)))
		g.mu.Unlock()
		s.log.Warn("lease renewal failed; will retry", zap.Uint64("generation", g.N), zap.Error(err))
		return
	}
	granted := time.Duration(leaseDuration(sec)) * time.Second
	g.mu.Lock()
	defer g.mu.Unlock()
	g.renewals++
	g.fails = 0
	g.leaseEnd = sent.Add(granted)
	result := "ok"
	if granted < time.Duration(inc)*time.Second-time.Second || granted == 0 {
		// Capped: this is as long as the credential will live.
		result = "capped"
		if g.hardEnd.IsZero() || g.leaseEnd.Before(g.hardEnd) {
			g.hardEnd = g.leaseEnd
		}
	}
	if !g.hardEnd.IsZero() && g.leaseEnd.After(g.hardEnd) {
		g.leaseEnd = g.hardEnd
	}
	g.nextRenew = renewAt(now, g.leaseEnd)
	s.m.renewals.WithLabelValues(s.backend, s.role, result).Inc()
	if result == "ok" {
		result = ""
	}
	s.ev.Count(events.Renewed, s.backend, s.role, result)
}

func leaseDuration(sec *vault.Secret) int {
	if sec == nil {
		return 0
	}
	return sec.LeaseDuration
}

// revoke revokes a drained generation's lease so Vault drops the user now
// rather than at its TTL. It returns when to retry, or zero when done.
func (s *Source) revoke(ctx context.Context, g *Generation) time.Time {
	now := s.now()
	g.mu.Lock()
	ended := !now.Before(g.leaseEnd)
	done := g.leaseRevoked
	g.mu.Unlock()
	result := "expired"
	if g.LeaseID == "" {
		result = "no_lease" // static and KV credentials: nothing to revoke
	}
	if done {
		result = "ok" // an operator revoke already did it (revoke.go)
	} else if !ended && g.LeaseID != "" {
		err := s.client.api.Sys().RevokeWithContext(ctx, g.LeaseID)
		s.m.request("lease_revoke", err)
		switch {
		case err == nil:
			result = "ok"
		case isLeaseGone(err):
			result = "gone"
		default:
			s.m.revocations.WithLabelValues(s.backend, s.role, "error").Inc()
			s.ev.Count(events.RevokeFail, s.backend, s.role, "")
			g.mu.Lock()
			g.fails++
			n := g.fails
			g.mu.Unlock()
			s.log.Warn("revoking superseded lease failed; will retry", zap.Uint64("generation", g.N), zap.Error(err))
			return now.Add(Backoff(n))
		}
	}
	g.mu.Lock()
	if g.state < Expired {
		g.mu.Unlock()
		g.expire()
		g.mu.Lock()
	}
	g.state = Revoked
	why := g.reason
	g.mu.Unlock()
	if !done { // an operator revoke recorded its own event
		s.recordRetired(g, why, result)
	}
	s.mu.Lock()
	for i, x := range s.gens {
		if x == g {
			s.gens = append(s.gens[:i], s.gens[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	s.m.revocations.WithLabelValues(s.backend, s.role, result).Inc()
	s.m.leaseLeft.DeleteLabelValues(s.backend, s.role, genLabel(g.N))
	s.m.hardLeft.DeleteLabelValues(s.backend, s.role, genLabel(g.N))
	s.log.Info("credential generation revoked", zap.Uint64("generation", g.N), zap.String("result", result), zap.String("db_user", g.Username))
	return time.Time{}
}

// revokeAll stops the source and revokes every lease it still holds, so a
// stopped dbproxy leaves no database user behind for Vault to expire later.
// Callers close every connection first.
func (s *Source) revokeAll(ctx context.Context) int {
	s.mu.Lock()
	s.stopped = true
	if s.fleet != nil {
		s.mu.Unlock()
		return s.fleetLeave(ctx)
	}
	gens := append([]*Generation(nil), s.gens...)
	s.mu.Unlock()
	n := 0
	for _, g := range gens {
		if g.LeaseID == "" {
			continue
		}
		err := s.client.api.Sys().RevokeWithContext(ctx, g.LeaseID)
		s.m.request("lease_revoke", err)
		if err != nil && !isLeaseGone(err) {
			s.log.Warn("revoking lease at shutdown failed; Vault will expire it", zap.Uint64("generation", g.N), zap.Error(err))
			continue
		}
		g.expire()
		n++
	}
	return n
}

func genLabel(n uint64) string { return strconv.FormatUint(n, 10) }
