package console

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// SHOW STATS and the idle rows of SHOW SERVERS read the metrics registry:
// the same series Prometheus scrapes.

// The histograms SHOW STATS sums (proxy/frontend/stats.go).
const (
	metricXact  = "dbproxy_transaction_duration_seconds"
	metricQuery = "dbproxy_query_duration_seconds"
	metricWait  = "dbproxy_client_wait_seconds"
	metricConns = "dbproxy_upstream_connections"
)

type genKey struct {
	backend, role string
	gen           uint64
}

type statsKey struct{ backend, identity string }

// statsRow is one (backend, identity)'s totals: counts and seconds.
type statsRow struct {
	xacts, queries, waits uint64
	xactSec, querySec     float64
	waitSec               float64
}

// gather returns the registry's metric families by name.
func (c *Console) gather() (map[string]*dto.MetricFamily, error) {
	if c.opts.Gatherer == nil {
		return nil, &sqlError{code: "55000", msg: "dbproxy runs without a metrics registry, so the console has no statistics"}
	}
	mfs, err := c.opts.Gatherer.Gather()
	if err != nil && len(mfs) == 0 {
		return nil, fmt.Errorf("reading metrics: %w", err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out, nil
}

func labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func (c *Console) showStats() (*table, error) {
	mfs, err := c.gather()
	if err != nil {
		return nil, err
	}
	rows := map[statsKey]*statsRow{}
	for _, name := range []string{metricXact, metricQuery, metricWait} {
		for _, m := range mfs[name].GetMetric() {
			l := labels(m)
			k := statsKey{l["backend"], l["identity"]}
			r := rows[k]
			if r == nil {
				r = &statsRow{}
				rows[k] = r
			}
			h := m.GetHistogram()
			switch name {
			case metricXact:
				r.xacts, r.xactSec = r.xacts+h.GetSampleCount(), r.xactSec+h.GetSampleSum()
			case metricQuery:
				r.queries, r.querySec = r.queries+h.GetSampleCount(), r.querySec+h.GetSampleSum()
			default:
				r.waits, r.waitSec = r.waits+h.GetSampleCount(), r.waitSec+h.GetSampleSum()
			}
		}
	}
	keys := make([]statsKey, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		return a.backend < b.backend || a.backend == b.backend && a.identity < b.identity
	})
	t := &table{cols: cols(textCols("database", "identity"), intCols("total_server_assignment_count", "total_xact_count",
		"total_query_count", "total_xact_time", "total_query_time", "total_wait_time",
		"avg_xact_count", "avg_query_count", "avg_xact_time", "avg_query_time", "avg_wait_time"))}
	uptime := max(time.Since(c.opts.Started).Seconds(), 1)
	for _, k := range keys {
		r := rows[k]
		t.add(k.backend, k.identity, r.waits, r.xacts, r.queries, micros(r.xactSec), micros(r.querySec), micros(r.waitSec),
			int64(float64(r.xacts)/uptime), int64(float64(r.queries)/uptime),
			avgMicros(r.xactSec, r.xacts), avgMicros(r.querySec, r.queries), avgMicros(r.waitSec, r.waits))
	}
	return t, nil
}

// micros is seconds as whole microseconds, PgBouncer's unit.
func micros(sec float64) int64 { return int64(sec * 1e6) }

func avgMicros(sec float64, n uint64) int64 {
	if n == 0 {
		return 0
	}
	return micros(sec / float64(n))
}

// idleServers counts idle upstream connections per generation.
func (c *Console) idleServers() (map[genKey]int, error) {
	mfs, err := c.gather()
	if err != nil {
		return nil, err
	}
	out := map[genKey]int{}
	for _, m := range mfs[metricConns].GetMetric() {
		l := labels(m)
		if l["state"] != "idle" {
			continue
		}
		gen, err := strconv.ParseUint(l["generation"], 10, 64)
		if err != nil {
			continue
		}
		out[genKey{l["backend"], l["role"], gen}] += int(m.GetGauge().GetValue())
	}
	return out, nil
}
