package mysql

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the MySQL front end's collectors. They have the names, help
// texts and labels of the PostgreSQL front end's, with the const label
// protocol="mysql", so that both register on one registry as one metric
// family each (a registry accepts the same name twice when the help and
// label names agree and the const label values differ). The "class"
// label of dbproxy_client_errors_total is the SQLSTATE class here too.
type Metrics struct {
	clients  *prometheus.GaugeVec
	sessions *prometheus.CounterVec
	connect  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	cancels  *prometheus.CounterVec
}

// NewMetrics registers the collectors on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	constLabels := prometheus.Labels{"protocol": "mysql"}
	m := &Metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_client_connections", Help: "Open client sessions.", ConstLabels: constLabels,
		}, []string{"backend", "identity"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_client_sessions_total", Help: "Client sessions by result.", ConstLabels: constLabels,
		}, []string{"backend", "identity", "result"}),
		// The help text must stay the PostgreSQL one word for word: the
		// registry refuses one name with two help texts. For MySQL the
		// moment is the OK that ends the handshake.
		connect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dbproxy_client_connect_seconds", Help: "From accept to ReadyForQuery sent to the client.",
			ConstLabels: constLabels, Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"backend"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_relayed_bytes_total", Help: "Bytes relayed, by direction (client_to_server, server_to_client).", ConstLabels: constLabels,
		}, []string{"backend", "direction"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_client_errors_total", Help: "Errors dbproxy itself sent to clients, by SQLSTATE class.", ConstLabels: constLabels,
		}, []string{"class"}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_cancel_requests_total", Help: "Cancel requests by result.", ConstLabels: constLabels,
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.sessions, m.connect, m.bytes, m.errors, m.cancels)
	}
	return m
}
