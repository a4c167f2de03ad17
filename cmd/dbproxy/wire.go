package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// startProxies starts the credential broker, pools and listeners that cfg
// describes, adds their /v1 endpoints and readiness, and returns them as
// Services to be shut down on SIGTERM.
func startProxies(ctx context.Context, cfg *config.Config, deps Deps) ([]Service, error) {
	st, err := buildProxies(ctx, cfg, deps.Logger, deps)
	if err != nil {
		return nil, err
	}
	if deps.Admin != nil {
		deps.Admin.AddReadinessCheck("credentials", st.broker.Ready)
		deps.Admin.AddReadinessCheck("certificates", st.certs.Ready)
		deps.Admin.MountV1(st)
		deps.Admin.MountRevoke(st)
		deps.Admin.MountStatus(st)
		deps.Admin.MountReport(st)
		deps.Admin.MountKill(st)
		deps.Admin.MountReload(st)
	}
	return []Service{st}, nil
}

// Name implements Service.
func (st *stack) Name() string { return "proxies" }

// Shutdown stops the front ends (their sessions finish or are closed at
// ctx's deadline), then closes the pools' idle upstream connections, then
// revokes every lease: nothing is left for Vault to expire later. The
// order matters: revoking earlier would drop users under live sessions.
func (st *stack) Shutdown(ctx context.Context) (int, error) {
	st.mu.Lock()
	st.stopping = true
	st.mu.Unlock()
	var (
		wg             sync.WaitGroup
		pgOpen, myOpen int
		pgErr, myErr   error
	)
	wg.Go(func() { pgOpen, pgErr = st.postgres.Shutdown(ctx) })
	wg.Go(func() { myOpen, myErr = st.mysql.Shutdown(ctx) })
	wg.Wait()
	open, err := pgOpen+myOpen, errors.Join(pgErr, myErr)
	st.close()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	st.broker.RevokeAll(rctx)
	return open, err
}

// Sessions implements admin.Operations: the sessions of both front ends.
func (st *stack) Sessions() any {
	out := []any{}
	for _, s := range st.postgres.Sessions() {
		out = append(out, s)
	}
	for _, s := range st.mysql.Sessions() {
		out = append(out, s)
	}
	return out
}

// Pools implements admin.Operations.
func (st *stack) Pools() any {
	pools := st.pools()
	out := make([]pool.Stats, 0, len(pools))
	for _, e := range pools {
		out = append(out, e.pool.Stats())
	}
	return out
}

// Leases implements admin.Operations.
func (st *stack) Leases() any {
	l := st.broker.Leases()
	if l == nil {
		l = []creds.Info{}
	}
	return l
}

// Rotate implements admin.Operations; over the issuance cap its error is
// a *creds.IssueCapError, which the API answers with 429.
func (st *stack) Rotate(backend string) error {
	err := st.broker.Rotate(backend, "manual")
	if errors.Is(err, creds.ErrUnknownBackend) {
		return fmt.Errorf("%w: %w", admin.ErrNotFound, err)
	}
	return err
}

// Pause implements admin.Operations.
func (st *stack) Pause(backend string) bool { return st.eachPool(backend, (*pool.Pool).Pause) }

// Resume implements admin.Operations.
func (st *stack) Resume(backend string) bool { return st.eachPool(backend, (*pool.Pool).Resume) }

// Drain implements admin.Operations.
func (st *stack) Drain(backend string) bool { return st.eachPool(backend, (*pool.Pool).Drain) }

// KillSession implements admin.Killer over both front ends (session IDs
// are unique across them).
func (st *stack) KillSession(id uint64, reason string) (any, bool) {
	if si, ok := st.postgres.KillSession(id, reason); ok {
		return si, true
	}
	if si, ok := st.mysql.KillSession(id, reason); ok {
		return si, true
	}
	return nil, false
}

// eachPool applies f to every pool of backend (one per granted role).
func (st *stack) eachPool(backend string, f func(*pool.Pool)) bool {
	found := false
	for k, e := range st.pools() {
		if k.Backend == backend {
			f(e.pool)
			found = true
		}
	}
	return found
}
