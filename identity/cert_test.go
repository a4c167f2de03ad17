package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// testCA is a certificate authority made in the test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func randSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// issue makes a leaf certificate signed by ca. uris are URI SANs; dns
// names make it a server certificate, otherwise it is a client one.
func (ca *testCA) issue(t *testing.T, cn string, uris []string, dns ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
	}
	if len(dns) > 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// handshake runs a real TLS handshake over loopback TCP between a server
// using serverCfg and a client presenting certs (none if nil). It returns
// the server's ConnectionState and the server's and the client's
// handshake errors (the client learns of a rejected certificate on its
// first read under TLS 1.3, so the client error comes from that read).
func handshake(t *testing.T, serverCfg *tls.Config, serverCA *testCA, certs []tls.Certificate) (tls.ConnectionState, error, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	type result struct {
		state tls.ConnectionState
		err   error
	}
	srvDone := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvDone <- result{err: err}
			return
		}
		defer c.Close()
		srv := tls.Server(c, serverCfg)
		err = srv.HandshakeContext(ctx)
		if err == nil {
			// Tell the client the handshake is accepted.
			_, err = srv.Write([]byte{'k'})
		}
		srvDone <- result{state: srv.ConnectionState(), err: err}
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	cli := tls.Client(c, &tls.Config{
		RootCAs:    serverCA.pool(),
		ServerName: "dbproxy.test",
		// Present the certificate whatever CAs the server asks for, as
		// an attacker would: with Certificates alone, crypto/tls leaves
		// out a certificate the server's CA list does not name, and the
		// server's verification would never be exercised.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if len(certs) == 0 {
				return &tls.Certificate{}, nil
			}
			return &certs[0], nil
		},
	})
	cliErr := cli.HandshakeContext(ctx)
	if cliErr == nil {
		_, cliErr = cli.Read(make([]byte, 1))
	}
	r := <-srvDone
	return r.state, r.err, cliErr
}

