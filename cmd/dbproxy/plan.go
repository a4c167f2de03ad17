package main

import (
	"fmt"
	"net"
	"reflect"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/mysql"
	"github.com/dbproxy/dbproxy/proxy/pool"
	"github.com/dbproxy/dbproxy/proxy/postgres"
)

// A configuration is put to work in two steps, at start and at each
// reload alike: plan does everything that can fail (the identity policy,
// backend addresses and TLS, listener certificates and token checks, new
// sockets) and changes nothing that runs; commit switches the proxies
// over and cannot fail.

// plan is a configuration ready to commit.
type plan struct {
	cfg        *config.Config
	policy     *identity.Policy
	pgBackends map[string]*postgres.Backend
	myBackends map[string]*mysql.Backend
	// listeners are the next set by name: kept sockets (same name,
	// protocol and address) and the ones opened for this plan.
	listeners map[string]*liveListener
	lcfg      map[string]config.Listener
	opts      map[string]postgres.ListenerOptions
	opened    []*liveListener
	// certs are the Vault PKI certificates the plan uses (pkiCerts).
	certs map[string]*pkiCert
}

// liveListener is a listening socket. Its options (TLS, how clients are
// identified) are read at each accept, so a reload changes them without
// closing the socket.
type liveListener struct {
	cfg  config.Listener // as last committed; guarded by stack.mu
	ln   net.Listener
	opts atomic.Pointer[postgres.ListenerOptions]
}

// sameSocket reports whether b can keep a's socket.
func sameSocket(a, b config.Listener) bool {
	return a.Protocol == b.Protocol && a.Address == b.Address && a.UnixSocket == b.UnixSocket && a.SocketMode == b.SocketMode
}

// plan prepares cfg. st.mu is held (or the stack is being built).
func (st *stack) plan(cfg *config.Config) (*plan, error) {
	policy, err := identity.NewPolicy(identitySpecs(cfg))
	if err != nil {
		return nil, fmt.Errorf("identities: %w", err)
	}
	p := &plan{cfg: cfg, policy: policy, pgBackends: map[string]*postgres.Backend{}, myBackends: map[string]*mysql.Backend{},
		listeners: map[string]*liveListener{}, lcfg: map[string]config.Listener{}, opts: map[string]postgres.ListenerOptions{},
		certs: map[string]*pkiCert{}}
	certs := st.certs.forPlan(p.certs)
	for name, b := range cfg.Backends {
		if b.Protocol == "mysql" {
			mb, err := mysqlBackend(name, b, certs)
			if err != nil {
				return nil, err
			}
			p.myBackends[name] = mb
			continue
		}
		pb, err := postgresBackend(name, b, certs)
		if err != nil {
			return nil, err
		}
		p.pgBackends[name] = pb
	}
	tokenAuthFor := func(l config.Listener) (identity.TokenAuthenticator, error) {
		a, err := tokenAuth(cfg, l, policy)
		if err != nil {
			return nil, err
		}
		return st.logins.wrap(l.Auth, a), nil
	}
	for _, l := range cfg.Listeners {
		lo, err := listenerOptions(l, policy, tokenAuthFor, certs)
		if err != nil {
			p.abort()
			return nil, err
		}
		p.opts[l.Name], p.lcfg[l.Name] = lo, l
		if old := st.listeners[l.Name]; old != nil && sameSocket(old.cfg, l) {
			p.listeners[l.Name] = old
			continue
		}
		ln, err := listen(l)
		if err != nil {
			p.abort()
			return nil, err
		}
		ll := &liveListener{cfg: l, ln: ln}
		p.listeners[l.Name], p.opened = ll, append(p.opened, ll)
	}
	return p, nil
}

// abort closes the sockets the plan opened.
func (p *plan) abort() {
	for _, ll := range p.opened {
		_ = ll.ln.Close()
	}
}

