package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

const header = "| N | mode | creds issued | renewals | revocations | db users created | max concurrent db users | client errors | queries ok | KV requests | all Vault requests |\n" +
	"|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

// result is one configuration's row.
type result struct {
	n        int
	fleet    bool
	audit    auditCounts
	users    int
	maxUsers int
	ok       int64
	errs     int64
}

func (r result) row() string {
	mode := "one credential per instance"
	if r.fleet {
		mode = "fleet"
	}
	return fmt.Sprintf("| %d | %s | %d | %d | %d | %d | %d | %d | %d | %d | %d |", r.n, mode,
		r.audit.creds, r.audit.renewals, r.audit.revocations, r.users, r.maxUsers, r.errs, r.ok, r.audit.kv, r.audit.all)
}

// proc is one running dbproxy.
type proc struct {
	cmd   *exec.Cmd
	port  int
	admin string
	done  chan error
}

// measure runs n dbproxy processes with their clients for d on a role of
// its own (so users and audit entries of an earlier configuration, which
// Vault may still be expiring, are not counted), stops them, waits until
// their database users are gone and returns the counts.
func (e *env) measure(ctx context.Context, n int, fleet bool, d time.Duration) (result, error) {
	r := result{n: n, fleet: fleet}
	role := fmt.Sprintf("n%d-solo", n)
	if fleet {
		role = fmt.Sprintf("n%d-fleet", n)
	}
	if err := e.vault.ConfigurePostgres(ctx, e.pg, harness.RoleOptions{Role: role, DefaultTTL: e.ttl, MaxTTL: e.maxTTL}); err != nil {
		return r, err
	}
	// Tokens first, so that the audit counts only dbproxy's requests.
	tokens, err := e.tokens(ctx, n)
	if err != nil {
		return r, err
	}
	auditStart, err := fileSize(e.audit)
	if err != nil {
		return r, err
	}
	sampler, err := e.sampleUsers(ctx, role)
	if err != nil {
		return r, err
	}
	procs, err := e.startProcs(ctx, role, tokens, fleet)
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, d)
		r.ok, r.errs = runClients(cctx, procs)
		cancel()
	}
	stopProcs(procs)
	if err != nil {
		sampler.stop()
		return r, err
	}
	// Users whose leases dbproxy did not revoke are dropped by Vault at
	// their TTL: wait for that, so every user created is seen.
	sampler.waitEmpty(ctx, e.maxTTL+15*time.Second)
	r.users, r.maxUsers = sampler.stop()
	r.audit, err = countAudit(e.audit, auditStart, role)
	return r, err
}

// tokens creates one orphan, periodic token per process: what
// docs/fleet.md asks for, used in both modes alike.
func (e *env) tokens(ctx context.Context, n int) ([]string, error) {
	var toks []string
	for range n {
		tok, err := e.vault.CreateRoleToken(ctx, "dbproxy-bench", harness.TokenRoleOptions{
			Policies: []string{"dbproxy-bench"}, Period: time.Hour, Orphan: true,
		})
		if err != nil {
			return nil, err
		}
		toks = append(toks, tok)
	}
	return toks, nil
}

// startProcs starts one dbproxy per token and waits until all are ready.
func (e *env) startProcs(ctx context.Context, role string, tokens []string, fleet bool) ([]*proc, error) {
	var procs []*proc
	for i, tok := range tokens {
		dir := filepath.Join(e.dir, role, fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return procs, err
		}
		p, err := e.startProc(dir, tok, role, i, fleet)
		if err != nil {
			return procs, err
		}
		procs = append(procs, p)
	}
	for _, p := range procs {
		if err := p.waitReady(ctx, time.Minute); err != nil {
			return procs, err
		}
	}
	return procs, nil
}

func (e *env) startProc(dir, token, role string, i int, fleet bool) (*proc, error) {
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return nil, err
	}
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	fleetCfg := ""
	if fleet {
		// docs/fleet.md: with TTL 10s / max 30s, lock_ttl 2s and
		// poll_interval 500ms leave a successor time to renew.
		fleetCfg = fmt.Sprintf("fleet: { name: bench-%s, instance_id: i%d, lock_ttl: 2s, poll_interval: 500ms }", role, i)
	}
	cfg := fmt.Sprintf(`
vault:
  address: %s
  request_timeout: 2s
  auth: { method: token, token_file: %q }
%s
backends:
  appdb:
    protocol: postgres
    address: %s
    vault_role: %s
    pool: { mode: transaction, max_connections: 2, checkout_timeout: 10s }
    lease: { safety_margin: 3s, revoke_grace: 2s, max_issue_per_minute: 20 }
listeners:
  - { name: sidecar, protocol: postgres, address: "127.0.0.1:%d", identity: app }
identities:
  app:
    grants: [ { backend: appdb } ]
admin: { address: "127.0.0.1:%d" }
`, e.vault.Addr, tokenFile, fleetCfg, e.pg.Addr(), role, port, adminPort)
	cfgPath := filepath.Join(dir, "dbproxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "dbproxy.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(e.bin, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start dbproxy: %w", err)
	}
	p := &proc{cmd: cmd, port: port, admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort), done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

func (p *proc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("dbproxy on port %d exited before ready: %v (log in its directory, -keep)", p.port, err)
		default:
		}
		if resp, err := http.Get(p.admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("dbproxy on port %d not ready after %v", p.port, timeout)
}

// stopProcs stops every process with SIGTERM (a fleet's last member then
// revokes what is left), and kills one that has not exited after 40s.
func stopProcs(procs []*proc) {
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(40 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// runClients runs one client per process until ctx ends: `select 1`
// every 100 ms on one connection, reconnecting after an error.
func runClients(ctx context.Context, procs []*proc) (ok, errs int64) {
	var nOK, nErr atomic.Int64
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() {
			dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable connect_timeout=10", p.port)
			var conn *pgx.Conn
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					if conn != nil {
						_ = conn.Close(context.Background())
					}
					return
				case <-tick.C:
				}
				qctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				err := query(qctx, &conn, dsn)
				cancel()
				if err != nil {
					nErr.Add(1)
					continue
				}
				nOK.Add(1)
			}
		})
	}
	wg.Wait()
	return nOK.Load(), nErr.Load()
}

// query runs one `select 1` on *conn, connecting first if needed; after
// an error the connection is dropped.
func query(ctx context.Context, conn **pgx.Conn, dsn string) error {
	if *conn == nil {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		*conn = c
	}
	var one int
	err := (*conn).QueryRow(ctx, "select 1").Scan(&one)
	if err == nil && one != 1 {
		err = errors.New("select 1 returned something else")
	}
	if err != nil {
		_ = (*conn).Close(context.Background())
		*conn = nil
	}
	return err
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
