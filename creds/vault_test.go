package creds

import (
	"context"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoginMethods(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		auth     func(t *testing.T, fv *fakeVault) AuthOptions
		op, path string
		body     func(fv *fakeVault) map[string]any
		token    func(fv *fakeVault) string
		ttl      time.Duration // expected token TTL; 0: never expires
	}{
		{
			name: "token file",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "token", TokenFile: writeFile(t, "token", "  "+fv.rootToken+"\n")}
			},
			op: opLookupSelf, path: "GET /v1/auth/token/lookup-self",
			token: func(fv *fakeVault) string { return fv.rootToken },
		},
		{
			name: "token file with a TTL",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				fv.set(func(f *fakeVault) {
					f.tokens["hvs.TTL-secret-token"] = &fakeToken{expires: time.Now().Add(time.Hour), renewable: true}
				})
				return AuthOptions{Method: "token", TokenFile: writeFile(t, "token", "hvs.TTL-secret-token")}
			},
			op: opLookupSelf, path: "GET /v1/auth/token/lookup-self",
			token: func(*fakeVault) string { return "hvs.TTL-secret-token" },
			ttl:   time.Hour,
		},
		{
			name: "approle",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID+"\n"), SecretIDFile: writeFile(t, "secret_id", fv.secretID+"\n")}
			},
			op: opApprole, path: "PUT /v1/auth/approle/login",
			body: func(fv *fakeVault) map[string]any {
				return map[string]any{"role_id": fv.roleID, "secret_id": fv.secretID}
			},
			token: func(*fakeVault) string { return "hvs.LOGIN-1-secret-token" },
			ttl:   time.Hour,
		},
		{
			name: "approle at a custom mount",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "approle", Mount: "/approle-prod/", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID)}
			},
			op: opApprole, path: "PUT /v1/auth/approle-prod/login",
			body: func(fv *fakeVault) map[string]any {
				return map[string]any{"role_id": fv.roleID, "secret_id": fv.secretID}
			},
			token: func(*fakeVault) string { return "hvs.LOGIN-1-secret-token" },
			ttl:   time.Hour,
		},
		{
			name: "kubernetes",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "kubernetes", Role: fv.k8sRole, JWTFile: writeFile(t, "token", fv.jwt+"\n")}
			},
			op: opKubernetes, path: "PUT /v1/auth/kubernetes/login",
			body:  func(fv *fakeVault) map[string]any { return map[string]any{"role": fv.k8sRole, "jwt": fv.jwt} },
			token: func(*fakeVault) string { return "hvs.LOGIN-1-secret-token" },
			ttl:   time.Hour,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fv := newFakeVault(t)
			fv.set(func(f *fakeVault) { f.tokenTTL = time.Hour })
			log, logs := testLogger()
			c := newClient(t, fv, tc.auth(t, fv), log)
			before := time.Now()
			if err := c.Login(context.Background()); err != nil {
				t.Fatal(err)
			}
			method, path, _ := strings.Cut(tc.path, " ")
			if n := fv.hitsOn(method, path); n != 1 || fv.totalHits() != 1 {
				t.Errorf("%d hits on %s, %d in all; want exactly 1", n, tc.path, fv.totalHits())
			}
			if tc.body != nil {
				bodies := fv.bodiesOf(tc.op)
				if len(bodies) != 1 || !equalBody(bodies[0], tc.body(fv)) {
					t.Errorf("login body %v, want %v", bodies, tc.body(fv))
				}
				if seen := fv.tokensSeen(); len(seen) != 0 {
					t.Errorf("login sent tokens %q, want none", seen)
				}
			}
			if got := c.api.Token(); got != tc.token(fv) {
				t.Errorf("client token %q, want %q", got, tc.token(fv))
			}
			end := c.TokenEnd()
			switch {
			case tc.ttl == 0 && !end.IsZero():
				t.Errorf("token end %v, want none", end)
			case tc.ttl > 0 && (end.Before(before.Add(tc.ttl-time.Second)) || end.After(time.Now().Add(tc.ttl))):
				t.Errorf("token end %v, want about now+%v", end, tc.ttl)
			}
			// The token works: a credential can be fetched with it.
			s := newSource(c, testBackend, "database", testRole, LeaseOptions{}, log, NewMetrics(nil))
			if _, err := s.fetch(context.Background()); err != nil {
				t.Fatalf("fetch with the new token: %v", err)
			}
			if seen := fv.tokensSeen(); seen[len(seen)-1] != tc.token(fv) {
				t.Errorf("creds read with token %q, want %q", seen[len(seen)-1], tc.token(fv))
			}
			assertNoSecrets(t, logs, fv.secrets())
		})
	}
}

