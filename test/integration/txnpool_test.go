package integration

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// startTxnStack runs dbproxy with a transaction-pooling backend of at most
// maxConns upstream connections on a role with the given lease times.
func startTxnStack(t *testing.T, role string, maxConns int, ttl, maxTTL time.Duration) (*proxyProc, int) {
	t.Helper()
	return startTxnStackWith(t, role, ttl, maxTTL, fmt.Sprintf("max_connections: %d, checkout_timeout: 10s", maxConns))
}

// startTxnStackWith is startTxnStack with the pool settings spelled out.
func startTxnStackWith(t *testing.T, role string, ttl, maxTTL time.Duration, pool string) (*proxyProc, int) {
	t.Helper()
	if err := Vault.ConfigurePostgres(context.Background(), PG, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: ttl, MaxTTL: maxTTL}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	return startProxy(t, dir, txnProxyConfig(t, dir, "postgres", PG.Addr(), role, pool, port), true), port
}

func txnDSN(port int) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", port)
}

func TestTransactionPooling(t *testing.T) {
	p, port := startTxnStack(t, "pg-txn", 10, time.Hour, 2*time.Hour)
	ctx := context.Background()

	t.Run("prepared statements move between server connections", func(t *testing.T) {
		// Three clients, one upstream each at most per transaction: their
		// statements must exist on whichever connection they land on.
		var conns []*pgx.Conn
		for range 3 {
			conns = append(conns, connect(t, txnDSN(port)))
		}
		for round := range 20 {
			for i, c := range conns {
				var n int
				// pgx's default mode prepares a named statement per query.
				if err := c.QueryRow(ctx, "select $1::int * 10 + $2::int", round, i).Scan(&n); err != nil || n != round*10+i {
					t.Fatalf("round %d client %d: %d, %v", round, i, n, err)
				}
				if _, err := c.Prepare(ctx, fmt.Sprintf("named%d", i), "select $1::text || 'x'"); err != nil {
					t.Fatal(err)
				}
				var s string
				if err := c.QueryRow(ctx, fmt.Sprintf("named%d", i), "a").Scan(&s); err != nil || s != "ax" {
					t.Fatalf("named statement: %q %v", s, err)
				}
			}
		}
		for i, c := range conns {
			if err := c.Deallocate(ctx, fmt.Sprintf("named%d", i)); err != nil {
				t.Fatalf("deallocate: %v", err)
			}
			if _, err := c.Exec(ctx, "deallocate all"); err != nil {
				t.Fatalf("deallocate all: %v", err)
			}
			var n int
			if err := c.QueryRow(ctx, "select 1").Scan(&n); err != nil {
				t.Fatalf("after deallocate: %v", err)
			}
		}
	})

	t.Run("DEALLOCATE by one client leaves other clients' statements working", func(t *testing.T) {
		a, b := connect(t, txnDSN(port)), connect(t, txnDSN(port))
		for _, c := range []*pgx.Conn{a, b} {
			if _, err := c.Prepare(ctx, "shared", "select $1::int * 2"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := a.Exec(ctx, "deallocate shared", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("deallocate: %v", err)
		}
		if _, err := a.Exec(ctx, "deallocate all", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("deallocate all: %v", err)
		}
		for i := range 30 {
			var n int
			if err := b.QueryRow(ctx, "shared", i).Scan(&n); err != nil || n != 2*i {
				t.Fatalf("b's statement after a's DEALLOCATE ALL: %d %v", n, err)
			}
		}
		// a's own statement is gone, as in PostgreSQL.
		if err := a.QueryRow(ctx, "shared", 1).Scan(new(int)); sqlstate(err) != "26000" {
			t.Fatalf("a's deallocated statement: want 26000, got %v", err)
		}
	})

	t.Run("transactions keep their connection and roll back on error", func(t *testing.T) {
		if err := PG.Exec(ctx, "create table if not exists txn_t (id int primary key, v text); grant all on txn_t to public"); err != nil {
			t.Fatal(err)
		}
		c := connect(t, txnDSN(port))
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var pid1, pid2 int
		_ = tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid1)
		if _, err := tx.Exec(ctx, "insert into txn_t values (1, 'a') on conflict (id) do update set v = 'a'"); err != nil {
			t.Fatal(err)
		}
		_ = tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2)
		if pid1 != pid2 || pid1 == 0 {
			t.Fatalf("one transaction ran on backends %d and %d", pid1, pid2)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		tx, _ = c.Begin(ctx)
		_, err = tx.Exec(ctx, "insert into txn_t values (1, 'dup')")
		if sqlstate(err) != "23505" {
			t.Fatalf("want unique violation, got %v", err)
		}
		_ = tx.Rollback(ctx)
		var v string
		if err := c.QueryRow(ctx, "select v from txn_t where id = 1").Scan(&v); err != nil || v != "a" {
			t.Fatalf("after rollback: %q %v", v, err)
		}
	})

	t.Run("LISTEN is refused with a clear error", func(t *testing.T) {
		c := connect(t, txnDSN(port))
		_, err := c.Exec(ctx, "listen somewhere")
		if sqlstate(err) != "0A000" || !strings.Contains(err.Error(), "transaction pooling") {
			t.Fatalf("want 0A000 about transaction pooling, got %v", err)
		}
		_, err = c.Exec(ctx, "select pg_advisory_lock(42)")
		if sqlstate(err) != "0A000" {
			t.Fatalf("advisory lock: want 0A000, got %v", err)
		}
		var n int
		if err := c.QueryRow(ctx, "select pg_advisory_xact_lock(42)::text = '' or true").Scan(new(bool)); err != nil {
			t.Fatalf("transaction-level advisory lock refused: %v", err)
		}
		if err := c.QueryRow(ctx, "select 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("COPY in and out", func(t *testing.T) {
		if err := PG.Exec(ctx, "create table if not exists txn_copy (id int, v text); grant all on txn_copy to public"); err != nil {
			t.Fatal(err)
		}
		c := connect(t, txnDSN(port))
		rows := make([][]any, 5000)
		for i := range rows {
			rows[i] = []any{i, strings.Repeat("x", i%100)}
		}
		n, err := c.CopyFrom(ctx, pgx.Identifier{"txn_copy"}, []string{"id", "v"}, pgx.CopyFromRows(rows))
		if err != nil || n != 5000 {
			t.Fatalf("COPY FROM: %d rows, %v", n, err)
		}
		var buf strings.Builder
		tag, err := c.PgConn().CopyTo(ctx, &buf, "copy txn_copy to stdout")
		if err != nil || tag.RowsAffected() != 5000 || strings.Count(buf.String(), "\n") != 5000 {
			t.Fatalf("COPY TO: %v rows, %d lines, %v", tag.RowsAffected(), strings.Count(buf.String(), "\n"), err)
		}
		// A COPY the server rejects: the client's data after the error
		// is dropped, and the session goes on.
		_, err = c.PgConn().CopyFrom(ctx, strings.NewReader("1\tok\nnot-a-number\tbad\n"), "copy txn_copy from stdin")
		if sqlstate(err) != "22P02" {
			t.Fatalf("bad COPY: want 22P02, got %v", err)
		}
		var count int
		if err := c.QueryRow(ctx, "select count(*) from txn_copy").Scan(&count); err != nil || count != 5000 {
			t.Fatalf("after a failed COPY: %d rows, %v", count, err)
		}
	})

	t.Run("200 clients share 10 server connections", func(t *testing.T) {
		var wg sync.WaitGroup
		var failed atomic.Int64
		var firstErr atomic.Value
		for i := range 200 {
			wg.Go(func() {
				c, err := pgx.Connect(ctx, txnDSN(port))
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				defer c.Close(ctx)
				for j := range 10 {
					var n int
					if err := c.QueryRow(ctx, "select $1::int + $2::int", i, j).Scan(&n); err != nil || n != i+j {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprint(err))
						return
					}
				}
			})
		}
		wg.Wait()
		if failed.Load() != 0 {
			t.Fatalf("%d of 200 clients failed: %v", failed.Load(), firstErr.Load())
		}
		var upstream int
		sc := connect(t, PG.SuperDSN())
		if err := sc.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name like 'dbproxy:%'").Scan(&upstream); err != nil {
			t.Fatal(err)
		}
		if upstream > 10 {
			t.Fatalf("%d upstream connections for a pool of 10", upstream)
		}
	})

	t.Run("a client that vanishes mid-transaction leaves nothing behind", func(t *testing.T) {
		c, err := pgx.Connect(ctx, txnDSN(port))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "begin; insert into txn_t values (99, 'uncommitted')"); err != nil {
			t.Fatal(err)
		}
		_ = c.PgConn().Conn().Close() // no Terminate, transaction open
		deadline := time.Now().Add(5 * time.Second)
		c2 := connect(t, txnDSN(port))
		for {
			var n int
			if err := c2.QueryRow(ctx, "select count(*) from txn_t where id = 99").Scan(&n); err != nil || n != 0 {
				t.Fatalf("uncommitted row visible: %d %v", n, err)
			}
			var idleInTx int
			sc := connect(t, PG.SuperDSN())
			_ = sc.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name like 'dbproxy:%' and state like 'idle in transaction%'").Scan(&idleInTx)
			if idleInTx == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d upstream connections left idle in transaction", idleInTx)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	_ = p
}

func TestTransactionPoolingAcrossRotations(t *testing.T) {
	_, port := startTxnStack(t, "pg-txnrot", 8, shortTTL, shortMaxTTL)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, txnDSN(port)+" pool_max_conns=16")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db, err := sql.Open("pgx", txnDSN(port))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(16)
	defer db.Close()

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	users := map[string]bool{}
	fail := func(err error) {
		failed.Add(1)
		mu.Lock()
		errs = append(errs, err.Error())
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var user string
				var n int
				var err error
				switch w % 4 {
				case 0: // pgx pool, prepared (default statement cache)
					err = pool.QueryRow(ctx, "select current_user, $1::int + 1", i).Scan(&user, &n)
				case 1: // pgx pool, simple protocol (unprepared)
					err = pool.QueryRow(ctx, "select current_user, $1::int + 1", pgx.QueryExecModeSimpleProtocol, i).Scan(&user, &n)
				case 2: // database/sql, prepared statement
					err = db.QueryRowContext(ctx, "select current_user, $1::int + 1", i).Scan(&user, &n)
				default: // database/sql transaction
					var tx *sql.Tx
					if tx, err = db.BeginTx(ctx, nil); err == nil {
						err = tx.QueryRowContext(ctx, "select current_user, $1::int + 1", i).Scan(&user, &n)
						if cerr := tx.Commit(); err == nil {
							err = cerr
						}
					}
				}
				if err == nil && n != i+1 {
					err = fmt.Errorf("wrong result %d for %d", n, i)
				}
				if err != nil {
					fail(err)
					time.Sleep(50 * time.Millisecond)
					continue
				}
				ok.Add(1)
				mu.Lock()
				users[user] = true
				mu.Unlock()
			}
		})
	}
	// pgbench -M prepared through transaction pooling across a rotation.
	script := filepath.Join(t.TempDir(), "x.sql")
	if err := os.WriteFile(script, []byte("\\set a random(1, 1000)\nselect :a::int + 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, berr := exec.Command("pgbench", "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "25", "-f", script, txnDSN(port)).CombinedOutput()
	time.Sleep(3 * time.Second)
	// Three rotations take about 23s; wait longer (up to 45s in all) if
	// Vault was slow and fewer users were seen.
	waitForUsers(&mu, users, 4, start.Add(45*time.Second))
	close(stop)
	wg.Wait()
	t.Logf("%d statements ok, %d failed, %d database users", ok.Load(), failed.Load(), len(users))
	if failed.Load() != 0 {
		t.Fatalf("%d errors, first: %v", failed.Load(), errs[:min(3, len(errs))])
	}
	if len(users) < 4 {
		t.Fatalf("saw %d database users; want at least 3 rotations", len(users))
	}
	if berr != nil || !strings.Contains(string(out), "number of failed transactions: 0") {
		t.Fatalf("pgbench -M prepared: %v\n%s", berr, out)
	}
}

