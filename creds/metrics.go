package creds

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the credential lifecycle's Prometheus collectors. Labels are
// backend, role, generation, reason and result; never a lease id or user.
type Metrics struct {
	vaultRequests *prometheus.CounterVec
	renewals      *prometheus.CounterVec
	rotations     *prometheus.CounterVec
	issued        *prometheus.CounterVec
	refused       *prometheus.CounterVec
	revocations   *prometheus.CounterVec
	leaseLeft     *prometheus.GaugeVec
	hardLeft      *prometheus.GaugeVec
	generation    *prometheus.GaugeVec

	fleetIssuerChanges *prometheus.CounterVec
	fleetLag           *prometheus.GaugeVec

	certIssued   *prometheus.CounterVec
	certNotAfter *prometheus.GaugeVec
}

// NewMetrics registers the collectors on reg. A nil reg gives unregistered
// collectors, which is what unit tests want.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		vaultRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_vault_requests_total", Help: "Vault requests by operation and status.",
		}, []string{"operation", "status"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_lease_renewals_total", Help: "Lease renewals by result (ok, capped, gone, error).",
		}, []string{"backend", "role", "result"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_credential_rotations_total", Help: "Credential rotations by reason (initial, max_ttl, token, external_revoke, manual, auth_failed).",
		}, []string{"backend", "role", "reason"}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_credentials_issued_total", Help: "Credentials read from database/creds/ROLE.",
		}, []string{"backend", "role"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_credential_issue_refused_total",
			Help: "Credential issuances refused or delayed by lease.max_issue_per_minute, by the rotation's reason (manual: an operator's rotate answered 429).",
		}, []string{"backend", "role", "reason"}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_lease_revocations_total", Help: "Superseded leases revoked by dbproxy, by result.",
		}, []string{"backend", "role", "result"}),
		leaseLeft: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_lease_remaining_seconds", Help: "Seconds until the current lease period ends, per generation.",
		}, []string{"backend", "role", "generation"}),
		hardLeft: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_lease_hard_end_remaining_seconds", Help: "Seconds until the credential can no longer be renewed (max_ttl or token end), per generation; absent while unknown.",
		}, []string{"backend", "role", "generation"}),
		generation: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_credential_generation", Help: "Number of the generation new connections use.",
		}, []string{"backend", "role"}),
		fleetIssuerChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_fleet_issuer_changes_total", Help: "Times this instance became or stopped being the fleet issuer of a backend and role.",
		}, []string{"backend", "role"}),
		fleetLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_fleet_lag_seconds", Help: "Seconds since this instance last read the fleet's shared records (grows while Vault is unreachable).",
		}, []string{"backend", "role"}),
		certIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_tls_certificates_issued_total", Help: "TLS certificates issued by Vault PKI, by what they serve (a listener or backend name).",
		}, []string{"certificate"}),
		certNotAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_tls_certificate_not_after_timestamp_seconds", Help: "When the TLS certificate in use ends (Unix time), by what it serves.",
		}, []string{"certificate"}),
	}
	if reg != nil {
		reg.MustRegister(m.vaultRequests, m.renewals, m.rotations, m.issued, m.refused, m.revocations, m.leaseLeft, m.hardLeft, m.generation,
			m.fleetIssuerChanges, m.fleetLag, m.certIssued, m.certNotAfter)
	}
	return m
}

func (m *Metrics) request(op string, err error) {
	if m == nil {
		return
	}
	m.vaultRequests.WithLabelValues(op, statusOf(err)).Inc()
}
