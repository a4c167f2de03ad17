package config

import "reflect"

// restartOnly are the sections a running dbproxy cannot change in place:
// the Vault client and its login, the admin listener, fleet membership
// and the Go runtime are set up once at start.
var restartOnly = []struct {
	path string
	get  func(*Config) any
}{
	{"vault", func(c *Config) any { return c.Vault }},
	{"admin", func(c *Config) any { return c.Admin }},
	{"fleet", func(c *Config) any { return c.Fleet }},
	{"runtime", func(c *Config) any { return c.Runtime }},
	{"shutdown_timeout", func(c *Config) any { return c.ShutdownTimeout }},
}

// CheckReload reports, as Problems located in next's file, each setting
// that differs from running's but takes a restart to apply. nil: next
// can replace running by a reload (backends, listeners, identities and
// grants).
func CheckReload(running, next *Config) error {
	v := &validator{c: next}
	for _, s := range restartOnly {
		if !reflect.DeepEqual(s.get(running), s.get(next)) {
			v.atKey(s.path, "%s: changed, but a reload cannot apply it: restart dbproxy for it (or undo the change to reload the rest)", s.path)
		}
	}
	if running.Fleet != nil {
		// A fleet shares one generation per (backend, role) among
		// instances: two sources of one key in one instance would
		// compete for its record.
		for _, name := range sortedKeys(next.Backends) {
			old, ok := running.Backends[name]
			b := next.Backends[name]
			if ok && (old.VaultMount != b.VaultMount || !reflect.DeepEqual(old.Lease, b.Lease)) {
				v.atKey("backends."+name, "backends.%s: vault_mount or lease changed; in fleet mode that needs a restart of every instance", name)
			}
		}
	}
	if len(v.probs) == 0 {
		return nil
	}
	sortProblems(v.probs)
	return v.probs
}
