package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/creds"
)

// While the database refuses connections, waiting checkouts probe it one
// at a time with backoff (no dial storm) and all succeed once it is back,
// within their checkout timeout.
func TestDialBackoffWhileDatabaseDown(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 10, CheckoutTimeout: 5 * time.Second})
	var attempts atomic.Int32
	var up atomic.Bool
	d := &dialer{}
	dial := func(ctx context.Context, g *creds.Generation) (Conn, error) {
		attempts.Add(1)
		if !up.Load() {
			return nil, errors.New("connection refused")
		}
		return d.dial(ctx, g)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Go(func() {
			l, err := p.Checkout(context.Background(), "k", dial)
			if err != nil {
				errs <- err
				return
			}
			l.Put()
		})
	}
	time.Sleep(600 * time.Millisecond)
	during := attempts.Load()
	up.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("checkout after the database came back: %v", err)
	}
	// Ten checkouts retrying for 600 ms without a gate would dial
	// thousands of times; with it, about log2(600/50) + the first ten.
	if during > 25 {
		t.Fatalf("%d dials in 600 ms of outage: a dial storm", during)
	}
	t.Logf("%d dials during the outage", during)
}

// A checkout that waits its whole timeout while the database refuses
// connections says so, with the last dial error inside.
func TestDialBackoffGivesUpWithUnavailable(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 2, CheckoutTimeout: 300 * time.Millisecond})
	boom := errors.New("connection refused")
	_, err := p.Checkout(context.Background(), "k", (&dialer{err: boom}).dial)
	var ue *UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, boom) || ue.Waited < 250*time.Millisecond {
		t.Fatalf("error = %v, want an UnavailableError after the timeout wrapping %v", err, boom)
	}
}
