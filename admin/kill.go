package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
)

// Killer ends one client session for an operator.
type Killer interface {
	// KillSession stops session id (an ID from GET /v1/sessions); its
	// client is told reason. It returns the session as it was, and false
	// when no open session has that ID.
	KillSession(id uint64, reason string) (any, bool)
}

// maxKillBody caps the JSON body of a kill request.
const maxKillBody = 4 << 10

// MountKill adds POST /v1/sessions/{id}/kill. The reason the client is
// told comes from a JSON body {"reason": "..."} or ?reason=.
func (s *Server) MountKill(k Killer) {
	s.Handle("POST /v1/sessions/{id}/kill", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil || id == 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "session id " + strconv.Quote(r.PathValue("id")) + " is not a number; take the id from GET /v1/sessions"})
			return
		}
		reason := r.URL.Query().Get("reason")
		if r.ContentLength != 0 {
			var body struct {
				Reason string `json:"reason"`
			}
			if err := json.NewDecoder(io.LimitReader(r.Body, maxKillBody)).Decode(&body); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: want JSON like {\"reason\": \"...\"}: " + err.Error()})
				return
			}
			if body.Reason != "" {
				reason = body.Reason
			}
		}
		si, ok := k.KillSession(id, reason)
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no open session with id " + strconv.FormatUint(id, 10) + "; see GET /v1/sessions"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "killed", "session": si})
	}))
}
