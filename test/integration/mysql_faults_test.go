package integration

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// Pooled MariaDB connections the server ended while idle (a DBA's KILL,
// wait_timeout) never reach clients as errors: new clients and existing
// ones, with session state to carry, all succeed.
func TestFaultsMySQLDeadPooledConnections(t *testing.T) {
	// Vault's MySQL plugin keeps 10 characters of the role in user names.
	for _, c := range []struct{ name, mode, role string }{
		{"transaction-KILL", "transaction", "mydead-tk"}, {"session-KILL", "session", "mydead-sk"},
		{"transaction-wait_timeout", "transaction", "mydead-tw"},
	} {
		t.Run(c.name, func(t *testing.T) {
			role := c.role
			timeout := strings.HasSuffix(c.name, "wait_timeout")
			if timeout {
				// Only the connections dbproxy opens from now on get it.
				setMariaGlobal(t, "wait_timeout", "2")
			}
			port := startMyPoolStack(t, role, c.mode, "max_connections: 6, checkout_timeout: 5s")
			kept := warmMyPool(t, port, c.mode == "transaction")
			if timeout {
				setMariaGlobal(t, "wait_timeout", "28800")
				time.Sleep(3 * time.Second)
				if n := mariaSessions(t, role); n > 0 {
					t.Fatalf("%d server sessions of %s still open after wait_timeout", n, role)
				}
			} else {
				time.Sleep(300 * time.Millisecond) // idle long enough for the sweep
				if n := killIdleMaria(role); n < 6 {
					t.Fatalf("%d pooled server connections killed, want 6", n)
				}
			}
			time.Sleep(200 * time.Millisecond)
			errs := myClientsAfterFault(port, kept)
			for _, err := range errs {
				t.Error(err)
			}
			if len(errs) == 0 {
				t.Logf("idle pooled connections ended; 20 new clients and %d existing ones unaffected", len(kept))
			}
		})
	}
}

func startMyPoolStack(t *testing.T, role, mode, pool string) int {
	t.Helper()
	if err := Vault.ConfigureMySQL(context.Background(), Maria, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	cfg := strings.Replace(txnProxyConfig(t, dir, "mysql", Maria.Addr(), role, pool, port), "mode: transaction", "mode: "+mode, 1)
	startProxy(t, dir, cfg, true)
	return port
}

// warmMyPool opens six sessions that each hold a server connection at
// once, so six pooled connections exist. In transaction mode the sessions
// stay (with a user variable and a session variable set) and are
// returned; in session mode they end, leaving their connections idle.
func warmMyPool(t *testing.T, port int, keep bool) []*sql.Conn {
	t.Helper()
	ctx := context.Background()
	db := openMy(t, myTxnDSN(port))
	var kept []*sql.Conn
	for i := range 6 {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecContext(ctx, fmt.Sprintf("SET @mine = %d, SESSION sql_mode = 'ANSI_QUOTES'", i)); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, c)
	}
	var wg sync.WaitGroup
	for _, c := range kept {
		wg.Go(func() { _, _ = c.ExecContext(ctx, "SELECT SLEEP(0.3)") })
	}
	wg.Wait()
	if !keep {
		for _, c := range kept {
			_ = c.Close()
		}
		_ = db.Close()
		time.Sleep(300 * time.Millisecond) // returned and reset
		return nil
	}
	return kept
}

