package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults, as documented on the Config fields.
const (
	DefaultShutdownTimeout    = 30 * time.Second
	DefaultRequestTimeout     = 10 * time.Second
	DefaultVaultMount         = "database"
	DefaultConnectTimeout     = 10 * time.Second
	DefaultPoolMode           = "session"
	DefaultMaxConnections     = 20
	DefaultCheckoutTimeout    = 5 * time.Second
	DefaultIdleTimeout        = 5 * time.Minute
	DefaultDrainTimeout       = 30 * time.Second
	DefaultSafetyMargin       = 5 * time.Second
	DefaultRevokeGrace        = 5 * time.Second
	DefaultMaxIssuePerMinute  = 6
	DefaultSocketMode         = FileMode(0o660)
	DefaultAdminAddress       = "127.0.0.1:9187"
	DefaultKubernetesJWTFile  = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultVaultTokenCacheTTL = time.Minute
	DefaultJWTClockSkew       = 30 * time.Second
	DefaultFleetKVMount       = "secret"
	DefaultFleetKVPath        = "dbproxy/fleet"
	DefaultFleetLockTTL       = 10 * time.Second
	DefaultFleetPollInterval  = 2 * time.Second
	DefaultKVMount            = "secret"
	DefaultSourcePoll         = time.Minute
	DefaultPKIMount           = "pki"
)

// DefaultJWTAlgorithms are the JWT signature algorithms accepted when a
// listener names none.
var DefaultJWTAlgorithms = []string{"RS256", "ES256"}

// Load reads the YAML configuration at path, applies defaults and
// validates it. Any problem in the file is returned as Problems, each
// located at FILE:LINE:COL; an unreadable file is a plain error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load for configuration text already in memory. file names it in
// messages, and relative paths inside are resolved against its directory.
func Parse(file string, data []byte) (*Config, error) {
	c := &Config{}
	src, probs := parse(file, data, c)
	c.src = src
	if len(probs) > 0 && len(src.val) == 0 {
		return nil, probs // nothing decoded: syntax error or empty file
	}
	c.resolvePaths(filepath.Dir(file))
	c.SetDefaults()
	// Validate even when decoding found problems, so that one run reports
	// everything; skip what a decoding problem already reports at the same
	// place (a bad value decodes as zero and would fail validation too).
	var vps Problems
	if err := c.Validate(); err != nil {
		vps = err.(Problems)
	}
	at := map[pos]bool{}
	for _, p := range probs {
		at[pos{p.Line, p.Col}] = true
	}
	for _, p := range vps {
		if !at[pos{p.Line, p.Col}] {
			probs = append(probs, p)
		}
	}
	if len(probs) > 0 {
		sortProblems(probs)
		return nil, probs
	}
	return c, nil
}

// absent reports whether the setting at path should get its default: it
// was not written (or written empty) in the file, or, for a Config built
// in code, it is the zero value.
func (c *Config) absent(path string, zero bool) bool {
	if c.src == nil {
		return zero
	}
	if c.src.null[path] {
		return true
	}
	_, ok := c.src.val[path]
	return !ok
}

func setDur(c *Config, path string, d *Duration, def time.Duration) {
	if c.absent(path, *d == 0) {
		*d = Duration(def)
	}
}

func setInt(c *Config, path string, i *int, def int) {
	if c.absent(path, *i == 0) {
		*i = def
	}
}

func setStr(c *Config, path string, s *string, def string) {
	if c.absent(path, *s == "") {
		*s = def
	}
}

