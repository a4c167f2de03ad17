package creds

import (
	"fmt"
	"math"
	"net/http"
	"time"
)

// fakeStatic is one static role: Vault rotates its password every period,
// lag after it is due (Vault's rotation queue runs every few seconds).
type fakeStatic struct {
	username string
	period   time.Duration
	lag      time.Duration
	last     time.Time // last rotation
	n        int       // rotations so far; the password names it
}

func (r *fakeStatic) password() string { return fmt.Sprintf("Static-PASSWORD-%d-q7", r.n) }

// rotateLocked is what Vault's queue (or database/rotate-role) does.
func (r *fakeStatic) rotateLocked(now time.Time) {
	r.n++
	r.last = now
}

// addStatic creates a static role, rotated (as Vault does) on creation.
func (f *fakeVault) addStatic(role string, period, lag time.Duration) {
	f.set(func(f *fakeVault) {
		r := &fakeStatic{username: "svc_" + role, period: period, lag: lag}
		r.rotateLocked(time.Now())
		f.static[role] = r
	})
}

// rotateStatic rotates role now, like database/rotate-role/ROLE.
func (f *fakeVault) rotateStatic(role string) string {
	var pass string
	f.set(func(f *fakeVault) {
		r := f.static[role]
		r.rotateLocked(time.Now())
		pass = r.password()
	})
	return pass
}

// staticPassword is role's password now.
func (f *fakeVault) staticPassword(role string) string {
	var pass string
	f.set(func(f *fakeVault) { pass = f.static[role].password() })
	return pass
}

// serveStatic answers database/static-creds/ROLE as Vault 1.x does: ttl
// is the time left to the next rotation in seconds (a float, 0 once due),
// last_vault_rotation an RFC 3339 time. Called with f.mu held.
func (f *fakeVault) serveStatic(w http.ResponseWriter, role string, now time.Time) {
	r := f.static[role]
	if r == nil {
		writeErr(w, fakeErr{400, []string{"unknown role: " + role}})
		return
	}
	if due := r.last.Add(r.period); !now.Before(due.Add(r.lag)) {
		r.rotateLocked(due.Add(r.lag))
	}
	ttl := math.Max(0, r.last.Add(r.period).Sub(now).Round(time.Second).Seconds())
	writeJSON(w, 200, map[string]any{"request_id": "req", "lease_id": "", "renewable": false, "lease_duration": 0,
		"data": map[string]any{
			"username": r.username, "password": r.password(), "ttl": ttl,
			"rotation_period": r.period.Seconds(), "last_vault_rotation": r.last.UTC().Format(time.RFC3339Nano),
		}})
}
