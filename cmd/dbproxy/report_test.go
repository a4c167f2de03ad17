package main

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/events"
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

// The report's credential counts come from the event log's window, per
// configured dynamic (backend, role); static sources and roles a reload
// removed are left out.
func TestReportCountsFromEventLog(t *testing.T) {
	clock := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	log := events.New(events.Options{Now: func() time.Time { return clock }})
	rec := func(k events.Kind, backend, role string, gen uint64, reason string) {
		log.Record(events.Event{Kind: k, Backend: backend, Role: role, Generation: gen, Reason: reason, Result: "ok"})
	}
	rec(events.Issued, "orders", "rw", 1, "initial") // 25 h before the report: out of the window
	log.Count(events.Renewed, "orders", "rw", "")
	clock = clock.Add(2 * time.Hour)
	rec(events.Issued, "orders", "rw", 2, "max_ttl")
	rec(events.Revoked, "orders", "rw", 1, "max_ttl")
	log.Count(events.Renewed, "orders", "rw", "")
	log.Count(events.Renewed, "orders", "rw", "capped")
	log.Count(events.Renewed, "orders", "rw", "error")
	rec(events.Issued, "orders", "ro", 1, "initial")
	rec(events.Expired, "orders", "ro", 1, "manual")
	rec(events.Issued, "orders", "rw", 3, "manual")
	rec(events.Issued, "gone", "x", 1, "initial") // a role a reload removed
	rec(events.Issued, "inv", "static", 1, "initial")
	clock = clock.Add(23 * time.Hour)

	rc := reportConfig{protocols: map[string]string{"orders": "postgres", "inv": "mysql"}, specs: []creds.SourceSpec{
		{Backend: "orders", Role: "rw", Mount: "database"}, {Backend: "orders", Role: "ro", Mount: "database"},
		{Backend: "inv", Role: "static", Mount: "database", Kind: creds.Static},
	}}
	r := &leaseReport{Rotations: map[string]float64{}}
	fillCounts(r, rc, log.Counts(), []creds.Info{{Backend: "orders", Role: "rw", State: "active"}, {Backend: "orders", Role: "rw", State: "expired"}})
	want := []reportRole{
		{Backend: "orders", Role: "ro", Path: "database/creds/ro", Protocol: "postgres", Issued: 1, ExpiredNotRenewed: 1},
		{Backend: "orders", Role: "rw", Path: "database/creds/rw", Protocol: "postgres", Issued: 2, Renewals: 2, Revocations: 1},
	}
	if !reflect.DeepEqual(r.ByRole, want) {
		t.Errorf("by role:\n got %+v\nwant %+v", r.ByRole, want)
	}
	l := r.Lifecycle
	if l.Renewals != 2 || l.CappedRenewals != 1 || l.FailedRenewals != 1 || l.Revocations != 1 || l.ExpiredNotRenewed != 1 {
		t.Errorf("lifecycle %+v", l)
	}
	if !reflect.DeepEqual(r.Rotations, map[string]float64{"initial": 1, "max_ttl": 1, "manual": 1}) {
		t.Errorf("rotations %v", r.Rotations)
	}
	if len(r.Active) != 2 || r.Active[1].Count != 1 || len(r.Engines) != 1 || len(r.Issued) != 2 {
		t.Errorf("active %+v engines %+v issued %+v", r.Active, r.Engines, r.Issued)
	}
}

func TestReportCommand(t *testing.T) {
	now := time.Now()
	r := &leaseReport{GeneratedAt: now, Since: now.Add(-2 * time.Hour), WindowStart: now.Add(-2 * time.Hour), WindowSeconds: 7200,
		Vault:     reportVault{Address: "https://vault:8200", Health: &creds.VaultHealth{Version: "1.21.0", Initialized: true}},
		Engines:   []reportEngine{{Mount: "database", Plugins: []string{"mysql", "postgres"}, Backends: []string{"inv", "orders"}, Roles: []string{"ro", "rw"}}},
		Issued:    []reportCount{{Path: "database/creds/rw", Protocol: "postgres", Count: 7}, {Path: "database/creds/ro", Protocol: "mysql", Count: 2}},
		Active:    []reportCount{{Path: "database/creds/rw", Count: 2}},
		Lifecycle: reportLifecycle{AverageTTLSeconds: 600, Renewals: 40, CappedRenewals: 3, Revocations: 5, ExpiredNotRenewed: 1},
		Security:  reportSecurity{RefusedClients: 4, SecretsInConfig: "none"},
		Rotations: map[string]float64{"initial": 2, "max_ttl": 5},
		ByRole:    []reportRole{{Backend: "orders", Role: "rw", Path: "database/creds/rw", Issued: 7, Renewals: 40, Revocations: 5, ExpiredNotRenewed: 1}},
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
		"database/: mysql, postgres (backends inv, orders; roles ro, rw)", "Counting Window: last 24 h: since dbproxy started 2h0m0s ago", "since dbproxy started, 2h0m0s ago",
		"database/creds/rw (orders) 7 40 5 1",
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
