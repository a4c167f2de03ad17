package main

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// Reload (SIGHUP, `dbproxy reload`, POST /v1/reload) re-reads the
// configuration file and applies it without a restart:
//
//   - the file is loaded and validated as `dbproxy check` does; any
//     problem, or a change to a section that needs a restart, refuses
//     the reload and the running configuration stays;
//   - plan and commit (plan.go) switch new logins to the new backends,
//     grants and listeners; unchanged sources, pools and listener
//     sockets are kept, so their sessions see nothing;
//   - open sessions whose listener or backend is gone, or whose identity
//     lost its grant, are ended with the reason;
//   - a pool (or credential source) that a change replaced keeps serving
//     the sessions opened before the reload; when the last of them ends
//     it is closed (and its leases revoked), by the retire janitor.

// retireGrace is how long a replaced pool is kept at least: a client
// that was logging in at the reload may still take it (the front ends'
// startup timeout).
const retireGrace = 15 * time.Second

// reloadResult is what a reload changed, for the API and the log.
type reloadResult struct {
	Status         string  `json:"status"`
	Backends       changes `json:"backends"`
	Listeners      changes `json:"listeners"`
	Identities     changes `json:"identities"`
	SessionsClosed int     `json:"sessions_closed"`
}

// changes names what was added, changed and removed, sorted.
type changes struct {
	Added   []string `json:"added"`
	Changed []string `json:"changed"`
	Removed []string `json:"removed"`
}

func diff[V any](prev, next map[string]V) changes {
	c := changes{Added: []string{}, Changed: []string{}, Removed: []string{}}
	for k, v := range next {
		old, ok := prev[k]
		switch {
		case !ok:
			c.Added = append(c.Added, k)
		case !reflect.DeepEqual(old, v):
			c.Changed = append(c.Changed, k)
		}
	}
	for k := range prev {
		if _, ok := next[k]; !ok {
			c.Removed = append(c.Removed, k)
		}
	}
	for _, s := range [][]string{c.Added, c.Changed, c.Removed} {
		sort.Strings(s)
	}
	return c
}

func listenersByName(ls []config.Listener) map[string]config.Listener {
	m := make(map[string]config.Listener, len(ls))
	for _, l := range ls {
		m[l.Name] = l
	}
	return m
}

func newReloadMetric(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dbproxy_config_reloads_total",
		Help: "Configuration reloads by result: ok, or error (the running configuration stayed).",
	}, []string{"result"})
	if reg != nil {
		reg.MustRegister(c)
	}
	return c
}

// Reload implements admin.Reloader. An invalid file's error is
// config.Problems, one FILE:LINE:COL line each.
func (st *stack) Reload(context.Context) (any, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	began := time.Now()
	res, err := st.reload()
	if err != nil {
		st.reloads.WithLabelValues("error").Inc()
		st.log.Error("configuration reload refused; the running configuration stays", zap.String("config", st.path), zap.Error(err))
		return nil, err
	}
	st.reloads.WithLabelValues("ok").Inc()
	st.log.Info("configuration reloaded", zap.String("config", st.path), zap.Duration("took", time.Since(began)),
		zap.Any("backends", res.Backends), zap.Any("listeners", res.Listeners), zap.Any("identities", res.Identities),
		zap.Int("sessions_closed", res.SessionsClosed))
	return res, nil
}

// errNoConfigFile: the stack was built from a Config in code.
var errNoConfigFile = errors.New("dbproxy was not started from a configuration file: nothing to reload")

// reload does Reload's work; st.mu is held.
func (st *stack) reload() (*reloadResult, error) {
	if st.path == "" {
		return nil, errNoConfigFile
	}
	if st.stopping {
		return nil, errors.New("dbproxy is shutting down: nothing to reload")
	}
	cfg, err := config.Load(st.path)
	if err != nil {
		return nil, err
	}
	prev := st.view.Load()
	if err := config.CheckReload(prev.cfg, cfg); err != nil {
		return nil, err
	}
	p, err := st.plan(cfg)
	if err != nil {
		return nil, err
	}
	swapped := time.Now()
	st.commit(p)
	next := st.view.Load()
	for k, e := range prev.pools {
		if next.pools[k] != e {
			st.retiring = append(st.retiring, &retiredPool{key: k, entry: e, since: swapped})
		}
	}
	res := &reloadResult{Status: "reloaded",
		Backends: diff(prev.cfg.Backends, cfg.Backends), Identities: diff(prev.cfg.Identities, cfg.Identities),
		Listeners: diff(listenersByName(prev.cfg.Listeners), listenersByName(cfg.Listeners))}
	res.SessionsClosed = st.revokeSessions()
	// A client logging in at the swap may have been authorized by the
	// previous configuration and tracked after the sweep: look again once
	// every such login has ended one way or the other.
	time.AfterFunc(retireGrace, func() {
		if n := st.revokeSessions(); n > 0 {
			st.log.Info("sessions logged in during a reload ended", zap.Int("sessions_closed", n))
		}
	})
	return res, nil
}

