package main

import (
	"context"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
)

// reportConfig is what `dbproxy report` needs to know of the configuration.
type reportConfig struct {
	vaultAddress string
	started      time.Time
	specs        []creds.SourceSpec
	protocols    map[string]string // backend -> postgres | mysql
	gatherer     prometheus.Gatherer
}

func newReportConfig(cfg *config.Config, specs []creds.SourceSpec, g prometheus.Gatherer) reportConfig {
	rc := reportConfig{vaultAddress: cfg.Vault.Address, started: time.Now(), specs: specs, protocols: map[string]string{}, gatherer: g}
	for name, b := range cfg.Backends {
		rc.protocols[name] = b.Protocol
	}
	return rc
}

// leaseReport is the data of `dbproxy report`, in the layout of a Vault
// dynamic secrets report, from what this dbproxy knows and Vault tells it.
type leaseReport struct {
	GeneratedAt time.Time          `json:"generated_at"`
	Since       time.Time          `json:"since"` // counts are since this process started
	Vault       reportVault        `json:"vault"`
	Engines     []reportEngine     `json:"secrets_engines"`
	Issued      []reportCount      `json:"credentials_issued"`
	Active      []reportCount      `json:"active_leases"` // active or draining: not yet past their drain deadline
	Lifecycle   reportLifecycle    `json:"lease_lifecycle"`
	Security    reportSecurity     `json:"security"`
	Rotations   map[string]float64 `json:"rotations_by_reason"`
}

type reportVault struct {
	Address string             `json:"address"`
	Health  *creds.VaultHealth `json:"health,omitempty"`
	Error   string             `json:"error,omitempty"`
}

type reportEngine struct {
	Mount    string   `json:"mount"`
	Plugins  []string `json:"plugins"` // postgres, mysql
	Backends []string `json:"backends"`
	Roles    []string `json:"roles"`
}

type reportCount struct {
	Path     string  `json:"path"` // MOUNT/creds/ROLE
	Protocol string  `json:"protocol"`
	Count    float64 `json:"count"`
}

type reportLifecycle struct {
	AverageTTLSeconds float64 `json:"average_ttl_seconds"`
	Renewals          float64 `json:"renewals"`
	CappedRenewals    float64 `json:"capped_renewals"`
	FailedRenewals    float64 `json:"failed_renewals"`
	Revocations       float64 `json:"revocations"`
	RevocationErrors  float64 `json:"revocation_errors"`
	ExpiredNotRenewed float64 `json:"expired_not_renewed"`
}

type reportSecurity struct {
	RefusedClients   float64 `json:"refused_clients"` // SQLSTATE class 28: unknown identity, no grant, TLS required
	VaultAuthErrors  float64 `json:"vault_permission_errors"`
	ExternalRevokes  float64 `json:"external_revokes"`
	DBRefusedLogins  float64 `json:"database_refused_logins"`
	SecretsInConfig  string  `json:"secrets_in_config"`
	OperatorRevokes  float64 `json:"operator_revokes"`
	ManualRotations  float64 `json:"manual_rotations"`
	VaultUnreachable float64 `json:"vault_request_errors"`
}

