package identity

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// DefaultMaxTokenBytes caps a token sent as a password. Kubernetes
// service account tokens are about 1 KiB, Vault tokens under 200 bytes; a
// larger "token" is an attack on the parser or a mistake.
const DefaultMaxTokenBytes = 16 << 10

// TokenAuthenticator identifies a client by the token it sends as its
// password. The front ends ask for the password only over TLS or a unix
// socket, and never log it.
type TokenAuthenticator interface {
	// Kind names the token in messages: "Vault token" or "JWT".
	Kind() string
	// Authenticate checks token and maps it to an identity. Refusals the
	// client should see are *Error values; their messages never contain
	// the token.
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// TokenMatch recognises a client by the token it presented. Within one
// kind of token every field that is set must hold (so adding a field
// never lets more clients in); an identity whose fields for a kind are all
// empty never matches that kind. A JWT-SVID (a JWT whose sub is a SPIFFE
// ID) also matches the identity whose Spec.SpiffeID equals its sub.
type TokenMatch struct {
	// VaultEntity matches the name of the token's entity (read with the
	// token itself from identity/entity/id/<entity_id>, which Vault's
	// default policy allows).
	VaultEntity string
	// VaultEntityID matches the token's entity_id.
	VaultEntityID string
	// VaultPolicy matches when the token carries this policy (token or
	// identity policies).
	VaultPolicy string
	// VaultMetadata matches when every key has this value in the token's
	// metadata (meta).
	VaultMetadata map[string]string

	// JWTSubject matches the JWT's sub claim.
	JWTSubject string
	// JWTClaims matches when every named top-level claim equals the value
	// (a string claim) or contains it (a list of strings).
	JWTClaims map[string]string
}

func (m TokenMatch) empty() bool { return !m.hasVault() && !m.hasJWT() }

func (m TokenMatch) hasVault() bool {
	return m.VaultEntity != "" || m.VaultEntityID != "" || m.VaultPolicy != "" || len(m.VaultMetadata) > 0
}

func (m TokenMatch) hasJWT() bool { return m.JWTSubject != "" || len(m.JWTClaims) > 0 }

// check rejects rules that would match more than the operator meant.
func (m TokenMatch) check() error {
	for k := range m.VaultMetadata {
		if k == "" {
			return errors.New("vault_metadata: a key is empty")
		}
	}
	for k := range m.JWTClaims {
		if k == "" {
			return errors.New("jwt_claims: a claim name is empty")
		}
	}
	return nil
}

// VaultTokenInfo is what Vault says about a token (lookup-self).
type VaultTokenInfo struct {
	EntityID   string
	EntityName string   // "" when unknown
	Policies   []string // token and identity policies
	Metadata   map[string]string
}

func (m TokenMatch) matchesVault(t VaultTokenInfo) bool {
	if !m.hasVault() {
		return false
	}
	if m.VaultEntity != "" && m.VaultEntity != t.EntityName {
		return false
	}
	if m.VaultEntityID != "" && m.VaultEntityID != t.EntityID {
		return false
	}
	if m.VaultPolicy != "" && !slices.Contains(t.Policies, m.VaultPolicy) {
		return false
	}
	for k, v := range m.VaultMetadata {
		if got, ok := t.Metadata[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (m TokenMatch) matchesJWT(sub string, claims map[string]any) bool {
	if !m.hasJWT() {
		return false
	}
	if m.JWTSubject != "" && m.JWTSubject != sub {
		return false
	}
	for k, want := range m.JWTClaims {
		if !claimHas(claims[k], want) {
			return false
		}
	}
	return true
}

func claimHas(v any, want string) bool {
	switch c := v.(type) {
	case string:
		return c == want
	case []any:
		for _, e := range c {
			if s, ok := e.(string); ok && s == want {
				return true
			}
		}
	}
	return false
}

// FromVaultToken maps what Vault said about a token to the one identity
// whose rules match it.
func (p *Policy) FromVaultToken(t VaultTokenInfo) (Identity, error) {
	var names []string
	for _, name := range sortedNames(p.tokens) {
		if p.tokens[name].matchesVault(t) {
			names = append(names, name)
		}
	}
	pols := slices.Clone(t.Policies)
	sort.Strings(pols)
	what := fmt.Sprintf("Vault token (entity %q, entity_id %q, policies %s, metadata keys %s)", t.EntityName, t.EntityID, quoteList(pols), quoteList(sortedNames(t.Metadata)))
	return oneName(names, MethodVaultToken, what, "vault_entity, vault_entity_id, vault_policy or vault_metadata")
}

// needsEntityName reports whether some identity matches Vault tokens by
// entity name, which costs a second request per lookup.
func (p *Policy) needsEntityName() bool {
	for _, m := range p.tokens {
		if m.VaultEntity != "" {
			return true
		}
	}
	return false
}

// FromJWT maps a verified JWT's claims to the one identity whose rules
// match it.
func (p *Policy) FromJWT(sub string, claims map[string]any) (Identity, error) {
	var names []string
	for _, name := range sortedNames(p.tokens) {
		if p.tokens[name].matchesJWT(sub, claims) {
			names = append(names, name)
		}
	}
	if strings.HasPrefix(sub, "spiffe://") {
		if id, err := normaliseSPIFFE(sub); err == nil {
			if name, ok := p.spiffe[id]; ok && !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	return oneName(names, MethodJWT, fmt.Sprintf("JWT (sub %q)", sub), "jwt_subject, jwt_claims or spiffe_id")
}

func oneName(names []string, m Method, what, keys string) (Identity, error) {
	switch len(names) {
	case 1:
		return Identity{Name: names[0], Method: m}, nil
	case 0:
		return Identity{}, &Error{Reason: ReasonUnknownIdentity,
			Msg: fmt.Sprintf("no identity matches this %s: add a rule under identities.<name>.match (%s)", what, keys)}
	}
	sort.Strings(names)
	return Identity{}, &Error{Reason: ReasonAmbiguousIdentity,
		Msg: fmt.Sprintf("this %s matches several identities (%s): make their match rules exclusive", what, quoteList(names))}
}

func sortedNames[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
