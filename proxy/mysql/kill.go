package mysql

import "github.com/dbproxy/dbproxy/proxy/frontend"

// killByOperator: an operator killed the session (admin API, CLI, the
// console's KILL); it ranks as shutdown.
const killByOperator = killReason(frontend.KillByOperator)

// KillSession stops the open session with ID id for an operator; its
// client gets ER_CONNECTION_KILLED naming reason. It returns the session
// as it was, and false if there is no such session.
func (srv *Server) KillSession(id uint64, reason string) (frontend.SessionInfo, bool) {
	return srv.front.KillID(id, reason)
}

// operatorKillError is what a client whose session an operator killed is
// told.
func (s *session) operatorKillError() *Error {
	return &Error{Code: erConnectionKilled, State: "70100",
		Message: "Connection was killed: " + frontend.OperatorKillText(s.srv.front.KillNote(s)) + "; reconnecting starts a new session"}
}
