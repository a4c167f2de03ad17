package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"
)

// tokenStack is one dbproxy whose clients prove who they are with a Vault
// token or a JWT sent as the password: PostgreSQL and MySQL listeners with
// server TLS (not required, so that a client may try cleartext), and a
// PostgreSQL unix socket.
type tokenStack struct {
	proxy        *proxyProc
	dir          string
	pgTLS, myTLS int // ports
	sockDir      string
	sockPort     int
	ca           *testCA
	myTLSName    string // go-sql-driver TLS config trusting ca
	pgTLSOpts    string // libpq options for verify-full against ca
}

// startTokenStack starts dbproxy with listeners of the given auth (vault_token
// or jwt); listenerExtra is YAML added to each listener (the jwt block).
func startTokenStack(t *testing.T, auth, listenerExtra, identities string) *tokenStack {
	t.Helper()
	dir := t.TempDir()
	s := &tokenStack{dir: dir, pgTLS: freePort(t), myTLS: freePort(t), sockDir: dir, sockPort: freePort(t)}
	s.ca = newCA(t, dir, "token-ca")
	cert, key := s.ca.issue(t, dir, "server", true, "localhost")
	s.myTLSName = tlsConfigFor(t, "tok-"+strconv.Itoa(s.myTLS), s.ca, "", "")
	s.pgTLSOpts = fmt.Sprintf("sslmode=verify-full sslrootcert=%s", s.ca.CertPEM)
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
  mydb:
    protocol: mysql
    address: %s
    database: appdb
    vault_role: %s
listeners:
  - name: pg-tls
    protocol: postgres
    address: "127.0.0.1:%d"
    auth: %s
    tls: { cert_file: %s, key_file: %s }
%s
  - name: my-tls
    protocol: mysql
    address: "127.0.0.1:%d"
    auth: %s
    tls: { cert_file: %s, key_file: %s }
%s
  - name: pg-local
    protocol: postgres
    unix_socket: %s
    auth: %s
%s
identities:
%s
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, vaultTokenFile(t, dir), PG.Addr(), PGRole, Maria.Addr(), MySQLRole,
		s.pgTLS, auth, cert, key, listenerExtra,
		s.myTLS, auth, cert, key, listenerExtra,
		filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(s.sockPort)), auth, listenerExtra,
		identities)
	s.proxy = startProxy(t, dir, cfg, true)
	return s
}

func (s *tokenStack) pgDSN(token, extra string) string {
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app %s", s.pgTLS, extra)
	if token != "" {
		dsn += " password=" + token
	}
	return dsn
}

func (s *tokenStack) myDSN(token, params string) string {
	return fmt.Sprintf("app:%s@tcp(127.0.0.1:%d)/mydb?timeout=10s&%s", token, s.myTLS, params)
}

