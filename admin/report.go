package admin

import (
	"context"
	"net/http"
	"time"
)

// Reporter builds the lease report (`dbproxy report`).
type Reporter interface {
	Report(ctx context.Context) any
}

// MountReport adds GET /v1/report.
func (s *Server) MountReport(r Reporter) {
	s.Handle("GET /v1/report", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), 15*time.Second)
		defer cancel()
		writeJSON(w, http.StatusOK, r.Report(ctx))
	}))
}
