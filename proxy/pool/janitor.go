package pool

import (
	"context"
	"time"

	"github.com/dbproxy/dbproxy/creds"
)

// The janitor keeps stale-connection sweeps off the checkout path: every
// 250 ms it closes idle connections of superseded generations and those
// idle too long, and opens connections up to min_idle.
func (p *Pool) janitor() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stopJan:
			return
		case now := <-t.C:
			p.clock.Store(now.UnixNano())
			p.mu.Lock()
			stale := p.takeStaleLocked(now)
			p.mu.Unlock()
			closeAll(stale)
			p.warm()
		}
	}
}

// takeStaleLocked removes idle connections that must close: superseded
// generation or idle too long. The caller closes them outside the lock.
func (p *Pool) takeStaleLocked(now time.Time) []*Lease {
	var stale []*Lease
	// spare is how many current-generation connections may still time
	// out without going below min_idle.
	spare := len(p.idle)
	if p.opts.MinIdle > 0 {
		spare = -p.opts.MinIdle
		for _, l := range p.idle {
			if l.Gen.State() == creds.Active {
				spare++
			}
		}
	}
	keep := p.idle[:0]
	for _, l := range p.idle { // oldest first
		switch {
		case l.Gen.State() != creds.Active:
			stale = append(stale, l)
			continue
		case now.UnixNano()-l.lastUsed > int64(p.opts.IdleTimeout) && spare > 0:
			spare--
			stale = append(stale, l)
			continue
		}
		keep = append(keep, l)
	}
	for i := len(keep); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = keep
	return stale
}

func closeAll(ls []*Lease) {
	for _, l := range ls {
		l.Close()
	}
}

// warm opens idle connections of the current generation until min_idle
// of them wait for the last used key, within the cap.
func (p *Pool) warm() {
	if p.opts.MinIdle <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.CheckoutTimeout)
	defer cancel()
	gen, err := p.creds.Current(ctx)
	if err != nil {
		return // no credential: checkouts report why
	}
	for {
		p.mu.Lock()
		key, dial := p.warmKey, p.warmDial
		have := 0
		for _, l := range p.idle {
			if l.Gen == gen && l.Key == key {
				have++
			}
		}
		if p.closed || dial == nil || have >= p.opts.MinIdle || p.open >= p.opts.MaxConnections || p.gate.failing() {
			p.mu.Unlock()
			return
		}
		p.open++
		p.mu.Unlock()
		l, err := p.open1(ctx, gen, key, dial)
		if err != nil {
			return // the next tick tries again
		}
		l.Put()
	}
}

// Pause holds new checkouts back until Resume (each waits at most the
// checkout timeout). Connections already lent are not touched, so
// transactions in flight finish.
func (p *Pool) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume ends a Pause; waiting checkouts go on.
func (p *Pool) Resume() {
	p.mu.Lock()
	p.paused = false
	p.wakeAllLocked()
	p.mu.Unlock()
}

// Drain closes every idle connection now and every lent one when it is
// returned, so new work gets fresh connections (e.g. after a database
// failover). The credential is not changed.
func (p *Pool) Drain() {
	p.mu.Lock()
	p.epoch++
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	closeAll(idle)
}

// Stats is a snapshot of the pool.
type Stats struct {
	Backend string `json:"backend"`
	Role    string `json:"role"`
	Open    int    `json:"open"`
	Idle    int    `json:"idle"`
	Max     int    `json:"max"`
	Paused  bool   `json:"paused"`
	Waiting int    `json:"waiting"`
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Backend: p.opts.Backend, Role: p.opts.Role, Open: p.open, Idle: len(p.idle),
		Max: p.opts.MaxConnections, Paused: p.paused, Waiting: len(p.waiters)}
}

// Close closes idle connections and stops lending. Lent connections close
// when their clients finish.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	close(p.stopJan)
	p.wakeAllLocked()
	p.mu.Unlock()
	closeAll(idle)
}
