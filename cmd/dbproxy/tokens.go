package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/identity"
)

// tokenAuth builds the authenticator of a listener whose clients send a
// Vault token or a JWT as their password.
func tokenAuth(cfg *config.Config, l config.Listener, policy *identity.Policy) (identity.TokenAuthenticator, error) {
	switch l.Auth {
	case "vault_token":
		c, err := tokenLookupClient(cfg.Vault)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		o := identity.VaultTokenOptions{Client: c, CacheTTL: l.VaultToken.CacheTTL.D()}
		if o.CacheTTL == 0 {
			o.CacheTTL = -1 // written as 0: no cache
		}
		return identity.NewVaultTokens(policy, o)
	case "jwt":
		j := l.JWT
		hc := &http.Client{Timeout: 10 * time.Second}
		if j.JWKSCAFile != "" {
			cas, err := loadCAs(j.JWKSCAFile)
			if err != nil {
				return nil, fmt.Errorf("listener %s jwt.jwks_ca_file: %w", l.Name, err)
			}
			hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cas, MinVersion: tls.VersionTLS12}}
		}
		skew := j.ClockSkew.D()
		if skew == 0 {
			skew = -1 // written as 0: no tolerance
		}
		a, err := identity.NewJWTs(policy, identity.JWTOptions{
			Issuer: j.Issuer, Audience: j.Audience, Algorithms: j.Algorithms,
			JWKSFile: j.JWKSFile, JWKSURL: j.JWKSURL, HTTPClient: hc, ClockSkew: skew,
			SessionOutlivesToken: j.SessionOutlivesToken,
		})
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		return a, nil
	}
	return nil, nil
}

// tokenLookupClient is a Vault client for checking clients' tokens. It
// holds no token: each lookup runs on a clone holding the client's own.
func tokenLookupClient(v config.Vault) (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = v.Address
	cfg.MaxRetries = 0 // a client waiting at login is better told at once
	if v.RequestTimeout > 0 {
		cfg.Timeout = v.RequestTimeout.D()
	}
	if v.CAFile != "" {
		if err := cfg.ConfigureTLS(&vault.TLSConfig{CACert: v.CAFile}); err != nil {
			return nil, fmt.Errorf("vault ca_file %s: %w", v.CAFile, err)
		}
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.ClearToken() // NewClient reads VAULT_TOKEN; never send dbproxy's
	if v.Namespace != "" {
		c.SetNamespace(v.Namespace)
	}
	return c, nil
}

// tokenLogins counts logins with a token by method and result: ok, or the
// identity.Reason of the refusal.
type tokenLogins struct{ total *prometheus.CounterVec }

func newTokenLogins(reg prometheus.Registerer) *tokenLogins {
	t := &tokenLogins{total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dbproxy_token_logins_total",
		Help: "Logins with a Vault token or JWT as the password, by method and result (ok or why refused).",
	}, []string{"method", "result"})}
	if reg != nil {
		reg.MustRegister(t.total)
	}
	return t
}

// wrap counts a's answers under method.
func (t *tokenLogins) wrap(method string, a identity.TokenAuthenticator) identity.TokenAuthenticator {
	return countedTokens{TokenAuthenticator: a, method: method, total: t.total}
}

type countedTokens struct {
	identity.TokenAuthenticator
	method string
	total  *prometheus.CounterVec
}

func (c countedTokens) Authenticate(ctx context.Context, token string) (identity.Identity, error) {
	id, err := c.TokenAuthenticator.Authenticate(ctx, token)
	result := "ok"
	if err != nil {
		result = "error"
		var ie *identity.Error
		if errors.As(err, &ie) {
			result = string(ie.Reason)
		}
	}
	c.total.WithLabelValues(c.method, result).Inc()
	return id, err
}
