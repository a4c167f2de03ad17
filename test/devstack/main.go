// Command devstack runs the integration test servers for people rather than
// tests: a real PostgreSQL 15 (and, with --mariadb, MariaDB) and a Vault dev
// server with the database secrets engine configured against them, all on
// random 127.0.0.1 ports under one state directory. It is what `make demo`
// and `make bench` stand on.
//
//	go run ./test/devstack --dir demo
//
// Once everything answers it writes DIR/vault-token (the root token, mode
// 0600) and DIR/stack.env, a shell file to source:
//
//	. demo/stack.env
//	psql "$PG_SUPER_DSN"          # the real server, as the superuser
//	VAULT_TOKEN=$(cat "$VAULT_TOKEN_FILE") \
//	    "$VAULT_BIN_DIR/vault" read "$VAULT_MOUNT/creds/$VAULT_PG_ROLE"
//
// stack.env appears only when the stack is ready (it is written to a temporary
// name and renamed), so a script can start devstack in the background and
// wait for the file. devstack then stays in the foreground until SIGINT or
// SIGTERM, stops every server and removes stack.env and vault-token.
//
// The process you start is a small supervisor: it runs the real devstack as
// its child with a parent-death signal and forwards SIGINT/SIGTERM to it, so
// the servers are stopped the orderly way (whole process groups, Vault's
// plugins included) even when the supervisor is killed with SIGKILL.
//
// Each start is fresh: the server directories under DIR (pg/, vault/,
// mariadb/) are removed first; logs stay after exit for inspection. A lock
// file keeps two devstacks out of one DIR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

type options struct {
	dir        string
	mariadb    bool
	mount      string
	pgRole     string
	mysqlRole  string
	ttl        time.Duration
	maxTTL     time.Duration
	startLimit time.Duration
}

// workerEnv marks the child that does the work (see supervise).
const workerEnv = "DBPROXY_DEVSTACK_WORKER"

// The main goroutine stays on the main thread, which lives as long as the
// process: the worker's parent-death signal fires when the thread that
// forked it exits, not only the process.
func init() { runtime.LockOSThread() }

func main() {
	if os.Getenv(workerEnv) == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(supervise(os.Args[1:]))
}

// supervise runs this program again as the worker, with SIGTERM as its
// parent-death signal, forwards SIGINT and SIGTERM to it, and exits with its
// status. Only the worker starts servers; if the supervisor is SIGKILLed the
// worker still shuts them down in order. (The servers' own parent-death
// signals are a last resort only: a Vault dev server killed that way leaves
// its plugin processes behind.)
func supervise(args []string) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "devstack: %v\n", err)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), workerEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "devstack: start worker: %v\n", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err := <-done:
			var ee *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &ee) && ee.ExitCode() >= 0:
				return ee.ExitCode()
			default:
				fmt.Fprintf(os.Stderr, "devstack: worker: %v\n", err)
				return 1
			}
		}
	}
}

func run(args []string) int {
	var o options
	fs := flag.NewFlagSet("devstack", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", "demo", "state directory: server data, logs, vault-token and stack.env")
	fs.BoolVar(&o.mariadb, "mariadb", false, "also start MariaDB and configure a MySQL role")
	fs.StringVar(&o.mount, "mount", "database", "Vault database secrets engine mount")
	fs.StringVar(&o.pgRole, "pg-role", "pg-app", "Vault role for PostgreSQL (database/creds/ROLE)")
	fs.StringVar(&o.mysqlRole, "mysql-role", "mysql-app", "Vault role for MariaDB (with --mariadb)")
	fs.DurationVar(&o.ttl, "ttl", time.Hour, "default TTL of the roles' leases")
	fs.DurationVar(&o.maxTTL, "max-ttl", 24*time.Hour, "max TTL (hard end) of the roles' leases")
	fs.DurationVar(&o.startLimit, "start-timeout", 15*time.Minute, "limit for building Vault (cold: minutes) and starting the servers")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: devstack [flags]\n\nStarts PostgreSQL, Vault (and MariaDB) for dbproxy demos and benchmarks,\nwrites DIR/stack.env when ready and runs until SIGINT/SIGTERM.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "devstack: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if o.ttl <= 0 || o.maxTTL < o.ttl {
		fmt.Fprintf(os.Stderr, "devstack: want 0 < --ttl (%v) <= --max-ttl (%v)\n", o.ttl, o.maxTTL)
		return 2
	}

	// Signals cancel startup as well as end the run; everything started
	// is stopped on the way out, whatever the reason.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	defer harness.StopAll()

	if err := serve(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "devstack: %v\n", err)
		return 1
	}
	return 0
}

