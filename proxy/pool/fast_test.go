package pool

import (
	"context"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/creds"
)

// A return goes to the longest waiting checkout for its key, and only one
// waiter is woken per returned connection.
func TestReturnHandsOffToWaitersInOrder(t *testing.T) {
	p, _ := newTestPool(t, Options{MaxConnections: 1, CheckoutTimeout: 5 * time.Second})
	d := &dialer{}
	l := checkout(t, p, "k", d)
	got := make(chan int, 3)
	for i := range 3 {
		go func() {
			l, err := p.Checkout(context.Background(), "k", d.dial)
			if err != nil {
				t.Error(err)
				return
			}
			got <- i
			time.Sleep(10 * time.Millisecond)
			l.Put()
		}()
		// Each waiter queues before the next starts.
		deadline := time.Now().Add(2 * time.Second)
		for p.Stats().Waiting != i+1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	l.Put()
	for want := range 3 {
		select {
		case i := <-got:
			if i != want {
				t.Fatalf("waiter %d served before waiter %d", i, want)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("waiter %d never served", want)
		}
	}
	if d.dials() != 1 {
		t.Fatalf("%d dials, want 1: returns must go to waiters", d.dials())
	}
}

// BenchmarkCheckoutPut is the transaction-pool hot path: an idle
// connection lent and given back. It must not allocate.
func BenchmarkCheckoutPut(b *testing.B) {
	p := New(&fakeCreds{gen: newGen()}, Options{Backend: "orders", Metrics: NewMetrics(nil)})
	defer p.Close()
	d := &dialer{}
	l, err := p.Checkout(context.Background(), "k", d.dial)
	if err != nil {
		b.Fatal(err)
	}
	l.Put()
	ctx, dial := context.Background(), d.dial
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		l, err := p.Checkout(ctx, "k", dial)
		if err != nil {
			b.Fatal(err)
		}
		l.Put()
	}
}

func newGen() *creds.Generation {
	return &creds.Generation{N: 1, Backend: "orders", Role: "rw", Username: "v-rw-1"}
}
