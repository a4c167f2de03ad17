package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Validate checks the whole configuration and returns every problem found
// as Problems (nil when there is none). Load calls it after SetDefaults.
// It also checks that every file the configuration names exists and is
// readable.
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.vault()
	v.backends()
	v.listeners()
	v.identities()
	v.admin()
	v.fleet()
	v.runtime()
	if c.ShutdownTimeout <= 0 {
		v.at("shutdown_timeout", "shutdown_timeout: must be greater than 0 (e.g. 30s); it bounds how long SIGTERM waits for open sessions")
	}
	if len(v.probs) == 0 {
		return nil
	}
	sortProblems(v.probs)
	return v.probs
}

func sortProblems(ps Problems) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Line != ps[j].Line {
			return ps[i].Line < ps[j].Line
		}
		if ps[i].Col != ps[j].Col {
			return ps[i].Col < ps[j].Col
		}
		return ps[i].Msg < ps[j].Msg
	})
}

type validator struct {
	c     *Config
	probs Problems
}

// parent strips the last ".key" or "[i]" from path.
func parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// locate finds where path was written: its value, else its key, else the
// key of the nearest enclosing setting that was written (for a missing
// setting, the section it belongs in), else line 1.
func (v *validator) locate(path string, preferKey bool) Problem {
	src := v.c.src
	if src == nil {
		return Problem{}
	}
	p := Problem{File: src.file, Line: 1, Col: 1}
	if !preferKey && !src.null[path] {
		if at, ok := src.val[path]; ok {
			p.Line, p.Col = at.line, at.col
			return p
		}
	}
	for q := path; q != ""; q = parent(q) {
		if at, ok := src.key[q]; ok {
			p.Line, p.Col = at.line, at.col
			return p
		}
	}
	return p
}

// at reports a problem with the value at path.
func (v *validator) at(path, format string, args ...any) {
	if v.c.src.suppressed(path) {
		return
	}
	p := v.locate(path, false)
	p.Msg = fmt.Sprintf(format, args...)
	v.probs = append(v.probs, p)
}

// atKey reports a problem at the key of path (or where it belongs).
func (v *validator) atKey(path, format string, args ...any) {
	if v.c.src.suppressed(path) {
		return
	}
	p := v.locate(path, true)
	p.Msg = fmt.Sprintf(format, args...)
	v.probs = append(v.probs, p)
}

func oneOf(s string, allowed ...string) bool {
	for _, a := range allowed {
		if s == a {
			return true
		}
	}
	return false
}

// file checks that the file at name exists and is readable.
func (v *validator) file(path, name string) {
	f, err := os.Open(name)
	if err != nil {
		reason := err
		var pe *fs.PathError
		if errors.As(err, &pe) {
			reason = pe.Err
		}
		v.at(path, "%s: cannot read %q: %v; create the file or fix the path (relative paths are resolved from the configuration file's directory)", path, name, reason)
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		v.at(path, "%s: %q is a directory; name a file", path, name)
	}
}

// optFile checks a file setting only when it is set.
func (v *validator) optFile(path, name string) {
	if name != "" {
		v.file(path, name)
	}
}

// hostPort checks a host:port address. portZeroOK allows port 0 (a free
// port picked at startup) and an empty host (all interfaces).
func hostPort(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (write it like 127.0.0.1:5432, or [::1]:5432 for IPv6)", addr)
	}
	if host == "" && !listen {
		return fmt.Errorf("%q has no host; write it like db.internal:5432", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !listen) {
		return fmt.Errorf("%q has no valid port; use a number from 1 to 65535", addr)
	}
	return nil
}

