package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/creds"
)

func TestMetricSetSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total"}, []string{"backend", "result"})
	reg.MustRegister(c)
	c.WithLabelValues("a", "ok").Add(2)
	c.WithLabelValues("a", "error").Add(3)
	c.WithLabelValues("b", "ok").Add(5)
	m := gather(reg)
	for _, tc := range []struct {
		kv   []string
		want float64
	}{
		{nil, 10}, {[]string{"result", "ok"}, 7}, {[]string{"backend", "a", "result", "error"}, 3}, {[]string{"backend", "c"}, 0},
	} {
		if got := m.sum("x_total", tc.kv...); got != tc.want {
			t.Errorf("sum%v = %v, want %v", tc.kv, got, tc.want)
		}
	}
	if m.sum("nosuch_total") != 0 {
		t.Error("missing metric not 0")
	}
}

type fakeReporter struct{ r *leaseReport }

func (f fakeReporter) Report(context.Context) any { return f.r }

func TestReportCommand(t *testing.T) {
	now := time.Now()
	r := &leaseReport{GeneratedAt: now, Since: now.Add(-2 * time.Hour),
		Vault:     reportVault{Address: "https://vault:8200", Health: &creds.VaultHealth{Version: "1.21.0", Initialized: true}},
		Engines:   []reportEngine{{Mount: "database", Plugins: []string{"mysql", "postgres"}, Backends: []string{"inv", "orders"}, Roles: []string{"ro", "rw"}}},
		Issued:    []reportCount{{Path: "database/creds/rw", Protocol: "postgres", Count: 7}, {Path: "database/creds/ro", Protocol: "mysql", Count: 2}},
		Active:    []reportCount{{Path: "database/creds/rw", Count: 2}},
		Lifecycle: reportLifecycle{AverageTTLSeconds: 600, Renewals: 40, CappedRenewals: 3, Revocations: 5, ExpiredNotRenewed: 1},
		Security:  reportSecurity{RefusedClients: 4, SecretsInConfig: "none"},
		Rotations: map[string]float64{"initial": 2, "max_ttl": 5},
	}
	s := admin.New(admin.Options{Address: "127.0.0.1:0"})
	s.MountReport(fakeReporter{r})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := reportCmd(ctx, []string{"--admin", s.Addr().String()}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	flat := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{
		"HASHICORP VAULT DYNAMIC SECRETS REPORT", "Vault Version: 1.21.0", "Cluster Status: active",
		"database/: mysql, postgres (backends inv, orders; roles ro, rw)", "since dbproxy started, 2h0m0s ago",
		"Total Credentials Generated: 9", "database/creds/rw (postgres): 7", "Total Active: 2", "Average TTL: 10m0s",
		"Renewals: 40 (3 capped at max TTL, 0 failed)", "Expired (not renewed): 1", "initial 2, max_ttl 5",
		"Refused client connections: 4"} {
		if !strings.Contains(flat, want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := reportCmd(ctx, []string{"--admin", s.Addr().String(), "--format", "json"}, &out, &errb); code != 0 || !strings.Contains(out.String(), `"credentials_issued"`) {
		t.Errorf("json: %d %s", code, out.String())
	}
	if code := reportCmd(ctx, []string{"--format", "xml"}, &out, &errb); code != exitUsage {
		t.Errorf("--format xml: exit %d", code)
	}
}
