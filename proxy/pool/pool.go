// Package pool keeps upstream database connections per (backend, Vault
// role), each tied to the credential generation it logged in with. It caps
// how many exist, lends them out, takes them back, and closes those of a
// superseded generation as soon as they are idle. It knows nothing about
// wire protocols: it pools anything that can Reset and Close.
package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbproxy/dbproxy/creds"
)

// Conn is an upstream connection as the pool sees it.
type Conn interface {
	// Reset makes the connection fit for another client (DISCARD ALL,
	// COM_RESET_CONNECTION). An error means it must be closed instead.
	Reset(ctx context.Context) error
	Close() error
}

// DialFunc opens an upstream connection with a generation's credential.
type DialFunc func(ctx context.Context, g *creds.Generation) (Conn, error)

// Credentials is where the pool gets the generation for new connections.
type Credentials interface {
	Current(ctx context.Context) (*creds.Generation, error)
}

// Options sizes a pool.
type Options struct {
	Backend, Role  string
	MaxConnections int
	// MinIdle connections of the current generation are kept open for the
	// most recently used key, so a burst or a rotation finds them ready.
	MinIdle         int
	CheckoutTimeout time.Duration
	IdleTimeout     time.Duration
	Metrics         *Metrics
}

// ErrExhausted is returned when no connection frees up in time.
var ErrExhausted = errors.New("too many connections")

// ExhaustedError carries the limits for a client-facing message.
type ExhaustedError struct {
	Backend string
	Max     int
	Waited  time.Duration
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("too many connections for backend %s: all %d upstream connections stayed busy for %s; retry later or raise pool.max_connections",
		e.Backend, e.Max, e.Waited.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrExhausted) true.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

// PausedError is returned when the pool stayed paused for the whole
// checkout timeout.
type PausedError struct {
	Backend string
	Waited  time.Duration
}

func (e *PausedError) Error() string {
	return fmt.Sprintf("backend %s is paused by an operator (waited %s); retry later: POST /v1/backends/%s/resume on dbproxy's admin API ends the pause",
		e.Backend, e.Waited.Round(time.Millisecond), e.Backend)
}

// errSuperseded means the generation a checkout picked was rotated away
// before the dial; the checkout retries with the current one.
var errSuperseded = errors.New("credential generation superseded before use")

// Pool lends upstream connections of the current generation.
type Pool struct {
	opts  Options
	creds Credentials

	mu     sync.Mutex
	open   int // idle + lent
	idle   []*Lease
	wake   chan struct{} // closed and replaced when a slot or conn frees
	closed bool
	// warmKey and warmDial are the last checkout's, for min_idle.
	warmKey  string
	warmDial DialFunc
	stopJan  chan struct{}
	// paused holds checkouts back (operator pause); epoch counts operator
	// drains: connections opened before the latest one close when returned.
	paused bool
	epoch  uint64
}

// Lease is one upstream connection lent to a client.
type Lease struct {
	Conn Conn
	Gen  *creds.Generation
	// Key groups connections that are interchangeable, e.g. the same
	// startup parameters; only a matching key reuses an idle connection.
	Key string

	pool     *Pool
	epoch    uint64 // the pool's drain epoch when it was opened
	lastUsed time.Time
	idle     bool // in the idle list (for the state label)
	// busyG and idleG are this connection's gauge children, looked up
	// once: transaction pooling moves a connection between them per
	// transaction.
	busyG, idleG prometheus.Gauge
}

// New makes a pool and starts its janitor, which closes idle connections
// of superseded generations and those idle too long.
func New(c Credentials, o Options) *Pool {
	if o.MaxConnections <= 0 {
		o.MaxConnections = 20
	}
	if o.CheckoutTimeout <= 0 {
		o.CheckoutTimeout = 5 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	p := &Pool{opts: o, creds: c, wake: make(chan struct{}), stopJan: make(chan struct{})}
	go p.janitor()
	return p
}

// Credential returns the generation new connections would use, or why
// there is none, without taking a connection.
func (p *Pool) Credential(ctx context.Context) (*creds.Generation, error) {
	return p.creds.Current(ctx)
}

// Checkout lends a connection of the current generation with the given
// key, dialing a new one if none is idle and the cap allows.
func (p *Pool) Checkout(ctx context.Context, key string, dial DialFunc) (*Lease, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, p.opts.CheckoutTimeout)
	defer cancel()
	gen, err := p.creds.Current(ctx)
	if err != nil {
		return nil, err
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("pool closed")
		}
		p.warmKey, p.warmDial = key, dial
		if p.paused {
			wake := p.wake
			p.mu.Unlock()
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					p.opts.Metrics.checkout(p.opts.Backend, "paused", time.Since(start))
					return nil, &PausedError{Backend: p.opts.Backend, Waited: time.Since(start)}
				}
				return nil, ctx.Err()
			}
		}
		stale := p.takeStaleLocked(time.Now())
		if l := p.takeIdleLocked(gen, key); l != nil {
			l.setIdle(false)
			p.mu.Unlock()
			closeAll(stale)
			p.opts.Metrics.checkout(p.opts.Backend, "reused", time.Since(start))
			return l, nil
		}
		if p.open < p.opts.MaxConnections {
			p.open++
			p.mu.Unlock()
			closeAll(stale)
			l, err := p.dial(ctx, gen, key, dial, start)
			if errors.Is(err, errSuperseded) {
				// Rotated between Current and dial: use the new one.
				if gen, err = p.creds.Current(ctx); err != nil {
					return nil, err
				}
				continue
			}
			return l, err
		}
		if len(p.idle) > 0 {
			// At the cap, but only other keys' connections are idle: close
			// the least recently used one to make room rather than wait
			// for a busy connection that may never come.
			lru := p.idle[0]
			p.idle = slices.Delete(p.idle, 0, 1)
			p.mu.Unlock()
			closeAll(append(stale, lru))
			continue
		}
		wake := p.wake
		p.mu.Unlock()
		closeAll(stale)
		select {
		case <-wake:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				p.opts.Metrics.checkout(p.opts.Backend, "exhausted", time.Since(start))
				return nil, &ExhaustedError{Backend: p.opts.Backend, Max: p.opts.MaxConnections, Waited: time.Since(start)}
			}
			return nil, ctx.Err()
		}
	}
}

