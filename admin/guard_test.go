package admin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The request from issue 10: a web page's cross-site POST, as curl sends
// it, is refused with or without a token, and nothing is done.
func TestGuardRefusesCrossSitePost(t *testing.T) {
	for _, token := range []string{"", "t0k"} {
		ops := &fakeOps{}
		s := New(Options{Address: "127.0.0.1:9187", Token: token})
		s.MountV1(ops)
		for _, verb := range []string{"pause", "resume", "drain", "rotate"} {
			req := httptest.NewRequest(http.MethodPost, "/v1/backends/orders/"+verb, nil)
			req.Host = "evil.example"
			req.Header.Set("Origin", "http://evil.example")
			req.Header.Set("Content-Type", "text/plain")
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			var body struct{ Error string }
			_ = json.Unmarshal(rec.Body.Bytes(), &body)
			if rec.Code != http.StatusForbidden || !strings.Contains(body.Error, `Host "evil.example"`) {
				t.Errorf("token %q, %s: %d %q, want 403 naming the Host", token, verb, rec.Code, rec.Body)
			}
		}
		if len(ops.done) != 0 {
			t.Errorf("token %q: actions done: %v", token, ops.done)
		}
		// The CLI's own call still works.
		if rec := cliPost(s, "/v1/backends/orders/pause", token); rec.Code != 200 {
			t.Errorf("token %q: CLI-style pause: %d %q", token, rec.Code, rec.Body)
		}
	}
}

func TestGuardRules(t *testing.T) {
	s := New(Options{Address: "127.0.0.1:9187", AllowedHosts: []string{"dbproxy.internal", "ops.example:8443"}})
	s.Handle("POST /v1/x", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "done") }))
	s.Handle("GET /v1/y", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "seen") }))
	for _, tt := range []struct {
		name, method, host string
		hdr                []string
		body               string
		want               int
		why                string // in the 403 message
	}{
		{"cli on loopback", "POST", "127.0.0.1:9187", nil, "", 200, ""},
		{"other loopback port", "POST", "127.0.0.1:1234", nil, "", 200, ""},
		{"localhost", "POST", "localhost:9187", nil, "", 200, ""},
		{"LOCALHOST no port", "POST", "LOCALHOST", nil, "", 200, ""},
		{"ipv6 loopback", "POST", "[::1]:9187", nil, "", 200, ""},
		{"allowed name any port", "POST", "dbproxy.internal:9187", nil, "", 200, ""},
		{"allowed host:port", "POST", "ops.example:8443", nil, "", 200, ""},
		{"allowed host, other port", "POST", "ops.example:9187", nil, "", 403, "Host"},
		{"rebinding name", "POST", "evil.example:9187", nil, "", 403, "DNS rebinding"},
		{"localhost lookalike", "POST", "localhost.evil.example", nil, "", 403, "Host"},
		{"no host", "POST", "", nil, "", 403, "Host"},
		{"port only", "POST", ":9187", nil, "", 403, "Host"},
		{"same origin", "POST", "127.0.0.1:9187", []string{"Origin", "http://127.0.0.1:9187"}, "", 200, ""},
		{"foreign origin", "POST", "127.0.0.1:9187", []string{"Origin", "http://evil.example"}, "", 403, "Origin"},
		{"origin other port", "POST", "127.0.0.1:9187", []string{"Origin", "http://127.0.0.1:8080"}, "", 403, "Origin"},
		{"null origin", "POST", "127.0.0.1:9187", []string{"Origin", "null"}, "", 403, "Origin"},
		{"cross-site fetch", "POST", "127.0.0.1:9187", []string{"Sec-Fetch-Site", "cross-site"}, "", 403, "Sec-Fetch-Site"},
		{"same-site fetch", "POST", "127.0.0.1:9187", []string{"Sec-Fetch-Site", "same-site"}, "", 403, "Sec-Fetch-Site"},
		{"typed URL", "POST", "127.0.0.1:9187", []string{"Sec-Fetch-Site", "none"}, "", 200, ""},
		{"same-origin fetch", "POST", "127.0.0.1:9187", []string{"Sec-Fetch-Site", "same-origin"}, "", 200, ""},
		{"text/plain", "POST", "127.0.0.1:9187", []string{"Content-Type", "text/plain"}, "", 403, "Content-Type"},
		{"form", "POST", "127.0.0.1:9187", []string{"Content-Type", "application/x-www-form-urlencoded"}, "a=b", 403, "Content-Type"},
		{"multipart", "POST", "127.0.0.1:9187", []string{"Content-Type", "multipart/form-data; boundary=x"}, "", 403, "Content-Type"},
		{"form from this listener's own page", "POST", "127.0.0.1:9187", []string{"Origin", "http://127.0.0.1:9187", "Content-Type", "application/x-www-form-urlencoded"}, "a=b", 200, ""},
		{"form from another local port", "POST", "127.0.0.1:9187", []string{"Origin", "http://localhost:3000", "Content-Type", "application/x-www-form-urlencoded"}, "a=b", 403, "Origin"},
		{"json", "POST", "127.0.0.1:9187", []string{"Content-Type", "application/json; charset=utf-8"}, "{}", 200, ""},
		{"body without type", "POST", "127.0.0.1:9187", nil, "x", 403, "Content-Type"},
		{"DELETE is guarded too", "DELETE", "evil.example", nil, "", 403, "Host"},
		{"GET passes", "GET", "evil.example", []string{"Origin", "http://evil.example"}, "", 200, ""},
	} {
		var body io.Reader
		if tt.body != "" {
			body = strings.NewReader(tt.body)
		}
		path := "/v1/x"
		if tt.method == "GET" {
			path = "/v1/y"
		}
		req := httptest.NewRequest(tt.method, path, body)
		req.Host = tt.host
		for i := 0; i+1 < len(tt.hdr); i += 2 {
			req.Header.Set(tt.hdr[i], tt.hdr[i+1])
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != tt.want || (tt.why != "" && !strings.Contains(rec.Body.String(), tt.why)) {
			t.Errorf("%s: %d %q, want %d mentioning %q", tt.name, rec.Code, rec.Body, tt.want, tt.why)
		}
	}
}

// A listener on all interfaces accepts its own interface addresses (and
// refuses names) once it knows its port.
func TestGuardOwnAddress(t *testing.T) {
	s := New(Options{Address: "0.0.0.0:0", Token: "t0k"})
	s.Handle("POST /v1/x", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	_, port, _ := net.SplitHostPort(s.Addr().String())
	ip := nonLoopbackIP(t)
	for host, want := range map[string]bool{
		net.JoinHostPort(ip, port): true,
		"0.0.0.0:" + port:          true,
		net.JoinHostPort(ip, "1"):  false,
		"dbproxy.example:" + port:  false,
		"127.0.0.1:" + port:        true,
	} {
		if got := s.hostAllowed(host); got != want {
			t.Errorf("hostAllowed(%q) = %v, want %v", host, got, want)
		}
	}
}

func nonLoopbackIP(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	return "127.0.0.1" // a host with loopback only still tests the rest
}
