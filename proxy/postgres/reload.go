package postgres

import (
	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// whyRevoked: a configuration reload took away what the session logged
// in with (its grant, backend or listener). Like whyTokenExpired it is
// outside interrupt.go's iota block and ranks above shutdown: the client
// is told the more precise reason.
const whyRevoked = whyOperatorKill + 1

// Grant implements frontend.Session. The fields it reads are written
// before the session is tracked and never again.
func (s *session) Grant() frontend.Grant {
	g := frontend.Grant{Listener: s.listener, Identity: s.id, Role: s.role, Since: s.started}
	if s.backend != nil {
		g.Backend = s.backend.Name
	}
	if s.params != nil {
		g.User = s.params.user
	}
	return g
}

// Revoke implements frontend.Session.
func (s *session) Revoke(why string) {
	s.revokedWhy.CompareAndSwap(nil, &why)
	s.interrupt(whyRevoked)
}

// revokedError is what a client whose session a reload ended is told.
func (s *session) revokedError() *Error {
	why := "its grant was removed"
	if p := s.revokedWhy.Load(); p != nil {
		why = *p
	}
	return &Error{Severity: "FATAL", Code: codeAdminShutdown,
		Message: "dbproxy closed this session: its configuration was reloaded and " + why,
		Hint:    "ask the dbproxy operator for a grant, or connect to a backend you are granted"}
}