// Report implements admin.Reporter.
func (st *stack) Report(ctx context.Context) any {
	rc := st.view.Load().report
	r := &leaseReport{GeneratedAt: time.Now(), Since: rc.started, Vault: reportVault{Address: rc.vaultAddress}, Rotations: map[string]float64{}}
	if h, err := st.broker.Client().Health(ctx); err != nil {
		r.Vault.Error = err.Error()
	} else {
		r.Vault.Health = &h
	}
	m := gather(rc.gatherer)
	engines := map[string]*reportEngine{}
	for _, sp := range rc.specs {
		if sp.Kind != creds.Dynamic {
			continue // a static role or KV secret issues no credentials
		}
		e := engines[sp.Mount]
		if e == nil {
			e = &reportEngine{Mount: sp.Mount}
			engines[sp.Mount] = e
		}
		e.Plugins = addUnique(e.Plugins, rc.protocols[sp.Backend])
		e.Backends = addUnique(e.Backends, sp.Backend)
		e.Roles = addUnique(e.Roles, sp.Role)
		path := sp.Mount + "/creds/" + sp.Role
		r.Issued = append(r.Issued, reportCount{Path: path, Protocol: rc.protocols[sp.Backend],
			Count: m.sum("dbproxy_credentials_issued_total", "backend", sp.Backend, "role", sp.Role)})
		active := 0.0
		for _, l := range st.broker.Leases() {
			if l.Backend == sp.Backend && l.Role == sp.Role && (l.State == "active" || l.State == "draining") {
				active++
			}
		}
		r.Active = append(r.Active, reportCount{Path: path, Protocol: rc.protocols[sp.Backend], Count: active})
	}
	for _, e := range engines {
		r.Engines = append(r.Engines, *e)
	}
	sort.Slice(r.Engines, func(i, j int) bool { return r.Engines[i].Mount < r.Engines[j].Mount })
	sort.Slice(r.Issued, func(i, j int) bool { return r.Issued[i].Path < r.Issued[j].Path })
	sort.Slice(r.Active, func(i, j int) bool { return r.Active[i].Path < r.Active[j].Path })

	var ttl, n float64
	for _, l := range st.broker.Leases() {
		if l.TTLSeconds > 0 && l.Kind == "" {
			ttl += float64(l.TTLSeconds)
			n++
		}
	}
	if n > 0 {
		r.Lifecycle.AverageTTLSeconds = ttl / n
	}
	r.Lifecycle.Renewals = m.sum("dbproxy_lease_renewals_total", "result", "ok") + m.sum("dbproxy_lease_renewals_total", "result", "capped")
	r.Lifecycle.CappedRenewals = m.sum("dbproxy_lease_renewals_total", "result", "capped")
	r.Lifecycle.FailedRenewals = m.sum("dbproxy_lease_renewals_total", "result", "error") + m.sum("dbproxy_lease_renewals_total", "result", "gone")
	r.Lifecycle.Revocations = m.sum("dbproxy_lease_revocations_total", "result", "ok") + m.sum("dbproxy_lease_revocations_total", "result", "gone")
	r.Lifecycle.RevocationErrors = m.sum("dbproxy_lease_revocations_total", "result", "error")
	r.Lifecycle.ExpiredNotRenewed = m.sum("dbproxy_lease_revocations_total", "result", "expired")
	for _, reason := range []string{"initial", "max_ttl", "token", "expired", "external_revoke", "auth_failed", "manual", "revoke"} {
		if v := m.sum("dbproxy_credential_rotations_total", "reason", reason); v > 0 {
			r.Rotations[reason] = v
		}
	}
	r.Security = reportSecurity{
		RefusedClients:   m.sum("dbproxy_client_errors_total", "class", "28"),
		VaultAuthErrors:  m.sum("dbproxy_vault_requests_total", "status", "403"),
		VaultUnreachable: m.sum("dbproxy_vault_requests_total", "status", "error"),
		ExternalRevokes:  r.Rotations["external_revoke"],
		DBRefusedLogins:  r.Rotations["auth_failed"],
		OperatorRevokes:  r.Rotations["revoke"],
		ManualRotations:  r.Rotations["manual"],
		SecretsInConfig:  "none (Vault credentials from files, database credentials from Vault)",
	}
	return r
}

func addUnique(xs []string, x string) []string {
	for _, y := range xs {
		if y == x {
			return xs
		}
	}
	xs = append(xs, x)
	sort.Strings(xs)
	return xs
}

// metricSet is a gathered registry, for summing counters by label.
type metricSet map[string]*dto.MetricFamily

func gather(g prometheus.Gatherer) metricSet {
	out := metricSet{}
	if g == nil {
		return out
	}
	mfs, _ := g.Gather()
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// sum adds the samples of name whose labels match every (label, value)
// pair in kv.
func (m metricSet) sum(name string, kv ...string) float64 {
	mf := m[name]
	if mf == nil {
		return 0
	}
	total := 0.0
next:
	for _, mt := range mf.GetMetric() {
		for i := 0; i+1 < len(kv); i += 2 {
			found := false
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == kv[i] && lp.GetValue() == kv[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case mt.Counter != nil:
			total += mt.GetCounter().GetValue()
		case mt.Gauge != nil:
			total += mt.GetGauge().GetValue()
		}
	}
	return total
}
