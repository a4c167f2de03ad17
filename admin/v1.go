package admin

import (
	"errors"
	"net/http"
	"strconv"
	"time"
)

// ErrNotFound is what Operations.Rotate returns (wrapped) for a backend it
// does not know: the API answers 404.
var ErrNotFound = errors.New("not found")

// retryLater is an error refusing an action for now, e.g. the credential
// issuance cap: the API answers 429 with Retry-After.
type retryLater interface {
	error
	RetryAfter() time.Duration
}

// Operations is what the /v1 API shows and does. cmd/dbproxy implements it
// over the running proxies, so this package imports none of them.
type Operations interface {
	// Sessions lists open client sessions.
	Sessions() any
	// Pools lists upstream pools.
	Pools() any
	// Leases lists live credential generations.
	Leases() any
	// Rotate starts a credential rotation for a backend. It returns an
	// error wrapping ErrNotFound for an unknown backend, or one with a
	// RetryAfter() time.Duration method when it may be retried later.
	Rotate(backend string) error
	// Pause holds a backend's new transactions (and sessions) back,
	// Resume lets them go on, Drain replaces its upstream connections;
	// each is false if the backend has no pool.
	Pause(backend string) bool
	Resume(backend string) bool
	Drain(backend string) bool
}

// SessionFinder is Operations that can answer GET
// /v1/sessions?backend_pid=N[&backend=B]: which sessions hold, or last
// held, the server connection whose process (PostgreSQL) or thread
// (MySQL) id is N.
type SessionFinder interface {
	SessionsByBackendPID(pid uint32, backend string) any
}

// MountV1 adds the /v1 endpoints over ops.
func (s *Server) MountV1(ops Operations) {
	list := func(f func() any) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, f()) }
	}
	s.Handle("GET /v1/sessions", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := r.URL.Query().Get("backend_pid")
		if v == "" {
			writeJSON(w, http.StatusOK, ops.Sessions())
			return
		}
		pid, err := strconv.ParseUint(v, 10, 32)
		f, ok := ops.(SessionFinder)
		if err != nil || pid == 0 || !ok {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "backend_pid=" + v + ": give the pid of a pg_stat_activity row or the id of a processlist row"})
			return
		}
		writeJSON(w, http.StatusOK, f.SessionsByBackendPID(uint32(pid), r.URL.Query().Get("backend")))
	}))
	s.mountEvents(ops)
	s.Handle("GET /v1/pools", list(ops.Pools))
	s.Handle("GET /v1/leases", list(ops.Leases))
	s.Handle("POST /v1/backends/{name}/rotate", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		err := ops.Rotate(name)
		var later retryLater
		switch {
		case err == nil:
			writeJSON(w, http.StatusAccepted, map[string]string{"status": "rotation started", "backend": name})
		case errors.Is(err, ErrNotFound):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no backend " + name + " with credentials; see GET /v1/leases"})
		case errors.As(err, &later):
			secs := int((later.RetryAfter() + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
			writeJSON(w, http.StatusTooManyRequests, map[string]any{"error": err.Error(), "retry_after_seconds": max(secs, 1)})
		default:
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		}
	}))
	for _, a := range []struct {
		verb, status string
		do           func(string) bool
	}{
		{"pause", "paused", ops.Pause},
		{"resume", "resumed", ops.Resume},
		{"drain", "draining", ops.Drain},
	} {
		s.Handle("POST /v1/backends/{name}/"+a.verb, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := r.PathValue("name")
			if !a.do(name) {
				writeJSON(w, http.StatusNotFound, map[string]string{"error": "no backend " + name + " with a pool; see GET /v1/pools"})
				return
			}
			writeJSON(w, http.StatusOK, map[string]string{"status": a.status, "backend": name})
		}))
	}
}
