package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// Short leases so that rotations happen inside a test: rotation starts at
// half the max TTL (the default cap), sessions close 3s before the end.
const (
	shortTTL    = 5 * time.Second
	shortMaxTTL = 15 * time.Second
)

// leaseStack is a dbproxy in front of PostgreSQL using a short-lived role.
type leaseStack struct {
	proxy   *proxyProc
	port    int
	role    string
	dir     string
	auditTo string
}

func startLeaseStack(t *testing.T, role string, extraVault string) *leaseStack {
	return startLeaseStackTTL(t, role, extraVault, shortTTL, shortMaxTTL)
}

func startLeaseStackTTL(t *testing.T, role, extraVault string, ttl, maxTTL time.Duration) *leaseStack {
	t.Helper()
	return startLeaseStackCap(t, role, extraVault, ttl, maxTTL, 20)
}

// startLeaseStackCap is startLeaseStackTTL with lease.max_issue_per_minute.
func startLeaseStackCap(t *testing.T, role, extraVault string, ttl, maxTTL time.Duration, maxIssue int) *leaseStack {
	t.Helper()
	ctx := context.Background()
	if err := Vault.ConfigurePostgres(ctx, PG, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: ttl, MaxTTL: maxTTL}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &leaseStack{port: freePort(t), role: role, dir: dir, auditTo: filepath.Join(dir, "audit.log")}
	// Vault's own audit log counts what dbproxy asked of it.
	auditPath := "dbproxy-" + role
	if err := Vault.Client.Sys().EnableAuditWithOptions(auditPath, &api.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": s.auditTo},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Vault.Client.Sys().DisableAudit(auditPath) })
	auth := fmt.Sprintf("{ method: token, token_file: %q }", vaultTokenFile(t, dir))
	if extraVault != "" {
		auth = extraVault
	}
	cfg := fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 1s
  auth: %s
backends:
  appdb:
    protocol: postgres
    address: %s
    vault_role: %s
    pool: { max_connections: 20 }
    lease: { safety_margin: 3s, revoke_grace: 2s, max_issue_per_minute: %d }
listeners:
  - { name: sidecar, protocol: postgres, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, auth, PG.Addr(), role, maxIssue, s.port)
	s.proxy = startProxy(t, dir, cfg, true)
	return s
}

// load runs clients that open a session per transaction until stop.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	users      map[string]bool
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startLoad(t *testing.T, port, clients int) *load {
	l := &load{users: map[string]bool{}, stop: make(chan struct{})}
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable connect_timeout=10", port)
	for c := range clients {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				user, err := oneTransaction(dsn, c*1_000_000+i)
				if err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					l.errs = append(l.errs, err.Error())
					l.mu.Unlock()
					time.Sleep(100 * time.Millisecond)
					continue
				}
				l.ok.Add(1)
				l.mu.Lock()
				l.users[user] = true
				l.mu.Unlock()
			}
		})
	}
	return l
}

func (l *load) finish() { close(l.stop); l.wg.Wait() }

func oneTransaction(dsn string, i int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer c.Close(ctx)
	var user string
	var n int
	if err := c.QueryRow(ctx, "select current_user, $1::int + 1", i).Scan(&user, &n); err != nil {
		return "", err
	}
	if n != i+1 {
		return "", fmt.Errorf("wrong result %d for %d", n, i)
	}
	return user, nil
}

type leaseInfo struct {
	Generation uint64    `json:"generation"`
	LeaseID    string    `json:"lease_id"`
	Username   string    `json:"username"`
	State      string    `json:"state"`
	Renewals   int       `json:"renewals"`
	LeaseEnd   time.Time `json:"lease_end"`
	HardEnd    time.Time `json:"hard_end"`
}

