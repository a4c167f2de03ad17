package main

import (
	"fmt"
	"net"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/mysql"
	"github.com/dbproxy/dbproxy/proxy/pool"
	"github.com/dbproxy/dbproxy/proxy/postgres"
)

// newMySQLServer builds the MySQL front end for the mysql backends of cfg.
// It shares the pools (and so the credentials) with the PostgreSQL one.
func newMySQLServer(cfg *config.Config, st *stack, policy *identity.Policy, log *zap.Logger, fm *frontend.Metrics, certs certFor) (*mysql.Server, error) {
	backends := map[string]*mysql.Backend{}
	for name, b := range cfg.Backends {
		if b.Protocol != "mysql" {
			continue
		}
		mb, err := mysqlBackend(name, b, certs)
		if err != nil {
			return nil, err
		}
		backends[name] = mb
	}
	return mysql.NewServer(mysql.Options{
		Backends: backends,
		Pool: func(backend, role string) *pool.Pool {
			return st.pools[creds.SourceKey{Backend: backend, Role: role}]
		},
		Authorizer: policy,
		Log:        log.Named("mysql"),
		Metrics:    mysql.NewMetrics(fm),
	}), nil
}

func mysqlBackend(name string, b config.Backend, certs certFor) (*mysql.Backend, error) {
	host, _, err := net.SplitHostPort(b.Address)
	if err != nil {
		return nil, fmt.Errorf("backend %s address: %w", name, err)
	}
	tc, err := upstreamTLS(host, b.TLS, certs("backend/"+name, b.TLS.VaultPKI))
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	return &mysql.Backend{Name: name, Addr: b.Address, Database: b.Database, TLS: tc,
		AllowCleartext: b.AllowInsecureAuth, ConnectTimeout: b.ConnectTimeout.D(), Mode: b.Pool.Mode}, nil
}

// mysqlListener reuses what openListener built for a listener (TLS and
// how clients are identified); the two front ends identify alike.
func mysqlListener(lo postgres.ListenerOptions) mysql.ListenerOptions {
	return mysql.ListenerOptions{Name: lo.Name, TLS: lo.TLS, RequireTLS: lo.RequireTLS,
		Authenticate: mysql.Authenticator(lo.Authenticate), Token: lo.Token, MaxTokenBytes: lo.MaxTokenBytes}
}
