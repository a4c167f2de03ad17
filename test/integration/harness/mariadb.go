package harness

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MariaDB is a MariaDB 10.11 server started by StartMariaDB, listening on
// 127.0.0.1 and on Socket. Anonymous accounts are deleted, so '%' accounts
// (Vault's) work from 127.0.0.1.
type MariaDB struct {
	Host          string // always 127.0.0.1
	Port          int
	AdminUser     string // "vaultadmin"@'%', ALL PRIVILEGES WITH GRANT OPTION
	AdminPassword string
	Database      string // "appdb"
	Socket        string
	Dir           string // holds data/, the socket and mariadb.log
	DataDir       string
	LogPath       string
	Version       string // `mariadbd --version`

	proc     *process
	mariadbd string // the binary, for Restart
}

// StartMariaDB initializes a data directory under dir (created if missing)
// with mariadb-install-db and starts mariadbd on a free 127.0.0.1 port, with
// the admin account 'vaultadmin'@'%' (random password) and a database "appdb".
func StartMariaDB(ctx context.Context, dir string) (*MariaDB, error) {
	mariadbd, err := findBinary("mariadbd", os.Getenv("DBPROXY_MARIADBD"), "mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
	if err != nil {
		return nil, err
	}
	installDB, err := findBinary("mariadb-install-db", "mariadb-install-db", "/usr/bin/mariadb-install-db", "mysql_install_db")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("mariadb: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mariadb: %w", err)
	}
	m := &MariaDB{
		Host:          "127.0.0.1",
		AdminUser:     "vaultadmin",
		AdminPassword: randomSecret(16),
		Database:      "appdb",
		Dir:           abs,
		DataDir:       filepath.Join(abs, "data"),
		Socket:        filepath.Join(abs, "mariadb.sock"),
		LogPath:       filepath.Join(abs, "mariadb.log"),
	}
	if len(m.Socket) > 100 { // unix socket paths are limited to 107 bytes
		s, err := os.MkdirTemp("/tmp", "mdb-")
		if err != nil {
			return nil, fmt.Errorf("mariadb: %w", err)
		}
		m.Socket = filepath.Join(s, "mariadb.sock")
	}
	if out, err := exec.Command(mariadbd, "--version").Output(); err == nil {
		m.Version = strings.TrimSpace(string(out))
	}

	// --no-defaults must come first: never read /etc/mysql/*.cnf.
	args := []string{"--no-defaults", "--datadir=" + m.DataDir, "--skip-test-db", "--skip-name-resolve",
		"--auth-root-authentication-method=socket"}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	cmd := exec.Command(installDB, args...)
	cmd.Dir = m.Dir
	cmd.Env = childEnv(m.Dir)
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = runLogged(ictx, "mariadb-install-db", cmd, filepath.Join(m.Dir, "install-db.log"), nil)
	cancel()
	if err != nil {
		return nil, err
	}

	// The init file runs with full privileges before the server accepts
	// connections, whatever OS user we are (no unix_socket login needed).
	initSQL := fmt.Sprintf(`DELETE FROM mysql.global_priv WHERE User = '';
CREATE OR REPLACE USER '%[1]s'@'%%' IDENTIFIED BY '%[2]s';
GRANT ALL PRIVILEGES ON *.* TO '%[1]s'@'%%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS %[3]s;
FLUSH PRIVILEGES;
`, m.AdminUser, m.AdminPassword, m.Database)
	if err := os.WriteFile(filepath.Join(m.Dir, "init.sql"), []byte(initSQL), 0o600); err != nil {
		return nil, fmt.Errorf("mariadb: %w", err)
	}
	for attempt := 1; ; attempt++ {
		err = m.start(ctx, mariadbd)
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *MariaDB) start(ctx context.Context, mariadbd string) error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	return m.startOn(ctx, mariadbd, port)
}

