package main

import (
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
)

const reloadYAML = `
vault: { address: http://127.0.0.1:8200, auth: { method: token, token_file: /dev/null } }
backends:
  orders: { protocol: postgres, address: 127.0.0.1:5432, vault_role: rw }
  stock:  { protocol: mysql, address: 127.0.0.1:3306, vault_role: rw }
listeners:
  - { name: side, protocol: postgres, address: 127.0.0.1:6432, auth: listener, identity: api }
  - { name: mesh, protocol: postgres, address: 127.0.0.1:6433, auth: mtls, tls: { cert_file: /dev/null, key_file: /dev/null, client_ca_file: /dev/null } }
identities:
  api:
    grants: [ { backend: orders }, { backend: stock } ]
  reports:
    match: { cert_cn: reports }
    grants: [ { backend: orders, role: ro } ]
admin: { address: 127.0.0.1:0 }
`

func reloadView(t *testing.T, y string) *view {
	t.Helper()
	cfg, err := config.Parse("/tmp/dbproxy.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	p, err := identity.NewPolicy(identitySpecs(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return &view{cfg: cfg, policy: p}
}

func TestRevokeReason(t *testing.T) {
	v := reloadView(t, reloadYAML)
	api := identity.Identity{Name: "api", Method: identity.MethodListener}
	reports := identity.Identity{Name: "reports", Method: identity.MethodMTLS}
	for _, tc := range []struct {
		protocol string
		g        frontend.Grant
		want     string
	}{
		{"postgres", frontend.Grant{Listener: "side", Identity: api, Backend: "orders", Role: "rw"}, ""},
		{"mysql", frontend.Grant{Listener: "side", Identity: api, Backend: "stock", Role: "rw"}, ""},
		{"postgres", frontend.Grant{Listener: "mesh", Identity: reports, Backend: "orders", Role: "ro"}, ""},
		{"postgres", frontend.Grant{Listener: "gone", Identity: api, Backend: "orders", Role: "rw"}, "listener gone was removed"},
		{"postgres", frontend.Grant{Listener: "mesh", Identity: api, Backend: "orders", Role: "rw"}, "listener mesh now identifies clients by mtls"},
		{"postgres", frontend.Grant{Listener: "side", Identity: identity.Identity{Name: "other", Method: identity.MethodListener}, Backend: "orders", Role: "rw"},
			"listener side now belongs to identity api"},
		{"postgres", frontend.Grant{Listener: "side", Identity: api, Backend: "billing", Role: "rw"}, "backend billing was removed"},
		{"postgres", frontend.Grant{Listener: "side", Identity: api, Backend: "stock", Role: "rw"}, "backend stock was removed"},
		{"postgres", frontend.Grant{Listener: "mesh", Identity: reports, Backend: "orders", Role: "rw"},
			"identity reports's grant on backend orders now uses Vault role ro"},
		{"mysql", frontend.Grant{Listener: "mesh", Identity: reports, Backend: "stock", Role: "rw"},
			"identity reports no longer has a grant on backend stock"},
		{"postgres", frontend.Grant{Listener: "mesh", Identity: identity.Identity{Name: "ghost", Method: identity.MethodMTLS}, Backend: "orders"},
			"identity ghost was removed"},
	} {
		if got := v.revokeReason(tc.protocol, tc.g); got != tc.want {
			t.Errorf("revokeReason(%s, %+v) = %q, want %q", tc.protocol, tc.g, got, tc.want)
		}
	}
}

func TestReloadDiff(t *testing.T) {
	prev := reloadView(t, reloadYAML).cfg
	next := reloadView(t, strings.NewReplacer(
		"address: 127.0.0.1:5432", "address: 127.0.0.1:5433",
		"  stock:  { protocol: mysql, address: 127.0.0.1:3306, vault_role: rw }\n", "  audit: { protocol: postgres, address: 127.0.0.1:5432, vault_role: rw }\n",
		"{ backend: stock }", "{ backend: audit }").Replace(reloadYAML)).cfg
	got := diff(prev.Backends, next.Backends)
	if strings.Join(got.Added, ",") != "audit" || strings.Join(got.Changed, ",") != "orders" || strings.Join(got.Removed, ",") != "stock" {
		t.Errorf("backends diff %+v", got)
	}
	if got := diff(prev.Identities, next.Identities); strings.Join(got.Changed, ",") != "api" || len(got.Added)+len(got.Removed) != 0 {
		t.Errorf("identities diff %+v", got)
	}
	if got := diff(listenersByName(prev.Listeners), listenersByName(next.Listeners)); len(got.Added)+len(got.Changed)+len(got.Removed) != 0 {
		t.Errorf("listeners diff %+v", got)
	}
}

func TestRetiredPoolUsedBy(t *testing.T) {
	at := time.Now()
	r := &retiredPool{key: creds.SourceKey{Backend: "orders", Role: "rw"}, since: at}
	for _, tc := range []struct {
		s    frontend.SessionInfo
		want bool
	}{
		{frontend.SessionInfo{Backend: "orders", Role: "rw", Since: at.Add(-time.Second)}, true},
		{frontend.SessionInfo{Backend: "orders", Role: "rw", Since: at.Add(time.Second)}, false}, // logged in after: the new pool
		{frontend.SessionInfo{Backend: "orders", Role: "ro", Since: at.Add(-time.Second)}, false},
	} {
		if got := r.usedBy(tc.s); got != tc.want {
			t.Errorf("usedBy(%+v) = %v", tc.s, got)
		}
	}
}

// reloadFake answers the reload and session-finder API as a running
// dbproxy would.
type reloadFake struct {
	opsFake
	refuse bool
}

func (r *reloadFake) Reload(context.Context) (any, error) {
	if r.refuse {
		return nil, config.Problems{{File: "/etc/dbproxy.yaml", Line: 9, Col: 22, Msg: "backends.orders.pool.max_connections: -1; must be greater than 0"}}
	}
	return &reloadResult{Status: "reloaded", Backends: changes{Added: []string{"audit"}, Changed: []string{"orders"}}, SessionsClosed: 2}, nil
}

func (r *reloadFake) SessionsByBackendPID(pid uint32, _ string) any {
	if pid != 4242 {
		return []frontend.SessionInfo{}
	}
	return []frontend.SessionInfo{{Protocol: "postgres", Backend: "orders", Identity: "api", Method: "listener", Listener: "side",
		DBUser: "v-rw-1", BackendPID: 4242, Transactions: 7, Since: time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC), Remote: "10.0.0.7:5555"}}
}

