package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

type fakeReloader struct{ err error }

func (f fakeReloader) Reload(context.Context) (any, error) {
	if f.err != nil {
		return nil, f.err
	}
	return map[string]string{"status": "reloaded"}, nil
}

// A reload needs the token and passes the cross-site guard like every
// state-changing call; a refused one answers 422 with one problem a line.
func TestReloadEndpoint(t *testing.T) {
	s := New(Options{Token: "t0k"})
	s.MountReload(fakeReloader{})
	if got := cliPost(s, "/v1/reload", "").Code; got != 401 {
		t.Errorf("reload without the token: %d, want 401", got)
	}
	if rec := cliPost(s, "/v1/reload", "t0k"); rec.Code != 200 || !json.Valid(rec.Body.Bytes()) {
		t.Errorf("reload: %d %s", rec.Code, rec.Body)
	}
	req := httptest.NewRequest(http.MethodPost, "/v1/reload", nil)
	req.Host, req.Header["Authorization"] = "127.0.0.1:9187", []string{"Bearer t0k"}
	req.Header.Set("Origin", "https://evil.example")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("cross-site reload: %d, want 403", rec.Code)
	}

	s = New(Options{})
	s.MountReload(fakeReloader{err: errors.New("/etc/dbproxy.yaml:3:1: vault: changed\n/etc/dbproxy.yaml:9:22: bad")})
	rec = cliPost(s, "/v1/reload", "")
	var body struct {
		Problems []string `json:"problems"`
	}
	if rec.Code != http.StatusUnprocessableEntity || json.Unmarshal(rec.Body.Bytes(), &body) != nil || len(body.Problems) != 2 ||
		body.Problems[1] != "/etc/dbproxy.yaml:9:22: bad" {
		t.Errorf("refused reload: %d %s", rec.Code, rec.Body)
	}
}

// ?backend_pid= asks the SessionFinder; a bad pid is a 400.
func TestSessionsByBackendPID(t *testing.T) {
	s := New(Options{})
	s.MountV1(&finderOps{})
	get := func(q string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/sessions"+q, nil))
		return rec
	}
	if rec := get("?backend_pid=42&backend=orders"); rec.Code != 200 || rec.Body.String() != "[\"42 orders\"]\n" {
		t.Errorf("backend_pid=42: %d %q", rec.Code, rec.Body)
	}
	for _, q := range []string{"?backend_pid=x", "?backend_pid=0", "?backend_pid=4294967296"} {
		if rec := get(q); rec.Code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, rec.Code)
		}
	}
	if rec := get(""); rec.Code != 200 || rec.Body.String() != "[]\n" {
		t.Errorf("all sessions: %d %q", rec.Code, rec.Body)
	}
}

type finderOps struct{ fakeOps }

func (f *finderOps) SessionsByBackendPID(pid uint32, backend string) any {
	return []string{fmt.Sprint(pid) + " " + backend}
}
