package admin

import (
	"net/http"
	"time"
)

// EventLister is Operations that keeps a log of credential events:
// rotations, revocations, expiries and lost leases with their reasons.
// GET /v1/events and the status page show it.
type EventLister interface {
	// Events lists recent events, newest first.
	Events() any
}

// statusEvent is one row of the status page's history.
type statusEvent struct {
	Time        time.Time `json:"time"`
	Kind        string    `json:"kind"`
	Backend     string    `json:"backend"`
	Role        string    `json:"role"`
	Generation  uint64    `json:"generation"`
	Reason      string    `json:"reason"`
	Result      string    `json:"result"`
	Connections int       `json:"connections"`
}

// maxPageEvents is how many events the page shows; the API has them all.
const maxPageEvents = 50

// mountEvents adds GET /v1/events when ops keeps an event log.
func (s *Server) mountEvents(ops Operations) {
	if el, ok := ops.(EventLister); ok {
		s.Handle("GET /v1/events", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, el.Events())
		}))
	}
}

func pageEvents(ops Operations) []statusEvent {
	el, ok := ops.(EventLister)
	if !ok {
		return nil
	}
	ev := decode[statusEvent](el.Events())
	return ev[:min(len(ev), maxPageEvents)]
}

// reasonText says what a rotation or revocation reason code means.
func reasonText(code string) string {
	if t, ok := map[string]string{
		"initial":         "first credential",
		"max_ttl":         "max TTL ahead",
		"token":           "dbproxy's Vault token ends",
		"expired":         "the credential ended",
		"external_revoke": "lease revoked outside dbproxy",
		"auth_failed":     "the database refused the credential",
		"manual":          "operator rotate",
		"revoke":          "operator revoke",
		"poll":            "the password changed in Vault",
		"vault_rotation":  "Vault rotated the static password",
		"kv_version":      "a new KV secret version",
	}[code]; ok {
		return t
	}
	return code
}
