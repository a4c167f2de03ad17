package identity

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// fakeLookupSelf answers auth/token/lookup-self for the tokens it knows
// and counts lookups; it records every token it was asked with.
type fakeLookupSelf struct {
	tokens  map[string]map[string]any
	lookups atomic.Int32
	seen    chan string
}

func (f *fakeLookupSelf) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get("X-Vault-Token")
	f.seen <- tok
	if r.URL.Path == "/v1/identity/entity/id/ent-2" && tok == "s.reports" {
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"name": "bi-reports"}})
		return
	}
	if r.URL.Path != "/v1/auth/token/lookup-self" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	f.lookups.Add(1)
	data, ok := f.tokens[tok]
	if !ok {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"data": data})
}

func newFakeVaultTokens(t *testing.T, f *fakeLookupSelf, now *time.Time) *VaultTokens {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := vault.DefaultConfig()
	cfg.Address = srv.URL
	cfg.MaxRetries = 0
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("dbproxy-own-token")
	p, err := NewPolicy(map[string]Spec{
		"orders":  {Token: TokenMatch{VaultEntityID: "ent-1"}, Grants: []Grant{{"orders", "rw"}}},
		"reports": {Token: TokenMatch{VaultEntity: "bi-reports", VaultPolicy: "reports-db", VaultMetadata: map[string]string{"team": "bi"}}, Grants: []Grant{{"orders", "ro"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVaultTokens(p, VaultTokenOptions{Client: c, CacheTTL: time.Minute, Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVaultTokens(t *testing.T) {
	f := &fakeLookupSelf{seen: make(chan string, 100), tokens: map[string]map[string]any{
		"s.orders":  {"entity_id": "ent-1", "policies": []string{"default"}, "ttl": 3600},
		"s.short":   {"entity_id": "ent-1", "policies": []string{"default"}, "ttl": 10},
		"s.reports": {"entity_id": "ent-2", "policies": []string{"default"}, "identity_policies": []string{"reports-db"}, "meta": map[string]string{"team": "bi"}, "ttl": 0},
		"s.half":    {"entity_id": "ent-3", "policies": []string{"reports-db"}, "meta": map[string]string{"team": "ops"}, "ttl": 60},
		"s.noname":  {"entity_id": "ent-4", "policies": []string{"reports-db"}, "meta": map[string]string{"team": "bi"}, "ttl": 60},
	}}
	now := testNow
	v := newFakeVaultTokens(t, f, &now)
	ctx := context.Background()

	id, err := v.Authenticate(ctx, "s.orders")
	if err != nil || id.Name != "orders" || id.Method != MethodVaultToken || !id.Expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("orders: %+v, %v", id, err)
	}
	id, err = v.Authenticate(ctx, "s.reports")
	if err != nil || id.Name != "reports" || !id.Expires.IsZero() {
		t.Fatalf("reports (identity policy, metadata, no TTL): %+v, %v", id, err)
	}
	for tok, reason := range map[string]Reason{"s.half": ReasonUnknownIdentity, "s.noname": ReasonUnknownIdentity, "s.revoked": ReasonInvalidToken} {
		_, err := v.Authenticate(ctx, tok)
		var ie *Error
		if !errors.As(err, &ie) || ie.Reason != reason || strings.Contains(err.Error(), tok) {
			t.Errorf("%s: %v; want %s without the token in the message", tok, err, reason)
		}
	}
	if _, err := v.Authenticate(ctx, strings.Repeat("s", 20000)); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("oversized token: %v", err)
	}

	// Positive answers are cached, for at most the token's TTL.
	n := f.lookups.Load()
	if _, err := v.Authenticate(ctx, "s.orders"); err != nil || f.lookups.Load() != n {
		t.Fatalf("cached token looked up again: %v", err)
	}
	if _, err := v.Authenticate(ctx, "s.short"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(11 * time.Second)
	n = f.lookups.Load()
	if _, err := v.Authenticate(ctx, "s.short"); err != nil || f.lookups.Load() != n+1 {
		t.Fatalf("token past its TTL served from cache: %v", err)
	}
	now = now.Add(time.Minute)
	if _, err := v.Authenticate(ctx, "s.orders"); err != nil || f.lookups.Load() != n+2 {
		t.Fatalf("cache outlived its cap: %v", err)
	}
	for _, k := range v.cacheKeys() {
		if strings.Contains(k, "s.") {
			t.Fatalf("cache key holds the token: %q", k)
		}
	}

	close(f.seen)
	for tok := range f.seen {
		if tok == "dbproxy-own-token" || tok == "" {
			t.Fatalf("a lookup was sent with %q, not the client's token", tok)
		}
	}
}

func (v *VaultTokens) cacheKeys() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for k := range v.cache {
		out = append(out, string(k[:]))
	}
	return out
}

func TestVaultTokensVaultDown(t *testing.T) {
	cfg := vault.DefaultConfig()
	cfg.Address = "http://127.0.0.1:1"
	cfg.MaxRetries = 0
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := NewPolicy(map[string]Spec{"a": {Token: TokenMatch{VaultPolicy: "x"}}})
	v, _ := NewVaultTokens(p, VaultTokenOptions{Client: c})
	_, err = v.Authenticate(context.Background(), "s.token")
	var ie *Error
	if !errors.As(err, &ie) || ie.Reason != ReasonTokenCheckFailed {
		t.Fatalf("got %v; want %s", err, ReasonTokenCheckFailed)
	}
}
