package postgres

import (
	"time"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/creds"
)

// The audit trail is the "session start" and "session end" lines: with
// the logger's listener, remote, identity, backend and role, they name
// the auth method, the database user and Vault lease (the lease id is not
// secret; the password is never logged) and the server process ids, so
// a DBA can go from a pg_stat_activity row to the service that owns it.

// readyForQuery records a ReadyForQuery status relayed to the client;
// 'I' ends a transaction (an implicit one too). No allocation: it runs
// once per request.
func (s *session) readyForQuery(status byte) {
	s.txStatus.Store(uint32(status))
	if status == 'I' {
		s.txns.Add(1)
	}
}

// auditStart are the fields of the "session start" line; gen is the
// session-mode connection's credential (nil in a transaction pool, where
// each transaction may have its own).
func (s *session) auditStart(txnPool bool, gen *creds.Generation) []zap.Field {
	f := []zap.Field{zap.String("method", string(s.id.Method)), zap.Bool("transaction_pooling", txnPool),
		zap.Uint32("backend_pid", s.serverPID.Load())}
	if gen != nil {
		f = append(f, zap.String("db_user", gen.Username), zap.Uint64("generation", gen.N), zap.String("lease_id", gen.LeaseID))
	}
	return f
}

// auditEnd are the fields of the "session end" line. backend_pid is the
// last server connection the session held.
func (s *session) auditEnd(result string) []zap.Field {
	f := []zap.Field{zap.String("result", result), zap.String("method", string(s.id.Method)),
		zap.Duration("duration", time.Since(s.started)),
		zap.Int64("bytes_in", s.bytesIn.Load()), zap.Int64("bytes_out", s.bytesOut.Load()),
		zap.Int64("transactions", s.txns.Load()), zap.Uint32("backend_pid", s.serverPID.Load())}
	if p := s.revokedWhy.Load(); p != nil {
		f = append(f, zap.String("reason", *p))
	}
	return f
}
