package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/admin/console"
	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/events"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/mysql"
	"github.com/dbproxy/dbproxy/proxy/pool"
	"github.com/dbproxy/dbproxy/proxy/postgres"
)

// stack is everything buildProxies starts, for the admin API, reloads
// and shutdown. What a reload replaces lives in view, swapped whole.
type stack struct {
	log      *zap.Logger
	ctx      context.Context // sources and the retire janitor run under it
	path     string          // the configuration file, re-read by Reload
	gatherer prometheus.Gatherer
	broker   *brokers
	events   *events.Log // credential lifecycle, for the status page and report
	pm       *pool.Metrics
	logins   *tokenLogins
	reloads  *prometheus.CounterVec
	postgres *postgres.Server
	mysql    *mysql.Server
	deps     Deps
	// console is the SQL admin console of the current configuration.
	console atomic.Pointer[console.Console]

	view atomic.Pointer[view]
	// mu makes reloads one at a time and guards listeners, retiring and
	// stopping (Shutdown began: no more reloads).
	mu        sync.Mutex
	listeners map[string]*liveListener
	retiring  []*retiredPool
	stopping  bool
	certs     *pkiCerts
	// retiredCerts are replaced upstream client certificates, renewed
	// until no retiring pool of their backend is left.
	retiredCerts []*pkiCert
}

// view is one configuration as the running proxies use it.
type view struct {
	cfg    *config.Config
	policy *identity.Policy
	pools  map[creds.SourceKey]*poolEntry
	// report describes the configuration for `dbproxy report`.
	report reportConfig
}

// poolEntry is the pool of one (backend, role) and what it was built
// from: a reload keeps it only if neither changed.
type poolEntry struct {
	pool    *pool.Pool
	src     *credSource
	backend config.Backend
}

// buildProxies maps the configuration onto the packages and starts them:
// the credential sources, the pools and the listeners. A reload goes
// through the same plan and commit (plan.go).
func buildProxies(ctx context.Context, cfg *config.Config, log *zap.Logger, deps Deps) (*stack, error) {
	cm := creds.NewMetrics(deps.Registry)
	client, err := creds.NewClient(creds.ClientOptions{
		Address: cfg.Vault.Address, CAFile: cfg.Vault.CAFile, Namespace: cfg.Vault.Namespace,
		RequestTimeout: cfg.Vault.RequestTimeout.D(),
		Auth: creds.AuthOptions{
			Method: cfg.Vault.Auth.Method, Mount: cfg.Vault.Auth.Mount, TokenFile: cfg.Vault.Auth.TokenFile,
			RoleIDFile: cfg.Vault.Auth.RoleIDFile, SecretIDFile: cfg.Vault.Auth.SecretIDFile,
			JWTFile: cfg.Vault.Auth.JWTFile, Role: cfg.Vault.Auth.Role,
		},
	}, log.Named("vault"), cm)
	if err != nil {
		return nil, err
	}
	ev := events.New(events.Options{})
	st := &stack{log: log, ctx: ctx, path: deps.ConfigPath, gatherer: deps.Registry, deps: deps, events: ev,
		broker: newBrokers(client, cfg.Fleet, log.Named("creds"), cm, ev),
		pm:     pool.NewMetrics(deps.Registry), logins: newTokenLogins(deps.Registry),
		reloads: newReloadMetric(deps.Registry), listeners: map[string]*liveListener{},
		certs: &pkiCerts{client: client, log: log.Named("creds").Named("pki"), m: cm}}
	fm := frontend.NewMetrics(deps.Registry)
	st.postgres = postgres.NewServer(postgres.Options{Log: log.Named("postgres"), Metrics: postgres.NewMetrics(deps.Registry, fm),
		Console: func(ctx context.Context, id string, r io.Reader, w io.Writer) error {
			return st.console.Load().Serve(ctx, id, r, w)
		},
		ConsoleDatabase: console.Database,
	})
	st.mysql = mysql.NewServer(mysql.Options{Log: log.Named("mysql"), Metrics: mysql.NewMetrics(fm)})
	p, err := st.plan(cfg)
	if err != nil {
		return nil, err
	}
	// Logged in before the sources start, as Broker.Run would.
	st.broker.run(ctx)
	st.commit(p)
	go st.retireLoop()
	return st, nil
}

