package admin

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// statusOps is fakeOps with a pool, two generations and three sessions.
type statusOps struct{ fakeOps }

func (o *statusOps) Pools() any {
	return []map[string]any{{"backend": "orders", "role": "rw", "open": 3, "idle": 1, "max": 10, "paused": false}}
}
func (o *statusOps) Leases() any {
	now := time.Now()
	return []map[string]any{
		{"backend": "orders", "role": "rw", "generation": 4, "username": "v-rw-4", "state": "draining", "reason": "max_ttl",
			"issued_at": now.Add(-time.Hour), "lease_end": now.Add(time.Minute), "hard_end": now.Add(2 * time.Minute), "drain_deadline": now.Add(90 * time.Second), "connections": 1},
		{"backend": "orders", "role": "rw", "generation": 5, "username": "v-rw-5", "state": "active",
			"issued_at": now.Add(-time.Minute), "lease_end": now.Add(time.Hour), "connections": 2},
	}
}
func (o *statusOps) Sessions() any {
	return []map[string]any{
		{"protocol": "postgres", "identity": "api", "backend": "orders", "role": "rw", "state": "idle"},
		{"protocol": "postgres", "identity": "api", "backend": "orders", "role": "rw", "state": "active"},
		{"protocol": "mysql", "identity": "<script>batch</script>", "backend": "inv", "role": "ro", "state": "idle"},
	}
}

func (o *statusOps) Events() any {
	at := time.Date(2026, 12, 2, 3, 4, 5, 0, time.UTC)
	return []map[string]any{
		{"time": at, "kind": "revoked", "backend": "orders", "role": "rw", "generation": 3, "reason": "manual", "result": "ok", "connections": 2},
		{"time": at.Add(-time.Minute), "kind": "issued", "backend": "orders", "role": "rw", "generation": 5, "reason": "<b>x</b>", "result": "ok"},
	}
}

func serve(s *Server, method, path string, hdr map[string]string, form url.Values) *httptest.ResponseRecorder {
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	req := httptest.NewRequest(method, path, body)
	req.Host = "127.0.0.1:9187"
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	s.mux.ServeHTTP(rec, req)
	return rec
}

func TestStatusPageWithoutToken(t *testing.T) {
	ops := &statusOps{}
	s := New(Options{})
	s.MountStatus(ops)
	rec := serve(s, "GET", "/", nil, nil)
	page := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET / = %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	for _, want := range []string{`http-equiv="refresh"`, "not ready", "v-rw-4", "v-rw-5", "gen 4", "gen 5",
		"draining", "Sessions (3)", "active 1, idle 1", "&lt;script&gt;batch&lt;/script&gt;", "Operator buttons appear when",
		"Rotations and revocations", "2026-12-02 03:04:05", "operator rotate", "(manual)", "2 connection(s) closed", "&lt;b&gt;x&lt;/b&gt;"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "<button") || strings.Contains(page, "<script>") || strings.Contains(page, "http://") && strings.Contains(page, "src=") {
		t.Error("page without a token has buttons, a script or a remote resource")
	}
	if rec := serve(s, "POST", "/ui/backends/orders/rotate", map[string]string{"Origin": "http://127.0.0.1:9187"}, url.Values{}); rec.Code != 403 || len(ops.done) != 0 {
		t.Errorf("action without a token: %d, done %v", rec.Code, ops.done)
	}
	s.MountV1(ops)
	if rec := serve(s, "GET", "/v1/events", nil, nil); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"kind":"revoked"`) {
		t.Errorf("GET /v1/events = %d %s", rec.Code, rec.Body)
	}
	if rec := serve(s, "GET", "/nosuch", nil, nil); rec.Code != 404 {
		t.Errorf("GET /nosuch = %d, want 404", rec.Code)
	}
}

func TestStatusPageWithToken(t *testing.T) {
	ops := &statusOps{}
	s := New(Options{Token: "t0k"})
	s.MountStatus(ops)
	same := map[string]string{"Origin": "http://127.0.0.1:9187", "Sec-Fetch-Site": "same-origin"}

	if page := serve(s, "GET", "/", nil, nil).Body.String(); !strings.Contains(page, `action="/login"`) || strings.Contains(page, "v-rw-4") {
		t.Fatal("without the cookie the page must ask for the token and show nothing else")
	}
	if page := serve(s, "POST", "/login", same, url.Values{"token": {"nope"}}).Body.String(); !strings.Contains(page, "wrong token") {
		t.Error("a wrong token is not refused")
	}
	if rec := serve(s, "POST", "/login", map[string]string{"Origin": "https://evil.example"}, url.Values{"token": {"t0k"}}); rec.Code != 403 {
		t.Errorf("cross-site login: %d, want 403", rec.Code)
	}
	rec := serve(s, "POST", "/login", same, url.Values{"token": {"t0k"}})
	cookies := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || len(cookies) != 1 || cookies[0].SameSite != http.SameSiteStrictMode || !cookies[0].HttpOnly ||
		strings.Contains(cookies[0].Value, "t0k") {
		t.Fatalf("login: %d %+v", rec.Code, cookies)
	}
	withCookie := func(h map[string]string) map[string]string {
		out := map[string]string{"Cookie": cookies[0].Name + "=" + cookies[0].Value}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	if page := serve(s, "GET", "/", withCookie(nil), nil).Body.String(); !strings.Contains(page, `action="/ui/backends/orders/rotate"`) {
		t.Error("with the token the page has no buttons")
	}
	if rec := serve(s, "POST", "/ui/backends/orders/rotate", withCookie(map[string]string{"Origin": "https://evil.example"}), url.Values{}); rec.Code != 403 {
		t.Errorf("cross-site action: %d, want 403", rec.Code)
	}
	if rec := serve(s, "POST", "/ui/backends/orders/rotate", withCookie(map[string]string{"Sec-Fetch-Site": "cross-site"}), url.Values{}); rec.Code != 403 {
		t.Errorf("cross-site action (Sec-Fetch-Site): %d, want 403", rec.Code)
	}
	if len(ops.done) != 0 {
		t.Fatalf("refused actions ran: %v", ops.done)
	}
	rec = serve(s, "POST", "/ui/backends/orders/pause", withCookie(same), url.Values{})
	if rec.Code != http.StatusSeeOther || len(ops.done) != 1 || ops.done[0] != "pause" || !strings.Contains(rec.Header().Get("Location"), "pause+orders") {
		t.Errorf("pause: %d %s, done %v", rec.Code, rec.Header().Get("Location"), ops.done)
	}
}
