package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/creds"
)

// fakeCreds hands out one generation. A *creds.Generation built as a
// literal is Active (the zero State) and has no source, which is all the
// pool needs; superseding it needs creds internals, so draining is
// covered by creds' own tests and the integration tests.
type fakeCreds struct {
	gen *creds.Generation
	err error
}

func (f *fakeCreds) Current(context.Context) (*creds.Generation, error) { return f.gen, f.err }

type fakeConn struct {
	id       int
	resetErr error
	resets   atomic.Int32
	closed   atomic.Int32
	live     *atomic.Int32 // the dialer's count of open conns
}

func (c *fakeConn) Reset(context.Context) error {
	c.resets.Add(1)
	return c.resetErr
}

func (c *fakeConn) Close() error {
	if c.closed.Add(1) == 1 {
		c.live.Add(-1)
	}
	return nil
}

// dialer records every connection it opens.
type dialer struct {
	mu    sync.Mutex
	conns []*fakeConn
	live  atomic.Int32
	peak  atomic.Int32
	err   error
	gens  []*creds.Generation
}

func (d *dialer) dial(_ context.Context, g *creds.Generation) (Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return nil, d.err
	}
	c := &fakeConn{id: len(d.conns) + 1, live: &d.live}
	d.conns = append(d.conns, c)
	d.gens = append(d.gens, g)
	n := d.live.Add(1)
	for {
		p := d.peak.Load()
		if n <= p || d.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return c, nil
}

func (d *dialer) dials() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

func newTestPool(t *testing.T, o Options) (*Pool, *creds.Generation) {
	t.Helper()
	g := &creds.Generation{N: 1, Backend: "orders", Role: "rw", Username: "v-rw-1"}
	if o.Backend == "" {
		o.Backend = "orders"
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	p := New(&fakeCreds{gen: g}, o)
	t.Cleanup(p.Close)
	return p, g
}

func checkout(t *testing.T, p *Pool, key string, d *dialer) *Lease {
	t.Helper()
	l, err := p.Checkout(context.Background(), key, d.dial)
	if err != nil {
		t.Fatalf("Checkout(%q): %v", key, err)
	}
	return l
}

func wantStats(t *testing.T, p *Pool, open, idle int) {
	t.Helper()
	if s := p.Stats(); s.Open != open || s.Idle != idle {
		t.Fatalf("stats = open %d idle %d, want open %d idle %d", s.Open, s.Idle, open, idle)
	}
}

func TestCheckoutDials(t *testing.T) {
	p, g := newTestPool(t, Options{Role: "rw", MaxConnections: 3})
	d := &dialer{}
	l := checkout(t, p, "k", d)
	if d.dials() != 1 || l.Conn != d.conns[0] {
		t.Fatalf("lease conn %v after %d dials, want the one dialed", l.Conn, d.dials())
	}
	if l.Gen != g || d.gens[0] != g || l.Key != "k" {
		t.Fatalf("lease = gen %p key %q; want gen %p key k", l.Gen, l.Key, g)
	}
	if g.Info().Connections != 1 {
		t.Fatalf("generation has %d connections, want 1 (acquired by the dial)", g.Info().Connections)
	}
	wantStats(t, p, 1, 0)
	if s := p.Stats(); s.Backend != "orders" || s.Role != "rw" || s.Max != 3 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestReturnThenCheckoutReusesSameKey(t *testing.T) {
	p, g := newTestPool(t, Options{MaxConnections: 3})
	d := &dialer{}
	l1 := checkout(t, p, "a", d)
	c1 := l1.Conn.(*fakeConn)
	l1.Return(context.Background())
	if c1.resets.Load() != 1 || c1.closed.Load() != 0 {
		t.Fatalf("returned conn: %d resets, %d closes; want 1 reset, open", c1.resets.Load(), c1.closed.Load())
	}
	wantStats(t, p, 1, 1)

	l2 := checkout(t, p, "a", d)
	if l2.Conn != c1 || d.dials() != 1 {
		t.Fatalf("same key: got conn %d after %d dials, want conn 1 reused", l2.Conn.(*fakeConn).id, d.dials())
	}
	if l2.Gen != g || l2.Key != "a" {
		t.Fatalf("reused lease: gen %p key %q", l2.Gen, l2.Key)
	}
	wantStats(t, p, 1, 0)
	if g.Info().Connections != 1 {
		t.Fatalf("generation has %d connections, want 1", g.Info().Connections)
	}
}

func TestReturnThenCheckoutOtherKeyDials(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 3})
	d := &dialer{}
	l1 := checkout(t, p, "a", d)
	l1.Return(context.Background())

	l2 := checkout(t, p, "b", d)
	if l2.Conn == l1.Conn || d.dials() != 2 || l2.Key != "b" {
		t.Fatalf("other key: got conn %d after %d dials, want a new conn", l2.Conn.(*fakeConn).id, d.dials())
	}
	wantStats(t, p, 2, 1)
	// The idle conn of key a is still there for key a.
	if l3 := checkout(t, p, "a", d); l3.Conn != l1.Conn {
		t.Fatal("key a's idle conn not reused")
	}
}

