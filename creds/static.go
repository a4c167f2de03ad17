package creds

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// Kind says where a source's credentials come from. Every kind publishes
// generations through the same Source, so pools drain an old password the
// way they drain an old lease.
type Kind int

const (
	// Dynamic reads database/creds/ROLE: a new user per lease, renewed,
	// rotated before its max TTL and revoked once drained (the default).
	Dynamic Kind = iota
	// Static reads database/static-creds/ROLE: one database user whose
	// password Vault rotates on its own schedule. There is no lease: the
	// source reads again just after each rotation Vault will do.
	Static
	// KV reads a KV version 2 secret holding a username and password, for
	// databases Vault's database engine does not manage. A new version of
	// the secret is a new generation.
	KV
)

func (k Kind) String() string {
	switch k {
	case Static:
		return "static"
	case KV:
		return "kv"
	default:
		return "dynamic"
	}
}

// KVSecret locates a KV version 2 secret used as a credential source.
type KVSecret struct {
	Mount string // the KV v2 mount, e.g. "secret"
	Path  string // the secret's path under the mount
	// UsernameField and PasswordField name the secret's keys. Default
	// "username" and "password".
	UsernameField, PasswordField string
}

// The rotation reasons of static and KV sources. reasonPoll is a read that
// may find nothing new; the others name what a new generation came from.
const (
	reasonPoll          = "poll"
	reasonVaultRotation = "vault_rotation"
	reasonKVVersion     = "kv_version"
)

// staticReadDelay is how long after Vault's scheduled rotation the
// password is read again: Vault rotates from a queue it checks every few
// seconds, so a read right at the rotation time usually finds the old one.
const staticReadDelay = time.Second

// minReread spaces reads asked for by refused logins: every new upstream
// connection that fails would otherwise be one more Vault read.
const minReread = time.Second

// ErrNoLease is returned by Revoke for static and KV sources, which hold
// no lease to revoke.
var ErrNoLease = errors.New("this credential has no Vault lease to revoke (a static role or KV secret); rotate the password in Vault instead (database/rotate-role/ROLE, or a new KV version), and dbproxy moves to it")

func (g *Generation) kindName() string {
	if g.src == nil || g.src.kind == Dynamic {
		return ""
	}
	return g.src.kind.String()
}

// read fetches a credential of the source's kind. Static and KV
// generations come back unnumbered: compare numbers them if they are new.
func (s *Source) read(ctx context.Context) (*Generation, error) {
	switch s.kind {
	case Static:
		return s.fetchStatic(ctx)
	case KV:
		return s.fetchKV(ctx)
	default:
		return s.fetch(ctx)
	}
}

// fetchStatic reads database/static-creds/ROLE. The generation lives until
// Vault's next rotation plus the drain timeout: after the rotation its
// password no longer logs in, and sessions using it get that long to
// finish their transactions on it.
func (s *Source) fetchStatic(ctx context.Context) (*Generation, error) {
	if err := s.client.EnsureToken(ctx, time.Second); err != nil {
		return nil, fmt.Errorf("vault login: %w", err)
	}
	path := s.mount + "/static-creds/" + s.role
	now := s.now()
	s.mu.Lock()
	s.lastRead = now
	s.mu.Unlock()
	sec, err := s.client.api.Logical().ReadWithContext(ctx, path)
	s.m.request("static_creds_read", err)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("read %s: no such static role", path)
	}
	user, _ := sec.Data["username"].(string)
	pass, _ := sec.Data["password"].(string)
	if user == "" || pass == "" {
		return nil, fmt.Errorf("read %s: response has no username or password", path)
	}
	period := floatSeconds(sec.Data["rotation_period"])
	last, _ := sec.Data["last_vault_rotation"].(string)
	lastAt, _ := time.Parse(time.RFC3339Nano, last)
	next := now.Add(floatSeconds(sec.Data["ttl"]))
	if _, ok := sec.Data["ttl"]; !ok && period > 0 && !lastAt.IsZero() {
		next = lastAt.Add(period)
	}

	g := newGeneration(s, 0)
	g.Backend, g.Role, g.Username, g.password = s.backend, s.role, user, pass
	g.IssuedAt, g.ttl, g.version, g.rotation = now, period, last, next
	if !lastAt.IsZero() && lastAt.Before(now) {
		g.IssuedAt = lastAt
	}
	g.hardEnd = next.Add(s.opts.DrainTimeout)
	g.leaseEnd = g.hardEnd
	g.checkAt = s.staticCheckAt(now, next)
	return g, nil
}

// staticCheckAt is when to read a static password next: just after the
// rotation Vault will do at next, or sooner to notice rotations outside
// the schedule (poll). A rotation already due but not yet done is read
// for again with backoff, not in a tight loop, but at least twice within
// the drain timeout: each read that finds the old password still current
// moves the generation's end, which must not pass between two reads.
func (s *Source) staticCheckAt(now, next time.Time) time.Time {
	at := next.Add(staticReadDelay)
	if next.After(now) {
		s.pending = 0
	} else {
		s.pending++
		at = now.Add(min(Backoff(s.pending), 30*time.Second, s.opts.DrainTimeout/2))
	}
	if s.poll > 0 && now.Add(s.poll).Before(at) {
		at = now.Add(s.poll)
	}
	return at
}