// isLoopback reports whether a host:port address listens on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (v *validator) vault() {
	vc := v.c.Vault
	switch {
	case vc.Address == "":
		v.atKey("vault.address", "vault.address: not set; write the Vault URL, e.g. address: https://vault.internal:8200 (or set VAULT_ADDR in the environment and leave the key out)")
	default:
		u, err := url.Parse(vc.Address)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.at("vault.address", "vault.address: %q is not a Vault URL; write it like https://vault.internal:8200", vc.Address)
		}
	}
	v.optFile("vault.ca_file", vc.CAFile)
	if vc.RequestTimeout <= 0 {
		v.at("vault.request_timeout", "vault.request_timeout: must be greater than 0 (e.g. 10s)")
	}

	a := vc.Auth
	need := func(key, value, method string) {
		p := "vault.auth." + key
		if value == "" {
			v.atKey(p, "%s: required for auth method %s; give the path of the file that holds it", p, method)
			return
		}
		v.file(p, value)
	}
	unused := func(key, value string, methods string) {
		if value != "" {
			v.at("vault.auth."+key, "vault.auth.%s: only used by auth method %s, but method is %s; remove it or change the method", key, methods, a.Method)
		}
	}
	switch a.Method {
	case "token":
		need("token_file", a.TokenFile, "token")
		unused("role_id_file", a.RoleIDFile, "approle")
		unused("secret_id_file", a.SecretIDFile, "approle")
		unused("role", a.Role, "kubernetes")
	case "approle":
		need("role_id_file", a.RoleIDFile, "approle")
		need("secret_id_file", a.SecretIDFile, "approle")
		unused("token_file", a.TokenFile, "token")
		unused("role", a.Role, "kubernetes")
	case "kubernetes":
		need("jwt_file", a.JWTFile, "kubernetes")
		if a.Role == "" {
			v.atKey("vault.auth.role", "vault.auth.role: required for auth method kubernetes; name the Vault kubernetes auth role dbproxy logs in as")
		}
		unused("token_file", a.TokenFile, "token")
		unused("role_id_file", a.RoleIDFile, "approle")
		unused("secret_id_file", a.SecretIDFile, "approle")
	case "":
		v.atKey("vault.auth.method", "vault.auth.method: not set; use token, approle or kubernetes")
	default:
		v.at("vault.auth.method", "vault.auth.method: %q is not a supported method; use token, approle or kubernetes", a.Method)
	}
	if a.Method != "kubernetes" {
		unused("jwt_file", a.JWTFile, "kubernetes")
	}
	if a.Method != "" && a.Mount == "" {
		v.at("vault.auth.mount", "vault.auth.mount: empty; leave the key out to use the method name (%s)", a.Method)
	}
}

