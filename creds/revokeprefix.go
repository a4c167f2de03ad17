package creds

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/events"
)

// CredsPath is where a dynamic role's leases live in Vault: MOUNT/creds/ROLE.
func CredsPath(mount, role string) string { return mount + "/creds/" + role }

// PathCovers reports whether a lease prefix lies within a dynamic role's
// credential path: the path itself or anything under it (a lease id or
// its start). A prefix that is wider, e.g. MOUNT/creds/, would reach
// other roles and backends, and is not this role's to revoke.
func PathCovers(mount, role, prefix string) bool {
	p := CredsPath(mount, role)
	return prefix == p || strings.HasPrefix(prefix, p+"/")
}

// LeasesUnder lists the ids of the leases Vault holds under prefix for
// this source's role, dbproxy's own and anyone else's. It needs list
// (and sudo) on sys/leases/lookup/MOUNT/creds/ROLE/.
func (s *Source) LeasesUnder(ctx context.Context, prefix string) ([]string, error) {
	if s.kind != Dynamic || !PathCovers(s.mount, s.role, prefix) {
		return nil, fmt.Errorf("prefix %q is not under %s", prefix, CredsPath(s.mount, s.role))
	}
	dir := CredsPath(s.mount, s.role) + "/"
	sec, err := s.client.api.Logical().ListWithContext(ctx, "sys/leases/lookup/"+dir)
	s.m.request("lease_list", err)
	if err != nil {
		return nil, fmt.Errorf("list sys/leases/lookup/%s: %w", dir, err)
	}
	var out []string
	if sec != nil {
		keys, _ := sec.Data["keys"].([]any)
		for _, k := range keys {
			if id := dir + fmt.Sprint(k); strings.HasPrefix(id, prefix) && !strings.HasSuffix(id, "/") {
				out = append(out, id)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// OtherLease is a lease under a revoke prefix that dbproxy does not hold
// (another instance's, an application's, a person's).
type OtherLease struct {
	LeaseID string `json:"lease_id"`
	Result  string `json:"result"`
}

// PrefixResult is what Source.RevokePrefix did.
type PrefixResult struct {
	RevokeResult
	Others []OtherLease `json:"others"`
}

// RevokePrefix is Revoke for every lease under prefix: it fetches a new
// credential first (moving new work to it), then revokes each lease under
// prefix except that new one, closing what dbproxy still has on them with
// RevokeReason. It lists and revokes lease by lease rather than calling
// sys/leases/revoke-prefix, which would revoke the new credential too.
func (s *Source) RevokePrefix(ctx context.Context, prefix string) (PrefixResult, error) {
	res := PrefixResult{RevokeResult: RevokeResult{Backend: s.backend, Role: s.role}, Others: []OtherLease{}}
	if s.kind != Dynamic || !PathCovers(s.mount, s.role, prefix) {
		return res, fmt.Errorf("prefix %q is not under %s", prefix, CredsPath(s.mount, s.role))
	}
	old, g, err := s.rotateFirst(ctx)
	if err != nil {
		return res, err
	}
	res.NewGeneration, res.NewUsername = g.N, g.Username
	ids, err := s.LeasesUnder(ctx, prefix)
	if err != nil {
		return res, fmt.Errorf("the new credential is in use, but nothing was revoked: %w", err)
	}
	mine := map[string]*Generation{}
	for _, o := range old {
		if o.LeaseID != "" && strings.HasPrefix(o.LeaseID, prefix) {
			mine[o.LeaseID] = o
		}
	}
	for _, o := range old {
		if mine[o.LeaseID] == o {
			if r, ok := s.cut(ctx, o); ok {
				res.Revoked = append(res.Revoked, r)
			}
		}
	}
	for _, id := range ids {
		if mine[id] != nil || id == g.LeaseID {
			continue
		}
		res.Others = append(res.Others, OtherLease{LeaseID: id, Result: s.revokeOther(ctx, id)})
	}
	s.poke()
	return res, nil
}

// revokeOther revokes a lease dbproxy does not hold and returns ok, gone
// or the error.
func (s *Source) revokeOther(ctx context.Context, id string) string {
	err := s.client.api.Sys().RevokeWithContext(ctx, id)
	s.m.request("lease_revoke", err)
	result := "ok"
	switch {
	case err == nil:
	case isLeaseGone(err):
		result = "gone"
	default:
		result = "error: " + err.Error()
	}
	s.event(events.Revoked, nil, "revoke_prefix", result, 0)
	s.log.Warn("lease under a revoked prefix revoked by an operator", zap.String("result", result))
	return result
}