// fetchKV reads the newest version of a KV v2 secret. Its credential has
// no end of its own; a new version supersedes it.
func (s *Source) fetchKV(ctx context.Context) (*Generation, error) {
	if err := s.client.EnsureToken(ctx, time.Second); err != nil {
		return nil, fmt.Errorf("vault login: %w", err)
	}
	path := s.kv.Mount + "/data/" + s.kv.Path
	now := s.now()
	s.mu.Lock()
	s.lastRead = now
	s.mu.Unlock()
	sec, err := s.client.api.Logical().ReadWithContext(ctx, path)
	s.m.request("kv_read", err)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("read %s: no such secret", path)
	}
	ver := 0
	if md, ok := sec.Data["metadata"].(map[string]any); ok {
		ver = intField(md["version"])
	}
	data, _ := sec.Data["data"].(map[string]any)
	if data == nil {
		return nil, fmt.Errorf("read %s: version %d is deleted", path, ver)
	}
	uf, pf := kvField(s.kv.UsernameField, "username"), kvField(s.kv.PasswordField, "password")
	user, _ := data[uf].(string)
	pass, _ := data[pf].(string)
	if user == "" || pass == "" {
		return nil, fmt.Errorf("read %s: version %d has no string fields %q and %q", path, ver, uf, pf)
	}
	g := newGeneration(s, 0)
	g.Backend, g.Role, g.Username, g.password = s.backend, s.role, user, pass
	g.IssuedAt, g.version = now, strconv.Itoa(ver)
	if s.poll > 0 {
		g.checkAt = now.Add(s.poll)
	}
	return g, nil
}

func kvField(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// compare decides what a static or KV read found. The same secret as the
// current generation's, read only to look (a poll or a refused login),
// just refreshes the current generation's times: same is true. Anything
// else is a new generation, numbered here, and the reason to publish it
// with: what changed, or the caller's reason (an operator's rotate makes a
// new generation even with the same password).
func (s *Source) compare(g *Generation, reason string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur
	looking := reason == reasonPoll || reason == "auth_failed"
	if cur != nil && cur.State() == Active && sameSecret(cur, g) && looking {
		next := g.checkAt
		if s.refusedAt.After(s.lastRead) {
			// A login was refused while this read was on its way: the
			// answer may predate the change that refused it.
			next = earliest(next, s.lastRead.Add(minReread))
		}
		cur.mu.Lock()
		cur.checkAt, cur.rotation = next, g.rotation
		if !g.hardEnd.IsZero() {
			cur.hardEnd, cur.leaseEnd = g.hardEnd, g.leaseEnd
		}
		cur.mu.Unlock()
		s.wantRotate = ""
		s.fetchFails, s.lastErr, s.failingSince, s.retryAt = 0, nil, time.Time{}, time.Time{}
		return reason, true
	}
	s.lastN++
	g.N = s.lastN
	if looking && cur != nil {
		reason = reasonKVVersion
		if s.kind == Static {
			reason = reasonVaultRotation
		}
	}
	return reason, false
}

func sameSecret(a, b *Generation) bool {
	return a.version == b.version && a.Username == b.Username &&
		subtle.ConstantTimeCompare([]byte(a.password), []byte(b.password)) == 1
}

// endSuperseded sets when a superseded static generation ends: a drain
// timeout after it was replaced, and never later than Vault's rotation of
// its password plus that timeout. (A KV generation has no end: it drains
// for the drain timeout from now, as drainDeadline does for an unknown
// end.) Nothing is revoked: there is no lease.
func (s *Source) endSuperseded(old *Generation) {
	if s.kind != Static {
		return
	}
	end := s.now().Add(s.opts.DrainTimeout)
	old.mu.Lock()
	if old.hardEnd.IsZero() || end.Before(old.hardEnd) {
		old.hardEnd = end
	}
	old.leaseEnd = old.hardEnd
	old.checkAt = time.Time{}
	old.mu.Unlock()
}

// recheck answers a refused login on a static or KV credential: the
// password probably changed, so the current generation's secret is read
// again soon (at most every minReread). The generation is not drained:
// its open connections stay logged in whatever the password is now.
func (s *Source) recheck(g *Generation) {
	s.mu.Lock()
	cur := s.cur == g
	s.refusedAt = s.now()
	at := s.refusedAt
	if t := s.lastRead.Add(minReread); t.After(at) {
		at = t
	}
	s.mu.Unlock()
	if !cur {
		return
	}
	g.mu.Lock()
	if g.checkAt.IsZero() || at.Before(g.checkAt) {
		g.checkAt = at
	}
	g.mu.Unlock()
	s.log.Info("database refused the credential; reading it again", zap.Uint64("generation", g.N), zap.String("kind", s.kind.String()))
	s.poke()
}

// floatSeconds reads a seconds field that Vault may send as an integer or
// a fraction (static-creds ttl is a float).
func floatSeconds(v any) time.Duration {
	if n, ok := v.(json.Number); ok {
		if f, err := n.Float64(); err == nil {
			return time.Duration(f * float64(time.Second))
		}
	}
	return secondsField(v)
}