func TestTransactionPoolExhausted(t *testing.T) {
	_, port := startTxnStackWith(t, "pg-txnx", time.Hour, 2*time.Hour, "max_connections: 2, checkout_timeout: 1s")
	ctx := context.Background()
	held := []pgx.Tx{holdTxn(t, port), holdTxn(t, port)}
	// Both server connections are inside transactions. A new client
	// still connects (no server connection needed to greet it) ...
	c := connect(t, txnDSN(port))
	// ... and its query waits checkout_timeout, then gets 53300.
	start := time.Now()
	_, err := c.Exec(ctx, "select 1")
	if sqlstate(err) != "53300" || !strings.Contains(err.Error(), "max_connections") {
		t.Fatalf("want 53300 naming max_connections, got %v", err)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond || waited > 5*time.Second {
		t.Fatalf("answered after %v; want about the 1s checkout_timeout", waited)
	}
	_ = held[0].Commit(ctx)
	c2 := connect(t, txnDSN(port))
	var n int
	if err := c2.QueryRow(ctx, "select 2").Scan(&n); err != nil || n != 2 {
		t.Fatalf("after a transaction ended: %d %v", n, err)
	}
}

func TestTransactionOutlivesCredential(t *testing.T) {
	_, port := startTxnStack(t, "pg-txnlong", 4, shortTTL, shortMaxTTL)
	ctx := context.Background()
	c := connect(t, txnDSN(port))
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var user string
	if err := tx.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		t.Fatal(err)
	}
	// Other clients' transactions move to the next credential; this one
	// holds its server connection until the drain deadline.
	deadline := time.Now().Add(shortMaxTTL + 15*time.Second)
	for {
		_, err = tx.Exec(ctx, "select 1")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("transaction on %s still open after its credential's max TTL", user)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if sqlstate(err) != "57P01" || !strings.Contains(err.Error(), "outlived the database credential") {
		t.Fatalf("want 57P01 about the credential, got %v", err)
	}
	c2 := connect(t, txnDSN(port))
	var user2 string
	if err := c2.QueryRow(ctx, "select current_user").Scan(&user2); err != nil || user2 == user {
		t.Fatalf("after reconnecting: user %q (was %q), %v", user2, user, err)
	}
	// Vault's user of the closed transaction is gone once it is revoked.
	sc := connect(t, PG.SuperDSN())
	waitNone(t, sc, 10*time.Second, "select count(*) from pg_roles where rolname = $1", user)
}

// waitNone polls a count(*) query until it says 0, or fails the test
// after timeout.
func waitNone(t *testing.T, c *pgx.Conn, timeout time.Duration, query string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		var n int
		if err := c.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %q %v still counts %d", timeout, query, args, n)
		}
	}
}

