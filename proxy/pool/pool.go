// Package pool keeps upstream database connections per (backend, Vault
// role), each tied to the credential generation it logged in with. It caps
// how many exist, lends them out, takes them back, and closes those of a
// superseded generation as soon as they are idle. It knows nothing about
// wire protocols: it pools anything that can Reset and Close.
//
// A checkout that finds an idle connection takes one lock and allocates
// nothing; only a checkout that has to wait or dial makes a context and a
// waiter. Returned connections go straight to the longest waiting
// checkout for their key (FIFO), so one return wakes one waiter.
package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
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

// Holder is the client side of a lent connection. The pool interrupts it
// when the connection's credential reaches its drain deadline, so a relay
// blocked anywhere notices at once (typically by setting deadlines on its
// sockets) without a goroutine or timer of its own.
type Holder interface {
	Interrupt()
}

// Mover is a Holder that can move to a connection of the new generation
// by itself when the one it holds is superseded (session mode): the pool
// tells it when the drain starts, well before the deadline.
type Mover interface {
	Superseded()
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

// Pool lends upstream connections of the current generation.
type Pool struct {
	opts  Options
	creds Credentials
	obs   checkoutObservers
	// clock is a coarse time (unix nanos) the janitor advances each tick:
	// idle timeouts need no precision, and reading the clock per return
	// costs more than the rest of Put on a VM.
	clock atomic.Int64

	mu      sync.Mutex
	open    int // idle + lent
	idle    []*Lease
	lent    map[*Lease]struct{} // for interrupts at a drain deadline
	waiters []*waiter           // FIFO
	watched map[*creds.Generation]bool
	closed  bool
	// warmKey and warmDial are the last checkout's, for min_idle.
	warmKey  string
	warmDial DialFunc
	stopJan  chan struct{}
	// paused holds checkouts back (operator pause); epoch counts operator
	// drains: connections opened before the latest one close when returned.
	paused bool
	epoch  uint64
	gate   dialGate // dial backoff while the database refuses connections
}

// waiter is a checkout waiting for a connection or a free slot. A lease
// sent on ch is the waiter's; a nil one means "look again".
type waiter struct {
	key string
	ch  chan *Lease
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
	lastUsed int64  // coarse unix nanos (pool.clock)
	idle     bool   // in the idle list (for the state label)
	holder   Holder // while lent; guarded by pool.mu
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
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	p := &Pool{opts: o, creds: c, stopJan: make(chan struct{}),
		lent: map[*Lease]struct{}{}, watched: map[*creds.Generation]bool{}}
	p.obs = o.Metrics.observers(o.Backend)
	p.clock.Store(time.Now().UnixNano())
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
	return p.CheckoutFor(ctx, key, dial, nil)
}

// CheckoutFor is Checkout for a holder the pool interrupts if the
// connection's generation reaches its drain deadline while lent.
func (p *Pool) CheckoutFor(ctx context.Context, key string, dial DialFunc, h Holder) (*Lease, error) {
	if l := p.takeFast(key, h); l != nil {
		// Under a microsecond: observed as 0 rather than paying for two
		// clock reads (expensive on some VMs) per transaction.
		p.obs.reused.Observe(0)
		return l, nil
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, p.opts.CheckoutTimeout)
	defer cancel()
	return p.checkoutSlow(ctx, key, dial, h, start)
}

// takeFast lends the most recently used idle connection for key if its
// generation is still the active one: the common case, one lock, no
// allocation. Checkouts already waiting go first.
func (p *Pool) takeFast(key string, h Holder) *Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.paused || len(p.waiters) > 0 {
		return nil
	}
	p.warmKey = key
	for i := len(p.idle) - 1; i >= 0; i-- {
		l := p.idle[i]
		if l.Key != key || l.Gen.State() != creds.Active {
			continue
		}
		p.idle = slices.Delete(p.idle, i, i+1)
		p.lendLocked(l, h)
		return l
	}
	return nil
}

// lendLocked marks l lent to h. p.mu is held.
func (p *Pool) lendLocked(l *Lease, h Holder) {
	l.setIdle(false)
	l.holder = h
	p.lent[l] = struct{}{}
}

