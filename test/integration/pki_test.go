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
