package postgres

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Metrics are the PostgreSQL front end's collectors; labels come from the
// fixed set (protocol, backend, identity, result, code class).
type Metrics struct {
	clients  *prometheus.GaugeVec
	sessions *prometheus.CounterVec
	connect  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	cancels  *prometheus.CounterVec
	duplex   prometheus.Counter
	retries  prometheus.Counter
	moves    prometheus.Counter
}

// NewMetrics registers the collectors on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	constLabels := prometheus.Labels{"protocol": "postgres"}
	m := &Metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_client_connections", Help: "Open client sessions.", ConstLabels: constLabels,
		}, []string{"backend", "identity"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_client_sessions_total", Help: "Client sessions by result.", ConstLabels: constLabels,
		}, []string{"backend", "identity", "result"}),
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
		duplex: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dbproxy_relay_duplex_switches_total", ConstLabels: constLabels,
			Help: "Times a session switched to the two-direction relay (COPY FROM STDIN, a stalled pipeline, LISTEN).",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dbproxy_request_retries_total", ConstLabels: constLabels,
			Help: "Requests sent again on another server connection because the first was dead before anything ran.",
		}),
		moves: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dbproxy_session_moves_total", ConstLabels: constLabels,
			Help: "Session-mode sessions moved, idle, to a connection on a new credential at a rotation.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.sessions, m.connect, m.bytes, m.errors, m.cancels, m.duplex, m.retries, m.moves)
	}
	return m
}

func errField(err error) zap.Field { return zap.Error(err) }