// stack is what serve started.
type stack struct {
	pg    *harness.Postgres
	maria *harness.MariaDB
	vault *harness.Vault
}

func serve(ctx context.Context, o options) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()

	envPath := filepath.Join(dir, "stack.env")
	tokenPath := filepath.Join(dir, "vault-token")
	// Nothing of a previous run may look current.
	for _, p := range []string{envPath, tokenPath, filepath.Join(dir, "pg"), filepath.Join(dir, "vault"), filepath.Join(dir, "mariadb")} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("clean %s: %w", p, err)
		}
	}

	began := time.Now()
	logf("starting in %s (PostgreSQL%s, Vault)", dir, map[bool]string{true: ", MariaDB"}[o.mariadb])
	sctx, cancel := context.WithTimeout(ctx, o.startLimit)
	s, err := start(sctx, dir, o)
	cancel()
	defer s.stop()
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted during startup; servers stopped")
		}
		return err
	}

	if err := s.vault.WriteTokenFile(tokenPath); err != nil {
		return err
	}
	defer os.Remove(tokenPath)
	if err := writeEnv(envPath, stackEnv(s, o, dir, tokenPath)); err != nil {
		return err
	}
	defer os.Remove(envPath)

	logf("ready in %v", time.Since(began).Round(time.Millisecond))
	logf("postgres %s (%s), superuser %s, database %s; log %s", s.pg.Addr(), s.pg.Version, s.pg.SuperUser, s.pg.Database, s.pg.LogPath)
	if s.maria != nil {
		logf("mariadb  %s (%s); log %s", s.maria.Addr(), s.maria.Version, s.maria.LogPath)
	}
	logf("vault    %s, roles %s; token file %s; log %s", s.vault.Addr, strings.Join(roles(o), ", "), tokenPath, s.vault.LogPath)
	logf("environment: . %s", envPath)
	logf("running until SIGINT/SIGTERM (pid %d)", os.Getppid())

	<-ctx.Done()
	logf("signal received, stopping")
	return nil
}

// start starts the servers concurrently and configures Vault. On error the
// returned stack holds whatever did start, for stop.
func start(ctx context.Context, dir string, o options) (*stack, error) {
	s := &stack{}
	var (
		wg                        sync.WaitGroup
		pgErr, mariaErr, vaultErr error
	)
	wg.Go(func() { s.pg, pgErr = harness.StartPostgres(ctx, filepath.Join(dir, "pg")) })
	if o.mariadb {
		wg.Go(func() { s.maria, mariaErr = harness.StartMariaDB(ctx, filepath.Join(dir, "mariadb")) })
	}
	wg.Go(func() {
		bin, err := harness.BuildVault(ctx)
		if err != nil {
			vaultErr = err
			return
		}
		s.vault, vaultErr = harness.StartVault(ctx, filepath.Join(dir, "vault"), bin)
	})
	wg.Wait()
	if err := errors.Join(pgErr, mariaErr, vaultErr); err != nil {
		return s, err
	}
	err := s.vault.ConfigurePostgres(ctx, s.pg, harness.RoleOptions{
		Mount: o.mount, Role: o.pgRole, DefaultTTL: o.ttl, MaxTTL: o.maxTTL,
	})
	if err == nil && s.maria != nil {
		err = s.vault.ConfigureMySQL(ctx, s.maria, harness.RoleOptions{
			Mount: o.mount, Role: o.mysqlRole, DefaultTTL: o.ttl, MaxTTL: o.maxTTL,
		})
	}
	if err != nil {
		return s, fmt.Errorf("configure vault: %w\n%s", err, s.vault.LogTail())
	}
	return s, nil
}

