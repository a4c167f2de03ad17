package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/admin"
)

// act runs a command that changes something and returns a notice for
// the client ("" for none).
func (c *Console) act(ctx context.Context, cmd command) (string, error) {
	ops := c.opts.Ops
	switch cmd.verb {
	case "PAUSE":
		return c.eachBackend(cmd.backend, "paused", ops.Pause)
	case "RESUME":
		return c.eachBackend(cmd.backend, "resumed", ops.Resume)
	case "RECONNECT":
		c.reconnects.mark(cmd.backend, time.Now())
		return c.eachBackend(cmd.backend, "reconnecting (server connections close when idle)", ops.Drain)
	case "ROTATE":
		return c.rotate(cmd.backend)
	case "KILL":
		return c.kill(cmd.id, cmd.reason)
	case "WAIT_CLOSE":
		return c.waitClose(ctx, cmd.backend)
	}
	return "", unknown(cmd.verb)
}

// backends lists the backends that have a pool.
func (c *Console) backends() []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range c.snapshot().pools {
		if !seen[p.Backend] {
			seen[p.Backend] = true
			out = append(out, p.Backend)
		}
	}
	return out
}

func noBackend(name string) error {
	return &sqlError{code: "3D000", msg: fmt.Sprintf("no backend %q with a pool", name), hint: "SHOW POOLS lists the backends"}
}

// eachBackend applies do to one backend, or to all when name is "".
func (c *Console) eachBackend(name, done string, do func(string) bool) (string, error) {
	if name != "" {
		if !do(name) {
			return "", noBackend(name)
		}
		return "backend " + name + ": " + done, nil
	}
	names := c.backends()
	for _, b := range names {
		do(b)
	}
	if len(names) == 0 {
		return "no backend has a pool", nil
	}
	return "backends " + strings.Join(names, ", ") + ": " + done, nil
}

func (c *Console) rotate(backend string) (string, error) {
	err := c.opts.Ops.Rotate(backend)
	var later interface{ RetryAfter() time.Duration }
	switch {
	case err == nil:
		return "backend " + backend + ": rotation started; SHOW LEASES shows the new generation", nil
	case errors.Is(err, admin.ErrNotFound):
		return "", &sqlError{code: "3D000", msg: fmt.Sprintf("no backend %q with credentials", backend), hint: "SHOW LEASES lists them"}
	case errors.As(err, &later):
		return "", &sqlError{code: "53400", msg: err.Error(), hint: fmt.Sprintf("try again in %s", later.RetryAfter().Round(time.Second))}
	}
	return "", &sqlError{code: "XX000", msg: "rotate " + backend + ": " + err.Error()}
}

func (c *Console) kill(id uint64, reason string) (string, error) {
	if c.opts.Killer == nil {
		return "", &sqlError{code: "0A000", msg: "KILL is not available in this dbproxy"}
	}
	v, ok := c.opts.Killer.KillSession(id, reason)
	if !ok {
		return "", &sqlError{code: "42704", msg: fmt.Sprintf("no open client session with id %d", id), hint: "SHOW CLIENTS lists them with their id"}
	}
	var s sessionView
	if b, err := json.Marshal(v); err == nil {
		_ = json.Unmarshal(b, &s)
	}
	return fmt.Sprintf("killed client %d (%s, identity %s, database %s)", id, s.Protocol, s.Identity, s.Backend), nil
}

// reconnectLog remembers when RECONNECT last ran, per backend ("" for
// every backend).
type reconnectLog struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (r *reconnectLog) mark(backend string, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at == nil {
		r.at = map[string]time.Time{}
	}
	r.at[backend] = t
}

// since is the latest RECONNECT that covered backend.
func (r *reconnectLog) since(backend string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, b := r.at[backend], r.at[""]
	if a.After(b) {
		return a
	}
	return b
}

// waitClosePoll is how often WAIT_CLOSE looks again.
const waitClosePoll = 100 * time.Millisecond

// waitClose waits until no server connection of backend (or of any) is
// left that must close: those of superseded credential generations, and
// those held by sessions that connected before the latest RECONNECT.
func (c *Console) waitClose(ctx context.Context, backend string) (string, error) {
	if backend != "" && !slices.Contains(c.backends(), backend) {
		return "", noBackend(backend)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.WaitCloseLimit)
	defer cancel()
	start := time.Now()
	tick := time.NewTicker(waitClosePoll)
	defer tick.Stop()
	for {
		left := c.closing(backend)
		if len(left) == 0 {
			return fmt.Sprintf("all server connections that had to close are closed (waited %s)", time.Since(start).Round(time.Millisecond)), nil
		}
		select {
		case <-ctx.Done():
			return "", &sqlError{code: "57014", msg: fmt.Sprintf("WAIT_CLOSE stopped after %s; still open: %s",
				time.Since(start).Round(time.Second), strings.Join(left, "; "))}
		case <-tick.C:
		}
	}
}

// closing describes what WAIT_CLOSE still waits for.
func (c *Console) closing(backend string) []string {
	s := c.snapshot()
	var out []string
	for _, l := range s.leases {
		if (backend == "" || l.Backend == backend) && l.State != "active" && l.Connections > 0 {
			out = append(out, fmt.Sprintf("%d connection(s) of %s/%s generation %d (%s)", l.Connections, l.Backend, l.Role, l.Generation, l.State))
		}
	}
	for _, cl := range s.sessions {
		if cl.Backend == Database || cl.DBUser == "" || backend != "" && cl.Backend != backend {
			continue
		}
		if t := c.reconnects.since(cl.Backend); !t.IsZero() && cl.Since.Before(t) {
			out = append(out, fmt.Sprintf("client %d (connected before RECONNECT, holds a server connection)", cl.ID))
		}
	}
	return out
}
