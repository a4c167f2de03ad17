package mysql

import (
	"bytes"
	"errors"
	"testing"

	drv "github.com/go-sql-driver/mysql"
)

func TestBindTypes(t *testing.T) {
	// COM_STMT_EXECUTE for 2 parameters: id, flags, iteration count,
	// NULL bitmap, new-params-bound, types, values.
	exec := func(flag byte, types []byte) []byte {
		p := []byte{0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, flag}
		if flag == 1 {
			p = append(p, types...)
		}
		return append(p, 1, 2) // values (not parsed)
	}
	long := []byte{8, 0, 8, 0}
	str := []byte{253, 0, 8, 0}

	cs := &clientStmt{params: 2}
	a := &upStmt{id: 7}
	if got := bindTypes(exec(1, long), cs, a); !bytes.Equal(got, exec(1, long)) {
		t.Fatalf("flag 1 changed the packet: %x", got)
	}
	if !bytes.Equal(cs.types, long) || !bytes.Equal(a.types, long) {
		t.Fatalf("flag 1 not recorded: client %x, upstream %x", cs.types, a.types)
	}
	// Same connection, flag 0: the server knows the types.
	if got := bindTypes(exec(0, nil), cs, a); !bytes.Equal(got, exec(0, nil)) {
		t.Fatalf("flag 0 on the connection that has the types changed: %x", got)
	}
	// Another connection, never bound: the types go with it.
	b := &upStmt{id: 9}
	if got := bindTypes(exec(0, nil), cs, b); !bytes.Equal(got, exec(1, long)) {
		t.Fatalf("flag 0 on a new connection: %x, want %x", got, exec(1, long))
	}
	if !bytes.Equal(b.types, long) {
		t.Fatalf("upstream types after resend: %x", b.types)
	}
	// Another client bound other types on the shared statement.
	other := &clientStmt{params: 2}
	bindTypes(exec(1, str), other, b)
	if got := bindTypes(exec(0, nil), cs, b); !bytes.Equal(got, exec(1, long)) {
		t.Fatalf("flag 0 after another client's types: %x", got)
	}
	// No parameters: nothing to bind.
	none := []byte{0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0}
	if got := bindTypes(none, &clientStmt{}, a); !bytes.Equal(got, none) {
		t.Fatalf("no parameters: %x", got)
	}
	// Truncated: left for the server to refuse.
	if got := bindTypes([]byte{0x17, 7, 0, 0, 0}, cs, a); len(got) != 5 {
		t.Fatalf("truncated: %x", got)
	}
}

func TestSessionSQL(t *testing.T) {
	locks := map[string]string{
		"select get_lock('a', 1)":         "GET_LOCK",
		"SELECT GET_LOCK ( ?, 10)":        "GET_LOCK",
		"lock tables t write":             "LOCK TABLES",
		"  LOCK TABLE t READ":             "LOCK TABLES",
		"select 1; lock tables t read":    "LOCK TABLES",
		"select release_lock('a')":        "",
		"select * from t for update":      "",
		"select 'lock tables' as x":       "",
		"select * from blocked_tables":    "",
		"update locks set n = 1":          "",
		"select is_free_lock('get_lock')": "",
	}
	for q, want := range locks {
		if got := sessionLock([]byte(q)); got != want {
			t.Errorf("sessionLock(%q) = %q, want %q", q, got, want)
		}
	}
	marks := map[string]int{
		"set @x = 1":                                   markDirty,
		"SET NAMES latin1":                             markDirty,
		"set session sql_mode = ''":                    markDirty,
		"use otherdb":                                  markDirty,
		"create temporary table t (a int)":             markDirty,
		"prepare s from 'select 1'":                    markDirty,
		"select @x := 1":                               markDirty,
		"select 1; set @x = 2":                         markDirty,
		"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE": markDirty | markPinOnce,
		"select @@version":                             markNone,
		"select 1":                                     markNone,
		"insert into t values ('a@b.c')":               markNone,
		"update settings set v = 1":                    markNone,
		"create table t (a int)":                       markNone,
	}
	for q, want := range marks {
		if got := sessionChange([]byte(q)); got != want {
			t.Errorf("sessionChange(%q) = %b, want %b", q, got, want)
		}
	}
}

// TestTxnPoolingStatementsMove: a statement prepared by a client works on
// whichever server connection its next execute lands on, under the
// server's id for it there, and connections are held only inside
// transactions.
func TestTxnPoolingStatementsMove(t *testing.T) {
	f := &fakeServer{}
	p := newTestProxy(t, f, nil)
	p.srv.opts.Backends["appdb"].Mode = "transaction"
	a := p.open(t, "")
	a.SetMaxOpenConns(1)
	b := p.open(t, "")
	b.SetMaxOpenConns(1)

	stmt, err := a.Prepare("insert into t values (?, ?)")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	if _, err := stmt.Exec(1, "x"); err != nil {
		t.Fatal(err)
	}
	// The connection goes back after the answer reached the client.
	idle := func() bool { return p.pool.Stats().Idle == 1 }
	waitFor(t, idle)
	if _, err := b.Exec("select 1"); err != nil {
		t.Fatal(err)
	}
	if logins, _ := f.seen(); len(logins) != 1 {
		t.Fatalf("two clients outside transactions used %d server connections, want 1", len(logins))
	}
	// b's transaction holds the only connection; a's next execute needs
	// another, where its statement does not exist yet.
	tx, err := b.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stmt.Exec(2, "y"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return p.pool.Stats().Idle == 2 })
	for range 3 {
		if _, err := stmt.Exec(3, "z"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return p.pool.Stats().Idle == 2 })
	}
	logins, _ := f.seen()
	if len(logins) != 2 {
		t.Fatalf("%d server connections, want 2", len(logins))
	}
	f.mu.Lock()
	execs := append([]fakeExec(nil), f.executes...)
	f.mu.Unlock()
	conns := map[uint32]bool{}
	for i, e := range execs {
		conns[e.conn] = true
		if !e.known || len(e.bound) != 4 {
			t.Fatalf("execute %d: %+v: not prepared on its connection, or without types", i, e)
		}
	}
	if len(execs) != 5 || len(conns) != 2 {
		t.Fatalf("executes %+v: want 5 on 2 connections", execs)
	}
}

func TestTxnPoolingRefusesSessionLocks(t *testing.T) {
	p := newTestProxy(t, &fakeServer{}, nil)
	p.srv.opts.Backends["appdb"].Mode = "transaction"
	db := p.open(t, "")
	db.SetMaxOpenConns(1)
	var v string
	err := db.QueryRow("select get_lock('a', 1)").Scan(&v)
	var me *drv.MySQLError
	if !errors.As(err, &me) || me.Number != erNotSupportedYet {
		t.Fatalf("get_lock: want ERR 1235, got %v", err)
	}
	if err := db.QueryRow("select 5").Scan(&v); err != nil || v != "5" {
		t.Fatalf("after the refusal: %q %v", v, err)
	}
	if _, cmds := p.fake.seen(); len(cmds) != 1 {
		t.Fatalf("the server saw %q; want only the query after the refusal", cmds)
	}
}
