package console

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbproxy/dbproxy/admin"
)

// fakeOps is a dbproxy with one backend, orders (role rw, generation 3
// active and 2 draining), two clients and a registry with statistics.
type fakeOps struct {
	mu       sync.Mutex
	did      []string
	draining int // connections still on generation 2
	killed   map[uint64]string
}

func (f *fakeOps) Sessions() any {
	now := time.Now()
	return []map[string]any{
		{"id": 7, "protocol": "postgres", "identity": "api", "method": "listener", "backend": "orders", "role": "rw",
			"db_user": "v-rw-3", "generation": 3, "state": "idle in transaction", "since": now.Add(-time.Minute), "remote": "127.0.0.1:5000"},
		{"id": 9, "protocol": "mysql", "identity": "batch", "backend": "orders", "role": "rw", "state": "active",
			"since": now, "remote": "10.0.0.2:6000", "request_time": now.Add(-2500 * time.Millisecond)},
	}
}
func (f *fakeOps) Pools() any {
	return []map[string]any{{"backend": "orders", "role": "rw", "open": 4, "idle": 2, "max": 10, "waiting": 1}}
}
func (f *fakeOps) Leases() any {
	f.mu.Lock()
	defer f.mu.Unlock()
	end := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	return []map[string]any{
		{"backend": "orders", "role": "rw", "generation": 3, "username": "v-rw-3", "state": "active", "lease_end": end, "hard_end": end, "connections": 3},
		{"backend": "orders", "role": "rw", "generation": 2, "username": "v-rw-2", "state": "draining", "lease_end": end, "connections": f.draining},
	}
}
func (f *fakeOps) act(verb, b string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.did = append(f.did, verb+" "+b)
	return b == "orders"
}
func (f *fakeOps) Rotate(b string) error {
	if !f.act("rotate", b) {
		return fmt.Errorf("backend %q: %w", b, admin.ErrNotFound)
	}
	return nil
}
func (f *fakeOps) Pause(b string) bool  { return f.act("pause", b) }
func (f *fakeOps) Resume(b string) bool { return f.act("resume", b) }
func (f *fakeOps) Drain(b string) bool  { return f.act("drain", b) }
func (f *fakeOps) KillSession(id uint64, reason string) (any, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id != 9 {
		return nil, false
	}
	f.killed[id] = reason
	return map[string]any{"id": 9, "protocol": "mysql", "identity": "batch", "backend": "orders"}, true
}

func registry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	labels := []string{"protocol", "backend", "identity"}
	for name, obs := range map[string][]float64{
		metricXact: {0.01, 0.03}, metricQuery: {0.01, 0.01, 0.02}, metricWait: {0.001},
	} {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: "h"}, labels)
		reg.MustRegister(h)
		for _, v := range obs {
			h.WithLabelValues("postgres", "orders", "api").Observe(v)
		}
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metricConns, Help: "g"}, []string{"backend", "role", "generation", "state"})
	reg.MustRegister(g)
	g.WithLabelValues("orders", "rw", "3", "idle").Set(2)
	g.WithLabelValues("orders", "rw", "3", "busy").Set(2)
	return reg
}

// result is what the client saw for one Query, copied out of pgproto3's
// reused messages.
type result struct {
	cols    []string
	rows    [][]string
	tags    []string
	notices []string
	errs    []string // "CODE message"
}

func (r result) col(row int, name string) string {
	for i, c := range r.cols {
		if c == name {
			return r.rows[row][i]
		}
	}
	return "<no column " + name + ">"
}

type client struct {
	t  *testing.T
	fe *pgproto3.Frontend
}

// until reads messages up to ReadyForQuery (or an error with FATAL).
func (c *client) until() result {
	c.t.Helper()
	var r result
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("receive: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			for _, f := range m.Fields {
				r.cols = append(r.cols, string(f.Name))
			}
		case *pgproto3.DataRow:
			row := make([]string, len(m.Values))
			for i, v := range m.Values {
				if v == nil {
					row[i] = "NULL"
				} else {
					row[i] = string(v)
				}
			}
			r.rows = append(r.rows, row)
		case *pgproto3.CommandComplete:
			r.tags = append(r.tags, string(m.CommandTag))
		case *pgproto3.NoticeResponse:
			r.notices = append(r.notices, m.Message)
		case *pgproto3.ErrorResponse:
			r.errs = append(r.errs, m.Code+" "+m.Message)
			if m.Severity == "FATAL" {
				return r
			}
		case *pgproto3.ReadyForQuery:
			return r
		}
	}
}

