// Package identity answers two questions about a client of dbproxy: who is
// it, and may it use a backend.
//
// A Policy is built once from the configured identities (cmd/dbproxy maps
// config onto Spec) and is immutable afterwards, so it is safe for
// concurrent use. A client is recognised by exactly one Method:
//
//   - listener: the listener is bound to one identity (Fixed);
//   - peer: the uid of the process on the other end of a unix socket (FromPeer);
//   - mtls: the verified client certificate, URI SAN (SPIFFE ID) first,
//     then subject CN (FromCert);
//   - vault_token: a Vault token the client sends as its password, looked
//     up in Vault with itself (VaultTokens);
//   - jwt: a JWT the client sends as its password, verified against a
//     JWKS (JWTs).
//
// Authorize then decides which Grant (backend and Vault role) the session
// gets. Deny is the default: an unknown identity is an error and never
// falls back to anything. Errors a client should see are *Error values
// whose message says what is wrong and what to do about it.
package identity

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// Method is how a client was identified.
type Method string

// The ways a client can be identified.
const (
	// MethodListener: the listener is bound to one identity.
	MethodListener Method = "listener"
	// MethodPeer: unix socket peer uid (SO_PEERCRED).
	MethodPeer Method = "peer"
	// MethodMTLS: verified client certificate (URI SAN or subject CN).
	MethodMTLS Method = "mtls"
	// MethodVaultToken: a Vault token sent as the password.
	MethodVaultToken Method = "vault_token"
	// MethodJWT: a JWT sent as the password.
	MethodJWT Method = "jwt"
)

// Identity is an identified client: the configured identity name and how
// it was established.
type Identity struct {
	Name   string
	Method Method
	// Expires is when the proof of identity ends (a token's expiry); the
	// front ends close the session then. Zero: never.
	Expires time.Time
}

// Grant lets an identity use a backend with credentials of a Vault role.
type Grant struct {
	Backend string
	Role    string
}

// Spec is one identity's matchers and grants. Empty matchers (and a nil
// UnixUID) match nothing; an identity without matchers can still be bound
// to a listener.
type Spec struct {
	// SpiffeID matches a URI SAN of the client certificate exactly,
	// e.g. "spiffe://corp/orders-api".
	SpiffeID string
	// CertCN matches the subject common name of the client certificate.
	CertCN string
	// UnixUID matches the peer uid on a unix socket.
	UnixUID *int
	// Token matches Vault tokens and JWTs sent as passwords.
	Token TokenMatch
	// Grants are the backends (with Vault role) the identity may use.
	Grants []Grant
}

// Policy maps clients to identities and identities to grants. It is
// immutable after NewPolicy and safe for concurrent use.
type Policy struct {
	grants map[string][]Grant // identity name -> grants
	spiffe map[string]string  // normalised SPIFFE ID -> identity name
	cn     map[string]string  // certificate CN -> identity name
	uid    map[int]string     // unix uid -> identity name
	tokens map[string]TokenMatch
}

