package identity

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Defaults of VaultTokenOptions.
const (
	DefaultVaultTokenCacheTTL = time.Minute
	vaultTokenCacheMax        = 10000
)

// VaultTokenOptions configures Vault token validation for one listener.
type VaultTokenOptions struct {
	// Client is a Vault client for the address, TLS and namespace to use.
	// Each lookup runs on a clone holding the client's token; the token
	// Client itself holds (if any) is never sent.
	Client *vault.Client
	// CacheTTL caps how long a positive answer is reused (never longer
	// than the token's remaining TTL). Default 1m; negative: no cache.
	CacheTTL time.Duration
	// MaxTokenBytes caps the token. Default DefaultMaxTokenBytes.
	MaxTokenBytes int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// VaultTokens authenticates clients that send a Vault token as their
// password: Vault itself says whether the token is valid
// (auth/token/lookup-self, asked with that token), and the token's
// entity, policies and metadata say who the client is.
type VaultTokens struct {
	policy *Policy
	o      VaultTokenOptions

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedToken // by SHA-256 of the token, never the token
}

type cachedToken struct {
	id    Identity
	until time.Time
}

// NewVaultTokens returns a Vault token authenticator mapping tokens to
// identities of p.
func NewVaultTokens(p *Policy, o VaultTokenOptions) (*VaultTokens, error) {
	if o.Client == nil {
		return nil, errors.New("vault token auth: no Vault client")
	}
	if o.CacheTTL == 0 {
		o.CacheTTL = DefaultVaultTokenCacheTTL
	}
	if o.MaxTokenBytes <= 0 {
		o.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &VaultTokens{policy: p, o: o, cache: map[[sha256.Size]byte]cachedToken{}}, nil
}

// Kind implements TokenAuthenticator.
func (v *VaultTokens) Kind() string { return "Vault token" }

// Authenticate implements TokenAuthenticator.
func (v *VaultTokens) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, invalid("no Vault token: send your Vault token as the password")
	}
	if len(token) > v.o.MaxTokenBytes {
		return Identity{}, invalid("the Vault token is %d bytes; dbproxy accepts at most %d", len(token), v.o.MaxTokenBytes)
	}
	key := sha256.Sum256([]byte(token))
	now := v.o.Now()
	if id, ok := v.cached(key, now); ok {
		return id, nil
	}
	info, ttl, err := v.lookupSelf(ctx, token)
	if err != nil {
		return Identity{}, err
	}
	id, err := v.policy.FromVaultToken(info)
	if err != nil {
		return Identity{}, err
	}
	if ttl > 0 {
		id.Expires = now.Add(ttl)
	}
	v.remember(key, id, now, ttl)
	return id, nil
}

func (v *VaultTokens) cached(key [sha256.Size]byte, now time.Time) (Identity, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c, ok := v.cache[key]
	if !ok {
		return Identity{}, false
	}
	if !now.Before(c.until) {
		delete(v.cache, key)
		return Identity{}, false
	}
	return c.id, true
}

// remember caches a positive answer for the shorter of the cap and the
// token's remaining TTL (a token with no TTL gets the cap).
func (v *VaultTokens) remember(key [sha256.Size]byte, id Identity, now time.Time, ttl time.Duration) {
	d := v.o.CacheTTL
	if ttl > 0 && ttl < d {
		d = ttl
	}
	if d <= 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.cache) >= vaultTokenCacheMax {
		for k, c := range v.cache {
			if !now.Before(c.until) {
				delete(v.cache, k)
			}
		}
		if len(v.cache) >= vaultTokenCacheMax {
			return // full of live entries: look the next ones up each time
		}
	}
	v.cache[key] = cachedToken{id: id, until: now.Add(d)}
}

// lookupSelf asks Vault about token with the token itself, so dbproxy
// needs no permission of its own and cannot be tricked into vouching for
// a token with its own rights.
func (v *VaultTokens) lookupSelf(ctx context.Context, token string) (VaultTokenInfo, time.Duration, error) {
	c, err := v.o.Client.CloneWithHeaders()
	if err != nil {
		return VaultTokenInfo{}, 0, fmt.Errorf("vault token auth: clone client: %w", err)
	}
	c.SetToken(token)
	s, err := c.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		var re *vault.ResponseError
		if errors.As(err, &re) && (re.StatusCode == http.StatusForbidden || re.StatusCode == http.StatusUnauthorized) {
			return VaultTokenInfo{}, 0, invalid("Vault does not accept this token (invalid, expired or revoked): log in to Vault again and send the new token")
		}
		return VaultTokenInfo{}, 0, &Error{Reason: ReasonTokenCheckFailed, Msg: "cannot check the Vault token: Vault did not answer; retry shortly", Err: err}
	}
	if s == nil || s.Data == nil {
		return VaultTokenInfo{}, 0, &Error{Reason: ReasonTokenCheckFailed, Msg: "cannot check the Vault token: Vault's answer was empty; retry shortly"}
	}
	info := VaultTokenInfo{}
	info.EntityID, _ = s.Data["entity_id"].(string)
	if info.Policies, err = s.TokenPolicies(); err != nil {
		return VaultTokenInfo{}, 0, &Error{Reason: ReasonTokenCheckFailed, Msg: "cannot check the Vault token: unexpected policies in Vault's answer", Err: err}
	}
	if info.Metadata, err = s.TokenMetadata(); err != nil {
		return VaultTokenInfo{}, 0, &Error{Reason: ReasonTokenCheckFailed, Msg: "cannot check the Vault token: unexpected metadata in Vault's answer", Err: err}
	}
	ttl, err := s.TokenTTL()
	if err != nil {
		return VaultTokenInfo{}, 0, &Error{Reason: ReasonTokenCheckFailed, Msg: "cannot check the Vault token: unexpected ttl in Vault's answer", Err: err}
	}
	if info.EntityID != "" && v.policy.needsEntityName() {
		info.EntityName = entityName(ctx, c, info.EntityID)
	}
	return info, ttl, nil
}

// entityName reads the name of the token's own entity with the token
// (Vault's default policy allows it). Without the permission the name is
// unknown, and rules that need it do not match.
func entityName(ctx context.Context, c *vault.Client, id string) string {
	s, err := c.Logical().ReadWithContext(ctx, "identity/entity/id/"+url.PathEscape(id))
	if err != nil || s == nil || s.Data == nil {
		return ""
	}
	name, _ := s.Data["name"].(string)
	return name
}