// myClientsAfterFault runs 20 new clients and one statement on each kept
// session, checking results and the kept sessions' state.
func myClientsAfterFault(port int, kept []*sql.Conn) []error {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Go(func() {
			db, err := sql.Open("mysql", myTxnDSN(port))
			if err != nil {
				errs <- err
				return
			}
			defer db.Close()
			var v int
			if err := db.QueryRowContext(ctx, "SELECT ?", i).Scan(&v); err != nil || v != i {
				errs <- fmt.Errorf("client %d: %d, %w", i, v, err)
			}
		})
	}
	for i, c := range kept {
		wg.Go(func() {
			var mine int
			var mode string
			if err := c.QueryRowContext(ctx, "SELECT @mine, @@SESSION.sql_mode").Scan(&mine, &mode); err != nil {
				errs <- fmt.Errorf("existing client %d: %w", i, err)
			} else if mine != i || mode != "ANSI_QUOTES" {
				errs <- fmt.Errorf("existing client %d: state @mine=%d sql_mode=%q, want %d and ANSI_QUOTES", i, mine, mode, i)
			}
		})
	}
	wg.Wait()
	close(errs)
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

// setMariaGlobal sets a global server variable as MariaDB's admin.
func setMariaGlobal(t *testing.T, name, value string) {
	t.Helper()
	if err := Maria.Exec(context.Background(), "SET GLOBAL "+name+" = "+value); err != nil {
		t.Fatal(err)
	}
}

// mariaSessions counts the server sessions of a Vault role's users.
func mariaSessions(t *testing.T, role string) int {
	return adminCount(t, "select count(*) from information_schema.processlist where user like ?", "v-%-"+role+"-%")
}

// A MariaDB that stops answering for seconds at a time (SIGSTOP) under
// sysbench delays clients but loses no request: every sysbench thread
// finishes with no error, in both pool modes.
func TestFaultsMySQLStalledDatabaseLosesNoRequest(t *testing.T) {
	sysbenchTables(t)
	for _, c := range []struct{ mode, role string }{{"transaction", "mystall-t"}, {"session", "mystall-s"}} {
		t.Run(c.mode, func(t *testing.T) {
			port := startMyPoolStack(t, c.role, c.mode, "max_connections: 4, checkout_timeout: 20s")
			out, n := stallUnderLoad(t, Maria.Stall, func(ctx context.Context, secs int) *exec.Cmd {
				return exec.CommandContext(ctx, "sysbench", "oltp_point_select", "--db-driver=mysql", "--mysql-ssl=off",
					"--mysql-host=127.0.0.1", fmt.Sprintf("--mysql-port=%d", port), "--mysql-user=app", "--mysql-password=",
					"--mysql-db=appdb", "--tables=1", "--table-size=1000", "--threads=4", fmt.Sprintf("--time=%d", secs), "--report-interval=0", "run")
			})
			if !regexp.MustCompile(`ignored errors:\s+0\s`).MatchString(out) {
				t.Fatalf("sysbench:\n%s", out)
			}
			t.Logf("after %d stalls: %s", n, strings.TrimSpace(grepLine(out, "transactions:")))
		})
	}
}

// sysbenchTables makes sysbench's table sbtest1 (1000 rows) in appdb, as
// MariaDB's admin; the Vault roles' users may read it.
func sysbenchTables(t *testing.T) {
	t.Helper()
	host, port, _ := net.SplitHostPort(Maria.Addr())
	out, err := exec.Command("sysbench", "oltp_point_select", "--db-driver=mysql", "--mysql-ssl=off",
		"--mysql-host="+host, "--mysql-port="+port, "--mysql-user="+Maria.AdminUser, "--mysql-password="+Maria.AdminPassword,
		"--mysql-db=appdb", "--tables=1", "--table-size=1000", "cleanup").CombinedOutput()
	if err != nil {
		t.Fatalf("sysbench cleanup: %v\n%s", err, out)
	}
	out, err = exec.Command("sysbench", "oltp_point_select", "--db-driver=mysql", "--mysql-ssl=off",
		"--mysql-host="+host, "--mysql-port="+port, "--mysql-user="+Maria.AdminUser, "--mysql-password="+Maria.AdminPassword,
		"--mysql-db=appdb", "--tables=1", "--table-size=1000", "prepare").CombinedOutput()
	if err != nil {
		t.Fatalf("sysbench prepare: %v\n%s", err, out)
	}
}
