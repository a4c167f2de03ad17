// Package config is dbproxy's one configuration: the documented Config
// struct, loading it from YAML, defaults, and validation with file:line:col
// messages. No other package reads files or the environment for settings;
// cmd/dbproxy maps Config onto each package's own small option structs.
//
// Load reads the file, rejects unknown keys (with a "did you mean" hint),
// applies the defaults documented on each field, and validates the result,
// reporting every problem at once as Problems ("FILE:LINE:COL: msg").
//
// A default applies when a key is absent or empty (`key:`); a value written
// explicitly, even 0 or "", is validated as written. For a Config built in
// code (no file), a default applies to zero values.
//
// Paths to files (ca_file, token_file, cert_file, unix_socket, ...) may be
// relative; they are resolved against the directory holding the
// configuration file, and Config holds the resolved paths.
//
// Secrets are never written in the configuration: there is no field for
// one. Vault credentials are read from files (token_file, role_id_file,
// secret_id_file, jwt_file), database credentials come from Vault.
//
// The only environment variable read is VAULT_ADDR, the default for
// vault.address when that key is absent.
package config

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole dbproxy configuration file.
type Config struct {
	// Vault says where the credential broker lives and how dbproxy logs in.
	Vault Vault `yaml:"vault"`
	// Backends are the databases clients may reach, keyed by the name
	// clients put in their `database` startup parameter.
	Backends map[string]Backend `yaml:"backends"`
	// Listeners are the sockets clients connect to.
	Listeners []Listener `yaml:"listeners"`
	// Identities name the services that may connect and what they may use.
	Identities map[string]Identity `yaml:"identities"`
	// Admin is the HTTP listener for metrics, health and operations.
	Admin Admin `yaml:"admin"`
	// ShutdownTimeout bounds how long SIGTERM waits for open sessions.
	// Default 30s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// Fleet, when set, makes every dbproxy with the same fleet name share
	// one credential generation per backend and role through Vault KV v2
	// (docs/fleet.md). Absent (the default): each instance has its own.
	Fleet *Fleet `yaml:"fleet"`
	// Runtime tunes the Go runtime. Default: Go's own defaults.
	Runtime Runtime `yaml:"runtime"`

	// src remembers where each setting was written; nil when the Config
	// was built in code.
	src *source
}

// Vault configures the Vault client dbproxy uses to fetch credentials.
type Vault struct {
	// Address is the Vault URL, e.g. https://vault.internal:8200.
	// Default: the environment variable VAULT_ADDR, when the key is absent.
	Address string `yaml:"address"`
	// CAFile verifies Vault's TLS certificate; empty uses system roots.
	CAFile string `yaml:"ca_file"`
	// Namespace is the Vault Enterprise namespace, if any.
	Namespace string `yaml:"namespace"`
	// RequestTimeout bounds each Vault HTTP request. Default 10s.
	RequestTimeout Duration `yaml:"request_timeout"`
	// Auth says how dbproxy obtains its own Vault token.
	Auth VaultAuth `yaml:"auth"`
}

// VaultAuth selects a login method. Secrets are read only from files.
type VaultAuth struct {
	// Method is token, approle or kubernetes.
	Method string `yaml:"method"`
	// TokenFile holds a Vault token (method token).
	TokenFile string `yaml:"token_file"`
	// RoleIDFile and SecretIDFile hold AppRole credentials (method approle).
	RoleIDFile   string `yaml:"role_id_file"`
	SecretIDFile string `yaml:"secret_id_file"`
	// JWTFile holds the service account token (method kubernetes).
	// Default /var/run/secrets/kubernetes.io/serviceaccount/token.
	JWTFile string `yaml:"jwt_file"`
	// Role is the Vault auth role (method kubernetes, required).
	Role string `yaml:"role"`
	// Mount is the auth method's mount path. Default: the method name.
	Mount string `yaml:"mount"`
}