// commit makes p the running configuration: sources and pools whose
// settings did not change are kept, new ones start, logins from now on
// see the new routes, listeners are opened, changed and closed. It
// returns the view it replaced (nil at start). Sessions are not touched
// here (reload.go).
func (st *stack) commit(p *plan) *view {
	prev := st.view.Load()
	cur := st.broker.snapshot()
	sources := map[creds.SourceKey]*credSource{}
	pools := map[creds.SourceKey]*poolEntry{}
	specs := sourceSpecs(p.cfg)
	for _, sp := range specs {
		k := creds.SourceKey{Backend: sp.Backend, Role: sp.Role}
		cs := cur[k]
		if cs == nil || !reflect.DeepEqual(cs.spec, sp) {
			cs = st.broker.start(st.ctx, sp)
		}
		sources[k] = cs
		b := p.cfg.Backends[sp.Backend]
		if prev != nil {
			if e := prev.pools[k]; e != nil && e.src == cs && reflect.DeepEqual(e.backend, b) {
				pools[k] = e
				continue
			}
		}
		pools[k] = &poolEntry{src: cs, backend: b, pool: pool.New(cs.broker.Source(sp.Backend, sp.Role), pool.Options{
			Backend: sp.Backend, Role: sp.Role, MaxConnections: b.Pool.MaxConnections, MinIdle: b.Pool.MinIdle,
			CheckoutTimeout: b.Pool.CheckoutTimeout.D(), IdleTimeout: b.Pool.IdleTimeout.D(), Metrics: st.pm,
		})}
	}
	st.broker.install(sources)
	for _, pc := range st.certs.install(st.ctx, p.certs) {
		if pc.backend() == "" {
			pc.stop() // a listener's: the next handshake uses the new one
		} else {
			st.retiredCerts = append(st.retiredCerts, pc) // dialed by retired pools
		}
	}
	st.view.Store(&view{cfg: p.cfg, policy: p.policy, pools: pools, report: newReportConfig(p.cfg, specs, st.gatherer)})
	st.console.Store(newConsole(p.cfg, st, st.deps, st.log))
	poolOf := func(backend, role string) *pool.Pool {
		if e := pools[creds.SourceKey{Backend: backend, Role: role}]; e != nil {
			return e.pool
		}
		return nil
	}
	st.postgres.Reconfigure(postgres.Routes{Backends: p.pgBackends, Pool: poolOf, Authorizer: p.policy})
	st.mysql.Reconfigure(mysql.Routes{Backends: p.myBackends, Pool: poolOf, Authorizer: p.policy})

	for name, ll := range p.listeners {
		lo := p.opts[name]
		ll.opts.Store(&lo)
		ll.cfg = p.lcfg[name]
	}
	for _, ll := range p.opened {
		st.serve(ll)
	}
	for name, ll := range st.listeners {
		if p.listeners[name] != ll {
			st.closeListener(ll)
		}
	}
	st.listeners = p.listeners
	return prev
}

// serve starts accepting on a newly opened listener.
func (st *stack) serve(ll *liveListener) {
	l := ll.cfg
	if l.Protocol == "mysql" {
		st.mysql.ServeFunc(ll.ln, l.Name, func() mysql.ListenerOptions { return mysqlListener(*ll.opts.Load()) })
	} else {
		st.postgres.ServeFunc(ll.ln, l.Name, func() postgres.ListenerOptions { return *ll.opts.Load() })
	}
	st.log.Info("listening", zap.String("listener", l.Name), zap.String("protocol", l.Protocol),
		zap.String("address", ll.ln.Addr().String()), zap.String("auth", l.Auth))
}

// closeListener stops accepting on a listener a reload removed or moved;
// its sessions are judged by reload.go.
func (st *stack) closeListener(ll *liveListener) {
	var err error
	if ll.cfg.Protocol == "mysql" {
		err = st.mysql.Close(ll.ln)
	} else {
		err = st.postgres.Close(ll.ln)
	}
	st.log.Info("listener closed", zap.String("listener", ll.cfg.Name), zap.String("address", ll.ln.Addr().String()), zap.NamedError("close_error", err))
}
