package config

import (
	"errors"
	"strings"
	"testing"
)

// withListenerTLS gives base's listener the tls block lines (indented
// under the listener).
func withListenerTLS(lines string) string {
	return strings.Replace(base, "    identity: svc\n", "    identity: svc\n    tls:\n"+lines, 1)
}

func TestVaultPKIDefaults(t *testing.T) {
	c, _, err := load(t, withListenerTLS("      vault_pki: { role: dbproxy, common_name: db.internal, ip_sans: [ 127.0.0.1 ], ttl: 1h }\n"))
	if err != nil {
		t.Fatal(err)
	}
	k := c.Listeners[0].TLS.VaultPKI
	if k.Mount != "pki" || k.Role != "dbproxy" || k.TTL.String() != "1h0m0s" || len(k.IPSANs) != 1 {
		t.Fatalf("vault_pki = %+v", *k)
	}
	// auth mtls is satisfied by the mount's CA.
	text := strings.Replace(withListenerTLS("      require_client_cert: true\n      vault_pki: { role: r, common_name: db.internal, client_ca: true }\n"), "    identity: svc\n", "", 1)
	text = strings.Replace(text, "  svc:\n", "  svc:\n    match: { cert_cn: svc }\n", 1)
	c, _, err = load(t, text)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Listeners[0]; l.Auth != "mtls" || !l.TLS.Required {
		t.Fatalf("auth %s, tls.required %v; want mtls, true", l.Auth, l.TLS.Required)
	}
}

func TestVaultPKIProblems(t *testing.T) {
	tests := []struct{ name, text, want string }{
		{"files and pki", withListenerTLS("      cert_file: cert.pem\n      key_file: key.pem\n      vault_pki: { role: r, common_name: c }\n"),
			"set either cert_file and key_file or vault_pki, not both"},
		{"no role", withListenerTLS("      vault_pki: { common_name: c }\n"), "listeners[0].tls.vault_pki.role: required"},
		{"no common name", withListenerTLS("      vault_pki: { role: r }\n"), "listeners[0].tls.vault_pki.common_name: required"},
		{"bad ip", withListenerTLS("      vault_pki: { role: r, common_name: c, ip_sans: [ localhost ] }\n"), `ip_sans[0]: "localhost" is not an IP address`},
		{"short ttl", withListenerTLS("      vault_pki: { role: r, common_name: c, ttl: 5s }\n"), "vault_pki.ttl: 5s is too short"},
		{"two client CAs", withListenerTLS("      client_ca_file: client-ca.pem\n      vault_pki: { role: r, common_name: c, client_ca: true }\n"),
			"vault_pki.client_ca and client_ca_file both name the CA"},
		{"neither", withListenerTLS("      required: true\n"), "tls needs both cert_file and key_file, or vault_pki"},
		{"upstream client_ca", strings.Replace(base, "    vault_role: app\n", "    vault_role: app\n    tls: { mode: require, vault_pki: { role: r, common_name: c, client_ca: true } }\n", 1),
			"backends.orders.tls.vault_pki.client_ca: only for listeners"},
		{"upstream without tls", strings.Replace(base, "    vault_role: app\n", "    vault_role: app\n    tls: { vault_pki: { role: r, common_name: c } }\n", 1),
			"backends.orders.tls.mode: disable, but tls.vault_pki issues a client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := load(t, tt.text)
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("want Problems, got %v", err)
			}
			if len(ps) != 1 || !strings.Contains(ps[0].Msg, tt.want) {
				t.Fatalf("problems %v, want one saying %q", ps, tt.want)
			}
		})
	}
}
