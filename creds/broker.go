package creds

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

// SourceKey names one shared credential: all identities granted the same
// Vault role on the same backend share one lease and one pool.
type SourceKey struct {
	Backend string
	Role    string
}

// SourceSpec declares one source to run.
type SourceSpec struct {
	Backend string
	Mount   string // database secrets engine mount, e.g. "database"
	Role    string
	Lease   LeaseOptions
	// Kind is where the credentials come from; the zero value is Dynamic
	// (database/creds/ROLE). Static reads Mount/static-creds/Role; KV
	// reads the secret KV names (Role then only names the source).
	Kind Kind
	KV   KVSecret
	// PollInterval reads a Static or KV source this often to notice a
	// change made outside Vault's schedule (a forced rotation, a new KV
	// version). Zero: a static password is read at its rotations and a
	// KV secret at start; both also after a refused login.
	PollInterval time.Duration
}

// Broker owns the Vault client and one Source per (backend, role).
type Broker struct {
	client  *Client
	log     *zap.Logger
	sources map[SourceKey]*Source
	certs   []*Cert
	m       *Metrics
	wg      sync.WaitGroup
}

// NewBroker makes a source for each spec. Nothing talks to Vault until Run.
func NewBroker(c *Client, specs []SourceSpec, log *zap.Logger, m *Metrics) *Broker {
	b := &Broker{client: c, log: log, sources: make(map[SourceKey]*Source), m: m}
	for _, sp := range specs {
		k := SourceKey{sp.Backend, sp.Role}
		if _, ok := b.sources[k]; ok {
			continue
		}
		s := newSource(c, sp.Backend, sp.Mount, sp.Role, sp.Lease, log, m)
		s.kind, s.kv, s.poll = sp.Kind, sp.KV, sp.PollInterval
		b.sources[k] = s
	}
	return b
}

// Cert adds a TLS certificate from Vault PKI, issued and renewed from Run
// on. Call it before Run.
func (b *Broker) Cert(o CertOptions) *Cert {
	c := NewCert(b.client, o, b.log.Named("pki"), b.m)
	b.certs = append(b.certs, c)
	return c
}

// JoinFleet makes every source share its generations with the other
// instances of fleet o.Name (see fleet.go). Call it before Run.
func (b *Broker) JoinFleet(o FleetOptions, m *Metrics) {
	if m == nil {
		m = NewMetrics(nil)
	}
	o = o.withDefaults()
	for k, s := range b.sources {
		// Static and KV sources issue nothing: each instance reads the
		// same password, so there is nothing to share.
		if s.kind == Dynamic {
			s.fleet = newFleetMember(o, b.client, m, k.Backend, k.Role)
		}
	}
	b.log.Info("fleet mode", zap.String("fleet", o.Name), zap.String("instance", o.InstanceID),
		zap.String("kv", o.KVMount+"/"+o.KVPath+"/"+o.Name))
}

// Run logs in and starts every source; it returns at once. A failed login
// is not fatal: each source retries (and logs in) with backoff, and
// readiness reports the backends without a credential.
func (b *Broker) Run(ctx context.Context) {
	if err := b.client.Login(ctx); err != nil {
		b.log.Warn("vault login failed; will retry", zap.Error(err))
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.client.RunTokenKeeper(ctx)
	}()
	for _, s := range b.sources {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			s.Run(ctx)
		}()
	}
	for _, c := range b.certs {
		b.wg.Go(func() { c.Run(ctx) })
	}
}

// Wait blocks until every goroutine started by Run has returned.
func (b *Broker) Wait() { b.wg.Wait() }

// Source returns the source for a backend and role, or nil.
func (b *Broker) Source(backend, role string) *Source {
	return b.sources[SourceKey{backend, role}]
}

// ErrUnknownBackend is returned for a backend without credentials.
var ErrUnknownBackend = errors.New("no credentials are configured for this backend")

// Rotate starts a rotation for every role of backend. Nothing rotates when
// any role is at its issuance cap, so a backend is never half rotated: the
// error is then that role's *IssueCapError.
func (b *Broker) Rotate(backend, reason string) error {
	var srcs []*Source
	for k, s := range b.sources {
		if k.Backend == backend {
			srcs = append(srcs, s)
		}
	}
	if len(srcs) == 0 {
		return fmt.Errorf("backend %q: %w", backend, ErrUnknownBackend)
	}
	for _, s := range srcs {
		if err := s.overCap(reason); err != nil {
			return err
		}
	}
	var errs []error
	for _, s := range srcs {
		if err := s.TryRotate(reason); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Leases lists every live generation, ordered by backend, role, number.
func (b *Broker) Leases() []Info {
	var out []Info
	for _, s := range b.sources {
		out = append(out, s.Generations()...)
	}
	sort.Slice(out, func(i, j int) bool {
		a, c := out[i], out[j]
		if a.Backend != c.Backend {
			return a.Backend < c.Backend
		}
		if a.Role != c.Role {
			return a.Role < c.Role
		}
		return a.Generation < c.Generation
	})
	return out
}

// Ready returns an error naming a source that has no usable credential.
func (b *Broker) Ready() error {
	for _, s := range b.sources {
		if err := s.Ready(); err != nil {
			return err
		}
	}
	for _, c := range b.certs {
		if err := c.Ready(); err != nil {
			return err
		}
	}
	return nil
}

// RevokeAll revokes every live lease and stops all renewals and fetches.
// It is the last step of a graceful shutdown, after every connection that
// used the credentials is closed.
func (b *Broker) RevokeAll(ctx context.Context) {
	n := 0
	for _, s := range b.sources {
		n += s.revokeAll(ctx)
	}
	b.log.Info("leases revoked at shutdown", zap.Int("revoked", n))
}