// The most recently returned matching conn is reused first.
func TestCheckoutReusesMostRecentlyReturned(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 3})
	d := &dialer{}
	l1, l2 := checkout(t, p, "a", d), checkout(t, p, "a", d)
	l1.Return(context.Background())
	l2.Return(context.Background())
	if l := checkout(t, p, "a", d); l.Conn != l2.Conn {
		t.Fatalf("got conn %d, want the last returned (%d)", l.Conn.(*fakeConn).id, l2.Conn.(*fakeConn).id)
	}
}

// At the cap, with only another key's connections idle, a checkout
// closes the least recently used idle connection to make room instead
// of waiting for a busy one that will never come.
func TestCheckoutAtCapEvictsIdleOfOtherKey(t *testing.T) {
	p, g := newTestPool(t, Options{MaxConnections: 2, CheckoutTimeout: time.Second})
	d := &dialer{}
	la, lb := checkout(t, p, "a", d), checkout(t, p, "b", d)
	ca, cb := la.Conn.(*fakeConn), lb.Conn.(*fakeConn)
	la.Return(context.Background())
	lb.Return(context.Background())
	wantStats(t, p, 2, 2)

	start := time.Now()
	l, err := p.Checkout(context.Background(), "c", d.dial)
	if err != nil {
		t.Fatalf("Checkout(c) with only idle conns at the cap: %v", err)
	}
	if waited := time.Since(start); waited > 500*time.Millisecond {
		t.Fatalf("Checkout(c) waited %v", waited)
	}
	if l.Conn.(*fakeConn).id != 3 || ca.closed.Load() != 1 || cb.closed.Load() != 0 {
		t.Fatalf("got conn %d; closed a=%d b=%d; want a new conn and the least recently used (a) closed",
			l.Conn.(*fakeConn).id, ca.closed.Load(), cb.closed.Load())
	}
	wantStats(t, p, 2, 1)
	if g.Info().Connections != 2 {
		t.Fatalf("generation has %d connections, want 2", g.Info().Connections)
	}
}

func TestMaxConnectionsEnforced(t *testing.T) {
	const timeout = 100 * time.Millisecond
	p, _ := newTestPool(t, Options{MaxConnections: 2, CheckoutTimeout: timeout})
	d := &dialer{}
	checkout(t, p, "k", d)
	checkout(t, p, "k", d)

	start := time.Now()
	l, err := p.Checkout(context.Background(), "k", d.dial)
	waited := time.Since(start)
	if l != nil || err == nil {
		t.Fatalf("third checkout = %v, %v; want ExhaustedError", l, err)
	}
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("errors.Is(%v, ErrExhausted) = false", err)
	}
	var ex *ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("error %T is not *ExhaustedError", err)
	}
	if ex.Backend != "orders" || ex.Max != 2 || ex.Waited < timeout {
		t.Fatalf("ExhaustedError = %+v", ex)
	}
	if waited < timeout {
		t.Fatalf("gave up after %v, before CheckoutTimeout %v", waited, timeout)
	}
	if d.dials() != 2 {
		t.Fatalf("%d dials, want 2", d.dials())
	}
	wantStats(t, p, 2, 0)

	// Wrapped, it is still recognised.
	if w := fmt.Errorf("login: %w", err); !errors.Is(w, ErrExhausted) {
		t.Fatal("wrapped ExhaustedError is not ErrExhausted")
	}
}

// A waiter gets a connection as soon as one is returned or closed.
func TestCheckoutWaitsForFreedConnection(t *testing.T) {
	for _, how := range []string{"return", "close"} {
		t.Run(how, func(t *testing.T) {
			p, _ := newTestPool(t, Options{MaxConnections: 1, CheckoutTimeout: 5 * time.Second})
			d := &dialer{}
			l1 := checkout(t, p, "k", d)
			got := make(chan *Lease, 1)
			go func() {
				l, err := p.Checkout(context.Background(), "k", d.dial)
				if err != nil {
					t.Error(err)
				}
				got <- l
			}()
			select {
			case <-got:
				t.Fatal("checkout beyond the cap did not wait")
			case <-time.After(50 * time.Millisecond):
			}
			if how == "return" {
				l1.Return(context.Background())
			} else {
				l1.Close()
			}
			select {
			case l2 := <-got:
				if l2 == nil {
					return
				}
				reused := l2.Conn == l1.Conn
				if reused != (how == "return") {
					t.Fatalf("after %s: reused = %v", how, reused)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("waiter not woken by %s", how)
			}
			wantStats(t, p, 1, 0)
		})
	}
}

func TestCheckoutCanceledIsNotExhausted(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 1, CheckoutTimeout: 5 * time.Second})
	d := &dialer{}
	checkout(t, p, "k", d)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err := p.Checkout(ctx, "k", d.dial)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrExhausted) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
}

