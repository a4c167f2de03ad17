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

	"github.com/jackc/pgx/v5"
)

// A database restart (pg_ctl restart -m fast; MariaDB stopped and
// started) under transaction-pool clients costs them at most the
// transaction that was running, never their session: each client goes on
// on the same connection to dbproxy once the database is back.
func TestFaultsDatabaseRestart(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		_, port := startTxnStackWith(t, "pg-restart", time.Hour, 2*time.Hour, "max_connections: 6, checkout_timeout: 20s")
		ctx := context.Background()
		var conns []*pgx.Conn
		for range 4 {
			conns = append(conns, connect(t, txnDSN(port)))
		}
		step := func(c *pgx.Conn, i int) error {
			var n int
			if i%2 == 0 {
				return c.QueryRow(ctx, "select $1::int + 1", i).Scan(&n)
			}
			return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
				if err := tx.QueryRow(ctx, "select $1::int + 1", i).Scan(&n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "select pg_sleep(0.01)")
				return err
			})
		}
		restartUnderLoad(t, len(conns), func(w, i int) error { return step(conns[w], i) },
			func() error { return PG.Restart(ctx, 2*time.Second) })
	})
	t.Run("mariadb", func(t *testing.T) {
		_, port := startMyTxnStack(t, "my-restart", 6, time.Hour, 2*time.Hour)
		ctx := context.Background()
		db := openMy(t, myTxnDSN(port))
		var conns []*sql.Conn
		for range 4 {
			c, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		step := func(c *sql.Conn, i int) error {
			var n int
			if i%2 == 0 {
				return c.QueryRowContext(ctx, "select ? + 1", i).Scan(&n)
			}
			tx, err := c.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback() }()
			if err := tx.QueryRowContext(ctx, "select ? + 1", i).Scan(&n); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "do sleep(0.01)"); err != nil {
				return err
			}
			return tx.Commit()
		}
		restartUnderLoad(t, len(conns), func(w, i int) error { return step(conns[w], i) },
			func() error { return Maria.Restart(ctx, 2*time.Second) })
	})
}

// restartUnderLoad runs step in a loop for each of n clients, restarts
// the database, and requires every client to succeed again afterwards on
// its own session; errors during the restart are counted and logged.
func restartUnderLoad(t *testing.T, n int, step func(w, i int) error, restart func() error) {
	t.Helper()
	var stop atomic.Bool
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for w := range n {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				if err := step(w, i); err != nil {
					failed.Add(1)
					mu.Lock()
					errs = append(errs, fmt.Sprintf("client %d: %v", w, err))
					mu.Unlock()
					time.Sleep(50 * time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(time.Second)
	if err := restart(); err != nil {
		stop.Store(true)
		wg.Wait()
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	stop.Store(true)
	wg.Wait()
	for w := range n {
		if err := step(w, 1); err != nil {
			t.Errorf("client %d after the restart, on its own session: %v", w, err)
		}
	}
	t.Logf("%d transactions ok, %d failed across the restart: %v", ok.Load(), failed.Load(), errs[:min(len(errs), 5)])
}

// A DBA terminates the server session of a transaction-pool client in the
// middle of its transaction: the client gets an ERROR and a failed
// transaction, as PostgreSQL would give it (25P02 until it ends; COMMIT
// rolls back), and its session goes on.
func TestFaultsServerConnectionKilledMidTransaction(t *testing.T) {
	_, port := startTxnStackWith(t, "pg-midtxn", time.Hour, 2*time.Hour, "max_connections: 4, checkout_timeout: 10s")
	ctx := context.Background()
	c := connect(t, txnDSN(port))
	simple := pgx.QueryExecModeSimpleProtocol
	var pid int
	if _, err := c.Exec(ctx, "begin", simple); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "select pg_backend_pid()", simple).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := PG.Exec(ctx, fmt.Sprintf("select pg_terminate_backend(%d)", pid)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Exec(ctx, "select 1", simple)
	if err == nil || !strings.Contains(err.Error(), "08006") {
		t.Fatalf("the statement after the kill: %v, want ERROR 08006", err)
	}
	if _, err := c.Exec(ctx, "select 2", simple); err == nil || !strings.Contains(err.Error(), "25P02") {
		t.Fatalf("a statement in the failed transaction: %v, want 25P02", err)
	}
	tag, err := c.Exec(ctx, "commit", simple)
	if err != nil || tag.String() != "ROLLBACK" {
		t.Fatalf("COMMIT of the failed transaction: %q %v, want ROLLBACK", tag, err)
	}
	// And once more, ended with ROLLBACK (answered by dbproxy alone).
	if _, err := c.Exec(ctx, "begin", simple); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "select pg_backend_pid()", simple).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := PG.Exec(ctx, fmt.Sprintf("select pg_terminate_backend(%d)", pid)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "select 1", simple); err == nil {
		t.Fatal("no error after the kill")
	}
	if _, err := c.Exec(ctx, "rollback", simple); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := c.QueryRow(ctx, "select 41 + 1").Scan(&v); err != nil || v != 42 {
		t.Fatalf("after the lost transactions: %d %v", v, err)
	}
}
