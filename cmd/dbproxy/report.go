package main

import (
	"context"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/events"
)

// reportConfig is what `dbproxy report` needs to know of the configuration.
type reportConfig struct {
	vaultAddress string
	specs        []creds.SourceSpec
	protocols    map[string]string // backend -> postgres | mysql
	gatherer     prometheus.Gatherer
}

func newReportConfig(cfg *config.Config, specs []creds.SourceSpec, g prometheus.Gatherer) reportConfig {
	rc := reportConfig{vaultAddress: cfg.Vault.Address, specs: specs, protocols: map[string]string{}, gatherer: g}
	for name, b := range cfg.Backends {
		rc.protocols[name] = b.Protocol
	}
	return rc
}

// leaseReport is the data of `dbproxy report`, in the layout of a Vault
// dynamic secrets report, from what this dbproxy knows and Vault tells it.
// Credential counts cover the window of the event log (the last 24 hours,
// or since the process started if that is later); the security counters
// marked so are since the process started.
type leaseReport struct {
	GeneratedAt   time.Time          `json:"generated_at"`
	Since         time.Time          `json:"since"`        // the process started
	WindowStart   time.Time          `json:"window_start"` // counts are from here to generated_at
	WindowSeconds float64            `json:"window_seconds"`
	Vault         reportVault        `json:"vault"`
	Engines       []reportEngine     `json:"secrets_engines"`
	Issued        []reportCount      `json:"credentials_issued"`
	Active        []reportCount      `json:"active_leases"` // active or draining: not yet past their drain deadline
	Lifecycle     reportLifecycle    `json:"lease_lifecycle"`
	ByRole        []reportRole       `json:"lifecycle_by_role"`
	Security      reportSecurity     `json:"security"`
	Rotations     map[string]float64 `json:"rotations_by_reason"`
}

// reportRole is one (backend, role)'s lifecycle in the window.
type reportRole struct {
	Backend           string  `json:"backend"`
	Role              string  `json:"role"`
	Path              string  `json:"path"`
	Protocol          string  `json:"protocol"`
	Issued            float64 `json:"issued"`
	Renewals          float64 `json:"renewals"`
	Revocations       float64 `json:"revocations"`
	ExpiredNotRenewed float64 `json:"expired_not_renewed"`
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
	now := time.Now()
	r := &leaseReport{GeneratedAt: now, Since: processStarted, Vault: reportVault{Address: rc.vaultAddress}, Rotations: map[string]float64{}}
	r.WindowStart = now.Add(-st.events.MaxAge())
	if r.WindowStart.Before(processStarted) {
		r.WindowStart = processStarted
	}
	r.WindowSeconds = now.Sub(r.WindowStart).Seconds()
	if h, err := st.broker.Client().Health(ctx); err != nil {
		r.Vault.Error = err.Error()
	} else {
		r.Vault.Health = &h
	}
	leases := st.broker.Leases()
	fillCounts(r, rc, st.events.Counts(), leases)
	var ttl, n float64
	for _, l := range leases {
		if l.TTLSeconds > 0 && l.Kind == "" {
			ttl += float64(l.TTLSeconds)
			n++
		}
	}
	if n > 0 {
		r.Lifecycle.AverageTTLSeconds = ttl / n
	}
	m := gather(rc.gatherer)
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

// fillCounts puts the event log's counts of the window into r: per
// dynamic (backend, role) and in total. Counts of roles no longer
// configured (a reload removed them) are left out, as are static and KV
// sources, which issue nothing.
func fillCounts(r *leaseReport, rc reportConfig, counts []events.Count, leases []creds.Info) {
	engines := map[string]*reportEngine{}
	for _, sp := range rc.specs {
		if sp.Kind != creds.Dynamic {
			continue
		}
		e := engines[sp.Mount]
		if e == nil {
			e = &reportEngine{Mount: sp.Mount}
			engines[sp.Mount] = e
		}
		proto := rc.protocols[sp.Backend]
		e.Plugins = addUnique(e.Plugins, proto)
		e.Backends = addUnique(e.Backends, sp.Backend)
		e.Roles = addUnique(e.Roles, sp.Role)
		role := reportRole{Backend: sp.Backend, Role: sp.Role, Path: sp.Mount + "/creds/" + sp.Role, Protocol: proto}
		lc := &r.Lifecycle
		for _, c := range counts {
			if c.Backend != sp.Backend || c.Role != sp.Role {
				continue
			}
			n := float64(c.N)
			switch {
			case c.Kind == events.Issued:
				role.Issued += n
				r.Rotations[c.Reason] += n
			case c.Kind == events.Renewed && (c.Reason == "" || c.Reason == "capped"):
				role.Renewals += n
				lc.Renewals += n
				if c.Reason == "capped" {
					lc.CappedRenewals += n
				}
			case c.Kind == events.Renewed:
				lc.FailedRenewals += n
			case c.Kind == events.Revoked:
				role.Revocations += n
				lc.Revocations += n
			case c.Kind == events.RevokeFail:
				lc.RevocationErrors += n
			case c.Kind == events.Expired:
				role.ExpiredNotRenewed += n
				lc.ExpiredNotRenewed += n
			}
		}
		r.ByRole = append(r.ByRole, role)
		r.Issued = append(r.Issued, reportCount{Path: role.Path, Protocol: proto, Count: role.Issued})
		active := 0.0
		for _, l := range leases {
			if l.Backend == sp.Backend && l.Role == sp.Role && (l.State == "active" || l.State == "draining") {
				active++
			}
		}
		r.Active = append(r.Active, reportCount{Path: role.Path, Protocol: proto, Count: active})
	}
	for _, e := range engines {
		r.Engines = append(r.Engines, *e)
	}
	sort.Slice(r.Engines, func(i, j int) bool { return r.Engines[i].Mount < r.Engines[j].Mount })
	sort.Slice(r.Issued, func(i, j int) bool { return r.Issued[i].Path < r.Issued[j].Path })
	sort.Slice(r.Active, func(i, j int) bool { return r.Active[i].Path < r.Active[j].Path })
	sort.Slice(r.ByRole, func(i, j int) bool {
		return r.ByRole[i].Path+r.ByRole[i].Backend < r.ByRole[j].Path+r.ByRole[j].Backend
	})
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
