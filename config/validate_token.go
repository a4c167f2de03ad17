package config

import (
	"fmt"
	"net/url"
	"slices"
)

// tokenAlgorithms are the JWT signature algorithms a public key set can
// verify; none and HS* are never accepted.
var tokenAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

func (m Match) hasToken() bool {
	return m.VaultEntity != "" || m.VaultEntityID != "" || m.VaultPolicy != "" || len(m.VaultMetadata) > 0 ||
		m.JWTSubject != "" || len(m.JWTClaims) > 0
}

// tokenListener checks a listener whose clients send a Vault token or a
// JWT as their password. A token is a bearer credential: it must never
// cross the network in clear text, so such a listener needs TLS unless it
// is a unix socket.
func (v *validator) tokenListener(p, what string, l Listener) {
	if l.Address != "" && l.TLS == nil {
		v.at(p+".auth", "%s: auth %s takes a bearer token as the password, which must never cross the network in clear text: add tls (cert_file, key_file) or use a unix_socket", what, l.Auth)
	}
	if l.Auth == "vault_token" {
		if l.VaultToken != nil && l.VaultToken.CacheTTL < 0 {
			v.at(p+".vault_token.cache_ttl", "%s: vault_token.cache_ttl is negative; write a duration such as 1m (0 turns the cache off)", what)
		}
		return
	}
	j := l.JWT
	if j == nil {
		v.atKey(p+".jwt", "%s: auth jwt needs a jwt block with issuer, audience and jwks_file or jwks_url", what)
		return
	}
	jp := p + ".jwt"
	if j.Issuer == "" {
		v.atKey(jp+".issuer", "%s: jwt.issuer not set; write the iss claim of the tokens to accept (e.g. https://kubernetes.default.svc.cluster.local)", what)
	}
	if j.Audience == "" {
		v.atKey(jp+".audience", "%s: jwt.audience not set; write the aud the tokens are issued for (e.g. dbproxy), so tokens meant for other services are refused", what)
	}
	switch {
	case j.JWKSFile == "" && j.JWKSURL == "":
		v.atKey(jp, "%s: jwt needs jwks_file or jwks_url: where the issuer's public keys are", what)
	case j.JWKSFile != "" && j.JWKSURL != "":
		v.at(jp+".jwks_url", "%s: set only one of jwt.jwks_file and jwt.jwks_url", what)
	case j.JWKSFile != "":
		v.file(jp+".jwks_file", j.JWKSFile)
	default:
		u, err := url.Parse(j.JWKSURL)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
			v.at(jp+".jwks_url", "%s: jwt.jwks_url %q is not an http(s) URL", what, j.JWKSURL)
		case u.Scheme == "http" && !isLoopback(hostWithPort(u)):
			v.at(jp+".jwks_url", "%s: jwt.jwks_url %q must use https (keys fetched in clear text could be swapped on the way); http is allowed on loopback only", what, j.JWKSURL)
		}
	}
	v.optFile(jp+".jwks_ca_file", j.JWKSCAFile)
	if len(j.Algorithms) == 0 {
		v.at(jp+".algorithms", "%s: jwt.algorithms is empty; leave the key out for RS256 and ES256", what)
	}
	for i, a := range j.Algorithms {
		if !slices.Contains(tokenAlgorithms, a) {
			v.at(fmt.Sprintf("%s.algorithms[%d]", jp, i), "%s: jwt.algorithms[%d] %q is not allowed; use asymmetric ones (RS256, ES256, EdDSA, PS256, ...): none is never safe and HS* would use a public key as a shared secret", what, i, a)
		}
	}
	if j.ClockSkew < 0 {
		v.at(jp+".clock_skew", "%s: jwt.clock_skew is negative; write a small duration such as 30s", what)
	}
}

func hostWithPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	return u.Host + ":0"
}
