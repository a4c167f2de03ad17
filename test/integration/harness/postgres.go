package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a PostgreSQL 15 server started by StartPostgres. TCP logins
// on 127.0.0.1 use scram-sha-256; the unix socket in SocketDir trusts all.
type Postgres struct {
	Host          string // always 127.0.0.1
	Port          int
	SuperUser     string // "vaultadmin", a superuser; Vault's connection user
	SuperPassword string
	Database      string // "appdb"
	Dir           string // holds data/, the socket dir and postgres.log
	DataDir       string
	SocketDir     string
	LogPath       string
	BinDir        string // where initdb and postgres were found
	Version       string // `postgres --version`

	proc    *process
	cred    *syscall.Credential // non-nil when running as root: the server's user
	ownsDir bool                // Dir was created by StartPostgres outside the caller's dir
}

// PostgresBinDir is where StartPostgres looks for initdb and postgres first
// (override with DBPROXY_PG_BINDIR); after that it tries PATH.
const PostgresBinDir = "/usr/lib/postgresql/15/bin"

// StartPostgres initializes a cluster under dir (created if missing) and
// starts PostgreSQL listening on 127.0.0.1 on a free port, with the
// superuser "vaultadmin" (random password) and a database "appdb". When the
// test runs as root, the server runs as the "postgres" (else "nobody") user.
func StartPostgres(ctx context.Context, dir string) (*Postgres, error) {
	var envInitdb string
	if d := os.Getenv("DBPROXY_PG_BINDIR"); d != "" {
		envInitdb = filepath.Join(d, "initdb")
	}
	initdb, err := findBinary("initdb", envInitdb, PostgresBinDir+"/initdb", "initdb")
	if err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(initdb); err == nil {
		initdb = real // postgres lives next to the real initdb, not its symlink
	}
	bin := filepath.Dir(initdb)
	pg := &Postgres{
		Host:          "127.0.0.1",
		SuperUser:     "vaultadmin",
		SuperPassword: randomSecret(16),
		Database:      "appdb",
		BinDir:        bin,
	}
	if out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output(); err == nil {
		pg.Version = strings.TrimSpace(string(out))
	}
	if err := pg.prepareDir(dir); err != nil {
		return nil, err
	}
	if err := pg.initdb(ctx); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		err = pg.start(ctx)
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if err := pg.Exec(ctx, "CREATE DATABASE "+pg.Database); err != nil {
		_ = pg.Stop()
		return nil, err
	}
	return pg, nil
}

