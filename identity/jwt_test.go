package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	testIss = "https://issuer.test"
	testAud = "dbproxy"
)

type testKey struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

func newTestKey(t *testing.T, kid string, alg jose.SignatureAlgorithm) testKey {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.EdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid: kid, alg: alg, priv: priv}
}

func (k testKey) jwk() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"}
}

func (k testKey) sign(t *testing.T, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if k.kid != "" {
		opts = opts.WithHeader("kid", k.kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func jwksJSON(t *testing.T, keys ...testKey) []byte {
	t.Helper()
	set := jose.JSONWebKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.jwk())
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unsignedToken builds header.payload.signature by hand, for the attacks
// a signing library would refuse to produce.
func unsignedToken(t *testing.T, header, claims map[string]any, sig func(signingInput string) []byte) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	return in + "." + base64.RawURLEncoding.EncodeToString(sig(in))
}

var testNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func claimsAt(sub string, exp time.Time) map[string]any {
	return map[string]any{"iss": testIss, "aud": []string{testAud}, "sub": sub,
		"exp": exp.Unix(), "nbf": testNow.Add(-time.Minute).Unix(), "iat": testNow.Add(-time.Minute).Unix()}
}

func jwtPolicy(t *testing.T) *Policy {
	t.Helper()
	p, err := NewPolicy(map[string]Spec{
		"orders":    {Token: TokenMatch{JWTSubject: "system:serviceaccount:shop:orders"}, Grants: []Grant{{"orders", "rw"}}},
		"reporting": {Token: TokenMatch{JWTClaims: map[string]string{"groups": "reporting", "team": "bi"}}, Grants: []Grant{{"orders", "ro"}}},
		"billing":   {SpiffeID: "spiffe://corp/billing", Grants: []Grant{{"orders", "ro"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestJWTs(t *testing.T, o JWTOptions, keys ...testKey) *JWTs {
	t.Helper()
	if o.JWKSURL == "" {
		o.JWKSFile = filepath.Join(t.TempDir(), "jwks.json")
		if err := os.WriteFile(o.JWKSFile, jwksJSON(t, keys...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o.Issuer, o.Audience = testIss, testAud
	if o.Now == nil {
		o.Now = func() time.Time { return testNow }
	}
	j, err := NewJWTs(jwtPolicy(t), o)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestJWTAccepts(t *testing.T) {
	rs, es, ed := newTestKey(t, "rs", jose.RS256), newTestKey(t, "es", jose.ES256), newTestKey(t, "ed", jose.EdDSA)
	j := newTestJWTs(t, JWTOptions{Algorithms: []string{"RS256", "ES256", "EdDSA"}}, rs, es, ed)
	exp := testNow.Add(10 * time.Minute)
	for _, tc := range []struct {
		name, want string
		key        testKey
		claims     map[string]any
	}{
		{"RS256 sub", "orders", rs, claimsAt("system:serviceaccount:shop:orders", exp)},
		{"ES256 claims", "reporting", es, with(claimsAt("x", exp), map[string]any{"groups": []string{"a", "reporting"}, "team": "bi"})},
		{"EdDSA SPIFFE", "billing", ed, claimsAt("spiffe://corp/billing", exp)},
		{"no kid", "orders", testKey{alg: rs.alg, priv: rs.priv}, claimsAt("system:serviceaccount:shop:orders", exp)},
		{"exp within skew", "orders", rs, claimsAt("system:serviceaccount:shop:orders", testNow.Add(-20*time.Second))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := j.Authenticate(context.Background(), tc.key.sign(t, tc.claims))
			if err != nil {
				t.Fatal(err)
			}
			wantExp := time.Unix(tc.claims["exp"].(int64), 0)
			if id.Name != tc.want || id.Method != MethodJWT || !id.Expires.Equal(wantExp) {
				t.Fatalf("got %+v, want %s expiring %s", id, tc.want, wantExp)
			}
		})
	}

	outlive := newTestJWTs(t, JWTOptions{SessionOutlivesToken: true}, rs)
	id, err := outlive.Authenticate(context.Background(), rs.sign(t, claimsAt("system:serviceaccount:shop:orders", exp)))
	if err != nil || !id.Expires.IsZero() {
		t.Fatalf("session_outlives_token: got %+v, %v; want no expiry", id, err)
	}
}

func with(m map[string]any, extra map[string]any) map[string]any {
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func TestJWTRefuses(t *testing.T) {
	rs, es := newTestKey(t, "rs", jose.RS256), newTestKey(t, "es", jose.ES256)
	other := newTestKey(t, "rs", jose.RS256) // same kid, another key
	j := newTestJWTs(t, JWTOptions{}, rs, es)
	exp := testNow.Add(10 * time.Minute)
	good := claimsAt("system:serviceaccount:shop:orders", exp)
	pubDER, _ := x509.MarshalPKIXPublicKey(rs.priv.Public())
	hs256 := func(secret []byte) func(string) []byte {
		return func(in string) []byte {
			m := hmac.New(sha256.New, secret)
			m.Write([]byte(in))
			return m.Sum(nil)
		}
	}
	for _, tc := range []struct {
		name   string
		token  string
		reason Reason
		msg    string
	}{
		{"expired", rs.sign(t, claimsAt("system:serviceaccount:shop:orders", testNow.Add(-time.Minute))), ReasonExpiredToken, "expired at"},
		{"not yet valid", rs.sign(t, with(claimsAt("system:serviceaccount:shop:orders", exp), map[string]any{"nbf": testNow.Add(time.Minute).Unix()})), ReasonExpiredToken, "not valid yet"},
		{"no exp", rs.sign(t, with(map[string]any{}, map[string]any{"iss": testIss, "aud": testAud, "sub": "system:serviceaccount:shop:orders"})), ReasonInvalidToken, "no exp"},
		{"wrong audience", rs.sign(t, with(claimsAt("system:serviceaccount:shop:orders", exp), map[string]any{"aud": "vault"})), ReasonInvalidToken, `does not include "dbproxy"`},
		{"wrong issuer", rs.sign(t, with(claimsAt("system:serviceaccount:shop:orders", exp), map[string]any{"iss": "https://evil.test"})), ReasonInvalidToken, "issuer"},
		{"unknown kid", newTestKey(t, "nope", jose.RS256).sign(t, good), ReasonInvalidToken, `key id "nope"`},
		{"wrong key same kid", other.sign(t, good), ReasonInvalidToken, "signature does not verify"},
		{"key of another type", testKey{kid: "es", alg: rs.alg, priv: rs.priv}.sign(t, good), ReasonInvalidToken, "signature does not verify"},
		{"alg none", unsignedToken(t, map[string]any{"alg": "none", "kid": "rs"}, good, func(string) []byte { return nil }), ReasonInvalidToken, `algorithm "none"`},
		{"HS256 with the public key as secret", unsignedToken(t, map[string]any{"alg": "HS256", "kid": "rs"}, good, hs256(pubDER)), ReasonInvalidToken, `algorithm "HS256"`},
		{"EdDSA not allowed here", newTestKey(t, "ed", jose.EdDSA).sign(t, good), ReasonInvalidToken, `algorithm "EdDSA"`},
		{"tampered payload", tamper(rs.sign(t, good)), ReasonInvalidToken, "signature does not verify"},
		{"oversized", rs.sign(t, with(claimsAt("system:serviceaccount:shop:orders", exp), map[string]any{"pad": strings.Repeat("x", 20000)})), ReasonInvalidToken, "at most 16384"},
		{"not a JWT", "s.abcdefghijklmnop", ReasonInvalidToken, "not a JWT"},
		{"garbage header", "!!!.e30.sig", ReasonInvalidToken, "header"},
		{"unknown identity", rs.sign(t, claimsAt("system:serviceaccount:shop:stranger", exp)), ReasonUnknownIdentity, "no identity matches"},
		{"claims only partly match", rs.sign(t, with(claimsAt("x", exp), map[string]any{"groups": []string{"reporting"}, "team": "ops"})), ReasonUnknownIdentity, "no identity matches"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := j.Authenticate(context.Background(), tc.token)
			var ie *Error
			if !errors.As(err, &ie) || ie.Reason != tc.reason || !strings.Contains(ie.Msg, tc.msg) {
				t.Fatalf("got %+v, %v; want reason %s with %q", id, err, tc.reason, tc.msg)
			}
			if sig := tc.token[strings.LastIndexByte(tc.token, '.')+1:]; len(sig) > 8 && strings.Contains(err.Error(), sig) {
				t.Fatalf("error contains the signature: %v", err)
			}
		})
	}
}

func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	c, _ := base64.RawURLEncoding.DecodeString(parts[1])
	c = []byte(strings.Replace(string(c), "shop:orders", "shop:ordera", 1))
	parts[1] = base64.RawURLEncoding.EncodeToString(c)
	return strings.Join(parts, ".")
}

func TestJWTAlgorithmsConfig(t *testing.T) {
	for _, bad := range []string{"none", "HS256", "HS512", "rs256"} {
		if _, err := ParseJWTAlgorithms([]string{"RS256", bad}); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if _, err := ParseJWTAlgorithms([]string{"RS256", "ES256", "EdDSA", "PS256"}); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSSymmetricKeysDropped(t *testing.T) {
	set := `{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}`
	if _, err := parseJWKS([]byte(set)); err == nil {
		t.Fatal("a key set of only an HMAC secret was accepted")
	}
}

// TestJWKSURLRotation: a token signed with a new key id makes the proxy
// fetch the key set again, but made-up key ids do not make it fetch more
// than once per RefreshMin.
func TestJWKSURLRotation(t *testing.T) {
	k1, k2 := newTestKey(t, "k1", jose.RS256), newTestKey(t, "k2", jose.RS256)
	var fetches atomic.Int32
	var body atomic.Value
	body.Store(jwksJSON(t, k1))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		_, _ = w.Write(body.Load().([]byte))
	}))
	defer srv.Close()
	now := testNow
	j := newTestJWTs(t, JWTOptions{JWKSURL: srv.URL, RefreshMin: time.Minute, Now: func() time.Time { return now }})
	good := claimsAt("system:serviceaccount:shop:orders", testNow.Add(time.Hour))

	if _, err := j.Authenticate(context.Background(), k1.sign(t, good)); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Authenticate(context.Background(), k1.sign(t, good)); err != nil || fetches.Load() != 1 {
		t.Fatalf("second token: %v, %d fetches; want 1 (cached)", err, fetches.Load())
	}
	body.Store(jwksJSON(t, k1, k2)) // the issuer rotates
	if _, err := j.Authenticate(context.Background(), k2.sign(t, good)); err == nil || fetches.Load() != 1 {
		t.Fatalf("new kid within RefreshMin: %v, %d fetches; want refusal without a fetch", err, fetches.Load())
	}
	now = now.Add(2 * time.Minute)
	if _, err := j.Authenticate(context.Background(), k2.sign(t, good)); err != nil || fetches.Load() != 2 {
		t.Fatalf("new kid after RefreshMin: %v, %d fetches; want accepted after 1 more fetch", err, fetches.Load())
	}
	for i := 0; i < 5; i++ {
		_, _ = j.Authenticate(context.Background(), newTestKey(t, "bogus", jose.RS256).sign(t, good))
	}
	if fetches.Load() != 2 {
		t.Fatalf("made-up kids caused %d fetches; want none within RefreshMin", fetches.Load()-2)
	}
}

func TestJWKSURLDown(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	k := newTestKey(t, "k1", jose.RS256)
	j := newTestJWTs(t, JWTOptions{JWKSURL: srv.URL})
	_, err := j.Authenticate(context.Background(), k.sign(t, claimsAt("system:serviceaccount:shop:orders", testNow.Add(time.Hour))))
	var ie *Error
	if !errors.As(err, &ie) || ie.Reason != ReasonTokenCheckFailed {
		t.Fatalf("got %v; want %s", err, ReasonTokenCheckFailed)
	}
}
