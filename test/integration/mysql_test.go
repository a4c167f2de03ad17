package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/hashicorp/vault/api"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// myStack is one dbproxy in front of the shared MariaDB, with a sidecar
// listener, a TLS listener, an mTLS listener and a unix socket listener.
type myStack struct {
	proxy      *proxyProc
	dir        string
	sidecar    int // port; identity "app"
	tlsPort    int // port; server TLS required, identity "app"
	mtls       int // port; identities by certificate
	sock       string
	ca, evilCA *testCA
}

func startMyStack(t *testing.T) *myStack {
	t.Helper()
	dir := t.TempDir()
	s := &myStack{dir: dir, sidecar: freePort(t), tlsPort: freePort(t), mtls: freePort(t), sock: filepath.Join(dir, "mysql.sock")}
	s.ca = newCA(t, dir, "good")
	s.evilCA = newCA(t, dir, "evil")
	srvCert, srvKey := s.ca.issue(t, dir, "server", true, "localhost")
	cfg := fmt.Sprintf(`
vault:
  address: %s
  auth: { method: token, token_file: %s }
backends:
  appdb:
    protocol: mysql
    address: %s
    database: appdb
    vault_role: %s
    pool: { max_connections: 20, checkout_timeout: 3s }
  otherdb:
    protocol: mysql
    address: %s
    database: appdb
    vault_role: %s
listeners:
  - { name: sidecar, protocol: mysql, address: "127.0.0.1:%d", identity: app }
  - name: tls
    protocol: mysql
    address: "127.0.0.1:%d"
    identity: app
    tls: { cert_file: %s, key_file: %s, required: true }
  - name: mesh
    protocol: mysql
    address: "127.0.0.1:%d"
    auth: mtls
    tls: { cert_file: %s, key_file: %s, client_ca_file: %s, require_client_cert: true }
  - { name: local, protocol: mysql, unix_socket: %s, auth: peer }
identities:
  app:
    grants: [ { backend: appdb } ]
  orders:
    match: { spiffe_id: "spiffe://test/orders", unix_uid: %d }
    grants: [ { backend: appdb } ]
  reporting:
    match: { cert_cn: reporting }
    grants: [ { backend: otherdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, vaultTokenFile(t, dir), Maria.Addr(), MySQLRole, Maria.Addr(), MySQLRole,
		s.sidecar, s.tlsPort, srvCert, srvKey, s.mtls, srvCert, srvKey, s.ca.CertPEM, s.sock, os.Getuid())
	s.proxy = startProxy(t, dir, cfg, true)
	return s
}

// dsn is a go-sql-driver DSN for identity app on the sidecar listener.
func (s *myStack) dsn(port int, params string) string {
	return fmt.Sprintf("app@tcp(127.0.0.1:%d)/appdb?timeout=10s&%s", port, params)
}

func openMy(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func myCode(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// mariadbCLI runs the mariadb command-line client with args and returns
// its combined output.
func mariadbCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mariadb", append([]string{"--no-defaults", "--batch", "--skip-column-names", "--connect-timeout=10"}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestMySQLProxy(t *testing.T) {
	s := startMyStack(t)
	ctx := context.Background()
	if err := Maria.Exec(ctx, "CREATE TABLE IF NOT EXISTS appdb.my_tx (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if err := Maria.Exec(ctx, "DELETE FROM appdb.my_tx"); err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(s.sidecar)

	t.Run("mariadb client sees a Vault user in the backend's database", func(t *testing.T) {
		out, err := mariadbCLI(t, "-h", "127.0.0.1", "-P", port, "-u", "app", "-D", "appdb", "-e",
			"select current_user(), database()")
		if err != nil {
			t.Fatalf("mariadb: %v: %s", err, out)
		}
		parts := strings.Split(out, "\t")
		if len(parts) != 2 || !strings.HasPrefix(parts[0], "v-") || !strings.Contains(parts[0], "mysql-ap") || parts[1] != "appdb" {
			t.Fatalf("got %q, want a v-...mysql-ap... Vault user in appdb", out)
		}
	})

	t.Run("mariadb client multi-statement and a transaction", func(t *testing.T) {
		out, err := mariadbCLI(t, "-h", "127.0.0.1", "-P", port, "-u", "app", "-D", "appdb", "-e",
			"select 1; select 'two'; begin; insert into my_tx values (100, 'cli'); commit; select v from my_tx where id = 100")
		if err != nil || out != "1\ntwo\ncli" {
			t.Fatalf("mariadb: %v: %q", err, out)
		}
	})

	t.Run("go-sql-driver text, multi-statement and binary prepared statements", func(t *testing.T) {
		db := openMy(t, s.dsn(s.sidecar, "multiStatements=true"))
		var n int
		if err := db.QueryRowContext(ctx, "select 40 + 2").Scan(&n); err != nil || n != 42 {
			t.Fatalf("query: %d, %v", n, err)
		}
		rows, err := db.QueryContext(ctx, "select 1; select 2, 3; do 0; select 4")
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for {
			for rows.Next() {
				cols, _ := rows.Columns()
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					t.Fatal(err)
				}
				got = append(got, len(cols))
			}
			if !rows.NextResultSet() {
				break
			}
		}
		if err := rows.Err(); err != nil || fmt.Sprint(got) != "[1 2 1]" {
			t.Fatalf("multi-statement result sets: %v, %v", got, err)
		}
		rows.Close()
		// interpolateParams is off: ? parameters go as COM_STMT_PREPARE
		// and COM_STMT_EXECUTE (binary protocol).
		st, err := db.PrepareContext(ctx, "select ? * 2, concat('v', ?), cast(? as decimal(10,2))")
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for i := range 50 {
			var d int
			var v, dec string
			if err := st.QueryRowContext(ctx, i, i, 1.5).Scan(&d, &v, &dec); err != nil || d != 2*i || v != fmt.Sprint("v", i) || dec != "1.50" {
				t.Fatalf("prepared %d: %d %q %q, %v", i, d, v, dec, err)
			}
		}
		if _, err := db.ExecContext(ctx, "insert into my_tx values (?, ?)", 200, "prepared"); err != nil {
			t.Fatal(err)
		}
		var v string
		if err := db.QueryRowContext(ctx, "select v from my_tx where id = ?", 200).Scan(&v); err != nil || v != "prepared" {
			t.Fatalf("prepared select: %q %v", v, err)
		}
		_, err = db.ExecContext(ctx, "select * from no_such_table")
		if myCode(err) != 1146 {
			t.Fatalf("upstream error not passed through: %v", err)
		}
		if err := db.QueryRowContext(ctx, "select 7").Scan(&n); err != nil || n != 7 {
			t.Fatalf("session unusable after error: %v", err)
		}
	})

	t.Run("100 MB result streams through", func(t *testing.T) {
		db := openMy(t, s.dsn(s.sidecar, ""))
		rows, err := db.QueryContext(ctx, "select repeat('x', 1000) from seq_1_to_100000")
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		var b sql.RawBytes
		for rows.Next() {
			if err := rows.Scan(&b); err != nil {
				t.Fatal(err)
			}
			total += len(b)
		}
		if err := rows.Err(); err != nil || total != 100_000_000 {
			t.Fatalf("read %d bytes, err %v", total, err)
		}
		// One 8 MB value: a row split over several read buffers.
		var big string
		if err := db.QueryRowContext(ctx, "select repeat('y', 8 << 20)").Scan(&big); err != nil || len(big) != 8<<20 {
			t.Fatalf("8 MB value: %d bytes, %v", len(big), err)
		}
	})

	t.Run("transactions commit and roll back", func(t *testing.T) {
		db := openMy(t, s.dsn(s.sidecar, ""))
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "insert into my_tx values (1, 'committed')"); err != nil {
			t.Fatal(err)
		}
		if st := s.sessionStates(t); !strings.Contains(st, "idle in transaction") {
			t.Fatalf("admin API does not show the open transaction: %s", st)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		tx, err = db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "insert into my_tx values (2, 'rolled back')"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		other := openMy(t, s.dsn(s.sidecar, ""))
		var ids string
		if err := other.QueryRowContext(ctx, "select group_concat(id order by id) from my_tx where id < 100").Scan(&ids); err != nil || ids != "1" {
			t.Fatalf("rows after commit and rollback: %q %v", ids, err)
		}
	})

	t.Run("a clean quit returns the upstream reset for the next client", func(t *testing.T) {
		c1 := rawMyLogin(t, s.sidecar, "app", "appdb")
		tid := c1.queryValue(t, "select connection_id()")
		c1.queryValue(t, "set @leftover = 'x'")
		c1.quit(t)
		time.Sleep(200 * time.Millisecond)
		c2 := rawMyLogin(t, s.sidecar, "app", "appdb")
		defer c2.c.Close()
		if got := c2.queryValue(t, "select connection_id()"); got != tid {
			t.Fatalf("upstream thread %s not reused (got %s)", tid, got)
		}
		if got := c2.queryValue(t, "select concat(coalesce(@leftover, 'NULL'), ' ', database(), ' ', @@character_set_client)"); got != "NULL appdb utf8mb4" {
			t.Fatalf("state after reset: %q", got)
		}
	})

	t.Run("LOAD DATA LOCAL INFILE is refused", func(t *testing.T) {
		out, err := mariadbCLI(t, "-h", "127.0.0.1", "-P", port, "-u", "app", "-D", "appdb", "--local-infile=1", "-e",
			"load data local infile '/etc/hostname' into table my_tx")
		// The server refuses it: dbproxy never offers CLIENT_LOCAL_FILES.
		if err == nil || (!strings.Contains(out, "4166") && !strings.Contains(out, "1148")) {
			t.Fatalf("LOAD DATA LOCAL INFILE: want ERROR 4166 or 1148, got %v: %s", err, out)
		}
		var n int
		if err := openMy(t, s.dsn(s.sidecar, "")).QueryRowContext(ctx, "select count(*) from my_tx where id > 1000").Scan(&n); err != nil || n != 0 {
			t.Fatalf("rows loaded: %d %v", n, err)
		}
	})

	t.Run("Ctrl-C in the mariadb client cancels its query", func(t *testing.T) {
		cmd := exec.Command("mariadb", "--no-defaults", "--batch", "-h", "127.0.0.1", "-P", port, "-u", "app", "-D", "appdb",
			"-e", "select sleep(30)")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		time.Sleep(1500 * time.Millisecond)
		start := time.Now()
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("mariadb still waiting 15s after Ctrl-C: %s", out.String())
		}
		// The client opens a second connection (no database) and sends
		// KILL QUERY for its thread id.
		if !strings.Contains(out.String(), "query killed") || !strings.Contains(out.String(), "1317") {
			t.Fatalf("want the query killed (1317), got: %s", out.String())
		}
		t.Logf("ended %v after Ctrl-C: %q", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out.String()))
	})

	t.Run("KILL QUERY from a second connection", func(t *testing.T) {
		db := openMy(t, s.dsn(s.sidecar, ""))
		c1, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c1.Close()
		var tid uint32
		if err := c1.QueryRowContext(ctx, "select connection_id()").Scan(&tid); err != nil {
			t.Fatal(err)
		}
		for _, by := range []string{"thread id", "proxy connection id"} {
			id := tid
			if by == "proxy connection id" {
				id = s.connectionID(t, tid)
			}
			done := make(chan error, 1)
			start := time.Now()
			go func() {
				// An interrupted SLEEP returns 1 (MySQL) or fails with
				// 1317 query execution was interrupted (MariaDB).
				var r int
				err := c1.QueryRowContext(ctx, "select sleep(20)").Scan(&r)
				switch {
				case myCode(err) == 1317:
					err = nil
				case err == nil && r != 1:
					err = fmt.Errorf("sleep returned %d, not 1 (interrupted)", r)
				}
				done <- err
			}()
			time.Sleep(700 * time.Millisecond)
			if _, err := db.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", id)); err != nil {
				t.Fatalf("KILL QUERY by %s: %v", by, err)
			}
			select {
			case err := <-done:
				if err != nil || time.Since(start) > 8*time.Second {
					t.Fatalf("by %s: %v after %v", by, err, time.Since(start))
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("by %s: query still running 10s after KILL QUERY", by)
			}
			var n int
			if err := c1.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
				t.Fatalf("session unusable after KILL QUERY: %v", err)
			}
		}
		// mysql_kill()/KILL CONNECTION ends the whole session.
		if _, err := db.ExecContext(ctx, fmt.Sprintf("KILL %d", s.connectionID(t, tid))); err != nil {
			t.Fatal(err)
		}
		var n int
		err = c1.QueryRowContext(ctx, "select 1").Scan(&n)
		if err == nil {
			t.Fatal("session still usable after KILL CONNECTION")
		}
	})

	t.Run("KILL of another identity's session is refused", func(t *testing.T) {
		c1 := rawMyLogin(t, s.sidecar, "app", "appdb")
		defer c1.c.Close()
		tid := c1.queryValue(t, "select connection_id()")
		cert, key := s.ca.issue(t, s.dir, "orders-kill", false, "orders-client", "spiffe://test/orders")
		other := openMy(t, fmt.Sprintf("x@tcp(localhost:%d)/appdb?tls=%s", s.mtls, tlsConfigFor(t, "kill-orders", s.ca, cert, key)))
		_, err := other.ExecContext(ctx, "KILL QUERY "+tid)
		if myCode(err) != 1095 {
			t.Fatalf("want 1095 not owner of thread, got %v", err)
		}
	})

	t.Run("TLS from the client", func(t *testing.T) {
		out, err := mariadbCLI(t, "-h", "localhost", "--protocol=TCP", "-P", fmt.Sprint(s.tlsPort), "-u", "app", "-D", "appdb",
			"--ssl", "--ssl-ca="+s.ca.CertPEM, "--ssl-verify-server-cert", "-e", "status")
		if err != nil || !strings.Contains(out, "Cipher in use") {
			t.Fatalf("mariadb over TLS: %v: %s", err, out)
		}
		db := openMy(t, fmt.Sprintf("app@tcp(localhost:%d)/appdb?tls=%s", s.tlsPort, tlsConfigFor(t, "proxy-ca", s.ca, "", "")))
		var n int
		if err := db.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
			t.Fatalf("go-sql-driver over TLS: %v", err)
		}
		_, err = openMy(t, s.dsn(s.tlsPort, "")).ExecContext(ctx, "select 1")
		if myCode(err) != 3159 || !strings.Contains(err.Error(), "requires TLS") {
			t.Fatalf("plaintext on a TLS-required listener: want 3159 'requires TLS', got %v", err)
		}
	})

	t.Run("mTLS identity from SPIFFE ID, program_name names it", func(t *testing.T) {
		cert, key := s.ca.issue(t, s.dir, "orders", false, "orders-client", "spiffe://test/orders")
		db := openMy(t, fmt.Sprintf("x@tcp(localhost:%d)/appdb?tls=%s&connectionAttributes=program_name:myapp", s.mtls, tlsConfigFor(t, "orders", s.ca, cert, key)))
		var user string
		if err := db.QueryRowContext(ctx, "select current_user()").Scan(&user); err != nil || !strings.HasPrefix(user, "v-") {
			t.Fatalf("current_user %q, %v", user, err)
		}
		if sess := s.sessionsJSON(t); !strings.Contains(sess, `"identity":"orders"`) || !strings.Contains(sess, `"method":"mtls"`) {
			t.Fatalf("admin sessions: %s", sess)
		}
		// What a DBA sees: the upstream session's program_name.
		var tid int
		if err := db.QueryRowContext(ctx, "select connection_id()").Scan(&tid); err != nil {
			t.Fatal(err)
		}
		var prog string
		err := openMy(t, Maria.AdminDSN()).QueryRowContext(ctx, "select attr_value from performance_schema.session_connect_attrs where processlist_id = ? and attr_name = 'program_name'", tid).Scan(&prog)
		if err != nil || prog != "dbproxy:orders:myapp" {
			t.Fatalf("program_name %q, %v", prog, err)
		}
	})

	t.Run("mTLS with a certificate from another CA is rejected", func(t *testing.T) {
		cert, key := s.evilCA.issue(t, s.dir, "evil", false, "orders-client", "spiffe://test/orders")
		_, err := openMy(t, fmt.Sprintf("x@tcp(localhost:%d)/appdb?tls=%s", s.mtls, tlsConfigFor(t, "evil", s.ca, cert, key))).ExecContext(ctx, "select 1")
		if err == nil {
			t.Fatal("connected with a certificate from an untrusted CA")
		}
	})

	t.Run("unknown identity gets 1045", func(t *testing.T) {
		cert, key := s.ca.issue(t, s.dir, "stranger", false, "stranger")
		_, err := openMy(t, fmt.Sprintf("x@tcp(localhost:%d)/appdb?tls=%s", s.mtls, tlsConfigFor(t, "stranger", s.ca, cert, key))).ExecContext(ctx, "select 1")
		if myCode(err) != 1045 || !strings.Contains(err.Error(), "stranger") || !strings.Contains(err.Error(), "appdb") {
			t.Fatalf("want 1045 naming the certificate and backend, got %v", err)
		}
	})

	t.Run("identity without a grant for the backend gets 1044", func(t *testing.T) {
		cert, key := s.ca.issue(t, s.dir, "reporting", false, "reporting")
		_, err := openMy(t, fmt.Sprintf("x@tcp(localhost:%d)/appdb?tls=%s", s.mtls, tlsConfigFor(t, "reporting", s.ca, cert, key))).ExecContext(ctx, "select 1")
		if myCode(err) != 1044 || !strings.Contains(err.Error(), "reporting") || !strings.Contains(err.Error(), "appdb") {
			t.Fatalf("want 1044 naming identity and backend, got %v", err)
		}
	})

	t.Run("unknown backend gets 1044", func(t *testing.T) {
		_, err := openMy(t, fmt.Sprintf("app@tcp(127.0.0.1:%d)/nosuch", s.sidecar)).ExecContext(ctx, "select 1")
		if myCode(err) != 1044 || !strings.Contains(err.Error(), `"app"`) || !strings.Contains(err.Error(), "nosuch") {
			t.Fatalf("want 1044 naming identity and backend, got %v", err)
		}
		// No database: app has one mysql backend, so that one (as the
		// mariadb client's Ctrl-C KILL connection needs).
		out, err := mariadbCLI(t, "-h", "127.0.0.1", "-P", port, "-u", "app", "-e", "select database()")
		if err != nil || out != "appdb" {
			t.Fatalf("no database: want the only granted backend appdb, got %v: %s", err, out)
		}
	})

	t.Run("unix socket peer identity", func(t *testing.T) {
		out, err := mariadbCLI(t, "--socket="+s.sock, "-u", "whoever", "-D", "appdb", "-e", "select 'ok'")
		if err != nil || out != "ok" {
			t.Fatalf("mariadb over unix socket: %q %v", out, err)
		}
		if log := s.proxy.log(); !strings.Contains(log, `"identity":"orders"`) {
			t.Fatal("no session of identity orders (unix uid) in the log")
		}
	})

	t.Run("caching_sha2_password client", func(t *testing.T) {
		out, err := mariadbCLI(t, "-h", "127.0.0.1", "-P", port, "-u", "app", "-D", "appdb",
			"--default-auth=caching_sha2_password", "--plugin-dir=/usr/lib/x86_64-linux-gnu/libmariadb3/plugin", "-e", "select 'sha2'")
		if err != nil || out != "sha2" {
			t.Fatalf("mariadb with caching_sha2_password: %q %v", out, err)
		}
	})

	t.Run("metrics carry protocol mysql", func(t *testing.T) {
		if n := metricSum(t, s.proxy, "dbproxy_client_sessions_total{", `protocol="mysql"`); n == 0 {
			t.Fatal("no dbproxy_client_sessions_total with protocol=\"mysql\"")
		}
	})

	t.Run("log holds no password or token", func(t *testing.T) {
		log := s.proxy.log()
		tok, _ := os.ReadFile(filepath.Join(s.dir, "vault-token"))
		if strings.Contains(log, strings.TrimSpace(string(tok))) {
			t.Fatal("the Vault token appears in dbproxy's log")
		}
		if strings.Contains(strings.ToLower(log), `"password"`) {
			t.Fatal("a password field appears in dbproxy's log")
		}
		if !strings.Contains(log, "session end") || !strings.Contains(log, `"logger":"mysql"`) {
			t.Fatal("no mysql session end log line")
		}
	})
}

// sessionsJSON is the body of /v1/sessions.
func (s *myStack) sessionsJSON(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(s.proxy.admin + "/v1/sessions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (s *myStack) sessionStates(t *testing.T) string {
	t.Helper()
	var ss []struct {
		Protocol string `json:"protocol"`
		State    string `json:"state"`
	}
	if err := json.Unmarshal([]byte(s.sessionsJSON(t)), &ss); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range ss {
		out = append(out, x.Protocol+":"+x.State)
	}
	return strings.Join(out, ", ")
}

// connectionID finds the proxy-issued connection id of the session whose
// upstream thread is tid.
func (s *myStack) connectionID(t *testing.T, tid uint32) uint32 {
	t.Helper()
	var ss []struct {
		ConnectionID uint32 `json:"connection_id"`
		ThreadID     uint32 `json:"thread_id"`
	}
	if err := json.Unmarshal([]byte(s.sessionsJSON(t)), &ss); err != nil {
		t.Fatal(err)
	}
	for _, x := range ss {
		if x.ThreadID == tid {
			return x.ConnectionID
		}
	}
	t.Fatalf("no session with thread id %d", tid)
	return 0
}

// tlsConfigFor registers a go-sql-driver TLS config that trusts ca.
func tlsConfigFor(t *testing.T, name string, ca *testCA, cert, key string) string {
	t.Helper()
	pem, err := os.ReadFile(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tc := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	if err := mysql.RegisterTLSConfig(name, tc); err != nil {
		t.Fatal(err)
	}
	return name
}

// closedWith reads from m until the proxy closes the connection and
// returns the error code of an ERR packet it sent before (0 if none). It
// fails if the connection is still open after 10 seconds.
func closedWith(t *testing.T, m *rawMy) uint16 {
	t.Helper()
	_ = m.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var code uint16
	for {
		_, b, err := m.tryRead()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open 10s after a malformed packet")
			}
			return code
		}
		if len(b) >= 3 && b[0] == 0xff && code == 0 {
			code = binary.LittleEndian.Uint16(b[1:])
		}
	}
}

func TestMySQLMalformedPackets(t *testing.T) {
	s := startMyStack(t)
	addr := fmt.Sprintf("127.0.0.1:%d", s.sidecar)
	hdr := func(n int, seq byte) []byte { return []byte{byte(n), byte(n >> 8), byte(n >> 16), seq} }
	rssBefore := proxyRSS(t, s.proxy)

	for _, phase := range []string{"handshake", "command"} {
		open := func(t *testing.T) *rawMy {
			if phase == "handshake" {
				return rawMyDial(t, addr)
			}
			return rawMyLogin(t, s.sidecar, "app", "appdb")
		}
		seq := byte(1) // the handshake response's sequence number
		if phase == "command" {
			seq = 0
		}
		t.Run(phase+": truncated header", func(t *testing.T) {
			m := open(t)
			_, _ = m.c.Write([]byte{5, 0})
			_ = m.c.(*net.TCPConn).CloseWrite()
			closedWith(t, m)
		})
		t.Run(phase+": length beyond the packet", func(t *testing.T) {
			m := open(t)
			_, _ = m.c.Write(append(hdr(1000, seq), "0123456789"...))
			_ = m.c.(*net.TCPConn).CloseWrite()
			closedWith(t, m)
		})
		t.Run(phase+": zero length", func(t *testing.T) {
			m := open(t)
			_, _ = m.c.Write(hdr(0, seq))
			want := uint16(1043) // bad handshake
			if phase == "command" {
				want = 1835 // malformed packet
			}
			if code := closedWith(t, m); code != want {
				t.Fatalf("want ERR %d, got %d", want, code)
			}
		})
		t.Run(phase+": sequence out of order", func(t *testing.T) {
			m := open(t)
			payload := myHandshakeResponse("app", "appdb")
			if phase == "command" {
				payload = append([]byte{3}, "select 1"...)
			}
			m.write(t, seq+4, payload)
			if code := closedWith(t, m); code != 1156 {
				t.Fatalf("want ERR 1156 packets out of order, got %d", code)
			}
		})
		t.Run(phase+": 16 MB+ multi-packet payload", func(t *testing.T) {
			m := open(t)
			// A COM_QUERY of 17 MB: one full 16 MB packet and the rest.
			body := make([]byte, 17<<20)
			copy(body, "\x03select '")
			for i := 9; i < len(body)-1; i++ {
				body[i] = 'a'
			}
			body[len(body)-1] = '\''
			go func() {
				_, _ = m.c.Write(append(hdr(0xffffff, seq), body[:0xffffff]...))
				_, _ = m.c.Write(append(hdr(len(body)-0xffffff, seq+1), body[0xffffff:]...))
			}()
			code := closedWith(t, m)
			if code == 0 {
				t.Fatal("closed without an ERR packet")
			}
			t.Logf("ERR %d", code)
		})
	}
	if grew := proxyRSS(t, s.proxy) - rssBefore; grew > 64<<20 {
		t.Fatalf("proxy RSS grew by %d bytes", grew)
	}
	var n int
	if err := openMy(t, s.dsn(s.sidecar, "")).QueryRow("select 1").Scan(&n); err != nil {
		t.Fatalf("proxy no longer serves: %v", err)
	}
	if !strings.Contains(s.proxy.log(), `"result":"client_error"`) {
		t.Fatal("no session ended with result client_error")
	}
}

// myLeaseStack is a dbproxy in front of MariaDB with a short-lived role.
type myLeaseStack struct {
	proxy   *proxyProc
	port    int
	role    string
	auditTo string
}

func startMyLeaseStack(t *testing.T, role string, ttl, maxTTL time.Duration) *myLeaseStack {
	t.Helper()
	ctx := context.Background()
	if err := Vault.ConfigureMySQL(ctx, Maria, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: ttl, MaxTTL: maxTTL}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &myLeaseStack{port: freePort(t), role: role, auditTo: filepath.Join(dir, "audit.log")}
	auditPath := "dbproxy-" + role
	if err := Vault.Client.Sys().EnableAuditWithOptions(auditPath, &api.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": s.auditTo},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Vault.Client.Sys().DisableAudit(auditPath) })
	cfg := fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 1s
  auth: { method: token, token_file: %q }
backends:
  appdb:
    protocol: mysql
    address: %s
    vault_role: %s
    pool: { max_connections: 20 }
    lease: { safety_margin: 3s, revoke_grace: 2s, max_issue_per_minute: 20 }
listeners:
  - { name: sidecar, protocol: mysql, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, vaultTokenFile(t, dir), Maria.Addr(), role, s.port)
	s.proxy = startProxy(t, dir, cfg, true)
	return s
}

// myTransaction opens a session, runs one binary prepared statement and
// returns the Vault user it ran as.
func myTransaction(dsn string, i int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return "", err
	}
	defer db.Close()
	var user string
	var n int
	if err := db.QueryRowContext(ctx, "select current_user(), ? + 1", i).Scan(&user, &n); err != nil {
		return "", err
	}
	if n != i+1 {
		return "", fmt.Errorf("wrong result %d for %d", n, i)
	}
	return strings.SplitN(user, "@", 2)[0], nil
}

// mysqlVaultUsers lists the MariaDB users Vault made for role.
// waitOnlyLiveMySQLUsers waits up to 20s until mysql.user holds no
// Vault-made user of role beyond those of p's live generations (at most
// two: one more during a rotation).
func waitOnlyLiveMySQLUsers(t *testing.T, p *proxyProc, role string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		live := map[string]bool{}
		gens := p.leases(t)
		for _, g := range gens {
			live[g.Username] = true
		}
		users := mysqlVaultUsers(t, role)
		orphans := 0
		for _, u := range users {
			if !live[u] {
				orphans++
			}
		}
		if len(users) == 0 {
			t.Fatal("no Vault-made user found in mysql.user: the pattern does not match Vault's user names")
		}
		if orphans == 0 && len(gens) <= 2 {
			t.Logf("users left: %v; live generations: %d", users, len(gens))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("users %v still exist with live generations %+v", users, gens)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func mysqlVaultUsers(t *testing.T, role string) []string {
	t.Helper()
	db, err := sql.Open("mysql", Maria.AdminDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Vault's default username template truncates the role name to 10.
	rows, err := db.Query("select user from mysql.user where user like ? order by 1", "v-%-"+role[:min(10, len(role))]+"-%")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func TestMySQLRotationUnderLoad(t *testing.T) {
	s := startMyLeaseStack(t, "mysql-rot", shortTTL, shortMaxTTL)
	dsn := fmt.Sprintf("app@tcp(127.0.0.1:%d)/appdb?timeout=10s", s.port)
	start := time.Now()
	l := &load{users: map[string]bool{}, stop: make(chan struct{})}
	for c := range 8 {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				user, err := myTransaction(dsn, c*1_000_000+i)
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					l.errs = append(l.errs, err.Error())
				} else {
					l.ok.Add(1)
					l.users[user] = true
				}
				l.mu.Unlock()
				if err != nil {
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
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
	if creds := auditCount(t, s.auditTo, Mount+"/creds/"+s.role); creds != len(l.users) && creds != len(l.users)+1 {
		t.Fatalf("Vault saw %d creds reads for %d generations used by 8 clients; want one per generation", creds, len(l.users))
	}
	// Superseded generations are revoked once drained: only the live
	// generation's user (two during a rotation) remains in mysql.user.
	waitOnlyLiveMySQLUsers(t, s.proxy, s.role)
	if revokes := auditCount(t, s.auditTo, "sys/leases/revoke"); revokes < 3 {
		t.Fatalf("dbproxy revoked %d leases; want every superseded one (>= 3)", revokes)
	}
}

func TestMySQLPinnedSessionClosedBeforeHardEnd(t *testing.T) {
	s := startMyLeaseStack(t, "mysql-idle", shortTTL, shortMaxTTL)
	m := rawMyLogin(t, s.port, "app", "appdb")
	defer m.c.Close()
	// An idle session moves to the new credential; one with a temporary
	// table cannot, and is closed at the drain deadline.
	m.write(t, 0, append([]byte{0x03}, "CREATE TEMPORARY TABLE pinned (a INT)"...))
	if _, b := m.read(t); len(b) == 0 || b[0] != 0x00 {
		t.Fatalf("CREATE TEMPORARY TABLE: %q", b)
	}
	if ss := s.proxy.sessions(t); len(ss) != 1 || ss[0].Pinned != "a temporary table" {
		t.Fatalf("/v1/sessions: %+v, want one session pinned by a temporary table", ss)
	}
	gens := s.proxy.leases(t)
	if len(gens) == 0 || gens[len(gens)-1].HardEnd.IsZero() {
		t.Fatalf("want a generation with a known hard end, got %+v", gens)
	}
	hardEnd := gens[len(gens)-1].HardEnd
	_ = m.c.SetReadDeadline(time.Now().Add(shortMaxTTL + 5*time.Second))
	code, msg := m.errPacket(t)
	got := time.Now()
	if code != 1927 || !strings.Contains(msg, "end of its lease") || !strings.Contains(msg, "reconnecting is safe") {
		t.Fatalf("want ERR 1927 about the lease end, got %d %q", code, msg)
	}
	if !got.Before(hardEnd) {
		t.Fatalf("closed at %v, after the credential's hard end %v", got, hardEnd)
	}
	if _, err := myTransaction(fmt.Sprintf("app@tcp(127.0.0.1:%d)/appdb?timeout=10s", s.port), 1); err != nil {
		t.Fatalf("reconnect failed: %v", err)
	}
}

func TestMySQLShutdown(t *testing.T) {
	s := startMyLeaseStack(t, "mysql-stop", time.Hour, 2*time.Hour)
	m := rawMyLogin(t, s.port, "app", "appdb")
	defer m.c.Close()
	if len(mysqlVaultUsers(t, s.role)) != 1 {
		t.Fatalf("want the live generation's user, got %v", mysqlVaultUsers(t, s.role))
	}
	if err := s.proxy.stop(t); err != nil {
		t.Fatalf("dbproxy exit: %v", err)
	}
	code, msg := m.errPacket(t)
	if code != 1053 || !strings.Contains(msg, "shutting down") {
		t.Fatalf("idle session at shutdown: want ERR 1053, got %d %q", code, msg)
	}
	if users := mysqlVaultUsers(t, s.role); len(users) != 0 {
		t.Fatalf("users left after a graceful stop: %v (lease should be revoked)", users)
	}
}
