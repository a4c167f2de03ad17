package main

import (
	"fmt"
	"net"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/proxy/mysql"
	"github.com/dbproxy/dbproxy/proxy/postgres"
)

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
