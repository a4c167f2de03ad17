package integration

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// reloadConfig is a dbproxy configuration template with a sidecar
// listener for identity app on pgPort; backends and identities are the
// YAML given (indented as under their keys). {{ADMIN}} is left for
// startProxy.
func reloadConfig(t *testing.T, dir string, pgPort int, listeners, backends, identities string) string {
	t.Helper()
	return fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 2s
  auth: { method: token, token_file: %q }
backends:
%s
listeners:
  - { name: sidecar, protocol: postgres, address: "127.0.0.1:%d", identity: app }
%s
identities:
%s
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, vaultTokenFile(t, dir), backends, pgPort, listeners, identities)
}

// pgBackend is one postgres backend entry of reloadConfig on appdb.
func pgBackend(name, role, pool string) string {
	return fmt.Sprintf("  %s:\n    protocol: postgres\n    address: %s\n    database: appdb\n    vault_role: %s\n    pool: { %s }\n",
		name, PG.Addr(), role, pool)
}

// rewrite replaces p's configuration file (keeping its admin address).
func (p *proxyProc) rewrite(t *testing.T, cfg string) {
	t.Helper()
	cfg = strings.ReplaceAll(cfg, "{{ADMIN}}", strings.TrimPrefix(p.admin, "http://"))
	if err := os.WriteFile(filepath.Join(p.dir, "dbproxy.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// logLines returns p's JSON log lines with message msg.
func (p *proxyProc) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(p.log(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// waitLog waits (up to 30s) until p has logged msg n times.
func (p *proxyProc) waitLog(t *testing.T, msg string, n int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); len(p.logLines(msg)) < n; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("dbproxy did not log %q %d times", msg, n)
		}
	}
}

func configurePGRole(t *testing.T, role string) {
	t.Helper()
	if err := Vault.ConfigurePostgres(context.Background(), PG, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
}

// A reload under load adds a backend and changes another's pool size and
// lease settings: pgbench on the unaffected backend sees no error, the
// changed backend's open session goes on (on its old pool and
// credential), the new backend takes clients, the changed pool has its
// new size, and once the old session ends the replaced pool closes and
// its lease is revoked (the Vault-made user is gone).
func TestReloadUnderLoad(t *testing.T) {
	configurePGRole(t, "pg-reload")
	dir := t.TempDir()
	port := freePort(t)
	grants := "  app:\n    grants: [ { backend: steady }, { backend: resized } ]\n"
	before := pgBackend("steady", "pg-reload", "mode: transaction, max_connections: 4, checkout_timeout: 20s") +
		pgBackend("resized", "pg-reload", "mode: transaction, max_connections: 2, checkout_timeout: 20s")
	p := startProxy(t, dir, reloadConfig(t, dir, port, "", before, grants), true)
	dsn := func(db string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=app sslmode=disable connect_timeout=10", port, db)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bench := exec.CommandContext(ctx, "pgbench", "-n", "-c", "4", "-j", "2", "-T", "8", "-f", selectOne(t), dsn("steady"))
	var out strings.Builder
	bench.Stdout, bench.Stderr = &out, &out
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	// A pgx client of the changed backend, querying throughout.
	resized := connect(t, dsn("resized"))
	var oldUser string
	if err := resized.QueryRow(ctx, "select current_user").Scan(&oldUser); err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		pgxErrs []error
		pgxN    int
	)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if err := resized.QueryRow(ctx, "select 1").Scan(&n); err != nil {
				pgxErrs = append(pgxErrs, err)
				return
			}
			pgxN++
		}
	})

	time.Sleep(2 * time.Second) // reload while both run
	after := pgBackend("steady", "pg-reload", "mode: transaction, max_connections: 4, checkout_timeout: 20s") +
		pgBackend("resized", "pg-reload", "mode: transaction, max_connections: 6, checkout_timeout: 20s") + "    lease: { max_issue_per_minute: 10 }\n" +
		pgBackend("added", "pg-reload", "mode: session, max_connections: 2")
	p.rewrite(t, reloadConfig(t, dir, port, "", after,
		"  app:\n    grants: [ { backend: steady }, { backend: resized }, { backend: added } ]\n"))
	res, err := dbproxyCLI(t, p, "reload")
	if err != nil {
		t.Fatalf("dbproxy reload: %v\n%s", err, res)
	}
	t.Logf("dbproxy reload:\n%s", res)
	flat := strings.Join(strings.Fields(res), " ")
	if !strings.Contains(flat, "backends added: added changed: resized removed: -") || !strings.Contains(flat, "sessions closed: 0") {
		t.Errorf("reload output:\n%s", res)
	}

	err = bench.Wait()
	close(stop)
	wg.Wait()
	if err != nil || !strings.Contains(out.String(), "number of failed transactions: 0") {
		t.Fatalf("pgbench on the unaffected backend: %v\n%s", err, out.String())
	}
	t.Logf("pgbench across the reload: %s", grepLine(out.String(), "number of transactions actually processed"))
	if len(pgxErrs) > 0 || pgxN == 0 {
		t.Fatalf("pgx client of the resized backend: %d queries, errors %v", pgxN, pgxErrs)
	}
	var n int
	if err := connect(t, dsn("added")).QueryRow(ctx, "select 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("the added backend: %d, %v", n, err)
	}
	req, _ := http.NewRequest(http.MethodGet, p.admin+"/v1/pools", nil)
	_, _, body := adminDo(t, p, req)
	var pools []struct {
		Backend string
		Max     int
	}
	if err := json.Unmarshal([]byte(body), &pools); err != nil {
		t.Fatal(err)
	}
	maxOf := map[string]int{}
	for _, pl := range pools {
		maxOf[pl.Backend] = pl.Max
	}
	if maxOf["resized"] != 6 || maxOf["steady"] != 4 || maxOf["added"] != 2 {
		t.Errorf("pools after the reload: %s", body)
	}
	if got := metricSum(t, p, "dbproxy_config_reloads_total{", `result="ok"`); got != 1 {
		t.Errorf("dbproxy_config_reloads_total{result=ok} = %v, want 1", got)
	}
	if len(p.logLines("configuration reloaded")) != 1 {
		t.Errorf("no (or more than one) configuration reloaded log line")
	}

	// The old session still runs as the old user; once it ends, the
	// replaced pool and source go, and with them the Vault-made user.
	var user string
	if err := resized.QueryRow(ctx, "select current_user").Scan(&user); err != nil || user != oldUser {
		t.Fatalf("the open session of the changed backend runs as %q (%v), want its old user %s", user, err, oldUser)
	}
	if err := connect(t, dsn("resized")).QueryRow(ctx, "select current_user").Scan(&user); err != nil || user == oldUser {
		t.Fatalf("a new session of the changed backend runs as %q (%v): want a new credential", user, err)
	}
	resized.Close(ctx)
	p.waitLog(t, "replaced credential source stopped and its leases revoked", 1)
	if slices.Contains(vaultRoles(t, "pg-reload"), oldUser) {
		t.Errorf("database user %s of the replaced source still exists", oldUser)
	}
}

