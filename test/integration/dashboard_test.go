package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// dashboardFile is the Grafana dashboard shipped in examples/.
const dashboardFile = "../../examples/grafana/dbproxy-dashboard.json"

var (
	// Only these families are queried by the dashboard, so every name it
	// uses can be checked here.
	metricNameRE = regexp.MustCompile(`\b(?:dbproxy|process|go)_[a-z0-9_]+\b`)
	byClauseRE   = regexp.MustCompile(`\bby \(([^)]*)\)`)
)

// dashboardExprs returns every PromQL expression in the dashboard: panel
// targets, annotation and template queries.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if s, ok := c.(string); ok && (k == "expr" || k == "definition") {
					out = append(out, s)
				}
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	return out
}

// scrape returns the label names seen per metric name in /metrics.
func scrape(t *testing.T, p *proxyProc) map[string]map[string]bool {
	t.Helper()
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	seen := map[string]map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	labelRE := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		if seen[name] == nil {
			seen[name] = map[string]bool{}
		}
		for _, m := range labelRE.FindAllStringSubmatch(rest, -1) {
			seen[name][m[1]] = true
		}
	}
	return seen
}

// dashboardProblems lists the dashboard's metric names missing from the
// scrape and the `by (...)` labels none of an expression's metrics has.
func dashboardProblems(exprs []string, seen map[string]map[string]bool) []string {
	var probs []string
	for _, e := range exprs {
		names := metricNameRE.FindAllString(e, -1)
		if len(names) == 0 {
			probs = append(probs, fmt.Sprintf("expression queries no dbproxy_/process_/go_ metric, so it cannot be checked: %s", e))
		}
		labels := map[string]bool{}
		for _, n := range names {
			if seen[n] == nil {
				probs = append(probs, fmt.Sprintf("metric %s (in %s) is not in /metrics", n, e))
			}
			for l := range seen[n] {
				labels[l] = true
			}
		}
		for _, m := range byClauseRE.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(m[1], ",") {
				l = strings.TrimSpace(l)
				// instance is added by Prometheus at scrape time; le is a histogram's.
				if l != "instance" && l != "le" && !labels[l] {
					probs = append(probs, fmt.Sprintf("label %q (in %s) is on none of %v", l, e, names))
				}
			}
		}
	}
	sort.Strings(probs)
	return probs
}

// TestGrafanaDashboardMetricsExist runs dbproxy with short leases, produces
// one of everything the dashboard counts (a session, a refused client, a
// cancel request, a rotation and the revocation after it) and checks every
// metric and grouping label the dashboard queries against its /metrics.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	exprs := dashboardExprs(t)
	if len(exprs) < 20 {
		t.Fatalf("only %d expressions found in %s", len(exprs), dashboardFile)
	}
	s := startLeaseStack(t, "dashboard-app", "")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// One session: client, upstream and checkout metrics per label.
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable connect_timeout=10", s.port)
	if _, err := oneTransaction(dsn, 1); err != nil {
		t.Fatal(err)
	}
	// A refused client (3D000): dbproxy_client_errors_total.
	bad := strings.Replace(dsn, "dbname=appdb", "dbname=nosuchbackend", 1)
	if c, err := pgx.Connect(ctx, bad); err == nil {
		c.Close(ctx)
		t.Fatal("unknown backend accepted")
	}
	// A CancelRequest with a key dbproxy never issued: dbproxy_cancel_requests_total.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
	if err != nil {
		t.Fatal(err)
	}
	req := make([]byte, 16)
	binary.BigEndian.PutUint32(req[0:], 16)
	binary.BigEndian.PutUint32(req[4:], 80877102)
	binary.BigEndian.PutUint32(req[8:], 12345)
	binary.BigEndian.PutUint32(req[12:], 67890)
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = conn.Read(make([]byte, 1)) // dbproxy closes it
	conn.Close()

	// The 15 s max TTL rotates at 7.5 s; the superseded lease is revoked
	// once drained. Wait (generously) until every name has appeared.
	var probs []string
	for {
		probs = dashboardProblems(exprs, scrape(t, s.proxy))
		if len(probs) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the dashboard queries what dbproxy does not export:\n%s", strings.Join(probs, "\n"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%d dashboard expressions checked against /metrics", len(exprs))
}
