package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

type fakeRevoker struct {
	backend, role, prefix string
	dry                   bool
	err                   error
}

func (f *fakeRevoker) RevokePrefix(_ context.Context, backend, prefix string, dry bool) (any, error) {
	f.backend, f.prefix, f.dry = backend, prefix, dry
	if prefix == "database/creds/" {
		return nil, fmt.Errorf("%w: wider than the role", ErrBadPrefix)
	}
	return map[string]any{"backend": backend, "dry_run": dry, "prefix": prefix}, f.err
}

func (f *fakeRevoker) Revoke(_ context.Context, backend, role string, dry bool) (any, error) {
	f.backend, f.role, f.dry = backend, role, dry
	return map[string]any{"backend": backend, "dry_run": dry}, f.err
}

func TestRevokeEndpoint(t *testing.T) {
	for _, tc := range []struct {
		query    string
		err      error
		code     int
		wantDry  bool
		wantRole string
		body     string
	}{
		{"?dry_run=1&role=ro", nil, 200, true, "ro", `"dry_run":true`},
		{"", nil, 200, false, "", `"dry_run":false`},
		{"?dry_run=maybe", nil, 400, false, "", "use 1 or 0"},
		{"", fmt.Errorf("backend x: %w", ErrUnknownBackend), 404, false, "", "see GET /v1/leases"},
		{"", errors.New("Vault is sealed"), 503, false, "", `"result":{`},
		{"?prefix=database/creds/rw&dry_run=1", nil, 200, true, "", `"prefix":"database/creds/rw"`},
		{"?prefix=database/creds/", nil, 400, false, "", "wider than the role"},
		{"?prefix=database/creds/rw&role=rw", nil, 400, false, "", "either role or prefix"},
	} {
		f := &fakeRevoker{err: tc.err}
		s := New(Options{Address: "127.0.0.1:0"})
		s.MountRevoke(f)
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post("http://"+s.Addr().String()+"/v1/backends/orders/revoke"+tc.query, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_ = s.Shutdown(context.Background())
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.body) {
			t.Errorf("%q: %d %s, want %d with %q", tc.query, resp.StatusCode, b, tc.code, tc.body)
		}
		if tc.code != 400 && (f.backend != "orders" || f.dry != tc.wantDry || f.role != tc.wantRole) {
			t.Errorf("%q: called with %+v", tc.query, f)
		}
	}
}
