package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// fleetRole is the Vault role of the fleet tests: RoleTTL / RoleMaxTTL.
const fleetRole = "pg-fleet"

// fleetPolicy is the policy docs/fleet.md gives dbproxy in fleet mode,
// for backend role pg-fleet and fleet it-fleet: the test proves it is
// enough.
const fleetPolicy = `
path "database/creds/pg-fleet" { capabilities = ["read"] }
path "database/roles/pg-fleet" { capabilities = ["read"] }
path "sys/leases/renew"        { capabilities = ["update"] }
path "sys/leases/revoke"       { capabilities = ["update"] }
path "secret/data/dbproxy/fleet/it-fleet/*" { capabilities = ["create", "read", "update"] }
`

// fleetLease is /v1/leases with the fleet fields.
type fleetLease struct {
	Generation uint64 `json:"generation"`
	Username   string `json:"username"`
	State      string `json:"state"`
	Fleet      *struct {
		Instance  string               `json:"instance"`
		Issuer    string               `json:"issuer"`
		IsIssuer  bool                 `json:"is_issuer"`
		DrainedBy map[string]time.Time `json:"drained_by"`
		Members   []struct {
			ID   string `json:"id"`
			Live bool   `json:"live"`
		} `json:"members"`
	} `json:"fleet"`
}

func (p *proxyProc) fleetLeases(t *testing.T) []fleetLease {
	t.Helper()
	resp, err := http.Get(p.admin + "/v1/leases")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []fleetLease
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// fleetMember is one dbproxy of the fleet and the clients using it.
type fleetMember struct {
	name string
	proc *proxyProc
	port int
	pool *pgxpool.Pool
	stop chan struct{}
	wg   sync.WaitGroup
	ok   atomic.Int64
	errs []string
	mu   sync.Mutex
}

// startFleetMember runs dbproxy `name` of fleet it-fleet with its own
// token from the dbproxy-fleet token role (orphan, periodic).
func startFleetMember(t *testing.T, name string) *fleetMember {
	t.Helper()
	ctx := context.Background()
	tok, err := Vault.CreateRoleToken(ctx, "dbproxy-fleet", harness.TokenRoleOptions{
		Policies: []string{"dbproxy-fleet"}, Period: time.Hour, Orphan: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &fleetMember{name: name, port: freePort(t), stop: make(chan struct{})}
	cfg := fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 2s
  auth: { method: token, token_file: %q }
fleet: { name: it-fleet, instance_id: %s, lock_ttl: 2s, poll_interval: 500ms }
backends:
  appdb:
    protocol: postgres
    address: %s
    vault_role: %s
    pool: { mode: transaction, max_connections: 4, checkout_timeout: 10s }
    lease: { safety_margin: 3s, revoke_grace: 2s, max_issue_per_minute: 20 }
listeners:
  - { name: sidecar, protocol: postgres, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, tokenFile, name, PG.Addr(), fleetRole, m.port)
	m.proc = startProxy(t, dir, cfg, true)
	return m
}

// load runs clients through m's transaction pool until m.stop closes.
func (m *fleetMember) load(t *testing.T, users *sync.Map) {
	t.Helper()
	var err error
	if m.pool, err = pgxpool.New(context.Background(), txnDSN(m.port)+" pool_max_conns=6"); err != nil {
		t.Fatal(err)
	}
	for w := range 6 {
		m.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-m.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				var user string
				var n int
				err := m.pool.QueryRow(ctx, "select current_user, $1::int + 1", w*1_000_000+i).Scan(&user, &n)
				cancel()
				if err == nil && n != w*1_000_000+i+1 {
					err = fmt.Errorf("wrong result %d", n)
				}
				if err != nil {
					m.mu.Lock()
					m.errs = append(m.errs, err.Error())
					m.mu.Unlock()
					time.Sleep(50 * time.Millisecond)
					continue
				}
				m.ok.Add(1)
				users.Store(user, true)
			}
		})
	}
}

func (m *fleetMember) finish() {
	close(m.stop)
	m.wg.Wait()
	m.pool.Close()
}

