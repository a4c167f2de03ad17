package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Exit statuses.
const (
	exitOK      = 0
	exitStartup = 1   // could not start (listen error, Vault login, ...)
	exitUsage   = 2   // bad command line or invalid configuration
	exitSignal  = 130 // a second SIGINT/SIGTERM during shutdown
)

const usageText = `Usage: dbproxy [global flags] COMMAND [flags]

Commands:
  run --config FILE     serve the listeners in FILE until SIGINT/SIGTERM
                        (SIGHUP reloads FILE)
  check --config FILE   validate FILE; print "ok" or every problem as FILE:LINE:COL: msg
  version               print the version

Operator commands (talk to a running dbproxy's admin API; flags
--admin HOST:PORT, --config FILE, --token-file FILE):
  status                pools, credential generations and sessions
  rotate BACKEND        fetch a new credential and drain the old one
  pause BACKEND         hold new transactions/sessions back
  resume BACKEND        let them go on
  drain BACKEND         replace the backend's upstream connections
  kill ID [--reason TEXT]
                        end one client session (ids: GET /v1/sessions, SHOW
                        CLIENTS); its client is told the reason
  revoke BACKEND [--role R | --prefix MOUNT/creds/ROLE[/LEASE]] [--dry-run]
                        new credential first, then revoke the old lease(s) in
                        Vault (--prefix: every lease under it, others' too)
                        and close the sessions still on them
  report [--format json] leases, credentials issued, renewals, revocations and
                        expiries over the last 24 h, refusals, with Vault's
                        version and status
  reload                re-read and apply the configuration file (as SIGHUP);
                        an invalid file is refused with FILE:LINE:COL problems
  sessions [--backend-pid N] [--backend B] [--format json]
                        open sessions; --backend-pid finds the session owning a
                        pg_stat_activity pid or a processlist id

Global flags (also accepted after the command):
  --log-format json|console   log encoding (default json)
  --log-level LEVEL           debug, info, warn or error (default info)
`

func usage(w io.Writer) { fmt.Fprint(w, usageText) }

// globalFlags are accepted before the command and by commands that log.
type globalFlags struct {
	logFormat string
	logLevel  string
}

// register adds the flags to fs, keeping values already parsed (so a
// command's flag set does not reset what was given before the command).
func (g *globalFlags) register(fs *flag.FlagSet) {
	if g.logFormat == "" {
		g.logFormat = "json"
	}
	if g.logLevel == "" {
		g.logLevel = "info"
	}
	fs.StringVar(&g.logFormat, "log-format", g.logFormat, "log encoding: json or console")
	fs.StringVar(&g.logLevel, "log-level", g.logLevel, "log level: debug, info, warn or error")
}

func (g *globalFlags) validate() error {
	if g.logFormat != "json" && g.logFormat != "console" {
		return fmt.Errorf("--log-format %q: use json or console", g.logFormat)
	}
	var l zapcore.Level
	if err := l.UnmarshalText([]byte(g.logLevel)); err != nil || l < zapcore.DebugLevel || l > zapcore.ErrorLevel {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	return nil
}

// newLogger builds the process logger writing to w.
func (g *globalFlags) newLogger(w io.Writer) *zap.Logger {
	var level zapcore.Level
	_ = level.UnmarshalText([]byte(g.logLevel)) // validated already
	var enc zapcore.Encoder
	if g.logFormat == "console" {
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		ec.EncodeDuration = zapcore.StringDurationEncoder
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level), zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w))))
}

// newFlagSet returns a flag set for a command that reports to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("dbproxy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args; it returns an exit status and false when the
// command should not go on (help asked, or a bad flag).
func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return exitUsage, false
	}
	return exitOK, true
}

// Execute runs the dbproxy command line args (without the program name)
// and returns the process exit status.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var g globalFlags
	fs := newFlagSet("", stderr)
	fs.Usage = func() { usage(stderr) }
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		usage(stderr)
		return exitUsage
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "run":
		return runCmd(ctx, &g, rest, stderr)
	case "check":
		return checkCmd(rest, stdout, stderr)
	case "version":
		return versionCmd(rest, stdout, stderr)
	case "status":
		return statusCmd(ctx, rest, stdout, stderr)
	case "rotate", "pause", "resume", "drain":
		return actionCmd(ctx, cmd, rest, stdout, stderr)
	case "kill":
		return killCmd(ctx, rest, stdout, stderr)
	case "revoke":
		return revokeCmd(ctx, rest, stdout, stderr)
	case "report":
		return reportCmd(ctx, rest, stdout, stderr)
	case "reload":
		return reloadCmd(ctx, rest, stdout, stderr)
	case "sessions":
		return sessionsCmd(ctx, rest, stdout, stderr)
	case "help":
		usage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "dbproxy: unknown command %q\n\n", cmd)
		usage(stderr)
		return exitUsage
	}
}

// exitNow ends the process at once; tests replace it.
var exitNow = os.Exit