// stop stops Vault first (it holds connections to the databases), then the
// databases. Safe on a partly started stack.
func (s *stack) stop() {
	if s == nil {
		return
	}
	if s.vault != nil {
		if err := s.vault.Stop(); err != nil {
			logf("stop vault: %v", err)
		}
	}
	if s.maria != nil {
		if err := s.maria.Stop(); err != nil {
			logf("stop mariadb: %v", err)
		}
	}
	if s.pg != nil {
		if err := s.pg.Stop(); err != nil {
			logf("stop postgres: %v", err)
		}
	}
	logf("stopped")
}

func roles(o options) []string {
	r := []string{o.mount + "/creds/" + o.pgRole}
	if o.mariadb {
		r = append(r, o.mount+"/creds/"+o.mysqlRole)
	}
	return r
}

// stackEnv is the content of stack.env: where everything listens and how
// to log in. PGHOST/PGPORT/PGDATABASE point at the real server; the
// superuser's name and password get their own names so that sourcing the
// file never makes a client send them elsewhere (e.g. to dbproxy).
func stackEnv(s *stack, o options, dir, tokenPath string) map[string]string {
	env := map[string]string{
		"DEVSTACK_DIR":      dir,
		"DEVSTACK_PID":      strconv.Itoa(os.Getppid()), // the supervisor
		"PGHOST":            s.pg.Host,
		"PGPORT":            strconv.Itoa(s.pg.Port),
		"PGDATABASE":        s.pg.Database,
		"PG_ADDR":           s.pg.Addr(),
		"PG_SUPERUSER":      s.pg.SuperUser,
		"PG_SUPERPASSWORD":  s.pg.SuperPassword,
		"PG_SUPER_DSN":      s.pg.SuperDSN(),
		"PG_SOCKET_DIR":     s.pg.SocketDir,
		"PG_BINDIR":         s.pg.BinDir,
		"PG_VERSION":        s.pg.Version,
		"PG_LOG":            s.pg.LogPath,
		"VAULT_ADDR":        s.vault.Addr,
		"VAULT_TOKEN_FILE":  tokenPath,
		"VAULT_BIN_DIR":     s.vault.BinDir,
		"VAULT_LOG":         s.vault.LogPath,
		"VAULT_MOUNT":       o.mount,
		"VAULT_PG_ROLE":     o.pgRole,
		"VAULT_ROLE_TTL":    o.ttl.String(),
		"VAULT_ROLE_MAXTTL": o.maxTTL.String(),
	}
	if m := s.maria; m != nil {
		env["MYSQL_HOST"] = m.Host
		env["MYSQL_TCP_PORT"] = strconv.Itoa(m.Port)
		env["MARIADB_ADDR"] = m.Addr()
		env["MARIADB_ADMIN_USER"] = m.AdminUser
		env["MARIADB_ADMIN_PASSWORD"] = m.AdminPassword
		env["MARIADB_DATABASE"] = m.Database
		env["MARIADB_SOCKET"] = m.Socket
		env["MARIADB_VERSION"] = m.Version
		env["MARIADB_LOG"] = m.LogPath
		env["VAULT_MYSQL_ROLE"] = o.mysqlRole
	}
	return env
}

// writeEnv writes KEY='value' export lines to path atomically (mode 0600:
// the file holds passwords).
func writeEnv(path string, env map[string]string) error {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by test/devstack; valid while it runs (it removes this file on exit).\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(env[k]))
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// lockDir takes DIR/devstack.lock (flock) so two devstacks never share a
// directory; the lock goes away with the process however it ends.
func lockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "devstack.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("another devstack runs in %s (pid %s); stop it first", dir, strings.TrimSpace(string(b)))
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getppid())+"\n"), 0)
	return func() { f.Close() }, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "devstack: %s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
