package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type fakeKiller struct{ killed map[uint64]string }

func (f *fakeKiller) KillSession(id uint64, reason string) (any, bool) {
	if id != 7 {
		return nil, false
	}
	f.killed[id] = reason
	return map[string]any{"id": id, "identity": "app"}, true
}

func TestKillSession(t *testing.T) {
	s := New(Options{Address: "127.0.0.1:9187", Token: "tok"})
	k := &fakeKiller{killed: map[uint64]string{}}
	s.MountKill(k)

	if rec := cliPost(s, "/v1/sessions/7/kill?reason=deploy", ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("kill without the token: %d", rec.Code)
	}
	rec := cliPost(s, "/v1/sessions/7/kill?reason=deploy", "tok")
	var out struct {
		Status  string         `json:"status"`
		Session map[string]any `json:"session"`
	}
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &out) != nil || out.Status != "killed" || out.Session["identity"] != "app" {
		t.Fatalf("kill: %d %s", rec.Code, rec.Body)
	}
	if k.killed[7] != "deploy" {
		t.Fatalf("reason passed on: %q", k.killed[7])
	}

	// A JSON body (as the CLI sends it) carries the reason too.
	req := httptest.NewRequest(http.MethodPost, "/v1/sessions/7/kill", strings.NewReader(`{"reason":"runaway query"}`))
	req.Host = "127.0.0.1:9187"
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("Content-Type", "application/json")
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || k.killed[7] != "runaway query" {
		t.Fatalf("kill with a JSON body: %d %s, reason %q", rec.Code, rec.Body, k.killed[7])
	}

	for path, want := range map[string]int{
		"/v1/sessions/8/kill":   http.StatusNotFound,
		"/v1/sessions/abc/kill": http.StatusBadRequest,
		"/v1/sessions/0/kill":   http.StatusBadRequest,
	} {
		if rec := cliPost(s, path, "tok"); rec.Code != want || !strings.Contains(rec.Body.String(), "GET /v1/sessions") {
			t.Errorf("%s: %d %s, want %d naming GET /v1/sessions", path, rec.Code, rec.Body, want)
		}
	}
}
