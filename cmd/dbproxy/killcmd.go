package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// killCmd ends one client session (an id from GET /v1/sessions or the
// console's SHOW CLIENTS); its client is told the reason.
func killCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("kill", stderr)
	client := adminFlags(fs, stderr)
	reason := fs.String("reason", "", "what the session's client is told (at most 200 bytes)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: dbproxy kill [flags] SESSION_ID [--reason TEXT]")
		fs.PrintDefaults()
	}
	// Flags may come before or after the ID.
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	id, err := strconv.ParseUint(pos[0], 10, 64)
	if err != nil || id == 0 {
		fmt.Fprintf(stderr, "dbproxy kill: session id %q is not a number; the ids are in GET /v1/sessions and the console's SHOW CLIENTS\n", pos[0])
		return exitUsage
	}
	c, ok := client()
	if !ok {
		return exitUsage
	}
	path := "/v1/sessions/" + strconv.FormatUint(id, 10) + "/kill"
	if *reason != "" {
		path += "?reason=" + url.QueryEscape(*reason)
	}
	var res struct {
		Session struct {
			Protocol string `json:"protocol"`
			Identity string `json:"identity"`
			Backend  string `json:"backend"`
			Remote   string `json:"remote"`
		} `json:"session"`
	}
	if err := c.do(ctx, http.MethodPost, path, &res); err != nil {
		fmt.Fprintf(stderr, "dbproxy kill: %v\n", err)
		return exitStartup
	}
	s := res.Session
	fmt.Fprintf(stdout, "killed session %d (%s, identity %s, backend %s, from %s)\n", id, s.Protocol, s.Identity, s.Backend, s.Remote)
	return exitOK
}
