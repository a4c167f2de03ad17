package creds

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeVault is an httptest Vault speaking the JSON shapes that
// github.com/hashicorp/vault/api v1.22.0 sends and parses for the calls
// creds/ makes. Lease and token lifetimes are whole seconds, truncated the
// way Vault truncates them, and enforced against the wall clock.
type fakeVault struct {
	t   testing.TB
	srv *httptest.Server

	mu sync.Mutex

	// Secrets engine: every role under mount behaves alike.
	mount       string
	ttl, maxTTL time.Duration // lease TTL and role max_ttl
	renewable   bool
	noCap       bool // renewals ignore max_ttl (Vault never does; for tests)

	// Auth.
	rootToken      string        // accepted by lookup-self, never expires
	tokenTTL       time.Duration // TTL of tokens issued by logins; 0: never expires
	tokenMaxTTL    time.Duration // renew-self never extends past this; 0: no cap
	tokenRenewable bool
	roleID         string
	secretID       string
	k8sRole        string
	jwt            string

	// Failure injection: op -> response, until cleared.
	fails     map[string]fakeErr
	leaseFail map[string]fakeErr // lease id -> response to its renewals
	delays    map[string]time.Duration

	// State.
	tokens map[string]*fakeToken
	leases map[string]*fakeLease
	nLease int
	nToken int

	// Observations.
	hits     map[string]int // "METHOD /v1/path"
	opHits   map[string]int // op name
	bodies   map[string][]map[string]any
	revoked  []string
	seen     []string // every X-Vault-Token sent, in order
	issuedAt []time.Time

	// KV v2 at kvMount (see fakekv_test.go).
	kvMount string
	kv      map[string]*fakeKV

	// Static roles under mount (see fakestatic_test.go).
	static map[string]*fakeStatic

	// PKI at pki/ (see fakepki_test.go); nil until newFakePKI.
	pki *fakePKI
}

type fakeErr struct {
	status int
	errs   []string
}

type fakeToken struct {
	issued, expires, maxEnd time.Time // zero: never
	renewable               bool
}

type fakeLease struct {
	id                 string
	username, password string
	issued, expires    time.Time
	maxEnd             time.Time
	revoked            bool
	renewals           int
}

// Operation names for fail, delay and count.
const (
	opCreds      = "creds"
	opRole       = "role"
	opRenew      = "renew"
	opRevoke     = "revoke"
	opLookupSelf = "lookup-self"
	opRenewSelf  = "renew-self"
	opApprole    = "approle"
	opKubernetes = "kubernetes"
	opKVRead     = "kv-read"
	opKVWrite    = "kv-write"
	opStatic     = "static-creds"
	opPKIIssue   = "pki-issue"
	opPKICA      = "pki-ca"
	opListLeases = "list-leases"
)

func newFakeVault(t testing.TB) *fakeVault {
	f := &fakeVault{
		t: t, mount: "database",
		ttl: 60 * time.Second, maxTTL: 10 * time.Minute, renewable: true,
		rootToken: "hvs.ROOT-secret-token-9f8e7d", tokenRenewable: true,
		roleID: "role-id-1234", secretID: "secret-id-SECRET-5678",
		k8sRole: "dbproxy", jwt: "eyJhbGciOi.JWT-SECRET-payload.sig",
		fails: map[string]fakeErr{}, leaseFail: map[string]fakeErr{}, delays: map[string]time.Duration{},
		tokens: map[string]*fakeToken{}, leases: map[string]*fakeLease{},
		hits: map[string]int{}, opHits: map[string]int{}, bodies: map[string][]map[string]any{},
		kvMount: "secret", kv: map[string]*fakeKV{}, static: map[string]*fakeStatic{},
	}
	f.tokens[f.rootToken] = &fakeToken{issued: time.Now(), renewable: false}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeVault) URL() string { return f.srv.URL }

// set runs fn under the fake's lock, to change its configuration.
func (f *fakeVault) set(fn func(f *fakeVault)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeVault) fail(op string, status int, errs ...string) {
	f.set(func(f *fakeVault) { f.fails[op] = fakeErr{status, errs} })
}

