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

// PrefixRevoker is a Revoker that can also revoke every lease under a
// Vault lease prefix (another instance's and applications' included),
// after fetching a new credential for dbproxy first.
type PrefixRevoker interface {
	// RevokePrefix returns an error wrapping ErrBadPrefix for a prefix
	// outside the backend's own MOUNT/creds/ROLE paths.
	RevokePrefix(ctx context.Context, backend, prefix string, dryRun bool) (any, error)
}

// ErrBadPrefix is what a PrefixRevoker returns (wrapped) for a prefix it
// refuses; the API answers 400.
var ErrBadPrefix = errors.New("refused lease prefix")

// revokeTimeout bounds waiting for the new credential from Vault.
const revokeTimeout = 30 * time.Second

// MountRevoke adds POST /v1/backends/{name}/revoke?role=R&dry_run=1 (or
// ?prefix=P instead of role, when r is a PrefixRevoker).
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
		var (
			out any
			err error
		)
		if prefix := q.Get("prefix"); prefix != "" {
			pr, ok := r.(PrefixRevoker)
			if !ok || q.Get("role") != "" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give either role or prefix, not both"})
				return
			}
			out, err = pr.RevokePrefix(ctx, req.PathValue("name"), prefix, dry)
		} else {
			out, err = r.Revoke(ctx, req.PathValue("name"), q.Get("role"), dry)
		}
		switch {
		case errors.Is(err, ErrBadPrefix):
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		case errors.Is(err, ErrUnknownBackend):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error() + "; see GET /v1/leases"})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error(), "result": out})
		default:
			writeJSON(w, http.StatusOK, out)
		}
	}))
}