func (v *validator) backends() {
	if len(v.c.Backends) == 0 {
		v.atKey("backends", "backends: none defined; add at least one database under backends:")
	}
	for _, name := range sortedKeys(v.c.Backends) {
		b := v.c.Backends[name]
		p := "backends." + name
		if strings.TrimSpace(name) == "" {
			v.atKey(p, "backends: a backend needs a non-empty name (the name clients put in their database parameter)")
		}
		if name == ConsoleDatabase && b.Protocol == "postgres" {
			v.atKey(p, "%s: the database name %q is the SQL admin console's on postgres listeners; give the backend another name", p, name)
		}
		switch b.Protocol {
		case "postgres", "mysql":
		case "":
			v.atKey(p+".protocol", "%s.protocol: not set; use postgres or mysql", p)
		default:
			v.at(p+".protocol", "%s.protocol: %q is not supported; use postgres or mysql", p, b.Protocol)
		}
		if b.Address == "" {
			v.atKey(p+".address", "%s.address: not set; write the database server's host:port, e.g. db.internal:5432", p)
		} else if err := hostPort(b.Address, false); err != nil {
			v.at(p+".address", "%s.address: %v", p, err)
		}
		if b.Database == "" {
			v.at(p+".database", "%s.database: empty; leave the key out to use the backend name %q", p, name)
		}
		if b.VaultMount == "" {
			v.at(p+".vault_mount", "%s.vault_mount: empty; leave the key out to use %q", p, DefaultVaultMount)
		}
		switch b.TLS.Mode {
		case "disable":
			if b.TLS.CAFile != "" {
				v.at(p+".tls.mode", "%s.tls.mode: disable, but tls.ca_file is set; use verify-full to check the server with that CA, or remove ca_file", p)
			}
		case "require", "verify-full":
			// verify-full without ca_file uses the system roots.
		default:
			v.at(p+".tls.mode", "%s.tls.mode: %q is not a TLS mode; use disable, require or verify-full", p, b.TLS.Mode)
		}
		v.optFile(p+".tls.ca_file", b.TLS.CAFile)
		if pki := b.TLS.VaultPKI; pki != nil {
			v.pki(p+".tls.vault_pki", *pki)
			if pki.ClientCA {
				v.at(p+".tls.vault_pki.client_ca", "%s.tls.vault_pki.client_ca: only for listeners (it verifies clients); the database's certificate is checked with tls.ca_file", p)
			}
			if b.TLS.Mode == "disable" {
				v.at(p+".tls.mode", "%s.tls.mode: disable, but tls.vault_pki issues a client certificate for TLS; use require or verify-full", p)
			}
		}
		if b.ConnectTimeout <= 0 {
			v.at(p+".connect_timeout", "%s.connect_timeout: must be greater than 0 (e.g. 10s)", p)
		}

		pool := b.Pool
		if !oneOf(pool.Mode, "session", "transaction") {
			v.at(p+".pool.mode", "%s.pool.mode: %q is not a pool mode; use session or transaction", p, pool.Mode)
		}
		if pool.MaxConnections <= 0 {
			v.at(p+".pool.max_connections", "%s.pool.max_connections: %d; must be greater than 0 (default %d)", p, pool.MaxConnections, DefaultMaxConnections)
		}
		if pool.MinIdle < 0 {
			v.at(p+".pool.min_idle", "%s.pool.min_idle: %d; must be 0 or more", p, pool.MinIdle)
		} else if pool.MaxConnections > 0 && pool.MinIdle > pool.MaxConnections {
			v.at(p+".pool.min_idle", "%s.pool.min_idle: %d is more than max_connections (%d); lower min_idle or raise max_connections", p, pool.MinIdle, pool.MaxConnections)
		}
		if pool.CheckoutTimeout <= 0 {
			v.at(p+".pool.checkout_timeout", "%s.pool.checkout_timeout: must be greater than 0 (e.g. 5s)", p)
		}
		if pool.IdleTimeout < 0 {
			v.at(p+".pool.idle_timeout", "%s.pool.idle_timeout: must not be negative (0 keeps idle connections open)", p)
		}
		switch {
		case pool.IdleTransactionTimeout < 0:
			v.at(p+".pool.idle_transaction_timeout", "%s.pool.idle_transaction_timeout: must not be negative (0 turns it off)", p)
		case pool.IdleTransactionTimeout > 0 && b.Protocol == "mysql":
			v.at(p+".pool.idle_transaction_timeout", "%s.pool.idle_transaction_timeout: not supported for mysql backends yet; remove it (MariaDB's own idle_transaction_timeout does the same on the server)", p)
		}

		l := b.Lease
		for _, d := range []struct {
			key string
			val Duration
		}{{"rotate_before", l.RotateBefore}, {"drain_timeout", l.DrainTimeout}, {"safety_margin", l.SafetyMargin}, {"revoke_grace", l.RevokeGrace}} {
			if d.val < 0 {
				v.at(p+".lease."+d.key, "%s.lease.%s: %s is negative; write a duration such as 30s", p, d.key, d.val)
			}
		}
		if l.RotateBefore > 0 && l.RotateBefore <= l.SafetyMargin {
			v.at(p+".lease.rotate_before", "%s.lease.rotate_before: %s is not more than safety_margin (%s), so sessions would be closed before the next credential is in use; raise rotate_before or leave it out to compute it from the lease's max TTL", p, l.RotateBefore, l.SafetyMargin)
		}
		if l.MaxIssuePerMinute <= 0 {
			v.at(p+".lease.max_issue_per_minute", "%s.lease.max_issue_per_minute: %d; must be greater than 0 (default %d)", p, l.MaxIssuePerMinute, DefaultMaxIssuePerMinute)
		}
		v.credentialSource(p, b)
	}
}

