package postgres

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// Metrics are the PostgreSQL front end's collectors: the shared client
// set, and the relay's own, which only this protocol has.
type Metrics struct {
	*frontend.ProtocolMetrics
	duplex prometheus.Counter
	moves  prometheus.Counter
}

// NewMetrics registers the relay's collectors on reg (nil: unregistered)
// and counts client sessions on shared (nil: an unregistered set).
func NewMetrics(reg prometheus.Registerer, shared *frontend.Metrics) *Metrics {
	if shared == nil {
		shared = frontend.NewMetrics(nil)
	}
	constLabels := prometheus.Labels{"protocol": "postgres"}
	m := &Metrics{
		ProtocolMetrics: shared.Protocol("postgres"),
		duplex: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dbproxy_relay_duplex_switches_total", ConstLabels: constLabels,
			Help: "Times a session switched to the two-direction relay (COPY FROM STDIN, a stalled pipeline, LISTEN).",
		}),
		moves: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dbproxy_session_moves_total", ConstLabels: constLabels,
			Help: "Session-mode sessions moved, idle, to a connection on a new credential at a rotation.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.duplex, m.moves)
	}
	return m
}

func errField(err error) zap.Field { return zap.Error(err) }