func (f *fakeVault) recover(op string) { f.set(func(f *fakeVault) { delete(f.fails, op) }) }

func (f *fakeVault) failLease(id string, status int, errs ...string) {
	f.set(func(f *fakeVault) { f.leaseFail[id] = fakeErr{status, errs} })
}

func (f *fakeVault) delay(op string, d time.Duration) {
	f.set(func(f *fakeVault) { f.delays[op] = d })
}

// revokeLease revokes a lease behind dbproxy's back.
func (f *fakeVault) revokeLease(id string) {
	f.set(func(f *fakeVault) {
		if l := f.leases[id]; l != nil {
			l.revoked = true
		}
	})
}

// count is how many requests hit op.
func (f *fakeVault) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opHits[op]
}

// hitsOn is how many requests were made with method on path (/v1/...).
func (f *fakeVault) hitsOn(method, path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[method+" "+path]
}

func (f *fakeVault) totalHits() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.hits {
		n += v
	}
	return n
}

// bodiesOf returns the JSON bodies sent to op.
func (f *fakeVault) bodiesOf(op string) []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.bodies[op]...)
}

func (f *fakeVault) wasRevoked(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.revoked {
		if r == id {
			return true
		}
	}
	return false
}

func (f *fakeVault) lease(id string) fakeLease {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.leases[id]; l != nil {
		return *l
	}
	return fakeLease{}
}

func (f *fakeVault) renewalsOf(id string) int { return f.lease(id).renewals }

func (f *fakeVault) tokensSeen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

// secrets lists every secret the fake knows, to assert none leaks.
func (f *fakeVault) secrets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []string{f.rootToken, f.secretID, f.jwt}
	for tok := range f.tokens {
		out = append(out, tok)
	}
	for _, l := range f.leases {
		out = append(out, l.password)
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, e fakeErr) {
	errs := e.errs
	if errs == nil {
		errs = []string{}
	}
	writeJSON(w, e.status, map[string]any{"errors": errs})
}

func secs(d time.Duration) int { return int(d / time.Second) }