func TestPauseResumeDrain(t *testing.T) {
	p, port := startTxnStack(t, "pg-txnpause", 4, time.Hour, 2*time.Hour)
	ctx := context.Background()
	c := connect(t, txnDSN(port))
	var pid1 int
	if err := c.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid1); err != nil {
		t.Fatal(err)
	}
	post := func(verb string) {
		t.Helper()
		resp, err := http.Post(p.admin+"/v1/backends/appdb/"+verb, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %s", verb, resp.Status)
		}
	}

	post("pause")
	done := make(chan error, 1)
	go func() {
		var n int
		done <- c.QueryRow(ctx, "select 7").Scan(&n)
	}()
	select {
	case err := <-done:
		t.Fatalf("a transaction ran while the backend was paused: %v", err)
	case <-time.After(700 * time.Millisecond):
	}
	// The operator commands do the same through the admin API.
	cli := func(args ...string) string {
		t.Helper()
		argv := append([]string{args[0], "--admin", strings.TrimPrefix(p.admin, "http://")}, args[1:]...)
		out, err := exec.Command(dbproxyBinary(t), argv...).CombinedOutput()
		if err != nil {
			t.Fatalf("dbproxy %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := cli("status"); !strings.Contains(out, "appdb") || !strings.Contains(out, "true") {
		t.Fatalf("status while paused:\n%s", out)
	}
	if out := cli("resume", "appdb"); out != "appdb: resumed\n" {
		t.Fatalf("resume: %q", out)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after resume: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the held transaction did not run after resume")
	}

	cli("drain", "appdb")
	var pid2 int
	if err := c.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatal(err)
	}
	if pid2 == pid1 {
		t.Fatalf("after drain the client still runs on server process %d", pid1)
	}
	// The drained server process goes away.
	waitNone(t, connect(t, PG.SuperDSN()), 5*time.Second, "select count(*) from pg_stat_activity where pid = $1", pid1)
}

