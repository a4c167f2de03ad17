package mysql

import (
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
)

// The audit trail is the "session start" and "session end" lines: with
// the logger's listener, remote, identity, backend and role, they name
// the auth method, the database user and Vault lease (the lease id is not
// secret; the password is never logged) and the server thread ids, so a
// DBA can go from a processlist row to the service that owns it.

// noteStatus records the server status flags of an answer; a complete
// answer that leaves no transaction open and no more results ends a
// transaction (an autocommit statement is one). No allocation: it runs
// once per answer.
func (s *session) noteStatus(status uint16, done bool) {
	s.status.Store(uint32(status))
	if done && status&(gomysql.SERVER_STATUS_IN_TRANS|gomysql.SERVER_MORE_RESULTS_EXISTS) == 0 {
		s.txns.Add(1)
	}
}

// auditStart are the fields of the "session start" line; gen is the
// session-mode connection's credential (nil in a transaction pool, where
// each transaction may have its own).
func (s *session) auditStart(gen *creds.Generation) []zap.Field {
	f := []zap.Field{zap.String("method", string(s.id.Method)), zap.Bool("transaction_pooling", gen == nil),
		zap.Uint32("connection_id", s.connID), zap.Uint32("thread_id", s.serverThread.Load())}
	if gen != nil {
		f = append(f, zap.String("db_user", gen.Username), zap.Uint64("generation", gen.N), zap.String("lease_id", gen.LeaseID))
	}
	return f
}

// auditEnd are the fields of the "session end" line; gen as auditStart.
// thread_id is the last server connection the session held.
func (s *session) auditEnd(result string, gen *creds.Generation) []zap.Field {
	f := []zap.Field{zap.String("result", result), zap.String("method", string(s.id.Method)),
		zap.Duration("duration", time.Since(s.started)),
		zap.Int64("bytes_in", s.bytesIn.Load()), zap.Int64("bytes_out", s.bytesOut.Load()),
		zap.Int64("transactions", s.txns.Load()), zap.Uint32("connection_id", s.connID),
		zap.Uint32("thread_id", s.serverThread.Load())}
	if gen != nil {
		f = append(f, zap.String("db_user", gen.Username), zap.Uint64("generation", gen.N), zap.String("lease_id", gen.LeaseID))
	}
	if p := s.revokedWhy.Load(); p != nil {
		f = append(f, zap.String("reason", *p))
	}
	return f
}
