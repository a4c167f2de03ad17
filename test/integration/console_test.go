package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// consoleStack is one dbproxy with a PostgreSQL backend (transaction
// pooling) and a MySQL one, an application listener per protocol
// (identity app) and a PostgreSQL listener for operators (identity ops,
// admin: true).
type consoleStack struct {
	proxy                    *proxyProc
	appPort, opsPort, myPort int
}

func startConsoleStack(t *testing.T) *consoleStack {
	t.Helper()
	ctx := context.Background()
	if err := Vault.ConfigurePostgres(ctx, PG, harness.RoleOptions{Mount: Mount, Role: "console-pg", DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := Vault.ConfigureMySQL(ctx, Maria, harness.RoleOptions{Mount: Mount, Role: "console-my", DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &consoleStack{appPort: freePort(t), opsPort: freePort(t), myPort: freePort(t)}
	cfg := fmt.Sprintf(`
vault:
  address: %s
  auth: { method: token, token_file: %q }
backends:
  appdb:
    protocol: postgres
    address: %s
    vault_role: console-pg
    pool: { mode: transaction, max_connections: 5 }
  mydb:
    protocol: mysql
    address: %s
    database: appdb
    vault_role: console-my
listeners:
  - { name: app, protocol: postgres, address: "127.0.0.1:%d", identity: app }
  - { name: ops, protocol: postgres, address: "127.0.0.1:%d", identity: ops }
  - { name: app-mysql, protocol: mysql, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb }, { backend: mydb } ]
  ops:
    admin: true
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, vaultTokenFile(t, dir), PG.Addr(), Maria.Addr(), s.appPort, s.opsPort, s.myPort)
	s.proxy = startProxy(t, dir, cfg, true)
	return s
}

// console runs psql against the console on port with a header line and
// "|" between columns; it returns the output and psql's error.
func (s *consoleStack) console(t *testing.T, port int, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-A", "-F", "|", "-P", "footer=off", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose",
		fmt.Sprintf("host=127.0.0.1 port=%d dbname=dbproxy user=whoever sslmode=disable", port), "-c", sql)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// table parses console output into its header and rows, by column name.
func consoleTable(t *testing.T, out string) ([]string, []map[string]string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	header := strings.Split(lines[0], "|")
	var rows []map[string]string
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "NOTICE") || l == "" {
			continue
		}
		vals := strings.Split(l, "|")
		if len(vals) != len(header) {
			t.Fatalf("row %q has %d values for %d columns", l, len(vals), len(header))
		}
		row := map[string]string{}
		for i, h := range header {
			row[h] = vals[i]
		}
		rows = append(rows, row)
	}
	return header, rows
}

func (s *consoleStack) show(t *testing.T, what string) ([]string, []map[string]string) {
	t.Helper()
	out, err := s.console(t, s.opsPort, "SHOW "+what)
	if err != nil {
		t.Fatalf("SHOW %s: %v\n%s", what, err, out)
	}
	return consoleTable(t, out)
}

func hasColumns(t *testing.T, what string, header []string, want ...string) {
	t.Helper()
	have := map[string]bool{}
	for _, h := range header {
		have[h] = true
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("SHOW %s lacks column %q; it has %v", what, w, header)
		}
	}
}

func findRow(rows []map[string]string, key, val string) map[string]string {
	for _, r := range rows {
		if r[key] == val {
			return r
		}
	}
	return nil
}

func atLeast(t *testing.T, what string, row map[string]string, col string, min int) {
	t.Helper()
	n, err := strconv.Atoi(row[col])
	if err != nil || n < min {
		t.Errorf("%s %s = %q, want at least %d (row %v)", what, col, row[col], min, row)
	}
}

// The SQL admin console with the real psql: the PgBouncer-style views
// with their columns, statistics counted from real traffic, refusals,
// and KILL of a live pgx session whose client then sees the reason.
func TestAdminConsole(t *testing.T) {
	s := startConsoleStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.appPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// 3 single-statement transactions and one of 3 statements: 6 queries,
	// 4 transactions.
	for range 3 {
		if _, err := conn.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{"begin", "select 2", "commit"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}

	header, pools := s.show(t, "POOLS")
	hasColumns(t, "POOLS", header, "database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait", "pool_mode",
		"role", "generation", "lease_end", "hard_end")
	if p := findRow(pools, "database", "appdb"); p == nil || p["pool_mode"] != "transaction" || !strings.HasPrefix(p["user"], "v-") || p["cl_active"] != "1" {
		t.Errorf("SHOW POOLS appdb: %v", pools)
	}

	header, clients := s.show(t, "CLIENTS")
	hasColumns(t, "CLIENTS", header, "type", "user", "database", "state", "addr", "port", "connect_time", "request_time", "id",
		"identity", "generation", "lease_end", "hard_end")
	victim := findRow(clients, "database", "appdb")
	if victim == nil || victim["identity"] != "app" || victim["type"] != "C" || victim["addr"] != "127.0.0.1" || victim["request_time"] == "" {
		t.Fatalf("SHOW CLIENTS has no row for the pgx session: %v", clients)
	}
	if me := findRow(clients, "database", "dbproxy"); me == nil || me["identity"] != "ops" {
		t.Errorf("SHOW CLIENTS does not list the console session itself: %v", clients)
	}

	header, stats := s.show(t, "STATS")
	hasColumns(t, "STATS", header, "database", "identity", "total_xact_count", "total_query_count", "total_xact_time", "total_query_time",
		"total_wait_time", "avg_xact_time", "avg_query_time", "avg_wait_time")
	st := findRow(stats, "database", "appdb")
	if st == nil || st["identity"] != "app" {
		t.Fatalf("SHOW STATS has no appdb/app row: %v", stats)
	}
	atLeast(t, "SHOW STATS", st, "total_xact_count", 4)
	atLeast(t, "SHOW STATS", st, "total_query_count", 6)
	atLeast(t, "SHOW STATS", st, "total_query_time", 1)
	atLeast(t, "SHOW STATS", st, "total_server_assignment_count", 4)

	header, leases := s.show(t, "LEASES")
	hasColumns(t, "LEASES", header, "backend", "role", "generation", "state", "db_user", "lease_end", "hard_end", "connections")
	if l := findRow(leases, "role", "console-pg"); l == nil || l["state"] != "active" || !strings.HasPrefix(l["db_user"], "v-") || l["lease_end"] == "" {
		t.Errorf("SHOW LEASES: %v", leases)
	}
	if _, servers := s.show(t, "SERVERS"); findRow(servers, "database", "appdb") == nil {
		t.Errorf("SHOW SERVERS lists no connection of appdb: %v", servers)
	}
	if out, err := s.console(t, s.opsPort, "SHOW VERSION"); err != nil || !strings.Contains(out, "dbproxy ") {
		t.Errorf("SHOW VERSION: %v %q", err, out)
	}

	// Metrics: the same statistics on /metrics.
	resp, err := http.Get(s.proxy.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics := readAll(t, resp)
	for _, m := range []string{`dbproxy_transaction_duration_seconds_count{backend="appdb",identity="app",protocol="postgres"}`,
		`dbproxy_query_duration_seconds_count{backend="appdb",identity="app",protocol="postgres"}`,
		`dbproxy_client_wait_seconds_count{backend="appdb",identity="app",protocol="postgres"}`} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}

	// An identity without admin: true, and an unknown command.
	var pe *pgconn.PgError
	out, err := s.console(t, s.appPort, "SHOW POOLS")
	if err == nil || !strings.Contains(out, `FATAL:  identity "app" may not use the dbproxy admin console`) {
		t.Errorf("non-admin identity: %v %q", err, out)
	}
	// psql does not print a login failure's SQLSTATE; pgx has it.
	_, err = pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=dbproxy user=app sslmode=disable", s.appPort))
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Errorf("non-admin identity with pgx: %v, want SQLSTATE 42501", err)
	}
	out, err = s.console(t, s.opsPort, "SELECT 1")
	if err == nil || !strings.Contains(out, "42601") || !strings.Contains(out, "SHOW POOLS | CLIENTS | SERVERS") {
		t.Errorf("unknown command: %v %q", err, out)
	}

	// KILL the pgx session: its next query fails with 57P01 and the reason.
	out, err = s.console(t, s.opsPort, "KILL "+victim["id"]+" 'integration test says stop'")
	if err != nil || !strings.Contains(out, "killed client "+victim["id"]) {
		t.Fatalf("KILL: %v %q", err, out)
	}
	_, err = conn.Exec(ctx, "select 1")
	if !errors.As(err, &pe) || pe.Code != "57P01" || !strings.Contains(pe.Message, "integration test says stop") {
		t.Fatalf("killed session's next query: %v, want 57P01 naming the reason", err)
	}
	if out, err := s.console(t, s.opsPort, "KILL "+victim["id"]); err == nil || !strings.Contains(out, "42704") {
		t.Errorf("KILL of a gone session: %v %q", err, out)
	}

	// The operator actions, through to a new credential generation, with
	// a transaction open on the old one: WAIT_CLOSE returns only after it
	// commits (its server connection, of generation 1, then closes).
	inTxn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", s.appPort))
	if err != nil {
		t.Fatal(err)
	}
	defer inTxn.Close(context.Background())
	for _, q := range []string{"begin", "select 1"} {
		if _, err := inTxn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	out, err = s.console(t, s.opsPort, "PAUSE appdb; RESUME; RECONNECT appdb; ROTATE appdb")
	for _, want := range []string{"backend appdb: paused", "resumed", "reconnecting", "rotation started"} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("actions: %v, output lacks %q:\n%s", err, want, out)
		}
	}
	rotated := time.Now()
	deadline := rotated.Add(30 * time.Second)
	for {
		_, leases := s.show(t, "LEASES")
		if g := findRow(leases, "generation", "2"); g != nil && g["role"] == "console-pg" && g["state"] == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no generation 2 after ROTATE: %v", leases)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("generation 2 active %s after ROTATE", time.Since(rotated).Round(time.Millisecond))
	type waited struct {
		out string
		err error
		at  time.Time
	}
	done := make(chan waited, 1)
	go func() {
		out, err := s.console(t, s.opsPort, "WAIT_CLOSE appdb")
		done <- waited{out, err, time.Now()}
	}()
	time.Sleep(time.Second) // WAIT_CLOSE must still be waiting when the transaction ends
	committed := time.Now()
	if _, err := inTxn.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	w := <-done
	if w.err != nil || !strings.Contains(w.out, "are closed") {
		t.Fatalf("WAIT_CLOSE: %v %q", w.err, w.out)
	}
	if w.at.Before(committed) {
		t.Fatalf("WAIT_CLOSE returned before the transaction on generation 1 committed: %q", w.out)
	}
	t.Log(w.out)
}

// KILL through the HTTP API and the CLI, of MySQL sessions: the client
// gets ER_CONNECTION_KILLED (1927) naming the reason.
func TestKillMySQLSession(t *testing.T) {
	s := startConsoleStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db := openMy(t, fmt.Sprintf("app@tcp(127.0.0.1:%d)/mydb?timeout=10s", s.myPort))
	kill := func(how string, id uint64) {
		switch how {
		case "http":
			req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/v1/sessions/%d/kill", s.proxy.admin, id), strings.NewReader(`{"reason":"killed over http"}`))
			req.Header.Set("Content-Type", "application/json")
			if code, _, body := adminDo(t, s.proxy, req); code != http.StatusOK || !strings.Contains(body, `"status":"killed"`) {
				t.Fatalf("POST kill: %d %s", code, body)
			}
		default:
			out, err := dbproxyCLI(t, s.proxy, "kill", strconv.FormatUint(id, 10), "--reason", "killed over cli")
			if err != nil || !strings.Contains(out, fmt.Sprintf("killed session %d (mysql, identity app, backend mydb", id)) {
				t.Fatalf("dbproxy kill: %v %q", err, out)
			}
		}
	}
	for _, how := range []string{"http", "cli"} {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(ctx, "select 1").Scan(new(int)); err != nil {
			t.Fatal(err)
		}
		id := mysqlSessionID(t, s.proxy)
		kill(how, id)
		err = c.QueryRowContext(ctx, "select 1").Scan(new(int))
		if myCode(err) != 1927 || !strings.Contains(err.Error(), "killed over "+how) {
			t.Fatalf("%s: killed MySQL session's next query: %v, want 1927 naming the reason", how, err)
		}
		c.Close()
		waitNoMySQLSession(t, s.proxy)
	}
	if out, err := dbproxyCLI(t, s.proxy, "kill", "999999"); err == nil || !strings.Contains(out, "no open session with id 999999") {
		t.Errorf("dbproxy kill of an unknown id: %v %q", err, out)
	}
	// The MySQL sessions' commands are in SHOW STATS too.
	_, stats := s.show(t, "STATS")
	st := findRow(stats, "database", "mydb")
	if st == nil || st["identity"] != "app" {
		t.Fatalf("SHOW STATS has no mydb/app row: %v", stats)
	}
	atLeast(t, "SHOW STATS mydb", st, "total_query_count", 2)
	atLeast(t, "SHOW STATS mydb", st, "total_xact_count", 2)
	atLeast(t, "SHOW STATS mydb", st, "total_server_assignment_count", 2)
}

// mysqlSessionID is the id of the one open MySQL session.
func mysqlSessionID(t *testing.T, p *proxyProc) uint64 {
	t.Helper()
	for _, s := range sessions(t, p) {
		if s.Protocol == "mysql" {
			return s.ID
		}
	}
	t.Fatal("no MySQL session listed")
	return 0
}

func waitNoMySQLSession(t *testing.T, p *proxyProc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		found := false
		for _, s := range sessions(t, p) {
			found = found || s.Protocol == "mysql"
		}
		if !found {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the killed MySQL session is still listed after 30s")
}

type listedSession struct {
	ID       uint64 `json:"id"`
	Protocol string `json:"protocol"`
}

func sessions(t *testing.T, p *proxyProc) []listedSession {
	t.Helper()
	resp, err := http.Get(p.admin + "/v1/sessions")
	if err != nil {
		t.Fatal(err)
	}
	var out []listedSession
	if err := json.Unmarshal([]byte(readAll(t, resp)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b := new(strings.Builder)
	if _, err := io.Copy(b, resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