// prepareDir creates the directories, and as root makes them the server
// user's and reachable by it.
func (pg *Postgres) prepareDir(dir string) error {
	if os.Geteuid() == 0 {
		cred, err := unprivilegedUser()
		if err != nil {
			return err
		}
		pg.cred = cred
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	pg.Dir = abs
	if pg.cred != nil && !ensureTraversable(abs) {
		// e.g. dir is under a 0700 directory of root's: use a directory
		// in /tmp instead and remove it on Stop.
		tmp, err := os.MkdirTemp("/tmp", "dbproxy-pg-")
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		pg.Dir, pg.ownsDir = tmp, true
	}
	pg.DataDir = filepath.Join(pg.Dir, "data")
	pg.SocketDir = filepath.Join(pg.Dir, "sock")
	pg.LogPath = filepath.Join(pg.Dir, "postgres.log")
	if len(pg.SocketDir)+len("/.s.PGSQL.65535.lock") > 100 {
		// unix socket paths are limited to 107 bytes
		s, err := os.MkdirTemp("/tmp", "pgs-")
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		pg.SocketDir = s
	}
	for _, d := range []string{pg.Dir, pg.SocketDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		if pg.cred != nil {
			if err := os.Chown(d, int(pg.cred.Uid), int(pg.cred.Gid)); err != nil {
				return fmt.Errorf("postgres: %w", err)
			}
		}
	}
	return nil
}

func (pg *Postgres) initdb(ctx context.Context) error {
	pwfile := filepath.Join(pg.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(pg.SuperPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer os.Remove(pwfile)
	if pg.cred != nil {
		if err := os.Chown(pwfile, int(pg.cred.Uid), int(pg.cred.Gid)); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
	}
	cmd := exec.Command(filepath.Join(pg.BinDir, "initdb"),
		"-D", pg.DataDir,
		"--username="+pg.SuperUser, "--pwfile="+pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256",
		"--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
	cmd.Dir = pg.Dir
	cmd.Env = childEnv(pg.Dir)
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return runLogged(ictx, "initdb", cmd, filepath.Join(pg.Dir, "initdb.log"), pg.cred)
}

func (pg *Postgres) start(ctx context.Context) error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	return pg.startOn(ctx, port)
}

func (pg *Postgres) startOn(ctx context.Context, port int) error {
	pg.Port = port
	cmd := exec.Command(filepath.Join(pg.BinDir, "postgres"),
		"-D", pg.DataDir,
		"-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+pg.SocketDir,
		"-c", "max_connections=200",
		"-c", "shared_buffers=32MB",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "logging_collector=off",
		"-c", "log_connections=on",
		"-c", "log_disconnections=on",
		"-c", "log_line_prefix=%m [%p] %q%u@%d ",
	)
	cmd.Dir = pg.Dir
	cmd.Env = childEnv(pg.Dir)
	// SIGQUIT is immediate shutdown: the postmaster takes its backends down.
	p, err := startProcess("postgres", cmd, pg.LogPath, syscall.SIGQUIT, pg.cred)
	if err != nil {
		return err
	}
	p.stopSig, p.stopGrace = syscall.SIGINT, 15*time.Second
	pg.proc = p
	err = waitReady(ctx, p, 60*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := pgx.Connect(cctx, pg.DSN(pg.SuperUser, pg.SuperPassword, "postgres"))
		if err != nil {
			return err
		}
		return c.Close(cctx)
	})
	if err != nil {
		_ = p.stop(syscall.SIGQUIT, 5*time.Second)
		if logContains(pg.LogPath, "Address already in use") {
			return fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

// Addr is host:port for TCP clients.
func (pg *Postgres) Addr() string { return net.JoinHostPort(pg.Host, strconv.Itoa(pg.Port)) }

// DSN returns a postgres:// URL for pgx (TCP, sslmode=disable).
func (pg *Postgres) DSN(user, password, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     pg.Addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// SuperDSN is DSN for the superuser and Database.
func (pg *Postgres) SuperDSN() string { return pg.DSN(pg.SuperUser, pg.SuperPassword, pg.Database) }

// Exec runs SQL (one or more statements) as the superuser in Database, or in
// "postgres" before Database exists.
func (pg *Postgres) Exec(ctx context.Context, sql string) error {
	db := pg.Database
	if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(sql)), "CREATE DATABASE") {
		db = "postgres"
	}
	c, err := pgx.Connect(ctx, pg.DSN(pg.SuperUser, pg.SuperPassword, db))
	if err != nil {
		return fmt.Errorf("postgres: connect as %s: %w", pg.SuperUser, err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, sql); err != nil {
		return fmt.Errorf("postgres: exec %q: %w", truncate(sql), err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: sessions are terminated) and
// kills it after 15s. It is safe to call more than once.
func (pg *Postgres) Stop() error {
	if pg.proc == nil {
		return nil
	}
	err := pg.proc.stop(pg.proc.stopSig, pg.proc.stopGrace)
	if pg.ownsDir {
		_ = os.RemoveAll(pg.Dir)
	}
	if !strings.HasPrefix(pg.SocketDir, pg.Dir+"/") {
		_ = os.RemoveAll(pg.SocketDir)
	}
	return err
}

// LogTail returns the last lines of the server log, for test failure output.
func (pg *Postgres) LogTail() string { return logTail(pg.LogPath) }

// unprivilegedUser is the account PostgreSQL runs as when the test runs as
// root: "postgres" (made by the Debian package), else "nobody".
func unprivilegedUser() (*syscall.Credential, error) {
	var errs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	return nil, fmt.Errorf("postgres cannot run as root and no unprivileged user was found: %w", errors.Join(errs...))
}

// ensureTraversable makes every directory above path enter-able by others
// (o+x) so an unprivileged server can reach path. It only changes
// directories this process owns below the temp dir (e.g. the 0700 dirs of
// os.MkdirTemp and t.TempDir) and reports false if another one is closed.
func ensureTraversable(path string) bool {
	tmp := filepath.Clean(os.TempDir())
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return false
		}
		if fi.Mode().Perm()&0o001 == 0 {
			st, ok := fi.Sys().(*syscall.Stat_t)
			under := strings.HasPrefix(d, tmp+"/") || strings.HasPrefix(d, "/tmp/")
			if !ok || int(st.Uid) != os.Geteuid() || !under {
				return false
			}
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return false
			}
		}
		if d == "/" || d == "." {
			return true
		}
	}
}

// childEnv is the environment of a server: ours without client settings
// that could leak in (PG*, MYSQL*, VAULT_*), with HOME set to dir.
func childEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "HOME", strings.HasPrefix(k, "PG"), strings.HasPrefix(k, "MYSQL"), strings.HasPrefix(k, "VAULT_"):
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home, "LC_ALL=C")
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// Restart shuts the server down as `pg_ctl restart -m fast` would
// (sessions are terminated), keeps it down for down, and starts it again
// on the same port and data directory.
func (pg *Postgres) Restart(ctx context.Context, down time.Duration) error {
	if pg.proc == nil {
		return fmt.Errorf("postgres is not running")
	}
	if err := pg.proc.stop(pg.proc.stopSig, pg.proc.stopGrace); err != nil {
		return fmt.Errorf("postgres: stop: %w", err)
	}
	time.Sleep(down)
	return pg.startOn(ctx, pg.Port)
}

// Stall freezes the whole server (the postmaster and every backend) with
// SIGSTOP for d, then lets it go on with SIGCONT: a database that stops
// answering without closing anything, as under a long I/O stall or a VM
// pause.
func (pg *Postgres) Stall(d time.Duration) error {
	pids := pg.pids()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	time.Sleep(d)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	if len(pids) == 0 {
		return fmt.Errorf("postgres is not running")
	}
	return nil
}

// pids returns the postmaster and its children.
func (pg *Postgres) pids() []int {
	if pg.proc == nil || pg.proc.cmd.Process == nil {
		return nil
	}
	root := pg.proc.cmd.Process.Pid
	pids := []int{root}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 && f[1] == strconv.Itoa(root) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