func TestReturnResetFailureCloses(t *testing.T) {
	p, g := newTestPool(t, Options{MaxConnections: 1})
	d := &dialer{}
	l := checkout(t, p, "k", d)
	c := l.Conn.(*fakeConn)
	c.resetErr = errors.New("DISCARD ALL failed")
	l.Return(context.Background())
	if c.closed.Load() != 1 {
		t.Fatal("conn whose Reset failed was not closed")
	}
	wantStats(t, p, 0, 0)
	if g.Info().Connections != 0 {
		t.Fatalf("generation still has %d connections", g.Info().Connections)
	}
	// Its slot is free: the next checkout dials without waiting.
	if l2 := checkout(t, p, "k", d); l2.Conn == c || d.dials() != 2 {
		t.Fatal("closed conn reused")
	}
}

func TestDialErrorFreesSlot(t *testing.T) {
	p, g := newTestPool(t, Options{MaxConnections: 1, CheckoutTimeout: 100 * time.Millisecond})
	boom := errors.New("connection refused")
	d := &dialer{err: boom}
	if _, err := p.Checkout(context.Background(), "k", d.dial); !errors.Is(err, boom) {
		t.Fatalf("error = %v, want %v", err, boom)
	}
	wantStats(t, p, 0, 0)
	if g.Info().Connections != 0 {
		t.Fatalf("generation has %d connections after a failed dial", g.Info().Connections)
	}
	d.err = nil
	checkout(t, p, "k", d)
}

func TestCredentialsErrorPropagates(t *testing.T) {
	boom := errors.New("vault down")
	p := New(&fakeCreds{err: boom}, Options{Backend: "orders", Metrics: NewMetrics(nil)})
	defer p.Close()
	d := &dialer{}
	if _, err := p.Checkout(context.Background(), "k", d.dial); !errors.Is(err, boom) {
		t.Fatalf("error = %v, want %v", err, boom)
	}
	if d.dials() != 0 {
		t.Fatal("dialed without a credential")
	}
}

func TestCloseClosesIdle(t *testing.T) {
	p, g := newTestPool(t, Options{MaxConnections: 3})
	d := &dialer{}
	l1, l2, l3 := checkout(t, p, "a", d), checkout(t, p, "b", d), checkout(t, p, "a", d)
	l1.Return(context.Background())
	l2.Return(context.Background())
	wantStats(t, p, 3, 2)

	p.Close()
	for _, c := range d.conns[:2] {
		if c.closed.Load() != 1 {
			t.Fatalf("idle conn %d not closed (closes: %d)", c.id, c.closed.Load())
		}
	}
	if d.conns[2].closed.Load() != 0 {
		t.Fatal("lent conn closed by Close")
	}
	wantStats(t, p, 1, 0)

	// The lent conn closes when its client returns it.
	l3.Return(context.Background())
	if d.conns[2].closed.Load() != 1 {
		t.Fatal("conn returned after Close was not closed")
	}
	wantStats(t, p, 0, 0)
	if g.Info().Connections != 0 {
		t.Fatalf("generation still has %d connections", g.Info().Connections)
	}

	if _, err := p.Checkout(context.Background(), "a", d.dial); err == nil {
		t.Fatal("checkout from a closed pool succeeded")
	}
	p.Close() // idempotent
}

// Close wakes a checkout waiting for a slot.
func TestCloseWakesWaiter(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 1, CheckoutTimeout: 10 * time.Second})
	d := &dialer{}
	checkout(t, p, "k", d)
	done := make(chan error, 1)
	go func() {
		_, err := p.Checkout(context.Background(), "k", d.dial)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	p.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("waiter got a connection from a closed pool")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake the waiter")
	}
}

func TestIdleTimeoutCloses(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 2, IdleTimeout: 30 * time.Millisecond})
	d := &dialer{}
	l := checkout(t, p, "k", d)
	c := l.Conn.(*fakeConn)
	l.Return(context.Background())
	// The janitor (every 250ms) or the next checkout closes it.
	deadline := time.Now().Add(2 * time.Second)
	for c.closed.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.closed.Load() != 1 {
		t.Fatal("conn idle past IdleTimeout not closed")
	}
	wantStats(t, p, 0, 0)
	if l2 := checkout(t, p, "k", d); l2.Conn == c {
		t.Fatal("timed-out conn reused")
	}
}