func (c *client) query(q string) result {
	c.t.Helper()
	c.fe.Send(&pgproto3.Query{String: q})
	if err := c.fe.Flush(); err != nil {
		c.t.Fatal(err)
	}
	return c.until()
}

// connect serves a console session for identity over a pipe.
func connect(t *testing.T, con *Console, identity string) (*client, chan error) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	done := make(chan error, 1)
	go func() { done <- con.Serve(context.Background(), identity, b, b) }()
	c := &client{t: t, fe: pgproto3.NewFrontend(a, a)}
	return c, done
}

func newTestConsole(t *testing.T) (*Console, *fakeOps) {
	ops := &fakeOps{killed: map[uint64]string{}}
	con := New(Options{Ops: ops, Killer: ops, Gatherer: registry(t), Version: "1.2.3",
		Admin:    func(id string) bool { return id == "ops" },
		Backends: map[string]Backend{"orders": {Protocol: "postgres", Address: "db.internal:5432", PoolMode: "transaction"}},
		Config:   []Setting{{"backends.orders.address", "db.internal:5432"}},
		Started:  time.Now().Add(-time.Second), WaitCloseLimit: 300 * time.Millisecond})
	return con, ops
}

func TestConsoleRefusesNonAdmins(t *testing.T) {
	con, _ := newTestConsole(t)
	c, done := connect(t, con, "api")
	r := c.until()
	if len(r.errs) != 1 || !strings.HasPrefix(r.errs[0], "42501 identity \"api\" may not use the dbproxy admin console") {
		t.Fatalf("non-admin got %+v", r)
	}
	if err := <-done; err == nil {
		t.Fatal("Serve returned nil for a refused identity")
	}
}

func TestConsoleShow(t *testing.T) {
	con, _ := newTestConsole(t)
	c, _ := connect(t, con, "ops")
	c.until() // greeting

	r := c.query("SHOW POOLS")
	wantCols := "database,user,cl_active,cl_waiting,sv_active,sv_idle,sv_used,maxwait,maxwait_us,pool_mode,protocol,role,max_connections,paused,generation,lease_end,hard_end"
	if strings.Join(r.cols, ",") != wantCols || len(r.rows) != 1 {
		t.Fatalf("SHOW POOLS: %+v", r)
	}
	for col, want := range map[string]string{"database": "orders", "user": "v-rw-3", "cl_active": "1", "cl_waiting": "1",
		"sv_active": "2", "sv_idle": "2", "maxwait": "2", "pool_mode": "transaction", "generation": "3",
		"lease_end": "2030-01-02 03:04:05 UTC"} {
		if got := r.col(0, col); got != want {
			t.Errorf("SHOW POOLS %s = %q, want %q", col, got, want)
		}
	}

	r = c.query("show clients")
	if len(r.rows) != 2 || r.col(0, "id") != "7" || r.col(0, "state") != "active" || r.col(0, "activity") != "idle in transaction" ||
		r.col(0, "addr") != "127.0.0.1" || r.col(0, "port") != "5000" || r.col(0, "user") != "v-rw-3" || r.col(0, "hard_end") != "2030-01-02 03:04:05 UTC" {
		t.Fatalf("SHOW CLIENTS row 0: %v %v", r.cols, r.rows)
	}
	if r.col(1, "state") != "waiting" || r.col(1, "user") != "rw" || r.col(1, "wait") != "2" || r.col(1, "generation") != "NULL" {
		t.Fatalf("SHOW CLIENTS row 1 (waiting): %v %v", r.cols, r.rows)
	}

	r = c.query("SHOW SERVERS")
	if len(r.rows) != 3 || r.col(0, "link") != "7" || r.col(0, "addr") != "db.internal" || r.col(1, "state") != "idle" || r.col(1, "user") != "v-rw-3" {
		t.Fatalf("SHOW SERVERS: %v %v", r.cols, r.rows)
	}

	r = c.query("SHOW STATS")
	if len(r.rows) != 1 || r.col(0, "database") != "orders" || r.col(0, "identity") != "api" || r.col(0, "total_xact_count") != "2" ||
		r.col(0, "total_query_count") != "3" || r.col(0, "total_xact_time") != "40000" || r.col(0, "avg_query_time") != "13333" ||
		r.col(0, "total_wait_time") != "1000" || r.col(0, "total_server_assignment_count") != "1" {
		t.Fatalf("SHOW STATS: %v %v", r.cols, r.rows)
	}

	r = c.query("SHOW LEASES; SHOW VERSION; SHOW CONFIG")
	if len(r.tags) != 3 || r.rows[0][0] != "orders" || r.rows[0][3] != "draining" || r.rows[1][2] != "3" {
		t.Fatalf("SHOW LEASES; VERSION; CONFIG: %+v", r)
	}
	if got := r.rows[2][0]; got != "dbproxy 1.2.3" {
		t.Fatalf("SHOW VERSION: %q", got)
	}
	if r := c.query("HELP"); len(r.rows) < 10 || r.cols[0] != "command" {
		t.Fatalf("HELP: %+v", r)
	}
}