// Backend is one upstream database server and how to get credentials for it.
type Backend struct {
	// Protocol is postgres or mysql.
	Protocol string `yaml:"protocol"`
	// Address is host:port of the database server.
	Address string `yaml:"address"`
	// Database is the upstream database name. Default: the backend's name.
	Database string `yaml:"database"`
	// TLS configures the connection from dbproxy to the database.
	TLS UpstreamTLS `yaml:"tls"`
	// VaultMount is the database secrets engine mount. Default "database".
	VaultMount string `yaml:"vault_mount"`
	// VaultRole is the default Vault role (database/creds/ROLE) for grants
	// that name no role of their own.
	VaultRole string `yaml:"vault_role"`
	// VaultStaticRole takes credentials from a Vault static role instead
	// (vault_mount/static-creds/NAME): one database user whose password
	// Vault rotates; dbproxy reads it again just after each rotation.
	// Exclusive with vault_role and kv.
	VaultStaticRole string `yaml:"vault_static_role"`
	// KV takes credentials from a KV version 2 secret instead, for a
	// database Vault's database engine does not manage. Exclusive with
	// vault_role and vault_static_role.
	KV *BackendKV `yaml:"kv"`
	// AllowInsecureAuth permits cleartext and MD5 password exchanges with
	// the upstream. Off by default: SCRAM (or TLS) is required.
	AllowInsecureAuth bool `yaml:"allow_insecure_auth"`
	// ConnectTimeout bounds dialing and authenticating upstream. Default 10s.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// Pool sizes the upstream connection pool.
	Pool Pool `yaml:"pool"`
	// Lease tunes credential rotation for this backend.
	Lease Lease `yaml:"lease"`
}

// BackendKV locates a KV version 2 secret holding a backend's username
// and password. A new version of the secret is a new credential.
type BackendKV struct {
	// Mount is the KV v2 secrets engine. Default "secret".
	Mount string `yaml:"mount"`
	// Path is the secret's path under the mount. Required.
	Path string `yaml:"path"`
	// UsernameField and PasswordField name the secret's keys. Default
	// username and password.
	UsernameField string `yaml:"username_field"`
	PasswordField string `yaml:"password_field"`
}

// CredentialRole names the backend's own credential source, the role its
// grants get when they name none: vault_role, vault_static_role, or
// "kv:MOUNT/PATH" for a KV secret.
func (b Backend) CredentialRole() string {
	switch {
	case b.KV != nil:
		return "kv:" + b.KV.Mount + "/" + b.KV.Path
	case b.VaultStaticRole != "":
		return b.VaultStaticRole
	}
	return b.VaultRole
}

// UpstreamTLS is how dbproxy verifies the database server.
type UpstreamTLS struct {
	// Mode is disable, require or verify-full. Default verify-full when
	// ca_file is set, else disable.
	Mode string `yaml:"mode"`
	// CAFile verifies the server certificate (verify-full).
	CAFile string `yaml:"ca_file"`
	// ServerName overrides the name checked in the certificate.
	ServerName string `yaml:"server_name"`
	// VaultPKI issues the client certificate dbproxy presents to the
	// database (upstream mTLS) from Vault PKI, renewed like a listener's.
	VaultPKI *VaultPKI `yaml:"vault_pki"`
}

// Pool sizes a backend's upstream connection pool.
type Pool struct {
	// Mode is session or transaction. Default session.
	Mode string `yaml:"mode"`
	// MaxConnections caps upstream connections per backend and role.
	// Default 20.
	MaxConnections int `yaml:"max_connections"`
	// MinIdle keeps this many idle upstream connections open. Default 0.
	MinIdle int `yaml:"min_idle"`
	// CheckoutTimeout is how long a client waits for a free upstream
	// connection before getting "too many connections". Default 5s.
	CheckoutTimeout Duration `yaml:"checkout_timeout"`
	// IdleTimeout closes upstream connections idle this long. Default 5m.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// IdleTransactionTimeout ends a transaction-mode session that sits
	// idle inside a transaction this long, holding a server connection
	// others wait for. Default 0: off.
	IdleTransactionTimeout Duration `yaml:"idle_transaction_timeout"`
}

// Lease tunes how a backend's credentials are rotated before they end.
type Lease struct {
	// RotateBefore starts rotation this long before the credential's hard
	// end. Default: the larger of 30s and 20% of the lease's max TTL.
	RotateBefore Duration `yaml:"rotate_before"`
	// DrainTimeout is how long old-generation sessions get to reach a
	// transaction boundary after rotation. Default 30s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// SafetyMargin closes remaining old-generation sessions this long before
	// the hard end. Default 5s.
	SafetyMargin Duration `yaml:"safety_margin"`
	// RevokeGrace is how long a generation whose lease was revoked outside
	// dbproxy may keep serving before its sessions are closed. Default 5s.
	RevokeGrace Duration `yaml:"revoke_grace"`
	// MaxIssuePerMinute caps new credentials per role per minute. Default 6.
	MaxIssuePerMinute int `yaml:"max_issue_per_minute"`
	// PollInterval (vault_static_role and kv only) reads the password
	// this often to notice changes made outside Vault's schedule: a
	// forced rotation (database/rotate-role) or a new KV version. 0s:
	// only at Vault's scheduled rotations and after a refused login.
	// Default 1m.
	PollInterval Duration `yaml:"poll_interval"`
}

