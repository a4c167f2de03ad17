package main

import (
	"context"
	"reflect"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
)

// pkiCerts are the Vault PKI certificates of listeners and backends, by
// name ("listener/NAME", "backend/NAME"). A reload keeps a certificate
// whose settings did not change, so it is not issued again.
type pkiCerts struct {
	client *creds.Client
	log    *zap.Logger
	m      *creds.Metrics

	mu   sync.Mutex
	live map[string]*pkiCert
}

// pkiCert is one certificate and how to stop its renewals.
type pkiCert struct {
	o    creds.CertOptions
	cert *creds.Cert
	stop context.CancelFunc // nil until started
}

// backend is the backend whose upstream client certificate c is, or "".
func (c *pkiCert) backend() string {
	name, ok := strings.CutPrefix(c.o.Name, "backend/")
	if !ok {
		return ""
	}
	return name
}

// forPlan is the certFor of one plan: the live certificate of a name when
// its settings are the same, else a new one (started by install). used
// collects what it handed out.
func (c *pkiCerts) forPlan(used map[string]*pkiCert) certFor {
	return func(name string, k *config.VaultPKI) *creds.Cert {
		if k == nil {
			return nil
		}
		o := creds.CertOptions{
			Name: name, Mount: k.Mount, Role: k.Role, CommonName: k.CommonName,
			AltNames: k.AltNames, IPSANs: k.IPSANs, TTL: k.TTL.D(), ClientCA: k.ClientCA,
		}
		c.mu.Lock()
		cur := c.live[name]
		c.mu.Unlock()
		if cur == nil || !reflect.DeepEqual(cur.o, o) {
			cur = &pkiCert{o: o, cert: creds.NewCert(c.client, o, c.log, c.m)}
		}
		used[name] = cur
		return cur.cert
	}
}

// install starts the new certificates of used, under ctx, and makes used
// the live set. It returns the certificates used replaced, still running.
func (c *pkiCerts) install(ctx context.Context, used map[string]*pkiCert) []*pkiCert {
	for _, pc := range used {
		if pc.stop == nil {
			cctx, cancel := context.WithCancel(ctx)
			pc.stop = cancel
			go pc.cert.Run(cctx)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var replaced []*pkiCert
	for name, pc := range c.live {
		if used[name] != pc {
			replaced = append(replaced, pc)
		}
	}
	c.live = used
	return replaced
}

// Ready returns an error naming a live certificate not issued yet.
func (c *pkiCerts) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pc := range c.live {
		if err := pc.cert.Ready(); err != nil {
			return err
		}
	}
	return nil
}