// Events implements admin.EventLister: the credential events of the last
// 24 hours, newest first.
func (st *stack) Events() any { return st.events.Events() }

// pools returns the current pools.
func (st *stack) pools() map[creds.SourceKey]*poolEntry { return st.view.Load().pools }

// close closes every pool, current and retiring.
func (st *stack) close() {
	for _, e := range st.pools() {
		e.pool.Close()
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, r := range st.retiring {
		r.entry.pool.Close()
	}
}

func identitySpecs(cfg *config.Config) map[string]identity.Spec {
	out := make(map[string]identity.Spec, len(cfg.Identities))
	for name, id := range cfg.Identities {
		m := id.Match
		sp := identity.Spec{SpiffeID: m.SpiffeID, CertCN: m.CertCN, UnixUID: m.UnixUID, Token: identity.TokenMatch{
			VaultEntity: m.VaultEntity, VaultEntityID: m.VaultEntityID, VaultPolicy: m.VaultPolicy, VaultMetadata: m.VaultMetadata,
			JWTSubject: m.JWTSubject, JWTClaims: m.JWTClaims,
		}}
		for _, g := range id.Grants {
			sp.Grants = append(sp.Grants, identity.Grant{Backend: g.Backend, Role: grantRole(cfg, g)})
		}
		out[name] = sp
	}
	return out
}

func grantRole(cfg *config.Config, g config.Grant) string {
	if g.Role != "" {
		return g.Role
	}
	return cfg.Backends[g.Backend].CredentialRole()
}

// sourceSpecs has one credential source per (backend, role) that some
// identity is granted: sources nobody may use would only cost leases.
func sourceSpecs(cfg *config.Config) []creds.SourceSpec {
	seen := map[creds.SourceKey]bool{}
	var out []creds.SourceSpec
	for _, id := range cfg.Identities {
		for _, g := range id.Grants {
			b, ok := cfg.Backends[g.Backend]
			if !ok {
				continue
			}
			k := creds.SourceKey{Backend: g.Backend, Role: grantRole(cfg, g)}
			if seen[k] {
				continue
			}
			seen[k] = true
			out = append(out, creds.SourceSpec{Backend: k.Backend, Role: k.Role, Mount: b.VaultMount, Lease: creds.LeaseOptions{
				RotateBefore: b.Lease.RotateBefore.D(), DrainTimeout: b.Lease.DrainTimeout.D(),
				SafetyMargin: b.Lease.SafetyMargin.D(), RevokeGrace: b.Lease.RevokeGrace.D(),
				MaxIssuePerMinute: b.Lease.MaxIssuePerMinute,
			}, PollInterval: b.Lease.PollInterval.D()})
			sp := &out[len(out)-1]
			switch {
			case b.KV != nil:
				sp.Kind = creds.KV
				sp.KV = creds.KVSecret{Mount: b.KV.Mount, Path: b.KV.Path, UsernameField: b.KV.UsernameField, PasswordField: b.KV.PasswordField}
			case b.VaultStaticRole != "":
				sp.Kind = creds.Static
			}
		}
	}
	return out
}

func postgresBackend(name string, b config.Backend, certs certFor) (*postgres.Backend, error) {
	host, portStr, err := net.SplitHostPort(b.Address)
	if err != nil {
		return nil, fmt.Errorf("backend %s address: %w", name, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("backend %s port: %w", name, err)
	}
	tc, err := upstreamTLS(host, b.TLS, certs("backend/"+name, b.TLS.VaultPKI))
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	requireAuth := "scram-sha-256"
	if b.AllowInsecureAuth {
		requireAuth = "scram-sha-256,md5,password"
	}
	return &postgres.Backend{Name: name, Host: host, Port: uint16(port), Database: b.Database,
		TLS: tc, RequireAuth: requireAuth, ConnectTimeout: b.ConnectTimeout.D(), Mode: b.Pool.Mode,
		IdleTxnTimeout: b.Pool.IdleTransactionTimeout.D()}, nil
}

// upstreamTLS is how dbproxy connects to a database: TLS by mode, with a
// client certificate from Vault PKI when cert is not nil.
func upstreamTLS(host string, t config.UpstreamTLS, cert *creds.Cert) (*tls.Config, error) {
	tc, err := upstreamTLSMode(host, t)
	if tc != nil && cert != nil {
		tc.GetClientCertificate = cert.ClientCertificate
	}
	return tc, err
}

func upstreamTLSMode(host string, t config.UpstreamTLS) (*tls.Config, error) {
	switch t.Mode {
	case "", "disable":
		return nil, nil
	case "require":
		// Encryption without verification, as libpq's sslmode=require.
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil //nolint:gosec // documented mode
	case "verify-full":
		tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if t.ServerName != "" {
			tc.ServerName = t.ServerName
		}
		if t.CAFile != "" {
			pool, err := loadCAs(t.CAFile)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = pool
		}
		return tc, nil
	}
	return nil, fmt.Errorf("unknown tls mode %q", t.Mode)
}

func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca file: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca file %s holds no PEM certificate", path)
	}
	return p, nil
}