func (p *Pool) checkoutSlow(ctx context.Context, key string, dial DialFunc, h Holder, start time.Time) (*Lease, error) {
	gen, err := p.current(ctx)
	if err != nil {
		return nil, err
	}
	dialed := false
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("pool closed")
		}
		p.warmKey, p.warmDial = key, dial
		var backoff time.Duration // > 0: wait for the dial gate
		if !p.paused {
			if l := p.takeIdleLocked(gen, key); l != nil {
				p.lendLocked(l, h)
				p.mu.Unlock()
				p.obs.reused.Observe(time.Since(start).Seconds())
				return l, nil
			}
			if p.open < p.opts.MaxConnections {
				deadline, _ := ctx.Deadline()
				if dialed {
					deadline = time.Time{}
				}
				if backoff = p.gate.wait(time.Now(), deadline); backoff == 0 {
					dialed = true
					p.open++
					p.mu.Unlock()
					l, again, err := p.dialChecked(ctx, gen, key, dial, h, start)
					if !again {
						return l, err
					}
					if gen, err = p.current(ctx); err != nil {
						return nil, err
					}
					continue
				}
			} else if len(p.idle) > 0 {
				// At the cap, but only other keys' connections are idle:
				// close the least recently used one to make room rather
				// than wait for a busy connection that may never come.
				lru := p.idle[0]
				p.idle = slices.Delete(p.idle, 0, 1)
				p.mu.Unlock()
				lru.Close()
				continue
			}
		}
		w := &waiter{key: key, ch: make(chan *Lease, 1)}
		p.waiters = append(p.waiters, w)
		paused := p.paused
		p.mu.Unlock()
		var retry <-chan time.Time
		var timer *time.Timer
		if backoff > 0 {
			timer = time.NewTimer(backoff)
			retry = timer.C
		}
		select {
		case l := <-w.ch:
			if l != nil {
				p.mu.Lock()
				p.lendLocked(l, h)
				p.mu.Unlock()
				p.obs.reused.Observe(time.Since(start).Seconds())
				return l, nil
			}
			// Woken to look again; the generation may have moved on.
			if g, err := p.current(ctx); err == nil {
				gen = g
			}
		case <-retry:
			p.abandon(w)
		case <-ctx.Done():
			p.abandon(w)
			return nil, p.checkoutFailed(ctx, paused, start)
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// dialChecked dials in a slot the caller reserved and records the outcome
// in the dial gate. again says the checkout should look again: the
// credential changed under the dial, or the database refused it and the
// checkout may wait for the gate.
func (p *Pool) dialChecked(ctx context.Context, gen *creds.Generation, key string, dial DialFunc, h Holder, start time.Time) (l *Lease, again bool, err error) {
	l, err = p.dial(ctx, gen, key, dial, h, start)
	// Rotated between Current and dial, or the database refused the
	// credential (revoked behind our back) and the source is fetching
	// the next: neither says the database is down.
	credential := errors.Is(err, errSuperseded) || err != nil && gen.State() != creds.Active
	p.mu.Lock()
	if p.gate.done(err, !credential && ctx.Err() == nil, time.Now()) {
		p.wakeAllLocked()
	}
	p.mu.Unlock()
	again = credential || err != nil && ctx.Err() == nil
	if err != nil && !again {
		p.obs.dialError.Observe(time.Since(start).Seconds())
	}
	return l, again, err
}

// checkoutFailed is the error of a checkout whose wait ended unserved.
func (p *Pool) checkoutFailed(ctx context.Context, paused bool, start time.Time) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	waited := time.Since(start)
	p.mu.Lock()
	failing, lastErr := p.gate.failing(), p.gate.lastErr
	p.mu.Unlock()
	switch {
	case paused:
		p.obs.paused.Observe(waited.Seconds())
		return &PausedError{Backend: p.opts.Backend, Waited: waited}
	case failing:
		p.obs.dialError.Observe(waited.Seconds())
		return &UnavailableError{Backend: p.opts.Backend, Waited: waited, Err: lastErr}
	}
	p.obs.exhausted.Observe(waited.Seconds())
	return &ExhaustedError{Backend: p.opts.Backend, Max: p.opts.MaxConnections, Waited: waited}
}

// current returns the generation for new connections. In a credential
// gap (the last one was revoked or ran out, the next is being fetched)
// it waits, up to the checkout's deadline, instead of failing at once:
// a client between transactions should not see the gap.
func (p *Pool) current(ctx context.Context) (*creds.Generation, error) {
	var tick *time.Ticker
	for {
		gen, err := p.creds.Current(ctx)
		var nc *creds.ErrNoCredential
		if err == nil || !errors.As(err, &nc) {
			return gen, err
		}
		if tick == nil {
			tick = time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-tick.C:
		}
	}
}

