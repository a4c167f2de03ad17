package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// SessionsByBackendPID implements admin.SessionFinder: the sessions whose
// server connection of backend ("" any) has process (PostgreSQL) or
// thread (MySQL) id pid, the one holding it now first. In a transaction
// pool a connection idle in the pool is held by no session: the answer
// is then the sessions whose last transaction ran on it.
func (st *stack) SessionsByBackendPID(pid uint32, backend string) any {
	out := []frontend.SessionInfo{}
	for _, s := range append(st.postgres.Sessions(), st.mysql.Sessions()...) {
		if s.BackendPID == pid && (backend == "" || s.Backend == backend) {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].BackendPIDHeld && !out[j].BackendPIDHeld })
	return out
}

// sessionsCmd lists open sessions, or with --backend-pid the ones that
// own a pg_stat_activity or processlist row.
func sessionsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("sessions", stderr)
	client := adminFlags(fs, stderr)
	pid := fs.Uint("backend-pid", 0, "only the session holding (or last holding) the server connection with this PostgreSQL pid or MySQL thread id")
	backend := fs.String("backend", "", "only sessions of this backend")
	format := fs.String("format", "table", "table or json")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *format != "table" && *format != "json" {
		fmt.Fprintf(stderr, "dbproxy sessions: --format %q: use table or json\n", *format)
		return exitUsage
	}
	c, ok := client()
	if !ok {
		return exitUsage
	}
	path := "/v1/sessions"
	if *pid != 0 {
		path += "?backend_pid=" + strconv.FormatUint(uint64(*pid), 10)
	}
	var ss []frontend.SessionInfo
	if err := c.do(ctx, http.MethodGet, path, &ss); err != nil {
		fmt.Fprintf(stderr, "dbproxy sessions: %v\n", err)
		return exitStartup
	}
	kept := ss[:0]
	for _, s := range ss {
		if *backend == "" || s.Backend == *backend {
			kept = append(kept, s)
		}
	}
	ss = kept
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(ss); err != nil {
			return exitStartup
		}
	} else if err := writeSessions(stdout, ss); err != nil {
		return exitStartup
	}
	if *pid != 0 && len(ss) == 0 {
		fmt.Fprintf(stderr, "dbproxy sessions: no open session holds or last held server process %d (an idle pooled connection no open session has used, or not a dbproxy connection)\n", *pid)
		return exitStartup
	}
	return exitOK
}

func writeSessions(w io.Writer, ss []frontend.SessionInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTOCOL\tBACKEND\tIDENTITY\tMETHOD\tLISTENER\tDB USER\tBACKEND PID\tSTATE\tTXNS\tSINCE\tREMOTE")
	for _, s := range ss {
		pid := "-"
		if s.BackendPID != 0 {
			pid = strconv.FormatUint(uint64(s.BackendPID), 10)
			if !s.BackendPIDHeld {
				pid += " (last)"
			}
		}
		user := s.DBUser
		if user == "" {
			user = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Protocol, s.Backend, s.Identity, s.Method, s.Listener,
			user, pid, s.State, s.Transactions, s.Since.UTC().Format(time.RFC3339), s.Remote)
	}
	return tw.Flush()
}

// reloadCmd asks a running dbproxy to reload its configuration file.
func reloadCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("reload", stderr)
	client := adminFlags(fs, stderr)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	c, ok := client()
	if !ok {
		return exitUsage
	}
	var res reloadResult
	if err := c.do(ctx, http.MethodPost, "/v1/reload", &res); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Code == http.StatusUnprocessableEntity {
			fmt.Fprintf(stderr, "dbproxy reload: %s:\n", ae.Msg)
			for _, p := range ae.Problems {
				fmt.Fprintln(stderr, p)
			}
			return exitUsage
		}
		fmt.Fprintf(stderr, "dbproxy reload: %v\n", err)
		return exitStartup
	}
	fmt.Fprintln(stdout, "reloaded")
	for _, x := range []struct {
		what string
		c    changes
	}{{"backends", res.Backends}, {"listeners", res.Listeners}, {"identities", res.Identities}} {
		fmt.Fprintf(stdout, "  %-10s added: %s  changed: %s  removed: %s\n", x.what, list(x.c.Added), list(x.c.Changed), list(x.c.Removed))
	}
	fmt.Fprintf(stdout, "  sessions closed: %d\n", res.SessionsClosed)
	return exitOK
}

func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}
