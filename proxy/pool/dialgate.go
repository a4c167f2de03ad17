package pool

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// When the database refuses connections (restarting, down, at its
// connection limit), every checkout that finds no idle connection would
// dial it at once and fail at once: a dial storm, and clients that get
// an error between transactions although the database is back a second
// later. Instead, after a failed dial one checkout at a time probes the
// database, at intervals that back off with jitter (50 ms doubling to
// 2 s); the others wait for the probe, up to their checkout timeout. A
// successful dial ends the backoff and wakes them all.

const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 2 * time.Second
)

// dialGate is the pool's dial backoff; the pool's mutex guards it.
type dialGate struct {
	failures int       // dials failed in a row
	probing  bool      // a checkout is dialing while failures > 0
	nextAt   time.Time // when the next probe may start
	lastErr  error     // the last dial failure, for the client
}

// wait returns how long a checkout must wait before it may dial, 0 if it
// may dial now (which makes it the probe). A checkout whose deadline
// comes before the next probe would give up without one: it probes now,
// once (it passes a zero deadline after its first dial).
func (g *dialGate) wait(now, deadline time.Time) time.Duration {
	switch {
	case g.failures == 0:
		return 0
	case g.probing:
		return backoffMin // look again when the probe has had its chance
	case now.Before(g.nextAt) && (deadline.IsZero() || !deadline.Before(g.nextAt)):
		return g.nextAt.Sub(now)
	}
	g.probing = true
	return 0
}

// done records a dial's outcome and reports whether the database just
// came back (waiting checkouts should look again). counts is false for a
// dial that says nothing about the database (its client left, or the
// credential was superseded).
func (g *dialGate) done(err error, counts bool, now time.Time) (recovered bool) {
	g.probing = false
	if !counts {
		return false
	}
	if err == nil {
		recovered = g.failures > 0
		g.failures, g.lastErr = 0, nil
		return recovered
	}
	g.failures++
	g.lastErr = err
	d := min(backoffMin<<min(g.failures-1, 6), backoffMax)
	g.nextAt = now.Add(d/2 + rand.N(d/2+1))
	return false
}

// failing reports the database refusing connections.
func (g *dialGate) failing() bool { return g.failures > 0 }

// UnavailableError is a checkout that waited its whole timeout while the
// database refused every connection dbproxy tried to open.
type UnavailableError struct {
	Backend string
	Waited  time.Duration
	Err     error // the last dial failure
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("backend %s refused new connections for %s (last: %v); nothing was sent, retry when the database is back",
		e.Backend, e.Waited.Round(time.Millisecond), e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }
