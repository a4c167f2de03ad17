package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/events"
)

// credSource is one (backend, Vault role) credential source on a broker
// of its own, so that a reload can start one and retire another alone.
type credSource struct {
	spec   creds.SourceSpec
	broker *creds.Broker
	stop   context.CancelFunc
}

// brokers are the credential sources of the running configuration
// (current) and those a reload replaced that still serve sessions opened
// before it (retiring). The admin API and shutdown see them as one.
type brokers struct {
	client *creds.Client
	log    *zap.Logger
	m      *creds.Metrics
	fleet  *config.Fleet
	login  *creds.Broker // no sources: logs in and keeps dbproxy's token
	events *events.Log   // every source records its lifecycle here

	mu       sync.Mutex
	current  map[creds.SourceKey]*credSource
	retiring []*credSource
}

func newBrokers(client *creds.Client, fleet *config.Fleet, log *zap.Logger, m *creds.Metrics, ev *events.Log) *brokers {
	return &brokers{client: client, log: log, m: m, fleet: fleet, events: ev,
		login: creds.NewBroker(client, nil, log, m), current: map[creds.SourceKey]*credSource{}}
}

// run logs in to Vault and keeps the token (a failed login is retried
// by each source).
func (b *brokers) run(ctx context.Context) { b.login.Run(ctx) }

// start makes and runs a source for sp under ctx. It is not current
// until install.
func (b *brokers) start(ctx context.Context, sp creds.SourceSpec) *credSource {
	br := creds.NewBroker(b.client, []creds.SourceSpec{sp}, b.log, b.m)
	br.RecordEvents(b.events)
	if f := b.fleet; f != nil {
		br.JoinFleet(creds.FleetOptions{
			Name: f.Name, KVMount: f.KVMount, KVPath: f.KVPath, InstanceID: f.InstanceID,
			LockTTL: f.LockTTL.D(), PollInterval: f.PollInterval.D(),
		}, b.m)
	}
	sctx, cancel := context.WithCancel(ctx)
	src := br.Source(sp.Backend, sp.Role)
	go src.Run(sctx)
	return &credSource{spec: sp, broker: br, stop: cancel}
}

// install makes next the current sources; those it no longer holds
// retire (they go on until drop).
func (b *brokers) install(next map[creds.SourceKey]*credSource) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, cs := range b.current {
		if next[k] != cs {
			b.retiring = append(b.retiring, cs)
		}
	}
	b.current = next
}

// snapshot returns the current sources.
func (b *brokers) snapshot() map[creds.SourceKey]*credSource {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.current
}

// drop revokes a retiring source's leases and stops it: no connection
// uses its credentials any more.
func (b *brokers) drop(ctx context.Context, cs *credSource) {
	b.mu.Lock()
	for i, r := range b.retiring {
		if r == cs {
			b.retiring = append(b.retiring[:i], b.retiring[i+1:]...)
			break
		}
	}
	b.mu.Unlock()
	cs.broker.RevokeAll(ctx)
	cs.stop()
}

func (b *brokers) all() []*credSource {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := append([]*credSource(nil), b.retiring...)
	for _, cs := range b.current {
		out = append(out, cs)
	}
	return out
}

// Client is the Vault client all sources share.
func (b *brokers) Client() *creds.Client { return b.client }

// Leases lists every live generation, retiring sources' included,
// ordered by backend, role, number.
func (b *brokers) Leases() []creds.Info {
	var out []creds.Info
	for _, cs := range b.all() {
		out = append(out, cs.broker.Leases()...)
	}
	sort.SliceStable(out, func(i, j int) bool {
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

// Ready returns an error naming a current source without a usable
// credential.
func (b *brokers) Ready() error {
	for _, cs := range b.snapshot() {
		if err := cs.broker.Ready(); err != nil {
			return err
		}
	}
	return nil
}

// of returns the current sources of backend (and role, unless "").
func (b *brokers) of(backend, role string) []*credSource {
	var out []*credSource
	for k, cs := range b.snapshot() {
		if k.Backend == backend && (role == "" || k.Role == role) {
			out = append(out, cs)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].spec.Role < out[j].spec.Role })
	return out
}

// Rotate starts a rotation of every current role of backend; it stops
// at the first refusal (an issuance cap).
func (b *brokers) Rotate(backend, reason string) error {
	srcs := b.of(backend, "")
	if len(srcs) == 0 {
		return fmt.Errorf("backend %q: %w", backend, creds.ErrUnknownBackend)
	}
	for _, cs := range srcs {
		if err := cs.broker.Rotate(backend, reason); err != nil {
			return err
		}
	}
	return nil
}

// Revoke runs creds.Broker.Revoke on the current sources of backend.
func (b *brokers) Revoke(ctx context.Context, backend, role string) ([]creds.RevokeResult, bool, error) {
	var (
		out   []creds.RevokeResult
		found bool
		errs  []error
	)
	for _, cs := range b.of(backend, role) {
		res, ok, err := cs.broker.Revoke(ctx, backend, cs.spec.Role)
		out, found = append(out, res...), found || ok
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, found, errors.Join(errs...)
}

// RevokeAll revokes every live lease of every source and stops them, at
// shutdown.
func (b *brokers) RevokeAll(ctx context.Context) {
	for _, cs := range b.all() {
		cs.broker.RevokeAll(ctx)
		cs.stop()
	}
}

// retired returns the retiring sources.
func (b *brokers) retired() []*credSource {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*credSource(nil), b.retiring...)
}
