package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/creds"
)

// revokeFake answers revokes like a backend "orders" with two sessions of
// identity api on generation 4, one of them in a transaction.
type revokeFake struct{ calls []string }

func (f *revokeFake) Revoke(_ context.Context, backend, role string, dry bool) (any, error) {
	f.calls = append(f.calls, backend+"|"+role+"|"+map[bool]string{true: "dry", false: "real"}[dry])
	if backend != "orders" {
		return nil, admin.ErrUnknownBackend
	}
	p := &revokePlan{Backend: backend, Role: role, DryRun: dry,
		Leases: []creds.Info{{Backend: "orders", Role: "rw", Generation: 4, State: "active", Username: "v-rw-4", Connections: 2}},
		Sessions: []revokeSession{
			{Protocol: "postgres", Identity: "api", Role: "rw", Generation: 4, State: "idle", Since: time.Now()},
			{Protocol: "postgres", Identity: "api", Role: "rw", Generation: 4, State: "idle in transaction", InFlight: true, Since: time.Now()},
		},
		Unaffected: 3,
	}
	p.Actions = revokeActions(p, []string{"rw"})
	if !dry {
		p.Results = []creds.RevokeResult{{Backend: "orders", Role: "rw", NewGeneration: 5, NewUsername: "v-rw-5",
			Revoked: []creds.RevokedLease{{Generation: 4, Username: "v-rw-4", Connections: 2, Result: "ok"}}}}
	}
	return p, nil
}

func (f *revokeFake) RevokePrefix(_ context.Context, backend, prefix string, dry bool) (any, error) {
	f.calls = append(f.calls, backend+"|prefix "+prefix+"|"+map[bool]string{true: "dry", false: "real"}[dry])
	if prefix != "database/creds/rw" {
		return nil, fmt.Errorf("%w: %q is outside backend orders's credential paths (database/creds/rw)", admin.ErrBadPrefix, prefix)
	}
	p := &revokePlan{Backend: backend, Role: "rw", Prefix: prefix, DryRun: dry,
		Leases:      []creds.Info{{Backend: "orders", Role: "rw", Generation: 4, State: "active", Username: "v-rw-4", LeaseID: "database/creds/rw/a1"}},
		Sessions:    []revokeSession{{Protocol: "postgres", Identity: "api", Role: "rw", Generation: 4, State: "idle", Since: time.Now()}},
		VaultLeases: []prefixLease{{LeaseID: "database/creds/rw/a1", Generation: 4, Username: "v-rw-4"}, {LeaseID: "database/creds/rw/b2"}},
	}
	p.Actions = revokeActions(p, []string{"rw"})
	if !dry {
		p.Others = []creds.OtherLease{{LeaseID: "database/creds/rw/b2", Result: "ok"}}
	}
	return p, nil
}

func TestRevokeCommand(t *testing.T) {
	f := &revokeFake{}
	s := admin.New(admin.Options{Address: "127.0.0.1:0"})
	s.MountRevoke(f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	for _, tc := range []struct {
		args []string
		code int
		call string
		want []string
	}{
		{[]string{"orders", "--role", "rw", "--dry-run", "--admin", addr}, 0, "orders|rw|dry", []string{
			"DRY RUN", "nothing was changed", "v-rw-4", "api postgres rw 2 1",
			"not cut: 3 session(s)", "What dbproxy would do:", "1. fetch a new credential for orders (role rw)",
			"revoke the lease of generation 4", `(an operator revoked it)`}},
		{[]string{"--admin", addr, "orders"}, 0, "orders||real", []string{
			"Revoked the credentials of orders.", "What dbproxy did:", "v-rw-5", "REVOKED DB USER", "ok"}},
		{[]string{"--admin", addr, "nosuch"}, 1, "nosuch||real", []string{"404"}},
		{[]string{"orders", "--prefix", "database/creds/rw", "--dry-run", "--admin", addr}, 0, "orders|prefix database/creds/rw|dry", []string{
			"DRY RUN", "under the Vault lease prefix database/creds/rw", "VAULT LEASES UNDER database/creds/rw: 2",
			"database/creds/rw/a1 dbproxy generation 4 (v-rw-4)", "database/creds/rw/b2 not dbproxy", "revoke the 1 other lease(s) under database/creds/rw"}},
		{[]string{"orders", "--prefix", "database/creds/rw", "--admin", addr}, 0, "orders|prefix database/creds/rw|real", []string{
			"OTHER LEASE REVOKED VAULT database/creds/rw/b2 ok"}},
		{[]string{"orders", "--prefix", "database/creds/", "--admin", addr}, 1, "orders|prefix database/creds/|real", []string{
			"400", "outside backend orders's credential paths (database/creds/rw)"}},
		{[]string{"orders", "--prefix", "database/creds/rw", "--role", "rw", "--admin", addr}, 2, "", []string{"--role or --prefix, not both"}},
		{[]string{"--admin", addr}, 2, "", []string{"Usage: dbproxy revoke"}},
		{[]string{"orders", "extra", "--admin", addr}, 2, "", []string{"Usage: dbproxy revoke"}},
	} {
		f.calls = nil
		var out, errb bytes.Buffer
		code := revokeCmd(context.Background(), tc.args, &out, &errb)
		got := strings.Join(strings.Fields(out.String()+errb.String()), " ")
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d\n%s", tc.args, code, tc.code, got)
		}
		if call := strings.Join(f.calls, ","); call != tc.call {
			t.Errorf("%v: API called %q, want %q", tc.args, call, tc.call)
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, got)
			}
		}
	}
}
