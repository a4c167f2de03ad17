package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// TestSoak runs real clients through transaction pools of both protocols
// for DBPROXY_SOAK (default 2m; `make soak` runs 10m) with 10s/30s
// leases, while it terminates idle pooled connections, pauses Vault for
// less than a lease and asks for rotations. It fails on any client error,
// any database user left behind, or growth of dbproxy's memory or
// goroutines, and prints a report.
func TestSoak(t *testing.T) {
	d := 2 * time.Minute
	if v := os.Getenv("DBPROXY_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("DBPROXY_SOAK: %v", err)
		}
	}
	ctx := context.Background()
	opts := func(role string) harness.RoleOptions {
		return harness.RoleOptions{Mount: Mount, Role: role, DefaultTTL: RoleTTL, MaxTTL: RoleMaxTTL}
	}
	if err := Vault.ConfigurePostgres(ctx, PG, opts("soak-pg")); err != nil {
		t.Fatal(err)
	}
	if err := Vault.ConfigureMySQL(ctx, Maria, opts("soak-my")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pgPort, myPort := freePort(t), freePort(t)
	p := startProxy(t, dir, soakConfig(t, dir, pgPort, myPort), true)
	myTable(t, "soak")

	r := &soakReport{errs: map[string]int{}}
	start := r.sample(t, p)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	pgDSN := fmt.Sprintf("host=127.0.0.1 port=%d dbname=pgsoak user=app sslmode=disable", pgPort)
	soakPgx(t, &wg, stop, r, pgDSN)
	soakMySQL(t, &wg, stop, r, fmt.Sprintf("app@tcp(127.0.0.1:%d)/mysoak?timeout=10s", myPort))
	wg.Go(func() { soakPgbench(t, d, r, pgDSN) })
	soakFaults(t, &wg, stop, r, p)
	// Memory is judged from a sample taken once the pools, buffers and
	// (in a race build) the detector's shadow memory have grown to the
	// load: growth after that is what a leak looks like.
	warmup := d / 4
	time.Sleep(warmup)
	warm := r.sample(t, p)
	time.Sleep(d - warmup)
	close(stop)
	wg.Wait()
	end := r.sample(t, p)
	if err := p.stop(t); err != nil {
		t.Errorf("stop: %v", err)
	}
	left := soakUsersLeft(t)
	t.Logf("soak report (%s):\n%s", d, r.text(start, warm, end, left))
	if n := r.failed.Load(); n > 0 {
		r.mu.Lock()
		t.Errorf("%d client errors in transaction pools: %v", n, r.errs)
		r.mu.Unlock()
	}
	if left > 0 {
		t.Errorf("%d database users left behind after dbproxy stopped", left)
	}
	if end.rss > warm.rss*3/2+8<<20 {
		t.Errorf("RSS grew from %d KiB (after %s of load) to %d KiB", warm.rss>>10, warmup, end.rss>>10)
	}
	if end.goroutines > start.goroutines+20 {
		t.Errorf("goroutines grew from %d to %d", start.goroutines, end.goroutines)
	}
}

func soakConfig(t *testing.T, dir string, pgPort, myPort int) string {
	return fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 2s
  auth: { method: token, token_file: %q }
backends:
  pgsoak:
    protocol: postgres
    address: %s
    database: appdb
    vault_role: soak-pg
    pool: { mode: transaction, max_connections: 10, checkout_timeout: 15s }
    lease: { rotate_before: 15s, safety_margin: 3s, revoke_grace: 2s, max_issue_per_minute: 30 }
  mysoak:
    protocol: mysql
    address: %s
    database: appdb
    vault_role: soak-my
    pool: { mode: transaction, max_connections: 4, checkout_timeout: 15s }
    lease: { rotate_before: 15s, safety_margin: 3s, revoke_grace: 2s, max_issue_per_minute: 30 }
listeners:
  - { name: pg, protocol: postgres, address: "127.0.0.1:%d", identity: app }
  - { name: my, protocol: mysql, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: pgsoak }, { backend: mysoak } ]
