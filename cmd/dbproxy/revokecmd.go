package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"text/tabwriter"
	"time"
)

// revokeCmd is `dbproxy revoke BACKEND [--role R | --prefix P] [--dry-run] [--json]`.
// Flags may come before or after BACKEND, as a runbook line reads best.
func revokeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("revoke", stderr)
	client := adminFlags(fs, stderr)
	role := fs.String("role", "", "only this Vault role's credential (default: every role of the backend)")
	prefix := fs.String("prefix", "", "revoke every lease under this Vault lease prefix (MOUNT/creds/ROLE or a lease id under it), others' too")
	dry := fs.Bool("dry-run", false, "show what would be cut and done; change nothing")
	asJSON := fs.Bool("json", false, "print the API's JSON answer")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: dbproxy revoke BACKEND [--role R | --prefix MOUNT/creds/ROLE[/LEASE]] [--dry-run] [--json] [admin flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() < 1 {
		fs.Usage()
		return exitUsage
	}
	backend := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil || fs.NArg() != 0 {
		fs.Usage()
		return exitUsage
	}
	if *role != "" && *prefix != "" {
		fmt.Fprintln(stderr, "dbproxy revoke: give --role or --prefix, not both")
		return exitUsage
	}
	c, ok := client()
	if !ok {
		return exitUsage
	}
	c.http.Timeout = 45 * time.Second // the server waits up to 30s for Vault
	q := url.Values{}
	if *role != "" {
		q.Set("role", *role)
	}
	if *prefix != "" {
		q.Set("prefix", *prefix)
	}
	if *dry {
		q.Set("dry_run", "1")
	}
	path := "/v1/backends/" + url.PathEscape(backend) + "/revoke"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodPost, path, &raw); err != nil {
		fmt.Fprintf(stderr, "dbproxy revoke: %v\n", err)
		return exitStartup
	}
	if *asJSON {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	var p revokePlan
	if err := json.Unmarshal(raw, &p); err != nil {
		fmt.Fprintf(stderr, "dbproxy revoke: %v\n", err)
		return exitStartup
	}
	printRevoke(stdout, &p)
	return exitOK
}

func printRevoke(out io.Writer, p *revokePlan) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	scope := p.Backend
	if p.Role != "" {
		scope += " (role " + p.Role + ")"
	}
	if p.Prefix != "" {
		scope += " under the Vault lease prefix " + p.Prefix
	}
	if p.DryRun {
		fmt.Fprintf(w, "DRY RUN: revoking the credentials of %s would do this; nothing was changed.\n", scope)
	} else {
		fmt.Fprintf(w, "Revoked the credentials of %s.\n", scope)
	}
	fmt.Fprintln(w, "\nLEASE\tROLE\tGEN\tSTATE\tDB USER\tCONNECTIONS")
	for _, l := range p.Leases {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%d\n", l.Backend, l.Role, l.Generation, l.State, l.Username, l.Connections)
	}
	if p.Prefix != "" {
		printPrefixLeases(w, p)
	}
	type group struct{ sessions, inFlight int }
	groups := map[string]*group{}
	for _, s := range p.Sessions {
		k := s.Identity + "\t" + s.Protocol + "\t" + s.Role
		if groups[k] == nil {
			groups[k] = &group{}
		}
		groups[k].sessions++
		if s.InFlight {
			groups[k].inFlight++
		}
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w, "\nIDENTITY\tPROTOCOL\tROLE\tSESSIONS CUT\tIN FLIGHT")
	for _, k := range keys {
		fmt.Fprintf(w, "%s\t%d\t%d\n", k, groups[k].sessions, groups[k].inFlight)
	}
	fmt.Fprintf(w, "(not cut: %d session(s) holding no server connection)\n", p.Unaffected)
	if p.DryRun {
		fmt.Fprintln(w, "\nWhat dbproxy would do:")
	} else {
		fmt.Fprintln(w, "\nWhat dbproxy did:")
	}
	for i, a := range p.Actions {
		fmt.Fprintf(w, "  %d. %s\n", i+1, a)
	}
	if len(p.Results) > 0 {
		fmt.Fprintln(w, "\nRESULT\tROLE\tNEW GEN\tNEW DB USER\tREVOKED GEN\tREVOKED DB USER\tCONNECTIONS CLOSED\tVAULT")
		for _, r := range p.Results {
			for _, l := range r.Revoked {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d\t%s\t%d\t%s\n", r.Backend, r.Role, r.NewGeneration, r.NewUsername, l.Generation, l.Username, l.Connections, l.Result)
			}
			if len(r.Revoked) == 0 {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t-\t-\t0\t-\n", r.Backend, r.Role, r.NewGeneration, r.NewUsername)
			}
		}
	}
	_ = w.Flush()
}

// printPrefixLeases lists the Vault leases under the prefix and whose
// they are, and after a revoke what became of the others'.
func printPrefixLeases(w io.Writer, p *revokePlan) {
	fmt.Fprintf(w, "\nVAULT LEASES UNDER %s: %d\nLEASE ID\tHELD BY\n", p.Prefix, len(p.VaultLeases))
	for _, l := range p.VaultLeases {
		who := "not dbproxy (another instance or application)"
		if l.Generation != 0 {
			who = fmt.Sprintf("dbproxy generation %d (%s)", l.Generation, l.Username)
		}
		fmt.Fprintf(w, "%s\t%s\n", l.LeaseID, who)
	}
	if !p.DryRun {
		fmt.Fprintln(w, "\nOTHER LEASE REVOKED\tVAULT")
		for _, o := range p.Others {
			fmt.Fprintf(w, "%s\t%s\n", o.LeaseID, o.Result)
		}
	}
}