func TestIdleInTransactionTimeout(t *testing.T) {
	_, port := startTxnStackWith(t, "pg-txnidle", time.Hour, 2*time.Hour, "max_connections: 1, checkout_timeout: 5s, idle_transaction_timeout: 2s")
	ctx := context.Background()
	tx := holdTxn(t, port)
	// The only server connection is held; another client waits for it
	// and gets it once the idle transaction is ended.
	other := connect(t, txnDSN(port))
	start := time.Now()
	var n int
	if err := other.QueryRow(ctx, "select 2").Scan(&n); err != nil || n != 2 {
		t.Fatalf("the waiting client: %d %v", n, err)
	}
	if waited := time.Since(start); waited < 1500*time.Millisecond || waited > 4500*time.Millisecond {
		t.Fatalf("the waiting client ran after %v; want about the 2s limit", waited)
	}
	_, err := tx.Exec(ctx, "select 1")
	if sqlstate(err) != "25P03" || !strings.Contains(err.Error(), "idle_transaction_timeout") {
		t.Fatalf("the idle transaction's client: want 25P03 naming the setting, got %v", err)
	}
	// A long query is not idleness.
	if err := other.QueryRow(ctx, "select 3 from pg_sleep(3)").Scan(&n); err != nil || n != 3 {
		t.Fatalf("a 3s query outside a transaction: %d %v", n, err)
	}
	tx2, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx2.QueryRow(ctx, "select 4 from pg_sleep(3)").Scan(&n); err != nil || n != 4 {
		t.Fatalf("a 3s query inside a transaction: %d %v", n, err)
	}
	if err := tx2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}
