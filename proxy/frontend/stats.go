package frontend

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-session statistics, PgBouncer's SHOW STATS as Prometheus
// histograms: their _count is the number of transactions, queries and
// checkouts, their _sum the time spent. The console's SHOW STATS reads
// the same series, so the two cannot disagree. A session looks its
// observers up once; counting a request then reads the clock twice and
// allocates nothing.

// statsBuckets span a point query to a long report, in seconds.
var statsBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// statsVecs are the three histograms, labelled protocol, backend, identity.
type statsVecs struct {
	xact, query, wait *prometheus.HistogramVec
}

func newStatsVecs() statsVecs {
	labels := []string{"protocol", "backend", "identity"}
	return statsVecs{
		xact: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dbproxy_transaction_duration_seconds", Buckets: statsBuckets,
			Help: "Client transactions, from the first request to the answer that ends the transaction; a statement outside a transaction block is one transaction.",
		}, labels),
		query: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dbproxy_query_duration_seconds", Buckets: statsBuckets,
			Help: "Client requests (a simple Query, an extended-protocol Sync, a MySQL command), from the request to the end of its answer.",
		}, labels),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dbproxy_client_wait_seconds", Buckets: statsBuckets,
			Help: "Time client sessions waited for a server connection, per checkout (per transaction in transaction pooling, per session in session pooling).",
		}, labels),
	}
}

// processStart anchors the monotonic times the stats keep.
var processStart = time.Now()

// Mono is a monotonic clock reading in nanoseconds, for Waited.
func Mono() int64 { return int64(time.Since(processStart)) }

// SessionStats counts one session's transactions, queries and checkout
// waits. A nil *SessionStats counts nothing. The methods may be called
// from the session's goroutines (the two-direction relay has two).
type SessionStats struct {
	xact, query, wait prometheus.Observer
	reqStart          atomic.Int64 // Mono of the request in flight
	lastRequest       atomic.Int64 // Mono of the latest request's start
	xactStart         atomic.Int64 // Mono the open transaction began; 0: none
}

// Stats returns a session's counters for backend and identity.
func (p *ProtocolMetrics) Stats(backend, identity string) *SessionStats {
	return &SessionStats{
		xact:  p.xact.WithLabelValues(backend, identity),
		query: p.query.WithLabelValues(backend, identity),
		wait:  p.wait.WithLabelValues(backend, identity),
	}
}

// RequestStarted marks the start of a client request.
func (st *SessionStats) RequestStarted() {
	if st != nil {
		now := Mono()
		st.reqStart.Store(now)
		st.lastRequest.Store(now)
	}
}

// LastRequest is when the latest request began; zero before the first.
func (st *SessionStats) LastRequest() time.Time {
	if st == nil {
		return time.Time{}
	}
	ns := st.lastRequest.Load()
	if ns == 0 {
		return time.Time{}
	}
	return processStart.Add(time.Duration(ns))
}

// QueryDone counts the end of a request's answer; inTxn says whether a
// transaction is still open after it. A pipeline's next answer is timed
// from this one's end.
func (st *SessionStats) QueryDone(inTxn bool) {
	if st == nil {
		return
	}
	now := Mono()
	start := st.reqStart.Swap(now)
	st.query.Observe(seconds(now - start))
	began := st.xactStart.Load()
	switch {
	case began == 0 && inTxn:
		st.xactStart.Store(start)
	case began == 0:
		st.xact.Observe(seconds(now - start))
	case !inTxn:
		st.xact.Observe(seconds(now - began))
		st.xactStart.Store(0)
	}
}

// Waited counts a checkout that began at start (Mono).
func (st *SessionStats) Waited(start int64) {
	if st != nil {
		st.wait.Observe(seconds(Mono() - start))
	}
}

func seconds(ns int64) float64 { return float64(max(ns, 0)) / 1e9 }
