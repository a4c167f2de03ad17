package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// startPoolStack starts dbproxy with one PostgreSQL backend pooled in
// mode (session or transaction) on a fresh Vault role.
func startPoolStack(t *testing.T, role, mode, pool string) (*proxyProc, int) {
	t.Helper()
	if mode == "transaction" {
		return startTxnStackWith(t, role, time.Hour, 2*time.Hour, pool)
	}
	if err := Vault.ConfigurePostgres(context.Background(), PG, harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	cfg := strings.Replace(txnProxyConfig(t, dir, "postgres", PG.Addr(), role, pool, port), "mode: transaction", "mode: session", 1)
	return startProxy(t, dir, cfg, true), port
}

// selectOne is a pgbench script of one trivial statement.
func selectOne(t *testing.T) string {
	script := filepath.Join(t.TempDir(), "one.sql")
	if err := os.WriteFile(script, []byte("select 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return script
}

// A database that stops answering for seconds at a time (SIGSTOP of the
// whole server) delays clients but loses no request: every pgbench client
// finishes, with no error, in both pool modes.
func TestFaultsStalledDatabaseLosesNoRequest(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			_, port := startPoolStack(t, "pg-stall-"+mode[:3], mode, "max_connections: 4, checkout_timeout: 20s")
			out, n := stallUnderLoad(t, PG.Stall, func(ctx context.Context, secs int) *exec.Cmd {
				return exec.CommandContext(ctx, "pgbench", "-n", "-c", "4", "-j", "2", "-T", fmt.Sprint(secs), "-f", selectOne(t), txnDSN(port))
			})
			if !strings.Contains(out, "number of failed transactions: 0") {
				t.Fatalf("pgbench:\n%s", out)
			}
			t.Logf("after %d stalls: %s", n, grepLine(out, "number of transactions actually processed"))
		})
	}
}

// stallUnderLoad runs the load command for as long as the stall plan
// needs, stalls the database meanwhile, and returns the command's output
// and the number of stalls. A command that does not finish in time lost
// a request; one that fails, failed a client.
func stallUnderLoad(t *testing.T, stall func(time.Duration) error, load func(context.Context, int) *exec.Cmd) (string, int) {
	t.Helper()
	stalls, secs := stallPlan(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+76)*time.Second)
	defer cancel()
	cmd := load(ctx, secs)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	for _, d := range stalls {
		if err := stall(d); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	err := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("%s never finished: a request was lost\n%s", cmd.Args[0], out.String())
	}
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd.Args[0], err, out.String())
	}
	return out.String(), len(stalls)
}

// stallPlan is how long each stall of a stall test lasts, and how long
// the load runs. make test: 5 stalls of 0.5-1.7 s. DBPROXY_STALLS=N (make
// stall runs 20): N stalls of 1-5 s each, as an incident would.
func stallPlan(t *testing.T) ([]time.Duration, int) {
	n := 0
	if v := os.Getenv("DBPROXY_STALLS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("DBPROXY_STALLS=%q: want a count", v)
		}
	}
	var stalls []time.Duration
	total := 2 * time.Second
	for i := range max(n, 5) {
		d := time.Duration(500+300*i) * time.Millisecond
		if n > 0 {
			d = time.Second + time.Duration(rand.IntN(4000))*time.Millisecond
		}
		stalls = append(stalls, d)
		total += d + 500*time.Millisecond
	}
	return stalls, int(total.Seconds()) + 2
}

