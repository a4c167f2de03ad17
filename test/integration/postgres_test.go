package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// pgStack is one dbproxy in front of the shared PostgreSQL, with a
// sidecar listener, an mTLS listener and a unix socket listener.
type pgStack struct {
	proxy      *proxyProc
	dir        string
	sidecar    int // port; identity "app"
	mtls       int // port; identities by certificate
	tlsPort    int // port; server TLS, identity "app"
	sockDir    string
	sockPort   int
	ca, evilCA *testCA
}

func startPGStack(t *testing.T) *pgStack {
	t.Helper()
	dir := t.TempDir()
	s := &pgStack{dir: dir, sidecar: freePort(t), mtls: freePort(t), tlsPort: freePort(t), sockDir: dir, sockPort: freePort(t)}
	s.ca = newCA(t, dir, "good")
	s.evilCA = newCA(t, dir, "evil")
	srvCert, srvKey := s.ca.issue(t, dir, "server", true, "localhost")
	cfg := fmt.Sprintf(`
vault:
  address: %s
  auth: { method: token, token_file: %s }
backends:
  appdb:
    protocol: postgres
    address: %s
    database: appdb
    vault_role: %s
    pool: { max_connections: 20, checkout_timeout: 3s }
  otherdb:
    protocol: postgres
    address: %s
    database: appdb
    vault_role: %s
listeners:
  - { name: sidecar, protocol: postgres, address: "127.0.0.1:%d", identity: app }
  - name: tls
    protocol: postgres
    address: "127.0.0.1:%d"
    identity: app
    tls: { cert_file: %s, key_file: %s, required: true }
  - name: mesh
    protocol: postgres
    address: "127.0.0.1:%d"
    auth: mtls
    tls: { cert_file: %s, key_file: %s, client_ca_file: %s, require_client_cert: true }
  - { name: local, protocol: postgres, unix_socket: %s, auth: peer }
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
`, Vault.Addr, vaultTokenFile(t, dir), PG.Addr(), PGRole, PG.Addr(), PGRole,
		s.sidecar, s.tlsPort, srvCert, srvKey, s.mtls, srvCert, srvKey, s.ca.CertPEM,
		filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(s.sockPort)), os.Getuid())
	s.proxy = startProxy(t, dir, cfg, true)
	return s
}

