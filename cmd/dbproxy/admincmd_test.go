package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// opsFake is a running dbproxy as the admin API sees it: one backend.
type opsFake struct {
	did    []string
	capped bool // rotate answers as over the issuance cap
}

func (o *opsFake) Sessions() any {
	return []map[string]string{
		{"protocol": "postgres", "backend": "orders", "identity": "api", "state": "idle"},
		{"protocol": "postgres", "backend": "orders", "identity": "api", "state": "idle"},
	}
}
func (o *opsFake) Pools() any {
	return []pool.Stats{{Backend: "orders", Role: "rw", Open: 3, Idle: 2, Max: 10, Paused: true}}
}
func (o *opsFake) Leases() any {
	return []creds.Info{{Backend: "orders", Role: "rw", Generation: 4, State: "active", Username: "v-rw-4",
		LeaseEnd: time.Now().Add(time.Hour), Connections: 3}, {Backend: "orders", Role: "ro", Generation: 7, State: "draining",
		Username: "v-ro-7", LeaseEnd: time.Now().Add(time.Hour), Fleet: &creds.FleetInfo{
			Name: "orders-api", Instance: "pod-b", Issuer: "pod-a", Term: 3, LagSeconds: 0.5,
			Members:   []creds.FleetMember{{ID: "pod-a", Live: true}, {ID: "pod-b", Live: true}, {ID: "pod-c"}},
			DrainedBy: map[string]time.Time{"pod-b": time.Now(), "pod-a": time.Now()},
		}}}
}
func (o *opsFake) act(verb, b string) bool {
	o.did = append(o.did, verb+" "+b)
	return b == "orders"
}
func (o *opsFake) Rotate(b string) error {
	if !o.act("rotate", b) {
		return admin.ErrNotFound
	}
	if b == "orders" && o.capped {
		return &creds.IssueCapError{Backend: b, Role: "rw", Max: 6, Next: time.Date(2026, 12, 1, 23, 0, 41, 0, time.UTC), Wait: 40500 * time.Millisecond}
	}
	return nil
}
func (o *opsFake) Pause(b string) bool  { return o.act("pause", b) }
func (o *opsFake) Resume(b string) bool { return o.act("resume", b) }
func (o *opsFake) Drain(b string) bool  { return o.act("drain", b) }

func startAdmin(t *testing.T, token string) (string, *opsFake) {
	t.Helper()
	ops := &opsFake{}
	s := admin.New(admin.Options{Address: "127.0.0.1:0", Token: token})
	s.MountV1(ops)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return s.Addr().String(), ops
}

func TestOperatorCommands(t *testing.T) {
	addr, ops := startAdmin(t, "s3cret")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Execute(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, out, errs := run("pause", "--admin", addr, "--token-file", tokenFile, "orders"); code != 0 || out != "orders: paused\n" {
		t.Fatalf("pause: %d %q %q", code, out, errs)
	}
	if code, _, errs := run("drain", "--admin", addr, "--token-file", tokenFile, "nosuch"); code != exitStartup || !strings.Contains(errs, "404") {
		t.Fatalf("drain of an unknown backend: %d %q", code, errs)
	}
	if code, _, errs := run("resume", "--admin", addr, "orders"); code != exitStartup || !strings.Contains(errs, "401") {
		t.Fatalf("resume without the token: %d %q", code, errs)
	}
	if code, _, _ := run("rotate", "--admin", addr); code != exitUsage {
		t.Fatalf("rotate without a backend: %d, want %d", code, exitUsage)
	}
	code, out, errs := run("status", "--admin", addr, "--token-file", tokenFile)
	if code != 0 {
		t.Fatalf("status: %d %q", code, errs)
	}
	for _, want := range []string{"orders  rw    3     2     10   true", "v-rw-4", "active", "postgres  orders   api       idle   2",
		"orders-api  orders/ro   7    pod-b          pod-a   2/3   pod-a,pod-b  0.5s"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if strings.Join(ops.did, ",") != "pause orders,drain nosuch" {
		t.Errorf("actions: %v", ops.did)
	}
	if code, _, errs := run("status", "--admin", "127.0.0.1:1"); code != exitStartup || !strings.Contains(errs, "is dbproxy running") {
		t.Fatalf("status with nothing listening: %d %q", code, errs)
	}
}

// rotate reports success, and over the issuance cap says that nothing was
// rotated and when to try again. The CLI's requests pass the admin API's
// cross-site guard whether it is called by IP or as localhost.
func TestRotateCommand(t *testing.T) {
	addr, ops := startAdmin(t, "")
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Execute(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	_, port, _ := strings.Cut(addr, ":")
	for _, a := range []string{addr, "localhost:" + port} {
		if code, out, errs := run("rotate", "--admin", a, "orders"); code != 0 || out != "orders: rotation started\n" {
			t.Fatalf("rotate via %s: %d %q %q", a, code, out, errs)
		}
	}
	ops.capped = true
	code, out, errs := run("rotate", "--admin", addr, "orders")
	want := "dbproxy rotate: orders was not rotated: credential issuance cap reached for backend orders, role rw: 6 credentials " +
		"issued in the last minute (lease.max_issue_per_minute); the next one may be issued at 2026-12-01T23:00:41Z, in 41s\nTry again in 41s.\n"
	if code != exitStartup || out != "" || errs != want {
		t.Fatalf("rotate over the cap: %d %q\n got %q\nwant %q", code, out, errs, want)
	}
}
