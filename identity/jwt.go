package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DefaultJWTAlgorithms are the signature algorithms accepted when none are
// configured: asymmetric only.
var DefaultJWTAlgorithms = []string{"RS256", "ES256"}

// Defaults of JWTOptions.
const (
	DefaultJWTClockSkew       = 30 * time.Second
	DefaultJWKSRefreshMin     = 30 * time.Second
	DefaultJWKSMaxAge         = time.Hour
	defaultJWKSFetchTimeout   = 10 * time.Second
	maxJWTHeaderSegmentLength = 4 << 10
)

// asymmetric are the algorithms a public key set can verify. HS* is not
// among them: with a public key as the HMAC secret anyone could sign.
var asymmetric = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// JWTOptions configures JWT validation for one listener.
type JWTOptions struct {
	// Issuer must equal the token's iss. Required.
	Issuer string
	// Audience must be one of the token's aud. Required.
	Audience string
	// Algorithms the token may be signed with. Default
	// DefaultJWTAlgorithms; none and HS* are refused.
	Algorithms []string
	// JWKSFile or JWKSURL (exactly one) holds the issuer's public keys.
	JWKSFile string
	JWKSURL  string
	// HTTPClient fetches JWKSURL. Default: a client with a 10s timeout.
	HTTPClient *http.Client
	// ClockSkew tolerated on exp and nbf. Default 30s; negative is 0.
	ClockSkew time.Duration
	// RefreshMin is the least time between two loads of the key set.
	// Default 30s.
	RefreshMin time.Duration
	// MaxAge reloads the key set on use when it is older. Default 1h.
	MaxAge time.Duration
	// SessionOutlivesToken leaves Identity.Expires zero, so sessions are
	// not closed at the token's exp.
	SessionOutlivesToken bool
	// MaxTokenBytes caps the token. Default DefaultMaxTokenBytes.
	MaxTokenBytes int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// JWTs authenticates clients that send a JWT as their password.
type JWTs struct {
	policy *Policy
	o      JWTOptions
	algs   []jose.SignatureAlgorithm
	keys   *keySet
}

// NewJWTs checks o and returns a JWT authenticator mapping tokens to
// identities of p. A JWKS file is read now, so a bad one stops startup; a
// JWKS URL is fetched on first use.
func NewJWTs(p *Policy, o JWTOptions) (*JWTs, error) {
	if o.Issuer == "" || o.Audience == "" {
		return nil, errors.New("jwt: issuer and audience are required")
	}
	if (o.JWKSFile == "") == (o.JWKSURL == "") {
		return nil, errors.New("jwt: set exactly one of jwks_file and jwks_url")
	}
	if len(o.Algorithms) == 0 {
		o.Algorithms = DefaultJWTAlgorithms
	}
	algs, err := ParseJWTAlgorithms(o.Algorithms)
	if err != nil {
		return nil, err
	}
	if o.ClockSkew == 0 {
		o.ClockSkew = DefaultJWTClockSkew
	} else if o.ClockSkew < 0 {
		o.ClockSkew = 0
	}
	if o.RefreshMin <= 0 {
		o.RefreshMin = DefaultJWKSRefreshMin
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultJWKSMaxAge
	}
	if o.MaxTokenBytes <= 0 {
		o.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: defaultJWKSFetchTimeout}
	}
	j := &JWTs{policy: p, o: o, algs: algs, keys: &keySet{
		file: o.JWKSFile, url: o.JWKSURL, client: o.HTTPClient,
		minInterval: o.RefreshMin, maxAge: o.MaxAge, now: o.Now,
	}}
	if o.JWKSFile != "" {
		if err := j.keys.reload(context.Background()); err != nil {
			return nil, fmt.Errorf("jwt: %w", err)
		}
	}
	return j, nil
}

// ParseJWTAlgorithms checks configured algorithm names: only asymmetric
// signature algorithms are allowed.
func ParseJWTAlgorithms(names []string) ([]jose.SignatureAlgorithm, error) {
	out := make([]jose.SignatureAlgorithm, 0, len(names))
	for _, n := range names {
		a := jose.SignatureAlgorithm(n)
		if !slices.Contains(asymmetric, a) {
			return nil, fmt.Errorf("jwt: algorithm %q is not allowed; use asymmetric ones (RS256, ES256, EdDSA, PS256, ...): none is never safe and HS* would take a public key as a shared secret", n)
		}
		out = append(out, a)
	}
	return out, nil
}

// Kind implements TokenAuthenticator.
func (j *JWTs) Kind() string { return "JWT" }