func (m *MariaDB) startOn(ctx context.Context, mariadbd string, port int) error {
	m.Port = port
	m.mariadbd = mariadbd
	tmp := filepath.Join(m.Dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("mariadb: %w", err)
	}
	args := []string{
		"--no-defaults",
		"--datadir=" + m.DataDir,
		"--socket=" + m.Socket,
		"--port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--pid-file=" + filepath.Join(m.Dir, "mariadb.pid"),
		"--log-error=" + m.LogPath,
		"--tmpdir=" + tmp,
		"--init-file=" + filepath.Join(m.Dir, "init.sql"),
		"--skip-name-resolve",
		"--skip-log-bin",
		"--max-connections=300",
		"--innodb-buffer-pool-size=64M",
		"--innodb-flush-log-at-trx-commit=2",
		"--innodb-doublewrite=0",
		"--character-set-server=utf8mb4",
		"--collation-server=utf8mb4_general_ci",
		// DBAs see dbproxy's connection attributes (program_name) in
		// performance_schema.session_connect_attrs; tests check them.
		"--performance-schema=ON",
	}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	cmd := exec.Command(mariadbd, args...)
	cmd.Dir = m.Dir
	cmd.Env = childEnv(m.Dir)
	// stdout/stderr go to a side file; the server writes its own log to LogPath.
	p, err := startProcess("mariadbd", cmd, filepath.Join(m.Dir, "mariadbd.out"), syscall.SIGKILL, nil)
	if err != nil {
		return err
	}
	p.logPath = m.LogPath
	p.stopSig, p.stopGrace = syscall.SIGTERM, 20*time.Second
	m.proc = p
	err = waitReady(ctx, p, 60*time.Second, func() error {
		db, err := sql.Open("mysql", m.DSN(m.AdminUser, m.AdminPassword, m.Database))
		if err != nil {
			return err
		}
		defer db.Close()
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return db.PingContext(cctx)
	})
	if err != nil {
		_ = p.stop(syscall.SIGKILL, 5*time.Second)
		if logContains(m.LogPath, "Address already in use") {
			return fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("mariadb: %w", err)
	}
	return nil
}

// Addr is host:port for TCP clients.
func (m *MariaDB) Addr() string { return net.JoinHostPort(m.Host, strconv.Itoa(m.Port)) }

// DSN returns a github.com/go-sql-driver/mysql DSN over TCP.
func (m *MariaDB) DSN(user, password, db string) string {
	c := mysql.NewConfig()
	c.User = user
	c.Passwd = password
	c.Net = "tcp"
	c.Addr = m.Addr()
	c.DBName = db
	c.Timeout = 5 * time.Second
	return c.FormatDSN()
}

// AdminDSN is DSN for the admin account and Database.
func (m *MariaDB) AdminDSN() string { return m.DSN(m.AdminUser, m.AdminPassword, m.Database) }

// Exec runs one SQL statement as the admin account in Database.
func (m *MariaDB) Exec(ctx context.Context, query string) error {
	db, err := sql.Open("mysql", m.AdminDSN())
	if err != nil {
		return fmt.Errorf("mariadb: %w", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, query); err != nil {
		return fmt.Errorf("mariadb: exec %q: %w", truncate(query), err)
	}
	return nil
}

// Stop shuts the server down (SIGTERM) and kills it after 20s. It is safe
// to call more than once.
func (m *MariaDB) Stop() error {
	if m.proc == nil {
		return nil
	}
	err := m.proc.stop(m.proc.stopSig, m.proc.stopGrace)
	if !strings.HasPrefix(m.Socket, m.Dir+"/") {
		_ = os.RemoveAll(filepath.Dir(m.Socket))
	}
	return err
}

// LogTail returns the last lines of the server log, for test failure output.
func (m *MariaDB) LogTail() string { return logTail(m.LogPath) }

// Restart shuts the server down (SIGTERM: sessions are closed), keeps it
// down for down, and starts it again on the same port and data directory.
func (m *MariaDB) Restart(ctx context.Context, down time.Duration) error {
	if m.proc == nil {
		return fmt.Errorf("mariadb is not running")
	}
	if err := m.proc.stop(m.proc.stopSig, m.proc.stopGrace); err != nil {
		return fmt.Errorf("mariadb: stop: %w", err)
	}
	time.Sleep(down)
	return m.startOn(ctx, m.mariadbd, m.Port)
}

// Stall freezes the server with SIGSTOP for d, then lets it go on with
// SIGCONT: a database that stops answering without closing anything.
func (m *MariaDB) Stall(d time.Duration) error {
	if m.proc == nil || m.proc.cmd.Process == nil {
		return fmt.Errorf("mariadb is not running")
	}
	pid := m.proc.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("mariadb: %w", err)
	}
	time.Sleep(d)
	return syscall.Kill(pid, syscall.SIGCONT)
}