func (p *proxyProc) leases(t *testing.T) []leaseInfo {
	t.Helper()
	resp, err := http.Get(p.admin + "/v1/leases")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []leaseInfo
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// vaultRoles lists the PostgreSQL roles Vault made for role.
func vaultRoles(t *testing.T, role string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, PG.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// Vault's default username template truncates the role name to 8.
	rows, err := c.Query(ctx, "select rolname from pg_roles where rolname like $1 order by 1", "v-%-"+role[:min(8, len(role))]+"-%")
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// auditCount counts requests in Vault's audit log whose path is path.
func auditCount(t *testing.T, file, path string) int {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct {
			Type    string `json:"type"`
			Request struct {
				Path string `json:"path"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Type == "request" && e.Request.Path == path {
			n++
		}
	}
	return n
}

func TestLeaseRotationUnderLoad(t *testing.T) {
	s := startLeaseStack(t, "pg-rotate", "")
	start := time.Now()
	l := startLoad(t, s.port, 8)
	// Three rotations at half of a 15s max TTL take about 23s; run 27s.
	time.Sleep(27 * time.Second)
	l.finish()
	t.Logf("%d transactions in %v, %d failed, %d distinct database users", l.ok.Load(), time.Since(start).Round(time.Second), l.failed.Load(), len(l.users))
	if l.failed.Load() != 0 {
		t.Fatalf("%d client errors, first: %v", l.failed.Load(), l.errs[:min(3, len(l.errs))])
	}
	if len(l.users) < 4 {
		t.Fatalf("saw %d database users; want at least 4 (3 rotations)", len(l.users))
	}
	creds := auditCount(t, s.auditTo, Mount+"/creds/"+s.role)
	if creds != len(l.users) && creds != len(l.users)+1 {
		t.Fatalf("Vault saw %d creds reads for %d generations used by 8 clients; want one per generation", creds, len(l.users))
	}
	// Superseded generations are revoked once drained: only the live
	// generation's user (two during a rotation) remains in PostgreSQL.
	deadline := time.Now().Add(20 * time.Second)
	for {
		live := s.proxy.leases(t)
		roles := vaultRoles(t, s.role)
		liveUsers := map[string]bool{}
		for _, g := range live {
			liveUsers[g.Username] = true
		}
		orphans := 0
		for _, r := range roles {
			if !liveUsers[r] {
				orphans++
			}
		}
		if len(roles) == 0 {
			t.Fatal("no Vault-made role found in pg_roles: the pattern does not match Vault's user names")
		}
		if orphans == 0 && len(live) <= 2 {
			t.Logf("pg roles left: %v; live generations: %d", roles, len(live))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("roles %v still exist with live generations %+v", roles, live)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if revokes := auditCount(t, s.auditTo, "sys/leases/revoke"); revokes < 3 {
		t.Fatalf("dbproxy revoked %d leases; want every superseded one (>= 3)", revokes)
	}
}

// A session-mode session whose state cannot move to another connection
// (here a temporary table) is closed, with its reason, before the
// credential's hard end. (Sessions without such state move: see
// TestSessionMovesAcrossRotations.)
func TestIdleSessionClosedBeforeHardEnd(t *testing.T) {
	s := startLeaseStack(t, "pg-idle", "")
	conn := rawStartup(t, s.port)
	defer conn.Close()
	q, _ := (&pgproto3.Query{String: "create temp table pinned (x int)"}).Encode(nil)
	if _, err := conn.Write(q); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for {
		typ, body := readMsg(t, br)
		if typ == 'E' {
			t.Fatalf("create temp table: %q", body)
		}
		if typ == 'Z' {
			break
		}
	}
	if si := s.proxy.sessions(t); len(si) != 1 || si[0].Pinned != "temporary table" {
		t.Fatalf("sessions %+v: want one pinned by its temporary table", si)
	}
	gens := s.proxy.leases(t)
	if len(gens) == 0 || gens[len(gens)-1].HardEnd.IsZero() {
		t.Fatalf("want a generation with a known hard end, got %+v", gens)
	}
	hardEnd := gens[len(gens)-1].HardEnd
	_ = conn.SetReadDeadline(time.Now().Add(shortMaxTTL + 5*time.Second))
	typ, body := readMsg(t, br)
	got := time.Now()
	if typ != 'E' || !strings.Contains(string(body), "57P01") || !strings.Contains(string(body), "end of its lease") ||
		!strings.Contains(string(body), "reconnecting is safe") {
		t.Fatalf("want FATAL 57P01 about the lease end, got %q %q", typ, body)
	}
	if !got.Before(hardEnd) {
		t.Fatalf("closed at %v, after the credential's hard end %v", got, hardEnd)
	}
	// A new session simply works, on a newer credential.
	if _, err := oneTransaction(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.port), 1); err != nil {
		t.Fatalf("reconnect failed: %v", err)
	}
}

func TestExternalRevoke(t *testing.T) {
	s := startLeaseStack(t, "pg-revoke", "")
	l := startLoad(t, s.port, 4)
	time.Sleep(2 * time.Second)
	before := s.proxy.leases(t)
	if err := Vault.Client.Sys().RevokePrefix(Mount + "/creds/" + s.role); err != nil {
		t.Fatal(err)
	}
	revokedAt := time.Now()
	// Within the renew interval plus revoke grace the proxy has a new
	// generation and the old one is gone.
	deadline := revokedAt.Add(12 * time.Second)
	for {
		after := s.proxy.leases(t)
		if len(after) >= 1 && after[0].Generation > before[len(before)-1].Generation {
			t.Logf("new generation %d after %v", after[0].Generation, time.Since(revokedAt).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("old generation still live 12s after external revoke: before %+v after %+v", before, after)
		}
		time.Sleep(200 * time.Millisecond)
	}
	okBefore := l.ok.Load()
	time.Sleep(3 * time.Second)
	l.finish()
	if l.ok.Load() <= okBefore {
		t.Fatalf("no successful transactions after recovery")
	}
	t.Logf("%d ok, %d failed during external revoke", l.ok.Load(), l.failed.Load())
	if _, err := oneTransaction(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.port), 1); err != nil {
		t.Fatalf("reconnect after revoke failed: %v", err)
	}
}

func TestVaultOutage(t *testing.T) {
	s := startLeaseStack(t, "pg-outage", "")
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable connect_timeout=10", s.port)

	t.Run("shorter than the lease: no client error and no hot loop", func(t *testing.T) {
		// A 10s lease renews at 60-70% of its life. Pause Vault right after
		// a renewal and keep it paused past the next renewal attempt but
		// not past the lease end.
		ls := startLeaseStackTTL(t, "pg-outage-long", "", 10*time.Second, time.Minute)
		var renewedAt time.Time
		for first := ls.proxy.leases(t); ; time.Sleep(50 * time.Millisecond) {
			now := ls.proxy.leases(t)
			if len(now) > 0 && len(first) > 0 && now[0].Renewals > first[0].Renewals {
				renewedAt = time.Now()
				break
			}
			if time.Since(renewedAt) > 20*time.Second && !renewedAt.IsZero() {
				t.Fatal("no renewal seen")
			}
		}
		if err := Vault.Pause(); err != nil {
			t.Fatal(err)
		}
		before := vaultRequests(t, ls.proxy)
		errorsBefore := metricSum(t, ls.proxy, `dbproxy_lease_renewals_total{`, `result="error"`)
		l := startLoad(t, ls.port, 4)
		time.Sleep(time.Until(renewedAt.Add(8500 * time.Millisecond)))
		during := vaultRequests(t, ls.proxy) - before
		if err := Vault.Resume(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		l.finish()
		failedRenewals := metricSum(t, ls.proxy, `dbproxy_lease_renewals_total{`, `result="error"`) - errorsBefore
		if l.failed.Load() != 0 || l.ok.Load() == 0 {
			t.Fatalf("during a short Vault outage: %d ok, %d failed: %v", l.ok.Load(), l.failed.Load(), l.errs[:min(3, len(l.errs))])
		}
		if failedRenewals < 1 {
			t.Fatalf("no renewal attempt failed: the outage did not cover a renewal")
		}
		if during > 10 {
			t.Fatalf("%v Vault requests in 8s of outage: a hot loop", during)
		}
		t.Logf("%d transactions; %v Vault requests and %v failed renewals during an 8s outage", l.ok.Load(), during, failedRenewals)
	})

	t.Run("past the hard end: 08006 naming Vault and then recovery", func(t *testing.T) {
		if err := Vault.Pause(); err != nil {
			t.Fatal(err)
		}
		paused := true
		defer func() {
			if paused {
				_ = Vault.Resume()
			}
		}()
		time.Sleep(shortMaxTTL + time.Second)
		_, err := oneTransaction(dsn, 1)
		if sqlstate(err) != "08006" || !strings.Contains(err.Error(), "Vault unreachable since") {
			t.Fatalf("want 08006 'no valid credential ... Vault unreachable since', got %v", err)
		}
		resp, rerr := http.Get(s.proxy.admin + "/readyz")
		if rerr != nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("readyz during outage: %v %v", resp, rerr)
		}
		resp.Body.Close()
		if err := Vault.Resume(); err != nil {
			t.Fatal(err)
		}
		paused = false
		deadline := time.Now().Add(45 * time.Second)
		for {
			if _, err = oneTransaction(dsn, 2); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no recovery 45s after Vault came back: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// vaultRequests sums dbproxy_vault_requests_total from /metrics.
func vaultRequests(t *testing.T, p *proxyProc) float64 {
	t.Helper()
	return metricSum(t, p, "dbproxy_vault_requests_total{", "")
}

// metricSum adds the samples whose line starts with prefix and contains
// label.
func metricSum(t *testing.T, p *proxyProc, prefix, label string) float64 {
	t.Helper()
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) && strings.Contains(line, label) {
			var v float64
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			sum += v
		}
	}
	return sum
}

// dbproxyPolicy is what dbproxy's own Vault token needs (see README).
const dbproxyPolicy = `
path "database/creds/*" { capabilities = ["read"] }
path "database/roles/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
`

// approleFiles sets up AppRole login for dbproxy with a short token max
// TTL and writes the role_id and secret_id files.
func approleFiles(t *testing.T, dir string, tokenTTL, tokenMaxTTL time.Duration) string {
	t.Helper()
	c := Vault.Client
	if err := c.Sys().EnableAuthWithOptions("approle", &api.EnableAuthOptions{Type: "approle"}); err != nil &&
		!strings.Contains(err.Error(), "path is already in use") {
		t.Fatal(err)
	}
	if err := c.Sys().PutPolicy("dbproxy", dbproxyPolicy); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().Write("auth/approle/role/dbproxy", map[string]any{
		"token_policies": "dbproxy", "token_ttl": int(tokenTTL.Seconds()), "token_max_ttl": int(tokenMaxTTL.Seconds()),
	}); err != nil {
		t.Fatal(err)
	}
	rid, err := c.Logical().Read("auth/approle/role/dbproxy/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := c.Logical().Write("auth/approle/role/dbproxy/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	ridPath, sidPath := filepath.Join(dir, "role-id"), filepath.Join(dir, "secret-id")
	if err := os.WriteFile(ridPath, []byte(rid.Data["role_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sidPath, []byte(sid.Data["secret_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("{ method: approle, role_id_file: %q, secret_id_file: %q }", ridPath, sidPath)
}

func TestAppRoleTokenPastMaxTTL(t *testing.T) {
	auth := approleFiles(t, t.TempDir(), 20*time.Second, 40*time.Second)
	// The issue's TTLs (10s / max 30s): a 5s lease leaves too little slack
	// for a renewal on a loaded two-core machine.
	s := startLeaseStackTTL(t, "pg-approle", auth, 10*time.Second, 30*time.Second)
	l := startLoad(t, s.port, 8)
	time.Sleep(50 * time.Second)
	l.finish()
	logins := auditCount(t, s.auditTo, "auth/approle/login")
	t.Logf("%d transactions, %d failed, %d database users, %d AppRole logins", l.ok.Load(), l.failed.Load(), len(l.users), logins)
	if l.failed.Load() != 0 {
		t.Fatalf("%d client errors across the token's max TTL, first: %v", l.failed.Load(), l.errs[:min(3, len(l.errs))])
	}
	if logins < 2 {
		t.Fatalf("dbproxy logged in %d times in 50s with a 40s token max TTL; want a re-login", logins)
	}
}

func TestManualRotate(t *testing.T) {
	s := startLeaseStackTTL(t, "pg-manual", "", time.Minute, 10*time.Minute)
	conn := rawStartup(t, s.port)
	defer conn.Close()
	before := s.proxy.leases(t)
	resp, err := http.Post(s.proxy.admin+"/v1/backends/appdb/rotate", "application/json", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("rotate: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Post(s.proxy.admin+"/v1/backends/nosuch/rotate", "application/json", nil)
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("rotate unknown backend: %v %v", resp, err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The old generation drains, or is already revoked: the idle
		// session-mode session on it moves to the new one at once.
		after := s.proxy.leases(t)
		last := len(after) - 1
		if last >= 0 && after[last].State == "active" && after[last].Generation == before[0].Generation+1 &&
			(len(after) == 1 || len(after) == 2 && after[0].State == "draining") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after manual rotate: %+v", after)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// New sessions use the new generation while the old session lives on.
	user, err := oneTransaction(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.port), 1)
	if err != nil || user == before[0].Username {
		t.Fatalf("new session after rotate used %q (old %q): %v", user, before[0].Username, err)
	}
	q, _ := (&pgproto3.Query{String: "select 1"}).Encode(nil)
	if _, err := conn.Write(q); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for {
		typ, body := readMsg(t, r)
		if typ == 'E' {
			t.Fatalf("old-generation session failed after rotate: %q", body)
		}
		if typ == 'Z' {
			break
		}
	}
}

func TestShutdownRevokesLeases(t *testing.T) {
	s := startLeaseStackTTL(t, "pg-shutdown", "", time.Hour, 2*time.Hour)
	if _, err := oneTransaction(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.port), 1); err != nil {
		t.Fatal(err)
	}
	live := s.proxy.leases(t)
	if len(live) != 1 || len(vaultRoles(t, s.role)) != 1 {
		t.Fatalf("want one live generation and its role, got %+v and %v", live, vaultRoles(t, s.role))
	}
	if err := s.proxy.stop(t); err != nil {
		t.Fatalf("dbproxy exit: %v", err)
	}
	if roles := vaultRoles(t, s.role); len(roles) != 0 {
		t.Fatalf("roles left after a graceful stop: %v (lease should be revoked)", roles)
	}
}

type sessionInfo struct {
	Identity   string `json:"identity"`
	DBUser     string `json:"db_user"`
	Generation uint64 `json:"generation"`
	Pinned     string `json:"pinned"`
}

func (p *proxyProc) sessions(t *testing.T) []sessionInfo {
	t.Helper()
	resp, err := http.Get(p.admin + "/v1/sessions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []sessionInfo
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Session-mode clients with session state (a SET, pgx's cached prepared
// statements, database/sql prepared statements) cross three rotations
// without an error: each idle session moves to a connection on the new
// credential with its state restored.
func TestSessionMovesAcrossRotations(t *testing.T) {
	s := startLeaseStack(t, "pg-move", "")
	ctx := context.Background()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.port)
	c := connect(t, dsn)
	if _, err := c.Exec(ctx, "SET search_path = move_schema, public", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	users := map[string]bool{}
	deadline := time.Now().Add(3*shortMaxTTL + 10*time.Second)
	for i := 0; len(users) < 4 && time.Now().Before(deadline); i++ {
		var user, sp string
		var n int
		// pgx prepares this once and then only binds and executes it.
		if err := c.QueryRow(ctx, "select current_user, current_setting('search_path'), $1::int + 1", i).Scan(&user, &sp, &n); err != nil {
			t.Fatalf("query %d after %d credentials: %v", i, len(users), err)
		}
		if n != i+1 || sp != "move_schema, public" {
			t.Fatalf("query %d: n %d, search_path %q", i, n, sp)
		}
		users[user] = true
		time.Sleep(700 * time.Millisecond)
	}
	if len(users) < 4 {
		t.Fatalf("the session saw %d database users; want it moved across at least 3 rotations", len(users))
	}
	if got := metricSum(t, s.proxy, "dbproxy_session_moves_total", ""); got < 3 {
		t.Fatalf("dbproxy_session_moves_total = %v, want >= 3", got)
	}
}

// A session-mode client that LISTENs and keeps receiving NOTIFY crosses
// three rotations without an error and without losing a notification:
// each time it moves to a connection on the new credential that listens
// on its channels.
func TestListenSessionMovesAcrossRotations(t *testing.T) {
	s := startLeaseStack(t, "pg-listen", "")
	ctx := context.Background()
	c := connect(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.port))
	for _, q := range []string{"LISTEN jobs", `LISTEN "Mixed"`, "LISTEN gone", "UNLISTEN gone"} {
		if _, err := c.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	notifier, err := pgx.Connect(ctx, PG.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer notifier.Close(ctx)
	sent := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for deadline := time.Now().Add(3*shortMaxTTL + 10*time.Second); time.Now().Before(deadline); sent++ {
			if _, err := notifier.Exec(ctx, "select pg_notify('jobs', $1), pg_notify('Mixed', $1)", fmt.Sprint(sent)); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
			if metricSum(t, s.proxy, "dbproxy_session_moves_total", "") >= 3 && sent > 20 {
				sent++
				return
			}
		}
	}()
	got := map[string]map[string]bool{"jobs": {}, "Mixed": {}}
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := c.WaitForNotification(wctx)
		cancel()
		if err != nil {
			select {
			case <-done:
			default:
				t.Fatalf("waiting for notifications after %d: %v", len(got["jobs"]), err)
			}
			break
		}
		if n.Channel == "gone" {
			t.Fatal("a notification on an UNLISTENed channel")
		}
		got[n.Channel][n.Payload] = true
	}
	<-done
	for ch, seen := range got {
		for i := range sent {
			if !seen[fmt.Sprint(i)] {
				t.Errorf("channel %s: notification %d of %d lost", ch, i, sent)
			}
		}
	}
	if moves := metricSum(t, s.proxy, "dbproxy_session_moves_total", ""); moves < 3 {
		t.Fatalf("dbproxy_session_moves_total = %v, want >= 3", moves)
	}
	var user string
	if err := c.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		t.Fatalf("the listening session after the moves: %v", err)
	}
	t.Logf("%d notifications on each of 2 channels, none lost, across the moves; now %s", sent, user)
}
