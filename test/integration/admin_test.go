package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dbproxyCLI runs an operator command against p's admin API.
func dbproxyCLI(t *testing.T, p *proxyProc, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{args[0], "--admin", strings.TrimPrefix(p.admin, "http://")}, args[1:]...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, dbproxyBinary(t), argv...).CombinedOutput()
	return string(out), err
}

// adminDo sends one request to p's admin API and returns status, headers
// and body.
func adminDo(t *testing.T, p *proxyProc, req *http.Request) (int, http.Header, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func paused(t *testing.T, p *proxyProc) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.admin+"/v1/pools", nil)
	_, _, body := adminDo(t, p, req)
	var pools []struct{ Paused bool }
	if err := json.Unmarshal([]byte(body), &pools); err != nil || len(pools) == 0 {
		t.Fatalf("pools %q: %v", body, err)
	}
	for _, pl := range pools {
		if pl.Paused {
			return true
		}
	}
	return false
}

// A web page's cross-site POST (issue 10: curl with a foreign Host, Origin
// and text/plain) is refused by a real dbproxy on its loopback default,
// which has no token; the CLI still works.
func TestAdminRefusesCrossSite(t *testing.T) {
	s := startLeaseStackTTL(t, "pg-adminxs", "", time.Hour, 2*time.Hour)
	p := s.proxy
	for _, verb := range []string{"pause", "drain", "rotate"} {
		req, _ := http.NewRequest(http.MethodPost, p.admin+"/v1/backends/appdb/"+verb, nil)
		req.Host = "evil.example"
		req.Header.Set("Origin", "http://evil.example")
		req.Header.Set("Content-Type", "text/plain")
		code, _, body := adminDo(t, p, req)
		if code != http.StatusForbidden || !strings.Contains(body, `"error":"refused: Host \"evil.example\"`) {
			t.Fatalf("cross-site %s: %d %s", verb, code, body)
		}
	}
	// Same host, but a page on another site (Origin) with a form body.
	req, _ := http.NewRequest(http.MethodPost, p.admin+"/v1/backends/appdb/pause", strings.NewReader("x=1"))
	req.Header.Set("Origin", "http://evil.example")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if code, _, body := adminDo(t, p, req); code != http.StatusForbidden || !strings.Contains(body, "Origin") {
		t.Fatalf("cross-origin form pause: %d %s", code, body)
	}
	if paused(t, p) {
		t.Fatal("the backend was paused by a refused request")
	}
	if n := len(p.leases(t)); n != 1 {
		t.Fatalf("%d generations after a refused rotate, want 1", n)
	}
	if !strings.Contains(p.log(), "refused a state-changing request that may come from a web page") {
		t.Error("the refusal was not logged")
	}

	for _, c := range []struct{ args, want string }{
		{"pause appdb", "appdb: paused\n"},
		{"resume appdb", "appdb: resumed\n"},
		{"drain appdb", "appdb: draining\n"},
		{"rotate appdb", "appdb: rotation started\n"},
	} {
		out, err := dbproxyCLI(t, p, strings.Fields(c.args)...)
		if err != nil || out != c.want {
			t.Fatalf("dbproxy %s: %q %v", c.args, out, err)
		}
	}
	if out, err := dbproxyCLI(t, p, "status"); err != nil || !strings.Contains(out, "appdb") {
		t.Fatalf("dbproxy status: %q %v", out, err)
	}
}

// With lease.max_issue_per_minute: 3, the initial credential and two
// rotations are issued; the next rotate (the 4th credential within the
// minute) answers 429 with Retry-After, the CLI says when to retry, the
// refusal is counted, and Vault issued exactly 3 credentials.
func TestRotateIssuanceCap(t *testing.T) {
	const maxIssue = 3
	s := startLeaseStackCap(t, "pg-issuecap", "", time.Hour, 2*time.Hour, maxIssue)
	p := s.proxy
	for gen := uint64(2); gen <= maxIssue; gen++ {
		if out, err := dbproxyCLI(t, p, "rotate", "appdb"); err != nil || out != "appdb: rotation started\n" {
			t.Fatalf("rotate to generation %d: %q %v", gen, out, err)
		}
		waitGeneration(t, p, gen)
	}

	req, _ := http.NewRequest(http.MethodPost, p.admin+"/v1/backends/appdb/rotate", nil)
	code, hdr, body := adminDo(t, p, req)
	retry, err := strconv.Atoi(hdr.Get("Retry-After"))
	if code != http.StatusTooManyRequests || err != nil || retry < 1 || retry > 60 {
		t.Fatalf("rotate over the cap: %d, Retry-After %q: %s", code, hdr.Get("Retry-After"), body)
	}
	var e struct {
		Error      string `json:"error"`
		RetryAfter int    `json:"retry_after_seconds"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.RetryAfter != retry ||
		!strings.Contains(e.Error, "3 credentials issued in the last minute (lease.max_issue_per_minute); the next one may be issued at ") {
		t.Fatalf("429 body %s: %v", body, err)
	}

	out, err := dbproxyCLI(t, p, "rotate", "appdb")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(out, "dbproxy rotate: appdb was not rotated: credential issuance cap reached") ||
		!strings.Contains(out, "Try again in ") {
		t.Fatalf("CLI rotate over the cap: %v\n%s", err, out)
	}

	if n := auditCount(t, s.auditTo, Mount+"/creds/"+s.role); n != maxIssue {
		t.Errorf("Vault issued %d credentials, want %d", n, maxIssue)
	}
	if l := p.leases(t); l[len(l)-1].Generation != maxIssue {
		t.Errorf("generations after the refusals: %+v", l)
	}
	req, _ = http.NewRequest(http.MethodGet, p.admin+"/metrics", nil)
	_, _, metrics := adminDo(t, p, req)
	want := fmt.Sprintf(`dbproxy_credential_issue_refused_total{backend="appdb",reason="manual",role=%q} 2`, s.role)
	if !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %s", want)
	}
}

// waitGeneration waits until generation gen is p's active one.
func waitGeneration(t *testing.T, p *proxyProc, gen uint64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, l := range p.leases(t) {
			if l.Generation == gen && l.State == "active" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("generation %d not active after 15s: %+v", gen, p.leases(t))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
