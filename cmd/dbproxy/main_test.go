package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
)

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func execute(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = Execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := execute("version")
	if code != 0 || !strings.HasPrefix(out, "dbproxy dev (go1.") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"check"},
		{"check", "--config"},
		{"check", "--config", "x.yaml", "extra"},
		{"run"},
		{"--log-format", "xml", "run", "--config", "../../examples/dbproxy.yaml"},
		{"run", "--log-level", "trace", "--config", "../../examples/dbproxy.yaml"},
		{"--no-such-flag", "version"},
	} {
		code, _, stderr := execute(args...)
		if code != exitUsage || stderr == "" {
			t.Errorf("%q: status %d, stderr %q; want 2 and a message", args, code, stderr)
		}
	}
	code, _, stderr := execute("frobnicate")
	if !strings.Contains(stderr, `unknown command "frobnicate"`) || !strings.Contains(stderr, "Usage: dbproxy") {
		t.Errorf("unknown command: %d %q", code, stderr)
	}
	if code, out, _ := execute("help"); code != 0 || !strings.Contains(out, "Usage") {
		t.Errorf("help: %d %q", code, out)
	}
}

func TestCheckExample(t *testing.T) {
	code, out, stderr := execute("check", "--config", "../../examples/dbproxy.yaml")
	if code != 0 || out != "ok\n" || stderr != "" {
		t.Errorf("check example: %d %q %q", code, out, stderr)
	}
}

func TestCheckProblems(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.yaml")
	os.WriteFile(path, []byte("vault:\n  adress: https://v:8200\nbackends:\n  a:\n    protocol: oracle\n"), 0o600)
	code, out, stderr := execute("check", "--config", path)
	if code != exitUsage || out != "" {
		t.Fatalf("check bad config: %d %q", code, out)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(path) + `:\d+:\d+: `)
	for _, l := range lines {
		if !re.MatchString(l) {
			t.Errorf("line %q is not FILE:LINE:COL: msg", l)
		}
	}
	if !strings.Contains(stderr, path+`:2:3: unknown key "adress" in vault: did you mean "address"?`) {
		t.Errorf("stderr:\n%s", stderr)
	}

	code, _, stderr = execute("check", "--config", filepath.Join(dir, "missing.yaml"))
	if code != exitUsage || !strings.Contains(stderr, "no such file") {
		t.Errorf("missing config: %d %q", code, stderr)
	}
}

// minimalConfig writes a valid configuration with the admin listener on
// addr and returns its path.
func minimalConfig(t *testing.T, addr string, extra string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "token"), []byte("t\n"), 0o600)
	text := `vault:
  address: http://127.0.0.1:8200
  auth: {method: token, token_file: token}
backends:
  orders: {protocol: postgres, address: 127.0.0.1:5432, vault_role: app}
listeners:
  - {name: side, protocol: postgres, address: 127.0.0.1:0, identity: svc}
identities:
  svc: {grants: [{backend: orders}]}
admin: {address: "` + addr + `"}
` + extra
	path := filepath.Join(dir, "dbproxy.yaml")
	os.WriteFile(path, []byte(text), 0o600)
	return path
}

// fakeService blocks in Shutdown until ctx ends and reports open sessions.
type fakeService struct {
	open     int
	shutdown chan struct{}
}

func (f *fakeService) Name() string { return "fake" }
func (f *fakeService) Shutdown(ctx context.Context) (int, error) {
	close(f.shutdown)
	<-ctx.Done()
	return f.open, nil
}

type runHarness struct {
	sigs   chan os.Signal
	stderr *syncBuffer
	done   chan int
	exits  chan int
}

// startRun runs "dbproxy run" in the background with fake signals.
func startRun(t *testing.T, args ...string) *runHarness {
	t.Helper()
	h := &runHarness{sigs: make(chan os.Signal, 1), stderr: &syncBuffer{}, done: make(chan int, 1), exits: make(chan int, 1)}
	oldNotify, oldExit := notifySignals, exitNow
	notifySignals = func(ch chan<- os.Signal) func() {
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case s := <-h.sigs:
					ch <- s
				case <-stop:
					return
				}
			}
		}()
		return func() { close(stop) }
	}
	exitNow = func(code int) { h.exits <- code }
	t.Cleanup(func() { notifySignals, exitNow = oldNotify, oldExit })
	go func() { h.done <- Execute(context.Background(), args, io.Discard, h.stderr) }()
	return h
}

