package main

import (
	"context"

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
		deps.Admin.MountV1(st)
	}
	return []Service{st.postgres, &poolsService{st}}, nil
}

// poolsService closes idle upstream connections after the front ends have
// stopped, so every drained lease can be revoked before exit.
type poolsService struct{ st *stack }

func (p *poolsService) Name() string { return "pools" }

func (p *poolsService) Shutdown(ctx context.Context) (int, error) {
	p.st.close()
	return 0, nil
}

// Sessions implements admin.Operations.
func (st *stack) Sessions() any { return st.postgres.Sessions() }

// Pools implements admin.Operations.
func (st *stack) Pools() any {
	out := make([]pool.Stats, 0, len(st.pools))
	for _, p := range st.pools {
		out = append(out, p.Stats())
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

// Rotate implements admin.Operations.
func (st *stack) Rotate(backend string) bool { return st.broker.Rotate(backend, "manual") }
