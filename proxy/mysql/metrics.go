package mysql

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// Metrics are the MySQL front end's collectors: the shared client set,
// labelled protocol="mysql". MySQL has none of its own.
type Metrics struct {
	*frontend.ProtocolMetrics
	// errors is Errors under the name the transaction relay counts with.
	errors *prometheus.CounterVec
}

// NewMetrics counts client sessions on shared (nil: an unregistered set).
func NewMetrics(shared *frontend.Metrics) *Metrics {
	if shared == nil {
		shared = frontend.NewMetrics(nil)
	}
	pm := shared.Protocol("mysql")
	return &Metrics{ProtocolMetrics: pm, errors: pm.Errors}
}
