package frontend

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the client-side collectors both front ends share: one
// family each, told apart by the protocol label. The class label of
// dbproxy_client_errors_total is the SQLSTATE class for both protocols.
type Metrics struct {
	clients  *prometheus.GaugeVec
	sessions *prometheus.CounterVec
	connect  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	cancels  *prometheus.CounterVec
	retries  *prometheus.CounterVec
	stats    statsVecs
}

// NewMetrics registers the collectors on reg (nil: unregistered). Call it
// once per registry and hand the result to both front ends.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_client_connections", Help: "Open client sessions.",
		}, []string{"protocol", "backend", "identity"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_client_sessions_total", Help: "Client sessions by result.",
		}, []string{"protocol", "backend", "identity", "result"}),
		// For MySQL the moment is the OK that ends the handshake.
		connect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dbproxy_client_connect_seconds", Help: "From accept to ReadyForQuery sent to the client.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"protocol", "backend"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_relayed_bytes_total", Help: "Bytes relayed, by direction (client_to_server, server_to_client).",
		}, []string{"protocol", "backend", "direction"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_client_errors_total", Help: "Errors dbproxy itself sent to clients, by SQLSTATE class.",
		}, []string{"protocol", "class"}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_cancel_requests_total", Help: "Cancel requests by result.",
		}, []string{"protocol", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_request_retries_total",
			Help: "Requests sent again on another server connection because the first was dead before anything ran.",
		}, []string{"protocol"}),
		stats: newStatsVecs(),
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.sessions, m.connect, m.bytes, m.errors, m.cancels, m.retries,
			m.stats.xact, m.stats.query, m.stats.wait)
	}
	return m
}

// ProtocolMetrics are Metrics as one front end counts with them: the
// protocol label is set, the others remain, in the order given.
type ProtocolMetrics struct {
	Clients  *prometheus.GaugeVec   // backend, identity
	Sessions *prometheus.CounterVec // backend, identity, result
	Connect  prometheus.ObserverVec // backend
	Bytes    *prometheus.CounterVec // backend, direction
	Errors   *prometheus.CounterVec // class
	Cancels  *prometheus.CounterVec // result
	Retries  prometheus.Counter
	// xact, query and wait are the SHOW STATS histograms (stats.go).
	xact, query, wait prometheus.ObserverVec // backend, identity
}

// Protocol returns the collectors for one protocol's front end.
func (m *Metrics) Protocol(name string) *ProtocolMetrics {
	l := prometheus.Labels{"protocol": name}
	return &ProtocolMetrics{
		Clients: m.clients.MustCurryWith(l), Sessions: m.sessions.MustCurryWith(l),
		Connect: m.connect.MustCurryWith(l), Bytes: m.bytes.MustCurryWith(l),
		Errors: m.errors.MustCurryWith(l), Cancels: m.cancels.MustCurryWith(l),
		Retries: m.retries.WithLabelValues(name),
		xact:    m.stats.xact.MustCurryWith(l), query: m.stats.query.MustCurryWith(l),
		wait: m.stats.wait.MustCurryWith(l),
	}
}

// SessionEnded counts a session's end and the bytes it relayed.
func (p *ProtocolMetrics) SessionEnded(backend, identity, result string, in, out int64) {
	p.Sessions.WithLabelValues(backend, identity, result).Inc()
	p.Bytes.WithLabelValues(backend, "client_to_server").Add(float64(in))
	p.Bytes.WithLabelValues(backend, "server_to_client").Add(float64(out))
}
