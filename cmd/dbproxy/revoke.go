package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/creds"
)

// revokePlan is what `dbproxy revoke` shows: what a revoke of a backend's
// credentials cuts and what dbproxy does about it, before (dry run) or
// after doing it.
type revokePlan struct {
	Backend string `json:"backend"`
	Role    string `json:"role,omitempty"`
	DryRun  bool   `json:"dry_run"`
	// Leases are the credential generations revoked.
	Leases []creds.Info `json:"leases"`
	// Sessions hold a server connection on those leases, so they are closed.
	Sessions []revokeSession `json:"sessions"`
	// Unaffected sessions of the backend hold no server connection
	// (transaction pooling between transactions): they move to the new
	// credential with their next transaction.
	Unaffected int                  `json:"unaffected_sessions"`
	Actions    []string             `json:"actions"`
	Results    []creds.RevokeResult `json:"results,omitempty"`
	// Prefix, when set, is the Vault lease prefix revoked (--prefix);
	// VaultLeases are the leases under it before the revoke, and Others
	// what became of those dbproxy did not hold.
	Prefix      string             `json:"prefix,omitempty"`
	VaultLeases []prefixLease      `json:"vault_leases,omitempty"`
	Others      []creds.OtherLease `json:"others,omitempty"`
}

// prefixLease is a lease under a revoke prefix, and whose it is.
type prefixLease struct {
	LeaseID    string `json:"lease_id"`
	Generation uint64 `json:"generation,omitempty"` // 0: not dbproxy's
	Username   string `json:"username,omitempty"`
}

// revokeSession is one session a revoke closes.
type revokeSession struct {
	Protocol   string    `json:"protocol"`
	Identity   string    `json:"identity"`
	Role       string    `json:"role"`
	DBUser     string    `json:"db_user"`
	Generation uint64    `json:"generation"`
	State      string    `json:"state"`
	InFlight   bool      `json:"in_flight"` // a query or transaction in progress, rolled back
	Since      time.Time `json:"since"`
	Remote     string    `json:"remote"`
}

// Revoke implements admin.Revoker over the running proxies.
func (st *stack) Revoke(ctx context.Context, backend, role string, dryRun bool) (any, error) {
	p := &revokePlan{Backend: backend, Role: role, DryRun: dryRun, Leases: []creds.Info{}, Sessions: []revokeSession{}}
	var roles []string
	for k := range st.pools() {
		if k.Backend == backend && (role == "" || k.Role == role) {
			roles = append(roles, k.Role)
		}
	}
	if len(roles) == 0 {
		return nil, fmt.Errorf("backend %q role %q: %w", backend, role, admin.ErrUnknownBackend)
	}
	sort.Strings(roles)
	for _, l := range st.broker.Leases() {
		if l.Backend == backend && (role == "" || l.Role == role) {
			p.Leases = append(p.Leases, l)
		}
	}
	st.collectSessions(p, nil)
	p.Actions = revokeActions(p, roles)
	if dryRun {
		return p, nil
	}
	res, _, err := st.broker.Revoke(ctx, backend, role)
	p.Results = res
	return p, err
}

// collectSessions sorts the backend's sessions into cut and unaffected;
// with gens set, only sessions on those generations are cut.
func (st *stack) collectSessions(p *revokePlan, gens map[uint64]bool) {
	add := func(protocol, id, role, user string, gen uint64, state string, since time.Time, remote string) {
		if p.Role != "" && role != p.Role {
			return
		}
		if gen == 0 || gens != nil && !gens[gen] {
			p.Unaffected++
			return
		}
		p.Sessions = append(p.Sessions, revokeSession{Protocol: protocol, Identity: id, Role: role, DBUser: user,
			Generation: gen, State: state, InFlight: state != "idle", Since: since, Remote: remote})
	}
	for _, s := range st.postgres.Sessions() {
		if s.Backend == p.Backend {
			add(s.Protocol, s.Identity, s.Role, s.DBUser, s.Generation, s.State, s.Since, s.Remote)
		}
	}
	for _, s := range st.mysql.Sessions() {
		if s.Backend == p.Backend {
			add(s.Protocol, s.Identity, s.Role, s.DBUser, s.Generation, s.State, s.Since, s.Remote)
		}
	}
	sort.Slice(p.Sessions, func(i, j int) bool {
		a, b := p.Sessions[i], p.Sessions[j]
		if a.Identity != b.Identity {
			return a.Identity < b.Identity
		}
		return a.Since.Before(b.Since)
	})
}