// abandon removes a waiter that gave up. A lease handed to it in the
// meantime goes back (to the next waiter or the idle list).
func (p *Pool) abandon(w *waiter) {
	p.mu.Lock()
	if i := slices.Index(p.waiters, w); i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
	}
	p.mu.Unlock()
	select {
	case l := <-w.ch:
		if l != nil {
			l.Put()
		} else {
			p.wakeOne() // pass the wake-up on
		}
	default:
	}
}

func (p *Pool) dial(ctx context.Context, gen *creds.Generation, key string, dial DialFunc, h Holder, start time.Time) (*Lease, error) {
	l, err := p.open1(ctx, gen, key, dial)
	switch {
	case err != nil:
		// Observed by the checkout when it gives up (dialChecked).
	default:
		p.mu.Lock()
		p.lendLocked(l, h)
		p.mu.Unlock()
		p.obs.dialed.Observe(time.Since(start).Seconds())
	}
	return l, err
}

// open1 opens a connection in a slot the caller reserved (p.open++); on
// error the slot is freed. The lease starts busy and not lent.
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
	if !p.watched[gen] {
		p.watched[gen] = true
		go p.watchGen(gen)
	}
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
// client's transaction is left. A superseded generation's connection
// closes. A checkout waiting for this key gets it directly.
func (l *Lease) Put() {
	p := l.pool
	if l.Gen.State() != creds.Active {
		l.Close()
		return
	}
	l.lastUsed = p.clock.Load()
	p.mu.Lock()
	delete(p.lent, l)
	l.holder = nil
	if p.closed || l.epoch != p.epoch {
		p.mu.Unlock()
		l.Close()
		return
	}
	for i, w := range p.waiters {
		if w.key == l.Key {
			p.waiters = slices.Delete(p.waiters, i, i+1)
			p.mu.Unlock()
			w.ch <- l // buffered: never blocks
			return
		}
	}
	l.setIdle(true)
	p.idle = append(p.idle, l)
	p.wakeOneLocked() // a waiter for another key may evict it
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
	if l.idle == idle {
		return
	}
	l.gauge(-1)
	l.idle = idle
	l.gauge(+1)
}

// Close closes the connection and frees its slot.
func (l *Lease) Close() {
	_ = l.Conn.Close()
	l.Gen.Release()
	l.gauge(-1)
	p := l.pool
	p.mu.Lock()
	delete(p.lent, l)
	l.holder = nil
	p.open--
	p.wakeOneLocked()
	p.mu.Unlock()
}

func (p *Pool) freeSlot() {
	p.mu.Lock()
	p.open--
	p.wakeOneLocked()
	p.mu.Unlock()
}

func (p *Pool) wakeOne() {
	p.mu.Lock()
	p.wakeOneLocked()
	p.mu.Unlock()
}

// wakeOneLocked tells the longest waiting checkout to look again (a slot
// freed, or an idle connection it may evict).
func (p *Pool) wakeOneLocked() {
	if len(p.waiters) == 0 {
		return
	}
	w := p.waiters[0]
	p.waiters = slices.Delete(p.waiters, 0, 1)
	w.ch <- nil
}

// wakeAllLocked tells every waiting checkout to look again.
func (p *Pool) wakeAllLocked() {
	for _, w := range p.waiters {
		w.ch <- nil
	}
	p.waiters = p.waiters[:0]
}

// takeIdleLocked pops the most recently used idle connection for gen+key.
func (p *Pool) takeIdleLocked(gen *creds.Generation, key string) *Lease {
	for i := len(p.idle) - 1; i >= 0; i-- {
		l := p.idle[i]
		if l.Gen == gen && l.Key == key {
			p.idle = slices.Delete(p.idle, i, i+1)
			return l
		}
	}
	return nil
}

// watchGen interrupts the holders of gen's connections at its drain
// deadline: one goroutine per generation, not per connection.
func (p *Pool) watchGen(gen *creds.Generation) {
	select {
	case <-p.stopJan:
		return
	case <-gen.Draining():
	}
	for _, h := range p.holders(gen) {
		if m, ok := h.(Mover); ok {
			m.Superseded()
		}
	}
	select {
	case <-p.stopJan:
		return
	case <-gen.Expired():
	}
	hs := p.holders(gen)
	p.mu.Lock()
	delete(p.watched, gen)
	p.mu.Unlock()
	for _, h := range hs {
		h.Interrupt()
	}
}

// holders returns the holders of gen's lent connections.
func (p *Pool) holders(gen *creds.Generation) []Holder {
	p.mu.Lock()
	defer p.mu.Unlock()
	var hs []Holder
	for l := range p.lent {
		if l.Gen == gen && l.holder != nil {
			hs = append(hs, l.holder)
		}
	}
	return hs
}
