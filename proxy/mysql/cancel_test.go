package mysql

import (
	"bufio"
	"fmt"
	"net"
	"testing"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/frontend"
	"github.com/dbproxy/dbproxy/proxy/pool"
	"github.com/dbproxy/dbproxy/proxy/postgres"
)

// killSession is a registered session of identity id whose upstream has
// thread id tid; its client output goes to out.
func killSession(t *testing.T, srv *Server, b *Backend, id string, tid uint32) (*session, *bufio.Reader) {
	t.Helper()
	c, sc := net.Pipe()
	t.Cleanup(func() { c.Close(); sc.Close() })
	s := &session{srv: srv, log: zap.NewNop(), raw: sc, client: sc, cbw: bufio.NewWriter(sc),
		connID: srv.issueID(), id: identity.Identity{Name: id}, backend: b, track: newTracker(false),
		lease: &pool.Lease{Conn: &upstream{threadID: tid}, Gen: &creds.Generation{N: 1}}}
	srv.front.Track(s)
	t.Cleanup(func() { srv.front.Untrack(s) })
	return s, bufio.NewReader(c)
}

func TestKillMapping(t *testing.T) {
	srv := NewServer(Options{Log: zap.NewNop()})
	b := &Backend{Name: "appdb"}
	other := &Backend{Name: "otherdb"}
	killer, out := killSession(t, srv, b, "app", 5)
	victim, _ := killSession(t, srv, b, "app", 6)
	stranger, _ := killSession(t, srv, b, "reporting", 7)
	elsewhere, _ := killSession(t, srv, other, "app", 8)

	answers := make(chan []byte, 16)
	go func() {
		for {
			_, p, err := readPacket(out, 1<<16)
			if err != nil {
				return
			}
			answers <- p
		}
	}()
	ask := func(cmd byte, body []byte) (bool, []byte) {
		t.Helper()
		handled, err := killer.intercept(cmd, append([]byte{cmd}, body...))
		if err != nil {
			t.Fatal(err)
		}
		if !handled {
			return false, nil
		}
		return true, <-answers
	}
	query := func(q string) (bool, []byte) { return ask(gomysql.COM_QUERY, []byte(q)) }

	// Another identity's session, by proxy id or thread id: refused.
	for _, q := range []string{fmt.Sprintf("KILL QUERY %d", stranger.connID), "kill query 7", " KILL  7 ;"} {
		handled, p := query(q)
		if !handled || errCode(p) != erKillDenied {
			t.Fatalf("%q: handled %v, answer %q", q, handled, p)
		}
	}
	// Thread ids are looked up on the killer's backend only: thread 8 of
	// another server is not ours to map.
	if handled, _ := query("KILL 8"); handled {
		t.Fatal("thread id of another backend mapped")
	}
	// Not a session of this proxy: the server decides.
	if handled, _ := query("KILL QUERY 12345"); handled {
		t.Fatal("unknown id intercepted")
	}
	// Not a plain KILL of an id.
	for _, q := range []string{"KILL USER 'x'", "select 'KILL 6'", "KILL QUERY ID 6"} {
		if handled, _ := query(q); handled {
			t.Fatalf("%q intercepted", q)
		}
	}
	// KILL CONNECTION (and COM_PROCESS_KILL) of the same identity: the
	// session is closed and the killer gets OK.
	handled, p := query(fmt.Sprintf("kill connection %d", victim.connID))
	if !handled || len(p) == 0 || p[0] != 0 {
		t.Fatalf("KILL CONNECTION: handled %v, answer %q", handled, p)
	}
	if r := killReason(victim.reason.Load()); r != killByClient {
		t.Fatalf("victim killed with %v", r)
	}
	handled, p = ask(gomysql.COM_PROCESS_KILL, []byte{8, 0, 0, 0})
	if handled {
		t.Fatalf("COM_PROCESS_KILL of thread 8 on another backend: %q", p)
	}
	if handled, p = ask(gomysql.COM_PROCESS_KILL, []byte{byte(elsewhere.connID), byte(elsewhere.connID >> 8), byte(elsewhere.connID >> 16), byte(elsewhere.connID >> 24)}); !handled || p[0] != 0 {
		t.Fatalf("COM_PROCESS_KILL by proxy id: %v %q", handled, p)
	}
	// Nothing is intercepted while an answer is in flight.
	killer.track.expect(respSimple)
	if handled, _ := query(fmt.Sprintf("KILL %d", victim.connID)); handled {
		t.Fatal("KILL intercepted with an answer pending")
	}
}

func TestMetricsShareARegistryWithPostgres(t *testing.T) {
	reg := prometheus.NewRegistry()
	// One shared set, the PostgreSQL relay's own beside it: MustRegister
	// would panic on a conflict.
	shared := frontend.NewMetrics(reg)
	postgres.NewMetrics(reg, shared)
	m := NewMetrics(shared)
	m.Sessions.WithLabelValues("b", "i", "ok").Inc()
	m.errors.WithLabelValues("28").Inc()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		if f.GetName() == "dbproxy_client_sessions_total" {
			for _, mm := range f.GetMetric() {
				for _, l := range mm.GetLabel() {
					if l.GetName() == "protocol" && l.GetValue() == "mysql" {
						found = true
					}
				}
			}
		}
	}
	if !found {
		t.Fatalf("no dbproxy_client_sessions_total{protocol=\"mysql\"} in %d families", len(families))
	}
}
