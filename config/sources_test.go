package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// withSource replaces base's `vault_role: app` (line 10) with lines.
func withSource(lines string) string {
	return strings.Replace(base, "    vault_role: app\n", lines, 1)
}

func TestStaticAndKVDefaults(t *testing.T) {
	c, _, err := load(t, withSource("    vault_static_role: app-static\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backends["orders"]
	if b.CredentialRole() != "app-static" || b.Lease.PollInterval.D() != time.Minute {
		t.Fatalf("static: role %q poll %s", b.CredentialRole(), b.Lease.PollInterval)
	}
	c, _, err = load(t, withSource("    kv: { path: databases/legacy }\n    lease: { poll_interval: 0s }\n"))
	if err != nil {
		t.Fatal(err)
	}
	b = c.Backends["orders"]
	want := BackendKV{Mount: "secret", Path: "databases/legacy", UsernameField: "username", PasswordField: "password"}
	if *b.KV != want || b.CredentialRole() != "kv:secret/databases/legacy" || b.Lease.PollInterval != 0 {
		t.Fatalf("kv: %+v role %q poll %s", *b.KV, b.CredentialRole(), b.Lease.PollInterval)
	}
	// Dynamic backends get no poll interval.
	c, _, err = load(t, base)
	if err != nil || c.Backends["orders"].Lease.PollInterval != 0 {
		t.Fatalf("dynamic: %v poll %s", err, c.Backends["orders"].Lease.PollInterval)
	}
}

func TestStaticAndKVProblems(t *testing.T) {
	tests := []struct {
		name, lines string
		grant       string
		want        []string
	}{
		{"static and dynamic", "    vault_role: app\n    vault_static_role: app-static\n", "", []string{
			"11:5: backends.orders: set only one of vault_role (dynamic credentials), vault_static_role (a Vault static role) and kv"}},
		{"kv and static", "    vault_static_role: s\n    kv: { path: a/b }\n", "", []string{
			"11:5: backends.orders: set only one of"}},
		{"static name with slash", "    vault_static_role: static-creds/app\n", "", []string{
			`10:24: backends.orders.vault_static_role: "static-creds/app" is not a role name`}},
		{"kv without path", "    kv: { mount: kv }\n", "", []string{
			"10:5: backends.orders.kv.path: required"}},
		{"kv data path", "    kv: { path: /data/x/ }\n", "", []string{
			`10:17: backends.orders.kv.path: "/data/x/" is not a Vault path`}},
		{"kv empty field", "    kv: { path: a, password_field: \"\" }\n", "", []string{
			`10:36: backends.orders.kv.password_field: empty; leave the key out for "password"`}},
		{"poll on dynamic", "    vault_role: app\n    lease: { poll_interval: 5s }\n", "", []string{
			"11:29: backends.orders.lease.poll_interval: only for vault_static_role or kv backends"}},
		{"poll too short", "    vault_static_role: s\n    lease: { poll_interval: 10ms }\n", "", []string{
			"11:29: backends.orders.lease.poll_interval: 10ms; write 0s (off) or at least 1s"}},
		{"drain not over margin", "    vault_static_role: s\n    lease: { drain_timeout: 5s, safety_margin: 5s }\n", "", []string{
			"11:29: backends.orders.lease.drain_timeout: 5s is not more than safety_margin (5s)"}},
		{"grant names another role", "    vault_static_role: s\n", "        role: other\n", []string{
			`20:15: identities.svc.grants[0].role: "other", but backend "orders" takes its one credential from static role database/static-creds/s`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := load(t, withSource(tt.lines)+tt.grant)
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("want Problems, got %v", err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, strings.TrimPrefix(p.String(), p.File+":"))
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n  %s", len(got), len(tt.want), strings.Join(got, "\n  "))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i], w)
				}
			}
		})
	}
}
