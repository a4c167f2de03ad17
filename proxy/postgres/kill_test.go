package postgres

import (
	"strings"
	"testing"
	"time"
)

// An operator's kill ends the session with FATAL 57P01 naming the
// reason, in either pool mode, idle or not.
func TestOperatorKillNamesTheReason(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			h := startRelay(t, mode)
			h.roundTrip(t, simpleQuery)
			ss := h.s.srv.Sessions()
			if len(ss) != 1 || ss[0].ID == 0 || ss[0].RequestTime.IsZero() {
				t.Fatalf("sessions listed: %+v", ss)
			}
			if _, ok := h.s.srv.KillSession(ss[0].ID+1, "x"); ok {
				t.Fatal("KillSession of another id found a session")
			}
			if si, ok := h.s.srv.KillSession(ss[0].ID, "deploy window"); !ok || si.Identity != "app" {
				t.Fatalf("KillSession = %+v, %v", si, ok)
			}
			types, msg := h.readUntil(t, 'E')
			if types != "E" || !strings.Contains(msg, "57P01") || !strings.Contains(msg, "an operator of dbproxy killed this session: deploy window") {
				t.Fatalf("got %q %q, want one FATAL 57P01 naming the reason", types, msg)
			}
			select {
			case <-h.done:
			case <-time.After(5 * time.Second):
				t.Fatal("session did not end")
			}
		})
	}
}