func TestReloadAndSessionsCommands(t *testing.T) {
	f := &reloadFake{}
	s := admin.New(admin.Options{Address: "127.0.0.1:0"})
	s.MountV1(f)
	s.MountReload(f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Execute(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := run("reload", "--admin", addr)
	if code != 0 || !strings.Contains(out, "added: audit  changed: orders  removed: -") || !strings.Contains(out, "sessions closed: 2") {
		t.Fatalf("reload: %d %q %q", code, out, errs)
	}
	f.refuse = true
	code, out, errs = run("reload", "--admin", addr)
	if code != exitUsage || out != "" || !strings.Contains(errs, "\n/etc/dbproxy.yaml:9:22: backends.orders.pool.max_connections: -1") {
		t.Fatalf("refused reload: %d %q %q", code, out, errs)
	}
	code, out, errs = run("sessions", "--admin", addr, "--backend-pid", "4242")
	if code != 0 || !strings.Contains(strings.Join(strings.Fields(out), " "), "postgres orders api listener side v-rw-1 4242 (last) 7") {
		t.Fatalf("sessions --backend-pid 4242: %d %q %q", code, out, errs)
	}
	if code, _, errs = run("sessions", "--admin", addr, "--backend-pid", "7"); code != exitStartup || !strings.Contains(errs, "no open session") {
		t.Fatalf("sessions --backend-pid 7: %d %q", code, errs)
	}
}

// reloadingService counts reloads; it is shut down at once.
type reloadingService struct {
	reloads chan struct{}
}

func (r *reloadingService) Name() string                          { return "reloading" }
func (r *reloadingService) Shutdown(context.Context) (int, error) { return 0, nil }
func (r *reloadingService) Reload(context.Context) (any, error) {
	r.reloads <- struct{}{}
	return nil, nil
}

// SIGHUP reloads and serving goes on; SIGHUP during shutdown is not a
// second signal.
func TestRunSIGHUPReloads(t *testing.T) {
	svc := &reloadingService{reloads: make(chan struct{}, 2)}
	var gotPath string
	oldStart := start
	start = func(_ context.Context, _ *config.Config, deps Deps) ([]Service, error) {
		gotPath = deps.ConfigPath
		return []Service{svc}, nil
	}
	t.Cleanup(func() { start = oldStart })
	path := minimalConfig(t, "127.0.0.1:0", "")
	h := startRun(t, "run", "--config", path)
	h.adminAddr(t)
	if gotPath != path {
		t.Fatalf("Deps.ConfigPath = %q, want %q", gotPath, path)
	}
	for range 2 {
		h.sigs <- syscall.SIGHUP
		<-svc.reloads
	}
	h.sigs <- syscall.SIGTERM
	h.sigs <- syscall.SIGHUP
	if code := h.wait(t); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, h.stderr.String())
	}
	select {
	case code := <-h.exits:
		t.Fatalf("a SIGHUP during shutdown exited with %d", code)
	default:
	}
}
