package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// fakeOps knows one backend, "orders", and records what was done to it.
// capped makes Rotate refuse as the credential issuance cap does.
type fakeOps struct {
	done   []string
	capped time.Duration
}

func (f *fakeOps) Sessions() any { return []string{} }
func (f *fakeOps) Pools() any    { return []string{} }
func (f *fakeOps) Leases() any   { return []string{} }
func (f *fakeOps) act(verb, b string) bool {
	if b != "orders" {
		return false
	}
	f.done = append(f.done, verb)
	return true
}

type capErr time.Duration

func (e capErr) Error() string             { return "issuance cap reached; next at 12:00:41Z" }
func (e capErr) RetryAfter() time.Duration { return time.Duration(e) }

func (f *fakeOps) Rotate(b string) error {
	if f.capped > 0 && b == "orders" {
		return fmt.Errorf("rotate: %w", capErr(f.capped))
	}
	if !f.act("rotate", b) {
		return fmt.Errorf("backend %q: %w", b, ErrNotFound)
	}
	return nil
}
func (f *fakeOps) Pause(b string) bool  { return f.act("pause", b) }
func (f *fakeOps) Resume(b string) bool { return f.act("resume", b) }
func (f *fakeOps) Drain(b string) bool  { return f.act("drain", b) }

// cliPost is a POST as the dbproxy CLI sends it: Host is the address it
// was given, no Origin, no body.
func cliPost(s *Server, path, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, nil)
	req.Host = "127.0.0.1:9187"
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

func TestV1BackendActions(t *testing.T) {
	ops := &fakeOps{}
	s := New(Options{Token: "t0k"})
	s.MountV1(ops)
	for path, want := range map[string]int{
		"/v1/backends/orders/pause":  200,
		"/v1/backends/orders/resume": 200,
		"/v1/backends/orders/drain":  200,
		"/v1/backends/orders/rotate": 202,
		"/v1/backends/nosuch/pause":  404,
		"/v1/backends/nosuch/drain":  404,
		"/v1/backends/nosuch/rotate": 404,
	} {
		if got := cliPost(s, path, "t0k").Code; got != want {
			t.Errorf("POST %s: %d, want %d", path, got, want)
		}
	}
	if got := cliPost(s, "/v1/backends/orders/pause", "").Code; got != 401 {
		t.Errorf("pause without token: %d, want 401", got)
	}
	if len(ops.done) != 4 {
		t.Errorf("actions done: %v", ops.done)
	}
}

// Over the issuance cap, rotate answers 429 with Retry-After in whole
// seconds, rounded up, and the reason in JSON.
func TestV1RotateOverCap(t *testing.T) {
	ops := &fakeOps{capped: 41*time.Second + 300*time.Millisecond}
	s := New(Options{})
	s.MountV1(ops)
	rec := cliPost(s, "/v1/backends/orders/rotate", "")
	var body struct {
		Error      string `json:"error"`
		RetryAfter int    `json:"retry_after_seconds"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "42" || body.RetryAfter != 42 ||
		body.Error != "rotate: issuance cap reached; next at 12:00:41Z" {
		t.Errorf("rotate over the cap: %d Retry-After %q %+v", rec.Code, rec.Header().Get("Retry-After"), body)
	}
	if len(ops.done) != 0 {
		t.Errorf("actions done: %v", ops.done)
	}
}
