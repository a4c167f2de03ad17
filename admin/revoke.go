package admin

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// ErrUnknownBackend is what a Revoker returns (wrapped) when no credential
// source matches the backend and role; the API answers 404.
var ErrUnknownBackend = errors.New("no credentials for that backend and role")

// Revoker plans and runs an operator revoke of a backend's credentials
// (the incident runbook: new credential first, then revoke and close).
type Revoker interface {
	// Revoke returns what a revoke would cut and do (dryRun) or what it
	// did. role "" means every role of the backend. On an error the
	// returned value, if not nil, says what was done before it.
	Revoke(ctx context.Context, backend, role string, dryRun bool) (any, error)
}

// revokeTimeout bounds waiting for the new credential from Vault.
const revokeTimeout = 30 * time.Second

// MountRevoke adds POST /v1/backends/{name}/revoke?role=R&dry_run=1.
// It is a POST even as a dry run so that a dry run and the real thing are
// one flag apart in a runbook.
func (s *Server) MountRevoke(r Revoker) {
	s.Handle("POST /v1/backends/{name}/revoke", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		dry := false
		if v := q.Get("dry_run"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "dry_run=" + v + ": use 1 or 0"})
				return
			}
			dry = b
		}
		ctx, cancel := context.WithTimeout(req.Context(), revokeTimeout)
		defer cancel()
		out, err := r.Revoke(ctx, req.PathValue("name"), q.Get("role"), dry)
		switch {
		case errors.Is(err, ErrUnknownBackend):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error() + "; see GET /v1/leases"})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error(), "result": out})
		default:
			writeJSON(w, http.StatusOK, out)
		}
	}))
}
