package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

var (
	buildOnce sync.Once
	proxyBin  string
	buildErr  error
)

// dbproxyBinary builds cmd/dbproxy once per test run.
func dbproxyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		proxyBin, buildErr = harness.BuildDBProxy(ctx, filepath.Join(WorkDir, "bin"))
	})
	if buildErr != nil {
		t.Fatalf("build dbproxy: %v", buildErr)
	}
	return proxyBin
}

// proxyProc is a running `dbproxy run`.
type proxyProc struct {
	cmd     *exec.Cmd
	dir     string
	logPath string
	admin   string // http://127.0.0.1:PORT
	done    chan error
}

// freePort returns a free loopback port or fails the test.
func freePort(t *testing.T) int {
	t.Helper()
	p, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startProxy writes cfg (a YAML template in which {{ADMIN}} is replaced by
// the admin address) to a temp dir and runs dbproxy until the test ends.
// It waits for /readyz unless waitReady is false.
func startProxy(t *testing.T, dir, cfg string, waitReady bool) *proxyProc {
	t.Helper()
	bin := dbproxyBinary(t)
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg = strings.ReplaceAll(cfg, "{{ADMIN}}", adminAddr)
	cfgPath := filepath.Join(dir, "dbproxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proxyProc{dir: dir, logPath: filepath.Join(dir, "dbproxy.log"), admin: "http://" + adminAddr, done: make(chan error, 1)}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "run", "--config", cfgPath, "--log-level", "debug")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		p.stop(t)
		if i := strings.Index(p.log(), "WARNING: DATA RACE"); i >= 0 {
			race := p.log()[i:]
			race = race[:min(len(race), 4000)]
			t.Errorf("the race detector found a data race in dbproxy (built with DBPROXY_BUILD_FLAGS=%q):\n%s", os.Getenv("DBPROXY_BUILD_FLAGS"), race)
		}
		if t.Failed() {
			// Keep the whole log where the run's logs are kept.
			keep := filepath.Join(WorkDir, "dbproxy-"+strings.ReplaceAll(t.Name(), "/", "_")+".log")
			_ = os.WriteFile(keep, []byte(p.log()), 0o644)
			t.Logf("dbproxy log (whole log in %s):\n%s", keep, tail(p.log(), 6000))
		}
	})
	if waitReady {
		p.waitReady(t, 30*time.Second)
	}
	return p
}

func (p *proxyProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proxyProc) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("dbproxy exited before ready: %v\n%s", err, tail(p.log(), 4000))
		default:
		}
		resp, err := http.Get(p.admin + "/readyz")
		if err == nil {
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b.String())
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("dbproxy not ready after %v: %s\n%s", timeout, last, tail(p.log(), 4000))
}

// stop sends SIGTERM and waits; it returns the exit error.
func (p *proxyProc) stop(t *testing.T) error {
	if p.cmd.Process == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(40 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("dbproxy did not exit within 40s of SIGTERM")
		return <-p.done
	}
}

// vaultTokenFile writes the root token where dbproxy's config points.
func vaultTokenFile(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "vault-token")
	if err := Vault.WriteTokenFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}