// Listener is one socket clients connect to.
type Listener struct {
	// Name identifies the listener in logs and metrics.
	Name string `yaml:"name"`
	// Protocol is postgres or mysql.
	Protocol string `yaml:"protocol"`
	// Address is host:port for TCP. Exactly one of Address and UnixSocket.
	Address string `yaml:"address"`
	// UnixSocket is a socket path. For postgres, clients connect with
	// host=<dir> and the path must end in .s.PGSQL.<port>.
	UnixSocket string `yaml:"unix_socket"`
	// SocketMode is the unix socket's permission bits, written in octal
	// ("0660"). Default 0660.
	SocketMode FileMode `yaml:"socket_mode"`
	// Auth is how clients on this listener are identified: listener (every
	// client is Identity), peer (unix socket peer uid), mtls (client
	// certificate), vault_token (a Vault token sent as the password) or
	// jwt (a JWT sent as the password). Default: listener when identity
	// is set, peer on a unix socket, mtls when tls.require_client_cert is
	// set. vault_token and jwt need tls or a unix_socket: the listener
	// never asks for a token over cleartext TCP.
	Auth string `yaml:"auth"`
	// Identity is the one identity of every client (auth listener).
	Identity string `yaml:"identity"`
	// TLS, when set, lets clients upgrade to TLS.
	TLS *ListenerTLS `yaml:"tls"`
	// VaultToken tunes auth vault_token.
	VaultToken *ListenerVaultToken `yaml:"vault_token"`
	// JWT configures auth jwt (required for it).
	JWT *ListenerJWT `yaml:"jwt"`
}

// ListenerVaultToken tunes how Vault tokens sent as passwords are checked
// (auth/token/lookup-self, asked with the client's own token at
// vault.address).
type ListenerVaultToken struct {
	// CacheTTL caps how long a valid token is remembered (by its SHA-256,
	// never the token) before Vault is asked again; never longer than the
	// token's remaining TTL. Default 1m.
	CacheTTL Duration `yaml:"cache_ttl"`
}

// ListenerJWT says which JWTs a listener accepts as passwords.
type ListenerJWT struct {
	// Issuer must equal the token's iss claim. Required.
	Issuer string `yaml:"issuer"`
	// Audience must be among the token's aud claim. Required.
	Audience string `yaml:"audience"`
	// JWKSFile is a file holding the issuer's public keys (a JWKS).
	JWKSFile string `yaml:"jwks_file"`
	// JWKSURL is where to fetch the issuer's JWKS (https, or http on
	// loopback). It is fetched on first use, again when a token names an
	// unknown key id (at most every 30s) and when older than 1h.
	// Exactly one of jwks_file and jwks_url.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSCAFile verifies the JWKS URL's TLS certificate; empty uses the
	// system roots.
	JWKSCAFile string `yaml:"jwks_ca_file"`
	// Algorithms the token may be signed with. Default [RS256, ES256].
	// Only asymmetric algorithms: none and HS* are refused.
	Algorithms []string `yaml:"algorithms"`
	// ClockSkew tolerated on exp and nbf. Default 30s.
	ClockSkew Duration `yaml:"clock_skew"`
	// SessionOutlivesToken keeps sessions open after the token's exp.
	// Default false: a session ends when its token expires.
	SessionOutlivesToken bool `yaml:"session_outlives_token"`
}

// ListenerTLS is the server side TLS of a listener.
type ListenerTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile verifies client certificates (auth mtls).
	ClientCAFile string `yaml:"client_ca_file"`
	// RequireClientCert refuses clients without a verified certificate.
	// Default true when auth is mtls; needs ClientCAFile.
	RequireClientCert bool `yaml:"require_client_cert"`
	// Required refuses clients that do not upgrade to TLS. Default true
	// when auth is mtls.
	Required bool `yaml:"required"`
	// VaultPKI issues the listener's certificate from Vault's PKI secrets
	// engine instead of cert_file and key_file: at start, and again at
	// about two thirds of its life, without dropping connections.
	VaultPKI *VaultPKI `yaml:"vault_pki"`
}