func equalBody(got, want map[string]any) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

func TestLoginErrors(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "no-such-file")
	for _, tc := range []struct {
		name  string
		auth  func(t *testing.T, fv *fakeVault) AuthOptions
		setup func(fv *fakeVault)
		want  []string // substrings of the error
		hits  int      // requests the fake sees
	}{
		{
			name: "token file missing",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions { return AuthOptions{Method: "token", TokenFile: missing} },
			want: []string{"vault auth", missing, "no such file"},
		},
		{
			name: "token file not configured",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions { return AuthOptions{Method: "token"} },
			want: []string{"secret file path is empty"},
		},
		{
			name: "token file empty",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "token", TokenFile: writeFile(t, "token", " \n")}
			},
			want: []string{"is empty"},
		},
		{
			name: "role_id file missing",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "approle", RoleIDFile: missing, SecretIDFile: writeFile(t, "secret_id", fv.secretID)}
			},
			want: []string{missing, "no such file"},
		},
		{
			name: "secret_id file missing",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: missing}
			},
			want: []string{missing, "no such file"},
		},
		{
			name: "jwt file missing",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "kubernetes", Role: fv.k8sRole, JWTFile: missing}
			},
			want: []string{missing, "no such file"},
		},
		{
			name: "unsupported method",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions { return AuthOptions{Method: "ldap"} },
			want: []string{`"ldap" is not supported`},
		},
		{
			name: "token rejected",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "token", TokenFile: writeFile(t, "token", "hvs.WRONG-secret-token")}
			},
			want: []string{"lookup-self", "403", "permission denied"},
			hits: 1,
		},
		{
			name: "approle secret_id rejected",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", "secret-id-WRONG-0000")}
			},
			want: []string{"approle login", "auth/approle/login", "400", "invalid role or secret ID"},
			hits: 1,
		},
		{
			name: "approle with Vault sealed",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID)}
			},
			setup: func(fv *fakeVault) { fv.fail(opApprole, 503, "Vault is sealed") },
			want:  []string{"503", "Vault is sealed"},
			hits:  1,
		},
		{
			name: "kubernetes jwt rejected",
			auth: func(t *testing.T, fv *fakeVault) AuthOptions {
				return AuthOptions{Method: "kubernetes", Role: fv.k8sRole, JWTFile: writeFile(t, "jwt", "eyJ.WRONG-JWT-secret.sig")}
			},
			want: []string{"kubernetes login", "400", "permission denied"},
			hits: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fv := newFakeVault(t)
			if tc.setup != nil {
				tc.setup(fv)
			}
			log, logs := testLogger()
			auth := tc.auth(t, fv)
			c := newClient(t, fv, auth, log)
			err := c.Login(context.Background())
			if err == nil {
				t.Fatal("Login succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if n := fv.totalHits(); n != tc.hits {
				t.Errorf("%d requests, want %d", n, tc.hits)
			}
			secrets := append(fv.secrets(), "hvs.WRONG-secret-token", "secret-id-WRONG-0000", "eyJ.WRONG-JWT-secret.sig")
			assertNoSecrets(t, logs, secrets, err.Error())
		})
	}
}

// Secrets (tokens, secret_id, jwt, passwords) never reach a log line or an
// error, whatever happens: logins, fetches, renewals, rotations, failures.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	for _, method := range []string{"token", "approle", "kubernetes"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			fv := newFakeVault(t)
			fv.set(func(f *fakeVault) { f.ttl, f.tokenTTL = 2*time.Second, time.Hour })
			log, logs := testLogger()
			var auth AuthOptions
			switch method {
			case "token":
				auth = AuthOptions{Method: "token", TokenFile: writeFile(t, "token", fv.rootToken)}
			case "approle":
				auth = AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID)}
			case "kubernetes":
				auth = AuthOptions{Method: "kubernetes", Role: fv.k8sRole, JWTFile: writeFile(t, "jwt", fv.jwt)}
			}
			c := newClient(t, fv, auth, log)
			var errs []string
			// Vault sealed at start: the login and the first fetches fail.
			for _, op := range []string{opLookupSelf, opApprole, opKubernetes, opCreds} {
				fv.fail(op, 503, "Vault is sealed")
			}
			if err := c.Login(context.Background()); err == nil {
				t.Fatal("login succeeded against a sealed Vault")
			} else {
				errs = append(errs, err.Error())
			}
			s := startSource(t, c, LeaseOptions{RevokeGrace: 200 * time.Millisecond}, log)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := s.Current(ctx)
			cancel()
			if err == nil {
				t.Fatal("Current succeeded against a sealed Vault")
			}
			errs = append(errs, err.Error())
			for _, op := range []string{opLookupSelf, opApprole, opKubernetes, opCreds} {
				fv.recover(op)
			}
			s.Rotate("manual")
			g1 := s.current(t, 1, 3*time.Second)
			// Renewal, then an external revoke, a rotation and a revoke.
			waitFor(t, 3*time.Second, "a renewal", func() bool { return fv.renewalsOf(g1.LeaseID) >= 1 })
			fv.revokeLease(g1.LeaseID)
			s.current(t, 2, 3*time.Second)
			g2 := s.current(t, 2, time.Second)
			g2.AuthFailed()
			s.current(t, 3, 3*time.Second)
			errs = append(errs, g1.Reason(), g2.Reason())

			secrets := fv.secrets()
			if len(secrets) < 6 {
				t.Fatalf("only %d secrets to look for", len(secrets))
			}
			assertNoSecrets(t, logs, secrets, errs...)
		})
	}
}

