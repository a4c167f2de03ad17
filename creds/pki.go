package creds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// CertOptions asks Vault's PKI secrets engine for a TLS certificate:
// MOUNT/issue/ROLE with these names, renewed before it ends.
type CertOptions struct {
	Name       string // what the certificate is for, in logs and metrics (a listener's name)
	Mount      string // the PKI mount, e.g. "pki"
	Role       string
	CommonName string
	AltNames   []string // DNS names (and email SANs, as Vault takes them)
	IPSANs     []string
	TTL        time.Duration // 0: the role's default
	// ClientCA also reads MOUNT/ca/pem, the CA that verifies client
	// certificates, again at each renewal.
	ClientCA bool
}

// maxCAPEM caps the CA bundle read from MOUNT/ca/pem.
const maxCAPEM = 1 << 20

// Cert is a TLS certificate issued by Vault PKI and kept fresh: it is
// renewed at about two thirds of its life, and handshakes pick up the new
// one through GetCertificate, so no connection is dropped. Its Run loop is
// the only goroutine that talks to Vault for it.
type Cert struct {
	o      CertOptions
	client *Client
	log    *zap.Logger
	m      *Metrics
	now    func() time.Time

	cur     atomic.Pointer[tls.Certificate]
	cas     atomic.Pointer[x509.CertPool]
	issued  chan struct{} // closed at the first issuance
	once    sync.Once
	mu      sync.Mutex
	notAft  time.Time
	serial  string
	fails   int
	lastErr error
}

// NewCert prepares a certificate; nothing is issued until Run.
func NewCert(c *Client, o CertOptions, log *zap.Logger, m *Metrics) *Cert {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Cert{o: o, client: c, log: log.With(zap.String("certificate", o.Name)), m: m, now: c.now, issued: make(chan struct{})}
}

// Run issues the certificate and renews it until ctx ends.
func (c *Cert) Run(ctx context.Context) {
	for {
		next := c.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(next.Sub(c.now()), 10*time.Millisecond)):
		}
	}
}

// step issues a certificate and returns when to issue the next one.
func (c *Cert) step(ctx context.Context) time.Time {
	err := c.issue(ctx)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.fails, c.lastErr = 0, nil
		return certRenewAt(now, c.notAft)
	}
	c.fails++
	c.lastErr = err
	wait := Backoff(c.fails)
	if left := c.notAft.Sub(now); left > 0 {
		// Retry several times before the certificate in use ends.
		wait = min(wait, max(left/3, time.Second))
	}
	c.log.Warn("issuing TLS certificate failed; will retry", zap.Error(err), zap.Duration("retry_in", wait), zap.Time("current_not_after", c.notAft))
	return now.Add(wait)
}

// issue writes MOUNT/issue/ROLE and installs the answer.
func (c *Cert) issue(ctx context.Context) error {
	if err := c.client.EnsureToken(ctx, time.Second); err != nil {
		return fmt.Errorf("vault login: %w", err)
	}
	path := c.o.Mount + "/issue/" + c.o.Role
	req := map[string]any{"common_name": c.o.CommonName}
	if len(c.o.AltNames) > 0 {
		req["alt_names"] = strings.Join(c.o.AltNames, ",")
	}
	if len(c.o.IPSANs) > 0 {
		req["ip_sans"] = strings.Join(c.o.IPSANs, ",")
	}
	if c.o.TTL > 0 {
		req["ttl"] = c.o.TTL.String()
	}
	sec, err := c.client.api.Logical().WriteWithContext(ctx, path, req)
	c.m.request("pki_issue", err)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if sec == nil || sec.Data == nil {
		return fmt.Errorf("write %s: empty response", path)
	}
	certPEM, _ := sec.Data["certificate"].(string)
	keyPEM, _ := sec.Data["private_key"].(string)
	if certPEM == "" || keyPEM == "" {
		return fmt.Errorf("write %s: response has no certificate or private_key", path)
	}
	chain := certPEM
	if cas, ok := sec.Data["ca_chain"].([]any); ok {
		for _, ca := range cas {
			if s, ok := ca.(string); ok {
				chain += "\n" + s
			}
		}
	}
	kp, err := tls.X509KeyPair([]byte(chain), []byte(keyPEM))
	if err != nil {
		// The error names no key material.
		return fmt.Errorf("write %s: the issued certificate and key do not load: %w", path, err)
	}
	leaf, err := x509.ParseCertificate(kp.Certificate[0])
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	kp.Leaf = leaf
	var pool *x509.CertPool
	if c.o.ClientCA {
		if pool, err = c.readCA(ctx); err != nil {
			return err
		}
	}
	if pool != nil {
		c.cas.Store(pool)
	}
	c.cur.Store(&kp)
	serial := serialHex(leaf)
	c.mu.Lock()
	c.notAft, c.serial = leaf.NotAfter, serial
	c.mu.Unlock()
	c.once.Do(func() { close(c.issued) })
	c.m.certIssued.WithLabelValues(c.o.Name).Inc()
	c.m.certNotAfter.WithLabelValues(c.o.Name).Set(float64(leaf.NotAfter.Unix()))
	c.log.Info("TLS certificate issued by Vault", zap.String("serial", serial), zap.Time("not_after", leaf.NotAfter),
		zap.String("common_name", leaf.Subject.CommonName))
	return nil
}