func TestFromCert(t *testing.T) {
	ca := newCA(t, "dbproxy test client CA")
	other := newCA(t, "some other CA")
	server := ca.issue(t, "dbproxy", nil, "dbproxy.test")

	p, err := NewPolicy(map[string]Spec{
		"orders-api": {SpiffeID: "spiffe://corp/orders-api"},
		"billing":    {SpiffeID: "spiffe://corp/billing"},
		"reporting":  {CertCN: "reporting"},
	})
	if err != nil {
		t.Fatal(err)
	}

	// The listener's configuration for auth mtls.
	strict := &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool(),
	}
	// Asks for a certificate but does not verify it: FromCert must not
	// trust what it was given.
	unverified := &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientAuth:   tls.RequireAnyClientCert,
	}
	optional := &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.pool(),
	}

	tests := []struct {
		name          string
		cfg           *tls.Config
		cert          *tls.Certificate
		wantHandshake bool   // false: the handshake must fail
		wantServerErr string // with !wantHandshake: part of the server's error
		want          Identity
		wantReason    Reason
		wantMsg       []string
	}{
		{
			name: "spiffe URI SAN wins over CN", cfg: strict,
			cert:          ptr(ca.issue(t, "reporting", []string{"spiffe://corp/orders-api"})),
			wantHandshake: true,
			want:          Identity{Name: "orders-api", Method: MethodMTLS},
		},
		{
			name: "CN only", cfg: strict,
			cert:          ptr(ca.issue(t, "reporting", nil)),
			wantHandshake: true,
			want:          Identity{Name: "reporting", Method: MethodMTLS},
		},
		{
			name: "unmatched URI SAN falls back to CN", cfg: strict,
			cert:          ptr(ca.issue(t, "reporting", []string{"spiffe://corp/unknown"})),
			wantHandshake: true,
			want:          Identity{Name: "reporting", Method: MethodMTLS},
		},
		{
			name: "nothing matches", cfg: strict,
			cert:          ptr(ca.issue(t, "stranger", []string{"spiffe://corp/unknown"})),
			wantHandshake: true,
			wantReason:    ReasonUnknownIdentity,
			wantMsg:       []string{`no identity matches client certificate (URI SANs ["spiffe://corp/unknown"], CN "stranger")`, "identities.<name>.match"},
		},
		{
			name: "URI SANs of two identities", cfg: strict,
			cert:          ptr(ca.issue(t, "reporting", []string{"spiffe://corp/orders-api", "spiffe://corp/billing"})),
			wantHandshake: true,
			wantReason:    ReasonAmbiguousIdentity,
			wantMsg:       []string{`("billing", "orders-api")`},
		},
		{
			name: "URI SAN is not a prefix match", cfg: strict,
			cert:          ptr(ca.issue(t, "", []string{"spiffe://corp/orders-api/admin"})),
			wantHandshake: true,
			wantReason:    ReasonUnknownIdentity,
		},
		{
			name: "signed by another CA fails the handshake", cfg: strict,
			cert:          ptr(other.issue(t, "reporting", []string{"spiffe://corp/orders-api"})),
			wantHandshake: false,
			wantServerErr: "certificate signed by unknown authority",
		},
		{
			name: "no client certificate fails the handshake", cfg: strict,
			wantHandshake: false,
			wantServerErr: "client didn't provide a certificate",
		},
		{
			name: "unverified certificate is not trusted", cfg: unverified,
			cert:          ptr(other.issue(t, "reporting", []string{"spiffe://corp/orders-api"})),
			wantHandshake: true,
			wantReason:    ReasonNoClientCert,
		},
		{
			name: "optional client certificate not given", cfg: optional,
			wantHandshake: true,
			wantReason:    ReasonNoClientCert,
			wantMsg:       []string{"no verified client certificate"},
		},
		{
			name: "optional client certificate given", cfg: optional,
			cert:          ptr(ca.issue(t, "reporting", nil)),
			wantHandshake: true,
			want:          Identity{Name: "reporting", Method: MethodMTLS},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var certs []tls.Certificate
			if tt.cert != nil {
				certs = []tls.Certificate{*tt.cert}
			}
			state, srvErr, cliErr := handshake(t, tt.cfg, ca, certs)
			if !tt.wantHandshake {
				if srvErr == nil {
					t.Fatal("server handshake succeeded, want it to fail")
				}
				if !strings.Contains(srvErr.Error(), tt.wantServerErr) {
					t.Errorf("server error %q does not contain %q", srvErr, tt.wantServerErr)
				}
				if cliErr == nil {
					t.Error("client saw no error, want the server's alert")
				}
				t.Logf("server: %v; client: %v", srvErr, cliErr)
				return
			}
			if srvErr != nil || cliErr != nil {
				t.Fatalf("handshake: server %v, client %v", srvErr, cliErr)
			}
			got, err := p.FromCert(state)
			checkResult(t, got, err, tt.want, tt.wantReason, "")
			for _, w := range tt.wantMsg {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestFromCertLeafOnly checks that only the leaf of the verified chain
// identifies the client, not an intermediate or the CA.
func TestFromCertLeafOnly(t *testing.T) {
	ca := newCA(t, "reporting") // the CA's CN is a configured cert_cn
	p, err := NewPolicy(map[string]Spec{"reporting": {CertCN: "reporting"}})
	if err != nil {
		t.Fatal(err)
	}
	leaf := ca.issue(t, "stranger", nil)
	x, err := x509.ParseCertificate(leaf.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	chains, err := x.Verify(x509.VerifyOptions{Roots: ca.pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.FromCert(tls.ConnectionState{VerifiedChains: chains, PeerCertificates: chains[0]})
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonUnknownIdentity {
		t.Fatalf("FromCert = %v, want unknown_identity", err)
	}
	// Peer certificates without verified chains are ignored.
	_, err = p.FromCert(tls.ConnectionState{PeerCertificates: []*x509.Certificate{ca.cert}})
	if !errors.As(err, &e) || e.Reason != ReasonNoClientCert {
		t.Fatalf("FromCert(unverified) = %v, want no_client_cert", err)
	}
}

func ptr[T any](v T) *T { return &v }