// revokeSessions ends the sessions the current configuration no longer
// allows, and returns how many.
func (st *stack) revokeSessions() int {
	v := st.view.Load()
	return st.postgres.Revoke(func(g frontend.Grant) string { return v.revokeReason("postgres", g) }) +
		st.mysql.Revoke(func(g frontend.Grant) string { return v.revokeReason("mysql", g) })
}

// revokeReason says why v no longer allows a session of protocol that
// logged in with g, or "". Identities are judged by name: a session is
// not identified again (its certificate or token is not at hand).
func (v *view) revokeReason(protocol string, g frontend.Grant) string {
	i := slices.IndexFunc(v.cfg.Listeners, func(l config.Listener) bool { return l.Name == g.Listener })
	if i < 0 {
		return fmt.Sprintf("listener %s was removed", g.Listener)
	}
	l := v.cfg.Listeners[i]
	switch {
	case l.Auth != string(g.Identity.Method):
		return fmt.Sprintf("listener %s now identifies clients by %s", l.Name, l.Auth)
	case l.Auth == "listener" && l.Identity != g.Identity.Name:
		return fmt.Sprintf("listener %s now belongs to identity %s", l.Name, l.Identity)
	}
	b, ok := v.cfg.Backends[g.Backend]
	if !ok || b.Protocol != protocol {
		return fmt.Sprintf("backend %s was removed", g.Backend)
	}
	if _, ok := v.cfg.Identities[g.Identity.Name]; !ok {
		return fmt.Sprintf("identity %s was removed", g.Identity.Name)
	}
	grant, err := v.policy.Authorize(g.Identity, g.Backend, g.User)
	if err != nil {
		return fmt.Sprintf("identity %s no longer has a grant on backend %s", g.Identity.Name, g.Backend)
	}
	if grant.Role != g.Role {
		return fmt.Sprintf("identity %s's grant on backend %s now uses Vault role %s", g.Identity.Name, g.Backend, grant.Role)
	}
	return ""
}

// retiredPool is a pool a reload replaced; sessions opened before since
// may still use it.
type retiredPool struct {
	key   creds.SourceKey
	entry *poolEntry
	since time.Time
}

// retireTick is how often the janitor looks for retired pools no
// session uses any more.
const retireTick = time.Second

// retireLoop closes retired pools and sources when unused, until the
// stack's context ends.
func (st *stack) retireLoop() {
	t := time.NewTicker(retireTick)
	defer t.Stop()
	for {
		select {
		case <-st.ctx.Done():
			return
		case now := <-t.C:
			st.retireStep(now)
		}
	}
}

// retireStep closes the retired pools past their grace that no session
// from before their retirement uses, then revokes the leases of retired
// sources no pool uses.
func (st *stack) retireStep(now time.Time) {
	var sessions []frontend.SessionInfo
	st.mu.Lock()
	if len(st.retiring) > 0 {
		sessions = append(st.postgres.Sessions(), st.mysql.Sessions()...)
	}
	var done []*retiredPool
	keep := st.retiring[:0]
	needed := map[*credSource]bool{}
	for _, r := range st.retiring {
		if now.Sub(r.since) < retireGrace || slices.ContainsFunc(sessions, r.usedBy) {
			keep = append(keep, r)
			needed[r.entry.src] = true
			continue
		}
		done = append(done, r)
	}
	st.retiring = keep
	var stopCerts []*pkiCert
	kept := st.retiredCerts[:0]
	for _, pc := range st.retiredCerts {
		if slices.ContainsFunc(keep, func(r *retiredPool) bool { return r.key.Backend == pc.backend() }) {
			kept = append(kept, pc)
		} else {
			stopCerts = append(stopCerts, pc)
		}
	}
	st.retiredCerts = kept
	st.mu.Unlock()
	for _, pc := range stopCerts {
		pc.stop()
	}
	for _, r := range done {
		r.entry.pool.Close()
		st.log.Info("replaced pool closed: no session uses it any more", zap.String("backend", r.key.Backend), zap.String("role", r.key.Role))
	}
	for _, cs := range st.broker.retired() {
		if needed[cs] {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st.broker.drop(ctx, cs)
		cancel()
		st.log.Info("replaced credential source stopped and its leases revoked", zap.String("backend", cs.spec.Backend), zap.String("role", cs.spec.Role))
	}
}

// usedBy reports whether session s may be using r's pool.
func (r *retiredPool) usedBy(s frontend.SessionInfo) bool {
	return s.Backend == r.key.Backend && s.Role == r.key.Role && s.Since.Before(r.since)
}
