package config

import (
	"slices"
	"strings"
	"time"
)

// credentialSource checks where backend p takes its credentials from:
// exactly one of vault_role (or roles named by grants), vault_static_role
// and kv, and the settings that only make sense for one of them.
func (v *validator) credentialSource(p string, b Backend) {
	set := 0
	for _, on := range []bool{b.VaultRole != "", b.VaultStaticRole != "", b.KV != nil} {
		if on {
			set++
		}
	}
	if set > 1 {
		key := p + ".vault_static_role"
		if b.KV != nil {
			key = p + ".kv"
		}
		v.atKey(key, "%s: set only one of vault_role (dynamic credentials), vault_static_role (a Vault static role) and kv (a KV v2 secret); a backend has one source of credentials", p)
	}
	if b.VaultStaticRole != "" && strings.ContainsAny(b.VaultStaticRole, "/ ") {
		v.at(p+".vault_static_role", "%s.vault_static_role: %q is not a role name; write the name only, e.g. app-static for %s/static-creds/app-static", p, b.VaultStaticRole, b.VaultMount)
	}
	if kv := b.KV; kv != nil {
		switch {
		case kv.Path == "":
			v.atKey(p+".kv.path", "%s.kv.path: required; the secret's path under kv.mount, e.g. databases/legacy", p)
		case !vaultPath(kv.Path):
			v.at(p+".kv.path", "%s.kv.path: %q is not a Vault path; write it without leading or trailing slashes and without data/, like databases/legacy", p, kv.Path)
		}
		if !vaultPath(kv.Mount) {
			v.at(p+".kv.mount", "%s.kv.mount: %q is not a mount path; leave the key out for %q", p, kv.Mount, DefaultKVMount)
		}
		for _, f := range []struct{ key, val string }{{"username_field", kv.UsernameField}, {"password_field", kv.PasswordField}} {
			if f.val == "" {
				v.at(p+".kv."+f.key, "%s.kv.%s: empty; leave the key out for %q", p, f.key, strings.TrimSuffix(f.key, "_field"))
			}
		}
	}
	l := b.Lease
	static := b.VaultStaticRole != "" || b.KV != nil
	switch {
	case !static && l.PollInterval != 0:
		v.at(p+".lease.poll_interval", "%s.lease.poll_interval: only for vault_static_role or kv backends (dynamic credentials are renewed and rotated by their lease); remove it", p)
	case l.PollInterval < 0 || l.PollInterval > 0 && l.PollInterval.D() < time.Second:
		v.at(p+".lease.poll_interval", "%s.lease.poll_interval: %s; write 0s (off) or at least 1s (each poll is a Vault read)", p, l.PollInterval)
	}
	if b.VaultStaticRole != "" && l.DrainTimeout <= l.SafetyMargin {
		v.at(p+".lease.drain_timeout", "%s.lease.drain_timeout: %s is not more than safety_margin (%s); with a static role, sessions on an old password get drain_timeout after Vault's rotation, less the safety margin, so it must be longer", p, l.DrainTimeout, l.SafetyMargin)
	}
}

// vaultPath is a path Vault takes as written: no empty, "." or ".."
// segment, no leading or trailing slash.
func vaultPath(s string) bool {
	if s == "" {
		return false
	}
	return !slices.ContainsFunc(strings.Split(s, "/"), func(seg string) bool {
		return seg == "" || seg == "." || seg == ".."
	})
}

// sourceName says in words where a backend's credentials come from.
func sourceName(b Backend) string {
	switch {
	case b.KV != nil:
		return "KV secret " + b.KV.Mount + "/" + b.KV.Path
	case b.VaultStaticRole != "":
		return "static role " + b.VaultMount + "/static-creds/" + b.VaultStaticRole
	}
	return "vault_role " + b.VaultRole
}
