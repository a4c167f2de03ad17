package main

import (
	"crypto/tls"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
)

// certFor returns the Vault PKI certificate named name with settings k
// (pkiCerts); nil when k is nil (files or no certificate).
type certFor func(name string, k *config.VaultPKI) *creds.Cert

// listenerTLS is a listener's server TLS: its certificate from files or
// from Vault PKI, and the CA for client certificates from a file or from
// the PKI mount.
func listenerTLS(l config.Listener, certs certFor) (*tls.Config, error) {
	t := l.TLS
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.VaultPKI == nil {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if t.ClientCAFile != "" {
		cas, err := loadCAs(t.ClientCAFile)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs = cas
	}
	if t.ClientCAFile != "" || t.VaultPKI != nil && t.VaultPKI.ClientCA {
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		if t.RequireClientCert {
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	if c := certs("listener/"+l.Name, t.VaultPKI); c != nil {
		tc = c.TLSConfig(tc)
	}
	return tc, nil
}
