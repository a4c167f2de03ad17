package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// fakeOps knows one backend, "orders", and records what was done to it.
type fakeOps struct{ done []string }

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
func (f *fakeOps) Rotate(b string) bool { return f.act("rotate", b) }
func (f *fakeOps) Pause(b string) bool  { return f.act("pause", b) }
func (f *fakeOps) Resume(b string) bool { return f.act("resume", b) }
func (f *fakeOps) Drain(b string) bool  { return f.act("drain", b) }

func TestV1BackendActions(t *testing.T) {
	ops := &fakeOps{}
	s := New(Options{Token: "t0k"})
	s.MountV1(ops)
	post := func(path, token string) int {
		req := httptest.NewRequest(http.MethodPost, path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		s.mux.ServeHTTP(rec, req)
		return rec.Code
	}
	for path, want := range map[string]int{
		"/v1/backends/orders/pause":  200,
		"/v1/backends/orders/resume": 200,
		"/v1/backends/orders/drain":  200,
		"/v1/backends/orders/rotate": 202,
		"/v1/backends/nosuch/pause":  404,
		"/v1/backends/nosuch/drain":  404,
	} {
		if got := post(path, "t0k"); got != want {
			t.Errorf("POST %s: %d, want %d", path, got, want)
		}
	}
	if got := post("/v1/backends/orders/pause", ""); got != 401 {
		t.Errorf("pause without token: %d, want 401", got)
	}
	if len(ops.done) != 4 {
		t.Errorf("actions done: %v", ops.done)
	}
}