func (v *validator) listeners() {
	if len(v.c.Listeners) == 0 {
		v.atKey("listeners", "listeners: none defined; add at least one listener for clients to connect to")
	}
	names := map[string]string{}
	addrs := map[string]string{}
	for i, l := range v.c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		badAddr := false
		what := p
		if l.Name != "" {
			what = fmt.Sprintf("listener %q", l.Name)
		}
		switch prev, dup := names[l.Name]; {
		case strings.TrimSpace(l.Name) == "":
			v.atKey(p+".name", "%s.name: not set; every listener needs a unique name (it labels logs and metrics)", p)
		case dup:
			v.at(p+".name", "%s.name: %q is already used by %s; listener names must be unique", p, l.Name, prev)
		default:
			names[l.Name] = p
		}
		switch l.Protocol {
		case "postgres", "mysql":
		case "":
			v.atKey(p+".protocol", "%s: protocol not set; use postgres or mysql", what)
		default:
			v.at(p+".protocol", "%s: protocol %q is not supported; use postgres or mysql", what, l.Protocol)
		}

		switch {
		case l.Address == "" && l.UnixSocket == "":
			v.atKey(p, "%s: set address (host:port) or unix_socket (a path)", what)
		case l.Address != "" && l.UnixSocket != "":
			v.at(p+".unix_socket", "%s: set only one of address and unix_socket; use two listeners for both", what)
		case l.Address != "":
			if err := hostPort(l.Address, true); err != nil {
				v.at(p+".address", "%s: address %v", what, err)
				badAddr = true
			}
		case l.UnixSocket != "":
			if l.Protocol == "postgres" && !strings.Contains(lastElem(l.UnixSocket), ".s.PGSQL.") {
				v.at(p+".unix_socket", "%s: a postgres unix socket must be named .s.PGSQL.<port> (e.g. /run/dbproxy/.s.PGSQL.5432) so clients can connect with host=<dir> port=<port>", what)
			}
		}
		for _, a := range []string{l.Address, l.UnixSocket} {
			if a == "" {
				continue
			}
			if prev, dup := addrs[a]; dup {
				v.at(p, "%s: %s is also used by %s; two listeners cannot share it", what, a, prev)
			} else {
				addrs[a] = what
			}
		}
		if l.SocketMode > 0o777 {
			v.at(p+".socket_mode", "%s: socket_mode %s has bits beyond 0777", what, l.SocketMode)
		}

		if l.TLS != nil {
			t := l.TLS
			switch {
			case t.VaultPKI != nil:
				v.listenerPKI(p+".tls", what, *t)
			case t.CertFile == "" || t.KeyFile == "":
				v.atKey(p+".tls", "%s: tls needs both cert_file and key_file, or vault_pki to have Vault issue the certificate", what)
			}
			v.optFile(p+".tls.cert_file", t.CertFile)
			v.optFile(p+".tls.key_file", t.KeyFile)
			v.optFile(p+".tls.client_ca_file", t.ClientCAFile)
			if t.RequireClientCert && !t.hasClientCA() && l.Auth != "mtls" {
				v.at(p+".tls.require_client_cert", "%s: require_client_cert needs tls.client_ca_file to verify client certificates", what)
			}
		}

		switch l.Auth {
		case "listener":
			switch {
			case l.Identity == "":
				v.atKey(p+".identity", "%s: auth listener needs identity: the name of the identity every client of this listener is", what)
			case !hasKey(v.c.Identities, l.Identity):
				v.at(p+".identity", "%s: identity %q is not defined under identities%s", what, l.Identity, hint(l.Identity, v.c.Identities))
			}
			if l.Address != "" && !badAddr && !isLoopback(l.Address) {
				v.at(p+".address", "%s: auth listener gives every client identity %q, so it must listen on loopback (127.0.0.1 or [::1]) or a unix_socket, not %s", what, l.Identity, l.Address)
			}
		case "peer":
			if l.UnixSocket == "" {
				v.at(p+".auth", "%s: auth peer identifies clients by their unix user, so it needs unix_socket instead of address", what)
			}
		case "mtls":
			if l.TLS == nil || !l.TLS.hasClientCA() {
				v.at(p+".auth", "%s: auth mtls needs tls with cert_file, key_file and client_ca_file (the CA that signs client certificates), or vault_pki with client_ca: true", what)
			}
		case "vault_token", "jwt":
			v.tokenListener(p, what, l)
		case "":
			v.atKey(p+".auth", "%s: cannot tell how clients are identified; set identity (auth listener), use unix_socket (auth peer), tls.require_client_cert with client_ca_file (auth mtls), or auth vault_token or jwt", what)
		default:
			v.at(p+".auth", "%s: auth %q is not supported; use listener, peer, mtls, vault_token or jwt", what, l.Auth)
		}
		if l.JWT != nil && l.Auth != "jwt" {
			v.atKey(p+".jwt", "%s: jwt is only used with auth jwt, but auth is %s; remove it or set auth: jwt", what, l.Auth)
		}
		if l.VaultToken != nil && l.Auth != "vault_token" {
			v.atKey(p+".vault_token", "%s: vault_token is only used with auth vault_token, but auth is %s; remove it or set auth: vault_token", what, l.Auth)
		}
		if (l.Auth == "peer" || l.Auth == "mtls" || l.Auth == "vault_token" || l.Auth == "jwt") && l.Identity != "" {
			v.at(p+".identity", "%s: identity is only used with auth listener, but auth is %s; remove identity or set auth: listener", what, l.Auth)
		}
	}
}

