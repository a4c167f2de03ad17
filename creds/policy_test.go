package creds

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
)

func TestRotateBefore(t *testing.T) {
	for _, tc := range []struct {
		name             string
		configured, life time.Duration
		want             time.Duration
	}{
		{"default 20% of a day", 0, 24 * time.Hour, 24 * time.Hour / 5},
		{"default 20% of an hour", 0, time.Hour, 12 * time.Minute},
		{"default floor 30s", 0, 2 * time.Minute, 30 * time.Second},
		{"default floor 30s at 150s", 0, 150 * time.Second, 30 * time.Second},
		{"default capped at half a short life", 0, 40 * time.Second, 20 * time.Second},
		{"default capped at half a tiny life", 0, 6 * time.Second, 3 * time.Second},
		{"default of no life", 0, 0, 0},
		{"negative configured takes the default", -time.Second, time.Hour, 12 * time.Minute},
		{"configured", 10 * time.Minute, time.Hour, 10 * time.Minute},
		{"configured below the default floor", 5 * time.Second, time.Hour, 5 * time.Second},
		{"configured capped at half", 2 * time.Hour, time.Hour, 30 * time.Minute},
		{"configured equal to half", 30 * time.Minute, time.Hour, 30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RotateBefore(tc.configured, tc.life); got != tc.want {
				t.Errorf("RotateBefore(%v, %v) = %v, want %v", tc.configured, tc.life, got, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	const samples = 500
	prevLo, prevMean := time.Duration(0), time.Duration(0)
	for n := -2; n <= 40; n++ {
		hi := min(time.Second<<min(max(n-1, 0), 6), 60*time.Second)
		lo := hi / 2
		var sum, gotMin, gotMax time.Duration
		gotMin = time.Hour
		for range samples {
			d := Backoff(n)
			if d < 500*time.Millisecond || d > 60*time.Second {
				t.Fatalf("Backoff(%d) = %v, outside [0.5s, 60s]", n, d)
			}
			if d < lo || d > hi {
				t.Fatalf("Backoff(%d) = %v, outside [%v, %v]", n, d, lo, hi)
			}
			sum += d
			gotMin, gotMax = min(gotMin, d), max(gotMax, d)
		}
		if gotMin == gotMax {
			t.Errorf("Backoff(%d) has no jitter: always %v", n, gotMin)
		}
		mean := sum / samples
		if lo < prevLo {
			t.Errorf("Backoff(%d) lower bound %v below Backoff(%d)'s %v", n, lo, n-1, prevLo)
		}
		if n >= 2 && n <= 7 && mean <= prevMean {
			t.Errorf("Backoff(%d) mean %v does not grow from %v", n, mean, prevMean)
		}
		prevLo, prevMean = lo, mean
	}
	if d := Backoff(1 << 30); d < 30*time.Second || d > 60*time.Second {
		t.Errorf("Backoff(huge) = %v, want within [30s, 60s]", d)
	}
}

func TestRenewAt(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, left := range []time.Duration{time.Second, 3 * time.Second, 90 * time.Second, time.Hour, 24 * time.Hour} {
		t.Run(left.String(), func(t *testing.T) {
			seen := map[time.Time]bool{}
			for range 300 {
				at := renewAt(now, now.Add(left))
				frac := float64(at.Sub(now)) / float64(left)
				lo := 0.6
				if left < time.Minute {
					lo = 0.3 // short leases renew early: an outage must fit
				}
				if frac < lo || frac > lo+0.1 {
					t.Fatalf("renewAt lands at %.3f of the remaining %v, want %.1f..%.1f", frac, left, lo, lo+0.1)
				}
				seen[at] = true
			}
			if len(seen) < 2 {
				t.Errorf("renewAt has no jitter")
			}
		})
	}
	for _, end := range []time.Time{now, now.Add(-time.Second), {}} {
		if at := renewAt(now, end); !at.Equal(now) {
			t.Errorf("renewAt(now, %v) = %v, want now", end, at)
		}
	}
}

func TestIsLeaseGone(t *testing.T) {
	re := func(code int, errs ...string) error {
		return &vault.ResponseError{HTTPMethod: "PUT", URL: "http://vault/v1/sys/leases/renew", StatusCode: code, Errors: errs}
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"400 lease not found", re(400, "lease not found"), true},
		{"400 lease not found or not renewable", re(400, "lease not found or lease is not renewable"), true},
		{"400 invalid lease", re(400, "invalid lease ID"), true},
		{"400 not renewable", re(400, "lease is not renewable"), true},
		{"400 mixed case", re(400, "Lease Not Found"), true},
		{"403", re(403, "permission denied"), true},
		{"wrapped 400", fmt.Errorf("renew: %w", re(400, "lease not found")), true},
		{"400 other", re(400, "missing lease_id"), false},
		{"404", re(404), false},
		{"500", re(500, "internal error"), false},
		{"503 sealed", re(503, "Vault is sealed"), false},
		{"transport error", errors.New("dial tcp: connection refused"), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := isLeaseGone(tc.err); got != tc.want {
				t.Errorf("isLeaseGone(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestSecondsField(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want time.Duration
	}{
		{json.Number("3600"), time.Hour},
		{json.Number("1.5"), 0},
		{float64(60), time.Minute},
		{86400, 24 * time.Hour},
		{"120", 2 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"soon", 0},
		{nil, 0},
		{true, 0},
	} {
		if got := secondsField(tc.in); got != tc.want {
			t.Errorf("secondsField(%#v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestErrNoCredential(t *testing.T) {
	since := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	cause := errors.New("Code: 503. Errors: * Vault is sealed")
	e := &ErrNoCredential{Backend: "pg", Since: since, Cause: cause}
	if want := "no valid credential for backend pg: Vault unreachable since 2026-05-06T07:08:09Z: Code: 503. Errors: * Vault is sealed"; e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
	if !errors.Is(e, cause) {
		t.Error("ErrNoCredential does not unwrap to its cause")
	}
	if got := (&ErrNoCredential{Backend: "pg"}).Error(); got != "no valid credential for backend pg yet" {
		t.Errorf("Error() without cause = %q", got)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Active: "active", Draining: "draining", Expired: "expired", Revoked: "revoked"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want)
		}
	}
}
