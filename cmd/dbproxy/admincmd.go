package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// The operator commands talk to a running dbproxy's admin API, so an
// incident runbook needs no curl and no JSON reading.

const defaultAdmin = "127.0.0.1:9187"

// adminClient calls one dbproxy's /v1 API.
type adminClient struct {
	base  string // http://host:port
	token string
	http  *http.Client
}

// adminFlags registers the flags that locate the admin API and returns a
// function that builds the client once they are parsed.
func adminFlags(fs *flag.FlagSet, stderr io.Writer) func() (*adminClient, bool) {
	addr := fs.String("admin", "", "admin address host:port (default: admin.address from --config, else "+defaultAdmin+")")
	cfgPath := fs.String("config", "", "dbproxy configuration to take admin.address and admin.token_file from")
	tokenFile := fs.String("token-file", "", "file holding the admin bearer token (default: admin.token_file from --config)")
	return func() (*adminClient, bool) {
		a, tf := *addr, *tokenFile
		if *cfgPath != "" {
			cfg, ok := loadConfig(*cfgPath, stderr)
			if !ok {
				return nil, false
			}
			if a == "" {
				a = cfg.Admin.Address
			}
			if tf == "" {
				tf = cfg.Admin.TokenFile
			}
		}
		if a == "" {
			a = defaultAdmin
		}
		c := &adminClient{base: "http://" + a, http: &http.Client{Timeout: 10 * time.Second}}
		if tf != "" {
			b, err := os.ReadFile(tf)
			if err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
				return nil, false
			}
			c.token = strings.TrimSpace(string(b))
		}
		return c, true
	}
}

// do sends a request and decodes a JSON answer into out (if not nil).
func (c *adminClient) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("is dbproxy running with its admin API on %s? %w", strings.TrimPrefix(c.base, "http://"), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{Method: method, Path: path, Status: resp.Status, Code: resp.StatusCode,
			RetryAfter: resp.Header.Get("Retry-After")}
		var j struct {
			Error    string   `json:"error"`
			Problems []string `json:"problems"`
		}
		if json.Unmarshal(body, &j) == nil {
			e.Msg, e.Problems = j.Error, j.Problems
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

// apiError is an answer other than 2xx from the admin API.
type apiError struct {
	Method, Path, Status string
	Code                 int
	Msg                  string   // the API's "error", if any
	Problems             []string // the API's "problems" (a refused reload)
	RetryAfter           string   // the Retry-After header, seconds
}

func (e *apiError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("%s %s: %s", e.Method, e.Path, e.Status)
	}
	return fmt.Sprintf("%s %s: %s: %s", e.Method, e.Path, e.Status, e.Msg)
}

// actionCmd runs rotate, pause, resume or drain on one backend.
func actionCmd(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(verb, stderr)
	client := adminFlags(fs, stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: dbproxy %s [flags] BACKEND\n", verb)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	c, ok := client()
	if !ok {
		return exitUsage
	}
	var res map[string]string
	if err := c.do(ctx, http.MethodPost, "/v1/backends/"+fs.Arg(0)+"/"+verb, &res); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Code == http.StatusTooManyRequests {
			// The issuance cap: say plainly that nothing happened and when
			// to try again.
			fmt.Fprintf(stderr, "dbproxy %s: %s was not rotated: %s\nTry again in %ss.\n", verb, fs.Arg(0), ae.Msg, ae.RetryAfter)
			return exitStartup
		}
		fmt.Fprintf(stderr, "dbproxy %s: %v\n", verb, err)
		return exitStartup
	}
	fmt.Fprintf(stdout, "%s: %s\n", res["backend"], res["status"])
	return exitOK
}

// statusCmd prints pools, credential generations and session counts.
func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", stderr)
	client := adminFlags(fs, stderr)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	c, ok := client()
	if !ok {
		return exitUsage
	}
	var (
		pools    []pool.Stats
		leases   []creds.Info
		sessions []struct{ Protocol, Backend, Identity, State string }
	)
	for path, out := range map[string]any{"/v1/pools": &pools, "/v1/leases": &leases, "/v1/sessions": &sessions} {
		if err := c.do(ctx, http.MethodGet, path, out); err != nil {
			fmt.Fprintf(stderr, "dbproxy status: %v\n", err)
			return exitStartup
		}
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "POOL\tROLE\tOPEN\tIDLE\tMAX\tPAUSED")
	sort.Slice(pools, func(i, j int) bool { return pools[i].Backend+pools[i].Role < pools[j].Backend+pools[j].Role })
	for _, p := range pools {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%v\n", p.Backend, p.Role, p.Open, p.Idle, p.Max, p.Paused)
	}
	fmt.Fprintln(w, "\nCREDENTIAL\tROLE\tGEN\tSTATE\tDB USER\tLEASE END\tHARD END\tCONNECTIONS")
	for _, l := range leases {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\n", l.Backend, l.Role, l.Generation, l.State, l.Username,
			until(l.LeaseEnd), until(l.HardEnd), l.Connections)
	}
	writeFleet(w, leases)
	counts := map[string]int{}
	for _, s := range sessions {
		counts[s.Protocol+"\t"+s.Backend+"\t"+s.Identity+"\t"+s.State]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w, "\nSESSIONS\tBACKEND\tIDENTITY\tSTATE\tCOUNT")
	for _, k := range keys {
		fmt.Fprintf(w, "%s\t%d\n", k, counts[k])
	}
	if err := w.Flush(); err != nil {
		return exitStartup
	}
	return exitOK
}

// writeFleet adds a table of the fleet's view of each generation, when
// fleet mode is on.
func writeFleet(w io.Writer, leases []creds.Info) {
	header := false
	for _, l := range leases {
		f := l.Fleet
		if f == nil {
			continue
		}
		if !header {
			fmt.Fprintln(w, "\nFLEET\tCREDENTIAL\tGEN\tTHIS INSTANCE\tISSUER\tLIVE\tDRAINED BY\tLAG")
			header = true
		}
		live, drained := 0, make([]string, 0, len(f.DrainedBy))
		for _, m := range f.Members {
			if m.Live {
				live++
			}
		}
		for id := range f.DrainedBy {
			drained = append(drained, id)
		}
		sort.Strings(drained)
		d := strings.Join(drained, ",")
		if d == "" {
			d = "-"
		}
		fmt.Fprintf(w, "%s\t%s/%s\t%d\t%s\t%s\t%d/%d\t%s\t%.1fs\n", f.Name, l.Backend, l.Role, l.Generation, f.Instance,
			f.Issuer, live, len(f.Members), d, f.LagSeconds)
	}
}

// until says how far off t is, or "-" when unknown.
func until(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("in %s", time.Until(t).Round(time.Second))
}
