package config

import (
	"strings"
	"testing"
)

func TestAdminIdentity(t *testing.T) {
	c, _, err := load(t, edit(t, "    grants:\n", "    admin: true\n    grants:\n"))
	if err != nil || !c.Identities["svc"].Admin {
		t.Fatalf("admin: true: %v, admin=%v", err, c != nil && c.Identities["svc"].Admin)
	}
	for name, tc := range map[string]struct{ text, want string }{
		"not a bool": {edit(t, "    grants:\n", "    admin: yes please\n    grants:\n"), "identities.svc.admin"},
		"backend named as the console": {edit(t, "  orders:\n", "  dbproxy:\n", "      - backend: orders", "      - backend: dbproxy"),
			`backends.dbproxy: the database name "dbproxy" is the SQL admin console's`},
		"no postgres listener": {edit(t, "    protocol: postgres\n    address: 127.0.0.1:6432", "    protocol: mysql\n    address: 127.0.0.1:6432",
			"    grants:\n", "    admin: true\n    grants:\n"), "identities.svc.admin: the admin console is served on postgres listeners"},
	} {
		_, _, err := load(t, tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, tc.want)
		}
	}
}