func (s *pgStack) dsn(port int, extra string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable %s", port, extra)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %q: %v", dsn, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func psql(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{"-X", "-At", "-v", "ON_ERROR_STOP=1"}, args...)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestPostgresProxy(t *testing.T) {
	s := startPGStack(t)
	ctx := context.Background()

	t.Run("psql sees a Vault user and pg_stat_activity names the identity", func(t *testing.T) {
		out, err := psql(t, s.dsn(s.sidecar, "application_name=orders-api"), "-c",
			"select current_user, (select application_name from pg_stat_activity where pid = pg_backend_pid())")
		if err != nil {
			t.Fatalf("psql: %v: %s", err, out)
		}
		parts := strings.Split(out, "|")
		if len(parts) != 2 || !strings.HasPrefix(parts[0], "v-") || parts[1] != "dbproxy:app:orders-api" {
			t.Fatalf("got %q, want a v-... Vault user and application_name dbproxy:app:orders-api", out)
		}
	})

	t.Run("pgx simple, extended and prepared statements", func(t *testing.T) {
		c := connect(t, s.dsn(s.sidecar, ""))
		var n int
		if err := c.QueryRow(ctx, "select $1::int + $2::int", 40, 2).Scan(&n); err != nil || n != 42 {
			t.Fatalf("extended query: %d, %v", n, err)
		}
		if _, err := c.Prepare(ctx, "add", "select $1::int * 2"); err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			if err := c.QueryRow(ctx, "add", i).Scan(&n); err != nil || n != 2*i {
				t.Fatalf("prepared %d: %d, %v", i, n, err)
			}
		}
		res, err := c.PgConn().Exec(ctx, "select 1; select 2").ReadAll()
		if err != nil || len(res) != 2 || string(res[1].Rows[0][0]) != "2" {
			t.Fatalf("multi-statement simple query: %v %v", res, err)
		}
		_, err = c.Exec(ctx, "select 1/0")
		if sqlstate(err) != "22012" {
			t.Fatalf("upstream error not passed through: %v", err)
		}
		if err := c.QueryRow(ctx, "select 7").Scan(&n); err != nil || n != 7 {
			t.Fatalf("session unusable after error: %v", err)
		}
	})

	t.Run("COPY in and out", func(t *testing.T) {
		c := connect(t, s.dsn(s.sidecar, ""))
		if _, err := c.Exec(ctx, "create temp table cp (id int, name text)"); err != nil {
			t.Fatal(err)
		}
		var in strings.Builder
		for i := range 10000 {
			fmt.Fprintf(&in, "%d\tname-%d\n", i, i)
		}
		tag, err := c.PgConn().CopyFrom(ctx, strings.NewReader(in.String()), "copy cp from stdin")
		if err != nil || tag.RowsAffected() != 10000 {
			t.Fatalf("copy in: %v %v", tag, err)
		}
		var out strings.Builder
		tag, err = c.PgConn().CopyTo(ctx, &out, "copy (select * from cp order by id) to stdout")
		if err != nil || tag.RowsAffected() != 10000 || out.String() != in.String() {
			t.Fatalf("copy out: %v %v (len %d vs %d)", tag, err, out.Len(), in.Len())
		}
	})

	t.Run("100 MB result streams through", func(t *testing.T) {
		c := connect(t, s.dsn(s.sidecar, ""))
		rows, err := c.Query(ctx, "select repeat('x', 1000) from generate_series(1, 100000)")
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for rows.Next() {
			total += len(rows.RawValues()[0])
		}
		if err := rows.Err(); err != nil || total != 100_000_000 {
			t.Fatalf("read %d bytes, err %v", total, err)
		}
	})

	t.Run("LISTEN and NOTIFY", func(t *testing.T) {
		l := connect(t, s.dsn(s.sidecar, ""))
		n := connect(t, s.dsn(s.sidecar, ""))
		if _, err := l.Exec(ctx, "listen dbproxy_test"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.Exec(ctx, "notify dbproxy_test, 'hello'"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		got, err := l.WaitForNotification(wctx)
		if err != nil || got.Payload != "hello" {
			t.Fatalf("notification: %v %v", got, err)
		}
	})

	t.Run("cancel via pgx", func(t *testing.T) {
		c := connect(t, s.dsn(s.sidecar, ""))
		go func() {
			time.Sleep(500 * time.Millisecond)
			_ = c.PgConn().CancelRequest(context.Background())
		}()
		start := time.Now()
		_, err := c.Exec(ctx, "select pg_sleep(20)")
		if sqlstate(err) != "57014" || time.Since(start) > 10*time.Second {
			t.Fatalf("want 57014 query_canceled quickly, got %v after %v", err, time.Since(start))
		}
		var n int
		if err := c.QueryRow(ctx, "select 1").Scan(&n); err != nil {
			t.Fatalf("session unusable after cancel: %v", err)
		}
	})

	t.Run("cancel via psql SIGINT", func(t *testing.T) {
		cmd := exec.Command("psql", "-X", "-At", s.dsn(s.sidecar, ""), "-c", "select pg_sleep(20)")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("psql still running 10s after SIGINT: cancel not forwarded; output %q", out.String())
		}
		if !strings.Contains(out.String(), "canceling statement due to user request") {
			t.Fatalf("psql output %q does not show the cancel", out.String())
		}
	})

	t.Run("cancel with an unknown key does nothing", func(t *testing.T) {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.sidecar))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		buf, _ := (&pgproto3.CancelRequest{ProcessID: 12345, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
		if _, err := conn.Write(buf); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(make([]byte, 16))
		if n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("want a silent close, got %d bytes, %v", n, err)
		}
	})

	t.Run("TLS verify-full against the proxy certificate", func(t *testing.T) {
		c := connect(t, fmt.Sprintf("host=localhost port=%d dbname=appdb user=app sslmode=verify-full sslrootcert=%s", s.tlsPort, s.ca.CertPEM))
		var n int
		if err := c.QueryRow(ctx, "select 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if _, ok := c.PgConn().Conn().(*tls.Conn); !ok {
			t.Fatalf("client connection is %T, not TLS", c.PgConn().Conn())
		}
		_, err := pgx.Connect(ctx, s.dsn(s.tlsPort, ""))
		if sqlstate(err) != "28000" || !strings.Contains(err.Error(), "requires TLS") {
			t.Fatalf("plaintext on a TLS-required listener: want 28000 'requires TLS', got %v", err)
		}
	})

	t.Run("mTLS identity from SPIFFE ID", func(t *testing.T) {
		cert, key := s.ca.issue(t, s.dir, "orders", false, "orders-client", "spiffe://test/orders")
		c := connect(t, fmt.Sprintf("host=localhost port=%d dbname=appdb user=x sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s application_name=m", s.mtls, s.ca.CertPEM, cert, key))
		var app string
		if err := c.QueryRow(ctx, "select application_name from pg_stat_activity where pid = pg_backend_pid()").Scan(&app); err != nil || app != "dbproxy:orders:m" {
			t.Fatalf("application_name %q, %v", app, err)
		}
	})

	t.Run("mTLS with a certificate from another CA is rejected", func(t *testing.T) {
		cert, key := s.evilCA.issue(t, s.dir, "evil", false, "orders-client", "spiffe://test/orders")
		_, err := pgx.Connect(ctx, fmt.Sprintf("host=localhost port=%d dbname=appdb user=x sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s", s.mtls, s.ca.CertPEM, cert, key))
		if err == nil {
			t.Fatal("connected with a certificate from an untrusted CA")
		}
	})

	t.Run("identity without a grant for the backend gets 28000", func(t *testing.T) {
		cert, key := s.ca.issue(t, s.dir, "reporting", false, "reporting")
		_, err := pgx.Connect(ctx, fmt.Sprintf("host=localhost port=%d dbname=appdb user=x sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s", s.mtls, s.ca.CertPEM, cert, key))
		if sqlstate(err) != "28000" || !strings.Contains(err.Error(), "reporting") || !strings.Contains(err.Error(), "appdb") {
			t.Fatalf("want 28000 naming identity and backend, got %v", err)
		}
	})

	t.Run("unix socket peer identity", func(t *testing.T) {
		out, err := psql(t, fmt.Sprintf("host=%s port=%d dbname=appdb user=x", s.sockDir, s.sockPort), "-c",
			"select application_name from pg_stat_activity where pid = pg_backend_pid()")
		if err != nil || out != "dbproxy:orders:psql" {
			t.Fatalf("psql over unix socket: %q %v", out, err)
		}
	})

	t.Run("unknown backend gets 3D000", func(t *testing.T) {
		_, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=nosuch user=app sslmode=disable", s.sidecar))
		if sqlstate(err) != "3D000" {
			t.Fatalf("want 3D000, got %v", err)
		}
	})

	t.Run("replication connections are refused", func(t *testing.T) {
		_, err := pgconn.Connect(ctx, s.dsn(s.sidecar, "replication=database"))
		if sqlstate(err) != "0A000" || !strings.Contains(err.Error(), "replication") {
			t.Fatalf("want 0A000 about replication, got %v", err)
		}
	})

	t.Run("bytes after SSLRequest are refused", func(t *testing.T) {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.tlsPort))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		q, _ := (&pgproto3.Query{String: "select 1"}).Encode(nil)
		if _, err := conn.Write(append(ssl, q...)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		typ, body := readMsg(t, bufio.NewReader(conn))
		if typ != 'E' || !strings.Contains(string(body), "08P01") {
			t.Fatalf("want ErrorResponse 08P01, got %q %q", typ, body)
		}
	})

	t.Run("oversized message is refused without memory growth", func(t *testing.T) {
		before := proxyRSS(t, s.proxy)
		conn := rawStartup(t, s.sidecar)
		defer conn.Close()
		// Announce a 512 MiB Query and start sending it.
		hdr := []byte{'Q', 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], 512<<20)
		_, _ = conn.Write(hdr)
		_, _ = conn.Write(make([]byte, 1<<20))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		typ, body := readMsg(t, bufio.NewReader(conn))
		if typ != 'E' || !strings.Contains(string(body), "54000") {
			t.Fatalf("want ErrorResponse 54000, got %q %q", typ, body)
		}
		if grew := proxyRSS(t, s.proxy) - before; grew > 32<<20 {
			t.Fatalf("proxy RSS grew by %d bytes", grew)
		}
		var n int
		if err := connect(t, s.dsn(s.sidecar, "")).QueryRow(ctx, "select 1").Scan(&n); err != nil {
			t.Fatalf("proxy no longer serves: %v", err)
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
		if !strings.Contains(log, "session end") {
			t.Fatal("no session end log line")
		}
	})
}

// rawStartup opens a plaintext session as identity app and reads up to
// the first ReadyForQuery.
func rawStartup(t *testing.T, port int) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	sm, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "app", "database": "appdb"}}).Encode(nil)
	if _, err := conn.Write(sm); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	for {
		typ, body := readMsg(t, r)
		if typ == 'E' {
			t.Fatalf("startup failed: %q", body)
		}
		if typ == 'Z' {
			_ = conn.SetReadDeadline(time.Time{})
			return conn
		}
	}
}

func readMsg(t *testing.T, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		t.Fatalf("read message: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read message body: %v", err)
	}
	return hdr[0], body
}

// proxyRSS is the resident set size of the dbproxy process in bytes.
func proxyRSS(t *testing.T, p *proxyProc) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
