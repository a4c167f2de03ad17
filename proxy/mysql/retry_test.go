package mysql

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A connection that dies under the first command sent on it is replaced
// and the command sent again; the client sees only its answer.
func TestRetryOnDeadPooledConnection(t *testing.T) {
	for _, killed := range []bool{false, true} {
		name := map[bool]string{false: "closed", true: "goodbye ERR"}[killed]
		t.Run(name, func(t *testing.T) {
			f := &fakeServer{DropSaysKilled: killed}
			srv, addr := loopbackProxy(t, "transaction", f, oneGen())
			c := dialBench(t, addr)
			f.Drop.Store(2)
			if p := c.ask(t, "select drop1"); p[0] != 0xfe {
				t.Fatalf("select after two dead connections: %q", p)
			}
			if n := testutil.ToFloat64(srv.metrics.Retries); n != 2 {
				t.Fatalf("%v retries counted, want 2", n)
			}
			// Three dead in a row: a clear error, not a hang.
			f.Drop.Store(3)
			c.send(t, "select drop2")
			_, p := c.next(t)
			wantErr(t, p, erUnknownError, "nothing ran, the session is intact")
			if p := c.ask(t, "select 5"); p[0] != 0xfe {
				t.Fatalf("the session after the error: %q", p)
			}
		})
	}
}

// Inside a transaction the command is not sent again: what ran before it
// is gone with the connection.
func TestNoRetryInsideTransaction(t *testing.T) {
	f := &fakeServer{}
	srv, addr := loopbackProxy(t, "transaction", f, oneGen())
	c := dialBench(t, addr)
	if p := c.ask(t, "begin"); p[0] != 0 {
		t.Fatalf("begin: %q", p)
	}
	f.Drop.Store(1)
	c.send(t, "select drop")
	_, p := c.next(t)
	if errCode(p) == 0 {
		t.Fatalf("want an ERR, got %q", p)
	}
	if n := testutil.ToFloat64(srv.metrics.Retries); n != 0 {
		t.Fatalf("%v retries inside a transaction", n)
	}
}