func invalid(format string, args ...any) error {
	return &Error{Reason: ReasonInvalidToken, Msg: fmt.Sprintf(format, args...)}
}

// jwtHeader is the part of a JOSE header dbproxy reads before verifying,
// to say clearly why a token is refused.
type jwtHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

func peekHeader(token string) (jwtHeader, error) {
	var h jwtHeader
	seg, _, ok := strings.Cut(token, ".")
	if !ok || strings.Count(token, ".") != 2 {
		return h, invalid("the password is not a JWT (want three dot-separated parts): send the token itself as the password")
	}
	if len(seg) > maxJWTHeaderSegmentLength {
		return h, invalid("the JWT header is longer than %d bytes", maxJWTHeaderSegmentLength)
	}
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil || json.Unmarshal(raw, &h) != nil {
		return h, invalid("the JWT header is not base64url-encoded JSON")
	}
	return h, nil
}

// Authenticate implements TokenAuthenticator: it verifies the signature
// with the issuer's keys, checks iss, aud, exp and nbf, and maps the
// claims to an identity.
func (j *JWTs) Authenticate(ctx context.Context, token string) (Identity, error) {
	if len(token) > j.o.MaxTokenBytes {
		return Identity{}, invalid("the JWT is %d bytes; dbproxy accepts at most %d", len(token), j.o.MaxTokenBytes)
	}
	h, err := peekHeader(token)
	if err != nil {
		return Identity{}, err
	}
	if !slices.Contains(j.algs, jose.SignatureAlgorithm(h.Alg)) {
		return Identity{}, invalid("the JWT is signed with algorithm %q, which this listener does not accept (allowed: %s)", h.Alg, strings.Join(j.o.Algorithms, ", "))
	}
	tok, err := jwt.ParseSigned(token, j.algs)
	if err != nil {
		return Identity{}, invalid("the JWT is malformed: %v", err)
	}
	keys, kerr := j.keys.find(ctx, h.Kid)
	if len(keys) == 0 {
		if kerr != nil {
			return Identity{}, &Error{Reason: ReasonTokenCheckFailed, Msg: "cannot check the JWT: the issuer's key set could not be loaded; retry shortly", Err: kerr}
		}
		return Identity{}, invalid("the JWT is signed with key id %q, which is not in the issuer's key set: get a token from the configured issuer", h.Kid)
	}
	var std jwt.Claims
	var all map[string]any
	verified := false
	for _, k := range keys {
		if (k.Algorithm != "" && k.Algorithm != h.Alg) || !keyFits(k, h.Alg) {
			continue
		}
		if tok.Claims(k.Key, &std, &all) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return Identity{}, invalid("the JWT's signature does not verify with the issuer's key %q: get a token from the configured issuer", h.Kid)
	}
	if err := j.checkClaims(std); err != nil {
		return Identity{}, err
	}
	id, err := j.policy.FromJWT(std.Subject, all)
	if err != nil {
		return Identity{}, err
	}
	if !j.o.SessionOutlivesToken {
		id.Expires = std.Expiry.Time()
	}
	return id, nil
}

// keyFits reports whether key k can verify alg, so that an RSA key is
// never tried with an ECDSA header and so on.
func keyFits(k jose.JSONWebKey, alg string) bool {
	switch k.Key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return strings.HasPrefix(alg, "ES")
	case ed25519.PublicKey:
		return alg == string(jose.EdDSA)
	}
	return false
}

func (j *JWTs) checkClaims(c jwt.Claims) error {
	now := j.o.Now()
	if c.Expiry == nil {
		return invalid("the JWT has no exp claim: dbproxy accepts only tokens that expire")
	}
	err := c.ValidateWithLeeway(jwt.Expected{Issuer: j.o.Issuer, AnyAudience: jwt.Audience{j.o.Audience}, Time: now}, j.o.ClockSkew)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jwt.ErrExpired):
		return &Error{Reason: ReasonExpiredToken, Msg: fmt.Sprintf("the JWT expired at %s: get a fresh token", c.Expiry.Time().UTC().Format(time.RFC3339))}
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return &Error{Reason: ReasonExpiredToken, Msg: "the JWT is not valid yet (nbf or iat is in the future): check the clocks of the issuer and dbproxy"}
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return invalid("the JWT's issuer %q is not %q: get a token from the configured issuer", c.Issuer, j.o.Issuer)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return invalid("the JWT's audience %q does not include %q: request the token for audience %q", []string(c.Audience), j.o.Audience, j.o.Audience)
	}
	return invalid("the JWT's claims are not valid: %v", err)
}