// VaultPKI is a certificate from Vault PKI (MOUNT/issue/ROLE).
type VaultPKI struct {
	// Mount is the PKI secrets engine. Default "pki".
	Mount string `yaml:"mount"`
	// Role is the PKI role certificates are issued under. Required.
	Role string `yaml:"role"`
	// CommonName of the certificate. Required.
	CommonName string `yaml:"common_name"`
	// AltNames are further DNS names (subject alternative names).
	AltNames []string `yaml:"alt_names"`
	// IPSANs are IP addresses the certificate is valid for.
	IPSANs []string `yaml:"ip_sans"`
	// TTL asks for this lifetime; the role's max_ttl caps it. Default:
	// the role's ttl.
	TTL Duration `yaml:"ttl"`
	// ClientCA (listeners only) verifies client certificates with the
	// mount's CA (MOUNT/ca/pem) instead of tls.client_ca_file; it is read
	// again at each renewal.
	ClientCA bool `yaml:"client_ca"`
}

// Identity is one service that may connect, how it is recognised, and
// what it may use.
type Identity struct {
	Match  Match   `yaml:"match"`
	Grants []Grant `yaml:"grants"`
	// Admin lets the identity use the SQL admin console: database
	// "dbproxy" on a postgres listener (psql -d dbproxy), which shows
	// pools, clients and leases and can pause, rotate and kill.
	Admin bool `yaml:"admin"`
}

// Match says how a client is recognised as this identity. Any one kind
// of proof is enough: a certificate (spiffe_id, cert_cn), a unix uid, a
// Vault token (vault_*) or a JWT (jwt_*, or spiffe_id for a JWT-SVID).
// Within the vault_* fields, and within the jwt_* fields, every field set
// must match, so adding one never lets more clients in. A token matching
// two identities is refused.
type Match struct {
	// SpiffeID matches a URI SAN in the client certificate, or the sub
	// of a JWT (a JWT-SVID).
	SpiffeID string `yaml:"spiffe_id"`
	// CertCN matches the client certificate's subject common name.
	CertCN string `yaml:"cert_cn"`
	// UnixUID matches the peer uid on a unix socket.
	UnixUID *int `yaml:"unix_uid"`
	// VaultEntity matches the name of a Vault token's entity (read with
	// the token itself; Vault's default policy allows it).
	VaultEntity string `yaml:"vault_entity"`
	// VaultEntityID matches a Vault token's entity_id.
	VaultEntityID string `yaml:"vault_entity_id"`
	// VaultPolicy matches a Vault token that carries this policy (token
	// or identity policy).
	VaultPolicy string `yaml:"vault_policy"`
	// VaultMetadata matches a Vault token whose metadata has every one of
	// these keys with these values.
	VaultMetadata map[string]string `yaml:"vault_metadata"`
	// JWTSubject matches a JWT's sub claim, e.g.
	// system:serviceaccount:shop:orders for a Kubernetes token.
	JWTSubject string `yaml:"jwt_subject"`
	// JWTClaims matches a JWT whose top-level claims have these values (a
	// list claim must contain the value).
	JWTClaims map[string]string `yaml:"jwt_claims"`
}

// Grant lets an identity use a backend with credentials of a Vault role.
type Grant struct {
	Backend string `yaml:"backend"`
	// Role is the Vault role; default the backend's vault_role. The
	// client's user name selects among several grants for one backend.
	Role string `yaml:"role"`
}

// Admin is the HTTP listener for /metrics, /healthz, /readyz and /v1.
type Admin struct {
	// Address is host:port. Default 127.0.0.1:9187 unless Disabled.
	Address string `yaml:"address"`
	// Disabled turns the admin listener off.
	Disabled bool `yaml:"disabled"`
	// TokenFile holds a bearer token required for /v1 requests; it is
	// mandatory when Address is not a loopback address.
	TokenFile string `yaml:"token_file"`
	// AllowedHosts are further names, "host" or "host:port", that
	// state-changing /v1 requests (POST) may carry in their Host header,
	// e.g. the DNS name operators use for a listener on 0.0.0.0. The
	// listener's own address, localhost, 127.0.0.1 and [::1] are always
	// allowed; any other Host is refused as possible DNS rebinding.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// Pprof serves Go's profiler at /debug/pprof/ (behind the token when
	// one is set). Default false.
	Pprof bool `yaml:"pprof"`
}

