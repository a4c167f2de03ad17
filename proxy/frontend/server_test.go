package frontend

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/identity"
)

// fakeSession ends when stopped: an idle one by CloseIfIdle, a busy one
// only by Kill.
type fakeSession struct {
	name    string
	busy    bool
	expires time.Time
	once    sync.Once
	done    chan struct{}
	mu      sync.Mutex
	killed  KillReason
}

func newFake(name string, busy bool) *fakeSession {
	return &fakeSession{name: name, busy: busy, done: make(chan struct{})}
}

func (f *fakeSession) Info() SessionInfo { return SessionInfo{Protocol: "fake", Identity: f.name} }

func (f *fakeSession) CloseIfIdle() {
	if !f.busy {
		f.stop(KillIdleShutdown)
	}
}

func (f *fakeSession) Kill(r KillReason) { f.stop(r) }

func (f *fakeSession) Expires() time.Time { return f.expires }

func (f *fakeSession) Grant() Grant { return Grant{Identity: identity.Identity{Name: f.name}} }

func (f *fakeSession) Revoke(string) { f.stop(KillRevoked) }

func (f *fakeSession) stop(r KillReason) {
	f.once.Do(func() {
		f.mu.Lock()
		f.killed = r
		f.mu.Unlock()
		close(f.done)
	})
}

// run tracks f until it is stopped, then calls after.
func run(srv *Server[*fakeSession], f *fakeSession, tracked *sync.WaitGroup, after func()) {
	srv.Go(func() {
		srv.Track(f)
		tracked.Done()
		<-f.done
		srv.Untrack(f)
		after()
	})
}

func TestShutdownClosesIdleThenKillsTheRest(t *testing.T) {
	srv := NewServer[*fakeSession](nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idle, busy := newFake("idle", false), newFake("busy", true)
	var tracked sync.WaitGroup
	tracked.Add(2)
	// The deadline comes once the idle session is gone: by then only
	// the busy one can be open.
	run(srv, idle, &tracked, cancel)
	run(srv, busy, &tracked, func() {})
	tracked.Wait()
	if got := len(srv.Sessions()); got != 2 {
		t.Fatalf("%d sessions listed, want 2", got)
	}
	open, err := srv.Shutdown(ctx)
	if err != nil || open != 1 {
		t.Fatalf("Shutdown = %d, %v; want 1 still open", open, err)
	}
	if idle.killed != KillIdleShutdown || busy.killed != KillShutdown {
		t.Fatalf("idle stopped for %d, busy for %d", idle.killed, busy.killed)
	}
	if got := srv.Sessions(); got == nil || len(got) != 0 {
		t.Fatalf("sessions after shutdown: %#v", got)
	}
}

func TestServeHandsConnectionsOverUntilShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer[*fakeSession](nil)
	handled := make(chan string, 1)
	srv.Serve(ln, "test", func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 2)
		n, _ := c.Read(buf)
		handled <- string(buf[:n])
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("hi"))
	if got := <-handled; got != "hi" {
		t.Fatalf("handler read %q", got)
	}
	c.Close()
	if open, err := srv.Shutdown(context.Background()); open != 0 || err != nil {
		t.Fatalf("Shutdown = %d, %v", open, err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("listener still accepts after Shutdown")
	}
}

func TestKillReasons(t *testing.T) {
	if KillByClient.Rank() != KillShutdown.Rank() || KillLeaseEnd.Rank() >= KillShutdown.Rank() {
		t.Fatal("a client's KILL must rank with shutdown, above a lease end")
	}
	for r, want := range map[KillReason]string{KillIdleShutdown: "shutdown", KillShutdown: "shutdown", KillLeaseEnd: "lease_end",
		KillByClient: "killed", KillTokenExpired: "token_expired"} {
		if got := r.Result(); got != want {
			t.Errorf("%d.Result() = %q, want %q", r, got, want)
		}
	}
	if got := ReasonText("external_revoke"); got != "the lease was revoked in Vault" {
		t.Errorf("ReasonText(external_revoke) = %q", got)
	}
	if got := ReasonText("something new"); got != "something new" {
		t.Errorf("an unknown reason is not passed on: %q", got)
	}
}

func TestWatchExpiryStopsExpiredIdentities(t *testing.T) {
	srv := NewServer[*fakeSession](nil)
	expired, valid := newFake("expired", true), newFake("valid", true)
	expired.expires = time.Now().Add(-time.Minute)
	valid.expires = time.Now().Add(time.Hour)
	var tracked sync.WaitGroup
	tracked.Add(2)
	gone := make(chan struct{})
	run(srv, expired, &tracked, func() { close(gone) })
	run(srv, valid, &tracked, func() {})
	tracked.Wait()
	srv.WatchExpiry()
	srv.WatchExpiry() // starts once
	<-gone
	if expired.killed != KillTokenExpired {
		t.Fatalf("expired session stopped for %d", expired.killed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if open, _ := srv.Shutdown(ctx); open != 1 || valid.killed != KillShutdown {
		t.Fatalf("Shutdown: %d open, valid session stopped for %d; want 1 and shutdown", open, valid.killed)
	}
}

func TestRevokeEndsOnlyTheSessionsNamed(t *testing.T) {
	srv := NewServer[*fakeSession](nil)
	keep, gone := newFake("keep", true), newFake("gone", true)
	var tracked sync.WaitGroup
	tracked.Add(2)
	run(srv, keep, &tracked, func() {})
	run(srv, gone, &tracked, func() {})
	tracked.Wait()
	n := srv.Revoke(func(g Grant) string {
		if g.Identity.Name == "gone" {
			return "its grant was removed"
		}
		return ""
	})
	<-gone.done
	if n != 1 || gone.killed != KillRevoked || keep.killed != KillNone {
		t.Fatalf("Revoke ended %d; gone stopped for %d, keep for %d", n, gone.killed, keep.killed)
	}
	if KillRevoked.Result() != "config_reload" || KillRevoked.Rank() != KillShutdown {
		t.Fatalf("KillRevoked: result %q rank %d", KillRevoked.Result(), KillRevoked.Rank())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = srv.Shutdown(ctx)
}