// NewPolicy checks specs (keyed by identity name) and builds a Policy. It
// rejects empty names, malformed SPIFFE IDs, negative uids, grants without
// backend or role, repeated grants, and two identities with the same
// SPIFFE ID, CN or uid. All problems are reported, joined, in name order.
func NewPolicy(specs map[string]Spec) (*Policy, error) {
	p := &Policy{
		grants: make(map[string][]Grant, len(specs)),
		spiffe: make(map[string]string),
		cn:     make(map[string]string),
		uid:    make(map[int]string),
		tokens: make(map[string]TokenMatch),
	}
	names := make([]string, 0, len(specs))
	for name := range specs {
		names = append(names, name)
	}
	sort.Strings(names)

	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	for _, name := range names {
		s := specs[name]
		if strings.TrimSpace(name) == "" {
			fail("identities: an identity has an empty name")
			continue
		}
		if s.SpiffeID != "" {
			id, err := normaliseSPIFFE(s.SpiffeID)
			if err != nil {
				fail("identities.%s.match.spiffe_id: %w", name, err)
			} else if other, ok := p.spiffe[id]; ok {
				fail("identities.%s.match.spiffe_id: %q is already the spiffe_id of identity %q; a client must map to one identity", name, s.SpiffeID, other)
			} else {
				p.spiffe[id] = name
			}
		}
		if s.CertCN != "" {
			if other, ok := p.cn[s.CertCN]; ok {
				fail("identities.%s.match.cert_cn: %q is already the cert_cn of identity %q; a client must map to one identity", name, s.CertCN, other)
			} else {
				p.cn[s.CertCN] = name
			}
		}
		if s.UnixUID != nil {
			u := *s.UnixUID
			if u < 0 {
				fail("identities.%s.match.unix_uid: %d is negative", name, u)
			} else if other, ok := p.uid[u]; ok {
				fail("identities.%s.match.unix_uid: %d is already the unix_uid of identity %q; a client must map to one identity", name, u, other)
			} else {
				p.uid[u] = name
			}
		}
		if err := s.Token.check(); err != nil {
			fail("identities.%s.match.%w", name, err)
		} else if !s.Token.empty() {
			p.tokens[name] = s.Token
		}
		grants := make([]Grant, 0, len(s.Grants))
		for i, g := range s.Grants {
			switch {
			case g.Backend == "":
				fail("identities.%s.grants[%d]: backend is empty", name, i)
			case g.Role == "":
				fail("identities.%s.grants[%d]: role is empty (backend %q)", name, i, g.Backend)
			case slices.Contains(grants, g):
				fail("identities.%s.grants[%d]: backend %q with role %q is granted twice", name, i, g.Backend, g.Role)
			default:
				grants = append(grants, g)
			}
		}
		p.grants[name] = grants
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// normaliseSPIFFE parses a configured SPIFFE ID and returns the form that
// (*url.URL).String gives for the same URI SAN in a certificate.
func normaliseSPIFFE(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a URI: %w", s, err)
	}
	if u.Scheme != "spiffe" || u.Host == "" {
		return "", fmt.Errorf("%q is not a SPIFFE ID: want spiffe://<trust-domain>/<path>", s)
	}
	return u.String(), nil
}

// Fixed returns the identity of a listener bound to one identity name. An
// unknown name is an *Error with ReasonUnknownIdentity; cmd/dbproxy should
// call Fixed for every such listener at startup.
func (p *Policy) Fixed(name string) (Identity, error) {
	if _, ok := p.grants[name]; !ok {
		return Identity{}, &Error{
			Reason:   ReasonUnknownIdentity,
			Identity: name,
			Msg:      unknownMsg("listener identity", name),
		}
	}
	return Identity{Name: name, Method: MethodListener}, nil
}

// Authorize returns the grant id gets for backend. With no grant for the
// backend it fails (ReasonNotGranted); with exactly one it returns that one
// and ignores user; with several, user (the database user name the client
// sent) picks the one whose Role equals it, and otherwise it fails
// (ReasonAmbiguousGrant) listing the roles to pick from. An identity the
// policy does not know is ReasonUnknownIdentity.
// GrantedBackends lists the backends id has a grant for (unknown
// identities have none).
func (p *Policy) GrantedBackends(id Identity) []string {
	var out []string
	for _, g := range p.grants[id.Name] {
		if !slices.Contains(out, g.Backend) {
			out = append(out, g.Backend)
		}
	}
	return out
}

func (p *Policy) Authorize(id Identity, backend, user string) (Grant, error) {
	all, ok := p.grants[id.Name]
	if !ok {
		return Grant{}, &Error{
			Reason:   ReasonUnknownIdentity,
			Identity: id.Name,
			Backend:  backend,
			Msg:      unknownMsg("identity", id.Name),
		}
	}
	var match []Grant
	for _, g := range all {
		if g.Backend == backend {
			match = append(match, g)
		}
	}
	switch len(match) {
	case 0:
		return Grant{}, &Error{
			Reason:   ReasonNotGranted,
			Identity: id.Name,
			Backend:  backend,
			Msg:      fmt.Sprintf("identity %q may not use backend %q: add a grant for it under identities.%s.grants", id.Name, backend, id.Name),
		}
	case 1:
		return match[0], nil
	}
	roles := make([]string, len(match))
	for i, g := range match {
		if g.Role == user {
			return g, nil
		}
		roles[i] = g.Role
	}
	sort.Strings(roles)
	why := ""
	if user != "" {
		why = fmt.Sprintf(" and user %q is none of them", user)
	}
	return Grant{}, &Error{
		Reason:   ReasonAmbiguousGrant,
		Identity: id.Name,
		Backend:  backend,
		Msg: fmt.Sprintf("identity %q has several roles on backend %q%s: connect with one of %s as the user name",
			id.Name, backend, why, quoteList(roles)),
	}
}

func unknownMsg(what, name string) string {
	if name == "" {
		return what + " is empty: name one configured under identities"
	}
	return fmt.Sprintf("%s %q is not configured: add it under identities.%s", what, name, name)
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