// readCA reads MOUNT/ca/pem, the PEM CA certificate (no token needed).
func (c *Cert) readCA(ctx context.Context) (*x509.CertPool, error) {
	path := c.o.Mount + "/ca/pem"
	resp, err := c.client.api.Logical().ReadRawWithContext(ctx, path)
	c.m.request("pki_ca_read", err)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer resp.Body.Close()
	pem, err := io.ReadAll(io.LimitReader(resp.Body, maxCAPEM+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(pem) > maxCAPEM {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, maxCAPEM)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("read %s: no PEM certificate (is a CA configured on the mount?)", path)
	}
	return pool, nil
}

// certRenewAt is about two thirds of the way from now to notAfter, with
// jitter so that many instances do not renew in lockstep.
func certRenewAt(now, notAfter time.Time) time.Time {
	left := notAfter.Sub(now)
	if left <= 0 {
		return now
	}
	return now.Add(time.Duration(float64(left) * (0.62 + 0.06*rand.Float64())))
}

func serialHex(c *x509.Certificate) string {
	b := c.SerialNumber.Bytes()
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}

// ErrNoCert is returned to a TLS handshake before the first certificate.
var ErrNoCert = errors.New("no TLS certificate issued by Vault yet")

// certWait bounds how long a handshake waits for the first certificate.
const certWait = 10 * time.Second

// current returns the certificate to serve, waiting for the first one up
// to certWait or until ctx ends.
func (c *Cert) current(ctx context.Context) (*tls.Certificate, error) {
	if kp := c.cur.Load(); kp != nil {
		return kp, nil
	}
	t := time.NewTimer(certWait)
	defer t.Stop()
	select {
	case <-c.issued:
		return c.cur.Load(), nil
	case <-ctx.Done():
	case <-t.C:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoCert, c.lastErr)
	}
	return nil, ErrNoCert
}

// TLSConfig serves this certificate on a listener: a copy of base whose
// GetCertificate returns the newest certificate and, with ClientCA, whose
// client CAs are the mount's newest CA. Handshakes already done keep the
// certificate they got.
func (c *Cert) TLSConfig(base *tls.Config) *tls.Config {
	tc := base.Clone()
	tc.Certificates = nil
	tc.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return c.current(h.Context()) }
	if !c.o.ClientCA {
		return tc
	}
	var mu sync.Mutex
	var last *x509.CertPool
	var perCA *tls.Config
	tc.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		if _, err := c.current(h.Context()); err != nil {
			return nil, err
		}
		pool := c.cas.Load()
		mu.Lock()
		defer mu.Unlock()
		if pool != last {
			// One config per CA pool, so TLS session tickets keep working.
			perCA = tc.Clone()
			perCA.GetConfigForClient = nil
			perCA.ClientCAs = pool
			last = pool
		}
		return perCA, nil
	}
	return tc
}

// ClientCertificate serves this certificate as a TLS client certificate
// (for upstream mTLS): set it as tls.Config.GetClientCertificate.
func (c *Cert) ClientCertificate(h *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.current(h.Context())
}

// Ready reports whether a certificate is issued and not yet expired.
func (c *Cert) Ready() error {
	kp := c.cur.Load()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case kp == nil && c.lastErr != nil:
		return fmt.Errorf("certificate %s: %w: %w", c.o.Name, ErrNoCert, c.lastErr)
	case kp == nil:
		return fmt.Errorf("certificate %s: %w", c.o.Name, ErrNoCert)
	case !c.now().Before(c.notAft):
		return fmt.Errorf("certificate %s: expired at %s and not renewed: %v", c.o.Name, c.notAft.UTC().Format(time.RFC3339), c.lastErr)
	}
	return nil
}