// The client never retries by itself, whatever VAULT_MAX_RETRIES says, and
// ignores VAULT_TOKEN: one failing request is one HTTP hit.
func TestClientDoesNotRetry(t *testing.T) {
	t.Setenv("VAULT_MAX_RETRIES", "5")
	t.Setenv("VAULT_TOKEN", "hvs.ENV-secret-token")
	for _, status := range []int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			fv := newFakeVault(t)
			fv.set(func(f *fakeVault) { f.tokens["hvs.ENV-secret-token"] = &fakeToken{} })
			log, _ := testLogger()
			ctx := context.Background()

			c := newClient(t, fv, AuthOptions{Method: "token", TokenFile: writeFile(t, "token", fv.rootToken)}, log)
			if tok := c.api.Token(); tok != "" {
				t.Errorf("client took the token %q from the environment", tok)
			}
			fv.fail(opLookupSelf, status, "boom")
			if err := c.Login(ctx); err == nil {
				t.Fatal("login succeeded")
			}
			if n := fv.count(opLookupSelf); n != 1 {
				t.Errorf("%d lookup-self requests for one login", n)
			}
			fv.recover(opLookupSelf)
			if err := c.Login(ctx); err != nil {
				t.Fatal(err)
			}

			s := newSource(c, testBackend, "database", testRole, LeaseOptions{}, log, NewMetrics(nil))
			fv.fail(opCreds, status, "boom")
			if _, err := s.fetch(ctx); err == nil {
				t.Fatal("fetch succeeded")
			}
			if n := fv.count(opCreds); n != 1 {
				t.Errorf("%d creds reads for one fetch", n)
			}
			fv.recover(opCreds)
			g, err := s.fetch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			fv.fail(opRenew, status, "boom")
			s.renew(ctx, g)
			if n := fv.count(opRenew); n != 1 {
				t.Errorf("%d renew requests for one renewal", n)
			}
			fv.fail(opRevoke, status, "boom")
			g.startDrain("manual", time.Now().Add(time.Minute))
			s.revoke(ctx, g)
			if n := fv.count(opRevoke); n != 1 {
				t.Errorf("%d revoke requests for one revocation", n)
			}

			ac := newClient(t, fv, AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID)}, log)
			fv.fail(opApprole, status, "boom")
			if err := ac.Login(ctx); err == nil {
				t.Fatal("approle login succeeded")
			}
			if n := fv.count(opApprole); n != 1 {
				t.Errorf("%d approle requests for one login", n)
			}
			if slices.Contains(fv.tokensSeen(), "hvs.ENV-secret-token") {
				t.Error("the VAULT_TOKEN from the environment was sent")
			}
		})
	}
}

