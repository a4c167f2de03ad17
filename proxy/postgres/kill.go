package postgres

import "github.com/dbproxy/dbproxy/proxy/frontend"

// whyOperatorKill: an operator killed the session (admin API, CLI,
// console KILL). Like whyTokenExpired it sits outside interrupt.go's
// iota block, ranks above shutdown (the client should hear the
// operator's reason, not "shutting down") and cancels a waiting checkout.
const whyOperatorKill = whyTokenExpired + 1

// KillSession stops the open session with ID id for an operator; its
// client gets FATAL 57P01 naming reason. It returns the session as it
// was, and false if there is no such session.
func (srv *Server) KillSession(id uint64, reason string) (frontend.SessionInfo, bool) {
	return srv.front.KillID(id, reason)
}

// operatorKillError is what a client whose session an operator killed is
// told.
func (s *session) operatorKillError() *Error {
	return &Error{Severity: "FATAL", Code: codeAdminShutdown,
		Message: frontend.OperatorKillText(s.srv.front.KillNote(s)),
		Hint:    "reconnecting starts a new session; ask the dbproxy operators if it happens again"}
}