// revokeActions says, in order, what the revoke does.
func revokeActions(p *revokePlan, roles []string) []string {
	out := []string{fmt.Sprintf("fetch a new credential for %s (role %s) from Vault first; new sessions and transactions use it; if none comes, stop here and revoke nothing",
		p.Backend, strings.Join(roles, ", "))}
	for _, l := range p.Leases {
		out = append(out, fmt.Sprintf("revoke the lease of generation %d (role %s, database user %s) in Vault (sys/leases/revoke): Vault drops the user",
			l.Generation, l.Role, l.Username))
	}
	if p.Prefix != "" {
		others := 0
		for _, l := range p.VaultLeases {
			if l.Generation == 0 {
				others++
			}
		}
		out = append(out, fmt.Sprintf("revoke the %d other lease(s) under %s that dbproxy does not hold (other instances, applications), lease by lease: "+
			"not with sys/leases/revoke-prefix, which would revoke the new credential too", others, p.Prefix))
	}
	inFlight := 0
	for _, s := range p.Sessions {
		if s.InFlight {
			inFlight++
		}
	}
	out = append(out, fmt.Sprintf("close the %d session(s) still on those leases, %d with a query or transaction in progress (rolled back); clients see PostgreSQL 57P01 / MySQL 1927 ending %q",
		len(p.Sessions), inFlight, "("+creds.RevokeReason+")"))
	if p.Unaffected > 0 {
		out = append(out, fmt.Sprintf("leave the %d session(s) that hold no server connection (transaction pooling): their next transaction uses the new credential", p.Unaffected))
	}
	return out
}

// RevokePrefix implements admin.PrefixRevoker: the revoke of one role's
// leases under a Vault lease prefix, dbproxy's and everyone else's.
func (st *stack) RevokePrefix(ctx context.Context, backend, prefix string, dryRun bool) (any, error) {
	srcs := st.broker.of(backend, "")
	if len(srcs) == 0 {
		return nil, fmt.Errorf("backend %q: %w", backend, admin.ErrUnknownBackend)
	}
	var (
		cs    *credSource
		paths []string
	)
	for _, c := range srcs {
		if c.spec.Kind != creds.Dynamic {
			continue
		}
		paths = append(paths, creds.CredsPath(c.spec.Mount, c.spec.Role))
		if creds.PathCovers(c.spec.Mount, c.spec.Role, prefix) {
			cs = c
		}
	}
	if cs == nil {
		return nil, fmt.Errorf("%w: %q is outside backend %s's credential paths (%s); give one of them, or a lease id under one",
			admin.ErrBadPrefix, prefix, backend, strings.Join(paths, ", "))
	}
	src := cs.broker.Source(backend, cs.spec.Role)
	p := &revokePlan{Backend: backend, Role: cs.spec.Role, Prefix: prefix, DryRun: dryRun, Leases: []creds.Info{}, Sessions: []revokeSession{}}
	gens := map[uint64]bool{}
	for _, l := range src.Generations() {
		if l.LeaseID != "" && strings.HasPrefix(l.LeaseID, prefix) {
			p.Leases = append(p.Leases, l)
			gens[l.Generation] = true
		}
	}
	ids, err := src.LeasesUnder(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("backend %s: nothing was changed: %w", backend, err)
	}
	for _, id := range ids {
		pl := prefixLease{LeaseID: id}
		for _, l := range p.Leases {
			if l.LeaseID == id {
				pl.Generation, pl.Username = l.Generation, l.Username
			}
		}
		p.VaultLeases = append(p.VaultLeases, pl)
	}
	st.collectSessions(p, gens)
	p.Actions = revokeActions(p, []string{cs.spec.Role})
	if dryRun {
		return p, nil
	}
	res, err := src.RevokePrefix(ctx, prefix)
	p.Results, p.Others = []creds.RevokeResult{res.RevokeResult}, res.Others
	return p, err
}