func lastElem(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[i+1:]
	}
	return path
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

// hint suggests the nearest defined name.
func hint[V any](name string, m map[string]V) string {
	fields := map[string]int{}
	for k := range m {
		fields[k] = 0
	}
	if best := closest(name, fields); best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	if len(m) == 0 {
		return " (there are none)"
	}
	return "; defined: " + strings.Join(sortedKeys(m), ", ")
}

func (v *validator) identities() {
	fixed := map[string]bool{} // identities named by a listener
	for _, l := range v.c.Listeners {
		if l.Identity != "" {
			fixed[l.Identity] = true
		}
	}
	uids := map[int]string{}
	cns := map[string]string{}
	spiffe := map[string]string{}
	for _, name := range sortedKeys(v.c.Identities) {
		id := v.c.Identities[name]
		p := "identities." + name
		if strings.TrimSpace(name) == "" {
			v.atKey(p, "identities: an identity needs a non-empty name")
		}
		m := id.Match
		if m.SpiffeID == "" && m.CertCN == "" && m.UnixUID == nil && !m.hasToken() && !fixed[name] {
			v.atKey(p, "identity %q can never be matched: set match.spiffe_id, match.cert_cn, match.unix_uid, a match.vault_* or match.jwt_* rule, or name it as a listener's identity", name)
		}
		for k := range m.VaultMetadata {
			if k == "" {
				v.at(p+".match.vault_metadata", "%s.match.vault_metadata: a key is empty", p)
			}
		}
		for k := range m.JWTClaims {
			if k == "" {
				v.at(p+".match.jwt_claims", "%s.match.jwt_claims: a claim name is empty", p)
			}
		}
		if m.SpiffeID != "" {
			if u, err := url.Parse(m.SpiffeID); err != nil || u.Scheme != "spiffe" || u.Host == "" {
				v.at(p+".match.spiffe_id", "%s.match.spiffe_id: %q is not a SPIFFE ID; write it like spiffe://trust-domain/service", p, m.SpiffeID)
			} else if prev, dup := spiffe[m.SpiffeID]; dup {
				v.at(p+".match.spiffe_id", "%s.match.spiffe_id: %q also matches identity %q; a client must match one identity only", p, m.SpiffeID, prev)
			} else {
				spiffe[m.SpiffeID] = name
			}
		}
		if m.CertCN != "" {
			if prev, dup := cns[m.CertCN]; dup {
				v.at(p+".match.cert_cn", "%s.match.cert_cn: %q also matches identity %q; a client must match one identity only", p, m.CertCN, prev)
			} else {
				cns[m.CertCN] = name
			}
		}
		if m.UnixUID != nil {
			if *m.UnixUID < 0 {
				v.at(p+".match.unix_uid", "%s.match.unix_uid: %d; a uid is 0 or more", p, *m.UnixUID)
			} else if prev, dup := uids[*m.UnixUID]; dup {
				v.at(p+".match.unix_uid", "%s.match.unix_uid: %d also matches identity %q; a client must match one identity only", p, *m.UnixUID, prev)
			} else {
				uids[*m.UnixUID] = name
			}
		}

		if id.Admin && !v.hasPostgresListener() {
			v.at(p+".admin", "%s.admin: the admin console is served on postgres listeners (psql -d %s), and none is configured; add one or remove admin", p, ConsoleDatabase)
		}
		seen := map[[2]string]int{}
		for i, g := range id.Grants {
			gp := fmt.Sprintf("%s.grants[%d]", p, i)
			if g.Backend == "" {
				v.atKey(gp+".backend", "%s: backend not set; name one of the backends", gp)
				continue
			}
			b, ok := v.c.Backends[g.Backend]
			if !ok {
				v.at(gp+".backend", "%s: backend %q is not defined under backends%s", gp, g.Backend, hint(g.Backend, v.c.Backends))
				continue
			}
			role := g.Role
			if own := b.CredentialRole(); role == "" {
				role = own
			} else if b.VaultRole == "" && own != "" && role != own {
				v.at(gp+".role", "%s.role: %q, but backend %q takes its one credential from %s; leave role out (or write %q)", gp, role, g.Backend, sourceName(b), own)
				continue
			}
			if role == "" {
				v.atKey(gp, "%s: no Vault role for backend %q; set role here or vault_role on the backend", gp, g.Backend)
				continue
			}
			k := [2]string{g.Backend, role}
			if j, dup := seen[k]; dup {
				v.atKey(gp, "%s: same backend %q and role %q as grants[%d]; remove one", gp, g.Backend, role, j)
			}
			seen[k] = i
		}
	}
}

