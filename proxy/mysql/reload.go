package mysql

import (
	"github.com/dbproxy/dbproxy/proxy/frontend"
)

// killRevoked: a configuration reload took away what the session logged
// in with (its grant, backend or listener). It ranks as shutdown, so it
// applies wherever the session is and cancels a waiting checkout.
const killRevoked = killReason(frontend.KillRevoked)

// Grant implements frontend.Session. The fields it reads are written
// before the session is tracked and never again.
func (s *session) Grant() frontend.Grant {
	g := frontend.Grant{Listener: s.listener, Identity: s.id, User: s.user, Role: s.role, Since: s.started}
	if s.backend != nil {
		g.Backend = s.backend.Name
	}
	return g
}

// Revoke implements frontend.Session.
func (s *session) Revoke(why string) {
	s.revokedWhy.CompareAndSwap(nil, &why)
	s.kill(killRevoked)
}

// revokedError is what a client whose session a reload ended is told.
func (s *session) revokedError() *Error {
	why := "its grant was removed"
	if p := s.revokedWhy.Load(); p != nil {
		why = *p
	}
	return &Error{Code: erConnectionKilled, State: "70100",
		Message: "Connection was killed: dbproxy closed this session because its configuration was reloaded and " + why +
			"; ask the dbproxy operator for a grant, or connect to a backend you are granted"}
}
