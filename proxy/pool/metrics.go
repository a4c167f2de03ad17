package pool

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the pool's collectors, shared by every pool of a process.
type Metrics struct {
	conns        *prometheus.GaugeVec
	checkoutSecs *prometheus.HistogramVec
}

// NewMetrics registers the pool collectors on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dbproxy_upstream_connections", Help: "Open upstream connections by credential generation and state (idle, busy).",
		}, []string{"backend", "role", "generation", "state"}),
		checkoutSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dbproxy_upstream_checkout_seconds",
			Help:    "Time to obtain an upstream connection, by result (reused, dialed, dial_error, exhausted).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"backend", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m.conns, m.checkoutSecs)
	}
	return m
}

// checkoutObservers are one pool's children of the checkout histogram,
// looked up once so a checkout does not hash label values.
type checkoutObservers struct {
	reused, dialed, dialError, exhausted, paused prometheus.Observer
}

func (m *Metrics) observers(backend string) checkoutObservers {
	h := m.checkoutSecs
	return checkoutObservers{
		reused: h.WithLabelValues(backend, "reused"), dialed: h.WithLabelValues(backend, "dialed"),
		dialError: h.WithLabelValues(backend, "dial_error"), exhausted: h.WithLabelValues(backend, "exhausted"),
		paused: h.WithLabelValues(backend, "paused"),
	}
}
