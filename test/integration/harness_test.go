package integration

import (
	"context"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/test/integration/harness"
)

// TestHarnessVaultOutage checks the harness's two ways of taking Vault away,
// on a Vault of its own so the shared one is not disturbed: Pause keeps
// state and makes requests time out; Stop+Start loses state until
// Reconfigure.
func TestHarnessVaultOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := harness.StartVault(ctx, t.TempDir(), VaultBin)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if err := v.ConfigurePostgres(ctx, PG, harness.RoleOptions{Role: "outage", DefaultTTL: RoleTTL, MaxTTL: RoleMaxTTL}); err != nil {
		t.Fatal(err)
	}
	read := func(timeout time.Duration) (bool, error) {
		c, err := v.Client.Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(v.Token)
		c.SetMaxRetries(0)
		c.SetClientTimeout(timeout)
		s, err := c.Logical().ReadWithContext(ctx, "database/creds/outage")
		if err == nil && s != nil && s.LeaseID != "" {
			if rerr := c.Sys().RevokeWithContext(ctx, s.LeaseID); rerr != nil {
				t.Errorf("revoke: %v", rerr)
			}
		}
		return s != nil, err
	}
	if ok, err := read(10 * time.Second); !ok || err != nil {
		t.Fatalf("read creds: ok=%v err=%v", ok, err)
	}

	if err := v.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := read(time.Second); err == nil {
		t.Fatal("read from a paused Vault succeeded")
	} else {
		t.Logf("paused: request failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if err := v.Resume(); err != nil {
		t.Fatal(err)
	}
	if ok, err := read(10 * time.Second); !ok || err != nil {
		t.Fatalf("after Resume: ok=%v err=%v", ok, err)
	}

	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := read(10 * time.Second); ok {
		t.Fatalf("a restarted dev server still has the role (err=%v)", err)
	}
	if err := v.Reconfigure(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := read(10 * time.Second); !ok || err != nil {
		t.Fatalf("after Reconfigure: ok=%v err=%v", ok, err)
	}
}