// ConsoleDatabase is the database name that selects the SQL admin
// console on postgres listeners.
const ConsoleDatabase = "dbproxy"

func (v *validator) hasPostgresListener() bool {
	for _, l := range v.c.Listeners {
		if l.Protocol == "postgres" {
			return true
		}
	}
	return false
}

func (v *validator) admin() {
	a := v.c.Admin
	if a.Disabled {
		return
	}
	if a.Address == "" {
		v.at("admin.address", "admin.address: empty; leave the key out for %s, or set admin.disabled: true", DefaultAdminAddress)
		return
	}
	if err := hostPort(a.Address, true); err != nil {
		v.at("admin.address", "admin.address: %v", err)
		return
	}
	for i, h := range a.AllowedHosts {
		if h == "" || strings.ContainsAny(h, "/ @*") {
			v.at(fmt.Sprintf("admin.allowed_hosts[%d]", i), "admin.allowed_hosts[%d]: %q is not a host name or host:port; write it like dbproxy.internal or dbproxy.internal:9187 (no scheme, path or wildcard)", i, h)
		}
	}
	if a.TokenFile != "" {
		v.file("admin.token_file", a.TokenFile)
		if b, err := os.ReadFile(a.TokenFile); err == nil && strings.TrimSpace(string(b)) == "" {
			v.at("admin.token_file", "admin.token_file: %q is empty; put the bearer token in it", a.TokenFile)
		}
	} else if !isLoopback(a.Address) {
		v.at("admin.address", "admin.address: %s is not a loopback address, so admin.token_file is required (a file holding the bearer token for /v1 requests); or listen on 127.0.0.1", a.Address)
	}
}

