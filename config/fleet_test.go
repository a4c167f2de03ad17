package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestFleetOffByDefault(t *testing.T) {
	c, _, err := load(t, base)
	if err != nil {
		t.Fatal(err)
	}
	if c.Fleet != nil {
		t.Fatalf("fleet mode on without a fleet block: %+v", c.Fleet)
	}
}

func TestFleetDefaults(t *testing.T) {
	c, _, err := load(t, base+"fleet:\n  name: orders-api\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Fleet{Name: "orders-api", KVMount: "secret", KVPath: "dbproxy/fleet",
		LockTTL: Duration(10 * time.Second), PollInterval: Duration(2 * time.Second)}
	if *c.Fleet != want {
		t.Fatalf("fleet = %+v, want %+v", *c.Fleet, want)
	}
}

func TestFleetProblems(t *testing.T) {
	// base has 19 lines; the fleet block starts on line 20.
	tests := []struct {
		name, block string
		want        []string
	}{
		{"empty block", "fleet:\n", []string{"20:1: fleet: empty; set fleet.name"}},
		{"no name", "fleet:\n  kv_mount: kv\n", []string{"20:1: fleet.name: required; instances with the same name share credentials"}},
		{"name with a slash", "fleet:\n  name: a/b\n", []string{`21:9: fleet.name: "a/b" may only contain letters, digits`}},
		{"empty mount", "fleet:\n  name: a\n  kv_mount: \"\"\n", []string{`22:13: fleet.kv_mount: empty; leave the key out to use "secret"`}},
		{"path with slashes", "fleet:\n  name: a\n  kv_path: /dbproxy/\n", []string{`22:12: fleet.kv_path: "/dbproxy/" is not a Vault path`}},
		{"path escaping", "fleet:\n  name: a\n  kv_path: a/../b\n", []string{`22:12: fleet.kv_path: "a/../b" is not a Vault path`}},
		{"instance id", "fleet:\n  name: a\n  instance_id: \"pod 1\"\n", []string{`22:16: fleet.instance_id: "pod 1" may only contain`}},
		{"lock shorter than polls", "fleet:\n  name: a\n  lock_ttl: 3s\n  poll_interval: 2s\n", []string{"22:13: fleet.lock_ttl: 3s must be at least three poll intervals (3 x 2s)"}},
		{"poll too short", "fleet:\n  name: a\n  poll_interval: 10ms\n", []string{"22:18: fleet.poll_interval: 10ms is too short"}},
		{"unknown key", "fleet:\n  name: a\n  lock: 3s\n", []string{`22:3: unknown key "lock" in fleet; valid keys are: instance_id, kv_mount, kv_path, lock_ttl, name, poll_interval`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := load(t, base+tt.block)
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("want Problems, got %v", err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, strings.TrimPrefix(p.String(), p.File+":"))
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n  %s", len(got), len(tt.want), strings.Join(got, "\n  "))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i], w)
				}
			}
		})
	}
}