// TestFleetFailover: three dbproxy processes share one credential per
// generation through Vault KV; the issuer is killed with SIGKILL under
// load; a survivor takes over renewals and rotation. Clients of the
// survivors see no error, PostgreSQL never holds more than the current
// and the draining user, superseded users are revoked, and nothing is
// left once the fleet stops.
func TestFleetFailover(t *testing.T) {
	ctx := context.Background()
	if err := Vault.ConfigurePostgres(ctx, PG, harness.RoleOptions{Mount: Mount, Role: fleetRole, DefaultTTL: RoleTTL, MaxTTL: RoleMaxTTL}); err != nil {
		t.Fatal(err)
	}
	if err := Vault.WritePolicy(ctx, "dbproxy-fleet", fleetPolicy); err != nil {
		t.Fatal(err)
	}
	var members []*fleetMember
	for _, name := range []string{"fleet-a", "fleet-b", "fleet-c"} {
		members = append(members, startFleetMember(t, name))
	}

	// One generation, one database user, for three instances.
	var gen1 fleetLease
	for _, m := range members {
		l := m.proc.fleetLeases(t)
		if len(l) != 1 || l[0].Fleet == nil {
			t.Fatalf("%s: leases %+v", m.name, l)
		}
		if gen1.Username == "" {
			gen1 = l[0]
		}
		if l[0].Username != gen1.Username || l[0].Generation != gen1.Generation {
			t.Fatalf("%s serves %s (generation %d), another %s (%d)", m.name, l[0].Username, l[0].Generation, gen1.Username, gen1.Generation)
		}
	}
	if roles := vaultRoles(t, fleetRole); len(roles) != 1 {
		t.Fatalf("database users for three instances: %v; want one", roles)
	}

	// PostgreSQL's view, sampled all along: never more than the current
	// and the draining user (a user is created before its generation is
	// published, and dropped when it is revoked).
	var maxUsers atomic.Int64
	var sampled []string
	var smu sync.Mutex
	sampleStop := make(chan struct{})
	var sampler sync.WaitGroup
	sc := connect(t, PG.SuperDSN())
	sampler.Go(func() {
		for {
			select {
			case <-sampleStop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			rows, err := sc.Query(ctx, "select rolname from pg_roles where rolname like $1 order by 1", "v-%-"+fleetRole+"-%")
			if err != nil {
				continue
			}
			roles, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				continue
			}
			if int64(len(roles)) > maxUsers.Load() {
				maxUsers.Store(int64(len(roles)))
				smu.Lock()
				sampled = roles
				smu.Unlock()
			}
		}
	})

	users := &sync.Map{}
	for _, m := range members {
		m.load(t, users)
	}
	time.Sleep(5 * time.Second)

	var issuer *fleetMember
	var survivors []*fleetMember
	for _, m := range members {
		if l := m.proc.fleetLeases(t); len(l) > 0 && l[0].Fleet.IsIssuer {
			issuer = m
		} else {
			survivors = append(survivors, m)
		}
	}
	if issuer == nil || len(survivors) != 2 {
		t.Fatalf("want one issuer among three, got issuer %v and %d others", issuer, len(survivors))
	}
	// Its own clients stop first: only the survivors' clients count.
	issuer.finish()
	if err := issuer.proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	before := survivors[0].proc.fleetLeases(t)
	t.Logf("killed issuer %s at generation %d", issuer.name, before[len(before)-1].Generation)

	// A survivor takes over and rotates at least once on its own: wait
	// for a generation issued after the kill (rotation is every 15s).
	var after []fleetLease
	deadline := killedAt.Add(40 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		after = survivors[0].proc.fleetLeases(t)
		if n := len(after); n > 0 && after[n-1].Generation >= before[len(before)-1].Generation+1 &&
			after[n-1].Fleet.Issuer != issuer.name && time.Since(killedAt) > 18*time.Second {
			break
		}
	}
	for _, m := range survivors {
		m.finish()
	}
	close(sampleStop)
	sampler.Wait()

	newIssuer := after[len(after)-1].Fleet.Issuer
	t.Logf("new issuer %s; generations now %+v", newIssuer, after)
	if newIssuer == issuer.name || newIssuer == "" {
		t.Fatalf("no survivor took over from %s: %+v", issuer.name, after)
	}
	if after[len(after)-1].Generation <= before[len(before)-1].Generation {
		t.Fatalf("no rotation after the issuer died: before %+v, after %+v", before, after)
	}
	nUsers := 0
	users.Range(func(any, any) bool { nUsers++; return true })
	for _, m := range survivors {
		t.Logf("%s: %d transactions ok, %d failed", m.name, m.ok.Load(), len(m.errs))
		if len(m.errs) != 0 {
			t.Errorf("%s: %d client errors, first: %v", m.name, len(m.errs), m.errs[:min(3, len(m.errs))])
		}
		if m.ok.Load() == 0 {
			t.Errorf("%s ran no transactions", m.name)
		}
	}
	t.Logf("clients used %d database users; at most %d existed at once", nUsers, maxUsers.Load())
	if maxUsers.Load() > 2 {
		t.Errorf("PostgreSQL held %d Vault users at once: %v; want at most the current and the draining one", maxUsers.Load(), sampled)
	}
	// Every superseded user is revoked: PostgreSQL holds only users the
	// survivors still publish.
	live := map[string]bool{}
	for _, m := range survivors {
		for _, l := range m.proc.fleetLeases(t) {
			live[l.Username] = true
		}
	}
	for _, r := range vaultRoles(t, fleetRole) {
		if !live[r] {
			t.Errorf("database user %s is in pg_roles but no generation uses it (not revoked)", r)
		}
	}

	// The survivors stop gracefully; the last one revokes what is left.
	for _, m := range survivors {
		if err := m.proc.stop(t); err != nil {
			t.Errorf("%s exit: %v", m.name, err)
		}
	}
	if roles := vaultRoles(t, fleetRole); len(roles) != 0 {
		t.Fatalf("database users left after the fleet stopped: %v", roles)
	}
}
