package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Session-level SET in a transaction pool: a client's own settings hold in
// every transaction it runs, wherever it lands, and never reach another
// client's transactions.
func TestTransactionPoolSessionState(t *testing.T) {
	_, port := startTxnStackWith(t, "pg-txnstate", time.Hour, 2*time.Hour, "max_connections: 3, checkout_timeout: 10s")
	ctx := context.Background()
	dsnApp := func(app string) string { return txnDSN(port) + " application_name=" + app }

	a := connect(t, dsnApp("alpha"))
	b := connect(t, dsnApp("beta"))
	// pgx's simple protocol, as most drivers send SET.
	for _, q := range []string{"SET search_path = alpha_schema, public", "SET statement_timeout = '123s'"} {
		if _, err := a.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	// Other clients keep all three server connections busy and shuffled.
	others := []*pgx.Conn{connect(t, txnDSN(port)), connect(t, txnDSN(port))}
	seen := map[int]bool{}
	for i := range 100 {
		// 0, 1 or 2 other clients hold a server connection in a
		// transaction meanwhile, so the client lands on different ones.
		var held []pgx.Tx
		for _, o := range others[:i%3] {
			tx, err := o.Begin(ctx)
			if err == nil {
				_, err = tx.Exec(ctx, "select 1")
			}
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, tx)
		}
		var sp, st, app string
		var pid int
		if err := a.QueryRow(ctx, "select current_setting('search_path'), current_setting('statement_timeout'), current_setting('application_name'), pg_backend_pid()").Scan(&sp, &st, &app, &pid); err != nil {
			t.Fatal(err)
		}
		seen[pid] = true
		if sp != "alpha_schema, public" || st != "123s" || app != "dbproxy:app:alpha" {
			t.Fatalf("transaction %d of the client that SET: search_path %q, statement_timeout %q, application_name %q", i, sp, st, app)
		}
		for _, tx := range held {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.QueryRow(ctx, "select current_setting('search_path'), current_setting('statement_timeout'), current_setting('application_name')").Scan(&sp, &st, &app); err != nil {
			t.Fatal(err)
		}
		if sp != `"$user", public` || st != "0" || app != "dbproxy:app:beta" {
			t.Fatalf("transaction %d of another client sees: search_path %q, statement_timeout %q, application_name %q", i, sp, st, app)
		}
	}
	if len(seen) < 2 {
		t.Fatalf("the client's 100 transactions all ran on one server connection: the test proves nothing")
	}
	// RESET undoes it, everywhere.
	if _, err := a.Exec(ctx, "RESET statement_timeout", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	var st string
	if err := a.QueryRow(ctx, "select current_setting('statement_timeout')").Scan(&st); err != nil || st != "0" {
		t.Fatalf("after RESET: %q %v", st, err)
	}
	// A SET the server refuses is not recorded.
	if _, err := a.Exec(ctx, "SET statement_timeout = 'nonsense'", pgx.QueryExecModeSimpleProtocol); err == nil {
		t.Fatal("invalid SET accepted")
	}
	if err := a.QueryRow(ctx, "select 1").Scan(new(int)); err != nil {
		t.Fatalf("after a refused SET: %v", err)
	}
	// SET ROLE cannot follow a client across connections: refused.
	_, err := a.Exec(ctx, "SET ROLE postgres", pgx.QueryExecModeSimpleProtocol)
	if err == nil || !strings.Contains(err.Error(), "session") {
		t.Fatalf("SET ROLE: %v, want a refusal naming session mode", err)
	}
	t.Logf("the client's transactions ran on %d server connections", len(seen))
}

// SQL-level PREPARE / EXECUTE / DEALLOCATE in a transaction pool: each
// client's statements work on every server connection its transactions
// land on, two clients may use one name for different statements, and
// DEALLOCATE and a refused PREPARE behave as without dbproxy.
func TestTransactionPoolSQLPrepare(t *testing.T) {
	_, port := startTxnStackWith(t, "pg-txnsqlprep", time.Hour, 2*time.Hour, "max_connections: 3, checkout_timeout: 10s")
	ctx := context.Background()
	simple := pgx.QueryExecModeSimpleProtocol
	a, b := connect(t, txnDSN(port)), connect(t, txnDSN(port))
	for c, q := range map[*pgx.Conn]string{a: "PREPARE calc(int) AS SELECT $1 + 1", b: "prepare CALC (int) as select $1 * 2;"} {
		if _, err := c.Exec(ctx, q, simple); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	others := []*pgx.Conn{connect(t, txnDSN(port)), connect(t, txnDSN(port))}
	seen := map[int]bool{}
	for i := range 60 {
		var held []pgx.Tx
		for _, o := range others[:i%3] {
			tx, err := o.Begin(ctx)
			if err == nil {
				_, err = tx.Exec(ctx, "select 1")
			}
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, tx)
		}
		var va, vb, pid int
		if err := a.QueryRow(ctx, fmt.Sprintf("EXECUTE calc(%d)", i), simple).Scan(&va); err != nil {
			t.Fatalf("transaction %d, client a: %v", i, err)
		}
		if err := b.QueryRow(ctx, fmt.Sprintf("execute \"calc\" (%d)", i), simple).Scan(&vb); err != nil {
			t.Fatalf("transaction %d, client b: %v", i, err)
		}
		if va != i+1 || vb != i*2 {
			t.Fatalf("transaction %d: a got %d, b got %d: statements mixed up", i, va, vb)
		}
		if err := a.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		seen[pid] = true
		for _, tx := range held {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(seen) < 2 {
		t.Fatal("the client's transactions all ran on one server connection: the test proves nothing")
	}
	// The name is taken; after DEALLOCATE it is free, and gone.
	if _, err := a.Exec(ctx, "PREPARE calc(int) AS SELECT $1 - 1", simple); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("PREPARE of a taken name: %v", err)
	}
	if _, err := a.Exec(ctx, "DEALLOCATE calc", simple); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "EXECUTE calc(1)", simple); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("EXECUTE after DEALLOCATE: %v", err)
	}
	if err := b.QueryRow(ctx, "EXECUTE calc(21)", simple).Scan(new(int)); err != nil {
		t.Fatalf("another client's statement of the same name after DEALLOCATE: %v", err)
	}
	// A PREPARE the server refuses leaves nothing behind.
	if _, err := a.Exec(ctx, "PREPARE broken AS SELEC 1", simple); err == nil {
		t.Fatal("invalid PREPARE accepted")
	}
	if _, err := a.Exec(ctx, "EXECUTE broken", simple); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("EXECUTE of a refused PREPARE: %v", err)
	}
	// One it cannot follow is refused, so no statement is left on a
	// connection under a client's name.
	if _, err := a.Exec(ctx, "PREPARE two AS SELECT 1; SELECT 2", simple); err == nil || !strings.Contains(err.Error(), "transaction pooling") {
		t.Fatalf("PREPARE among several statements: %v", err)
	}
	t.Logf("the client's transactions ran on %d server connections", len(seen))
}
