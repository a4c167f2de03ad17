package integration

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// startMyTxnStack runs dbproxy with a transaction-pooling MariaDB backend
// of at most maxConns upstream connections on a role with the given lease
// times.
func startMyTxnStack(t *testing.T, role string, maxConns int, ttl, maxTTL time.Duration) (*proxyProc, int) {
	t.Helper()
	if err := Vault.ConfigureMySQL(context.Background(), Maria, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: ttl, MaxTTL: maxTTL}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	cfg := txnProxyConfig(t, dir, "mysql", Maria.Addr(), role, fmt.Sprintf("max_connections: %d, checkout_timeout: 10s", maxConns), port)
	p := startProxy(t, dir, cfg, true)
	if strings.Contains(p.log(), "runs in session mode") {
		t.Fatal("dbproxy still warns that mysql backends run in session mode")
	}
	return p, port
}

func myTxnDSN(port int) string {
	return fmt.Sprintf("app@tcp(127.0.0.1:%d)/appdb?timeout=10s", port)
}

// myTable makes a fresh table for one test.
func myTable(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	if err := Maria.Exec(ctx, "DROP TABLE IF EXISTS appdb."+name); err != nil {
		t.Fatal(err)
	}
	if err := Maria.Exec(ctx, "CREATE TABLE appdb."+name+" (id BIGINT PRIMARY KEY, c INT NOT NULL, v INT NOT NULL, KEY (c)) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
}

// adminCount runs a count query as MariaDB's admin.
func adminCount(t *testing.T, q string, args ...any) int {
	t.Helper()
	db, err := sql.Open("mysql", Maria.AdminDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// myClient is one long-lived client session: a pinned database/sql
// connection, which fails rather than silently reconnects.
type myClient struct {
	n       int
	conn    *sql.Conn
	stmt    *sql.Stmt
	table   string
	commits int
}

// step runs one unit of work of kind i%4 and checks its result; it
// returns the database user it ran as.
func (c *myClient) step(ctx context.Context, i int) (string, error) {
	var user string
	var n int
	var err error
	switch i % 4 {
	case 0: // a statement prepared once, executed on whatever connection
		err = c.stmt.QueryRowContext(ctx, i).Scan(&user, &n)
	case 1: // query with arguments: prepare, execute, close each time
		err = c.conn.QueryRowContext(ctx, "select current_user(), ? + 1", i).Scan(&user, &n)
	case 2: // plain text query
		err = c.conn.QueryRowContext(ctx, fmt.Sprintf("select current_user(), %d + 1", i)).Scan(&user, &n)
	default: // a transaction that writes, reads its own write, commits
		var tx *sql.Tx
		if tx, err = c.conn.BeginTx(ctx, nil); err != nil {
			return "", err
		}
		defer func() { _ = tx.Rollback() }()
		if _, err = tx.ExecContext(ctx, "insert into "+c.table+" (id, c, v) values (?, ?, ?)", int64(c.n)<<32|int64(i), c.n, i); err != nil {
			return "", err
		}
		var rows int
		if err = tx.QueryRowContext(ctx, "select current_user(), count(*) from "+c.table+" where c = ?", c.n).Scan(&user, &rows); err != nil {
			return "", err
		}
		if rows != c.commits+1 {
			return "", fmt.Errorf("client %d sees %d rows in its transaction, want %d", c.n, rows, c.commits+1)
		}
		if err = tx.Commit(); err != nil {
			return "", err
		}
		c.commits++
		n = i + 1
	}
	if err != nil {
		return "", err
	}
	if n != i+1 {
		return "", fmt.Errorf("wrong result %d for %d", n, i)
	}
	return strings.SplitN(user, "@", 2)[0], nil
}

func newMyClient(t *testing.T, db *sql.DB, n int, table string) *myClient {
	t.Helper()
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stmt, err := conn.PrepareContext(ctx, "select current_user(), ? + 1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stmt.Close() })
	return &myClient{n: n, conn: conn, stmt: stmt, table: table}
}

func TestMySQLTxnPoolingAcrossRotations(t *testing.T) {
	const role = "my-txnrot"
	p, port := startMyTxnStack(t, role, 8, shortTTL, shortMaxTTL)
	myTable(t, "txn_rot")
	db := openMy(t, myTxnDSN(port))
	db.SetMaxIdleConns(8)
	clients := make([]*myClient, 8)
	for i := range clients {
		clients[i] = newMyClient(t, db, i+1, "txn_rot")
	}
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	users := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range clients {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				user, err := c.step(ctx, i)
				cancel()
				mu.Lock()
				if err != nil {
					failed.Add(1)
					errs = append(errs, fmt.Sprintf("client %d step %d: %v", c.n, i, err))
				} else {
					ok.Add(1)
					users[user] = true
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	// Three rotations at half of a 15s max TTL take about 23s; run 27s,
	// and longer (up to 45s) if Vault was slow and fewer users were seen.
	time.Sleep(27 * time.Second)
	waitForUsers(&mu, users, 4, start.Add(45*time.Second))
	close(stop)
	wg.Wait()
	t.Logf("%d steps in %v, %d failed, %d distinct database users", ok.Load(), time.Since(start).Round(time.Second), failed.Load(), len(users))
	if failed.Load() != 0 {
		t.Fatalf("%d client errors, first: %v", failed.Load(), errs[:min(3, len(errs))])
	}
	if len(users) < 4 {
		t.Fatalf("saw %d database users; want at least 4 (3 rotations)", len(users))
	}
	// Every committed row is there, and nothing else.
	total := 0
	for _, c := range clients {
		if got := adminCount(t, "select count(*) from appdb.txn_rot where c = ?", c.n); got != c.commits {
			t.Fatalf("client %d committed %d rows, table has %d", c.n, c.commits, got)
		}
		total += c.commits
	}
	t.Logf("%d transactions committed", total)
	// Superseded generations are revoked once drained: only the live
	// generation's user (two during a rotation) remains in mysql.user ...
	waitOnlyLiveMySQLUsers(t, p, role)
	// ... and none once dbproxy stops gracefully.
	for _, c := range clients {
		_ = c.stmt.Close()
		_ = c.conn.Close()
	}
	_ = db.Close()
	if err := p.stop(t); err != nil {
		t.Fatalf("dbproxy exit: %v", err)
	}
	if left := mysqlVaultUsers(t, role); len(left) != 0 {
		t.Fatalf("Vault users left after a graceful stop: %v", left)
	}
}

func TestMySQLTxnPooling(t *testing.T) {
	const role = "my-txn"
	_, port := startMyTxnStack(t, role, 5, time.Hour, 2*time.Hour)
	myTable(t, "txn_pool")
	ctx := context.Background()

	t.Run("client gone mid-transaction", func(t *testing.T) {
		var mu sync.Mutex
		var sock net.Conn
		mysql.RegisterDialContext("mytxn-gone", func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			mu.Lock()
			sock = c
			mu.Unlock()
			return c, err
		})
		db := openMy(t, fmt.Sprintf("app@mytxn-gone(127.0.0.1:%d)/appdb?timeout=10s", port))
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("insert into txn_pool (id, c, v) values (?, ?, ?)", 1, 100, 1); err != nil {
			t.Fatal(err)
		}
		if adminCount(t, "select count(*) from information_schema.innodb_trx") == 0 {
			t.Fatal("no open transaction seen in the server")
		}
		mu.Lock()
		_ = sock.Close() // the client vanishes without COMMIT or COM_QUIT
		mu.Unlock()
		_ = tx.Rollback()
		deadline := time.Now().Add(10 * time.Second)
		for adminCount(t, "select count(*) from information_schema.innodb_trx") != 0 {
			if time.Now().After(deadline) {
				t.Fatal("a server connection is still inside the vanished client's transaction")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if n := adminCount(t, "select count(*) from appdb.txn_pool where c = 100"); n != 0 {
			t.Fatalf("the vanished client's uncommitted row is visible (%d rows)", n)
		}
		// The pool still serves: every upstream left is usable.
		db2 := openMy(t, myTxnDSN(port))
		db2.SetMaxOpenConns(10)
		for i := range 20 {
			var n int
			if err := db2.QueryRow("select ? + 1", i).Scan(&n); err != nil || n != i+1 {
				t.Fatalf("after the vanished client: %d %v", n, err)
			}
		}
	})

	t.Run("session locks refused", func(t *testing.T) {
		db := openMy(t, myTxnDSN(port))
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for _, q := range []string{"select get_lock('dbproxy-test', 1)", "SELECT GET_LOCK(?, 1)", "lock tables txn_pool write", "  LOCK TABLE txn_pool READ"} {
			var args []any
			if strings.Contains(q, "?") {
				args = append(args, "dbproxy-test")
			}
			var v sql.NullInt64
			err := conn.QueryRowContext(ctx, q, args...).Scan(&v)
			if myCode(err) != 1235 || !strings.Contains(err.Error(), "transaction pooling") || !strings.Contains(err.Error(), "pool mode session") {
				t.Fatalf("%s: want ERR 1235 naming transaction pooling and session mode, got %v", q, err)
			}
			// The same session goes on.
			var n int
			if err := conn.QueryRowContext(ctx, "select 41 + 1").Scan(&n); err != nil || n != 42 {
				t.Fatalf("after %s: %d %v", q, n, err)
			}
		}
		// RELEASE_LOCK and IS_FREE_LOCK hold nothing: they pass.
		var v sql.NullInt64
		if err := conn.QueryRowContext(ctx, "select is_free_lock('dbproxy-test')").Scan(&v); err != nil || v.Int64 != 1 {
			t.Fatalf("is_free_lock: %v %v", v, err)
		}
	})

	t.Run("session state does not leak to other clients", func(t *testing.T) {
		db := openMy(t, myTxnDSN(port))
		db.SetMaxOpenConns(1)
		if _, err := db.Exec("set @dbproxy_leak = 7"); err != nil {
			t.Fatal(err)
		}
		other := openMy(t, myTxnDSN(port))
		other.SetMaxOpenConns(5)
		for range 10 {
			var v sql.NullInt64
			if err := other.QueryRow("select @dbproxy_leak").Scan(&v); err != nil || v.Valid {
				t.Fatalf("another client sees the user variable: %v %v", v, err)
			}
		}
	})

	t.Run("100 clients on 5 server connections", func(t *testing.T) {
		db := openMy(t, myTxnDSN(port))
		db.SetMaxOpenConns(100)
		db.SetMaxIdleConns(100)
		clients := make([]*myClient, 100)
		for i := range clients {
			clients[i] = newMyClient(t, db, 1000+i, "txn_pool")
		}
		var failed atomic.Int64
		var first atomic.Value
		var peak atomic.Int64
		var wg sync.WaitGroup
		stop := make(chan struct{})
		admin := openMy(t, Maria.AdminDSN())
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
				var n int64
				if err := admin.QueryRow("select count(*) from information_schema.processlist where user like ?", "v-%-"+role+"-%").Scan(&n); err != nil {
					continue
				}
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
			}
		}()
		for _, c := range clients {
			wg.Go(func() {
				for i := range 24 {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					_, err := c.step(ctx, i)
					cancel()
					if err != nil {
						failed.Add(1)
						first.CompareAndSwap(nil, fmt.Sprintf("client %d step %d: %v", c.n, i, err))
					}
				}
			})
		}
		wg.Wait()
		close(stop)
		if failed.Load() != 0 {
			t.Fatalf("%d errors, first: %v", failed.Load(), first.Load())
		}
		for _, c := range clients {
			if got := adminCount(t, "select count(*) from appdb.txn_pool where c = ?", c.n); got != c.commits || c.commits != 6 {
				t.Fatalf("client %d committed %d rows, table has %d", c.n, c.commits, got)
			}
		}
		t.Logf("peak server connections of %s: %d", role, peak.Load())
		if peak.Load() > 5 {
			t.Fatalf("%d server connections for a pool of 5", peak.Load())
		}
	})
}

func TestMySQLTxnOutlivesCredential(t *testing.T) {
	const role = "my-txnlong"
	_, port := startMyTxnStack(t, role, 4, shortTTL, shortMaxTTL)
	// A raw client reads the ERR dbproxy sends unasked (go-sql-driver
	// would report it as driver.ErrBadConn on its next command).
	m := rawMyLogin(t, port, "app", "appdb")
	defer m.c.Close()
	m.queryValue(t, "begin")
	user := strings.SplitN(m.queryValue(t, "select current_user()"), "@", 2)[0]
	// Other clients' transactions move to the next credential; this one
	// holds its server connection until the drain deadline.
	other := openMy(t, myTxnDSN(port))
	stop := make(chan struct{})
	moved := make(chan string, 1)
	otherErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			var u string
			if err := other.QueryRow("select current_user()").Scan(&u); err != nil {
				otherErr <- err
				return
			}
			if u = strings.SplitN(u, "@", 2)[0]; u != user {
				select {
				case moved <- u:
				default:
				}
			}
		}
	}()
	_ = m.c.SetReadDeadline(time.Now().Add(shortMaxTTL + 15*time.Second))
	code, msg := m.errPacket(t)
	close(stop)
	if code != 1927 || !strings.Contains(msg, "outlived the database credential") || !strings.Contains(msg, "reconnecting is safe") {
		t.Fatalf("want ERR 1927 about the credential, got %d %q", code, msg)
	}
	select {
	case err := <-otherErr:
		t.Fatalf("another client during the long transaction: %v", err)
	case u := <-moved:
		t.Logf("the long transaction ran as %s, other clients moved to %s", user, u)
	default:
		t.Fatal("other clients never moved to a newer credential")
	}
	// Vault's user of the closed transaction goes once it is revoked.
	gone := time.Now().Add(10 * time.Second)
	for adminCount(t, "select count(*) from mysql.user where user = ?", user) != 0 {
		if time.Now().After(gone) {
			t.Fatalf("database user %s still exists after its generation drained", user)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
