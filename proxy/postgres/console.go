package postgres

import (
	"go.uber.org/zap"
)

// The SQL admin console (Options.Console) is served on the PostgreSQL
// listeners: a client identified as usual asks for database
// ConsoleDatabase. Its session is tracked like any other, so it is
// listed, can be killed and ends at shutdown (through the same
// interrupts, which wake the console's reads).

// wantsConsole reports, after identification, whether the client asked
// for the console; it then makes the session one.
func (s *session) wantsConsole(p *startupParams) bool {
	o := s.srv.opts
	if o.Console == nil || o.ConsoleDatabase == "" || p.database != o.ConsoleDatabase {
		return false
	}
	s.console = true
	s.backend = &Backend{Name: p.database}
	return true
}

// runConsole hands the client to the console until it leaves or is
// stopped.
func (s *session) runConsole() {
	s.log = s.srv.log.With(zap.String("listener", s.listener), zap.String("remote", s.raw.RemoteAddr().String()),
		zap.String("identity", s.id.Name), zap.String("backend", s.backend.Name))
	s.txStatus.Store('I') // idle between commands: a shutdown closes it at once
	err := s.srv.opts.Console(s.ctx, s.id.Name, s.cbr, s.client)
	if why := s.why.Load(); why != whyNone {
		s.sendFatal(s.interruptError(why, nil))
		return
	}
	if err != nil {
		s.log.Info("console session ended", zap.Error(err))
	}
}
