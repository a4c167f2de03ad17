package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// tokenBase has a vault_token listener on TCP with TLS and a jwt listener
// on a unix socket. Line numbers matter to the tests.
const tokenBase = `vault:
  address: https://vault.example:8200
  auth:
    method: token
    token_file: token
backends:
  orders:
    protocol: postgres
    address: db.example:5432
    vault_role: app
listeners:
  - name: vt
    protocol: postgres
    address: 0.0.0.0:6432
    auth: vault_token
    tls: {cert_file: cert.pem, key_file: key.pem}
  - name: k8s
    protocol: mysql
    unix_socket: /run/dbproxy/mysql.sock
    jwt:
      issuer: https://kubernetes.default.svc
      audience: dbproxy
      jwks_file: jwt
identities:
  svc:
    match:
      vault_policy: orders-db
      vault_metadata: {team: shop}
      jwt_subject: system:serviceaccount:shop:orders
    grants:
      - backend: orders
`

func tokenEdit(t *testing.T, pairs ...string) string {
	t.Helper()
	s := tokenBase
	for i := 0; i+1 < len(pairs); i += 2 {
		if strings.Count(s, pairs[i]) != 1 {
			t.Fatalf("edit: %q occurs %d times", pairs[i], strings.Count(s, pairs[i]))
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

func TestTokenListenersValid(t *testing.T) {
	c, _, err := load(t, tokenBase)
	if err != nil {
		t.Fatal(err)
	}
	vt, k8s := c.Listeners[0], c.Listeners[1]
	if vt.VaultToken == nil || vt.VaultToken.CacheTTL.D() != time.Minute {
		t.Errorf("vault_token.cache_ttl default: %+v", vt.VaultToken)
	}
	if k8s.Auth != "jwt" || k8s.JWT.ClockSkew.D() != 30*time.Second || strings.Join(k8s.JWT.Algorithms, ",") != "RS256,ES256" {
		t.Errorf("jwt defaults: auth %q, %+v", k8s.Auth, k8s.JWT)
	}
	if m := c.Identities["svc"].Match; m.VaultMetadata["team"] != "shop" || m.JWTSubject == "" {
		t.Errorf("match: %+v", m)
	}
}

func TestTokenListenerProblems(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		want       []string
	}{
		{"vault token over cleartext TCP", tokenEdit(t, "    tls: {cert_file: cert.pem, key_file: key.pem}\n", ""),
			[]string{`15:11: listener "vt": auth vault_token takes a bearer token as the password, which must never cross the network in clear text: add tls`}},
		{"jwt over cleartext TCP", tokenEdit(t, "    unix_socket: /run/dbproxy/mysql.sock", "    address: 0.0.0.0:3306"),
			[]string{`17:5: listener "k8s": auth jwt takes a bearer token`}},
		{"alg none and HS256", tokenEdit(t, "      jwks_file: jwt", "      jwks_file: jwt\n      algorithms: [RS256, none, HS256]"),
			[]string{`24:27: listener "k8s": jwt.algorithms[1] "none" is not allowed`, `24:33: listener "k8s": jwt.algorithms[2] "HS256" is not allowed`}},
		{"no audience", tokenEdit(t, "      audience: dbproxy\n", ""),
			[]string{`20:5: listener "k8s": jwt.audience not set`}},
		{"both jwks", tokenEdit(t, "      jwks_file: jwt", "      jwks_file: jwt\n      jwks_url: https://k8s/openid/v1/jwks"),
			[]string{`24:17: listener "k8s": set only one of jwt.jwks_file and jwt.jwks_url`}},
		{"jwks over http", tokenEdit(t, "      jwks_file: jwt", "      jwks_url: http://k8s.internal/keys"),
			[]string{`23:17: listener "k8s": jwt.jwks_url "http://k8s.internal/keys" must use https`}},
		{"jwt auth without jwt block", tokenEdit(t, "    jwt:\n      issuer: https://kubernetes.default.svc\n      audience: dbproxy\n      jwks_file: jwt\n", "    auth: jwt\n"),
			[]string{`17:5: listener "k8s": auth jwt needs a jwt block`}},
		{"identity with no rule", tokenEdit(t, "    match:\n      vault_policy: orders-db\n      vault_metadata: {team: shop}\n      jwt_subject: system:serviceaccount:shop:orders\n", ""),
			[]string{`25:3: identity "svc" can never be matched`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := load(t, tt.text)
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("want Problems, got %v", err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, strings.TrimPrefix(p.String(), p.File+":"))
			}
			for _, w := range tt.want {
				found := false
				for _, g := range got {
					found = found || strings.HasPrefix(g, w)
				}
				if !found {
					t.Errorf("missing %q\ngot:\n  %s", w, strings.Join(got, "\n  "))
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("got %d problems, want %d:\n  %s", len(got), len(tt.want), strings.Join(got, "\n  "))
			}
		})
	}
}
