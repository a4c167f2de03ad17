package identity

import (
	"errors"
	"strings"
	"testing"
)

func intp(i int) *int { return &i }

func TestNewPolicy(t *testing.T) {
	tests := []struct {
		name    string
		specs   map[string]Spec
		wantErr []string // substrings of the error; nil means success
	}{
		{
			name: "valid",
			specs: map[string]Spec{
				"orders-api": {SpiffeID: "spiffe://corp/orders-api", UnixUID: intp(1001),
					Grants: []Grant{{Backend: "orders", Role: "app-readwrite"}}},
				"reporting": {CertCN: "reporting", Grants: []Grant{{Backend: "orders", Role: "app-readonly"}}},
				"sidecar":   {},
			},
		},
		{name: "empty", specs: nil},
		{
			name: "duplicate spiffe id",
			specs: map[string]Spec{
				"a": {SpiffeID: "spiffe://corp/x"},
				"b": {SpiffeID: "spiffe://corp/x"},
			},
			wantErr: []string{`identities.b.match.spiffe_id: "spiffe://corp/x" is already the spiffe_id of identity "a"`},
		},
		{
			name: "duplicate cn",
			specs: map[string]Spec{
				"a": {CertCN: "svc"},
				"b": {CertCN: "svc"},
			},
			wantErr: []string{`identities.b.match.cert_cn: "svc" is already the cert_cn of identity "a"`},
		},
		{
			name: "duplicate uid",
			specs: map[string]Spec{
				"a": {UnixUID: intp(1000)},
				"b": {UnixUID: intp(1000)},
			},
			wantErr: []string{`identities.b.match.unix_uid: 1000 is already the unix_uid of identity "a"`},
		},
		{
			name:    "not a spiffe id",
			specs:   map[string]Spec{"a": {SpiffeID: "https://corp/x"}},
			wantErr: []string{`identities.a.match.spiffe_id: "https://corp/x" is not a SPIFFE ID`},
		},
		{
			name:    "spiffe id without trust domain",
			specs:   map[string]Spec{"a": {SpiffeID: "spiffe:///x"}},
			wantErr: []string{"is not a SPIFFE ID"},
		},
		{
			name:    "unparsable spiffe id",
			specs:   map[string]Spec{"a": {SpiffeID: "spiffe://corp/%zz"}},
			wantErr: []string{"is not a URI"},
		},
		{
			name:    "negative uid",
			specs:   map[string]Spec{"a": {UnixUID: intp(-1)}},
			wantErr: []string{"identities.a.match.unix_uid: -1 is negative"},
		},
		{
			name:    "empty name",
			specs:   map[string]Spec{" ": {}},
			wantErr: []string{"empty name"},
		},
		{
			name: "bad grants, all reported",
			specs: map[string]Spec{"a": {Grants: []Grant{
				{Role: "r"},
				{Backend: "orders"},
				{Backend: "orders", Role: "r"},
				{Backend: "orders", Role: "r"},
			}}},
			wantErr: []string{
				"identities.a.grants[0]: backend is empty",
				`identities.a.grants[1]: role is empty (backend "orders")`,
				`identities.a.grants[3]: backend "orders" with role "r" is granted twice`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPolicy(tt.specs)
			if tt.wantErr == nil {
				if err != nil || p == nil {
					t.Fatalf("NewPolicy: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewPolicy succeeded, want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestNewPolicyCopiesGrants checks that the policy does not share the
// caller's slice: it is immutable after NewPolicy.
func TestNewPolicyCopiesGrants(t *testing.T) {
	grants := []Grant{{Backend: "orders", Role: "ro"}}
	p, err := NewPolicy(map[string]Spec{"a": {Grants: grants}})
	if err != nil {
		t.Fatal(err)
	}
	grants[0].Role = "rw"
	g, err := p.Authorize(Identity{Name: "a", Method: MethodListener}, "orders", "")
	if err != nil || g.Role != "ro" {
		t.Fatalf("Authorize = %+v, %v; want role ro", g, err)
	}
}

func TestFixed(t *testing.T) {
	p, err := NewPolicy(map[string]Spec{"orders-api": {}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		want       Identity
		wantReason Reason
	}{
		{name: "orders-api", want: Identity{Name: "orders-api", Method: MethodListener}},
		{name: "nobody", wantReason: ReasonUnknownIdentity},
		{name: "", wantReason: ReasonUnknownIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := p.Fixed(tt.name)
			checkResult(t, got, err, tt.want, tt.wantReason, "")
		})
	}
}

func TestAuthorize(t *testing.T) {
	p, err := NewPolicy(map[string]Spec{
		"orders-api": {Grants: []Grant{
			{Backend: "orders", Role: "app-readwrite"},
			{Backend: "billing", Role: "billing-ro"},
		}},
		"dba": {Grants: []Grant{
			{Backend: "orders", Role: "app-readwrite"},
			{Backend: "orders", Role: "app-readonly"},
		}},
		"nothing": {},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		id         Identity
		backend    string
		user       string
		want       Grant
		wantReason Reason
		wantMsg    string
	}{
		{
			name: "one grant", id: Identity{Name: "orders-api", Method: MethodMTLS},
			backend: "orders", user: "",
			want: Grant{Backend: "orders", Role: "app-readwrite"},
		},
		{
			name: "one grant ignores user", id: Identity{Name: "orders-api", Method: MethodPeer},
			backend: "billing", user: "postgres",
			want: Grant{Backend: "billing", Role: "billing-ro"},
		},
		{
			name: "several grants, user picks", id: Identity{Name: "dba", Method: MethodMTLS},
			backend: "orders", user: "app-readonly",
			want: Grant{Backend: "orders", Role: "app-readonly"},
		},
		{
			name: "several grants, user picks the other", id: Identity{Name: "dba", Method: MethodMTLS},
			backend: "orders", user: "app-readwrite",
			want: Grant{Backend: "orders", Role: "app-readwrite"},
		},
		{
			name: "several grants, user picks none", id: Identity{Name: "dba", Method: MethodMTLS},
			backend: "orders", user: "postgres",
			wantReason: ReasonAmbiguousGrant,
			wantMsg:    `identity "dba" has several roles on backend "orders" and user "postgres" is none of them: connect with one of "app-readonly", "app-readwrite" as the user name`,
		},
		{
			name: "several grants, no user", id: Identity{Name: "dba", Method: MethodMTLS},
			backend: "orders", user: "",
			wantReason: ReasonAmbiguousGrant,
			wantMsg:    `identity "dba" has several roles on backend "orders": connect with one of "app-readonly", "app-readwrite" as the user name`,
		},
		{
			name: "not granted", id: Identity{Name: "orders-api", Method: MethodMTLS},
			backend: "inventory", user: "app-readwrite",
			wantReason: ReasonNotGranted,
			wantMsg:    `identity "orders-api" may not use backend "inventory": add a grant for it under identities.orders-api.grants`,
		},
		{
			name: "identity without grants", id: Identity{Name: "nothing", Method: MethodListener},
			backend:    "orders",
			wantReason: ReasonNotGranted,
		},
		{
			name: "unknown identity", id: Identity{Name: "intruder", Method: MethodMTLS},
			backend: "orders", user: "app-readwrite",
			wantReason: ReasonUnknownIdentity,
			wantMsg:    `identity "intruder" is not configured: add it under identities.intruder`,
		},
		{
			name: "zero identity never falls back", id: Identity{},
			backend:    "orders",
			wantReason: ReasonUnknownIdentity,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := p.Authorize(tt.id, tt.backend, tt.user)
			checkResult(t, got, err, tt.want, tt.wantReason, tt.wantMsg)
			var e *Error
			if errors.As(err, &e) && (e.Identity != tt.id.Name || e.Backend != tt.backend) {
				t.Errorf("Error{Identity: %q, Backend: %q}, want %q, %q", e.Identity, e.Backend, tt.id.Name, tt.backend)
			}
		})
	}
}

// checkResult compares a (value, error) pair with either a wanted value or
// a wanted *Error reason (and, if wantMsg is set, its exact message).
func checkResult[T comparable](t *testing.T, got T, err error, want T, wantReason Reason, wantMsg string) {
	t.Helper()
	if wantReason == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		if got != want {
			t.Fatalf("got %+v, want %+v", got, want)
		}
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %+v, %v; want *Error with reason %s", got, err, wantReason)
	}
	if e.Reason != wantReason {
		t.Fatalf("reason %s (%v), want %s", e.Reason, e, wantReason)
	}
	var zero T
	if got != zero {
		t.Errorf("got %+v with an error, want the zero value", got)
	}
	if wantMsg != "" && e.Error() != wantMsg {
		t.Errorf("message\n got: %s\nwant: %s", e.Error(), wantMsg)
	}
	t.Logf("client sees: %s", e)
}

func TestErrorWithoutMsg(t *testing.T) {
	e := &Error{Reason: ReasonNotGranted}
	if got := e.Error(); got != "identity: not_granted" {
		t.Fatalf("Error() = %q", got)
	}
}
