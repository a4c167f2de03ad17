// Package creds is everything dbproxy knows about Vault and leases: logging
// in, keeping its own token alive, fetching database/creds/ROLE, renewing
// leases, deciding when to rotate, draining and revoking superseded
// credentials, and backing off while Vault is unreachable. Static roles
// and KV v2 secrets (static.go) publish through the same generations; TLS
// certificates from Vault PKI (pki.go) are issued and renewed here too. It
// publishes credential generations and knows nothing about wire protocols.
package creds

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
	"go.uber.org/zap"
)

// AuthOptions says how dbproxy obtains its Vault token. Secrets come only
// from files, read at each login so rotated files are picked up.
type AuthOptions struct {
	Method       string // token | approle | kubernetes
	Mount        string // auth mount path; default: the method name
	TokenFile    string
	RoleIDFile   string
	SecretIDFile string
	JWTFile      string
	Role         string
}

// ClientOptions configures the Vault client.
type ClientOptions struct {
	Address        string
	CAFile         string
	Namespace      string
	RequestTimeout time.Duration
	Auth           AuthOptions
}

// Client is dbproxy's Vault client: one token, renewed and re-obtained as
// needed. It is safe for concurrent use.
type Client struct {
	api     *vault.Client
	login   *vault.Client // never holds a token; see loginWrite
	auth    AuthOptions
	log     *zap.Logger
	metrics *Metrics
	now     func() time.Time

	loginMu   sync.Mutex
	mu        sync.Mutex
	tokenEnd  time.Time // zero: never expires
	tokenTTL  time.Duration
	renewable bool
	stale     bool // the token's lookup failed: its life is unknown
}

// NewClient builds a Vault client. It does not log in; call Login.
func NewClient(opts ClientOptions, log *zap.Logger, m *Metrics) (*Client, error) {
	api, err := newAPIClient(opts)
	if err != nil {
		return nil, err
	}
	// Logins go through a second client that never holds a token, so that
	// logging in never strips the token from requests in flight elsewhere.
	login, err := newAPIClient(opts)
	if err != nil {
		return nil, err
	}
	if opts.Auth.Mount == "" {
		opts.Auth.Mount = opts.Auth.Method
	}
	return &Client{api: api, login: login, auth: opts.Auth, log: log, metrics: m, now: time.Now}, nil
}

func newAPIClient(opts ClientOptions) (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = opts.Address
	// One retry source: ours, with jittered backoff. The client's own
	// retries would multiply ours and hot-loop on a sealed Vault.
	cfg.MaxRetries = 0
	if opts.RequestTimeout > 0 {
		cfg.Timeout = opts.RequestTimeout
	}
	if opts.CAFile != "" {
		if err := cfg.ConfigureTLS(&vault.TLSConfig{CACert: opts.CAFile}); err != nil {
			return nil, fmt.Errorf("vault ca_file %s: %w", opts.CAFile, err)
		}
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	// NewClient picks up VAULT_TOKEN from the environment; dbproxy's token
	// comes only from its configured auth method.
	c.ClearToken()
	if opts.Namespace != "" {
		c.SetNamespace(opts.Namespace)
	}
	return c, nil
}

// Login obtains a fresh token with the configured method.
func (c *Client) Login(ctx context.Context) error {
	var secret *vault.Secret
	var err error
	switch c.auth.Method {
	case "token":
		var tok string
		tok, err = readSecretFile(c.auth.TokenFile)
		if err != nil {
			return err
		}
		c.api.SetToken(tok)
		secret, err = c.api.Auth().Token().LookupSelfWithContext(ctx)
		c.metrics.request("token_lookup", err)
		if err != nil {
			// Look it up again before relying on it: its life is unknown.
			c.mu.Lock()
			c.stale = true
			c.mu.Unlock()
			return fmt.Errorf("vault token from %s: %w", c.auth.TokenFile, err)
		}
		return c.setTokenFromLookup(secret)
	case "approle":
		var roleID, secretID string
		if roleID, err = readSecretFile(c.auth.RoleIDFile); err != nil {
			return err
		}
		if secretID, err = readSecretFile(c.auth.SecretIDFile); err != nil {
			return err
		}
		secret, err = c.loginWrite(ctx, map[string]any{"role_id": roleID, "secret_id": secretID})
	case "kubernetes":
		var jwt string
		if jwt, err = readSecretFile(c.auth.JWTFile); err != nil {
			return err
		}
		secret, err = c.loginWrite(ctx, map[string]any{"role": c.auth.Role, "jwt": jwt})
	default:
		return fmt.Errorf("vault auth method %q is not supported (use token, approle or kubernetes)", c.auth.Method)
	}
	if err != nil {
		return err
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return fmt.Errorf("vault %s login returned no token", c.auth.Method)
	}
	c.api.SetToken(secret.Auth.ClientToken)
	ttl := time.Duration(secret.Auth.LeaseDuration) * time.Second
	c.mu.Lock()
	c.tokenTTL = ttl
	c.renewable = secret.Auth.Renewable
	c.stale = false
	c.tokenEnd = time.Time{}
	if ttl > 0 {
		c.tokenEnd = c.now().Add(ttl)
	}
	c.mu.Unlock()
	c.log.Info("vault login", zap.String("method", c.auth.Method), zap.Duration("token_ttl", ttl), zap.Bool("renewable", secret.Auth.Renewable))
	return nil
}

func (c *Client) loginWrite(ctx context.Context, data map[string]any) (*vault.Secret, error) {
	path := "auth/" + strings.Trim(c.auth.Mount, "/") + "/login"
	// Login must not carry a stale token: c.login never has one. Clearing
	// c.api's instead would send other goroutines' renewals without a
	// token, and their 403s would read as revoked leases.
	s, err := c.login.Logical().WriteWithContext(ctx, path, data)
	c.metrics.request("login", err)
	if err != nil {
		return nil, fmt.Errorf("vault %s login at %s: %w", c.auth.Method, path, err)
	}
	return s, nil
}

func (c *Client) setTokenFromLookup(s *vault.Secret) error {
	ttl, err := s.TokenTTL()
	if err != nil {
		return fmt.Errorf("vault token lookup: %w", err)
	}
	renewable, _ := s.TokenIsRenewable()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokenTTL = ttl
	c.renewable = renewable
	c.stale = false
	c.tokenEnd = time.Time{}
	if ttl > 0 {
		c.tokenEnd = c.now().Add(ttl)
	}
	return nil
}

// TokenEnd is when the current token expires; zero means never. Every lease
// dies with the token that created it, so this caps every credential.
func (c *Client) TokenEnd() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tokenEnd
}