func TestDefaults(t *testing.T) {
	p := New(&fakeCreds{}, Options{Metrics: NewMetrics(nil)})
	defer p.Close()
	if p.opts.MaxConnections != 20 || p.opts.CheckoutTimeout != 5*time.Second || p.opts.IdleTimeout != 5*time.Minute {
		t.Fatalf("defaults = %+v", p.opts)
	}
}

// Many clients against a small pool: the cap holds, every checkout is
// served (clients hold briefly, so no one waits past the timeout), and at
// the end every conn is idle or closed.
func TestConcurrentCheckoutRespectsCap(t *testing.T) {
	const capN = 3
	p, g := newTestPool(t, Options{MaxConnections: capN, CheckoutTimeout: 5 * time.Second})
	d := &dialer{}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for j := range 50 {
				key := fmt.Sprintf("k%d", (i+j)%4)
				l, err := p.Checkout(context.Background(), key, d.dial)
				if err != nil {
					t.Error(err)
					return
				}
				if l.Key != key {
					t.Errorf("asked for %s, got a lease for %s", key, l.Key)
				}
				if s := p.Stats(); s.Open > capN {
					t.Errorf("%d open, cap %d", s.Open, capN)
				}
				if j%7 == 0 {
					l.Close()
				} else {
					l.Return(context.Background())
				}
			}
		})
	}
	wg.Wait()
	if peak := d.peak.Load(); peak > capN {
		t.Fatalf("%d conns open at once, cap %d", peak, capN)
	}
	s := p.Stats()
	if s.Open != s.Idle || int(d.live.Load()) != s.Open || g.Info().Connections != s.Open {
		t.Fatalf("after all clients: stats %+v, %d live conns, generation has %d", s, d.live.Load(), g.Info().Connections)
	}
}

func TestMinIdleWarmsAndSurvivesIdleTimeout(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 5, MinIdle: 3, IdleTimeout: 30 * time.Millisecond})
	d := &dialer{}
	l := checkout(t, p, "k", d) // teaches the pool the key to warm
	// The janitor tops up to 3 idle beside the busy one.
	deadline := time.Now().Add(3 * time.Second)
	for p.Stats().Idle < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	wantStats(t, p, 4, 3)
	l.Put()
	// Past the idle timeout, only the one above min_idle closes.
	time.Sleep(600 * time.Millisecond)
	wantStats(t, p, 3, 3)
	if d.dials() != 4 {
		t.Fatalf("%d dials, want 4 (no churn below min_idle)", d.dials())
	}
}

func TestMinIdleRespectsCap(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 2, MinIdle: 2})
	d := &dialer{}
	l1 := checkout(t, p, "k", d)
	l2 := checkout(t, p, "k", d)
	time.Sleep(600 * time.Millisecond)
	wantStats(t, p, 2, 0)
	l1.Put()
	l2.Put()
	wantStats(t, p, 2, 2)
}

func TestPauseHoldsCheckoutsUntilResume(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 2, CheckoutTimeout: 2 * time.Second})
	d := &dialer{}
	checkout(t, p, "k", d).Put()
	p.Pause()
	if !p.Stats().Paused {
		t.Fatal("stats do not say paused")
	}
	got := make(chan error, 1)
	go func() {
		l, err := p.Checkout(context.Background(), "k", d.dial)
		if err == nil {
			l.Put()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("checkout went on while paused: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	p.Resume()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("resume did not release the waiting checkout")
	}
}

func TestPausedCheckoutTimesOutWithPausedError(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 2, CheckoutTimeout: 100 * time.Millisecond})
	p.Pause()
	_, err := p.Checkout(context.Background(), "k", (&dialer{}).dial)
	var pe *PausedError
	if !errors.As(err, &pe) || pe.Backend != "orders" {
		t.Fatalf("want PausedError for orders, got %v", err)
	}
}

func TestDrainClosesIdleNowAndLentOnReturn(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 3})
	d := &dialer{}
	idle := checkout(t, p, "k", d)
	lent := checkout(t, p, "k", d)
	idle.Put()
	p.Drain()
	if idle.Conn.(*fakeConn).closed.Load() != 1 {
		t.Fatal("idle connection not closed by Drain")
	}
	if lent.Conn.(*fakeConn).closed.Load() != 0 {
		t.Fatal("a lent connection was closed under its client")
	}
	lent.Put()
	if lent.Conn.(*fakeConn).closed.Load() != 1 {
		t.Fatal("a connection opened before Drain went back to the pool")
	}
	wantStats(t, p, 0, 0)
	fresh := checkout(t, p, "k", d)
	fresh.Put()
	wantStats(t, p, 1, 1) // opened after the drain: kept
	if d.dials() != 3 {
		t.Fatalf("%d dials, want 3", d.dials())
	}
}
