package integration

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// acClient is a DB-API style client: autocommit off for its whole
// session, every unit of work ended by COMMIT.
type acClient struct {
	n       int
	conn    *sql.Conn
	commits int
}

// step reads the client's rows in a transaction, adds one, commits, and
// returns the database user and server connection it ran on.
func (c *acClient) step(ctx context.Context, table string, i int) (user string, connID int64, err error) {
	var ac, rows int
	// The read opens the transaction (autocommit off): with it the
	// client holds a server connection until COMMIT.
	q := fmt.Sprintf("select current_user(), connection_id(), @@autocommit, count(*) from %s where c = %d", table, c.n)
	if err = c.conn.QueryRowContext(ctx, q).Scan(&user, &connID, &ac, &rows); err != nil {
		return "", 0, err
	}
	if ac != 0 || rows != c.commits {
		return "", 0, fmt.Errorf("client %d: autocommit %d, %d rows; want 0 and %d", c.n, ac, rows, c.commits)
	}
	// A statement with arguments: prepared, executed, closed.
	if _, err = c.conn.ExecContext(ctx, "insert into "+table+" (id, c, v) values (?, ?, ?)", int64(c.n)<<32|int64(i), c.n, i); err != nil {
		return "", 0, err
	}
	var inTxn int64
	if err = c.conn.QueryRowContext(ctx, "select count(*) from "+table+" where c = ? and connection_id() = ?", c.n, connID).Scan(&inTxn); err != nil {
		return "", 0, err
	}
	if inTxn != int64(c.commits+1) {
		return "", 0, fmt.Errorf("client %d: its transaction moved off connection %d or lost its row (%d rows)", c.n, connID, inTxn)
	}
	if _, err = c.conn.ExecContext(ctx, "COMMIT"); err != nil {
		return "", 0, err
	}
	c.commits++
	return strings.SplitN(user, "@", 2)[0], connID, nil
}

