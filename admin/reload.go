package admin

import (
	"context"
	"net/http"
	"strings"
	"time"
)

// Reloader re-reads the configuration file and applies it.
type Reloader interface {
	// Reload returns what changed, or why nothing did: the error's text
	// is one problem per line (FILE:LINE:COL: msg for an invalid file).
	Reload(ctx context.Context) (any, error)
}

// reloadTimeout bounds a reload requested over the API.
const reloadTimeout = 30 * time.Second

// MountReload adds POST /v1/reload. A refused reload answers 422 with
// the problems, one per line as `dbproxy check` prints them; the running
// configuration stays.
func (s *Server) MountReload(r Reloader) {
	s.Handle("POST /v1/reload", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), reloadTimeout)
		defer cancel()
		out, err := r.Reload(ctx)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
				"error":    "configuration refused; the running configuration stays",
				"problems": strings.Split(err.Error(), "\n"),
			})
			return
		}
		writeJSON(w, http.StatusOK, out)
	}))
}
