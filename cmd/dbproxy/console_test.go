package main

import (
	"testing"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/admin/console"
	"github.com/dbproxy/dbproxy/config"
)

func TestConsoleDatabaseNameAgrees(t *testing.T) {
	if console.Database != config.ConsoleDatabase {
		t.Fatalf("console.Database %q != config.ConsoleDatabase %q: the check in config would guard the wrong name", console.Database, config.ConsoleDatabase)
	}
}

func TestConfigSettings(t *testing.T) {
	cfg := &config.Config{
		Backends: map[string]config.Backend{"orders": {Protocol: "postgres", Address: "db:5432"}},
		Admin:    config.Admin{Address: "127.0.0.1:9187", TokenFile: "/etc/dbproxy/admin-token"},
	}
	got := map[string]string{}
	for _, s := range configSettings(cfg, zap.NewNop()) {
		got[s.Key] = s.Value
	}
	for k, want := range map[string]string{"backends.orders.address": "db:5432", "admin.address": "127.0.0.1:9187",
		"admin.token_file": "/etc/dbproxy/admin-token"} {
		if got[k] != want {
			t.Errorf("SHOW CONFIG %s = %q, want %q (all: %v)", k, got[k], want, got)
		}
	}
	var out []console.Setting
	flatten("", map[string]any{"vault": map[string]any{"token": "hvs.x", "secret_id_file": "/f", "password": "p"}}, &out)
	for _, s := range out {
		if s.Value == "hvs.x" || s.Value == "p" || s.Key == "vault.secret_id_file" && s.Value != "/f" {
			t.Errorf("flatten: %s = %q", s.Key, s.Value)
		}
	}
}