// Autocommit off (PyMySQL, mysqlclient, SQLAlchemy, many JDBC pools) in a
// transaction pool: connections go back between transactions, so 8 such
// clients share 3 server connections and cross rotations without errors.
func TestMySQLTxnPoolingAutocommitOffAcrossRotations(t *testing.T) {
	const role, table = "my-txnac", "txn_ac"
	_, port := startMyTxnStack(t, role, 3, shortTTL, shortMaxTTL)
	myTable(t, table)
	db := openMy(t, myTxnDSN(port))
	db.SetMaxIdleConns(8)
	ctx := context.Background()
	clients := make([]*acClient, 8)
	for i := range clients {
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := conn.ExecContext(ctx, "SET autocommit=0"); err != nil {
			t.Fatal(err)
		}
		clients[i] = &acClient{n: i + 1, conn: conn}
	}
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	users := map[string]bool{}
	connClients := map[int64]map[int]bool{} // server connection -> clients that used it
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
				sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				user, id, err := c.step(sctx, table, i)
				cancel()
				mu.Lock()
				if err != nil {
					failed.Add(1)
					errs = append(errs, fmt.Sprintf("client %d step %d: %v", c.n, i, err))
				} else {
					ok.Add(1)
					users[user] = true
					if connClients[id] == nil {
						connClients[id] = map[int]bool{}
					}
					connClients[id][c.n] = true
				}
				mu.Unlock()
				if err != nil {
					// Rolled back by the error or by dbproxy: start over.
					_, _ = c.conn.ExecContext(ctx, "ROLLBACK")
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	time.Sleep(27 * time.Second)
	waitForUsers(&mu, users, 4, start.Add(45*time.Second))
	close(stop)
	wg.Wait()
	shared := 0
	for _, cs := range connClients {
		if len(cs) > 1 {
			shared++
		}
	}
	t.Logf("%d transactions in %v, %d failed, %d database users, %d server connections, %d of them used by more than one client",
		ok.Load(), time.Since(start).Round(time.Second), failed.Load(), len(users), len(connClients), shared)
	if failed.Load() != 0 {
		t.Fatalf("%d client errors, first: %v", failed.Load(), errs[:min(3, len(errs))])
	}
	if len(users) < 4 {
		t.Fatalf("saw %d database users; want at least 4 (3 rotations)", len(users))
	}
	if shared == 0 {
		t.Fatal("no server connection served more than one client: the clients were not multiplexed")
	}
	for _, c := range clients {
		if got := adminCount(t, "select count(*) from appdb."+table+" where c = ?", c.n); got != c.commits || got == 0 {
			t.Fatalf("client %d committed %d rows, table has %d", c.n, c.commits, got)
		}
	}
}

// myState is what a client's session sees of its own state.
type myState struct {
	sqlMode, timeZone, isolation string
	userVar                      sql.NullString
	autocommit                   int
	connID                       int64
}

func readMyState(ctx context.Context, t *testing.T, c *sql.Conn) myState {
	t.Helper()
	var s myState
	if err := c.QueryRowContext(ctx, "select @@sql_mode, @@time_zone, @@tx_isolation, @v, @@autocommit, connection_id()").Scan(
		&s.sqlMode, &s.timeZone, &s.isolation, &s.userVar, &s.autocommit, &s.connID); err != nil {
		t.Fatal(err)
	}
	return s
}

// A client's session variables follow it to every connection it lands
// on and never reach another client's session on the same connection.
func TestMySQLTxnPoolingSessionState(t *testing.T) {
	_, port := startMyTxnStack(t, "my-txnstate", 1, time.Hour, 2*time.Hour)
	myTable(t, "txn_state")
	db := openMy(t, myTxnDSN(port))
	ctx := context.Background()
	conn := func() *sql.Conn {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := conn(), conn()
	defaults := readMyState(ctx, t, b)
	for _, q := range []string{
		"SET sql_mode = 'ANSI_QUOTES,NO_ENGINE_SUBSTITUTION'",
		"SET SESSION time_zone = '+03:00', @v = 'a-secret'",
		"SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
		"SET autocommit = 0",
	} {
		if _, err := a.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// A SET the server refuses is not recorded.
	if _, err := a.ExecContext(ctx, "SET time_zone = 'nowhere'"); err == nil {
		t.Fatal("an invalid time zone was accepted")
	}
	want := myState{sqlMode: "ANSI_QUOTES,NO_ENGINE_SUBSTITUTION", timeZone: "+03:00", isolation: "SERIALIZABLE",
		userVar: sql.NullString{String: "a-secret", Valid: true}}
	for i := range 20 {
		sa := readMyState(ctx, t, a)
		if sa.sqlMode != want.sqlMode || sa.timeZone != want.timeZone || sa.isolation != want.isolation || sa.userVar != want.userVar || sa.autocommit != 0 {
			t.Fatalf("round %d: the client that SET sees %+v", i, sa)
		}
		// Autocommit off: its write commits only with COMMIT.
		if _, err := a.ExecContext(ctx, "insert into txn_state (id, c, v) values (?, 1, 1)", i); err != nil {
			t.Fatal(err)
		}
		if _, err := a.ExecContext(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
		sb := readMyState(ctx, t, b)
		if sb.connID != sa.connID {
			t.Fatalf("round %d: the clients ran on connections %d and %d of a pool of one", i, sa.connID, sb.connID)
		}
		sb.connID = defaults.connID
		if sb != defaults {
			t.Fatalf("round %d: another client on the same connection sees %+v; want the defaults %+v", i, sb, defaults)
		}
	}
	if n := adminCount(t, "select count(*) from appdb.txn_state"); n != 20 {
		t.Fatalf("%d rows committed, want 20", n)
	}
}

// SQL-level PREPARE / EXECUTE / DEALLOCATE PREPARE in a MySQL transaction
// pool: each client's statements work on every server connection its
// transactions land on, with USING variables from its own session state;
// two clients may use one name for different statements.
func TestMySQLTxnPoolingSQLPrepare(t *testing.T) {
	_, port := startMyTxnStack(t, "my-sqlprep", 3, time.Hour, 2*time.Hour)
	ctx := context.Background()
	db := openMy(t, myTxnDSN(port))
	conn := func() *sql.Conn {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := conn(), conn()
	for c, q := range map[*sql.Conn][]string{
		a: {"PREPARE calc FROM 'SELECT ? + 1'", "SET @x = 0"},
		b: {"prepare CALC from \"select ? * 2\"", "SET @x = 0"},
	} {
		for _, s := range q {
			if _, err := c.ExecContext(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	others := []*sql.Conn{conn(), conn()}
	seen := map[int64]bool{}
	for i := range 60 {
		var held []*sql.Tx
		for _, o := range others[:i%3] {
			tx, err := o.BeginTx(ctx, nil)
			if err == nil {
				_, err = tx.ExecContext(ctx, "select 1")
			}
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, tx)
		}
		var va, vb, id int64
		for c, v := range map[*sql.Conn]*int64{a: &va, b: &vb} {
			if _, err := c.ExecContext(ctx, fmt.Sprintf("SET @x = %d", i)); err != nil {
				t.Fatal(err)
			}
			if err := c.QueryRowContext(ctx, "EXECUTE calc USING @x").Scan(v); err != nil {
				t.Fatalf("transaction %d: %v", i, err)
			}
		}
		if va != int64(i+1) || vb != int64(i*2) {
			t.Fatalf("transaction %d: a got %d, b got %d: statements mixed up", i, va, vb)
		}
		if err := a.QueryRowContext(ctx, "select connection_id()").Scan(&id); err != nil {
			t.Fatal(err)
		}
		seen[id] = true
		for _, tx := range held {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(seen) < 2 {
		t.Fatal("the client's transactions all ran on one server connection: the test proves nothing")
	}
	if _, err := a.ExecContext(ctx, "DEALLOCATE PREPARE calc"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ExecContext(ctx, "EXECUTE calc USING @x"); err == nil {
		t.Fatal("EXECUTE after DEALLOCATE PREPARE worked")
	}
	var v int64
	if err := b.QueryRowContext(ctx, "EXECUTE calc USING @x").Scan(&v); err != nil {
		t.Fatalf("another client's statement of the same name after DEALLOCATE: %v", err)
	}
	if _, err := a.ExecContext(ctx, "PREPARE broken FROM 'SELEC 1'"); err == nil {
		t.Fatal("invalid PREPARE accepted")
	}
	if _, err := a.ExecContext(ctx, "EXECUTE broken"); err == nil {
		t.Fatal("EXECUTE of a refused PREPARE worked")
	}
	t.Logf("the client's transactions ran on %d server connections", len(seen))
}