// Fleet is fleet mode: instances that share Name share credentials.
type Fleet struct {
	// Name: instances with the same name (in one Vault) share each
	// backend and role's credential. Required; letters, digits, . _ -.
	Name string `yaml:"name"`
	// KVMount is the KV version 2 secrets engine holding the shared
	// records. Default "secret".
	KVMount string `yaml:"kv_mount"`
	// KVPath is where under kv_mount the records live; the fleet's are
	// at KVPath/Name/BACKEND/ROLE/. Default "dbproxy/fleet".
	KVPath string `yaml:"kv_path"`
	// InstanceID names this instance in the records and the admin API.
	// Default: hostname-pid-random, new at every start.
	InstanceID string `yaml:"instance_id"`
	// LockTTL: an issuer that has not extended its lock this long is
	// replaced by another instance. Keep it well under the credentials'
	// TTL. Default 10s.
	LockTTL Duration `yaml:"lock_ttl"`
	// PollInterval: each instance reads the records every PollInterval/2
	// to PollInterval. Default 2s.
	PollInterval Duration `yaml:"poll_interval"`
}

// Runtime tunes the Go runtime dbproxy runs on. A zero value keeps Go's
// default for that setting, which also honours the GOMAXPROCS, GOGC and
// GOMEMLIMIT environment variables; a value written here wins over them.
// bench/RESULTS.md ("Go runtime settings") has the figures behind the
// defaults.
type Runtime struct {
	// GOMAXPROCS is how many threads run Go code at once. 0 (default):
	// Go's default, the CPUs available to the process (cgroup quota
	// included).
	GOMAXPROCS int `yaml:"gomaxprocs"`
	// GOGC is the garbage collector's target heap growth in percent. 0
	// (default): Go's default, 100. -1 turns the proportional collector
	// off, so the heap is collected only near MemoryLimit, which must then
	// be set.
	GOGC int `yaml:"gogc"`
	// MemoryLimit is a soft limit on the memory the Go runtime uses, with
	// a unit: B, KiB, MiB, GiB or TiB, e.g. "256MiB". "" (default): no
	// limit.
	MemoryLimit string `yaml:"memory_limit"`
}

// MemoryLimitBytes returns MemoryLimit in bytes, 0 when it is "".
func (r Runtime) MemoryLimitBytes() (int64, error) {
	return ParseByteSize(r.MemoryLimit)
}

// ParseByteSize parses a size with a binary unit as GOMEMLIMIT writes it:
// "256MiB", "1GiB", "1048576B". "" is 0.
func ParseByteSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}
	for _, u := range units {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a size; write a whole number and a unit, like 256MiB or 1GiB", s)
		}
		if n > (1<<62)>>u.shift {
			return 0, fmt.Errorf("%q is too large", s)
		}
		return n << u.shift, nil
	}
	return 0, fmt.Errorf("%q has no unit; write it like 256MiB or 1GiB (units B, KiB, MiB, GiB, TiB)", s)
}

// Duration is a time.Duration written in YAML as "30s", "5m" or "1h30m".
type Duration time.Duration

// UnmarshalYAML parses Go duration strings.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("want a duration such as 30s or 5m: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration; write it like 30s, 5m or 1h30m", s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats the duration like time.Duration ("30s", "5m0s").
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalYAML writes the duration as a string such as "30s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// FileMode is a permission mode written as an octal string such as "0660".
// Like chmod, the digits are always octal: 0660, "0660", "660" and "0o660"
// are the same mode.
type FileMode uint32

// UnmarshalYAML parses octal permission bits.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want an octal mode such as \"0660\"")
	}
	s := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || s == "" {
		return fmt.Errorf("%q is not an octal mode; write it like \"0660\"", n.Value)
	}
	if v > 0o777 {
		return fmt.Errorf("%q has bits beyond 0777; write permission bits only, like \"0660\"", n.Value)
	}
	*m = FileMode(v)
	return nil
}

// Perm returns the mode as os.FileMode permission bits.
func (m FileMode) Perm() os.FileMode { return os.FileMode(m) & os.ModePerm }

// String formats the mode in octal with a leading zero, e.g. "0660".
func (m FileMode) String() string { return fmt.Sprintf("%#04o", uint32(m)) }

// MarshalYAML writes the mode as an octal string such as "0660".
func (m FileMode) MarshalYAML() (any, error) { return m.String(), nil }