func (p *Pool) dial(ctx context.Context, gen *creds.Generation, key string, dial DialFunc, start time.Time) (*Lease, error) {
	l, err := p.open1(ctx, gen, key, dial)
	switch {
	case errors.Is(err, errSuperseded):
	case err != nil:
		p.opts.Metrics.checkout(p.opts.Backend, "dial_error", time.Since(start))
	default:
		p.opts.Metrics.checkout(p.opts.Backend, "dialed", time.Since(start))
	}
	return l, err
}

// open1 opens a connection in a slot the caller reserved (p.open++); on
// error the slot is freed.
func (p *Pool) open1(ctx context.Context, gen *creds.Generation, key string, dial DialFunc) (*Lease, error) {
	// A superseded generation would only be closed at the first
	// transaction boundary, and may be revoked as soon as it is unused.
	if gen.State() != creds.Active || !gen.Acquire() {
		p.freeSlot()
		return nil, fmt.Errorf("%w: generation %d of backend %s", errSuperseded, gen.N, p.opts.Backend)
	}
	c, err := dial(ctx, gen)
	if err != nil {
		gen.Release()
		p.freeSlot()
		return nil, err
	}
	p.mu.Lock()
	epoch := p.epoch
	p.mu.Unlock()
	l := &Lease{Conn: c, Gen: gen, Key: key, pool: p, epoch: epoch}
	l.gauge(+1)
	return l, nil
}

// Return gives the connection back. If reset succeeds and its generation
// is still current, it waits idle for the next client; otherwise it closes.
func (l *Lease) Return(ctx context.Context) {
	if l.Gen.State() != creds.Active || l.drained() {
		l.Close()
		return
	}
	if err := l.Conn.Reset(ctx); err != nil {
		l.Close()
		return
	}
	l.Put()
}

// Put gives the connection back without resetting it: transaction pooling
// returns connections at transaction boundaries, where nothing of one
// client's transaction is left. A superseded generation's connection closes.
func (l *Lease) Put() {
	p := l.pool
	if l.Gen.State() != creds.Active {
		l.Close()
		return
	}
	l.lastUsed = time.Now()
	p.mu.Lock()
	if p.closed || l.epoch != p.epoch {
		p.mu.Unlock()
		l.Close()
		return
	}
	l.setIdle(true)
	p.idle = append(p.idle, l)
	p.signalLocked()
	p.mu.Unlock()
}

// drained reports whether an operator drained the pool since this
// connection was opened.
func (l *Lease) drained() bool {
	l.pool.mu.Lock()
	defer l.pool.mu.Unlock()
	return l.epoch != l.pool.epoch
}

// gauge moves this connection's count in dbproxy_upstream_connections.
func (l *Lease) gauge(delta float64) {
	if l.busyG == nil {
		o := l.pool.opts
		gen := strconv.FormatUint(l.Gen.N, 10)
		l.busyG = o.Metrics.conns.WithLabelValues(o.Backend, o.Role, gen, "busy")
		l.idleG = o.Metrics.conns.WithLabelValues(o.Backend, o.Role, gen, "idle")
	}
	if l.idle {
		l.idleG.Add(delta)
	} else {
		l.busyG.Add(delta)
	}
}

func (l *Lease) setIdle(idle bool) {
	l.gauge(-1)
	l.idle = idle
	l.gauge(+1)
}

// Close closes the connection and frees its slot.
func (l *Lease) Close() {
	_ = l.Conn.Close()
	l.Gen.Release()
	l.gauge(-1)
	l.pool.freeSlot()
}

func (p *Pool) freeSlot() {
	p.mu.Lock()
	p.open--
	p.signalLocked()
	p.mu.Unlock()
}

func (p *Pool) signalLocked() {
	close(p.wake)
	p.wake = make(chan struct{})
}

// takeIdleLocked pops the most recently used idle connection for gen+key.
func (p *Pool) takeIdleLocked(gen *creds.Generation, key string) *Lease {
	for i := len(p.idle) - 1; i >= 0; i-- {
		l := p.idle[i]
		if l.Gen == gen && l.Key == key {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			return l
		}
	}
	return nil
}

// takeStaleLocked removes idle connections that must close: superseded
// generation or idle too long. The caller closes them outside the lock.
func (p *Pool) takeStaleLocked(now time.Time) []*Lease {
	var stale []*Lease
	// spare is how many current-generation connections may still time
	// out without going below min_idle. Every checkout sweeps, so without
	// min_idle it skips counting.
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
		case now.Sub(l.lastUsed) > p.opts.IdleTimeout && spare > 0:
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

func (p *Pool) janitor() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stopJan:
			return
		case now := <-t.C:
			p.mu.Lock()
			stale := p.takeStaleLocked(now)
			p.mu.Unlock()
			closeAll(stale)
			p.warm()
		}
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
		if p.closed || dial == nil || have >= p.opts.MinIdle || p.open >= p.opts.MaxConnections {
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
	p.signalLocked()
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
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Backend: p.opts.Backend, Role: p.opts.Role, Open: p.open, Idle: len(p.idle), Max: p.opts.MaxConnections, Paused: p.paused}
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
	p.signalLocked()
	p.mu.Unlock()
	closeAll(idle)
}
