package integration

import (
	"context"
	"database/sql"
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

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// sourcePolicy is all a dbproxy with static roles and KV secrets needs
// (docs/vault-setup.md): no lease calls at all.
const sourcePolicy = `
path "database/static-creds/*" { capabilities = ["read"] }
path "secret/data/dbproxy-it/*" { capabilities = ["read"] }
`

// sourceToken writes a token with only sourcePolicy for dbproxy.
func sourceToken(t *testing.T, dir string) string {
	t.Helper()
	ctx := context.Background()
	if err := Vault.WritePolicy(ctx, "dbproxy-sources", sourcePolicy); err != nil {
		t.Fatal(err)
	}
	tok, err := Vault.CreateToken(ctx, harness.TokenOptions{Policies: []string{"dbproxy-sources"}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "vault-token-sources")
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sourceProxyConfig is one transaction-pooled backend whose credential
// source is the YAML in source (vault_static_role: X or kv: {...}).
func sourceProxyConfig(t *testing.T, dir, protocol, dbAddr, source string, port int) string {
	t.Helper()
	return fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 2s
  auth: { method: token, token_file: %q }
backends:
  appdb:
    protocol: %s
    address: %s
    %s
    pool: { mode: transaction, max_connections: 4, checkout_timeout: 10s }
    lease: { drain_timeout: 10s, safety_margin: 3s, poll_interval: 1s }
listeners:
  - { name: sidecar, protocol: %s, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, sourceToken(t, dir), protocol, dbAddr, source, protocol, port)
}

// sourceLeases is /v1/leases for backend appdb, with the fields static and
// KV sources add.
type sourceLease struct {
	Generation uint64 `json:"generation"`
	Kind       string `json:"kind"`
	Version    string `json:"version"`
	State      string `json:"state"`
	Username   string `json:"username"`
	LeaseID    string `json:"lease_id"`
}

func (p *proxyProc) sourceLeases(t *testing.T) []sourceLease {
	t.Helper()
	resp, err := http.Get(p.admin + "/v1/leases")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []sourceLease
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitGeneration waits until gen is the only generation left: the older
// ones drained and retired.
func (p *proxyProc) waitOnlyGeneration(t *testing.T, gen uint64, d time.Duration) sourceLease {
	t.Helper()
	deadline := time.Now().Add(d)
	var ls []sourceLease
	for time.Now().Before(deadline) {
		ls = p.sourceLeases(t)
		if len(ls) == 1 && ls[0].Generation == gen {
			return ls[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("generation %d not the only one after %v: %+v", gen, d, ls)
	return sourceLease{}
}

// waitPoolFull waits until appdb's pool has all 4 server connections
// open, so that no new login is needed while a password changes under it
// (a login with the old password after Vault's rotation but before
// dbproxy's next read would be refused).
func (p *proxyProc) waitPoolFull(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(p.admin + "/v1/pools")
		if err != nil {
			t.Fatal(err)
		}
		var pools []struct {
			Open int `json:"open"`
		}
		err = json.NewDecoder(resp.Body).Decode(&pools)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(pools) == 1 && pools[0].Open >= 4 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool not full after 20s: %+v", pools)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clientLoop runs n clients, each one long-lived session doing
// transactions through the pool, until stop; every error is counted.
type clientLoop struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

func (l *clientLoop) fail(err error) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.errs) < 10 {
		l.errs = append(l.errs, err.Error())
	}
	l.mu.Unlock()
}

func (l *clientLoop) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d client errors (%d transactions ok): %s", n, l.ok.Load(), strings.Join(l.errs, "; "))
	}
	t.Logf("clients: %d transactions, 0 errors", l.ok.Load())
}

// untilMore waits until the clients have done n more transactions.
func (l *clientLoop) untilMore(t *testing.T, n int64) {
	t.Helper()
	want := l.ok.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for l.ok.Load() < want {
		if time.Now().After(deadline) || l.failed.Load() > 0 {
			t.Fatalf("clients stalled at %d transactions (want %d), %d errors: %v", l.ok.Load(), want, l.failed.Load(), l.errs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pgLoop(t *testing.T, port, n int) *clientLoop {
	l := &clientLoop{stop: make(chan struct{})}
	for c := range n {
		conn := connect(t, txnDSN(port))
		l.wg.Go(func() {
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					var v int
					if err := tx.QueryRow(ctx, "select $1::int + 1", c*1_000_000+i).Scan(&v); err != nil {
						return err
					}
					if v != c*1_000_000+i+1 {
						return fmt.Errorf("client %d: wrong answer %d", c, v)
					}
					_, err := tx.Exec(ctx, "select pg_backend_pid()")
					return err
				})
				if err != nil {
					l.fail(err)
					time.Sleep(50 * time.Millisecond)
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	return l
}

func myLoop(t *testing.T, port, n int) *clientLoop {
	l := &clientLoop{stop: make(chan struct{})}
	db, err := sql.Open("mysql", myTxnDSN(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for c := range n {
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		l.wg.Go(func() {
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := myTxn(ctx, conn, c*1_000_000+i); err != nil {
					l.fail(err)
					time.Sleep(50 * time.Millisecond)
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	return l
}

func myTxn(ctx context.Context, conn *sql.Conn, i int) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var v int
	if err := tx.QueryRowContext(ctx, "select ? + 1", i).Scan(&v); err != nil {
		return err
	}
	if v != i+1 {
		return fmt.Errorf("wrong answer %d for %d", v, i)
	}
	return tx.Commit()
}

// staticPassword reads the static role's password as an operator would.
func staticPassword(t *testing.T, role string) (string, string) {
	t.Helper()
	sec, err := Vault.Client.Logical().Read(Mount + "/static-creds/" + role)
	if err != nil || sec == nil {
		t.Fatalf("read static-creds/%s: %v", role, err)
	}
	return sec.Data["password"].(string), sec.Data["last_vault_rotation"].(string)
}

// TestStaticRolePostgres: a Vault static role on the real PostgreSQL. A
// forced rotation (database/rotate-role) is picked up by the poll, becomes
// generation 2, and the old connections drain at transaction boundaries:
// the pgx clients see 0 errors, and afterwards every server connection of
// the user logged in after the rotation (with the new password; the old
// one is refused).
func TestStaticRolePostgres(t *testing.T) {
	const user, role = "dbp_static_pg", "pg-static"
	ctx := context.Background()
	for _, q := range []string{
		`DROP ROLE IF EXISTS ` + user,
		`CREATE ROLE ` + user + ` LOGIN PASSWORD 'before-vault-1'`,
		`GRANT CONNECT ON DATABASE appdb TO ` + user,
	} {
		if err := PG.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Vault.Client.Logical().Write(Mount+"/static-roles/"+role, map[string]any{
		"db_name": "pg", "username": user, "rotation_period": "1h",
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = Vault.Client.Logical().Delete(Mount + "/static-roles/" + role) })
	oldPass, oldVersion := staticPassword(t, role)

	dir := t.TempDir()
	port := freePort(t)
	p := startProxy(t, dir, sourceProxyConfig(t, dir, "postgres", PG.Addr(), "vault_static_role: "+role, port), true)
	if ls := p.sourceLeases(t); len(ls) != 1 || ls[0].Kind != "static" || ls[0].Username != user || ls[0].LeaseID != "" || ls[0].Version != oldVersion {
		t.Fatalf("leases at start: %+v (want one static generation of %s, version %s)", ls, user, oldVersion)
	}

	l := pgLoop(t, port, 6)
	l.untilMore(t, 200)
	p.waitPoolFull(t)

	rotated := time.Now()
	if _, err := Vault.Client.Logical().Write(Mount+"/rotate-role/"+role, nil); err != nil {
		t.Fatal(err)
	}
	newPass, newVersion := staticPassword(t, role)
	if newPass == oldPass {
		t.Fatal("rotate-role did not change the password")
	}
	g := p.waitOnlyGeneration(t, 2, 20*time.Second)
	if g.Version != newVersion || g.State != "active" {
		t.Fatalf("generation 2 = %+v, want version %s active", g, newVersion)
	}
	l.untilMore(t, 200)
	l.finish(t)

	// The pool's server connections are all newer than the rotation, so
	// they logged in with the new password.
	var older, newer int
	super := connect(t, PG.SuperDSN())
	if err := super.QueryRow(ctx, `select count(*) filter (where backend_start < $2), count(*) filter (where backend_start >= $2)
		from pg_stat_activity where usename = $1`, user, rotated).Scan(&older, &newer); err != nil {
		t.Fatal(err)
	}
	if older != 0 || newer == 0 {
		t.Fatalf("server connections of %s: %d from before the rotation, %d after", user, older, newer)
	}
	if _, err := pgx.Connect(ctx, PG.DSN(user, oldPass, "appdb")); err == nil {
		t.Fatal("the old password still logs in; the rotation did not happen in PostgreSQL")
	}
	if c, err := pgx.Connect(ctx, PG.DSN(user, newPass, "appdb")); err != nil {
		t.Fatalf("the new password: %v", err)
	} else {
		c.Close(ctx)
	}
	if n := metricSum(t, p, "dbproxy_credential_rotations_total", `reason="vault_rotation"`); n != 1 {
		t.Fatalf("rotations{reason=vault_rotation} = %v, want 1", n)
	}
	if strings.Contains(p.log(), newPass) || strings.Contains(p.log(), oldPass) {
		t.Fatal("a password is in dbproxy's log")
	}
}

// TestStaticRoleMySQL is TestStaticRolePostgres on the real MariaDB: the
// server's connection ids of the user before the rotation are all gone
// afterwards, replaced by connections made with the new password.
func TestStaticRoleMySQL(t *testing.T) {
	const user, role = "dbp_static_my", "my-static"
	ctx := context.Background()
	for _, q := range []string{
		`DROP USER IF EXISTS '` + user + `'@'%'`,
		`CREATE USER '` + user + `'@'%' IDENTIFIED BY 'before-vault-1'`,
		`GRANT SELECT ON appdb.* TO '` + user + `'@'%'`,
	} {
		if err := Maria.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Vault.Client.Logical().Write(Mount+"/static-roles/"+role, map[string]any{
		"db_name": "mysql", "username": user, "rotation_period": "1h",
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = Vault.Client.Logical().Delete(Mount + "/static-roles/" + role) })
	oldPass, _ := staticPassword(t, role)

	dir := t.TempDir()
	port := freePort(t)
	p := startProxy(t, dir, sourceProxyConfig(t, dir, "mysql", Maria.Addr(), "vault_static_role: "+role, port), true)
	l := myLoop(t, port, 6)
	l.untilMore(t, 200)
	p.waitPoolFull(t)
	before := myConnIDs(t, user)
	if len(before) == 0 {
		t.Fatal("no server connections of the static user")
	}

	if _, err := Vault.Client.Logical().Write(Mount+"/rotate-role/"+role, nil); err != nil {
		t.Fatal(err)
	}
	newPass, _ := staticPassword(t, role)
	p.waitOnlyGeneration(t, 2, 20*time.Second)
	l.untilMore(t, 200)
	l.finish(t)

	after := myConnIDs(t, user)
	for id := range after {
		if before[id] {
			t.Fatalf("server connection %d from before the rotation is still open (before %v, after %v)", id, before, after)
		}
	}
	if len(after) == 0 {
		t.Fatal("no server connections after the rotation")
	}
	for pass, works := range map[string]bool{oldPass: false, newPass: true} {
		db, err := sql.Open("mysql", Maria.DSN(user, pass, "appdb"))
		if err != nil {
			t.Fatal(err)
		}
		err = db.PingContext(ctx)
		db.Close()
		if (err == nil) != works {
			t.Fatalf("login with the %v password: %v", map[bool]string{true: "new", false: "old"}[works], err)
		}
	}
}

// myConnIDs lists MariaDB's connection ids of user.
func myConnIDs(t *testing.T, user string) map[int64]bool {
	t.Helper()
	db, err := sql.Open("mysql", Maria.AdminDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("select id from information_schema.processlist where user = ?", user)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out[id] = true
	}
	return out
}

// TestKVSource: a KV v2 secret holds a PostgreSQL user's password; the
// operator changes the password in the database and writes a new version
// mid-run. dbproxy makes it generation 2 and the clients see no error.
func TestKVSource(t *testing.T) {
	const user = "dbp_kv_pg"
	ctx := context.Background()
	for _, q := range []string{
		`DROP ROLE IF EXISTS ` + user,
		`CREATE ROLE ` + user + ` LOGIN PASSWORD 'KV-first-Aa1'`,
		`GRANT CONNECT ON DATABASE appdb TO ` + user,
	} {
		if err := PG.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	kv := Vault.Client.KVv2("secret")
	if _, err := kv.Put(ctx, "dbproxy-it/legacy", map[string]any{"user": user, "pass": "KV-first-Aa1"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kv.DeleteMetadata(context.Background(), "dbproxy-it/legacy") })

	dir := t.TempDir()
	port := freePort(t)
	src := "kv: { mount: secret, path: dbproxy-it/legacy, username_field: user, password_field: pass }"
	p := startProxy(t, dir, sourceProxyConfig(t, dir, "postgres", PG.Addr(), src, port), true)
	l := pgLoop(t, port, 6)
	l.untilMore(t, 200)
	p.waitPoolFull(t)
	v1 := p.sourceLeases(t)[0].Version

	// A password rotation by hand: the database first (open sessions stay
	// logged in), then the secret.
	if err := PG.Exec(ctx, `ALTER ROLE `+user+` PASSWORD 'KV-second-Bb2'`); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "dbproxy-it/legacy", map[string]any{"user": user, "pass": "KV-second-Bb2"}); err != nil {
		t.Fatal(err)
	}
	g := p.waitOnlyGeneration(t, 2, 20*time.Second)
	if g.Kind != "kv" || g.Version == v1 {
		t.Fatalf("generation 2 = %+v (generation 1 had version %s)", g, v1)
	}
	l.untilMore(t, 200)
	l.finish(t)
	if n := metricSum(t, p, "dbproxy_credential_rotations_total", `reason="kv_version"`); n != 1 {
		t.Fatalf("rotations{reason=kv_version} = %v, want 1", n)
	}
}

// TestStaticRoleScheduledRotation: with polling off, dbproxy reads the
// static role only around the rotations Vault schedules (rotation_period
// 5s, Vault's queue checks every 5s) and still moves to the new password:
// MariaDB clients see 0 errors across the rotation, with a handful of reads.
func TestStaticRoleScheduledRotation(t *testing.T) {
	const user, role = "dbp_sched_my", "my-sched-static"
	ctx := context.Background()
	for _, q := range []string{
		`DROP USER IF EXISTS '` + user + `'@'%'`,
		`CREATE USER '` + user + `'@'%' IDENTIFIED BY 'before-vault-1'`,
		`GRANT SELECT ON appdb.* TO '` + user + `'@'%'`,
	} {
		if err := Maria.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Vault.Client.Logical().Write(Mount+"/static-roles/"+role, map[string]any{
		"db_name": "mysql", "username": user, "rotation_period": "5s",
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = Vault.Client.Logical().Delete(Mount + "/static-roles/" + role) })

	dir := t.TempDir()
	port := freePort(t)
	cfg := sourceProxyConfig(t, dir, "mysql", Maria.Addr(), "vault_static_role: "+role, port)
	cfg = strings.Replace(cfg, "poll_interval: 1s", "poll_interval: 0s", 1)
	p := startProxy(t, dir, cfg, true)
	l := myLoop(t, port, 6)
	l.untilMore(t, 100)
	p.waitPoolFull(t)
	start := p.sourceLeases(t)[0].Generation
	deadline := time.Now().Add(30 * time.Second)
	for {
		ls := p.sourceLeases(t)
		if len(ls) > 0 && ls[len(ls)-1].Generation >= start+1 {
			break
		}
		if time.Now().After(deadline) || l.failed.Load() > 0 {
			t.Fatalf("no scheduled rotation within 30s (leases %+v, %d client errors: %v)", ls, l.failed.Load(), l.errs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	l.untilMore(t, 100)
	l.finish(t)
	reads := metricSum(t, p, "dbproxy_vault_requests_total", `operation="static_creds_read"`)
	rotations := metricSum(t, p, "dbproxy_credential_rotations_total", `reason="vault_rotation"`)
	if rotations < 1 {
		t.Fatalf("rotations{reason=vault_rotation} = %v, want at least 1", rotations)
	}
	// Per rotation: a read just after its due time and a few while
	// Vault's queue catches up (backoff 1s, 2s, 4s), not a poll loop.
	t.Logf("%v static-creds reads for %v rotations", reads, rotations)
	// (The next rotation may be under way when the test ends.)
	if reads > 1+6*(rotations+1) {
		t.Fatalf("%v static-creds reads for %v rotations", reads, rotations)
	}
}