// adminAddr waits for the "admin listening" log line and returns its address.
func (h *runHarness) adminAddr(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(h.stderr.String()))
		for sc.Scan() {
			var line struct{ Msg, Address string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "admin listening" {
				return line.Address
			}
		}
		select {
		case code := <-h.done:
			t.Fatalf("run exited with %d:\n%s", code, h.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("admin never listened:\n%s", h.stderr.String())
	return ""
}

func (h *runHarness) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-h.done:
		return code
	case <-time.After(15 * time.Second):
		t.Fatalf("run did not stop:\n%s", h.stderr.String())
		return -1
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// noProxies replaces startProxies so that run tests need no Vault.
func noProxies(t *testing.T) {
	oldStart := start
	start = func(context.Context, *config.Config, Deps) ([]Service, error) { return nil, nil }
	t.Cleanup(func() { start = oldStart })
}

func TestRunServesAdminAndStopsOnSignal(t *testing.T) {
	noProxies(t)
	h := startRun(t, "run", "--config", minimalConfig(t, "127.0.0.1:0", ""))
	addr := h.adminAddr(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := httpGet(t, "http://"+addr+"/readyz")
		if code == 200 && body == "ready" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, metrics := httpGet(t, "http://"+addr+"/metrics")
	for _, want := range []string{"go_goroutines ", "process_open_fds ", `dbproxy_build_info{goversion="go1.`, "dbproxy_ready 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	h.sigs <- os.Interrupt
	if code := h.wait(t); code != 0 {
		t.Errorf("exit status %d, want 0:\n%s", code, h.stderr.String())
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("admin still listening after shutdown")
	}
	if !strings.Contains(h.stderr.String(), `"msg":"dbproxy stopped"`) {
		t.Errorf("no stop log:\n%s", h.stderr.String())
	}
}

func TestRunShutdownDeadlineAndSecondSignal(t *testing.T) {
	svc := &fakeService{open: 3, shutdown: make(chan struct{})}
	var gotDeps Deps
	oldStart := start
	start = func(ctx context.Context, cfg *config.Config, deps Deps) ([]Service, error) {
		gotDeps = deps
		return []Service{svc}, nil
	}
	t.Cleanup(func() { start = oldStart })

	h := startRun(t, "--log-format", "json", "run", "--config", minimalConfig(t, "127.0.0.1:0", "shutdown_timeout: 300ms\n"))
	h.adminAddr(t)
	if gotDeps.Logger == nil || gotDeps.Registry == nil || gotDeps.Admin == nil {
		t.Fatalf("Deps not filled: %+v", gotDeps)
	}
	began := time.Now()
	h.sigs <- os.Interrupt
	<-svc.shutdown
	h.sigs <- os.Interrupt
	select {
	case code := <-h.exits:
		if code != exitSignal {
			t.Errorf("second signal exit status %d, want 130", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second signal did not exit")
	}
	// exitNow is faked, so the graceful path still ends at the deadline.
	if code := h.wait(t); code != 0 {
		t.Errorf("exit status %d", code)
	}
	if took := time.Since(began); took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("shutdown took %s, want about the 300ms shutdown_timeout", took)
	}
	log := h.stderr.String()
	if !strings.Contains(log, `"msg":"service stopped","service":"fake","still_open":3`) || !strings.Contains(log, `"msg":"dbproxy stopped","still_open":3`) {
		t.Errorf("still-open sessions not logged:\n%s", log)
	}
}

func TestRunStartupErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	noProxies(t)
	code, _, stderr := execute("run", "--config", minimalConfig(t, ln.Addr().String(), ""))
	if code != exitStartup || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.HasPrefix(stderr, "dbproxy: admin: listen on ") {
		t.Errorf("busy admin port: %d %q, want 1 and one line", code, stderr)
	}

	oldStart := start
	start = func(context.Context, *config.Config, Deps) ([]Service, error) {
		return nil, errors.New("vault login: permission denied")
	}
	t.Cleanup(func() { start = oldStart })
	var errOut syncBuffer
	code = Execute(context.Background(), []string{"--log-level", "error", "run", "--config", minimalConfig(t, "127.0.0.1:0", "")}, io.Discard, &errOut)
	if code != exitStartup || errOut.String() != "dbproxy: vault login: permission denied\n" {
		t.Errorf("startProxies error: %d %q", code, errOut.String())
	}

	code, _, stderr = execute("run", "--config", filepath.Join(t.TempDir(), "none.yaml"))
	if code != exitUsage || stderr == "" {
		t.Errorf("missing config: %d %q", code, stderr)
	}
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	noProxies(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- Execute(ctx, []string{"--log-level", "warn", "run", "--config", minimalConfig(t, "127.0.0.1:0", "")}, io.Discard, io.Discard)
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit status %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop when its context ended")
	}
}
