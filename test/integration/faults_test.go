package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// startPoolStack starts dbproxy with one PostgreSQL backend pooled in
// mode (session or transaction) on a fresh Vault role.
func startPoolStack(t *testing.T, role, mode, pool string) (*proxyProc, int) {
	t.Helper()
	if mode == "transaction" {
		return startTxnStackWith(t, role, time.Hour, 2*time.Hour, pool)
	}
	if err := Vault.ConfigurePostgres(context.Background(), PG, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	cfg := strings.Replace(txnProxyConfig(t, dir, "postgres", PG.Addr(), role, pool, port), "mode: transaction", "mode: session", 1)
	return startProxy(t, dir, cfg, true), port
}

// selectOne is a pgbench script of one trivial statement.
func selectOne(t *testing.T) string {
	script := filepath.Join(t.TempDir(), "one.sql")
	if err := os.WriteFile(script, []byte("select 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return script
}

// A database that stops answering for seconds at a time (SIGSTOP of the
// whole server) delays clients but loses no request: every pgbench client
// finishes, with no error, in both pool modes.
func TestFaultsStalledDatabaseLosesNoRequest(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			_, port := startPoolStack(t, "pg-stall-"+mode[:3], mode, "max_connections: 4, checkout_timeout: 20s")
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "pgbench", "-n", "-c", "4", "-j", "2", "-T", "14", "-f", selectOne(t), txnDSN(port))
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			for i := range 5 {
				if err := PG.Stall(time.Duration(500+300*i) * time.Millisecond); err != nil {
					t.Fatal(err)
				}
				time.Sleep(500 * time.Millisecond)
			}
			err := cmd.Wait()
			if ctx.Err() != nil {
				t.Fatalf("pgbench never finished: a request was lost\n%s", out.String())
			}
			if err != nil || !strings.Contains(out.String(), "number of failed transactions: 0") {
				t.Fatalf("pgbench: %v\n%s", err, out.String())
			}
			t.Logf("after 5 stalls: %s", grepLine(out.String(), "number of transactions actually processed"))
		})
	}
}

// Pooled connections the server ended while idle (pg_terminate_backend)
// are never handed to a client as an error.
func TestFaultsDeadPooledConnections(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			role := "pg-dead-" + mode[:3]
			_, port := startPoolStack(t, role, mode, "max_connections: 6, checkout_timeout: 5s")
			ctx := context.Background()
			// Warm the pool: six clients at once, then gone (session mode)
			// or idle between transactions (transaction mode).
			var kept []*pgx.Conn
			for range 6 {
				kept = append(kept, connect(t, txnDSN(port)))
			}
			var warm sync.WaitGroup
			for _, c := range kept {
				warm.Go(func() { _, _ = c.Exec(ctx, "select pg_sleep(0.3)") })
			}
			warm.Wait()
			if mode == "session" {
				for _, c := range kept {
					_ = c.Close(ctx)
				}
				kept = nil
				time.Sleep(300 * time.Millisecond) // returned and reset
			}
			n := terminateBackends(t, "dbproxy:app%")
			if n < 6 {
				t.Fatalf("%d pooled server connections terminated, want 6", n)
			}
			time.Sleep(200 * time.Millisecond)
			var wg sync.WaitGroup
			errs := make(chan error, 40)
			for i := range 20 {
				wg.Go(func() {
					c, err := connectErr(ctx, txnDSN(port))
					if err != nil {
						errs <- fmt.Errorf("client %d connect: %w", i, err)
						return
					}
					defer c.Close(ctx)
					var v int
					if err := c.QueryRow(ctx, "select $1::int", i).Scan(&v); err != nil || v != i {
						errs <- fmt.Errorf("client %d: %d, %w", i, v, err)
					}
				})
			}
			for i, c := range kept {
				wg.Go(func() {
					if _, err := c.Exec(ctx, "select 1"); err != nil {
						errs <- fmt.Errorf("existing client %d: %w", i, err)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Logf("%d server connections terminated; 20 new clients and %d existing ones unaffected", n, len(kept))
		})
	}
}

// terminateBackends ends every server session whose application_name
// is like pattern, as a DBA would, and returns how many.
func terminateBackends(t *testing.T, pattern string) int {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, PG.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name like $1", pattern).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func connectErr(ctx context.Context, dsn string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, dsn)
}

func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
