// Package console is dbproxy's SQL admin console: an operator connects
// with psql to a PostgreSQL listener, database "dbproxy", and asks SHOW
// POOLS, SHOW CLIENTS and the rest, as in PgBouncer's console. It is a
// thin SQL view over what the admin HTTP API shows and does
// (admin.Operations, admin.Killer) and over the metrics registry (SHOW
// STATS), so the two can never disagree. Only identities granted admin
// in the configuration get in.
//
// proxy/postgres hands the console a client after the startup packet and
// the client's identification; the console speaks the simple query
// protocol with pgproto3 from there on.
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/admin"
)

// Database is the database name that selects the console.
const Database = "dbproxy"

// maxMessage caps a client message: console commands are short.
const maxMessage = 64 << 10

// Backend is what SHOW POOLS and SHOW SERVERS say about a backend beyond
// what Operations lists.
type Backend struct {
	Protocol string // postgres or mysql
	Address  string // host:port of the database
	PoolMode string // session or transaction
}

// Setting is one line of SHOW CONFIG.
type Setting struct{ Key, Value string }

// Options configure a Console.
type Options struct {
	Ops    admin.Operations
	Killer admin.Killer
	// Gatherer is the process's metrics registry: SHOW STATS and the idle
	// rows of SHOW SERVERS read it.
	Gatherer prometheus.Gatherer
	// Admin reports whether an identity may use the console.
	Admin    func(identity string) bool
	Backends map[string]Backend
	Config   []Setting
	Version  string
	// Started is when the process started: SHOW STATS averages per
	// second over the time since.
	Started time.Time
	// WaitCloseLimit bounds WAIT_CLOSE. Default 5 minutes.
	WaitCloseLimit time.Duration
	Log            *zap.Logger
}

// Console serves console sessions. It is safe for concurrent use.
type Console struct {
	opts Options
	log  *zap.Logger
	// reconnects remembers when RECONNECT last ran per backend ("" for
	// all), for WAIT_CLOSE.
	reconnects reconnectLog
}

// New makes a Console.
func New(o Options) *Console {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.WaitCloseLimit <= 0 {
		o.WaitCloseLimit = 5 * time.Minute
	}
	if o.Started.IsZero() {
		o.Started = time.Now()
	}
	if o.Admin == nil {
		o.Admin = func(string) bool { return false }
	}
	return &Console{opts: o, log: o.Log.Named("console")}
}

// Serve runs one console session for a client identified as identity,
// reading from r and writing to w, until the client terminates, r or w
// fails, or ctx ends. An identity not granted admin is refused with FATAL
// 42501. The error is nil when the client said Terminate.
func (c *Console) Serve(ctx context.Context, identity string, r io.Reader, w io.Writer) error {
	be := pgproto3.NewBackend(r, w)
	be.SetMaxBodyLen(maxMessage)
	if !c.opts.Admin(identity) {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "42501",
			Message: fmt.Sprintf("identity %q may not use the dbproxy admin console (database %s)", identity, Database),
			Hint:    "grant it in dbproxy's configuration with identities." + identity + ".admin: true, or connect to a backend's database"})
		_ = be.Flush()
		return fmt.Errorf("console: identity %q is not an admin", identity)
	}
	be.Send(&pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{{"server_version", "16.0 (dbproxy " + c.opts.Version + " admin console)"}, {"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"}, {"application_name", "dbproxy console"}} {
		be.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		return fmt.Errorf("console: greet: %w", err)
	}
	c.log.Info("console session start", zap.String("identity", identity))
	failed := false // an extended-protocol message was refused; skip to Sync
	for {
		msg, err := be.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			return fmt.Errorf("console: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			c.query(ctx, be, identity, m.String)
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			c.log.Info("console session end", zap.String("identity", identity))
			return nil
		case *pgproto3.Sync:
			failed = false
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Close, *pgproto3.Flush, *pgproto3.FunctionCall:
			if !failed {
				failed = true
				be.Send(errorResponse("0A000", "the dbproxy admin console speaks the simple query protocol only: use psql, or your driver's simple protocol (pgx: QueryExecModeSimpleProtocol)"))
			}
		default:
			be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08P01",
				Message: fmt.Sprintf("unexpected %T message on the dbproxy admin console", msg)})
			_ = be.Flush()
			return fmt.Errorf("console: unexpected %T", msg)
		}
		if err := be.Flush(); err != nil {
			return fmt.Errorf("console: %w", err)
		}
	}
}

// query runs the statements of one simple Query; the first error ends
// it, as in PostgreSQL.
func (c *Console) query(ctx context.Context, be *pgproto3.Backend, identity, text string) {
	stmts := splitStatements(text)
	if len(stmts) == 0 {
		be.Send(&pgproto3.EmptyQueryResponse{})
		return
	}
	for _, s := range stmts {
		msgs, err := c.run(ctx, s)
		if err != nil {
			c.log.Info("console command refused", zap.String("identity", identity), zap.String("command", s), zap.Error(err))
			be.Send(asErrorResponse(err))
			return
		}
		c.log.Info("console command", zap.String("identity", identity), zap.String("command", s))
		for _, m := range msgs {
			be.Send(m)
		}
	}
}

// run parses and executes one statement.
func (c *Console) run(ctx context.Context, stmt string) ([]pgproto3.BackendMessage, error) {
	cmd, err := parse(stmt)
	if err != nil {
		return nil, err
	}
	if cmd.verb == "SHOW" {
		t, err := c.show(cmd.what)
		if err != nil {
			return nil, err
		}
		return t.messages("SHOW"), nil
	}
	note, err := c.act(ctx, cmd)
	if err != nil {
		return nil, err
	}
	var out []pgproto3.BackendMessage
	if note != "" {
		out = append(out, &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: note})
	}
	return append(out, &pgproto3.CommandComplete{CommandTag: []byte(cmd.verb)}), nil
}

// sqlError is a console error with its SQLSTATE.
type sqlError struct {
	code, msg, hint string
}

func (e *sqlError) Error() string { return e.msg }

func errorResponse(code, msg string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg}
}

func asErrorResponse(err error) *pgproto3.ErrorResponse {
	var se *syntaxError
	var qe *sqlError
	switch {
	case errors.As(err, &se):
		return errorResponse("42601", se.msg)
	case errors.As(err, &qe):
		e := errorResponse(qe.code, qe.msg)
		e.Hint = qe.hint
		return e
	}
	return errorResponse("XX000", err.Error())
}