// Removing a grant ends that identity's sessions on the backend with the
// reason (PostgreSQL 57P01, MySQL 1927), removing a listener ends the
// sessions that came through it, and nothing else is touched; SIGHUP
// reloads as `dbproxy reload` does.
func TestReloadRemovesGrant(t *testing.T) {
	configurePGRole(t, "pg-reload-grant")
	dir := t.TempDir()
	port, otherPort, extraPort, myPort := freePort(t), freePort(t), freePort(t), freePort(t)
	backends := pgBackend("appdb", "pg-reload-grant", "max_connections: 4") + pgBackend("spare", "pg-reload-grant", "max_connections: 2") +
		fmt.Sprintf("  mydb:\n    protocol: mysql\n    address: %s\n    database: appdb\n    vault_role: %s\n", Maria.Addr(), MySQLRole)
	other := fmt.Sprintf(`  - { name: other, protocol: postgres, address: "127.0.0.1:%d", identity: other }
  - { name: myside, protocol: mysql, address: "127.0.0.1:%d", identity: app }`, otherPort, myPort)
	extra := fmt.Sprintf("\n  - { name: extra, protocol: postgres, address: \"127.0.0.1:%d\", identity: other }", extraPort)
	ids := func(appGrants string) string {
		return "  app:\n    grants: [ " + appGrants + " ]\n  other:\n    grants: [ { backend: appdb } ]\n"
	}
	p := startProxy(t, dir, reloadConfig(t, dir, port, other+extra, backends, ids("{ backend: appdb }, { backend: spare }, { backend: mydb }")), true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := func(port int, db string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=app sslmode=disable connect_timeout=10", port, db)
	}
	lost, kept, otherID := connect(t, dsn(port, "appdb")), connect(t, dsn(port, "spare")), connect(t, dsn(otherPort, "appdb"))
	viaExtra := connect(t, strings.Replace(dsn(extraPort, "appdb"), "user=app", "user=other", 1))
	myLost, err := openMy(t, fmt.Sprintf("app@tcp(127.0.0.1:%d)/mydb?timeout=10s", myPort)).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer myLost.Close()
	for _, c := range []interface {
		Ping(context.Context) error
	}{lost, kept, otherID, viaExtra} {
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := myLost.PingContext(ctx); err != nil {
		t.Fatal(err)
	}

	p.rewrite(t, reloadConfig(t, dir, port, other, backends, ids("{ backend: spare }")))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "configuration reloaded", 1)
	const why = "its configuration was reloaded and identity app no longer has a grant on backend appdb"
	_, err = lost.Exec(ctx, "select 1")
	if sqlstate(err) != "57P01" || !strings.Contains(err.Error(), why) {
		t.Fatalf("session whose grant was removed: got %v, want 57P01 saying %q", err, why)
	}
	const myWhy = "its configuration was reloaded and identity app no longer has a grant on backend mydb"
	if _, err := myLost.ExecContext(ctx, "select 1"); myCode(err) != 1927 || !strings.Contains(err.Error(), myWhy) {
		t.Errorf("MySQL session whose grant was removed: got %v, want 1927 saying %q", err, myWhy)
	}
	if _, err := viaExtra.Exec(ctx, "select 1"); sqlstate(err) != "57P01" || !strings.Contains(err.Error(), "listener extra was removed") {
		t.Errorf("session of a removed listener: got %v, want 57P01 naming the listener", err)
	}
	for name, c := range map[string]interface {
		Ping(context.Context) error
	}{"app on spare": kept, "other on appdb": otherID} {
		if err := c.Ping(ctx); err != nil {
			t.Errorf("%s was touched by the reload: %v", name, err)
		}
	}
	if c, err := pgx.Connect(ctx, dsn(port, "appdb")); err == nil || !strings.Contains(err.Error(), "may not use backend") {
		if err == nil {
			c.Close(ctx)
		}
		t.Errorf("a new session on the removed grant: %v", err)
	}
	ends := p.logLines("session end")
	found := false
	for _, e := range ends {
		if e["result"] == "config_reload" && e["identity"] == "app" && strings.Contains(fmt.Sprint(e["reason"]), "no longer has a grant") {
			found = true
		}
	}
	if !found {
		t.Errorf("no session end line with result config_reload and the reason: %v", ends)
	}
	if rl := p.logLines("configuration reloaded"); len(rl) != 1 || rl[0]["sessions_closed"] != 3.0 {
		t.Errorf("configuration reloaded lines: %v", rl)
	}
}

// An invalid file, or a change only a restart applies, is refused with
// check-style FILE:LINE:COL problems over the CLI and the API; the
// running configuration and its sessions stay.
func TestReloadRefusesInvalidConfig(t *testing.T) {
	configurePGRole(t, "pg-reload-bad")
	dir := t.TempDir()
	port := freePort(t)
	backends := pgBackend("appdb", "pg-reload-bad", "max_connections: 4")
	ids := "  app:\n    grants: [ { backend: appdb } ]\n"
	good := reloadConfig(t, dir, port, "", backends, ids)
	p := startProxy(t, dir, good, true)
	c := connect(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", port))
	ctx := context.Background()

	bad := strings.Replace(good, "max_connections: 4", "max_connections: -1", 1)
	p.rewrite(t, bad)
	line := 1 + strings.Count(bad[:strings.Index(bad, "max_connections: -1")], "\n")
	want := fmt.Sprintf("%s:%d:", filepath.Join(p.dir, "dbproxy.yaml"), line)
	out, err := dbproxyCLI(t, p, "reload")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(out, want) || !strings.Contains(out, "max_connections") {
		t.Fatalf("dbproxy reload of an invalid file: %v\n%s\nwant exit 2 and a problem at %s", err, out, want)
	}
	t.Logf("dbproxy reload (invalid file):\n%s", out)

	// The API says the same, and a change to vault: needs a restart.
	restart := strings.Replace(good, "request_timeout: 2s", "request_timeout: 3s", 1)
	p.rewrite(t, restart)
	req, _ := http.NewRequest(http.MethodPost, p.admin+"/v1/reload", nil)
	code, _, body := adminDo(t, p, req)
	vaultLine := 1 + strings.Count(restart[:strings.Index(restart, "vault:")], "\n")
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, fmt.Sprintf("dbproxy.yaml:%d:1: vault: changed", vaultLine)) {
		t.Fatalf("POST /v1/reload with a vault change: %d %s", code, body)
	}

	var n int
	if err := c.QueryRow(ctx, "select 1").Scan(&n); err != nil {
		t.Fatalf("session after refused reloads: %v", err)
	}
	if err := connect(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", port)).Ping(ctx); err != nil {
		t.Fatalf("new session after refused reloads: %v", err)
	}
	if got := metricSum(t, p, "dbproxy_config_reloads_total{", `result="error"`); got != 2 {
		t.Errorf("dbproxy_config_reloads_total{result=error} = %v, want 2", got)
	}
	if got := len(p.logLines("configuration reload refused; the running configuration stays")); got != 2 {
		t.Errorf("%d refused-reload log lines, want 2", got)
	}
}

// `dbproxy sessions --backend-pid` finds the session that owns a real
// pg_stat_activity row (session and transaction pooling) and a MariaDB
// processlist row, and the audit lines name the pid, method and lease.
func TestSessionsByBackendPID(t *testing.T) {
	configurePGRole(t, "pg-audit")
	if err := Vault.ConfigureMySQL(context.Background(), Maria, harness.RoleOptions{Mount: Mount, Role: "my-audit", DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port, myPort := freePort(t), freePort(t)
	backends := pgBackend("sess", "pg-audit", "max_connections: 2") + pgBackend("txn", "pg-audit", "mode: transaction, max_connections: 2") +
		fmt.Sprintf("  mydb:\n    protocol: mysql\n    address: %s\n    database: appdb\n    vault_role: my-audit\n", Maria.Addr())
	listeners := fmt.Sprintf(`  - { name: mysql-side, protocol: mysql, address: "127.0.0.1:%d", identity: app }`, myPort)
	ids := "  app:\n    grants: [ { backend: sess }, { backend: txn }, { backend: mydb } ]\n"
	p := startProxy(t, dir, reloadConfig(t, dir, port, listeners, backends, ids), true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	admin := connect(t, PG.SuperDSN())
	for _, db := range []string{"sess", "txn"} {
		c := connect(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=app sslmode=disable application_name=%s-client", port, db, db))
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The DBA's side: the row of this client's server connection.
		var pid int
		if err := admin.QueryRow(ctx, "select pid from pg_stat_activity where application_name = $1", "dbproxy:app:"+db+"-client").Scan(&pid); err != nil {
			t.Fatalf("%s: pg_stat_activity row: %v", db, err)
		}
		out, err := dbproxyCLI(t, p, "sessions", "--backend-pid", fmt.Sprint(pid))
		flat := strings.Join(strings.Fields(out), " ")
		if err != nil || !strings.Contains(flat, fmt.Sprintf("postgres %s app listener sidecar", db)) || !strings.Contains(flat, fmt.Sprint(pid)) {
			t.Fatalf("%s: dbproxy sessions --backend-pid %d: %v\n%s", db, pid, err, out)
		}
		t.Logf("%s: dbproxy sessions --backend-pid %d:\n%s", db, pid, out)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if db == "txn" {
			// Between transactions the session holds nothing; the pid
			// still leads to it as the last holder.
			out, err = dbproxyCLI(t, p, "sessions", "--backend-pid", fmt.Sprint(pid))
			if err != nil || !strings.Contains(out, fmt.Sprintf("%d (last)", pid)) {
				t.Errorf("txn: after the transaction: %v\n%s", err, out)
			}
		}
		// The audit line at the end names the pid, the transaction and
		// the bytes.
		ended := len(p.logLines("session end"))
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
		p.waitLog(t, "session end", ended+1)
		ends := p.logLines("session end")
		e := ends[len(ends)-1]
		if e["backend"] != db || e["backend_pid"] != float64(pid) || e["transactions"] != 1.0 || e["result"] != "ok" ||
			e["bytes_in"].(float64) <= 0 || e["bytes_out"].(float64) <= 0 || e["method"] != "listener" {
			t.Errorf("%s: session end line %v", db, e)
		}
	}
	if out, err := dbproxyCLI(t, p, "sessions", "--backend-pid", "999999"); err == nil || !strings.Contains(out, "no open session") {
		t.Errorf("an unknown pid: %v\n%s", err, out)
	}

	my := openMy(t, fmt.Sprintf("app@tcp(127.0.0.1:%d)/mydb?timeout=10s", myPort))
	conn, err := my.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var user string
	if err := conn.QueryRowContext(ctx, "select substring_index(current_user(), '@', 1)").Scan(&user); err != nil {
		t.Fatal(err)
	}
	myAdmin, err := sql.Open("mysql", Maria.AdminDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer myAdmin.Close()
	var id int
	if err := myAdmin.QueryRowContext(ctx, "select id from information_schema.processlist where user = ?", user).Scan(&id); err != nil {
		t.Fatalf("processlist row of %s: %v", user, err)
	}
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/v1/sessions?backend_pid=%d", p.admin, id), nil)
	code, _, body := adminDo(t, p, req)
	var found []struct {
		Protocol   string `json:"protocol"`
		Backend    string `json:"backend"`
		BackendPID int    `json:"backend_pid"`
		Held       bool   `json:"backend_pid_held"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &found) != nil || len(found) != 1 || found[0].BackendPID != id || !found[0].Held ||
		found[0].Backend != "mydb" || found[0].Protocol != "mysql" {
		t.Fatalf("GET /v1/sessions?backend_pid=%d: %d %s", id, code, body)
	}

	// The audit lines: the start names the method, lease and pid.
	starts := p.logLines("session start")
	ok := false
	for _, s := range starts {
		lease, _ := s["lease_id"].(string)
		if s["backend"] == "sess" && s["method"] == "listener" && lease != "" && s["backend_pid"] != 0.0 && s["listener"] == "sidecar" {
			ok = true
		}
	}
	if !ok {
		t.Errorf("no session start line with method, lease_id and backend_pid: %v", starts)
	}
}

// A reload keeps a listener's Vault PKI certificate when its settings are
// unchanged (no new issuance) and issues a new one when they change: the
// next session sees the new serial, an open one goes on.
func TestReloadKeepsPKICertificate(t *testing.T) {
	roots := mountPKI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Vault.WritePolicy(ctx, "dbproxy-pki", pkiPolicy); err != nil {
		t.Fatal(err)
	}
	tok, err := Vault.CreateToken(ctx, harness.TokenOptions{Policies: []string{"dbproxy-pki"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	cfg := func(maxConns int, cn string) string {
		return fmt.Sprintf(`
vault:
  address: %s
  auth: { method: token, token_file: %q }
backends:
  appdb: { protocol: postgres, address: %s, vault_role: %s, pool: { max_connections: %d } }
listeners:
  - name: side
    protocol: postgres
    address: "127.0.0.1:%d"
    identity: app
    tls:
      required: true
      vault_pki: { mount: %s, role: dbproxy, common_name: %s, ip_sans: [ 127.0.0.1 ], ttl: 1m }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, tokFile, PG.Addr(), PGRole, maxConns, port, pkiMount, cn)
	}
	p := startProxy(t, dir, cfg(4, "localhost"), true)
	dial := func() *pgx.Conn {
		c, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=verify-full connect_timeout=10", port))
		if err != nil {
			t.Fatal(err)
		}
		c.TLSConfig = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		conn, err := pgx.ConnectConfig(ctx, c)
		if err != nil {
			t.Fatalf("TLS connect: %v", err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	first := dial()
	serial := serialOf(t, first)

	p.rewrite(t, cfg(6, "localhost"))
	if out, err := dbproxyCLI(t, p, "reload"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	if got := serialOf(t, dial()); got != serial {
		t.Fatalf("a reload that left the listener alone changed its certificate: serial %s, was %s", got, serial)
	}

	p.rewrite(t, cfg(6, "svc-pki"))
	if out, err := dbproxyCLI(t, p, "reload"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	// The new certificate is issued by its own goroutine: a handshake
	// before that waits for it.
	if got := serialOf(t, dial()); got == serial {
		t.Fatalf("a changed vault_pki kept the old certificate (serial %s)", serial)
	}
	var n int
	if err := first.QueryRow(ctx, "select 1").Scan(&n); err != nil {
		t.Fatalf("the session on the old certificate: %v", err)
	}
}
