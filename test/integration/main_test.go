// Package integration runs dbproxy against real PostgreSQL, MariaDB and
// Vault servers that TestMain starts once for the package (see harness).
// It is slow; run it with `make test-integration`.
package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// The servers every test in this package shares. Tests must not stop them
// (except Vault with Pause/Resume, restoring it before they return).
var (
	PG       *harness.Postgres
	Maria    *harness.MariaDB
	Vault    *harness.Vault
	VaultBin string // directory with vault and the database plugins
	WorkDir  string // temp dir of this run; server dirs are pg/, mariadb/, vault/
)

// Vault roles configured by TestMain on the "database" mount.
const (
	Mount      = "database"
	PGRole     = "pg-app"    // connection "pg" -> PG appdb
	MySQLRole  = "mysql-app" // connection "mysql" -> Maria appdb
	RoleTTL    = 10 * time.Second
	RoleMaxTTL = 30 * time.Second
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	defer harness.StopAll()
	dir, err := os.MkdirTemp("", "dbproxy-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration setup:", err)
		return 1
	}
	WorkDir = dir
	defer func() {
		// Keep the logs when something failed or when asked to.
		if code != 0 || os.Getenv("DBPROXY_KEEP") != "" {
			fmt.Fprintf(os.Stderr, "integration: server dirs and logs kept in %s\n", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}()

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := setup(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, "integration setup failed:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "integration: servers up in %v: postgres %s, mariadb %s, vault %s\n",
		time.Since(start).Round(time.Millisecond), PG.Addr(), Maria.Addr(), Vault.Addr)
	defer stopAll()
	return m.Run()
}

// setup starts the three servers concurrently and configures Vault.
func setup(ctx context.Context, dir string) error {
	var (
		wg                      sync.WaitGroup
		pgErr, mariaErr, vltErr error
	)
	wg.Go(func() { PG, pgErr = harness.StartPostgres(ctx, filepath.Join(dir, "pg")) })
	wg.Go(func() { Maria, mariaErr = harness.StartMariaDB(ctx, filepath.Join(dir, "mariadb")) })
	wg.Go(func() {
		if VaultBin, vltErr = harness.BuildVault(ctx); vltErr == nil {
			Vault, vltErr = harness.StartVault(ctx, filepath.Join(dir, "vault"), VaultBin)
		}
	})
	wg.Wait()
	for _, err := range []error{pgErr, mariaErr, vltErr} {
		if err != nil {
			stopAll()
			return err
		}
	}
	err := Vault.ConfigurePostgres(ctx, PG, harness.RoleOptions{
		Mount: Mount, Role: PGRole, DefaultTTL: RoleTTL, MaxTTL: RoleMaxTTL,
	})
	if err == nil {
		err = Vault.ConfigureMySQL(ctx, Maria, harness.RoleOptions{
			Mount: Mount, Role: MySQLRole, DefaultTTL: RoleTTL, MaxTTL: RoleMaxTTL,
		})
	}
	if err != nil {
		stopAll()
		return fmt.Errorf("%w\n%s", err, Vault.LogTail())
	}
	return nil
}

func stopAll() {
	if Vault != nil {
		if err := Vault.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop vault:", err)
		}
	}
	if Maria != nil {
		if err := Maria.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop mariadb:", err)
		}
	}
	if PG != nil {
		if err := PG.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop postgres:", err)
		}
	}
}
