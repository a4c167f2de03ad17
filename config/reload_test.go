package config

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckReload(t *testing.T) {
	running := mustParse(t, baseYAML)
	if err := CheckReload(running, mustParse(t, strings.Replace(baseYAML, "max_connections: 5", "max_connections: 9", 1))); err != nil {
		t.Fatalf("a pool size change needs no restart: %v", err)
	}
	next := mustParse(t, strings.Replace(baseYAML, "request_timeout: 5s", "request_timeout: 7s", 1))
	err := CheckReload(running, next)
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 || ps[0].Line != 2 || !strings.Contains(ps[0].Msg, "vault: changed") {
		t.Fatalf("CheckReload = %v, want one problem at the vault key (line 2)", err)
	}
}

const baseYAML = `# reload test
vault:
  address: http://127.0.0.1:8200
  request_timeout: 5s
  auth: { method: token, token_file: /dev/null }
backends:
  orders:
    protocol: postgres
    address: 127.0.0.1:5432
    vault_role: app
    pool: { max_connections: 5 }
listeners:
  - { name: side, protocol: postgres, address: 127.0.0.1:6432, auth: listener, identity: api }
identities:
  api:
    grants: [{ backend: orders }]
admin: { address: 127.0.0.1:0 }
`

func mustParse(t *testing.T, y string) *Config {
	t.Helper()
	c, err := Parse("/tmp/dbproxy.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCheckReloadFleetLease(t *testing.T) {
	fleet := baseYAML + "fleet: { name: orders }\n"
	running := mustParse(t, fleet)
	err := CheckReload(running, mustParse(t, strings.Replace(fleet, "pool: { max_connections: 5 }", "pool: { max_connections: 5 }\n    lease: { max_issue_per_minute: 3 }", 1)))
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 || ps[0].Line != 7 || !strings.Contains(ps[0].Msg, "fleet mode") {
		t.Fatalf("CheckReload = %v, want one problem at backends.orders (line 7)", err)
	}
}
