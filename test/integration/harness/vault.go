package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
)

// VaultBinaries are the files BuildVault produces and StartVault needs.
var VaultBinaries = []string{"vault", "postgresql-database-plugin", "mysql-database-plugin"}

// Vault is a Vault dev server (in-memory storage, unsealed, root token
// Token) started by StartVault, with the PostgreSQL and MySQL database
// plugins registered from its plugin directory.
//
// Dev mode keeps everything in memory: after Stop and Start all mounts,
// roles, leases and tokens are gone (the root token is recreated, Addr stays
// the same); call Reconfigure to re-apply the Configure* calls. To simulate
// "Vault unreachable" with state kept, use Pause and Resume instead.
type Vault struct {
	Addr    string // http://127.0.0.1:PORT
	Port    int
	Token   string // root token
	Client  *api.Client
	Dir     string // holds plugins/ and vault.log
	BinDir  string
	LogPath string

	mu     sync.Mutex
	proc   *process
	paused bool
	replay []func(context.Context) error
}

// StartVault starts `vault server -dev` from binDir (see BuildVault) on a
// free 127.0.0.1 port with a random root token, and waits until it is
// unsealed and answers.
func StartVault(ctx context.Context, dir, binDir string) (*Vault, error) {
	for _, b := range VaultBinaries {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return nil, fmt.Errorf("vault: %w (run scripts/build-vault.sh)", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	v := &Vault{
		Token:   "root-" + randomSecret(12),
		Dir:     abs,
		BinDir:  binDir,
		LogPath: filepath.Join(abs, "vault.log"),
	}
	// -dev-plugin-dir registers every file in it, so give it a directory
	// with only the two plugins (symlinks are refused by Vault: link or copy).
	plugins := filepath.Join(abs, "plugins")
	if err := os.MkdirAll(plugins, 0o755); err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	for _, b := range VaultBinaries[1:] {
		if err := linkOrCopy(filepath.Join(binDir, b), filepath.Join(plugins, b)); err != nil {
			return nil, fmt.Errorf("vault: plugin %s: %w", b, err)
		}
	}
	for attempt := 1; ; attempt++ {
		port, perr := FreePort()
		if perr != nil {
			return nil, perr
		}
		v.setPort(port)
		err = v.Start(ctx)
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

func (v *Vault) setPort(port int) {
	v.Port = port
	v.Addr = "http://127.0.0.1:" + strconv.Itoa(port)
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	cfg.Timeout = 30 * time.Second
	c, err := api.NewClient(cfg)
	if err != nil {
		panic(err) // only fails on a bad config, which this is not
	}
	c.SetToken(v.Token)
	v.Client = c
}

// Start starts the server again after Stop, on the same port and with the
// same root token, and waits until it is ready. The dev server starts
// empty: call Reconfigure to restore the Configure* calls.
func (v *Vault) Start(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != nil && !v.proc.exited() {
		return errors.New("vault: already running")
	}
	cmd := exec.Command(filepath.Join(v.BinDir, "vault"), "server", "-dev",
		"-dev-root-token-id="+v.Token,
		"-dev-listen-address=127.0.0.1:"+strconv.Itoa(v.Port),
		"-dev-plugin-dir="+filepath.Join(v.Dir, "plugins"),
		"-dev-no-store-token",
		"-log-level=info",
	)
	cmd.Dir = v.Dir
	cmd.Env = childEnv(v.Dir) // HOME too: the dev server may write ~/.vault-token
	// The plugins' unix sockets go to TMPDIR: keep them in our directory
	// when the path stays short enough for a socket.
	if tmp := filepath.Join(v.Dir, "tmp"); len(tmp) < 80 {
		if err := os.MkdirAll(tmp, 0o700); err == nil {
			cmd.Env = append(cmd.Env, "TMPDIR="+tmp)
		}
	}
	// SIGTERM lets Vault stop its plugin processes on the way out.
	p, err := startProcess("vault", cmd, v.LogPath, syscall.SIGTERM, nil)
	if err != nil {
		return err
	}
	p.stopSig, p.stopGrace = syscall.SIGTERM, 15*time.Second
	v.proc, v.paused = p, false
	err = waitReady(ctx, p, 60*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		h, err := v.Client.Sys().HealthWithContext(cctx)
		if err != nil {
			return err
		}
		if !h.Initialized || h.Sealed {
			return fmt.Errorf("initialized=%v sealed=%v", h.Initialized, h.Sealed)
		}
		// The root token works and the plugins are in the catalog.
		for _, name := range VaultBinaries[1:] {
			if _, err := v.Client.Sys().GetPluginWithContext(cctx, &api.GetPluginInput{Name: name, Type: api.PluginTypeDatabase}); err != nil {
				return fmt.Errorf("plugin %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		_ = p.stop(syscall.SIGKILL, 5*time.Second)
		if logContains(v.LogPath, "address already in use") {
			return fmt.Errorf("%w: vault: %w", errAddrInUse, err)
		}
		return fmt.Errorf("vault: %w", err)
	}
	return nil
}

// Stop shuts the server down (SIGTERM, SIGKILL after 15s), plugins
// included. All its state is lost. Safe to call more than once.
func (v *Vault) Stop() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil {
		return nil
	}
	v.paused = false
	return v.proc.stop(v.proc.stopSig, v.proc.stopGrace)
}

// Pause freezes the server and its plugins (SIGSTOP): connections are
// accepted by the kernel but nothing answers, so clients time out, the way
// an unreachable Vault looks. State is kept; Resume continues.
func (v *Vault) Pause() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil {
		return errors.New("vault: not started")
	}
	if err := v.proc.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	v.paused = true
	return nil
}

// Resume continues a paused server (SIGCONT).
func (v *Vault) Resume() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil {
		return errors.New("vault: not started")
	}
	if err := v.proc.signal(syscall.SIGCONT); err != nil {
		return err
	}
	v.paused = false
	return nil
}

// Paused reports whether Pause was called without Resume.
func (v *Vault) Paused() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.paused
}

// LogTail returns the last lines of the server log, for test failure output.
func (v *Vault) LogTail() string { return logTail(v.LogPath) }

// WriteTokenFile writes the root token to path (mode 0600, no newline), the
// format of a Vault agent token sink.
func (v *Vault) WriteTokenFile(path string) error {
	if err := os.WriteFile(path, []byte(v.Token), 0o600); err != nil {
		return fmt.Errorf("vault: token file: %w", err)
	}
	return nil
}

// TokenOptions describe a token made by CreateToken.
type TokenOptions struct {
	Policies       []string      // nil: ["root"]
	TTL            time.Duration // 0: Vault's default (32 days in dev mode)
	ExplicitMaxTTL time.Duration // 0: none
	NoRenew        bool          // make the token non-renewable
}

// CreateToken creates an orphan token, e.g. with short TTLs to test token
// renewal and re-login.
func (v *Vault) CreateToken(ctx context.Context, o TokenOptions) (string, error) {
	renewable := !o.NoRenew
	req := &api.TokenCreateRequest{Policies: o.Policies, Renewable: &renewable, NoParent: true}
	if req.Policies == nil {
		req.Policies = []string{"root"}
	}
	if o.TTL > 0 {
		req.TTL = o.TTL.String()
	}
	if o.ExplicitMaxTTL > 0 {
		req.ExplicitMaxTTL = o.ExplicitMaxTTL.String()
	}
	s, err := v.Client.Auth().Token().CreateOrphanWithContext(ctx, req)
	if err != nil {
		return "", fmt.Errorf("vault: create token: %w", err)
	}
	return s.Auth.ClientToken, nil
}

// RoleOptions describe a database secrets engine role.
type RoleOptions struct {
	Mount      string        // secrets engine path; default "database"
	Connection string        // connection name; default "pg" / "mysql"
	Role       string        // role name (database/creds/ROLE); required
	DefaultTTL time.Duration // lease TTL; default 1h
	MaxTTL     time.Duration // hard end of a lease; default 24h

	// Statements replace the defaults (PostgresCreation etc.) when set.
	CreationStatements   []string
	RevocationStatements []string
}

// Default statements, with Vault's templates. The PostgreSQL ones follow
// the Vault documentation; the grants give read-write access to appdb.
var (
	PostgresCreation = []string{
		`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
		`GRANT CONNECT ON DATABASE appdb TO "{{name}}";`,
		`GRANT USAGE ON SCHEMA public TO "{{name}}";`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{{name}}";`,
		`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{{name}}";`,
	}
	PostgresRevocation = []string{
		`REASSIGN OWNED BY "{{name}}" TO vaultadmin;`,
		`DROP OWNED BY "{{name}}";`,
		`DROP ROLE IF EXISTS "{{name}}";`,
	}
	MySQLCreation = []string{
		`CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}';`,
		`GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES ON appdb.* TO '{{name}}'@'%';`,
	}
	MySQLRevocation = []string{
		`DROP USER IF EXISTS '{{name}}'@'%';`,
	}
)

// ConfigurePostgres enables the database secrets engine at o.Mount (if it
// is not yet), points connection o.Connection at pg's appdb as vaultadmin
// and creates role o.Role. Reconfigure repeats it.
func (v *Vault) ConfigurePostgres(ctx context.Context, pg *Postgres, o RoleOptions) error {
	o = o.withDefaults("pg", PostgresCreation, PostgresRevocation)
	conn := map[string]any{
		"plugin_name": "postgresql-database-plugin",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@%s/%s?sslmode=disable",
			pg.Addr(), pg.Database),
		"username":      pg.SuperUser,
		"password":      pg.SuperPassword,
		"allowed_roles": "*",
	}
	return v.configure(ctx, o, conn)
}

// ConfigureMySQL is ConfigurePostgres for MariaDB (mysql-database-plugin).
func (v *Vault) ConfigureMySQL(ctx context.Context, m *MariaDB, o RoleOptions) error {
	o = o.withDefaults("mysql", MySQLCreation, MySQLRevocation)
	conn := map[string]any{
		"plugin_name":    "mysql-database-plugin",
		"connection_url": fmt.Sprintf("{{username}}:{{password}}@tcp(%s)/", m.Addr()),
		"username":       m.AdminUser,
		"password":       m.AdminPassword,
		"allowed_roles":  "*",
	}
	return v.configure(ctx, o, conn)
}

// Reconfigure re-applies every Configure* call, in order, after a restart.
func (v *Vault) Reconfigure(ctx context.Context) error {
	v.mu.Lock()
	steps := append([]func(context.Context) error(nil), v.replay...)
	v.mu.Unlock()
	for _, f := range steps {
		if err := f(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (o RoleOptions) withDefaults(conn string, creation, revocation []string) RoleOptions {
	if o.Mount == "" {
		o.Mount = "database"
	}
	if o.Connection == "" {
		o.Connection = conn
	}
	if o.DefaultTTL == 0 {
		o.DefaultTTL = time.Hour
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = 24 * time.Hour
	}
	if o.CreationStatements == nil {
		o.CreationStatements = creation
	}
	if o.RevocationStatements == nil {
		o.RevocationStatements = revocation
	}
	return o
}

func (v *Vault) configure(ctx context.Context, o RoleOptions, conn map[string]any) error {
	if o.Role == "" {
		return errors.New("vault: RoleOptions.Role is required")
	}
	apply := func(ctx context.Context) error {
		if err := v.EnableDatabaseEngine(ctx, o.Mount); err != nil {
			return err
		}
		mount := strings.Trim(o.Mount, "/")
		if _, err := v.Client.Logical().WriteWithContext(ctx, mount+"/config/"+o.Connection, conn); err != nil {
			return fmt.Errorf("vault: write %s/config/%s: %w", mount, o.Connection, err)
		}
		role := map[string]any{
			"db_name":               o.Connection,
			"creation_statements":   o.CreationStatements,
			"revocation_statements": o.RevocationStatements,
			"default_ttl":           int(o.DefaultTTL.Seconds()),
			"max_ttl":               int(o.MaxTTL.Seconds()),
		}
		if _, err := v.Client.Logical().WriteWithContext(ctx, mount+"/roles/"+o.Role, role); err != nil {
			return fmt.Errorf("vault: write %s/roles/%s: %w", mount, o.Role, err)
		}
		return nil
	}
	if err := apply(ctx); err != nil {
		return err
	}
	v.mu.Lock()
	v.replay = append(v.replay, apply)
	v.mu.Unlock()
	return nil
}

// EnableDatabaseEngine mounts the database secrets engine at mount unless
// something is mounted there already.
func (v *Vault) EnableDatabaseEngine(ctx context.Context, mount string) error {
	mount = strings.Trim(mount, "/")
	mounts, err := v.Client.Sys().ListMountsWithContext(ctx)
	if err != nil {
		return fmt.Errorf("vault: list mounts: %w", err)
	}
	if m, ok := mounts[mount+"/"]; ok {
		if m.Type != "database" {
			return fmt.Errorf("vault: %s/ is a %s mount, not database", mount, m.Type)
		}
		return nil
	}
	if err := v.Client.Sys().MountWithContext(ctx, mount, &api.MountInput{Type: "database"}); err != nil {
		return fmt.Errorf("vault: mount database at %s: %w", mount, err)
	}
	return nil
}

// linkOrCopy hard-links src to dst, copying when linking is not possible.
func linkOrCopy(src, dst string) error {
	_ = os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// TokenRoleOptions describe a token role made by CreateRoleToken.
type TokenRoleOptions struct {
	Policies []string      // allowed (and given) policies; required
	Period   time.Duration // periodic tokens: renewable forever by this much; 0: none
	Orphan   bool          // tokens have no parent, so no parent's end ends them
}

// CreateRoleToken writes token role `role` and creates a token from it,
// the way an operator gives dbproxy a token whose leases outlive any
// other token (fleet mode needs that: docs/fleet.md).
func (v *Vault) CreateRoleToken(ctx context.Context, role string, o TokenRoleOptions) (string, error) {
	cfg := map[string]any{"allowed_policies": o.Policies, "orphan": o.Orphan, "renewable": true}
	if o.Period > 0 {
		cfg["token_period"] = int(o.Period.Seconds())
	}
	if _, err := v.Client.Logical().WriteWithContext(ctx, "auth/token/roles/"+role, cfg); err != nil {
		return "", fmt.Errorf("vault: write token role %s: %w", role, err)
	}
	s, err := v.Client.Auth().Token().CreateWithRoleWithContext(ctx, &api.TokenCreateRequest{Policies: o.Policies}, role)
	if err != nil {
		return "", fmt.Errorf("vault: create token with role %s: %w", role, err)
	}
	return s.Auth.ClientToken, nil
}

// WritePolicy stores an ACL policy (HCL).
func (v *Vault) WritePolicy(ctx context.Context, name, hcl string) error {
	if err := v.Client.Sys().PutPolicyWithContext(ctx, name, hcl); err != nil {
		return fmt.Errorf("vault: write policy %s: %w", name, err)
	}
	return nil
}
