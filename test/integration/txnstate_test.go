package integration

import (
	"context"
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
