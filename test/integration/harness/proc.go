package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one server process running in its own process group.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has been reaped
	waitErr error

	stopSig   syscall.Signal // graceful stop signal, used by StopAll
	stopGrace time.Duration
}

var (
	spawnOnce sync.Once
	spawnCh   chan func()

	runningMu sync.Mutex
	running   = map[*process]struct{}{}
)

// onSpawnThread runs f on one OS thread that lives as long as the test
// binary. Pdeathsig is delivered when the thread that forked the child exits,
// not the process, so children must be forked from a thread that never exits.
func onSpawnThread(f func()) {
	spawnOnce.Do(func() {
		spawnCh = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread is never reused or ended
			for f := range spawnCh {
				f()
			}
		}()
	})
	done := make(chan struct{})
	spawnCh <- func() { f(); close(done) }
	<-done
}

// startProcess starts cmd in its own process group with stdout and stderr
// appended to logPath. deathSig is sent to it if the test binary dies.
// cred, if not nil, runs it as another user (root only).
func startProcess(name string, cmd *exec.Cmd, logPath string, deathSig syscall.Signal, cred *syscall.Credential) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: open log: %w", name, err)
	}
	defer logf.Close() // the child has its own copy of the descriptor
	if cred != nil {
		if err := logf.Chown(int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("%s: chown log: %w", name, err)
		}
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig, Credential: cred}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}),
		stopSig: syscall.SIGKILL, stopGrace: 5 * time.Second}
	onSpawnThread(func() { err = cmd.Start() })
	if err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", name, cmd.Path, err)
	}
	runningMu.Lock()
	running[p] = struct{}{}
	runningMu.Unlock()
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the whole process group.
func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return fmt.Errorf("%s has exited", p.name)
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("%s: signal %v: %w", p.name, sig, err)
	}
	return nil
}

// stop sends sig to the process group (and SIGCONT, in case it is paused),
// waits up to grace for the leader to exit, then kills the group. Stopping
// a stopped process is a no-op.
func (p *process) stop(sig syscall.Signal, grace time.Duration) error {
	defer func() {
		runningMu.Lock()
		delete(running, p)
		runningMu.Unlock()
	}()
	pgid := p.cmd.Process.Pid
	if !p.exited() {
		_ = syscall.Kill(-pgid, sig)
		_ = syscall.Kill(-pgid, syscall.SIGCONT)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, pgid)
			}
		}
	}
	// Children left in the group (database backends, Vault plugins).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return nil
}

// StopAll kills every server this package started that is still running.
// Defer it in TestMain as a safety net behind the servers' own Stop methods.
func StopAll() {
	runningMu.Lock()
	ps := make([]*process, 0, len(running))
	for p := range running {
		ps = append(ps, p)
	}
	runningMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { _ = p.stop(p.stopSig, p.stopGrace) })
	}
	wg.Wait()
}

// waitReady polls check every 100ms until it succeeds, the process exits,
// timeout passes or ctx ends. Errors include the tail of the server log.
func waitReady(ctx context.Context, p *process, timeout time.Duration, check func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during startup (%v); last check: %v\n%s", p.name, p.waitErr, last, logTail(p.logPath))
		case <-ctx.Done():
			return fmt.Errorf("%s: canceled while waiting for readiness; last check: %v\n%s", p.name, last, logTail(p.logPath))
		case <-deadline.C:
			return fmt.Errorf("%s not ready after %v: %v\n%s", p.name, timeout, last, logTail(p.logPath))
		case <-tick.C:
		}
	}
}

// logTail returns the last lines of a log file, labeled for error messages.
func logTail(path string) string {
	const max = 6 << 10
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log %s: %v)", path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return fmt.Sprintf("--- tail of %s ---\n%s\n---", path, strings.Join(lines, "\n"))
}

// logContains reports whether the log file contains s.
func logContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(s))
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// The servers retry with a new port if they lose the race for it.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// randomSecret returns n random bytes as hex (passwords and tokens).
func randomSecret(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// errAddrInUse tells the start loops to try another port.
var errAddrInUse = errors.New("address already in use")

const startAttempts = 3

// findBinary returns the first candidate that is an executable file, looking
// names without a slash up in PATH.
func findBinary(what string, candidates ...string) (string, error) {
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if !strings.Contains(c, "/") {
			if p, err := exec.LookPath(c); err == nil {
				return p, nil
			}
			continue
		}
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s not found (tried %s); run scripts/install-deps.sh", what, strings.Join(candidates, ", "))
}

// runLogged runs a short command (initdb, install-db) with its output
// appended to logPath; on failure the error carries the log tail.
func runLogged(ctx context.Context, name string, cmd *exec.Cmd, logPath string, cred *syscall.Credential) error {
	p, err := startProcess(name, cmd, logPath, syscall.SIGKILL, cred)
	if err != nil {
		return err
	}
	select {
	case <-p.done:
		runningMu.Lock()
		delete(running, p)
		runningMu.Unlock()
	case <-ctx.Done():
		_ = p.stop(syscall.SIGKILL, time.Second)
		return fmt.Errorf("%s: %w\n%s", name, ctx.Err(), logTail(logPath))
	}
	if p.waitErr != nil {
		return fmt.Errorf("%s: %w\n%s", name, p.waitErr, logTail(logPath))
	}
	return nil
}
