package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, s *Server, path string, hdr ...string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	s.mux.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestHealthz(t *testing.T) {
	s := New(Options{})
	if code, body := get(t, s, "/healthz"); code != 200 || body != "ok" {
		t.Errorf("/healthz = %d %q, want 200 ok", code, body)
	}
}

func TestReadyz(t *testing.T) {
	s := New(Options{})
	code, body := get(t, s, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "startup: ") {
		t.Errorf("before SetReady: %d %q, want 503 naming startup", code, body)
	}
	s.SetReady(true)
	if code, body := get(t, s, "/readyz"); code != 200 || body != "ready" {
		t.Errorf("after SetReady: %d %q, want 200 ready", code, body)
	}

	vaultErr := errors.New("vault unreachable: connection refused")
	s.AddReadinessCheck("vault", func() error { return vaultErr })
	s.AddReadinessCheck("pools", func() error { return nil })
	code, body = get(t, s, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "vault: vault unreachable: connection refused") || strings.Contains(body, "pools") {
		t.Errorf("failing check: %d %q", code, body)
	}

	code, body = get(t, s, "/readyz", "Accept", "application/json")
	var got struct {
		Status  string
		Failing []failure
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("JSON body %q: %v", body, err)
	}
	if code != 503 || got.Status != "not ready" || len(got.Failing) != 1 || got.Failing[0].Name != "vault" {
		t.Errorf("JSON readyz = %d %+v", code, got)
	}

	// Same name replaces the check.
	s.AddReadinessCheck("vault", func() error { return nil })
	if code, _ := get(t, s, "/readyz", "Accept", "application/json"); code != 200 {
		t.Errorf("after replacing the failing check: %d, want 200", code)
	}
	s.SetReady(false)
	if code, _ := get(t, s, "/readyz"); code != 503 {
		t.Errorf("after SetReady(false): %d, want 503", code)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "dbproxy_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	s := New(Options{Registry: reg})
	code, body := get(t, s, "/metrics")
	if code != 200 || !strings.Contains(body, "dbproxy_test_total 3") || !strings.Contains(body, "dbproxy_ready 0") {
		t.Errorf("/metrics = %d\n%s", code, body)
	}
	s.SetReady(true)
	if _, body := get(t, s, "/metrics"); !strings.Contains(body, "dbproxy_ready 1") {
		t.Errorf("dbproxy_ready after SetReady(true):\n%s", body)
	}

	// A Gatherer overrides what is served.
	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "dbproxy_other", Help: "other"}))
	s = New(Options{Registry: prometheus.NewRegistry(), Gatherer: other})
	if _, body := get(t, s, "/metrics"); !strings.Contains(body, "dbproxy_other 0") || strings.Contains(body, "dbproxy_test_total") {
		t.Errorf("/metrics with Gatherer:\n%s", body)
	}
}

func TestToken(t *testing.T) {
	s := New(Options{Token: "s3cret"})
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "sessions") })
	s.Handle("GET /v1/sessions", ok)
	s.Handle("/status", ok)
	for _, tt := range []struct {
		path, auth string
		want       int
	}{
		{"/v1/sessions", "", 401},
		{"/v1/sessions", "Bearer wrong", 401},
		{"/v1/sessions", "Bearer s3cret2", 401},
		{"/v1/sessions", "Basic s3cret", 401},
		{"/v1/sessions", "Bearer s3cret", 200},
		{"/v1/sessions", "bearer s3cret", 200},
		{"/status", "", 200},
		{"/healthz", "", 200},
		{"/metrics", "", 200},
	} {
		code, body := get(t, s, tt.path, "Authorization", tt.auth)
		if code != tt.want {
			t.Errorf("%s with %q: %d %q, want %d", tt.path, tt.auth, code, body, tt.want)
		}
	}

	open := New(Options{})
	open.Handle("GET /v1/sessions", ok)
	if code, _ := get(t, open, "/v1/sessions"); code != 200 {
		t.Errorf("no token configured: %d, want 200", code)
	}
}

func TestIsV1(t *testing.T) {
	for pattern, want := range map[string]bool{
		"/v1/sessions":                   true,
		"GET /v1/sessions":               true,
		"POST /v1/backends/{name}/drain": true,
		"/v1":                            true,
		"GET example.com/v1/pools":       true,
		"/v10/x":                         false,
		"/metrics":                       false,
		"GET /":                          false,
		"GET /status/v1/":                false,
	} {
		if got := isV1(pattern); got != want {
			t.Errorf("isV1(%q) = %v, want %v", pattern, got, want)
		}
	}
}

func TestStartShutdown(t *testing.T) {
	s := New(Options{Address: "127.0.0.1:0", Registry: prometheus.NewRegistry()})
	if s.Addr() != nil {
		t.Error("Addr before Start should be nil")
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown before Start: %v", err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil {
		t.Error("second Start: want an error")
	}
	s.SetReady(true)
	resp, err := http.Get("http://" + s.Addr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ready" {
		t.Errorf("GET /readyz over TCP: %d %q", resp.StatusCode, body)
	}

	// Listen errors come back from Start.
	busy := New(Options{Address: s.Addr().String()})
	if err := busy.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Errorf("Start on a busy port: %v, want a listen error", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

func TestPprofBehindToken(t *testing.T) {
	s := New(Options{Address: "127.0.0.1:0", Token: "s3cret"})
	s.MountPprof()
	h := s.mux
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/cmdline", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("without token: %d, want 401", rec.Code)
	}
	req := httptest.NewRequest("GET", "/debug/pprof/cmdline", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("with token: %d, want 200", rec.Code)
	}
}
