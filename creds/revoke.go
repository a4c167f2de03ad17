package creds

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/events"
)

// RevokeReason is what clients whose sessions an operator revoke closes
// are told, in place of "its max TTL" and the like.
const RevokeReason = "an operator revoked it"

// RevokedLease is one lease an operator revoke cut.
type RevokedLease struct {
	Generation uint64 `json:"generation"`
	Username   string `json:"username"`
	// Connections held the credential when it was cut; they are closed.
	Connections int `json:"connections"`
	// Result of sys/leases/revoke: ok, gone (already revoked or expired)
	// or the error; after an error dbproxy retries once the connections
	// have closed, as for any superseded lease.
	Result string `json:"result"`
}

// RevokeResult is what Source.Revoke did.
type RevokeResult struct {
	Backend       string         `json:"backend"`
	Role          string         `json:"role"`
	NewGeneration uint64         `json:"new_generation"`
	NewUsername   string         `json:"new_username"`
	Revoked       []RevokedLease `json:"revoked"`
}

// ErrStopped: the source was stopped (shutdown) and fetches no more.
var ErrStopped = errors.New("dbproxy is shutting down")

// Revoke is the incident runbook for one (backend, role): it fetches a new
// credential first (a rotation with reason "revoke") so that new sessions
// and transactions move to it, then revokes every older lease in Vault and
// closes what still uses them, telling clients RevokeReason. If no new
// credential comes before ctx ends, nothing is revoked: cutting the old
// one then would leave the backend with none.
func (s *Source) Revoke(ctx context.Context) (RevokeResult, error) {
	res := RevokeResult{Backend: s.backend, Role: s.role}
	if s.kind != Dynamic {
		return res, fmt.Errorf("backend %s role %s: %w", s.backend, s.role, ErrNoLease)
	}
	old, g, err := s.rotateFirst(ctx)
	if err != nil {
		return res, err
	}
	res.NewGeneration, res.NewUsername = g.N, g.Username
	for _, o := range old {
		if r, ok := s.cut(ctx, o); ok {
			res.Revoked = append(res.Revoked, r)
		}
	}
	s.poke() // retire the cut generations once their connections are gone
	return res, nil
}

// awaitNewer waits until a generation not in old is current, or a fetch
// fails after the fetchFails count seen when the rotation was asked for.
func (s *Source) awaitNewer(ctx context.Context, old []*Generation, fails int) (*Generation, error) {
	for {
		s.mu.Lock()
		cur, ch, n, lastErr := s.cur, s.changed, s.fetchFails, s.lastErr
		s.mu.Unlock()
		if cur != nil && cur.State() == Active && !contains(old, cur) {
			return cur, nil
		}
		if n > fails && lastErr != nil {
			return nil, lastErr
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for Vault (or the issuance cap, max_issue_per_minute): %w", context.Cause(ctx))
		case <-ch:
		}
	}
}

func contains(gs []*Generation, g *Generation) bool {
	for _, x := range gs {
		if x == g {
			return true
		}
	}
	return false
}

// cut revokes g's lease in Vault, then expires g so that every session
// and pooled connection on it closes now with RevokeReason. The Vault call
// comes first: from then on nobody can log in with the credential, and
// closing the sessions (which Vault does not do, hashicorp/vault#699) is
// what is left. ok is false when g was already revoked.
func (s *Source) cut(ctx context.Context, g *Generation) (RevokedLease, bool) {
	g.mu.Lock()
	if g.state == Revoked {
		g.mu.Unlock()
		return RevokedLease{}, false
	}
	g.opRevoke = true
	g.reason = RevokeReason
	r := RevokedLease{Generation: g.N, Username: g.Username, Connections: g.refs}
	g.mu.Unlock()

	r.Result = "ok"
	if g.LeaseID != "" {
		err := s.client.api.Sys().RevokeWithContext(ctx, g.LeaseID)
		s.m.request("lease_revoke", err)
		switch {
		case err == nil:
		case isLeaseGone(err):
			r.Result = "gone"
		default:
			r.Result = "error: " + err.Error()
		}
	}
	g.mu.Lock()
	g.leaseRevoked = r.Result == "ok" || r.Result == "gone"
	g.opRevoke = g.leaseRevoked // after an error the source loop retries the revoke
	// Again: the rotation that superseded g may have set its own reason
	// since; once g is expired nothing changes it.
	g.reason = RevokeReason
	g.expireLocked()
	g.mu.Unlock()
	s.event(events.Revoked, g, "revoke", r.Result, r.Connections)
	s.log.Warn("credential revoked by an operator; closing its connections",
		zap.Uint64("generation", g.N), zap.String("db_user", g.Username), zap.Int("connections", r.Connections), zap.String("result", r.Result))
	return r, true
}

// Revoke runs Source.Revoke for every role of backend (only role, if not
// empty). found is false when no source matches.
func (b *Broker) Revoke(ctx context.Context, backend, role string) (out []RevokeResult, found bool, err error) {
	for k, s := range b.sources {
		if k.Backend != backend || role != "" && k.Role != role {
			continue
		}
		found = true
		r, e := s.Revoke(ctx)
		out = append(out, r)
		err = errors.Join(err, e)
	}
	return out, found, err
}

// rotateFirst fetches a new credential (a rotation with reason "revoke")
// so that new work moves to it, and returns it with the generations it
// supersedes. Without a new one before ctx ends it is an error, and the
// caller must revoke nothing: cutting the old ones would leave none.
func (s *Source) rotateFirst(ctx context.Context) (old []*Generation, g *Generation, err error) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil, nil, ErrStopped
	}
	old = append([]*Generation(nil), s.gens...)
	fails := s.fetchFails
	s.mu.Unlock()
	s.Rotate("revoke")
	if g, err = s.awaitNewer(ctx, old, fails); err != nil {
		return nil, nil, fmt.Errorf("backend %s role %s: no new credential, so nothing was revoked: %w", s.backend, s.role, err)
	}
	return old, g, nil
}
