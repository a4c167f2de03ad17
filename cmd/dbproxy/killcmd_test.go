package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/dbproxy/dbproxy/admin"
)

type killFake struct{ reasons map[uint64]string }

func (k *killFake) KillSession(id uint64, reason string) (any, bool) {
	if id != 42 {
		return nil, false
	}
	k.reasons[id] = reason
	return map[string]any{"id": id, "protocol": "mysql", "identity": "api", "backend": "orders", "remote": "127.0.0.1:5000"}, true
}

func TestKillCommand(t *testing.T) {
	s := admin.New(admin.Options{Address: "127.0.0.1:0"})
	k := &killFake{reasons: map[uint64]string{}}
	s.MountKill(k)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Execute(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := run("kill", "--admin", addr, "42", "--reason", "deploy of v2 & more")
	if code != 0 || out != "killed session 42 (mysql, identity api, backend orders, from 127.0.0.1:5000)\n" {
		t.Fatalf("kill: %d %q %q", code, out, errs)
	}
	if k.reasons[42] != "deploy of v2 & more" {
		t.Fatalf("reason sent: %q", k.reasons[42])
	}
	if code, _, errs := run("kill", "--admin", addr, "43"); code != exitStartup || !strings.Contains(errs, "no open session with id 43") {
		t.Fatalf("kill of an unknown id: %d %q", code, errs)
	}
	for _, args := range [][]string{{"kill", "--admin", addr}, {"kill", "--admin", addr, "x1"}, {"kill", "--admin", addr, "1", "2"}} {
		if code, _, _ := run(args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}
