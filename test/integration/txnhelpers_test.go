package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// txnProxyConfig is a dbproxy configuration with one backend appdb of the
// given protocol in transaction pooling mode, pool being the rest of its
// pool settings (e.g. "max_connections: 4, checkout_timeout: 10s"), and
// a sidecar listener on port for identity app. {{ADMIN}} is left for
// startProxy.
func txnProxyConfig(t *testing.T, dir, protocol, dbAddr, role, pool string, port int) string {
	t.Helper()
	return fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 2s
  auth: { method: token, token_file: %q }
backends:
  appdb:
    protocol: %s
    address: %s
    vault_role: %s
    pool: { mode: transaction, %s }
    lease: { safety_margin: 3s, revoke_grace: 2s, max_issue_per_minute: 20 }
listeners:
  - { name: sidecar, protocol: %s, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "{{ADMIN}}" }
`, Vault.Addr, vaultTokenFile(t, dir), protocol, dbAddr, role, pool, protocol, port)
}

// waitForUsers waits until users (guarded by mu) has at least want
// entries, or until the deadline: rotation tests give a slow Vault time
// before they judge how many credentials clients saw.
func waitForUsers(mu *sync.Mutex, users map[string]bool, want int, deadline time.Time) {
	for ; time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		mu.Lock()
		seen := len(users)
		mu.Unlock()
		if seen >= want {
			return
		}
	}
}

// holdTxn opens a client through the transaction pool on port and starts
// a transaction that holds one server connection until the test ends it.
func holdTxn(t *testing.T, port int) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := connect(t, txnDSN(port)).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	return tx
}
