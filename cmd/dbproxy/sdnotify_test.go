package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifySocket listens like systemd does and returns the datagrams it gets.
func notifySocket(t *testing.T, name string) <-chan string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	got := make(chan string, 8)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	return got
}

func receive(t *testing.T, got <-chan string) string {
	t.Helper()
	select {
	case s := <-got:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no datagram on NOTIFY_SOCKET")
		return ""
	}
}

func TestSdNotifyPathAndAbstract(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@dbproxy-test-" + filepath.Base(t.TempDir()),
	} {
		got := notifySocket(t, name)
		if err := sdNotify("READY=1"); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if s := receive(t, got); s != "READY=1" {
			t.Errorf("%s: got %q, want READY=1", name, s)
		}
	}
}

func TestSdNotifyUnsetAndErrors(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v, want nil", err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if err := sdNotify("READY=1"); err == nil || !strings.Contains(err.Error(), "not a unix socket") {
		t.Errorf("vsock address: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if err := sdNotify("READY=1"); err == nil {
		t.Error("socket nobody listens on: no error")
	}
}

// TestRunNotifiesReadyAndStopping: run says READY=1 once serving and
// STOPPING=1 when a signal starts the shutdown, in that order.
func TestRunNotifiesReadyAndStopping(t *testing.T) {
	noProxies(t)
	got := notifySocket(t, filepath.Join(t.TempDir(), "notify"))
	h := startRun(t, "run", "--config", minimalConfig(t, "127.0.0.1:0", ""))
	if s := receive(t, got); s != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", s)
	}
	h.sigs <- os.Interrupt
	if s := receive(t, got); s != "STOPPING=1" {
		t.Errorf("second notification %q, want STOPPING=1", s)
	}
	if code := h.wait(t); code != 0 {
		t.Errorf("exit status %d:\n%s", code, h.stderr.String())
	}
}
