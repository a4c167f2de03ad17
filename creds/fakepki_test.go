package creds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// fakePKI is a PKI mount: a CA that signs what pki/issue/ROLE asks for.
type fakePKI struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  string
	ttl    time.Duration // when the request names none
	serial int64
	keys   []string // every private key issued, to check no log holds one
}

func newFakePKI(t *testing.T, fv *fakeVault, ttl time.Duration) *fakePKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &fakePKI{caCert: ca, caKey: key, ttl: ttl, serial: 100,
		caPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	fv.set(func(f *fakeVault) { f.pki = p })
	return p
}

// servePKI answers pki/issue/ROLE and pki/ca/pem. Called with f.mu held.
func (f *fakeVault) servePKI(w http.ResponseWriter, op string, body map[string]any, now time.Time) {
	p := f.pki
	if p == nil {
		writeErr(w, fakeErr{404, []string{"no handler for route"}})
		return
	}
	if op == opPKICA {
		w.Header().Set("Content-Type", "application/pem-file")
		_, _ = w.Write([]byte(p.caPEM))
		return
	}
	ttl := p.ttl
	if s, ok := body["ttl"].(string); ok {
		if d, err := time.ParseDuration(s); err == nil {
			ttl = d
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.serial++
	cn, _ := body["common_name"].(string)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-30 * time.Second), NotAfter: now.Add(ttl),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if s, ok := body["alt_names"].(string); ok {
		tmpl.DNSNames = strings.Split(s, ",")
	}
	if s, ok := body["ip_sans"].(string); ok {
		for _, ip := range strings.Split(s, ",") {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		writeErr(w, fakeErr{500, []string{err.Error()}})
		return
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	p.keys = append(p.keys, keyPEM)
	writeJSON(w, 200, map[string]any{"request_id": "req", "data": map[string]any{
		"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		"issuing_ca":  p.caPEM, "ca_chain": []string{p.caPEM},
		"private_key": keyPEM, "private_key_type": "ec", "serial_number": serialHex(tmpl),
		"expiration": tmpl.NotAfter.Unix(),
	}})
}
