package mysql

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	drv "github.com/go-sql-driver/mysql"
	"go.uber.org/zap/zaptest"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

var pipeNets atomic.Int64

// testProxy is a Server in front of a fakeServer; clients reach it with
// go-sql-driver over net.Pipe.
type testProxy struct {
	srv  *Server
	fake *fakeServer
	pool *pool.Pool
	net  string // go-sql-driver network name that dials the proxy
}

func newTestProxy(t *testing.T, f *fakeServer, upstreamTLS *tls.Config) *testProxy {
	t.Helper()
	addr := f.start(t)
	gen := &creds.Generation{N: 1, Username: "v-test"}
	pl := pool.New(fakeCreds{gen}, pool.Options{Backend: "appdb", Role: "r", MaxConnections: 4, Metrics: pool.NewMetrics(nil)})
	t.Cleanup(pl.Close)
	policy, err := identity.NewPolicy(map[string]identity.Spec{"app": {Grants: []identity.Grant{{Backend: "appdb", Role: "r"}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Options{
		Backends:   map[string]*Backend{"appdb": {Name: "appdb", Addr: addr, Database: "appdb", TLS: upstreamTLS, ConnectTimeout: 5 * time.Second}},
		Pool:       func(string, string) *pool.Pool { return pl },
		Authorizer: policy,
		Log:        zaptest.NewLogger(t),
	})
	p := &testProxy{srv: srv, fake: f, pool: pl, net: "dbproxy-pipe-" + string(rune('a'+pipeNets.Add(1)))}
	drv.RegisterDialContext(p.net, func(context.Context, string) (net.Conn, error) {
		c, sc := net.Pipe()
		srv.front.Go(func() { srv.handle(sc, appListener(nil, false)) })
		return c, nil
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = srv.Shutdown(ctx)
	})
	return p
}

func (p *testProxy) open(t *testing.T, params string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", "app@"+p.net+"(proxy)/appdb?"+params)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestProxyQueryAndUpstreamLogin(t *testing.T) {
	p := newTestProxy(t, &fakeServer{}, nil)
	db := p.open(t, "connectionAttributes=program_name:unit")
	var v string
	if err := db.QueryRow("select 42").Scan(&v); err != nil || v != "42" {
		t.Fatalf("select: %q, %v", v, err)
	}
	logins, _ := p.fake.seen()
	if len(logins) != 1 {
		t.Fatalf("%d upstream logins", len(logins))
	}
	r := logins[0].resp
	if r.user != "v-test" || r.db != "appdb" || r.attrs["program_name"] != "dbproxy:app:unit" {
		t.Fatalf("upstream login %+v", r)
	}
	// Both legs speak the same protocol: what go-sql-driver negotiated
	// with the proxy (DEPRECATE_EOF, MULTI_RESULTS) goes upstream; what
	// the relay does not carry does not.
	for _, c := range []uint32{gomysql.CLIENT_DEPRECATE_EOF, gomysql.CLIENT_MULTI_RESULTS, gomysql.CLIENT_PROTOCOL_41} {
		if r.caps&c == 0 {
			t.Errorf("upstream login lacks %s", capNames(c))
		}
	}
	for _, c := range []uint32{gomysql.CLIENT_LOCAL_FILES, gomysql.CLIENT_QUERY_ATTRIBUTES, gomysql.CLIENT_COMPRESS, gomysql.CLIENT_SSL, gomysql.CLIENT_MULTI_STATEMENTS} {
		if r.caps&c != 0 {
			t.Errorf("upstream login has %s", capNames(c))
		}
	}
	if sess := p.srv.Sessions(); len(sess) != 1 || sess[0].Protocol != "mysql" || sess[0].Identity != "app" || sess[0].DBUser != "v-test" {
		t.Fatalf("sessions %+v", sess)
	}
}

func TestProxyReturnsResetConnectionToThePool(t *testing.T) {
	p := newTestProxy(t, &fakeServer{}, nil)
	for i := range 3 {
		db := p.open(t, "")
		var v string
		if err := db.QueryRow("select 1").Scan(&v); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		db.Close() // COM_QUIT at a transaction boundary
		waitFor(t, func() bool { return p.pool.Stats().Idle == 1 })
	}
	logins, cmds := p.fake.seen()
	if len(logins) != 1 {
		t.Fatalf("%d upstream logins for 3 sessions; want the connection reused", len(logins))
	}
	all := strings.Join(cmds, "\n")
	if strings.Count(all, "1f ") != 3 || strings.Count(all, "02 appdb") != 3 || strings.Count(all, "03 SET NAMES utf8mb4 COLLATE utf8mb4_general_ci") != 3 {
		t.Fatalf("want COM_RESET_CONNECTION, COM_INIT_DB and SET NAMES after each session, got:\n%s", all)
	}
}

func TestProxyClosesUpstreamLeftInATransaction(t *testing.T) {
	p := newTestProxy(t, &fakeServer{}, nil)
	db := p.open(t, "")
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(context.Background(), "begin"); err != nil {
		t.Fatal(err)
	}
	if s := p.srv.Sessions(); len(s) != 1 || s[0].State != "idle in transaction" {
		t.Fatalf("sessions %+v", s)
	}
	c.Close()
	db.Close()
	waitFor(t, func() bool { return p.pool.Stats().Open == 0 })
}

func TestProxyUpstreamTLS(t *testing.T) {
	p := newTestProxy(t, &fakeServer{TLS: testServerTLS(t), AuthSwitch: gomysql.AUTH_CLEAR_PASSWORD}, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test server
	var v string
	if err := p.open(t, "").QueryRow("select 7").Scan(&v); err != nil || v != "7" {
		t.Fatalf("select over upstream TLS: %q %v", v, err)
	}
	logins, _ := p.fake.seen()
	if len(logins) != 1 || !logins[0].tls || string(logins[0].switchReply) != "\x00" {
		t.Fatalf("upstream login %+v", logins[0])
	}
}

func TestProxyRefusesClearTextWithoutTLS(t *testing.T) {
	p := newTestProxy(t, &fakeServer{AuthSwitch: gomysql.AUTH_CLEAR_PASSWORD}, nil)
	err := p.open(t, "").Ping()
	var me *drv.MySQLError
	if !errors.As(err, &me) || me.Number != erUnknownError || !strings.Contains(me.Message, "clear text") {
		t.Fatalf("want the login refused for clear text, got %v", err)
	}
	if logins, _ := p.fake.seen(); len(logins) != 0 {
		t.Fatalf("the password went to the server: %+v", logins)
	}
}

func TestProxyRefusesServerWithoutNegotiatedCapabilities(t *testing.T) {
	p := newTestProxy(t, &fakeServer{Caps: proxyCaps &^ gomysql.CLIENT_DEPRECATE_EOF}, nil)
	err := p.open(t, "").Ping()
	if err == nil || !strings.Contains(err.Error(), "CLIENT_DEPRECATE_EOF") {
		t.Fatalf("want a refusal naming CLIENT_DEPRECATE_EOF, got %v", err)
	}
}

func TestProxyUpstreamAccessDenied(t *testing.T) {
	p := newTestProxy(t, &fakeServer{DenyLogin: true}, nil)
	err := p.open(t, "").Ping()
	var me *drv.MySQLError
	if !errors.As(err, &me) || me.Number != erUnknownError || !strings.Contains(me.Message, "refused dbproxy's connection") {
		t.Fatalf("want 1105 naming the refusal, got %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
	}
}

func TestNoDatabaseUsesTheOnlyGrantedBackend(t *testing.T) {
	p := newTestProxy(t, &fakeServer{}, nil)
	db, err := sql.Open("mysql", "app@"+p.net+"(proxy)/")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v string
	if err := db.QueryRow("select 42").Scan(&v); err != nil || v != "42" {
		t.Fatalf("select without a database: %q, %v", v, err)
	}
	if logins, _ := p.fake.seen(); len(logins) != 1 || logins[0].resp.db != "appdb" {
		t.Fatalf("upstream logins %+v, want one to appdb", logins)
	}
}

func TestOnlyBackendNeedsExactlyOneMySQLGrant(t *testing.T) {
	policy, err := identity.NewPolicy(map[string]identity.Spec{
		"one":  {Grants: []identity.Grant{{Backend: "a", Role: "r"}, {Backend: "a", Role: "w"}, {Backend: "pg", Role: "r"}}},
		"two":  {Grants: []identity.Grant{{Backend: "a", Role: "r"}, {Backend: "b", Role: "r"}}},
		"none": {Grants: []identity.Grant{{Backend: "pg", Role: "r"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Options{Authorizer: policy, Backends: map[string]*Backend{"a": {Name: "a"}, "b": {Name: "b"}}})
	for id, want := range map[string]string{"one": "a", "two": "", "none": "", "stranger": ""} {
		if got := srv.onlyBackend(srv.routes.Load(), identity.Identity{Name: id}); got != want {
			t.Errorf("onlyBackend(%s) = %q, want %q", id, got, want)
		}
	}
}
