package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// base is a small valid configuration. Line numbers matter to the tests.
const base = `vault:
  address: https://vault.example:8200
  auth:
    method: token
    token_file: token
backends:
  orders:
    protocol: postgres
    address: db.example:5432
    vault_role: app
listeners:
  - name: side
    protocol: postgres
    address: 127.0.0.1:6432
    identity: svc
identities:
  svc:
    grants:
      - backend: orders
`

// files are created next to the configuration in every test.
var files = []string{"token", "role-id", "secret-id", "jwt", "ca.pem", "cert.pem", "key.pem", "client-ca.pem", "admin-token"}

// load writes text as dir/dbproxy.yaml beside the files above and loads it.
func load(t *testing.T, text string) (*Config, string, error) {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "dbproxy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	return c, path, err
}

// edit applies old->new replacements to base; each old must occur once.
func edit(t *testing.T, pairs ...string) string {
	t.Helper()
	s := base
	for i := 0; i+1 < len(pairs); i += 2 {
		if strings.Count(s, pairs[i]) != 1 {
			t.Fatalf("edit: %q occurs %d times in base", pairs[i], strings.Count(s, pairs[i]))
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

func TestBaseIsValid(t *testing.T) {
	c, path, err := load(t, base)
	if err != nil {
		t.Fatalf("base config: %v", err)
	}
	if got, want := c.Vault.Auth.TokenFile, filepath.Join(filepath.Dir(path), "token"); got != want {
		t.Errorf("token_file resolved to %q, want %q", got, want)
	}
}

func TestProblems(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // "LINE:COL: substring", one per expected problem, in order
	}{
		// Decoding.
		{"unknown key with hint", edit(t, "    token_file: token", "    token_fil: token"),
			[]string{`5:5: unknown key "token_fil" in vault.auth: did you mean "token_file"?`}},
		{"unknown key ca_fle", edit(t, "  address: https://vault.example:8200", "  address: https://vault.example:8200\n  ca_fle: ca.pem"),
			[]string{`3:3: unknown key "ca_fle" in vault: did you mean "ca_file"?`}},
		{"unknown key lists valid keys", edit(t, "    vault_role: app", "    vault_role: app\n    zzzzzz: 1"),
			[]string{`11:5: unknown key "zzzzzz" in backends.orders; valid keys are: address, allow_insecure_auth,`}},
		{"camel case hint", edit(t, "    vault_role: app", "    vaultRole: app"),
			[]string{`10:5: unknown key "vaultRole" in backends.orders: did you mean "vault_role"?`, `19:9: identities.svc.grants[0]: no Vault role for backend "orders"`}},
		{"unknown keys and invalid values in one run", edit(t, "  auth:", "  ca_fle: x\n  auth:", "protocol: postgres\n    address: db", "protocol: pg\n    address: db"),
			[]string{`3:3: unknown key "ca_fle" in vault: did you mean "ca_file"?`, `9:15: backends.orders.protocol: "pg" is not supported`}},
		{"inline vault token", edit(t, "    token_file: token", "    token: s.abcdef"),
			[]string{`5:5: unknown key "token" in vault.auth: did you mean "token_file"? secrets are read from files: use token_file / secret_id_file`}},
		{"inline secret_id", edit(t, "    token_file: token", "    token_file: token\n    secret_id: abc"),
			[]string{`6:5: unknown key "secret_id" in vault.auth: did you mean "secret_id_file"? secrets are read from files: use token_file / secret_id_file`}},
		{"inline database password", edit(t, "    vault_role: app", "    vault_role: app\n    password: hunter2"),
			[]string{`11:5: unknown key "password" in backends.orders: database credentials are never written`, "secrets are read from files: use token_file / secret_id_file"}},
		{"type error int", edit(t, "    vault_role: app", "    vault_role: app\n    pool:\n      max_connections: lots"),
			[]string{`12:24: backends.orders.pool.max_connections: want a whole number, got "lots"`}},
		{"type error bool", edit(t, "    vault_role: app", "    vault_role: app\n    allow_insecure_auth: maybe"),
			[]string{`11:26: backends.orders.allow_insecure_auth: want true or false, got "maybe"`}},
		{"type error duration", edit(t, "    vault_role: app", "    vault_role: app\n    connect_timeout: 10"),
			[]string{`11:22: backends.orders.connect_timeout: "10" is not a duration; write it like 30s, 5m or 1h30m`}},
		{"type error list", edit(t, "      - backend: orders", "      backend: orders"),
			[]string{`19:7: identities.svc.grants: want a list (lines starting with "- "), got a mapping`}},
		{"type error mapping", edit(t, "  auth:\n    method: token\n    token_file: token", "  auth: token"),
			[]string{`3:9: vault.auth: want a mapping (key: value lines), got "token"`}},
		{"type error mapping everywhere", "vault: https://vault\nbackends: [a]\nlisteners: {}\nidentities: x\n",
			[]string{`1:8: vault: want a mapping`, `2:11: backends: want a mapping of names to settings, got a list`, `3:12: listeners: want a list`, `4:13: identities: want a mapping of names`}},
		{"type error string", edit(t, "    method: token", "    method: [token]"),
			[]string{`4:13: vault.auth.method: want a single value, got a list`}},
		{"bad socket mode", edit(t, "    address: 127.0.0.1:6432\n    identity: svc", "    unix_socket: /tmp/.s.PGSQL.1\n    socket_mode: \"0999\"\n    identity: svc"),
			[]string{`15:18: listeners[0].socket_mode: "0999" is not an octal mode`}},
		{"duplicate key", edit(t, "    vault_role: app", "    vault_role: app\n    address: db2:5432"),
			[]string{`11:5: backends.orders: key "address" is already set at line 9`}},
		{"syntax error", "vault:\n  address: [unclosed\nbackends: {}\n",
			[]string{`YAML syntax error`}},
		{"empty file", "", []string{`1:1: the file is empty`}},
		{"second document", base + "---\nvault: {}\n", []string{`20:1: a second YAML document starts here`}},
		{"top level not a mapping", "- a\n", []string{`1:1: settings: want a mapping`}},

		// Vault.
		{"vault address missing", edit(t, "  address: https://vault.example:8200\n", ""),
			[]string{`1:1: vault.address: not set`}},
		{"vault address not a url", edit(t, "https://vault.example:8200", "vault.example"),
			[]string{`2:12: vault.address: "vault.example" is not a Vault URL`}},
		{"auth method missing", edit(t, "    method: token\n", ""),
			[]string{`3:3: vault.auth.method: not set; use token, approle or kubernetes`}},
		{"auth method unknown", edit(t, "method: token", "method: ldap"),
			[]string{`4:13: vault.auth.method: "ldap" is not a supported method`}},
		{"token file missing", edit(t, "token_file: token", "token_file: nope"),
			[]string{`5:17: vault.auth.token_file: cannot read`, "no such file or directory"}},
		{"token file is a directory", edit(t, "token_file: token", "token_file: ."),
			[]string{`5:17: vault.auth.token_file:`, "is a directory"}},
		{"approle needs both files", edit(t, "method: token\n    token_file: token", "method: approle\n    role_id_file: role-id"),
			[]string{`3:3: vault.auth.secret_id_file: required for auth method approle`}},
		{"approle with token_file", edit(t, "method: token", "method: approle\n    role_id_file: role-id\n    secret_id_file: secret-id"),
			[]string{`7:17: vault.auth.token_file: only used by auth method token, but method is approle`}},
		{"kubernetes needs role", edit(t, "method: token\n    token_file: token", "method: kubernetes\n    jwt_file: jwt"),
			[]string{`3:3: vault.auth.role: required for auth method kubernetes`}},
		{"vault ca missing", edit(t, "  auth:", "  ca_file: missing.pem\n  auth:"),
			[]string{`3:12: vault.ca_file: cannot read`}},
		{"request timeout zero", edit(t, "  auth:", "  request_timeout: 0s\n  auth:"),
			[]string{`3:20: vault.request_timeout: must be greater than 0`}},

		// Backends.
		{"no backends", edit(t, "backends:\n  orders:\n    protocol: postgres\n    address: db.example:5432\n    vault_role: app\n", ""),
			[]string{`14:18: identities.svc.grants[0]: backend "orders" is not defined under backends (there are none)`, `1:1: backends: none defined`}},
		{"backend protocol", edit(t, "protocol: postgres\n    address: db", "protocol: oracle\n    address: db"),
			[]string{`8:15: backends.orders.protocol: "oracle" is not supported; use postgres or mysql`}},
		{"backend protocol missing", edit(t, "    protocol: postgres\n    address: db", "    address: db"),
			[]string{`7:3: backends.orders.protocol: not set`}},
		{"backend address no port", edit(t, "db.example:5432", "db.example"),
			[]string{`9:14: backends.orders.address: "db.example" is not host:port`}},
		{"backend address port 0", edit(t, "db.example:5432", "db.example:0"),
			[]string{`9:14: backends.orders.address: "db.example:0" has no valid port`}},
		{"backend address no host", edit(t, "db.example:5432", ":5432"),
			[]string{`9:14: backends.orders.address: ":5432" has no host`}},
		{"tls mode", edit(t, "    vault_role: app", "    vault_role: app\n    tls: {mode: verify-ca}"),
			[]string{`11:17: backends.orders.tls.mode: "verify-ca" is not a TLS mode; use disable, require or verify-full`}},
		{"tls disable with ca", edit(t, "    vault_role: app", "    vault_role: app\n    tls: {mode: disable, ca_file: ca.pem}"),
			[]string{`11:17: backends.orders.tls.mode: disable, but tls.ca_file is set`}},
		{"tls ca missing", edit(t, "    vault_role: app", "    vault_role: app\n    tls:\n      ca_file: gone.pem"),
			[]string{`12:16: backends.orders.tls.ca_file: cannot read`}},
		{"pool mode", edit(t, "    vault_role: app", "    vault_role: app\n    pool:\n      mode: statement"),
			[]string{`12:13: backends.orders.pool.mode: "statement" is not a pool mode; use session or transaction`}},
		{"max connections zero", edit(t, "    vault_role: app", "    vault_role: app\n    pool:\n      max_connections: 0"),
			[]string{`12:24: backends.orders.pool.max_connections: 0; must be greater than 0`}},
		{"min idle above max", edit(t, "    vault_role: app", "    vault_role: app\n    pool:\n      max_connections: 2\n      min_idle: 3"),
			[]string{`13:17: backends.orders.pool.min_idle: 3 is more than max_connections (2)`}},
		{"min idle negative", edit(t, "    vault_role: app", "    vault_role: app\n    pool:\n      min_idle: -1"),
			[]string{`12:17: backends.orders.pool.min_idle: -1; must be 0 or more`}},
		{"idle transaction timeout negative", edit(t, "    vault_role: app", "    vault_role: app\n    pool:\n      idle_transaction_timeout: -1s"),
			[]string{`12:33: backends.orders.pool.idle_transaction_timeout: must not be negative`}},
		{"rotate before within safety margin", edit(t, "    vault_role: app", "    vault_role: app\n    lease:\n      rotate_before: 5s\n      safety_margin: 10s"),
			[]string{`12:22: backends.orders.lease.rotate_before: 5s is not more than safety_margin (10s)`}},
		{"negative drain timeout", edit(t, "    vault_role: app", "    vault_role: app\n    lease:\n      drain_timeout: -1s"),
			[]string{`12:22: backends.orders.lease.drain_timeout: -1s is negative`}},
		{"max issue zero", edit(t, "    vault_role: app", "    vault_role: app\n    lease: {max_issue_per_minute: 0}"),
			[]string{`11:35: backends.orders.lease.max_issue_per_minute: 0; must be greater than 0`}},
		{"database empty", edit(t, "    vault_role: app", "    vault_role: app\n    database: \"\""),
			[]string{`11:15: backends.orders.database: empty; leave the key out`}},

		// Listeners.
		{"no listeners", edit(t, "listeners:\n  - name: side\n    protocol: postgres\n    address: 127.0.0.1:6432\n    identity: svc\n", ""),
			[]string{`12:3: identity "svc" can never be matched`, `1:1: listeners: none defined`}},
		{"listener name missing", edit(t, "  - name: side\n    protocol", "  - protocol"),
			[]string{`12:5: listeners[0].name: not set`}},
		{"listener name duplicate", edit(t, "identities:", "  - name: side\n    protocol: postgres\n    address: 127.0.0.1:6433\n    identity: svc\nidentities:"),
			[]string{`16:11: listeners[1].name: "side" is already used by listeners[0]`}},
		{"listener address duplicate", edit(t, "identities:", "  - name: other\n    protocol: postgres\n    address: 127.0.0.1:6432\n    identity: svc\nidentities:"),
			[]string{`16:5: listener "other": 127.0.0.1:6432 is also used by listener "side"`}},
		{"listener protocol", edit(t, "    protocol: postgres\n    address: 127", "    protocol: mssql\n    address: 127"),
			[]string{`13:15: listener "side": protocol "mssql" is not supported`}},
		{"listener neither address nor socket", edit(t, "    address: 127.0.0.1:6432\n", ""),
			[]string{`12:5: listener "side": set address (host:port) or unix_socket (a path)`}},
		{"listener both address and socket", edit(t, "    address: 127.0.0.1:6432\n", "    address: 127.0.0.1:6432\n    unix_socket: /tmp/.s.PGSQL.6432\n"),
			[]string{`15:18: listener "side": set only one of address and unix_socket`}},
		{"listener bad address", edit(t, "127.0.0.1:6432", "localhost"),
			[]string{`14:14: listener "side": address "localhost" is not host:port`}},
		{"postgres socket name", edit(t, "    address: 127.0.0.1:6432\n", "    unix_socket: /tmp/pg.sock\n"),
			[]string{`14:18: listener "side": a postgres unix socket must be named .s.PGSQL.<port>`}},
		{"listener identity unknown", edit(t, "    identity: svc", "    identity: svd"),
			[]string{`15:15: listener "side": identity "svd" is not defined under identities; did you mean "svc"?`, `17:3: identity "svc" can never be matched`}},
		{"listener auth on public address", edit(t, "127.0.0.1:6432", "0.0.0.0:6432"),
			[]string{`14:14: listener "side": auth listener gives every client identity "svc", so it must listen on loopback`}},
		{"listener auth cannot be derived", edit(t, "    identity: svc\n", "") + "    match: {cert_cn: svc}\n",
			[]string{`12:5: listener "side": cannot tell how clients are identified`}},
		{"listener auth unknown", edit(t, "    identity: svc", "    identity: svc\n    auth: password"),
			[]string{`16:11: listener "side": auth "password" is not supported`}},
		{"listener auth listener without identity", edit(t, "    identity: svc", "    auth: listener") + "    match: {cert_cn: svc}\n",
			[]string{`12:5: listener "side": auth listener needs identity`}},
		{"peer needs unix socket", edit(t, "    identity: svc", "    auth: peer") + "    match: {unix_uid: 1000}\n",
			[]string{`15:11: listener "side": auth peer identifies clients by their unix user, so it needs unix_socket`}},
		{"identity with peer", edit(t, "    identity: svc", "    identity: svc\n    auth: peer\n    unix_socket: /x/.s.PGSQL.1"),
			[]string{`15:15: listener "side": identity is only used with auth listener, but auth is peer`, `17:18: listener "side": set only one of address and unix_socket`}},
		{"mtls needs client ca", edit(t, "    identity: svc", "    auth: mtls\n    tls: {cert_file: cert.pem, key_file: key.pem}") + "    match: {cert_cn: svc}\n",
			[]string{`15:11: listener "side": auth mtls needs tls with cert_file, key_file and client_ca_file`}},
		{"tls needs cert and key", edit(t, "    identity: svc", "    identity: svc\n    tls:\n      cert_file: cert.pem"),
			[]string{`16:5: listener "side": tls needs both cert_file and key_file`}},
		{"tls key file missing", edit(t, "    identity: svc", "    identity: svc\n    tls: {cert_file: cert.pem, key_file: nokey.pem}"),
			[]string{`16:42: listeners[0].tls.key_file: cannot read`}},
		{"require client cert without ca", edit(t, "    identity: svc", "    identity: svc\n    tls: {cert_file: cert.pem, key_file: key.pem, require_client_cert: true}"),
			[]string{`16:72: listener "side": require_client_cert needs tls.client_ca_file`}},

		// Identities.
		{"grant backend unknown", edit(t, "      - backend: orders", "      - backend: order"),
			[]string{`19:18: identities.svc.grants[0]: backend "order" is not defined under backends; did you mean "orders"?`}},
		{"grant backend missing", edit(t, "      - backend: orders", "      - role: app"),
			[]string{`19:9: identities.svc.grants[0]: backend not set`}},
		{"grant role unresolvable", edit(t, "    vault_role: app\n", ""),
			[]string{`18:9: identities.svc.grants[0]: no Vault role for backend "orders"; set role here or vault_role on the backend`}},
		{"grant duplicate", base + "      - backend: orders\n        role: app\n",
			[]string{`20:9: identities.svc.grants[1]: same backend "orders" and role "app" as grants[0]`}},
		{"identity never matched", base + "  other:\n    grants: [{backend: orders}]\n",
			[]string{`20:3: identity "other" can never be matched`}},
		{"spiffe id", base + "    match: {spiffe_id: \"https://x/y\"}\n",
			[]string{`20:24: identities.svc.match.spiffe_id: "https://x/y" is not a SPIFFE ID`}},
		{"duplicate unix uid", base + "    match: {unix_uid: 7}\n  other:\n    match: {unix_uid: 7}\n    grants: [{backend: orders}]\n",
			[]string{`20:23: identities.svc.match.unix_uid: 7 also matches identity "other"`}},
		{"duplicate cert cn", base + "    match: {cert_cn: a}\n  other:\n    match: {cert_cn: a}\n    grants: [{backend: orders}]\n",
			[]string{`20:22: identities.svc.match.cert_cn: "a" also matches identity "other"`}},

		// Admin and top level.
		{"admin off loopback needs token", base + "admin:\n  address: 0.0.0.0:9187\n",
			[]string{`21:12: admin.address: 0.0.0.0:9187 is not a loopback address, so admin.token_file is required`}},
		{"admin bad address", base + "admin: {address: nine}\n",
			[]string{`20:18: admin.address: "nine" is not host:port`}},
		{"admin token missing file", base + "admin: {address: 0.0.0.0:9187, token_file: nope}\n",
			[]string{`20:44: admin.token_file: cannot read`}},
		{"admin allowed host with scheme", base + "admin: {allowed_hosts: [dbproxy.internal, \"http://x:9187/\"]}\n",
			[]string{`20:43: admin.allowed_hosts[1]: "http://x:9187/" is not a host name or host:port`}},
		{"shutdown timeout", base + "shutdown_timeout: -5s\n",
			[]string{`20:19: shutdown_timeout: must be greater than 0`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, path, err := load(t, tt.text)
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("want Problems, got %v", err)
			}
			var got []string
			for _, p := range ps {
				if p.File != path {
					t.Errorf("problem file %q, want %q", p.File, path)
				}
				got = append(got, strings.TrimPrefix(p.String(), path+":"))
			}
			// Each wanted "L:C: text" must match a problem; a want without
			// a position only needs to appear somewhere.
			for _, w := range tt.want {
				found := false
				for _, g := range got {
					if strings.HasPrefix(g, w) || (w[0] < '0' || w[0] > '9') && strings.Contains(g, w) {
						found = true
					}
				}
				if !found {
					t.Errorf("missing problem %q\ngot:\n  %s", w, strings.Join(got, "\n  "))
				}
			}
			if len(got) > len(tt.want) {
				t.Errorf("got %d problems, want %d:\n  %s", len(got), len(tt.want), strings.Join(got, "\n  "))
			}
		})
	}
}

func TestAllProblemsAtOnceInFileOrder(t *testing.T) {
	text := edit(t, "method: token", "method: tokn", "protocol: postgres\n    address: db", "protocol: pg\n    address: db", "      - backend: orders", "      - backend: nowhere")
	_, path, err := load(t, text)
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("want Problems, got %v", err)
	}
	want := []string{
		path + `:4:13: vault.auth.method: "tokn" is not a supported method; use token, approle or kubernetes`,
		path + `:8:15: backends.orders.protocol: "pg" is not supported; use postgres or mysql`,
		path + `:19:18: identities.svc.grants[0]: backend "nowhere" is not defined under backends; defined: orders`,
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDefaults(t *testing.T) {
	text := strings.Replace(base, "  - name: side", `  - name: mesh
    protocol: postgres
    address: 0.0.0.0:6433
    tls: {cert_file: cert.pem, key_file: key.pem, client_ca_file: client-ca.pem, require_client_cert: true}
  - name: sock
    protocol: mysql
    unix_socket: run/mysql.sock
  - name: side`, 1) + "  mesh:\n    match: {cert_cn: mesh}\n    grants: [{backend: orders}]\n  batch:\n    match: {unix_uid: 1001}\n    grants: [{backend: orders}]\n"
	c, path, err := load(t, text)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	check := func(name string, got, want any) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("shutdown_timeout", c.ShutdownTimeout.D(), 30*time.Second)
	check("vault.request_timeout", c.Vault.RequestTimeout.D(), 10*time.Second)
	check("vault.auth.mount", c.Vault.Auth.Mount, "token")
	b := c.Backends["orders"]
	check("database", b.Database, "orders")
	check("vault_mount", b.VaultMount, "database")
	check("connect_timeout", b.ConnectTimeout.D(), 10*time.Second)
	check("tls.mode", b.TLS.Mode, "disable")
	check("pool.mode", b.Pool.Mode, "session")
	check("pool.max_connections", b.Pool.MaxConnections, 20)
	check("pool.min_idle", b.Pool.MinIdle, 0)
	check("pool.checkout_timeout", b.Pool.CheckoutTimeout.D(), 5*time.Second)
	check("pool.idle_timeout", b.Pool.IdleTimeout.D(), 5*time.Minute)
	check("lease.rotate_before", b.Lease.RotateBefore.D(), time.Duration(0))
	check("lease.drain_timeout", b.Lease.DrainTimeout.D(), 30*time.Second)
	check("lease.safety_margin", b.Lease.SafetyMargin.D(), 5*time.Second)
	check("lease.revoke_grace", b.Lease.RevokeGrace.D(), 5*time.Second)
	check("lease.max_issue_per_minute", b.Lease.MaxIssuePerMinute, 6)
	mesh, sock, side := c.Listeners[0], c.Listeners[1], c.Listeners[2]
	check("mesh.auth", mesh.Auth, "mtls")
	check("mesh.tls.required", mesh.TLS.Required, true)
	check("mesh.tls.cert_file", mesh.TLS.CertFile, filepath.Join(dir, "cert.pem"))
	check("mesh.socket_mode", mesh.SocketMode, FileMode(0))
	check("sock.auth", sock.Auth, "peer")
	check("sock.socket_mode", sock.SocketMode, FileMode(0o660))
	check("sock.unix_socket", sock.UnixSocket, filepath.Join(dir, "run/mysql.sock"))
	check("side.auth", side.Auth, "listener")
	check("admin.address", c.Admin.Address, "127.0.0.1:9187")
}

func TestDefaultsTLSModeAndMTLSOverride(t *testing.T) {
	text := edit(t, "    vault_role: app", "    vault_role: app\n    tls: {ca_file: ca.pem}",
		"  - name: side", "  - name: mesh\n    protocol: postgres\n    address: 0.0.0.0:6433\n    auth: mtls\n    tls: {cert_file: cert.pem, key_file: key.pem, client_ca_file: client-ca.pem, required: false}\n  - name: side") +
		"    match: {cert_cn: svc}\n"
	c, _, err := load(t, text)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Backends["orders"].TLS.Mode; got != "verify-full" {
		t.Errorf("tls.mode with ca_file = %q, want verify-full", got)
	}
	tls := c.Listeners[0].TLS
	if !tls.RequireClientCert || tls.Required {
		t.Errorf("mtls listener: require_client_cert=%v (want true by default), required=%v (want false as written)", tls.RequireClientCert, tls.Required)
	}
}

func TestKubernetesDefaults(t *testing.T) {
	text := edit(t, "method: token\n    token_file: token", "method: kubernetes\n    role: dbproxy")
	_, _, err := load(t, text)
	// The default jwt_file is the in-cluster path, which is absent here.
	if err == nil || !strings.Contains(err.Error(), `vault.auth.jwt_file: cannot read "`+DefaultKubernetesJWTFile+`"`) {
		t.Fatalf("want a missing default jwt_file, got %v", err)
	}
	c, _, err := load(t, strings.Replace(text, "role: dbproxy", "role: dbproxy\n    jwt_file: jwt\n    mount: k8s-prod", 1))
	if err != nil {
		t.Fatal(err)
	}
	if c.Vault.Auth.Mount != "k8s-prod" {
		t.Errorf("mount = %q", c.Vault.Auth.Mount)
	}
}

func TestVaultAddrFromEnvironment(t *testing.T) {
	text := edit(t, "  address: https://vault.example:8200\n", "")
	t.Setenv("VAULT_ADDR", "https://from-env:8200")
	c, _, err := load(t, text)
	if err != nil {
		t.Fatal(err)
	}
	if c.Vault.Address != "https://from-env:8200" {
		t.Errorf("address = %q, want the VAULT_ADDR value", c.Vault.Address)
	}
	// A written address wins over the environment.
	c, _, err = load(t, base)
	if err != nil {
		t.Fatal(err)
	}
	if c.Vault.Address != "https://vault.example:8200" {
		t.Errorf("address = %q, want the configured one", c.Vault.Address)
	}
}

func TestExplicitZeroIsNotDefaulted(t *testing.T) {
	c, _, err := load(t, edit(t, "    vault_role: app", "    vault_role: app\n    pool:\n      idle_timeout: 0s\n      max_connections:\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Backends["orders"].Pool
	if p.IdleTimeout != 0 {
		t.Errorf("idle_timeout: 0s became %s", p.IdleTimeout)
	}
	if p.MaxConnections != DefaultMaxConnections {
		t.Errorf("empty max_connections = %d, want the default", p.MaxConnections)
	}
}

func TestMergeKeys(t *testing.T) {
	text := edit(t, "backends:\n  orders:\n    protocol: postgres\n",
		"x-pool: &pool\n  mode: transaction\n  max_connections: 7\nbackends:\n  orders:\n    protocol: postgres\n    pool:\n      <<: *pool\n      max_connections: 9\n")
	// x-pool is not a dbproxy key.
	_, _, err := load(t, text)
	if err == nil || !strings.Contains(err.Error(), `unknown key "x-pool"`) {
		t.Fatalf("want unknown key x-pool, got %v", err)
	}
	text = edit(t, "    vault_role: app\n",
		"    vault_role: app\n    pool: &pool\n      mode: transaction\n      max_connections: 7\n  replica:\n    protocol: postgres\n    address: db2:5432\n    pool:\n      <<: *pool\n      max_connections: 9\n")
	c, _, err := load(t, text)
	if err != nil {
		t.Fatal(err)
	}
	r := c.Backends["replica"].Pool
	if r.Mode != "transaction" || r.MaxConnections != 9 {
		t.Errorf("merged pool = %+v, want mode transaction and max_connections 9", r)
	}
}

func TestFileMode(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want FileMode
		err  string
	}{
		{`"0660"`, 0o660, ""},
		{`0660`, 0o660, ""},
		{`660`, 0o660, ""},
		{`"0o600"`, 0o600, ""},
		{`"0777"`, 0o777, ""},
		{`"1777"`, 0, "bits beyond 0777"},
		{`"0689"`, 0, "not an octal mode"},
		{`""`, 0, "not an octal mode"},
	} {
		text := edit(t, "    address: 127.0.0.1:6432\n", "    unix_socket: /tmp/.s.PGSQL.1\n    socket_mode: "+tt.in+"\n")
		c, _, err := load(t, text)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("socket_mode %s: want error %q, got %v", tt.in, tt.err, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("socket_mode %s: %v", tt.in, err)
			continue
		}
		if got := c.Listeners[0].SocketMode; got != tt.want {
			t.Errorf("socket_mode %s = %s, want %s", tt.in, got, tt.want)
		}
	}
	if s := FileMode(0o660).String(); s != "0660" {
		t.Errorf("String() = %q", s)
	}
}

func TestProblemsFormat(t *testing.T) {
	ps := Problems{
		{File: "a.yaml", Line: 3, Col: 5, Msg: "first"},
		{File: "a.yaml", Msg: "no position"},
		{Msg: "built in code"},
	}
	want := "a.yaml:3:5: first\na.yaml: no position\nbuilt in code"
	if ps.Error() != want {
		t.Errorf("Error() =\n%s\nwant\n%s", ps.Error(), want)
	}
}

func TestValidateWithoutFile(t *testing.T) {
	c := &Config{Vault: Vault{Address: "https://v:8200", Auth: VaultAuth{Method: "approle"}}}
	c.SetDefaults()
	err := c.Validate()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("want Problems, got %v", err)
	}
	for _, p := range ps {
		if p.Line != 0 || p.File != "" {
			t.Errorf("code-built config problem has a position: %+v", p)
		}
	}
	if !strings.Contains(err.Error(), "vault.auth.role_id_file: required") {
		t.Errorf("missing role_id_file problem in:\n%v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("want ErrNotExist, got %v", err)
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "tok")
	os.WriteFile(f, []byte("  abc\n"), 0o600)
	if s, err := ReadSecretFile(f); err != nil || s != "abc" {
		t.Errorf("ReadSecretFile = %q, %v", s, err)
	}
	os.WriteFile(f, []byte("\n"), 0o600)
	if _, err := ReadSecretFile(f); err == nil {
		t.Error("empty secret file: want an error")
	}
}

func TestExampleConfig(t *testing.T) {
	c, err := Load(filepath.Join("..", "examples", "dbproxy.yaml"))
	if err != nil {
		t.Fatalf("examples/dbproxy.yaml does not validate:\n%v", err)
	}
	if len(c.Backends) != 2 || len(c.Listeners) != 3 || len(c.Identities) == 0 {
		t.Errorf("example: %d backends, %d listeners, %d identities", len(c.Backends), len(c.Listeners), len(c.Identities))
	}
	auths := map[string]string{}
	for _, l := range c.Listeners {
		auths[l.Name] = l.Auth
	}
	if auths["orders-sidecar"] != "listener" || auths["mesh"] != "mtls" || auths["local-mysql"] != "peer" {
		t.Errorf("example listener auth = %v", auths)
	}
}