// listenerOptions builds how a listener's clients are identified (its TLS
// and authentication); a reload builds them anew for every listener.
func listenerOptions(l config.Listener, policy *identity.Policy, tokenAuth func(config.Listener) (identity.TokenAuthenticator, error), certs certFor) (postgres.ListenerOptions, error) {
	lo := postgres.ListenerOptions{Name: l.Name}
	if l.TLS != nil {
		tc, err := listenerTLS(l, certs)
		if err != nil {
			return lo, fmt.Errorf("listener %s tls: %w", l.Name, err)
		}
		lo.TLS = tc
		lo.RequireTLS = l.TLS.Required || l.Auth == "mtls"
	}
	switch l.Auth {
	case "listener":
		id, err := policy.Fixed(l.Identity)
		if err != nil {
			return lo, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		lo.Authenticate = func(net.Conn, *tls.ConnectionState) (identity.Identity, error) { return id, nil }
	case "peer":
		lo.Authenticate = func(raw net.Conn, _ *tls.ConnectionState) (identity.Identity, error) {
			uc, ok := raw.(*net.UnixConn)
			if !ok {
				return identity.Identity{}, errors.New("peer authentication needs a unix socket")
			}
			return policy.FromPeer(uc)
		}
	case "mtls":
		lo.Authenticate = func(_ net.Conn, st *tls.ConnectionState) (identity.Identity, error) {
			if st == nil {
				return identity.Identity{}, &identity.Error{Reason: identity.ReasonNoClientCert, Msg: "this listener identifies clients by certificate: connect with TLS and a client certificate"}
			}
			return policy.FromCert(*st)
		}
	case "vault_token", "jwt":
		tok, err := tokenAuth(l)
		if err != nil {
			return lo, err
		}
		lo.Token = tok
		lo.Authenticate = func(net.Conn, *tls.ConnectionState) (identity.Identity, error) {
			return identity.Identity{}, errors.New("token listener: no token was checked")
		}
	default:
		return lo, fmt.Errorf("listener %s: unknown auth %q", l.Name, l.Auth)
	}
	return lo, nil
}

func listen(l config.Listener) (net.Listener, error) {
	if l.UnixSocket == "" {
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		return ln, nil
	}
	// A socket file left by a crashed run would make Listen fail; remove
	// it only if nothing answers on it.
	if _, err := os.Stat(l.UnixSocket); err == nil {
		if c, err := net.Dial("unix", l.UnixSocket); err == nil {
			c.Close()
			return nil, fmt.Errorf("listener %s: %s is in use by another process", l.Name, l.UnixSocket)
		}
		_ = os.Remove(l.UnixSocket)
	}
	ln, err := net.Listen("unix", l.UnixSocket)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", l.Name, err)
	}
	mode := l.SocketMode.Perm()
	if mode == 0 {
		mode = 0o660
	}
	if err := os.Chmod(l.UnixSocket, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listener %s: %w", l.Name, err)
	}
	return ln, nil
}