// EnsureToken renews the token, or logs in again, so that it lives at least
// `need` longer. Credentials fetched afterwards then outlive the rotation
// window instead of dying with an old token.
func (c *Client) EnsureToken(ctx context.Context, need time.Duration) error {
	// One login at a time: sources share the token.
	c.loginMu.Lock()
	defer c.loginMu.Unlock()
	c.mu.Lock()
	end, ttl, renewable, stale := c.tokenEnd, c.tokenTTL, c.renewable, c.stale
	c.mu.Unlock()
	if c.api.Token() == "" || stale {
		return c.Login(ctx)
	}
	if end.IsZero() || end.Sub(c.now()) > need {
		return nil
	}
	if renewable && ttl > 0 {
		s, err := c.api.Auth().Token().RenewSelfWithContext(ctx, int(ttl.Seconds()))
		c.metrics.request("token_renew", err)
		if err == nil && s != nil && s.Auth != nil {
			granted := time.Duration(s.Auth.LeaseDuration) * time.Second
			c.mu.Lock()
			c.tokenEnd = c.now().Add(granted)
			c.renewable = s.Auth.Renewable
			c.mu.Unlock()
			if granted > need {
				return nil
			}
		}
	}
	// For method token this re-reads the file, in case an operator or an
	// agent put a fresh token there.
	return c.Login(ctx)
}

// RunTokenKeeper renews the token at two thirds of its TTL until ctx ends.
// Failures are logged and retried by the next EnsureToken or tick.
func (c *Client) RunTokenKeeper(ctx context.Context) {
	for {
		c.mu.Lock()
		end, ttl := c.tokenEnd, c.tokenTTL
		c.mu.Unlock()
		wait := time.Minute
		if !end.IsZero() {
			wait = max(time.Second, end.Sub(c.now())/3)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if end.IsZero() {
			continue
		}
		if err := c.EnsureToken(ctx, ttl/2); err != nil {
			c.log.Warn("vault token renewal failed", zap.Error(err))
		}
	}
}

func readSecretFile(path string) (string, error) {
	if path == "" {
		return "", errors.New("vault auth: secret file path is empty")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vault auth: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("vault auth: %s is empty", path)
	}
	return s, nil
}

// isLeaseGone reports whether err means the lease no longer exists or may
// not be touched: revoked outside dbproxy, or the token lost its rights.
func isLeaseGone(err error) bool {
	var re *vault.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	if re.StatusCode == http.StatusForbidden {
		return true
	}
	if re.StatusCode == http.StatusBadRequest {
		for _, e := range re.Errors {
			l := strings.ToLower(e)
			if strings.Contains(l, "lease not found") || strings.Contains(l, "invalid lease") || strings.Contains(l, "lease is not renewable") {
				return true
			}
		}
	}
	return false
}

// statusOf names the outcome of a Vault request for metrics.
func statusOf(err error) string {
	if err == nil {
		return "ok"
	}
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return fmt.Sprintf("%d", re.StatusCode)
	}
	return "error"
}