// Pooled connections the server ended while idle (pg_terminate_backend)
// are never handed to a client as an error.
func TestFaultsDeadPooledConnections(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			role := "pg-dead-" + mode[:3]
			_, port := startPoolStack(t, role, mode, "max_connections: 6, checkout_timeout: 5s")
			ctx := context.Background()
			// Warm the pool: six clients at once, then gone (session mode)
			// or idle between transactions (transaction mode).
			var kept []*pgx.Conn
			for range 6 {
				kept = append(kept, connect(t, txnDSN(port)))
			}
			var warm sync.WaitGroup
			for _, c := range kept {
				warm.Go(func() { _, _ = c.Exec(ctx, "select pg_sleep(0.3)") })
			}
			warm.Wait()
			if mode == "session" {
				for _, c := range kept {
					_ = c.Close(ctx)
				}
				kept = nil
				time.Sleep(300 * time.Millisecond) // returned and reset
			}
			n := terminateBackends(t, "dbproxy:app%")
			if n < 6 {
				t.Fatalf("%d pooled server connections terminated, want 6", n)
			}
			time.Sleep(200 * time.Millisecond)
			var wg sync.WaitGroup
			errs := make(chan error, 40)
			for i := range 20 {
				wg.Go(func() {
					c, err := connectErr(ctx, txnDSN(port))
					if err != nil {
						errs <- fmt.Errorf("client %d connect: %w", i, err)
						return
					}
					defer c.Close(ctx)
					var v int
					if err := c.QueryRow(ctx, "select $1::int", i).Scan(&v); err != nil || v != i {
						errs <- fmt.Errorf("client %d: %d, %w", i, v, err)
					}
				})
			}
			for i, c := range kept {
				wg.Go(func() {
					if _, err := c.Exec(ctx, "select 1"); err != nil {
						errs <- fmt.Errorf("existing client %d: %w", i, err)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Logf("%d server connections terminated; 20 new clients and %d existing ones unaffected", n, len(kept))
		})
	}
}

// terminateBackends ends every server session whose application_name
// is like pattern, as a DBA would, and returns how many.
func terminateBackends(t *testing.T, pattern string) int {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, PG.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name like $1", pattern).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func connectErr(ctx context.Context, dsn string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, dsn)
}

func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// The two places one relay goroutine could deadlock, against the real
// server, in both pool modes: a 100 MB COPY FROM STDIN, and a client that
// writes 50 MB of queries before it reads any answer.
func TestRelayFallbackPaths(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p, port := startPoolStack(t, "pg-fallback-"+mode[:3], mode, "max_connections: 2, checkout_timeout: 10s")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			c := connect(t, txnDSN(port))
			// 100 MB of COPY data into a temporary table, in one
			// transaction so it stays on one server connection.
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "create temp table big (s text) on commit drop"); err != nil {
				t.Fatal(err)
			}
			line := strings.Repeat("x", 999) + "\n"
			r := &repeatReader{line: line, left: (100 << 20) / len(line) * len(line)}
			tag, err := c.PgConn().CopyFrom(ctx, r, "copy big from stdin")
			if err != nil || tag.RowsAffected() != int64((100<<20)/len(line)) {
				t.Fatalf("100 MB COPY FROM STDIN: %v, %d rows", err, tag.RowsAffected())
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if got := metricSum(t, p, "dbproxy_relay_duplex_switches_total", ""); got < 1 {
				t.Fatalf("the COPY did not go through the two-direction relay (switches %v)", got)
			}
			// 50 MB of pipelined queries, written before any answer is read.
			q := frameQ("select length('" + strings.Repeat("y", 5000) + "')")
			n := (50 << 20) / len(q)
			raw := rawStartup(t, port)
			defer raw.Close()
			wrote := make(chan error, 1)
			go func() {
				_, err := raw.Write(bytes.Repeat(q, n))
				wrote <- err
			}()
			select {
			case err := <-wrote:
				if err != nil {
					t.Fatal(err)
				}
			case <-ctx.Done():
				t.Fatal("the relay stopped reading a pipelining client: deadlock")
			}
			_ = raw.SetReadDeadline(time.Now().Add(2 * time.Minute))
			br := bufio.NewReaderSize(raw, 64<<10)
			for i := 0; i < n; {
				typ, body := readMsg(t, br)
				switch typ {
				case 'E':
					t.Fatalf("query %d: %q", i, body)
				case 'Z':
					i++
				}
			}
		})
	}
}

type repeatReader struct {
	line string
	left int
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && r.left > 0 {
		k := copy(p[n:], r.line[r.off:])
		r.off = (r.off + k) % len(r.line)
		n += k
		r.left -= k
	}
	return n, nil
}

func frameQ(sql string) []byte {
	b := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(sql)+5))
	return append(append(b, sql...), 0)
}

// An external `vault lease revoke -prefix` in an incident, under pgbench
// on a transaction pool, with the revoked user's idle pooled connections
// terminated so that dbproxy must log in again: the login with the revoked
// credential fails (28P01), dbproxy takes a new credential at once and
// retries, and no client sees an error or is disconnected. The time from
// the revoke to the first transaction on the new credential is logged.
func TestFaultsExternalRevokeTransactionPool(t *testing.T) {
	p, port := startTxnStackWith(t, "pg-xrevoke", time.Hour, 2*time.Hour, "max_connections: 6, checkout_timeout: 15s")
	out := make(chan []byte, 1)
	go func() {
		b, _ := exec.Command("pgbench", "-n", "-c", "4", "-T", "14", "-f", selectOne(t), txnDSN(port)).CombinedOutput()
		out <- b
	}()
	time.Sleep(3 * time.Second)
	before := p.leases(t)
	if len(before) == 0 {
		t.Fatal("no credential before the revoke")
	}
	oldUser := before[len(before)-1].Username
	if err := Vault.Client.Sys().RevokePrefix(Mount + "/creds/pg-xrevoke"); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	terminateIdleBackends(t, "dbproxy:app%")
	var newUser string
	for deadline := time.Now().Add(20 * time.Second); newUser == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no transaction on a new credential within 20s of the revoke")
		}
		newUser = activeUserOtherThan(t, oldUser)
	}
	took := time.Since(revoked)
	b := <-out
	if !strings.Contains(string(b), "number of failed transactions: 0") || strings.Contains(string(b), "aborted") {
		t.Fatalf("pgbench through the revoke:\n%s", b)
	}
	t.Logf("new credential %s in use %v after the revoke; pgbench: %s", newUser, took.Round(time.Millisecond), grepLine(string(b), "number of transactions actually processed"))
}

// activeUserOtherThan returns a Vault-made user other than old that runs
// a server session for dbproxy, or "".
func activeUserOtherThan(t *testing.T, old string) string {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, PG.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var u string
	_ = c.QueryRow(ctx, "select usename from pg_stat_activity where application_name like 'dbproxy:app%' and usename <> $1 and usename like 'v-%' limit 1", old).Scan(&u)
	return u
}

// terminateIdleBackends ends the idle server sessions whose application
// name is like pattern, as a DBA's sweep in an incident would.
func terminateIdleBackends(t *testing.T, pattern string) int {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, PG.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "select count(pg_terminate_backend(pid)) from pg_stat_activity where state = 'idle' and application_name like $1", pattern).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