// SetDefaults fills in every default documented on the Config fields. Load
// calls it; call it yourself only for a Config built in code.
func (c *Config) SetDefaults() {
	setDur(c, "shutdown_timeout", &c.ShutdownTimeout, DefaultShutdownTimeout)

	if c.absent("vault.address", c.Vault.Address == "") {
		if a, ok := os.LookupEnv("VAULT_ADDR"); ok && a != "" {
			c.Vault.Address = a
		}
	}
	setDur(c, "vault.request_timeout", &c.Vault.RequestTimeout, DefaultRequestTimeout)
	a := &c.Vault.Auth
	setStr(c, "vault.auth.mount", &a.Mount, a.Method)
	if a.Method == "kubernetes" {
		setStr(c, "vault.auth.jwt_file", &a.JWTFile, DefaultKubernetesJWTFile)
	}

	for name, b := range c.Backends {
		p := "backends." + name
		setStr(c, p+".database", &b.Database, name)
		setStr(c, p+".vault_mount", &b.VaultMount, DefaultVaultMount)
		setDur(c, p+".connect_timeout", &b.ConnectTimeout, DefaultConnectTimeout)
		mode := "disable"
		if b.TLS.CAFile != "" {
			mode = "verify-full"
		}
		setStr(c, p+".tls.mode", &b.TLS.Mode, mode)
		setStr(c, p+".pool.mode", &b.Pool.Mode, DefaultPoolMode)
		setInt(c, p+".pool.max_connections", &b.Pool.MaxConnections, DefaultMaxConnections)
		setDur(c, p+".pool.checkout_timeout", &b.Pool.CheckoutTimeout, DefaultCheckoutTimeout)
		setDur(c, p+".pool.idle_timeout", &b.Pool.IdleTimeout, DefaultIdleTimeout)
		// lease.rotate_before stays 0: "computed later from the max TTL".
		setDur(c, p+".lease.drain_timeout", &b.Lease.DrainTimeout, DefaultDrainTimeout)
		setDur(c, p+".lease.safety_margin", &b.Lease.SafetyMargin, DefaultSafetyMargin)
		setDur(c, p+".lease.revoke_grace", &b.Lease.RevokeGrace, DefaultRevokeGrace)
		setInt(c, p+".lease.max_issue_per_minute", &b.Lease.MaxIssuePerMinute, DefaultMaxIssuePerMinute)
		if b.KV != nil {
			kv := *b.KV
			setStr(c, p+".kv.mount", &kv.Mount, DefaultKVMount)
			setStr(c, p+".kv.username_field", &kv.UsernameField, "username")
			setStr(c, p+".kv.password_field", &kv.PasswordField, "password")
			b.KV = &kv
		}
		if b.TLS.VaultPKI != nil {
			pki := *b.TLS.VaultPKI
			setStr(c, p+".tls.vault_pki.mount", &pki.Mount, DefaultPKIMount)
			b.TLS.VaultPKI = &pki
		}
		if b.KV != nil || b.VaultStaticRole != "" {
			setDur(c, p+".lease.poll_interval", &b.Lease.PollInterval, DefaultSourcePoll)
		}
		c.Backends[name] = b
	}

	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)
		if l.UnixSocket != "" && c.absent(p+".socket_mode", l.SocketMode == 0) {
			l.SocketMode = DefaultSocketMode
		}
		var auth string
		switch {
		case l.Identity != "":
			auth = "listener"
		case l.JWT != nil:
			auth = "jwt"
		case l.VaultToken != nil:
			auth = "vault_token"
		case l.UnixSocket != "":
			auth = "peer"
		case l.TLS != nil && l.TLS.RequireClientCert:
			auth = "mtls"
		}
		setStr(c, p+".auth", &l.Auth, auth)
		if l.Auth == "vault_token" {
			if l.VaultToken == nil {
				l.VaultToken = &ListenerVaultToken{}
			}
			setDur(c, p+".vault_token.cache_ttl", &l.VaultToken.CacheTTL, DefaultVaultTokenCacheTTL)
		}
		if l.JWT != nil {
			setDur(c, p+".jwt.clock_skew", &l.JWT.ClockSkew, DefaultJWTClockSkew)
			if c.absent(p+".jwt.algorithms", len(l.JWT.Algorithms) == 0) {
				l.JWT.Algorithms = append([]string(nil), DefaultJWTAlgorithms...)
			}
		}
		if l.TLS != nil && l.TLS.VaultPKI != nil {
			setStr(c, p+".tls.vault_pki.mount", &l.TLS.VaultPKI.Mount, DefaultPKIMount)
		}
		if l.Auth == "mtls" && l.TLS != nil {
			if c.absent(p+".tls.require_client_cert", !l.TLS.RequireClientCert) {
				l.TLS.RequireClientCert = true
			}
			if c.absent(p+".tls.required", !l.TLS.Required) {
				l.TLS.Required = true
			}
		}
	}

	if !c.Admin.Disabled {
		setStr(c, "admin.address", &c.Admin.Address, DefaultAdminAddress)
	}
	if f := c.Fleet; f != nil {
		setStr(c, "fleet.kv_mount", &f.KVMount, DefaultFleetKVMount)
		setStr(c, "fleet.kv_path", &f.KVPath, DefaultFleetKVPath)
		setDur(c, "fleet.lock_ttl", &f.LockTTL, DefaultFleetLockTTL)
		setDur(c, "fleet.poll_interval", &f.PollInterval, DefaultFleetPollInterval)
	}
}

// resolvePaths makes every relative file path in c relative to dir.
func (c *Config) resolvePaths(dir string) {
	fix := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) && !strings.HasPrefix(*p, "@") {
			*p = filepath.Join(dir, *p)
		}
	}
	fix(&c.Vault.CAFile)
	a := &c.Vault.Auth
	fix(&a.TokenFile)
	fix(&a.RoleIDFile)
	fix(&a.SecretIDFile)
	fix(&a.JWTFile)
	for name, b := range c.Backends {
		fix(&b.TLS.CAFile)
		c.Backends[name] = b
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		fix(&l.UnixSocket)
		if l.TLS != nil {
			fix(&l.TLS.CertFile)
			fix(&l.TLS.KeyFile)
			fix(&l.TLS.ClientCAFile)
		}
		if l.JWT != nil {
			fix(&l.JWT.JWKSFile)
			fix(&l.JWT.JWKSCAFile)
		}
	}
	fix(&c.Admin.TokenFile)
}

// ReadSecretFile returns the contents of a secret file (a token, role id
// or secret id) without surrounding whitespace. An empty file is an error:
// an empty secret would silently turn authentication off.
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}