// psqlToken runs psql with the token in PGPASSWORD, as a user would.
func psqlToken(t *testing.T, token string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{"-X", "-At", "-v", "ON_ERROR_STOP=1"}, args...)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10", "PGPASSWORD="+token)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// mariadbToken runs the mariadb client with the token in MYSQL_PWD.
func mariadbToken(t *testing.T, token string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mariadb", append([]string{"--no-defaults", "--batch", "--skip-column-names", "--connect-timeout=10"}, args...)...)
	cmd.Env = append(os.Environ(), "MYSQL_PWD="+token)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// assertTokensNotLogged fails if any token, or the signature part of a
// JWT, appears in dbproxy's log.
func (s *tokenStack) assertTokensNotLogged(t *testing.T, tokens ...string) {
	t.Helper()
	log := s.proxy.log()
	if !strings.Contains(log, "client refused") {
		t.Fatal("the log has no refusal at all; is this the right log?")
	}
	for _, tok := range tokens {
		parts := []string{tok}
		if i := strings.LastIndexByte(tok, '.'); i > 0 && len(tok)-i > 16 {
			parts = append(parts, tok[i+1:]) // a JWT's signature
		}
		for _, p := range parts {
			if len(p) >= 16 && strings.Contains(log, p) {
				t.Errorf("dbproxy's log contains a token (or its signature) starting %q", p[:8])
			}
		}
	}
}

// waitClosedWith runs "select 1" on c until it fails (dbproxy closing the
// session) and returns that error; it gives up after limit.
func waitPGClosed(t *testing.T, c *pgx.Conn, limit time.Duration) error {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.Exec(ctx, "select 1")
		cancel()
		if err != nil {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("session still open after %s", limit)
	return nil
}

func waitMyClosed(t *testing.T, c *sql.Conn, limit time.Duration) error {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.ExecContext(ctx, "select 1")
		cancel()
		if err != nil {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("session still open after %s", limit)
	return nil
}

func myConn(t *testing.T, dsn string) (*sql.Conn, error) {
	t.Helper()
	db := openMy(t, dsn)
	db.SetMaxIdleConns(0)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	var user string
	if err := c.QueryRowContext(ctx, "select current_user()").Scan(&user); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(user, "v-") && !strings.HasPrefix(user, "v_") {
		t.Fatalf("mysql current_user %q is not a Vault user", user)
	}
	return c, nil
}

func pgConn(t *testing.T, dsn string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	var user string
	if err := c.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(user, "v-") {
		t.Fatalf("current_user %q is not a Vault user", user)
	}
	return c, nil
}

func wantRefused(t *testing.T, what string, err error, code string, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: connected; want refusal %s %q", what, code, msg)
	}
	if sqlstate(err) != code || !strings.Contains(err.Error(), msg) {
		t.Fatalf("%s: %v; want SQLSTATE %s with %q", what, err, code, msg)
	}
}

func wantMyRefused(t *testing.T, what string, err error, code uint16, msg string) {
	t.Helper()
	if myCode(err) != code || !strings.Contains(err.Error(), msg) {
		t.Fatalf("%s: %v; want error %d with %q", what, err, code, msg)
	}
}

// vaultClientToken creates an orphan token with policies and metadata.
func vaultClientToken(t *testing.T, ttl time.Duration, meta map[string]string, policies ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	no := false
	s, err := Vault.Client.Auth().Token().CreateOrphanWithContext(ctx, &api.TokenCreateRequest{
		Policies: policies, Metadata: meta, TTL: ttl.String(), Renewable: &no,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s.Auth.ClientToken
}

// entityToken creates Vault entity name with an alias on the token auth
// method and returns a token of that entity (through a token role that
// allows the alias).
func entityToken(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := Vault.Client.Logical()
	auths, err := Vault.Client.Sys().ListAuthWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ent, err := c.WriteWithContext(ctx, "identity/entity", map[string]any{"name": name})
	if err != nil {
		t.Fatal(err)
	}
	alias := name + "-alias"
	if _, err := c.WriteWithContext(ctx, "identity/entity-alias", map[string]any{
		"name": alias, "canonical_id": ent.Data["id"], "mount_accessor": auths["token/"].Accessor,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteWithContext(ctx, "auth/token/roles/"+name, map[string]any{
		"allowed_entity_aliases": []string{alias}, "orphan": true,
	}); err != nil {
		t.Fatal(err)
	}
	s, err := c.WriteWithContext(ctx, "auth/token/create/"+name, map[string]any{"entity_alias": alias, "ttl": "1h"})
	if err != nil {
		t.Fatal(err)
	}
	return s.Auth.ClientToken
}

// TestVaultTokenAuth: clients send a Vault token as their password; Vault
// (asked with that token) says which policies and metadata it carries,
// and the identity those map to gets a database credential. Bad tokens,
// tokens of nobody and tokens over cleartext get clear errors, sessions
// end when their token does, and no token reaches the log.
func TestVaultTokenAuth(t *testing.T) {
	ctx := context.Background()
	if err := Vault.Client.Sys().PutPolicyWithContext(ctx, "orders-db", `path "sys/nothing" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	named := entityToken(t, "billing-svc")
	s := startTokenStack(t, "vault_token", "", `
  orders:
    match: { vault_policy: orders-db, vault_metadata: { team: shop } }
    grants: [ { backend: appdb }, { backend: mydb } ]
  billing:
    match: { vault_entity: billing-svc }
    grants: [ { backend: appdb } ]
`)
	good := vaultClientToken(t, time.Hour, map[string]string{"team": "shop"}, "orders-db")
	otherTeam := vaultClientToken(t, time.Hour, map[string]string{"team": "bi"}, "orders-db")
	revoked := vaultClientToken(t, time.Hour, map[string]string{"team": "shop"}, "orders-db")
	if err := Vault.Client.Auth().Token().RevokeOrphanWithContext(ctx, revoked); err != nil {
		t.Fatal(err)
	}
	tokens := []string{good, otherTeam, revoked, named}

	// An entity's token, matched by the entity's name.
	if _, err := pgConn(t, s.pgDSN(named, s.pgTLSOpts)); err != nil {
		t.Fatalf("token of entity billing-svc: %v", err)
	}
	_, err := myConn(t, s.myDSN(named, "allowCleartextPasswords=true&tls="+s.myTLSName))
	wantMyRefused(t, "billing on mydb", err, 1044, `identity "billing" may not use backend "mydb"`)

	// psql over TLS and over the unix socket, with PGPASSWORD.
	out, err := psqlToken(t, good, "-c", "select current_user like 'v-%'", s.pgDSN("", s.pgTLSOpts))
	if err != nil || out != "t" {
		t.Fatalf("psql over TLS: %q, %v", out, err)
	}
	out, err = psqlToken(t, good, "-h", s.sockDir, "-p", strconv.Itoa(s.sockPort), "-U", "app", "-d", "appdb", "-c", "select 1")
	if err != nil || out != "1" {
		t.Fatalf("psql over the unix socket: %q, %v", out, err)
	}
	// Cleartext TCP: refused before the password is asked for.
	out, err = psqlToken(t, good, s.pgDSN("", "sslmode=disable"), "-c", "select 1")
	if err == nil || !strings.Contains(out, "only over TLS") {
		t.Fatalf("psql without TLS: %q, %v; want a refusal naming TLS", out, err)
	}

	// pgx, go-sql-driver.
	if _, err := pgConn(t, s.pgDSN(good, s.pgTLSOpts)); err != nil {
		t.Fatalf("pgx over TLS: %v", err)
	}
	if _, err := myConn(t, s.myDSN(good, "allowCleartextPasswords=true&tls="+s.myTLSName)); err != nil {
		t.Fatalf("go-sql-driver over TLS: %v", err)
	}
	_, err = myConn(t, s.myDSN(good, "allowCleartextPasswords=true"))
	wantMyRefused(t, "go-sql-driver without TLS", err, 1045, "only over TLS")
	myArgs := []string{"-h", "127.0.0.1", "-P", strconv.Itoa(s.myTLS), "-u", "app", "mydb", "-e", "select 1"}
	out, err = mariadbToken(t, good, append([]string{"--ssl", "--ssl-ca=" + s.ca.CertPEM}, myArgs...)...)
	if err != nil || out != "1" {
		t.Fatalf("mariadb client over TLS: %q, %v", out, err)
	}
	out, err = mariadbToken(t, good, append([]string{"--skip-ssl"}, myArgs...)...)
	if err == nil || !strings.Contains(out, "only over TLS") {
		t.Fatalf("mariadb client without TLS: %q, %v; want 1045 naming TLS", out, err)
	}

	_, err = pgConn(t, s.pgDSN(revoked, s.pgTLSOpts))
	wantRefused(t, "revoked token", err, "28000", "Vault does not accept this token")
	_, err = pgConn(t, s.pgDSN("hvs.not-a-real-token-at-all", s.pgTLSOpts))
	wantRefused(t, "made-up token", err, "28000", "Vault does not accept this token")
	_, err = pgConn(t, s.pgDSN(otherTeam, s.pgTLSOpts))
	wantRefused(t, "token of no identity", err, "28000", "no identity matches this Vault token")
	_, err = myConn(t, s.myDSN(revoked, "allowCleartextPasswords=true&tls="+s.myTLSName))
	wantMyRefused(t, "go-sql-driver, revoked token", err, 1045, "Vault does not accept this token")
	_, err = pgConn(t, s.pgDSN(strings.Repeat("x", 20000), s.pgTLSOpts))
	wantRefused(t, "oversized token", err, "28000", "at most 16384")

	// Sessions end when the token does. The token is made just now, so
	// that a slow machine still connects before it ends.
	short := vaultClientToken(t, 10*time.Second, map[string]string{"team": "shop"}, "orders-db")
	tokens = append(tokens, short)
	pc, err := pgConn(t, s.pgDSN(short, s.pgTLSOpts))
	if err != nil {
		t.Fatal(err)
	}
	mc, err := myConn(t, s.myDSN(short, "allowCleartextPasswords=true&tls="+s.myTLSName))
	if err != nil {
		t.Fatal(err)
	}
	err = waitPGClosed(t, pc, time.Minute)
	wantRefused(t, "postgres session past its token's TTL", err, "57P01", "your Vault token expired")
	// go-sql-driver sees the ERR 1927 waiting in the socket before it
	// sends the next query and reports a bad connection instead; the log
	// says why the session ended.
	_ = waitMyClosed(t, mc, time.Minute)
	if n := strings.Count(s.proxy.log(), `"result":"token_expired"`); n != 2 {
		t.Errorf("%d sessions ended with result token_expired; want 2 (postgres and mysql)", n)
	}
	s.assertTokensNotLogged(t, tokens...)
}

// jwtIssuer signs JWTs with keys it publishes as a JWKS over HTTP.
type jwtIssuer struct {
	keys map[string]jose.SigningKey // by kid
	jwks []byte
	url  string
}

func newJWTIssuer(t *testing.T) *jwtIssuer {
	t.Helper()
	rsk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	eck, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is := &jwtIssuer{keys: map[string]jose.SigningKey{
		"rsa-1": {Algorithm: jose.RS256, Key: rsk},
		"ec-1":  {Algorithm: jose.ES256, Key: eck},
	}}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: rsk.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
		{Key: eck.Public(), KeyID: "ec-1", Algorithm: "ES256", Use: "sig"},
	}}
	if is.jwks, err = json.Marshal(set); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(is.jwks)
	}))
	t.Cleanup(srv.Close)
	is.url = srv.URL + "/openid/v1/jwks"
	return is
}

const jwtTestIssuer = "https://issuer.test"

func (is *jwtIssuer) sign(t *testing.T, kid string, claims map[string]any) string {
	t.Helper()
	k, ok := is.keys[kid]
	if !ok { // a key the issuer never published
		rk, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		k = jose.SigningKey{Algorithm: jose.RS256, Key: rk}
	}
	sig, err := jose.NewSigner(k, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func jwtClaims(sub string, exp time.Time, extra ...any) map[string]any {
	c := map[string]any{"iss": jwtTestIssuer, "aud": []string{"dbproxy"}, "sub": sub, "exp": exp.Unix(), "iat": time.Now().Add(-time.Minute).Unix()}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i].(string)] = extra[i+1]
	}
	return c
}

// forged builds a token by hand for the attacks a library will not sign:
// alg none, and HS256 keyed with the issuer's public key.
func (is *jwtIssuer) forged(t *testing.T, alg string, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": alg, "kid": "rsa-1", "typ": "JWT"})
	c, _ := json.Marshal(claims)
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	if alg == "none" {
		return in + "."
	}
	pub, _ := x509.MarshalPKIXPublicKey(is.keys["rsa-1"].Key.(*rsa.PrivateKey).Public())
	m := hmac.New(sha256.New, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// TestJWTAuth: clients send a JWT (a Kubernetes service account token, a
// JWT-SVID) as their password; dbproxy verifies it against the issuer's
// JWKS fetched over HTTP and maps sub to an identity. Every kind of bad
// token gets its own clear error, sessions end at the token's exp, and
// neither a token nor a signature reaches the log.
func TestJWTAuth(t *testing.T) {
	is := newJWTIssuer(t)
	s := startTokenStack(t, "jwt", fmt.Sprintf(`    jwt: { issuer: %q, audience: dbproxy, jwks_url: %q, algorithms: [RS256, ES256] }`, jwtTestIssuer, is.url), `
  orders:
    match: { jwt_subject: "system:serviceaccount:shop:orders" }
    grants: [ { backend: appdb }, { backend: mydb } ]
  billing:
    match: { spiffe_id: "spiffe://test/billing" }
    grants: [ { backend: appdb } ]
`)
	hour := time.Now().Add(time.Hour)
	good := is.sign(t, "rsa-1", jwtClaims("system:serviceaccount:shop:orders", hour))
	svid := is.sign(t, "ec-1", jwtClaims("spiffe://test/billing", hour))
	bad := map[string]string{
		"expired":        is.sign(t, "rsa-1", jwtClaims("system:serviceaccount:shop:orders", time.Now().Add(-5*time.Minute))),
		"wrong audience": is.sign(t, "rsa-1", jwtClaims("system:serviceaccount:shop:orders", hour, "aud", "vault")),
		"unknown kid":    is.sign(t, "rsa-9", jwtClaims("system:serviceaccount:shop:orders", hour)),
		"alg none":       is.forged(t, "none", jwtClaims("system:serviceaccount:shop:orders", hour)),
		"HS256":          is.forged(t, "HS256", jwtClaims("system:serviceaccount:shop:orders", hour)),
		"oversized":      is.sign(t, "rsa-1", jwtClaims("system:serviceaccount:shop:orders", hour, "pad", strings.Repeat("p", 17000))),
		"nobody":         is.sign(t, "rsa-1", jwtClaims("system:serviceaccount:shop:stranger", hour)),
	}
	wantMsg := map[string]string{
		"expired": "the JWT expired at", "wrong audience": `does not include "dbproxy"`,
		"unknown kid": `key id "rsa-9"`, "alg none": `algorithm "none"`, "HS256": `algorithm "HS256"`,
		"oversized": "at most 16384", "nobody": "no identity matches this JWT",
	}

	out, err := psqlToken(t, good, s.pgDSN("", s.pgTLSOpts), "-c", "select current_user like 'v-%'")
	if err != nil || out != "t" {
		t.Fatalf("psql over TLS: %q, %v", out, err)
	}
	out, err = psqlToken(t, svid, "-h", s.sockDir, "-p", strconv.Itoa(s.sockPort), "-U", "app", "-d", "appdb", "-c", "select 1")
	if err != nil || out != "1" {
		t.Fatalf("psql over the unix socket with a JWT-SVID: %q, %v", out, err)
	}
	out, err = psqlToken(t, good, s.pgDSN("", "sslmode=disable"), "-c", "select 1")
	if err == nil || !strings.Contains(out, "only over TLS") {
		t.Fatalf("psql without TLS: %q, %v; want a refusal naming TLS", out, err)
	}
	if _, err := pgConn(t, s.pgDSN(good, s.pgTLSOpts)); err != nil {
		t.Fatalf("pgx over TLS: %v", err)
	}
	if _, err := myConn(t, s.myDSN(good, "allowCleartextPasswords=true&tls="+s.myTLSName)); err != nil {
		t.Fatalf("go-sql-driver over TLS: %v", err)
	}
	_, err = myConn(t, s.myDSN(svid, "allowCleartextPasswords=true&tls="+s.myTLSName))
	wantMyRefused(t, "billing on a backend it has no grant for", err, 1044, `may not use backend "mydb"`)

	for name, tok := range bad {
		_, err := pgConn(t, s.pgDSN(tok, s.pgTLSOpts))
		wantRefused(t, "postgres, "+name, err, "28000", wantMsg[name])
		_, err = myConn(t, s.myDSN(tok, "allowCleartextPasswords=true&tls="+s.myTLSName))
		wantMyRefused(t, "mysql, "+name, err, 1045, wantMsg[name])
	}

	short := is.sign(t, "rsa-1", jwtClaims("system:serviceaccount:shop:orders", time.Now().Add(10*time.Second)))
	pc, err := pgConn(t, s.pgDSN(short, s.pgTLSOpts))
	if err != nil {
		t.Fatal(err)
	}
	err = waitPGClosed(t, pc, time.Minute)
	wantRefused(t, "postgres session past its JWT's exp", err, "57P01", "your JWT expired")

	// Oversized tokens are refused by the front end before any check.
	for result, atLeast := range map[string]float64{"ok": 4, "invalid_token": 8, "expired_token": 2, "unknown_identity": 2} {
		if got := metricSum(t, s.proxy, "dbproxy_token_logins_total", `result="`+result+`"`); got < atLeast {
			t.Errorf("dbproxy_token_logins_total{result=%q} = %g; want at least %g", result, got, atLeast)
		}
	}
	all := []string{good, svid, short}
	for _, tok := range bad {
		all = append(all, tok)
	}
	s.assertTokensNotLogged(t, all...)
}
