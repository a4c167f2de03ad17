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
// for backend role pg-fleet and the fleets it-fleet*: the test proves it
// is enough.
const fleetPolicy = `
path "database/creds/pg-fleet" { capabilities = ["read"] }
path "database/roles/pg-fleet" { capabilities = ["read"] }
path "sys/leases/renew"        { capabilities = ["update"] }
path "sys/leases/revoke"       { capabilities = ["update"] }
path "secret/data/dbproxy/fleet/it-fleet*" { capabilities = ["create", "read", "update"] }
`

// fleetLease is /v1/leases with the fleet fields.
type fleetLease struct {
	Generation uint64    `json:"generation"`
	Username   string    `json:"username"`
	State      string    `json:"state"`
	IssuedAt   time.Time `json:"issued_at"`
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

// startFleetMember runs dbproxy `name` of fleet `fleet` with its own
// token from the dbproxy-fleet token role (orphan, periodic).
func startFleetMember(t *testing.T, fleet, name string) *fleetMember {
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
fleet: { name: %s, instance_id: %s, lock_ttl: 2s, poll_interval: 500ms }
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
`, Vault.Addr, tokenFile, fleet, name, PG.Addr(), fleetRole, m.port)
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

// killIssuer stops the clients of the issuer among ms and kills it
// with SIGKILL (only the survivors' clients are judged).
func killIssuer(t *testing.T, ms []*fleetMember) *fleetMember {
	t.Helper()
	// Between one issuer and the next (a lock lost on a loaded machine)
	// nobody may say it is the issuer for a moment: ask again.
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, m := range ms {
			if l := m.proc.fleetLeases(t); len(l) > 0 && l[0].Fleet.IsIssuer {
				m.finish()
				if err := m.proc.cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				t.Logf("killed issuer %s at generation %d", m.name, l[len(l)-1].Generation)
				return m
			}
		}
	}
	t.Fatal("no issuer")
	return nil
}

// waitNewIssuer waits until all of ms name one issuer among them.
func waitNewIssuer(t *testing.T, ms, dead []*fleetMember) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		issuers := map[string]bool{}
		for _, m := range ms {
			for _, l := range m.proc.fleetLeases(t) {
				issuers[l.Fleet.Issuer] = true
			}
		}
		last = fmt.Sprint(issuers)
		if len(issuers) != 1 {
			continue
		}
		ok := true
		for _, d := range dead {
			ok = ok && !issuers[d.name]
		}
		if ok && !issuers[""] {
			return
		}
	}
	t.Fatalf("no new issuer: survivors see %s", last)
}

func without(ms []*fleetMember, x *fleetMember) []*fleetMember {
	var out []*fleetMember
	for _, m := range ms {
		if m != x {
			out = append(out, m)
		}
	}
	return out
}

// TestFleetFailover: three dbproxy processes share one credential per
// generation through Vault KV; under load the issuer is killed with
// SIGKILL, then its successor just before it would rotate; the last
// instance takes over renewals and rotation. Clients see no error (those
// of a killed instance stop before it dies), PostgreSQL never holds more
// than the current and the draining user, superseded users are revoked,
// and nothing is left once the fleet stops.
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
		members = append(members, startFleetMember(t, "it-fleet-kill", name))
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

	// Kill the issuer mid-run, then its successor just before the
	// rotation it would do: the last instance takes over and rotates.
	time.Sleep(3 * time.Second)
	killed := []*fleetMember{killIssuer(t, members)}
	alive := without(members, killed[0])
	waitNewIssuer(t, alive, killed)
	gen := alive[0].proc.fleetLeases(t)
	rotateAt := gen[len(gen)-1].IssuedAt.Add(RoleMaxTTL / 2) // default rotate_before: half of 30s
	time.Sleep(time.Until(rotateAt.Add(-2 * time.Second)))
	if g := alive[0].proc.fleetLeases(t); g[len(g)-1].Generation != gen[len(gen)-1].Generation {
		t.Fatalf("rotated before the second kill: %+v", g)
	}
	killed = append(killed, killIssuer(t, alive))
	last := without(alive, killed[1])
	waitNewIssuer(t, last, killed)
	var after []fleetLease
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		after = last[0].proc.fleetLeases(t)
		if len(after) == 1 && after[0].Generation > gen[len(gen)-1].Generation {
			break // rotated, and the superseded generation revoked
		}
	}
	last[0].finish()
	close(sampleStop)
	sampler.Wait()

	t.Logf("generations on %s now %+v", last[0].name, after)
	if len(after) != 1 || after[0].Generation <= gen[len(gen)-1].Generation {
		t.Fatalf("the last instance did not rotate and revoke after the issuers died: before %+v, after %+v", gen, after)
	}
	nUsers := 0
	users.Range(func(any, any) bool { nUsers++; return true })
	for _, m := range members {
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
	// Every superseded user is revoked: PostgreSQL holds only the user
	// the last instance still publishes.
	if roles := vaultRoles(t, fleetRole); len(roles) != 1 || roles[0] != after[0].Username {
		t.Errorf("pg_roles holds %v; want only %s (superseded users revoked)", roles, after[0].Username)
	}

	// The last instance stops gracefully and, the only live member left,
	// revokes what is left.
	if err := last[0].proc.stop(t); err != nil {
		t.Errorf("%s exit: %v", last[0].name, err)
	}
	if roles := vaultRoles(t, fleetRole); len(roles) != 0 {
		t.Fatalf("database users left after the fleet stopped: %v", roles)
	}
}

// TestFleetGracefulStop: instances that stop with SIGTERM leave the
// shared credential to the others (the issuer first, so a successor
// takes over), and the last one revokes it: no database user is left.
func TestFleetGracefulStop(t *testing.T) {
	ctx := context.Background()
	if err := Vault.ConfigurePostgres(ctx, PG, harness.RoleOptions{Mount: Mount, Role: fleetRole, DefaultTTL: RoleTTL, MaxTTL: RoleMaxTTL}); err != nil {
		t.Fatal(err)
	}
	if err := Vault.WritePolicy(ctx, "dbproxy-fleet", fleetPolicy); err != nil {
		t.Fatal(err)
	}
	var members []*fleetMember
	for _, name := range []string{"stop-a", "stop-b", "stop-c"} {
		members = append(members, startFleetMember(t, "it-fleet-stop", name))
	}
	check := func(ms []*fleetMember) string {
		t.Helper()
		var user string
		for _, m := range ms {
			u, err := oneTransaction(txnDSN(m.port), 1)
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			if user != "" && u != user {
				t.Fatalf("instances use %s and %s", user, u)
			}
			user = u
		}
		return user
	}
	user := check(members)
	// Issuer first: its lock is freed and a successor takes over.
	var issuer *fleetMember
	for _, m := range members {
		if l := m.proc.fleetLeases(t); len(l) > 0 && l[0].Fleet.IsIssuer {
			issuer = m
		}
	}
	if issuer == nil {
		t.Fatal("no issuer")
	}
	order := append([]*fleetMember{issuer}, without(members, issuer)...)
	for i, m := range order[:2] {
		if err := m.proc.stop(t); err != nil {
			t.Fatalf("%s exit: %v", m.name, err)
		}
		rest := order[i+1:]
		if got := check(rest); got != user {
			t.Fatalf("after %s stopped, the others use %s, not %s", m.name, got, user)
		}
		if roles := vaultRoles(t, fleetRole); len(roles) != 1 || roles[0] != user {
			t.Fatalf("after %s stopped: pg_roles %v; want %s kept for the others", m.name, roles, user)
		}
	}
	waitNewIssuer(t, order[2:], order[:2])
	if err := order[2].proc.stop(t); err != nil {
		t.Fatalf("%s exit: %v", order[2].name, err)
	}
	if roles := vaultRoles(t, fleetRole); len(roles) != 0 {
		t.Fatalf("database users left after the fleet stopped: %v", roles)
	}
}