func (f *fakeVault) serve(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if b, _ := io.ReadAll(r.Body); len(b) > 0 {
		if err := json.Unmarshal(b, &body); err != nil {
			writeErr(w, fakeErr{400, []string{"failed to parse JSON input: " + err.Error()}})
			return
		}
	}
	path := r.URL.Path
	write := r.Method == http.MethodPut || r.Method == http.MethodPost

	op, role := "", ""
	credsPrefix := "/v1/" + f.mount + "/creds/"
	rolePrefix := "/v1/" + f.mount + "/roles/"
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(path, credsPrefix):
		op, role = opCreds, strings.TrimPrefix(path, credsPrefix)
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/v1/"+f.mount+"/static-creds/"):
		op, role = opStatic, strings.TrimPrefix(path, "/v1/"+f.mount+"/static-creds/")
	case write && strings.HasPrefix(path, "/v1/pki/issue/"):
		op = opPKIIssue
	case r.Method == http.MethodGet && path == "/v1/pki/ca/pem":
		op = opPKICA
	case r.Method == http.MethodGet && strings.HasPrefix(path, rolePrefix):
		op, role = opRole, strings.TrimPrefix(path, rolePrefix)
	case write && path == "/v1/sys/leases/renew":
		op = opRenew
	case write && path == "/v1/sys/leases/revoke":
		op = opRevoke
	case (r.Method == "LIST" || r.URL.Query().Get("list") == "true") && strings.HasPrefix(path, "/v1/sys/leases/lookup/"):
		op = opListLeases
	case r.Method == http.MethodGet && path == "/v1/auth/token/lookup-self":
		op = opLookupSelf
	case write && path == "/v1/auth/token/renew-self":
		op = opRenewSelf
	case strings.HasPrefix(path, "/v1/"+f.kvMount+"/data/"):
		op = opKVRead
		if write {
			op = opKVWrite
		}
	case write && strings.HasPrefix(path, "/v1/auth/") && strings.HasSuffix(path, "/login"):
		if _, ok := body["jwt"]; ok {
			op = opKubernetes
		} else {
			op = opApprole
		}
	}

	f.mu.Lock()
	f.hits[r.Method+" "+path]++
	f.opHits[op]++
	if body != nil {
		f.bodies[op] = append(f.bodies[op], body)
	}
	if tok := r.Header.Get("X-Vault-Token"); tok != "" {
		f.seen = append(f.seen, tok)
	}
	d := f.delays[op]
	fe, failing := f.fails[op]
	f.mu.Unlock()

	if d > 0 {
		// The request is handled at arrival; only the answer is late, so
		// that lease times are as Vault sees them.
		defer time.Sleep(d)
	}
	if op == "" {
		writeErr(w, fakeErr{404, nil})
		return
	}
	if failing {
		writeErr(w, fe)
		return
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if op != opApprole && op != opKubernetes {
		t := f.tokens[r.Header.Get("X-Vault-Token")]
		if t == nil || (!t.expires.IsZero() && !now.Before(t.expires)) {
			writeErr(w, fakeErr{403, []string{"permission denied"}})
			return
		}
	}
	switch op {
	case opStatic:
		f.serveStatic(w, role, now)
	case opPKIIssue, opPKICA:
		f.servePKI(w, op, body, now)
	case opKVRead, opKVWrite:
		f.serveKV(w, op, strings.TrimPrefix(path, "/v1/"+f.kvMount+"/data/"), body, now)
	case opCreds:
		f.nLease++
		f.issuedAt = append(f.issuedAt, now)
		id := fmt.Sprintf("%s/creds/%s/lease%04d", f.mount, role, f.nLease)
		l := &fakeLease{
			id: id, username: fmt.Sprintf("v-token-%s-%d", role, f.nLease),
			password: fmt.Sprintf("A1a-PASSWORD-%d-xyz", f.nLease),
			issued:   now, maxEnd: now.Add(f.maxTTL),
		}
		ttl := min(f.ttl, f.maxTTL)
		l.expires = now.Add(ttl)
		f.leases[id] = l
		writeJSON(w, 200, map[string]any{
			"request_id": "req", "lease_id": id, "renewable": f.renewable, "lease_duration": secs(ttl),
			"data":      map[string]any{"username": l.username, "password": l.password},
			"wrap_info": nil, "warnings": nil, "auth": nil,
		})
	case opRole:
		writeJSON(w, 200, map[string]any{
			"request_id": "req", "lease_id": "", "renewable": false, "lease_duration": 0,
			"data": map[string]any{
				"db_name": "pg", "default_ttl": secs(f.ttl), "max_ttl": secs(f.maxTTL),
				"creation_statements": []string{"CREATE ROLE ..."}, "credential_type": "password",
			},
		})
	case opRenew:
		id, _ := body["lease_id"].(string)
		inc := time.Duration(jsonInt(body["increment"])) * time.Second
		if e, ok := f.leaseFail[id]; ok {
			writeErr(w, e)
			return
		}
		l := f.leases[id]
		if l == nil || l.revoked || !now.Before(l.expires) {
			writeErr(w, fakeErr{400, []string{"lease not found"}})
			return
		}
		if !f.renewable {
			writeErr(w, fakeErr{400, []string{"lease is not renewable"}})
			return
		}
		if inc <= 0 {
			inc = f.ttl
		}
		granted := inc
		var warnings []string
		if left := l.maxEnd.Sub(now); !f.noCap && left < granted {
			granted = left
			warnings = append(warnings, fmt.Sprintf("TTL of %q exceeded the effective max_ttl of %q; TTL value is capped accordingly", inc, left))
		}
		l.renewals++
		l.expires = now.Add(granted)
		writeJSON(w, 200, map[string]any{
			"request_id": "req", "lease_id": id, "renewable": true, "lease_duration": secs(granted),
			"data": nil, "warnings": warnings,
		})
	case opRevoke:
		id, _ := body["lease_id"].(string)
		if l := f.leases[id]; l != nil {
			l.revoked = true
		}
		f.revoked = append(f.revoked, id)
		w.WriteHeader(http.StatusNoContent)
	case opListLeases:
		// Vault lists one level: the lease ids' last parts under a role.
		dir := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/sys/leases/lookup/"), "/") + "/"
		var keys []any
		for id, l := range f.leases {
			if rest, ok := strings.CutPrefix(id, dir); ok && !strings.Contains(rest, "/") && !l.revoked && now.Before(l.expires) {
				keys = append(keys, rest)
			}
		}
		if len(keys) == 0 {
			writeErr(w, fakeErr{404, nil})
			return
		}
		writeJSON(w, 200, map[string]any{"request_id": "req", "data": map[string]any{"keys": keys}})
	case opLookupSelf:
		tok := r.Header.Get("X-Vault-Token")
		t := f.tokens[tok]
		ttl := 0
		expire := any(nil)
		if !t.expires.IsZero() {
			ttl = secs(t.expires.Sub(now))
			expire = t.expires.UTC().Format(time.RFC3339Nano)
		}
		writeJSON(w, 200, map[string]any{
			"request_id": "req", "lease_id": "", "renewable": false, "lease_duration": 0,
			"data": map[string]any{
				"accessor": "acc", "creation_ttl": ttl, "display_name": "token", "expire_time": expire,
				"id": tok, "policies": []string{"dbproxy"}, "renewable": t.renewable, "ttl": ttl, "type": "service",
			},
		})
	case opRenewSelf:
		tok := r.Header.Get("X-Vault-Token")
		t := f.tokens[tok]
		if !t.renewable {
			writeErr(w, fakeErr{400, []string{"token not renewable"}})
			return
		}
		inc := time.Duration(jsonInt(body["increment"])) * time.Second
		if inc <= 0 {
			inc = f.tokenTTL
		}
		if !t.maxEnd.IsZero() && now.Add(inc).After(t.maxEnd) {
			inc = t.maxEnd.Sub(now)
		}
		t.expires = now.Add(inc)
		writeJSON(w, 200, map[string]any{"auth": map[string]any{
			"client_token": tok, "accessor": "acc", "policies": []string{"dbproxy"},
			"lease_duration": secs(inc), "renewable": t.renewable,
		}})
	case opApprole, opKubernetes:
		ok := false
		if op == opApprole {
			ok = body["role_id"] == f.roleID && body["secret_id"] == f.secretID
		} else {
			ok = body["role"] == f.k8sRole && body["jwt"] == f.jwt
		}
		if !ok {
			msg := "invalid role or secret ID"
			if op == opKubernetes {
				msg = "permission denied"
			}
			writeErr(w, fakeErr{400, []string{msg}})
			return
		}
		f.nToken++
		tok := fmt.Sprintf("hvs.LOGIN-%d-secret-token", f.nToken)
		t := &fakeToken{issued: now, renewable: f.tokenRenewable}
		if f.tokenTTL > 0 {
			t.expires = now.Add(f.tokenTTL)
		}
		if f.tokenMaxTTL > 0 {
			t.maxEnd = now.Add(f.tokenMaxTTL)
		}
		f.tokens[tok] = t
		writeJSON(w, 200, map[string]any{"request_id": "req", "auth": map[string]any{
			"client_token": tok, "accessor": "acc", "policies": []string{"default", "dbproxy"},
			"token_policies": []string{"default", "dbproxy"}, "metadata": map[string]string{"role_name": "dbproxy"},
			"lease_duration": secs(f.tokenTTL), "renewable": f.tokenRenewable, "entity_id": "ent", "token_type": "service",
			"orphan": true,
		}})
	}
}

func jsonInt(v any) int {
	switch x := v.(type) {
	case float64:
		return int(x)
	case string:
		var n int
		_, _ = fmt.Sscan(x, &n)
		return n
	}
	return 0
}
