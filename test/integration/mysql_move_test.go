package integration

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// A session-mode client with a session variable, a user variable, a
// default database and a prepared statement crosses three rotations:
// each time it is idle it moves to a connection on the new credential
// with all of it, and sees no error.
func TestMySQLSessionModeMovesAcrossRotations(t *testing.T) {
	s := startMyLeaseStack(t, "mysql-move", shortTTL, shortMaxTTL)
	db := openMy(t, fmt.Sprintf("app@tcp(127.0.0.1:%d)/appdb?timeout=10s", s.port))
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{"SET time_zone = '+02:00'", "SET @v = 'kept'", "USE information_schema"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	stmt, err := conn.PrepareContext(ctx, "select current_user(), connection_id(), @@time_zone, @v, database(), ? + 1")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	users, conns := map[string]bool{}, map[int64]bool{}
	var mu sync.Mutex
	start := time.Now()
	steps := 0
	for i := 0; time.Since(start) < 27*time.Second || len(users) < 4 && time.Since(start) < 45*time.Second; i++ {
		var user, tz, dbName string
		var v sql.NullString
		var id int64
		var n int
		if err := stmt.QueryRowContext(ctx, i).Scan(&user, &id, &tz, &v, &dbName, &n); err != nil {
			t.Fatalf("step %d after %v (%d database users so far): %v", i, time.Since(start).Round(time.Second), len(users), err)
		}
		if tz != "+02:00" || v.String != "kept" || dbName != "information_schema" || n != i+1 {
			t.Fatalf("step %d: time_zone %q, @v %q, database %q, result %d: the session's state was lost", i, tz, v.String, dbName, n)
		}
		mu.Lock()
		users[strings.SplitN(user, "@", 2)[0]] = true
		conns[id] = true
		mu.Unlock()
		steps++
		// Idle between steps: moves happen while the client waits.
		time.Sleep(time.Duration(50+i%5*100) * time.Millisecond)
	}
	t.Logf("%d steps in %v on %d server connections as %d database users, 0 errors", steps, time.Since(start).Round(time.Second), len(conns), len(users))
	if len(users) < 4 || len(conns) < 4 {
		t.Fatalf("saw %d database users on %d connections; want at least 4 (3 rotations)", len(users), len(conns))
	}
	if log := s.proxy.log(); strings.Count(log, "session moved to the new credential") < 3 {
		t.Fatalf("dbproxy logged %d moves, want at least 3", strings.Count(log, "session moved to the new credential"))
	}
}