func TestEnsureTokenRenewsThenLogsIn(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.tokenTTL, f.tokenMaxTTL, f.tokenRenewable = 10*time.Second, 15*time.Second, true })
	log, _ := testLogger()
	c := newClient(t, fv, AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID)}, log)
	ctx := context.Background()
	if err := c.EnsureToken(ctx, time.Second); err != nil { // no token yet: logs in
		t.Fatal(err)
	}
	if n := fv.count(opApprole); n != 1 {
		t.Fatalf("%d logins, want 1", n)
	}
	first := c.api.Token()

	if err := c.EnsureToken(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := fv.totalHits(); n != 1 {
		t.Errorf("%d requests for a token that lives long enough, want none more", n-1)
	}

	// Needs 12s: renew-self (asks 10s, gets 10s, not enough), then log in.
	if err := c.EnsureToken(ctx, 12*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := fv.count(opRenewSelf); n != 1 {
		t.Errorf("%d renew-self requests, want 1", n)
	}
	if b := fv.bodiesOf(opRenewSelf); len(b) != 1 || b[0]["increment"] != float64(10) {
		t.Errorf("renew-self bodies %v, want increment 10", b)
	}
	if n := fv.count(opApprole); n != 2 {
		t.Errorf("%d logins, want 2", n)
	}
	if c.api.Token() == first {
		t.Error("token unchanged after logging in again")
	}

	// A 3s token, 1s later, needs 2.5s: renew-self (3s) suffices.
	fv.set(func(f *fakeVault) { f.tokenTTL = 3 * time.Second })
	if err := c.Login(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := c.EnsureToken(ctx, 2500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if n := fv.count(opRenewSelf); n != 2 {
		t.Errorf("%d renew-self requests, want 2", n)
	}
	if n := fv.count(opApprole); n != 3 {
		t.Errorf("%d logins, want 3 (renewal sufficed)", n)
	}
	if left := time.Until(c.TokenEnd()); left < 2500*time.Millisecond {
		t.Errorf("token left %v after renewal", left)
	}
}

// A token whose lookup failed (Vault down at start) is looked up again
// before it is relied on, so that its TTL is known.
func TestTokenLookupRetriedAfterFailure(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	const tok = "hvs.TTL-secret-token"
	fv.set(func(f *fakeVault) { f.tokens[tok] = &fakeToken{expires: time.Now().Add(time.Hour)} })
	log, _ := testLogger()
	c := newClient(t, fv, AuthOptions{Method: "token", TokenFile: writeFile(t, "token", tok)}, log)
	ctx := context.Background()
	fv.fail(opLookupSelf, 503, "Vault is sealed")
	if err := c.Login(ctx); err == nil {
		t.Fatal("login succeeded")
	}
	fv.recover(opLookupSelf)
	if err := c.EnsureToken(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := fv.count(opLookupSelf); n != 2 {
		t.Errorf("%d lookups, want 2", n)
	}
	if left := time.Until(c.TokenEnd()); left < 59*time.Minute || left > time.Hour {
		t.Errorf("token end in %v, want about 1h", left)
	}
	// Known now: no more lookups.
	if err := c.EnsureToken(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := fv.count(opLookupSelf); n != 2 {
		t.Errorf("%d lookups, want still 2", n)
	}
}

// A login in progress must not strip the token from the other requests
// of the client: a renewal sent without a token gets a 403, which reads as
// a revoked lease.
func TestLoginKeepsTokenForConcurrentRequests(t *testing.T) {
	t.Parallel()
	fv := newFakeVault(t)
	fv.set(func(f *fakeVault) { f.ttl = 2 * time.Second })
	log, _ := testLogger()
	c := newClient(t, fv, AuthOptions{Method: "approle", RoleIDFile: writeFile(t, "role_id", fv.roleID), SecretIDFile: writeFile(t, "secret_id", fv.secretID)}, log)
	if err := c.Login(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := startSource(t, c, LeaseOptions{}, log)
	g1 := s.current(t, 1, 3*time.Second)

	fv.delay(opApprole, 2500*time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- c.Login(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("login did not return")
	}
	if n := fv.count(opRenew); n < 1 {
		t.Fatal("no renewal during the slow login")
	}
	if isClosed(g1.Draining()) {
		t.Fatalf("generation 1 drained during a login: %s", g1.Reason())
	}
	if n, all := fv.renewalsOf(g1.LeaseID), fv.count(opRenew); n != all {
		t.Errorf("%d of %d renewals succeeded", n, all)
	}
	if n := fv.count(opCreds); n != 1 {
		t.Errorf("%d creds reads, want 1", n)
	}
}

func TestNewClientErrors(t *testing.T) {
	t.Parallel()
	log, _ := testLogger()
	_, err := NewClient(ClientOptions{Address: "https://vault.example", CAFile: filepath.Join(t.TempDir(), "missing.pem")}, log, nil)
	if err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("NewClient with a missing CA file: %v", err)
	}
	c, err := NewClient(ClientOptions{Address: "https://vault.example", Auth: AuthOptions{Method: "approle"}}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.auth.Mount != "approle" {
		t.Errorf("default mount %q, want the method name", c.auth.Mount)
	}
}
