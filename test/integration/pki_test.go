package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

const pkiMount = "pki-it"

// pkiPolicy is dbproxyPolicy plus what listener certificates from Vault
// PKI need (docs/vault-setup.md).
const pkiPolicy = dbproxyPolicy + `
path "pki-it/issue/dbproxy" { capabilities = ["create", "update"] }
`

// mountPKI mounts a PKI engine in the dev server with a root CA and role
// dbproxy (localhost and 127.0.0.1, at most 1m), once per run.
func mountPKI(t *testing.T) *x509.CertPool {
	t.Helper()
	ctx := context.Background()
	mounts, err := Vault.Client.Sys().ListMountsWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mounts[pkiMount+"/"]; !ok {
		if err := Vault.Client.Sys().MountWithContext(ctx, pkiMount, &api.MountInput{Type: "pki", Config: api.MountConfigInput{MaxLeaseTTL: "2h"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := Vault.Client.Logical().Write(pkiMount+"/root/generate/internal", map[string]any{"common_name": "dbproxy-it root", "ttl": "1h", "key_type": "ec"}); err != nil {
			t.Fatal(err)
		}
		if _, err := Vault.Client.Logical().Write(pkiMount+"/roles/dbproxy", map[string]any{
			"allowed_domains": "localhost,svc-pki", "allow_bare_domains": true, "allow_localhost": true,
			"allow_ip_sans": true, "max_ttl": "1m", "key_type": "ec", "client_flag": true, "server_flag": true,
		}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := Vault.Client.Logical().ReadRawWithContext(ctx, pkiMount+"/ca/pem")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	pemBytes, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("%s/ca/pem: no certificate", pkiMount)
	}
	return pool
}

// serialOf is the serial of the certificate the proxy served to c.
func serialOf(t *testing.T, c *pgx.Conn) string {
	t.Helper()
	tc, ok := c.PgConn().Conn().(*tls.Conn)
	if !ok {
		t.Fatalf("connection is %T, not TLS", c.PgConn().Conn())
	}
	return tc.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestListenerCertFromVaultPKI: a listener's certificate comes from a
// real PKI engine with a 10s TTL. A session opened on the first
// certificate keeps working across the renewal (at ~2/3 of its life);
// a new session sees the new serial. An mtls listener verifies client
// certificates with the mount's CA: one issued by the mount logs in,
// none is refused.
func TestListenerCertFromVaultPKI(t *testing.T) {
	roots := mountPKI(t)
	ctx := context.Background()
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
	port, mport := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`
vault:
  address: %s
  auth: { method: token, token_file: %q }
backends:
  appdb:
    protocol: postgres
    address: %s
    vault_role: %s
listeners:
  - name: side
    protocol: postgres
    address: "127.0.0.1:%d"
    identity: app
    tls:
      required: true
      vault_pki: { mount: %s, role: dbproxy, common_name: localhost, ip_sans: [ 127.0.0.1 ], ttl: 10s }
  - name: mesh
    protocol: postgres
    address: "127.0.0.1:%d"
    auth: mtls
    tls:
      vault_pki: { mount: %s, role: dbproxy, common_name: localhost, ip_sans: [ 127.0.0.1 ], ttl: 1m, client_ca: true }
identities:
  app:
    grants: [ { backend: appdb } ]
  pki-client:
    match: { cert_cn: svc-pki }
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, tokFile, PG.Addr(), PGRole, port, pkiMount, mport, pkiMount)
	start := time.Now()
	p := startProxy(t, dir, cfg, true)
	t.Logf("ready in %v", time.Since(start))

	dial := func(port int, cert *tls.Certificate) (*pgx.Conn, error) {
		c, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=verify-full connect_timeout=10", port))
		if err != nil {
			t.Fatal(err)
		}
		c.TLSConfig = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if cert != nil {
			c.TLSConfig.Certificates = []tls.Certificate{*cert}
		}
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return pgx.ConnectConfig(cctx, c)
	}
	query := func(c *pgx.Conn) error {
		var n int
		return c.QueryRow(ctx, "select 41 + 1").Scan(&n)
	}

	first, err := dial(port, nil)
	if err != nil {
		t.Fatalf("TLS connect with the Vault-issued certificate: %v", err)
	}
	defer first.Close(ctx)
	if err := query(first); err != nil {
		t.Fatal(err)
	}
	serial1 := serialOf(t, first)

	// A new session every 500ms until one gets another certificate.
	var serial2 string
	deadline := time.Now().Add(30 * time.Second)
	for serial2 == "" || serial2 == serial1 {
		if time.Now().After(deadline) {
			t.Fatalf("no renewed certificate within 30s (still serial %s)", serial1)
		}
		time.Sleep(500 * time.Millisecond)
		c, err := dial(port, nil)
		if err != nil {
			t.Fatalf("new session during renewals: %v", err)
		}
		serial2 = serialOf(t, c)
		c.Close(ctx)
	}
	t.Logf("renewed certificate (serial %s, was %s) seen %v after start", serial2, serial1, time.Since(start))
	if err := query(first); err != nil {
		t.Fatalf("the session opened on the first certificate, after the renewal: %v", err)
	}
	if n := metricSum(t, p, "dbproxy_tls_certificates_issued_total", `certificate="listener/side"`); n < 2 {
		t.Fatalf("certificates issued for listener side = %v, want at least 2", n)
	}

	// mtls with the mount's CA: a client certificate from the same PKI.
	sec, err := Vault.Client.Logical().Write(pkiMount+"/issue/dbproxy", map[string]any{"common_name": "svc-pki", "ttl": "1m"})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair([]byte(sec.Data["certificate"].(string)), []byte(sec.Data["private_key"].(string)))
	if err != nil {
		t.Fatal(err)
	}
	mc, err := dial(mport, &kp)
	if err != nil {
		t.Fatalf("mtls with a client certificate from the PKI mount: %v", err)
	}
	var user string
	if err := mc.QueryRow(ctx, "select current_setting('application_name')").Scan(&user); err != nil || !strings.HasPrefix(user, "dbproxy:pki-client") {
		t.Fatalf("mtls session: application_name %q, %v", user, err)
	}
	mc.Close(ctx)
	if c, err := dial(mport, nil); err == nil {
		c.Close(ctx)
		t.Fatal("mtls listener accepted a client without a certificate")
	}
}

// pkiIssue issues a certificate from the test PKI mount as an operator.
func pkiIssue(t *testing.T, cn string, ipSANs string) (certPEM, keyPEM, caPEM string) {
	t.Helper()
	req := map[string]any{"common_name": cn, "ttl": "1h"}
	if ipSANs != "" {
		req["ip_sans"] = ipSANs
	}
	sec, err := Vault.Client.Logical().Write(pkiMount+"/issue/dbproxy", req)
	if err != nil {
		t.Fatal(err)
	}
	return sec.Data["certificate"].(string), sec.Data["private_key"].(string), sec.Data["issuing_ca"].(string)
}

// pgRequireClientCert turns SSL on in the shared PostgreSQL with a server
// certificate from the test PKI and makes logins of user need a client
// certificate from the same CA (hostssl ... clientcert=verify-ca), until
// the test ends. Other users are unaffected.
func pgRequireClientCert(t *testing.T, user string) {
	t.Helper()
	ctx := context.Background()
	certPEM, keyPEM, caPEM := pkiIssue(t, "localhost", "127.0.0.1")
	st, err := os.Stat(PG.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := int(st.Sys().(*syscall.Stat_t).Uid), int(st.Sys().(*syscall.Stat_t).Gid)
	files := map[string]string{"it-server.crt": certPEM, "it-server.key": keyPEM, "it-ca.crt": caPEM}
	for name, content := range files {
		path := filepath.Join(PG.DataDir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, uid, gid); err != nil && os.Geteuid() == 0 {
			t.Fatal(err)
		}
	}
	hbaPath := filepath.Join(PG.DataDir, "pg_hba.conf")
	hba, err := os.ReadFile(hbaPath)
	if err != nil {
		t.Fatal(err)
	}
	rules := fmt.Sprintf("hostssl all %s 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\nhost all %s 127.0.0.1/32 reject\n", user, user)
	if err := os.WriteFile(hbaPath, append([]byte(rules), hba...), 0o600); err != nil {
		t.Fatal(err)
	}
	set := []string{
		"ALTER SYSTEM SET ssl_cert_file = 'it-server.crt'", "ALTER SYSTEM SET ssl_key_file = 'it-server.key'",
		"ALTER SYSTEM SET ssl_ca_file = 'it-ca.crt'", "ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()",
	}
	t.Cleanup(func() {
		_ = os.WriteFile(hbaPath, hba, 0o600)
		for _, q := range []string{"ALTER SYSTEM RESET ssl", "ALTER SYSTEM RESET ssl_cert_file", "ALTER SYSTEM RESET ssl_key_file",
			"ALTER SYSTEM RESET ssl_ca_file", "SELECT pg_reload_conf()"} {
			if err := PG.Exec(ctx, q); err != nil {
				t.Error(err)
			}
		}
	})
	for _, q := range set {
		if err := PG.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// pg_reload_conf only signals: wait until the server has SSL on.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := connect(t, PG.SuperDSN())
		var on string
		if err := c.QueryRow(ctx, "show ssl").Scan(&on); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
		if on == "on" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssl still %q after reload:\n%s", on, PG.LogTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestUpstreamClientCertFromVaultPKI: the database requires a client
// certificate from the PKI mount for the backend's user; dbproxy presents
// one issued by Vault (backends.*.tls.vault_pki) and verifies the server
// with the mount's CA. The user's password comes from a static role.
func TestUpstreamClientCertFromVaultPKI(t *testing.T) {
	const user, role = "dbp_mtls_pg", "pg-mtls-static"
	mountPKI(t)
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
	pgRequireClientCert(t, user)
	password, _ := staticPassword(t, role)

	// Without a client certificate the database refuses the user.
	if c, err := pgx.Connect(ctx, PG.DSN(user, password, "appdb")+" sslmode=require"); err == nil {
		c.Close(ctx)
		t.Fatal("PostgreSQL let the user in without a client certificate")
	}

	dir := t.TempDir()
	_, _, caPEM := pkiIssue(t, "localhost", "")
	caFile := filepath.Join(dir, "pki-ca.pem")
	if err := os.WriteFile(caFile, []byte(caPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	cfg := fmt.Sprintf(`
vault:
  address: %s
  auth: { method: token, token_file: %q }
backends:
  appdb:
    protocol: postgres
    address: %s
    vault_static_role: %s
    tls:
      mode: verify-full
      ca_file: %q
      vault_pki: { mount: %s, role: dbproxy, common_name: svc-pki, ttl: 1m }
listeners:
  - { name: side, protocol: postgres, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, vaultTokenFile(t, dir), PG.Addr(), role, caFile, pkiMount, port)
	startProxy(t, dir, cfg, true)
	c := connect(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", port))
	var ssl bool
	var dn, who string
	if err := c.QueryRow(ctx, "select s.ssl, coalesce(s.client_dn, ''), current_user from pg_stat_ssl s where s.pid = pg_backend_pid()").Scan(&ssl, &dn, &who); err != nil {
		t.Fatal(err)
	}
	if !ssl || !strings.Contains(dn, "CN=svc-pki") || who != user {
		t.Fatalf("upstream session: ssl %v, client DN %q, user %q", ssl, dn, who)
	}
}
