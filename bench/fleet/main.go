// Command fleet is a measuring tool, not product code: it shows what fleet
// mode (docs/fleet.md) saves. For N = 1, 3, 10 dbproxy processes, each with
// and without a `fleet:` block, it runs the processes against one real
// Vault dev server and one real PostgreSQL (started with the integration
// harness) for -duration, with one pgx client per process doing a
// `select 1` every 100 ms through a transaction pool, on a Vault role with
// TTL 10 s / max_ttl 30 s so credentials rotate all along.
//
// Vault's file audit device counts what dbproxy asked Vault for (credential
// reads, lease renewals and revocations, KV requests, all requests);
// pg_roles, polled every 200 ms, counts the database users Vault created
// and the most that existed at once. It prints a markdown table.
//
//	go run ./bench/fleet -duration 10m    # make bench-fleet
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// Pdeathsig reaches a child when the OS thread that forked it exits, so
// every dbproxy is started from the main goroutine, kept on the main thread.
func init() { runtime.LockOSThread() }

// policy lets dbproxy read every role's credentials, handle leases and use
// the fleet records (docs/fleet.md's policy, widened to all roles).
const policy = `
path "database/creds/*" { capabilities = ["read"] }
path "database/roles/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "secret/data/dbproxy/fleet/*" { capabilities = ["create", "read", "update"] }
`

// env is the servers every configuration shares.
type env struct {
	dir    string
	bin    string // dbproxy
	pg     *harness.Postgres
	vault  *harness.Vault
	audit  string // the audit log's path
	ttl    time.Duration
	maxTTL time.Duration
}

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "how long each configuration runs")
	ns := flag.String("n", "1,3,10", "numbers of dbproxy processes, comma-separated")
	keep := flag.Bool("keep", false, "keep the work directory (server, dbproxy and audit logs)")
	flag.Parse()
	if err := run(*duration, *ns, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "bench-fleet:", err)
		os.Exit(1)
	}
}

func run(duration time.Duration, nList string, keep bool) error {
	var counts []int
	for _, s := range strings.Split(nList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-n: %q is not a positive number", s)
		}
		counts = append(counts, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer harness.StopAll()
	e, err := setup(ctx)
	if e != nil {
		defer e.stop(keep || err != nil)
	}
	if err != nil {
		return err
	}
	start := time.Now()
	var rows []result
	for _, n := range counts {
		for _, fleet := range []bool{false, true} {
			r, err := e.measure(ctx, n, fleet, duration)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "bench-fleet: %s\n", r.row())
			rows = append(rows, r)
		}
	}
	fmt.Printf("Vault role TTL %v / max_ttl %v; %v per configuration; %s; total %v.\n\n",
		e.ttl, e.maxTTL, duration, time.Now().UTC().Format("2006-01-02 15:04 UTC"), time.Since(start).Round(time.Second))
	fmt.Println(header)
	for _, r := range rows {
		fmt.Println(r.row())
	}
	return nil
}

// setup starts PostgreSQL and Vault, builds dbproxy, turns on Vault's file
// audit device and writes the policy.
func setup(ctx context.Context) (*env, error) {
	dir, err := os.MkdirTemp("", "dbproxy-bench-fleet-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, audit: filepath.Join(dir, "vault-audit.log"), ttl: 10 * time.Second, maxTTL: 30 * time.Second}
	var wg sync.WaitGroup
	var pgErr, vErr, bErr error
	wg.Go(func() { e.pg, pgErr = harness.StartPostgres(ctx, filepath.Join(dir, "pg")) })
	wg.Go(func() {
		var vbin string
		if vbin, vErr = harness.BuildVault(ctx); vErr == nil {
			e.vault, vErr = harness.StartVault(ctx, filepath.Join(dir, "vault"), vbin)
		}
	})
	wg.Go(func() { e.bin, bErr = harness.BuildDBProxy(ctx, filepath.Join(dir, "bin")) })
	wg.Wait()
	if err := firstErr(pgErr, vErr, bErr); err != nil {
		return e, err
	}
	if err := e.vault.Client.Sys().EnableAuditWithOptionsWithContext(ctx, "file", &api.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": e.audit},
	}); err != nil {
		return e, fmt.Errorf("enable audit: %w", err)
	}
	return e, e.vault.WritePolicy(ctx, "dbproxy-bench", policy)
}

func (e *env) stop(keep bool) {
	if e.vault != nil {
		_ = e.vault.Stop()
	}
	if e.pg != nil {
		_ = e.pg.Stop()
	}
	if keep {
		fmt.Fprintf(os.Stderr, "bench-fleet: logs kept in %s\n", e.dir)
		return
	}
	_ = os.RemoveAll(e.dir)
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
