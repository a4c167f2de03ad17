package frontend

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// histCounts returns each histogram's sample count by metric name, for
// the series of backend b and identity id.
func histCounts(t *testing.T, reg *prometheus.Registry, b, id string) map[string]uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if h := m.GetHistogram(); h != nil && labels["backend"] == b && labels["identity"] == id && labels["protocol"] == "postgres" {
				out[mf.GetName()] = h.GetSampleCount()
			}
		}
	}
	return out
}

func TestSessionStatsCountsQueriesAndTransactions(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := NewMetrics(reg).Protocol("postgres").Stats("orders", "api")
	query := func(inTxn bool) { st.RequestStarted(); st.QueryDone(inTxn) }
	query(false) // an autocommit statement: one transaction
	query(true)  // BEGIN
	query(true)  // a statement inside
	query(false) // COMMIT
	st.Waited(Mono())
	st.Waited(Mono())
	got := histCounts(t, reg, "orders", "api")
	want := map[string]uint64{"dbproxy_query_duration_seconds": 4, "dbproxy_transaction_duration_seconds": 2, "dbproxy_client_wait_seconds": 2}
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s count = %d, want %d (all: %v)", name, got[name], n, got)
		}
	}
	var none *SessionStats // sessions before login count nothing
	none.RequestStarted()
	none.QueryDone(false)
	none.Waited(0)
}

func TestSessionStatsAllocatesNothing(t *testing.T) {
	st := NewMetrics(nil).Protocol("postgres").Stats("orders", "api")
	if n := testing.AllocsPerRun(100, func() {
		st.RequestStarted()
		st.QueryDone(false)
		st.Waited(Mono())
	}); n != 0 {
		t.Fatalf("%v allocations per counted request", n)
	}
}