func TestConsoleErrorsAndActions(t *testing.T) {
	con, ops := newTestConsole(t)
	c, done := connect(t, con, "ops")
	c.until()

	r := c.query("SELECT 1; SHOW POOLS")
	if len(r.errs) != 1 || !strings.HasPrefix(r.errs[0], "42601 ") || !strings.Contains(r.errs[0], commandList) || len(r.rows) != 0 {
		t.Fatalf("unknown command: %+v", r)
	}
	if r := c.query(""); len(r.errs)+len(r.tags) != 0 {
		t.Fatalf("empty query: %+v", r)
	}
	r = c.query("PAUSE orders; RESUME; RECONNECT orders; ROTATE orders")
	if strings.Join(r.tags, ",") != "PAUSE,RESUME,RECONNECT,ROTATE" || len(r.errs) != 0 {
		t.Fatalf("actions: %+v", r)
	}
	if got := strings.Join(ops.did, ","); got != "pause orders,resume orders,drain orders,rotate orders" {
		t.Fatalf("operations done: %s", got)
	}
	for q, code := range map[string]string{"PAUSE nosuch": "3D000", "ROTATE nosuch": "3D000", "KILL 8": "42704", "WAIT_CLOSE nosuch": "3D000"} {
		if r := c.query(q); len(r.errs) != 1 || !strings.HasPrefix(r.errs[0], code) {
			t.Errorf("%s: %+v, want %s", q, r, code)
		}
	}
	r = c.query("KILL 9 'runaway report'")
	if len(r.tags) != 1 || ops.killed[9] != "runaway report" || !strings.Contains(r.notices[0], "killed client 9 (mysql, identity batch") {
		t.Fatalf("KILL: %+v, reason %q", r, ops.killed[9])
	}

	// Generation 2 still has a connection: WAIT_CLOSE waits, and gives up
	// at its limit naming it.
	ops.mu.Lock()
	ops.draining = 1
	ops.mu.Unlock()
	r = c.query("WAIT_CLOSE orders")
	if len(r.errs) != 1 || !strings.HasPrefix(r.errs[0], "57014 ") || !strings.Contains(r.errs[0], "orders/rw generation 2") {
		t.Fatalf("WAIT_CLOSE with a draining connection: %+v", r)
	}
	ops.mu.Lock()
	ops.draining = 0
	ops.mu.Unlock()
	// Client 7 connected before the RECONNECT above and holds a server
	// connection: WAIT_CLOSE waits for it too.
	if r := c.query("WAIT_CLOSE"); len(r.errs) != 1 || !strings.Contains(r.errs[0], "client 7 (connected before RECONNECT") {
		t.Fatalf("WAIT_CLOSE after RECONNECT: %+v", r)
	}
	con.reconnects = reconnectLog{}
	if r := c.query("WAIT_CLOSE"); len(r.errs) != 0 || r.tags[0] != "WAIT_CLOSE" {
		t.Fatalf("WAIT_CLOSE with nothing to close: %+v", r)
	}

	// The extended protocol is refused once per Sync.
	c.fe.Send(&pgproto3.Parse{Query: "SHOW POOLS"})
	c.fe.Send(&pgproto3.Bind{})
	c.fe.Send(&pgproto3.Sync{})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if r := c.until(); len(r.errs) != 1 || !strings.HasPrefix(r.errs[0], "0A000 ") {
		t.Fatalf("extended protocol: %+v", r)
	}
	c.fe.Send(&pgproto3.Terminate{})
	_ = c.fe.Flush()
	if err := <-done; err != nil {
		t.Fatalf("Serve after Terminate: %v", err)
	}
}