// fleetName is what may go into a KV path segment: no slashes, no dots only.
var fleetName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (v *validator) fleet() {
	f := v.c.Fleet
	if f == nil {
		if v.c.src != nil && v.c.src.null["fleet"] {
			v.atKey("fleet", "fleet: empty; set fleet.name to share credentials with the other instances of that name, or remove the key to keep fleet mode off")
		}
		return
	}
	switch {
	case f.Name == "":
		v.atKey("fleet.name", "fleet.name: required; instances with the same name share credentials, e.g. name: orders-api")
	case !fleetName.MatchString(f.Name):
		v.at("fleet.name", "fleet.name: %q may only contain letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit); it becomes part of a Vault KV path", f.Name)
	}
	if f.InstanceID != "" && !fleetName.MatchString(f.InstanceID) {
		v.at("fleet.instance_id", "fleet.instance_id: %q may only contain letters, digits, '.', '_' and '-' (at most 64); leave the key out for hostname-pid-random", f.InstanceID)
	}
	for _, k := range []struct{ key, val, def string }{{"kv_mount", f.KVMount, DefaultFleetKVMount}, {"kv_path", f.KVPath, DefaultFleetKVPath}} {
		p := "fleet." + k.key
		switch {
		case k.val == "":
			v.at(p, "%s: empty; leave the key out to use %q", p, k.def)
		case strings.HasPrefix(k.val, "/") || strings.HasSuffix(k.val, "/") || strings.Contains(k.val, "//") || slices.Contains(strings.Split(k.val, "/"), ".."):
			v.at(p, "%s: %q is not a Vault path; write it without leading or trailing slashes, like %q", p, k.val, k.def)
		}
	}
	if f.PollInterval.D() < 100*time.Millisecond {
		v.at("fleet.poll_interval", "fleet.poll_interval: %s is too short; each poll reads Vault, use at least 100ms (default %s)", f.PollInterval, DefaultFleetPollInterval)
	}
	if f.LockTTL < 3*f.PollInterval {
		v.at("fleet.lock_ttl", "fleet.lock_ttl: %s must be at least three poll intervals (3 x %s), or a live issuer could look dead between two polls", f.LockTTL, f.PollInterval)
	}
}

// minMemoryLimit is the smallest runtime.memory_limit accepted: below it the
// collector would run all the time.
const minMemoryLimit = 16 << 20

func (v *validator) runtime() {
	r := v.c.Runtime
	if r.GOMAXPROCS < 0 {
		v.at("runtime.gomaxprocs", "runtime.gomaxprocs: %d is negative; write 0 for Go's default (the CPUs available) or a number of threads", r.GOMAXPROCS)
	}
	if r.GOGC < -1 {
		v.at("runtime.gogc", "runtime.gogc: %d is not a GC percentage; write 0 for Go's default (100), a percentage such as 200, or -1 for off (with runtime.memory_limit)", r.GOGC)
	}
	n, err := r.MemoryLimitBytes()
	switch {
	case err != nil:
		v.at("runtime.memory_limit", "runtime.memory_limit: %v", err)
	case r.MemoryLimit != "" && n < minMemoryLimit:
		v.at("runtime.memory_limit", "runtime.memory_limit: %s is below 16MiB; the collector would run all the time", r.MemoryLimit)
	case r.GOGC == -1 && r.MemoryLimit == "":
		v.at("runtime.gogc", "runtime.gogc: -1 turns the collector off, so the heap would grow without bound; set runtime.memory_limit too (e.g. 256MiB), or use a percentage")
	}
}
