package config

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// hasClientCA reports whether client certificates can be verified.
func (t ListenerTLS) hasClientCA() bool {
	return t.ClientCAFile != "" || t.VaultPKI != nil && t.VaultPKI.ClientCA
}

// listenerPKI checks a listener's tls.vault_pki and what it replaces.
func (v *validator) listenerPKI(p, what string, t ListenerTLS) {
	if t.CertFile != "" || t.KeyFile != "" {
		v.atKey(p+".vault_pki", "%s: set either cert_file and key_file or vault_pki, not both; vault_pki has Vault issue the certificate", what)
	}
	if t.VaultPKI.ClientCA && t.ClientCAFile != "" {
		v.at(p+".vault_pki.client_ca", "%s: vault_pki.client_ca and client_ca_file both name the CA for client certificates; keep one", what)
	}
	v.pki(p+".vault_pki", *t.VaultPKI)
}

// pki checks one vault_pki block at path p.
func (v *validator) pki(p string, k VaultPKI) {
	if !vaultPath(k.Mount) {
		v.at(p+".mount", "%s.mount: %q is not a mount path; leave the key out for %q", p, k.Mount, DefaultPKIMount)
	}
	switch {
	case k.Role == "":
		v.atKey(p+".role", "%s.role: required; the PKI role to issue under (%s/issue/ROLE)", p, k.Mount)
	case strings.ContainsAny(k.Role, "/ "):
		v.at(p+".role", "%s.role: %q is not a role name; write the name only, e.g. dbproxy", p, k.Role)
	}
	if k.CommonName == "" {
		v.atKey(p+".common_name", "%s.common_name: required; the name clients connect to, e.g. dbproxy.internal", p)
	}
	for i, ip := range k.IPSANs {
		if net.ParseIP(ip) == nil {
			v.at(fmt.Sprintf("%s.ip_sans[%d]", p, i), "%s.ip_sans[%d]: %q is not an IP address", p, i, ip)
		}
	}
	for i, n := range k.AltNames {
		if n == "" || strings.ContainsAny(n, " ,") {
			v.at(fmt.Sprintf("%s.alt_names[%d]", p, i), "%s.alt_names[%d]: %q is not a DNS name", p, i, n)
		}
	}
	switch {
	case k.TTL < 0:
		v.at(p+".ttl", "%s.ttl: %s is negative; leave it out for the role's ttl", p, k.TTL)
	case k.TTL > 0 && k.TTL.D() < 10*time.Second:
		v.at(p+".ttl", "%s.ttl: %s is too short; renewal at two thirds of it would issue a certificate every few seconds (use 10s or more)", p, k.TTL)
	}
}
