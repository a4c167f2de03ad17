package creds

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"
)

// startCert runs a Cert against fv until the test ends.
func startCert(t *testing.T, fv *fakeVault, o CertOptions) (*Cert, *observer.ObservedLogs) {
	t.Helper()
	log, logs := testLogger()
	c := NewCert(tokenClient(t, fv, log), o, log, NewMetrics(nil))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { c.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return c, logs
}

// echoServer serves tc on loopback, echoing lines, until the test ends.
func echoServer(t *testing.T, tc *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// dialTLS connects trusting p's CA and returns the conn and the serial
// number of the certificate the server sent.
func dialTLS(t *testing.T, p *fakePKI, addr string, client *tls.Certificate) (*tls.Conn, int64, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(p.caCert)
	cfg := &tls.Config{RootCAs: roots, ServerName: "db.example", MinVersion: tls.VersionTLS12}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, 0, err
	}
	// TLS 1.3 reports a refused client certificate on the first read.
	if err := echo(c, "hello"); err != nil {
		c.Close()
		return nil, 0, err
	}
	t.Cleanup(func() { c.Close() })
	return c, c.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
}

func echo(c *tls.Conn, msg string) error {
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return errors.New("echo mismatch: " + line)
	}
	return nil
}

func certOpts() CertOptions {
	return CertOptions{Name: "listener/test", Mount: "pki", Role: "dbproxy", CommonName: "db.example", AltNames: []string{"db.example"}, IPSANs: []string{"127.0.0.1"}}
}

// The certificate is issued at start and renewed at about two thirds of
// its life; a connection made before the renewal keeps working, and a new
// one gets the new certificate.
func TestCertRenewedWithoutDroppingConnections(t *testing.T) {
	fv := newFakeVault(t)
	p := newFakePKI(t, fv, 0)
	o := certOpts()
	o.TTL = 3 * time.Second
	c, logs := startCert(t, fv, o)
	addr := echoServer(t, c.TLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	old, serial1, err := dialTLS(t, p, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := c.cur.Load().Leaf
	if first.Subject.CommonName != "db.example" || len(first.IPAddresses) != 1 {
		t.Fatalf("certificate %v %v", first.Subject, first.IPAddresses)
	}
	waitFor(t, 10*time.Second, "a renewal", func() bool { return c.cur.Load().Leaf != first })
	// The fake backdates NotBefore by 30s, as Vault does: issue times are
	// exact. The renewal comes at ~2/3 of the life, never before 60%.
	at := func(c *x509.Certificate) time.Time { return c.NotBefore.Add(30 * time.Second) }
	second := c.cur.Load().Leaf
	// Certificate times have whole seconds: allow one of slack.
	if early := at(first).Add(time.Duration(0.6 * float64(first.NotAfter.Sub(at(first))))); at(second).Add(time.Second).Before(early) {
		t.Fatalf("renewed at %v, before 60%% of the certificate's life (%v)", at(second), early)
	}
	if !at(second).Before(first.NotAfter) {
		t.Fatalf("renewed at %v, after the first certificate ended (%v)", at(second), first.NotAfter)
	}
	_, serial2, err := dialTLS(t, p, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if serial2 == serial1 {
		t.Fatalf("a new connection still gets serial %d", serial1)
	}
	if err := echo(old, "still there"); err != nil {
		t.Fatalf("the connection made before the renewal: %v", err)
	}
	if err := c.Ready(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	fv.set(func(*fakeVault) { keys = append(keys, p.keys...) })
	assertNoSecrets(t, logs, keys)
}

// Vault failing after the first issuance: the current certificate keeps
// being served, retries back off, and readiness fails only once it ends.
// When Vault is back a new one is issued.
func TestCertVaultDownKeepsServing(t *testing.T) {
	fv := newFakeVault(t)
	p := newFakePKI(t, fv, 0)
	o := certOpts()
	o.TTL = 4 * time.Second
	c, _ := startCert(t, fv, o)
	addr := echoServer(t, c.TLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	_, serial1, err := dialTLS(t, p, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	fv.fail(opPKIIssue, 503, "Vault is sealed")
	notAfter := c.cur.Load().Leaf.NotAfter
	waitFor(t, 10*time.Second, "the certificate's end", func() bool { return time.Now().After(notAfter) })
	if err := c.Ready(); err == nil {
		t.Fatal("ready with an expired certificate")
	}
	if n := fv.count(opPKIIssue); n > 12 {
		t.Fatalf("%d issue requests while Vault was down for ~4s: not backing off", n)
	}
	fv.recover(opPKIIssue)
	waitFor(t, 10*time.Second, "a certificate after Vault's return", func() bool { return c.Ready() == nil })
	if _, serial2, err := dialTLS(t, p, addr, nil); err != nil || serial2 == serial1 {
		t.Fatalf("after recovery: serial %d (was %d), %v", serial2, serial1, err)
	}
}

// Before any certificate, a handshake fails with the reason, and
// readiness says why.
func TestCertNoneYet(t *testing.T) {
	fv := newFakeVault(t)
	newFakePKI(t, fv, time.Minute)
	fv.fail(opPKIIssue, 400, "common name db.example not allowed by this role")
	c, _ := startCert(t, fv, certOpts())
	waitFor(t, 5*time.Second, "a failed issuance", func() bool { return fv.count(opPKIIssue) >= 1 && c.Ready() != nil })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.current(ctx)
	if !errors.Is(err, ErrNoCert) {
		t.Fatalf("current: %v", err)
	}
	waitFor(t, 5*time.Second, "the cause in readiness", func() bool {
		err := c.Ready()
		return err != nil && strings.Contains(err.Error(), "not allowed by this role")
	})
}

// With ClientCA the mount's CA verifies client certificates.
func TestCertClientCAFromMount(t *testing.T) {
	fv := newFakeVault(t)
	p := newFakePKI(t, fv, time.Minute)
	o := certOpts()
	o.ClientCA = true
	c, _ := startCert(t, fv, o)
	addr := echoServer(t, c.TLSConfig(&tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.RequireAndVerifyClientCert}))
	good := clientCert(t, p.caCert, p.caKey)
	if _, _, err := dialTLS(t, p, addr, &good); err != nil {
		t.Fatalf("client certificate from the mount's CA refused: %v", err)
	}
	self := clientCert(t, nil, nil)
	if _, _, err := dialTLS(t, p, addr, &self); err == nil {
		t.Fatal("a self-signed client certificate was accepted")
	}
	if _, _, err := dialTLS(t, p, addr, nil); err == nil {
		t.Fatal("no client certificate was accepted")
	}
	if fv.count(opPKICA) < 1 {
		t.Fatal("pki/ca/pem never read")
	}
}

// clientCert makes a client certificate signed by ca (self-signed if nil).
func clientCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "orders-api"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
