//go:build linux

package identity

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// unixPair returns the accepted (server) and dialled (client) ends of a
// real unix socket connection in a temporary directory.
func unixPair(t *testing.T) (server, client *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dbproxy.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan *net.UnixConn, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			errc <- err
			return
		}
		accepted <- c
	}()
	client, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	select {
	case server = <-accepted:
	case err := <-errc:
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return server, client
}

func TestFromPeer(t *testing.T) {
	uid := os.Getuid()
	tests := []struct {
		name       string
		specs      map[string]Spec
		want       Identity
		wantReason Reason
		wantMsg    string
	}{
		{
			name: "uid mapped",
			specs: map[string]Spec{
				"me":    {UnixUID: intp(uid)},
				"other": {UnixUID: intp(uid + 1)},
			},
			want: Identity{Name: "me", Method: MethodPeer},
		},
		{
			name:       "uid not mapped",
			specs:      map[string]Spec{"other": {UnixUID: intp(uid + 1)}},
			wantReason: ReasonUnknownIdentity,
			wantMsg:    fmt.Sprintf("no identity matches unix peer uid %d: add unix_uid: %d under identities.<name>.match", uid, uid),
		},
		{
			name:       "no uids configured",
			specs:      map[string]Spec{"me": {CertCN: fmt.Sprint(uid)}},
			wantReason: ReasonUnknownIdentity,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPolicy(tt.specs)
			if err != nil {
				t.Fatal(err)
			}
			server, client := unixPair(t)
			got, err := p.FromPeer(server)
			checkResult(t, got, err, tt.want, tt.wantReason, tt.wantMsg)
			// The dialling side sees the listening process: same uid.
			got2, err2 := p.FromPeer(client)
			if got2 != got || (err == nil) != (err2 == nil) {
				t.Errorf("client side: %+v, %v; server side: %+v, %v", got2, err2, got, err)
			}
		})
	}
}

func TestFromPeerClosedConn(t *testing.T) {
	p, err := NewPolicy(map[string]Spec{"me": {UnixUID: intp(os.Getuid())}})
	if err != nil {
		t.Fatal(err)
	}
	server, _ := unixPair(t)
	server.Close()
	_, err = p.FromPeer(server)
	var e *Error
	if err == nil || errors.As(err, &e) {
		t.Fatalf("FromPeer(closed) = %v, want a plain error", err)
	}
	if !strings.Contains(err.Error(), "read unix peer credentials") {
		t.Errorf("error %q does not say what failed", err)
	}
}
