package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The lines are shaped like Vault's file audit device output (one JSON
// object per request and per response); only responses count, and only
// the ones without an error count by kind.
func TestCountAudit(t *testing.T) {
	const before = `{"type":"response","request":{"path":"database/creds/n3-solo"}}` + "\n"
	lines := before +
		`{"type":"request","request":{"path":"database/creds/n3-solo"}}` + "\n" +
		`{"type":"response","request":{"path":"database/creds/n3-solo"}}` + "\n" +
		`{"type":"response","request":{"path":"database/creds/n1-solo"}}` + "\n" +
		`{"type":"response","request":{"path":"sys/leases/renew"}}` + "\n" +
		`{"type":"response","request":{"path":"sys/leases/renew"}}` + "\n" +
		`{"type":"response","request":{"path":"sys/leases/revoke"}}` + "\n" +
		`{"type":"response","request":{"path":"secret/data/dbproxy/fleet/x/lock"}}` + "\n" +
		`{"type":"response","error":"check-and-set parameter did not match","request":{"path":"secret/data/dbproxy/fleet/x/lock"}}` + "\n" +
		`{"type":"response","request":{"path":"auth/token/renew-self"}}` + "\n"
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := countAudit(path, int64(len(before)), "n3-solo")
	if err != nil {
		t.Fatal(err)
	}
	want := auditCounts{creds: 1, renewals: 2, revocations: 1, kv: 1, all: 8}
	if got != want {
		t.Fatalf("counts %+v, want %+v", got, want)
	}
}
