package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"
)

// reportCmd is `dbproxy report [--format text|json]`.
func reportCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("report", stderr)
	client := adminFlags(fs, stderr)
	format := fs.String("format", "text", "text or json")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *format != "text" && *format != "json" {
		fmt.Fprintf(stderr, "dbproxy report: --format %q: use text or json\n", *format)
		return exitUsage
	}
	c, ok := client()
	if !ok {
		return exitUsage
	}
	c.http.Timeout = 30 * time.Second
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/v1/report", &raw); err != nil {
		fmt.Fprintf(stderr, "dbproxy report: %v\n", err)
		return exitStartup
	}
	if *format == "json" {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	var r leaseReport
	if err := json.Unmarshal(raw, &r); err != nil {
		fmt.Fprintf(stderr, "dbproxy report: %v\n", err)
		return exitStartup
	}
	printReport(stdout, &r)
	return exitOK
}

// printReport lays the report out as a Vault dynamic secrets report.
func printReport(w io.Writer, r *leaseReport) {
	line := func(label string, v any) { fmt.Fprintf(w, "%-40s %v\n", label+":", v) }
	fmt.Fprintln(w, "HASHICORP VAULT DYNAMIC SECRETS REPORT (dbproxy)")
	fmt.Fprintln(w, strings.Repeat("=", 48))
	line("Vault Address", r.Vault.Address)
	if h := r.Vault.Health; h != nil {
		line("Vault Version", h.Version)
		status := "active"
		switch {
		case !h.Initialized:
			status = "not initialized"
		case h.Sealed:
			status = "SEALED"
		case h.Standby:
			status = "standby"
		}
		if h.ClusterName != "" {
			status += " (cluster " + h.ClusterName + ")"
		}
		line("Cluster Status", status)
	} else {
		line("Cluster Status", "UNREACHABLE: "+r.Vault.Error)
	}
	line("Report Generated", r.GeneratedAt.UTC().Format(time.RFC3339))
	line("Counting Window", windowText(r))

	fmt.Fprintln(w, "\nSECRETS ENGINES")
	for _, e := range r.Engines {
		line(e.Mount+"/", fmt.Sprintf("%s (backends %s; roles %s)", strings.Join(e.Plugins, ", "), strings.Join(e.Backends, ", "), strings.Join(e.Roles, ", ")))
	}

	fmt.Fprintf(w, "\nDYNAMIC CREDENTIAL METRICS (%s)\n", windowText(r))
	total := 0.0
	for _, c := range r.Issued {
		total += c.Count
	}
	line("Total Credentials Generated", int(total))
	for _, c := range r.Issued {
		line("  "+c.Path+" ("+c.Protocol+")", int(c.Count))
	}

	fmt.Fprintln(w, "\nACTIVE LEASES")
	total = 0
	for _, c := range r.Active {
		total += c.Count
	}
	line("Total Active", int(total))
	for _, c := range r.Active {
		line("  "+c.Path, int(c.Count))
	}

	l := r.Lifecycle
	fmt.Fprintf(w, "\nLEASE LIFECYCLE (%s)\n", windowText(r))
	line("Average TTL", (time.Duration(l.AverageTTLSeconds) * time.Second).String())
	line("Renewals", fmt.Sprintf("%d (%d capped at max TTL, %d failed)", int(l.Renewals), int(l.CappedRenewals), int(l.FailedRenewals)))
	line("Revocations", fmt.Sprintf("%d (%d failed)", int(l.Revocations), int(l.RevocationErrors)))
	line("Expired (not renewed)", int(l.ExpiredNotRenewed))
	var reasons []string
	for _, k := range sortedKeys(r.Rotations) {
		reasons = append(reasons, fmt.Sprintf("%s %d", k, int(r.Rotations[k])))
	}
	line("Rotations by reason", strings.Join(reasons, ", "))
	if len(r.ByRole) > 0 {
		fmt.Fprintf(w, "  %-38s %8s %8s %8s %8s\n", "Path (backend)", "issued", "renewed", "revoked", "expired")
		for _, b := range r.ByRole {
			fmt.Fprintf(w, "  %-38s %8d %8d %8d %8d\n", b.Path+" ("+b.Backend+")", int(b.Issued), int(b.Renewals), int(b.Revocations), int(b.ExpiredNotRenewed))
		}
	}

	s := r.Security
	fmt.Fprintln(w, "\nSECURITY")
	started := fmt.Sprintf("since dbproxy started, %s ago", r.GeneratedAt.Sub(r.Since).Round(time.Second))
	line("Refused client connections", fmt.Sprintf("%d (unknown identity, no grant, TLS required; %s)", int(s.RefusedClients), started))
	line("Vault permission denied", fmt.Sprintf("%d (%s)", int(s.VaultAuthErrors), started))
	line("Vault request errors", fmt.Sprintf("%d (%s)", int(s.VaultUnreachable), started))
	line("Leases revoked outside dbproxy", int(s.ExternalRevokes))
	line("Database refused a credential", int(s.DBRefusedLogins))
	line("Operator revokes / rotations", fmt.Sprintf("%d / %d", int(s.OperatorRevokes), int(s.ManualRotations)))
	line("Secrets in configuration", s.SecretsInConfig)
}

// windowText says what the counts cover: the last 24 hours, or less when
// dbproxy has run for less.
func windowText(r *leaseReport) string {
	from := r.WindowStart.UTC().Format("2006-01-02 15:04:05")
	if r.WindowSeconds >= 24*3600-1 {
		return "last 24 h, from " + from + " UTC"
	}
	return fmt.Sprintf("last 24 h: since dbproxy started %s ago, %s UTC", time.Duration(r.WindowSeconds*float64(time.Second)).Round(time.Second), from)
}

func sortedKeys(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