admin: { address: "{{ADMIN}}", pprof: true }
`, Vault.Addr, vaultTokenFile(t, dir), PG.Addr(), Maria.Addr(), pgPort, myPort)
}

type soakReport struct {
	ok, failed, faults atomic.Int64
	mu                 sync.Mutex
	errs               map[string]int // by class
	pgbench            string
}

func (r *soakReport) fail(class string, err error) {
	r.failed.Add(1)
	r.mu.Lock()
	if len(r.errs) < 50 || r.errs[class] > 0 {
		r.errs[class+": "+firstLine(err.Error())]++
	}
	r.mu.Unlock()
}

type soakSample struct{ rss, goroutines int }

func (r *soakReport) sample(t *testing.T, p *proxyProc) soakSample {
	runtimeSettle()
	s := soakSample{rss: proxyRSS(t, p)}
	resp, err := http.Get(p.admin + "/debug/pprof/goroutine?debug=1")
	if err == nil {
		var n int
		_, _ = fmt.Fscanf(resp.Body, "goroutine profile: total %d", &n)
		resp.Body.Close()
		s.goroutines = n
	}
	return s
}

func runtimeSettle() { time.Sleep(2 * time.Second) }

func (r *soakReport) text(start, warm, end soakSample, left int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "transactions ok: %d, client errors: %d, faults injected: %d\n", r.ok.Load(), r.failed.Load(), r.faults.Load())
	fmt.Fprintf(&b, "pgbench: %s\n", r.pgbench)
	r.mu.Lock()
	var classes []string
	for k, v := range r.errs {
		classes = append(classes, fmt.Sprintf("  %5d  %s", v, k))
	}
	r.mu.Unlock()
	sort.Strings(classes)
	b.WriteString(strings.Join(classes, "\n"))
	fmt.Fprintf(&b, "\nRSS: %d KiB at start, %d KiB warm, %d KiB at end; goroutines: %d -> %d; database users left: %d\n",
		start.rss>>10, warm.rss>>10, end.rss>>10, start.goroutines, end.goroutines, left)
	return b.String()
}

// soakPgx runs pgx pool and database/sql-style clients: prepared,
// simple-protocol and explicit transactions, each result checked.
func soakPgx(t *testing.T, wg *sync.WaitGroup, stop <-chan struct{}, r *soakReport, dsn string) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 6
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for w := range 6 {
		wg.Go(func() {
			defer func() {
				if w == 0 {
					pool.Close()
				}
			}()
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var n int
				switch i % 3 {
				case 0:
					err = pool.QueryRow(ctx, "select $1::int + 1", i).Scan(&n)
				case 1:
					err = pool.QueryRow(ctx, "select $1::int + 1", pgx.QueryExecModeSimpleProtocol, i).Scan(&n)
				default:
					err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
						return tx.QueryRow(ctx, "select $1::int + 1", i).Scan(&n)
					})
				}
				if err == nil && n != i+1 {
					err = fmt.Errorf("wrong result %d for %d", n, i)
				}
				if err != nil {
					r.fail("pgx "+pgClass(err), err)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				r.ok.Add(1)
			}
		})
	}
}

func pgClass(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return "network"
}

// soakMySQL runs go-sql-driver clients that write, read back and commit.
func soakMySQL(t *testing.T, wg *sync.WaitGroup, stop <-chan struct{}, r *soakReport, dsn string) {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(4)
	for w := range 4 {
		wg.Go(func() {
			defer func() {
				if w == 0 {
					db.Close()
				}
			}()
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := int64(w)<<40 | int64(i)
				err := func() error {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						return err
					}
					defer func() { _ = tx.Rollback() }()
					if _, err := tx.ExecContext(ctx, "insert into soak (id, c, v) values (?, ?, ?)", id, w, i); err != nil {
						return err
					}
					var v int
					if err := tx.QueryRowContext(ctx, "select v from soak where id = ?", id).Scan(&v); err != nil || v != i {
						return fmt.Errorf("read back %d: %d, %v", id, v, err)
					}
					return tx.Commit()
				}()
				if err != nil {
					class := "network"
					var me *mysql.MySQLError
					if errors.As(err, &me) {
						class = fmt.Sprint(me.Number)
					}
					r.fail("mysql "+class, err)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				r.ok.Add(1)
			}
		})
	}
}

func soakPgbench(t *testing.T, d time.Duration, r *soakReport, dsn string) {
	out, err := exec.Command("pgbench", "-n", "-c", "2", "-T", fmt.Sprint(int(d.Seconds())), "-f", selectOne(t), dsn).CombinedOutput()
	line := grepLine(string(out), "number of transactions actually processed") + "; " + grepLine(string(out), "number of failed")
	r.mu.Lock()
	r.pgbench = line
	r.mu.Unlock()
	if err != nil || !strings.Contains(string(out), "number of failed transactions: 0") {
		r.fail("pgbench", fmt.Errorf("%v: %s", err, firstLine(string(out))))
	}
}

// soakFaults injects, every few seconds, one of: idle pooled PostgreSQL
// connections terminated, idle pooled MariaDB connections killed, Vault
// paused for 2-4 s, a rotation asked through the admin API.
func soakFaults(t *testing.T, wg *sync.WaitGroup, stop <-chan struct{}, r *soakReport, p *proxyProc) {
	wg.Go(func() {
		tick := time.NewTicker(4 * time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			r.faults.Add(1)
			switch rand.IntN(4) {
			case 0:
				// Pooled connections idle for a moment: a DBA's idle
				// sweep. (One in use would be a real error to its client.)
				_ = PG.Exec(context.Background(), "select pg_terminate_backend(pid) from pg_stat_activity where state = 'idle' and state_change < now() - interval '200 milliseconds' and application_name like 'dbproxy:%'")
			case 1:
				if Vault.Pause() == nil {
					time.Sleep(time.Duration(2000+rand.IntN(2000)) * time.Millisecond)
					_ = Vault.Resume()
				}
			case 2:
				req, _ := http.NewRequest(http.MethodPost, p.admin+"/v1/backends/pgsoak/rotate", nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			default:
				killIdleMaria("soak-my")
			}
		}
	})
}

// killIdleMaria kills the idle pooled server sessions of a Vault role's
// users, as a DBA's sweep would, and returns how many.
func killIdleMaria(role string) int {
	db, err := sql.Open("mysql", Maria.AdminDSN())
	if err != nil {
		return 0
	}
	defer db.Close()
	// Idle for a moment and outside a transaction: killing one inside a
	// transaction (idle between its statements) is a real error to its
	// client, as it would be without dbproxy.
	rows, err := db.Query(`select id from information_schema.processlist
		where command = 'Sleep' and time_ms > 200 and user like ?
		and id not in (select trx_mysql_thread_id from information_schema.innodb_trx)`, "v-%-"+role+"-%")
	if err != nil {
		return 0
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if rows.Scan(&id) == nil {
			ids = append(ids, id)
		}
	}
	rows.Close()
	n := 0
	for _, id := range ids {
		if _, err := db.Exec(fmt.Sprintf("KILL %d", id)); err == nil {
			n++
		}
	}
	return n
}

// soakUsersLeft counts Vault-made users of the soak roles still in the
// databases, after waiting a little for the last revocations.
func soakUsersLeft(t *testing.T) int {
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := len(vaultRoles(t, "soak-pg")) + len(mysqlVaultUsers(t, "soak-my"))
		if n == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(time.Second)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
