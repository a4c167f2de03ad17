package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/dbproxy/dbproxy/config"
)

// checkCmd validates a configuration file: "ok" on stdout and status 0,
// or every problem on stderr, one per line as FILE:LINE:COL: msg, and
// status 2.
func checkCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	path := fs.String("config", "", "configuration file to validate (required)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "dbproxy check: --config FILE is required")
		fs.Usage()
		return exitUsage
	}
	if _, ok := loadConfig(*path, stderr); !ok {
		return exitUsage
	}
	fmt.Fprintln(stdout, "ok")
	return exitOK
}

// loadConfig loads and validates path, printing every problem to stderr.
func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path)
	if err == nil {
		return cfg, true
	}
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintln(stderr, p)
		}
	} else {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
	}
	return nil, false
}
