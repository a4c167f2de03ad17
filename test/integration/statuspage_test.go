package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromium runs headless Chromium with args and returns its stdout. A
// missing Chromium fails the test: make deps installs it, so a skip here
// would hide a broken install.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (%v): run make deps (Debian package chromium)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	argv := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--user-data-dir=" + t.TempDir()}, args...)
	cmd := exec.CommandContext(ctx, bin, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// TestStatusPageInChromium opens the status page in a real browser after
// an operator rotation: the DOM has the pool, both generations, the
// session and the rotation event with its reason; a screenshot is kept
// in the run's work dir.
func TestStatusPageInChromium(t *testing.T) {
	s := startLeaseStackTTL(t, "pg-statuspage", "", time.Minute, 10*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn := connect(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable connect_timeout=10", s.port))
	if _, err := conn.Exec(ctx, "begin"); err != nil { // holds generation 1 while it drains
		t.Fatal(err)
	}
	if out, err := dbproxyCLI(t, s.proxy, "rotate", "appdb"); err != nil {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	waitGeneration(t, s.proxy, 2)

	dom := chromium(t, "--dump-dom", s.proxy.admin+"/")
	text := regexp.MustCompile(`<[^>]*>`).ReplaceAllString(dom, " ")
	flat := strings.Join(strings.Fields(text), " ")
	for _, want := range []string{
		"Pools", "appdb " + s.role, // the pool row
		"gen 1", "gen 2", "draining", "active", // both generations on the timeline
		"Sessions (1)", "app appdb postgres " + s.role + " 1 idle in transaction 1",
		"Rotations and revocations", "issued operator rotate (manual) ok", "issued first credential (initial) ok",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("the page in Chromium lacks %q:\n%s", want, flat)
		}
	}

	shot := filepath.Join(WorkDir, "status-page.png")
	chromium(t, "--screenshot="+shot, "--window-size=1280,900", s.proxy.admin+"/")
	b, err := os.ReadFile(shot)
	if err != nil || len(b) < 1000 || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s: %d bytes, %v", shot, len(b), err)
	}
	t.Logf("status page screenshot: %s (%d bytes; kept with DBPROXY_KEEP=1 or on failure)", shot, len(b))
	_ = conn.Close(ctx)
}

// TestReportLast24Hours: after two operator rotations the report counts
// three credentials issued, the two superseded leases revoked, by reason,
// from the event log, and says its window; GET /v1/events lists them.
func TestReportLast24Hours(t *testing.T) {
	s := startLeaseStackTTL(t, "pg-report24", "", time.Minute, 10*time.Minute)
	for gen := uint64(2); gen <= 3; gen++ {
		if out, err := dbproxyCLI(t, s.proxy, "rotate", "appdb"); err != nil {
			t.Fatalf("rotate: %v\n%s", err, out)
		}
		waitGeneration(t, s.proxy, gen)
	}
	// Generations 1 and 2 hold no connection: revoked at once.
	deadline := time.Now().Add(15 * time.Second)
	for len(s.proxy.leases(t)) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("superseded generations not revoked: %+v", s.proxy.leases(t))
		}
		time.Sleep(100 * time.Millisecond)
	}

	out, err := dbproxyCLI(t, s.proxy, "report", "--format", "json")
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	var r struct {
		WindowStart   time.Time          `json:"window_start"`
		WindowSeconds float64            `json:"window_seconds"`
		Rotations     map[string]float64 `json:"rotations_by_reason"`
		ByRole        []struct {
			Path                                   string
			Issued, Renewals, Revocations, Expired float64
		} `json:"lifecycle_by_role"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	path := Mount + "/creds/" + s.role
	if len(r.ByRole) != 1 || r.ByRole[0].Path != path || r.ByRole[0].Issued != 3 || r.ByRole[0].Revocations != 2 {
		t.Errorf("lifecycle by role %+v, want %s: 3 issued, 2 revoked", r.ByRole, path)
	}
	if r.Rotations["initial"] != 1 || r.Rotations["manual"] != 2 {
		t.Errorf("rotations by reason %v, want initial 1, manual 2", r.Rotations)
	}
	if r.WindowSeconds <= 0 || r.WindowSeconds > 24*3600 || time.Since(r.WindowStart) > time.Hour {
		t.Errorf("window %v from %v: want since this dbproxy started", r.WindowSeconds, r.WindowStart)
	}

	out, err = dbproxyCLI(t, s.proxy, "report")
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	t.Logf("dbproxy report:\n%s", out)
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"Counting Window: last 24 h: since dbproxy started", "DYNAMIC CREDENTIAL METRICS (last 24 h",
		path + " (postgres): 3", "Revocations: 2 (0 failed)", "initial 1, manual 2", path + " (appdb) 3"} {
		if !strings.Contains(flat, want) {
			t.Errorf("report lacks %q", want)
		}
	}

	resp, err := http.Get(s.proxy.admin + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ev []struct {
		Kind, Reason, Result string
		Generation           uint64
	}
	if err := json.NewDecoder(resp.Body).Decode(&ev); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ev {
		got = append(got, fmt.Sprintf("%s %d %s %s", e.Kind, e.Generation, e.Reason, e.Result))
	}
	// Newest first; a revoke and the next issue may be in either order.
	want := map[string]bool{"issued 1 initial ok": true, "issued 2 manual ok": true, "issued 3 manual ok": true,
		"revoked 1 manual ok": true, "revoked 2 manual ok": true}
	if len(got) != len(want) || got[len(got)-1] != "issued 1 initial ok" {
		t.Errorf("events %q", got)
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("unexpected event %q (all: %q)", g, got)
		}
	}
}
