package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/admin/console"
	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/mysql"
	"github.com/dbproxy/dbproxy/proxy/pool"
	"github.com/dbproxy/dbproxy/proxy/postgres"
)

// stack is everything buildProxies starts, for the admin API and shutdown.
type stack struct {
	// report describes the configuration for `dbproxy report`.
	report   reportConfig
	broker   *creds.Broker
	pools    map[creds.SourceKey]*pool.Pool
	postgres *postgres.Server
	mysql    *mysql.Server
}

// buildProxies maps the configuration onto the packages and starts them:
// the credential broker, the pools and the listeners.
func buildProxies(ctx context.Context, cfg *config.Config, log *zap.Logger, deps Deps) (*stack, error) {
	policy, err := identity.NewPolicy(identitySpecs(cfg))
	if err != nil {
		return nil, fmt.Errorf("identities: %w", err)
	}
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
	specs := sourceSpecs(cfg)
	st := &stack{broker: creds.NewBroker(client, specs, log.Named("creds"), cm), pools: map[creds.SourceKey]*pool.Pool{}}
	certs := brokerCerts(st.broker)
	if f := cfg.Fleet; f != nil {
		st.broker.JoinFleet(creds.FleetOptions{
			Name: f.Name, KVMount: f.KVMount, KVPath: f.KVPath, InstanceID: f.InstanceID,
			LockTTL: f.LockTTL.D(), PollInterval: f.PollInterval.D(),
		}, cm)
	}
	st.report = newReportConfig(cfg, specs, deps.Registry)
	pm := pool.NewMetrics(deps.Registry)
	fm := frontend.NewMetrics(deps.Registry)
	for _, sp := range specs {
		b := cfg.Backends[sp.Backend]
		k := creds.SourceKey{Backend: sp.Backend, Role: sp.Role}
		st.pools[k] = pool.New(st.broker.Source(sp.Backend, sp.Role), pool.Options{
			Backend: sp.Backend, Role: sp.Role, MaxConnections: b.Pool.MaxConnections, MinIdle: b.Pool.MinIdle,
			CheckoutTimeout: b.Pool.CheckoutTimeout.D(), IdleTimeout: b.Pool.IdleTimeout.D(), Metrics: pm,
		})
	}

	pgBackends := map[string]*postgres.Backend{}
	for name, b := range cfg.Backends {
		if b.Protocol != "postgres" {
			continue
		}
		pb, err := postgresBackend(name, b, certs)
		if err != nil {
			return nil, err
		}
		pgBackends[name] = pb
	}
	st.postgres = postgres.NewServer(postgres.Options{
		Backends: pgBackends,
		Pool: func(backend, role string) *pool.Pool {
			return st.pools[creds.SourceKey{Backend: backend, Role: role}]
		},
		Authorizer:      policy,
		Log:             log.Named("postgres"),
		Metrics:         postgres.NewMetrics(deps.Registry, fm),
		Console:         newConsole(cfg, st, deps, log).Serve,
		ConsoleDatabase: console.Database,
	})

	if st.mysql, err = newMySQLServer(cfg, st, policy, log, fm, certs); err != nil {
		return nil, err
	}

	logins := newTokenLogins(deps.Registry)
	tokenAuthFor := func(l config.Listener) (identity.TokenAuthenticator, error) {
		a, err := tokenAuth(cfg, l, policy)
		if err != nil {
			return nil, err
		}
		return logins.wrap(l.Auth, a), nil
	}
	for _, l := range cfg.Listeners {
		ln, lo, err := openListener(l, policy, tokenAuthFor, certs)
		if err != nil {
			st.close()
			return nil, err
		}
		if l.Protocol == "mysql" {
			st.mysql.Serve(ln, mysqlListener(lo))
		} else {
			st.postgres.Serve(ln, lo)
		}
		log.Info("listening", zap.String("listener", l.Name), zap.String("protocol", l.Protocol), zap.String("address", ln.Addr().String()), zap.String("auth", l.Auth))
	}
	st.broker.Run(ctx)
	return st, nil
}

func (st *stack) close() {
	for _, p := range st.pools {
		p.Close()
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

// openListener opens the socket and builds how its clients are identified.
func openListener(l config.Listener, policy *identity.Policy, tokenAuth func(config.Listener) (identity.TokenAuthenticator, error), certs certFor) (net.Listener, postgres.ListenerOptions, error) {
	lo := postgres.ListenerOptions{Name: l.Name}
	if l.TLS != nil {
		tc, err := listenerTLS(l, certs)
		if err != nil {
			return nil, lo, fmt.Errorf("listener %s tls: %w", l.Name, err)
		}
		lo.TLS = tc
		lo.RequireTLS = l.TLS.Required || l.Auth == "mtls"
	}
	switch l.Auth {
	case "listener":
		id, err := policy.Fixed(l.Identity)
		if err != nil {
			return nil, lo, fmt.Errorf("listener %s: %w", l.Name, err)
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
			return nil, lo, err
		}
		lo.Token = tok
		lo.Authenticate = func(net.Conn, *tls.ConnectionState) (identity.Identity, error) {
			return identity.Identity{}, errors.New("token listener: no token was checked")
		}
	default:
		return nil, lo, fmt.Errorf("listener %s: unknown auth %q", l.Name, l.Auth)
	}
	ln, err := listen(l)
	return ln, lo, err
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
