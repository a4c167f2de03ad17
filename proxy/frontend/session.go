package frontend

import (
	"time"

	"github.com/dbproxy/dbproxy/identity"
)

// Session is what the server needs of a protocol's client session.
type Session interface {
	comparable
	// Info describes the session; other goroutines call it.
	Info() SessionInfo
	// CloseIfIdle stops the session with KillIdleShutdown if nothing of
	// it is in flight: no request being relayed, no transaction open.
	CloseIfIdle()
	// Kill stops the session for r, whatever it is doing.
	Kill(r KillReason)
	// Expires is when the client's identity stops being valid (a Vault
	// token's or JWT's expiry); zero: never.
	Expires() time.Time
	// Grant is what the session was allowed to use at login, for a
	// configuration reload to check again.
	Grant() Grant
	// Revoke stops the session with KillRevoked; why (e.g. "identity
	// orders-api no longer has a grant on backend orders") is in what
	// the client is told.
	Revoke(why string)
}

// Grant is what a session logged in through and with: a reload ends the
// session when the new configuration would no longer allow it.
type Grant struct {
	Listener string
	Identity identity.Identity
	Backend  string
	// User is the user name the client sent (it selects a grant).
	User string
	Role string
	// Since is when the session was accepted: a session accepted after
	// a reload logged in under the new configuration.
	Since time.Time
}

// SessionInfo describes a client session for the admin API, for both
// protocols.
type SessionInfo struct {
	// ID names the session in the process (KillID, the console's KILL).
	ID         uint64    `json:"id"`
	Protocol   string    `json:"protocol"`
	Identity   string    `json:"identity"`
	Method     string    `json:"method"`
	Backend    string    `json:"backend"`
	Role       string    `json:"role"`
	DBUser     string    `json:"db_user"`
	LeaseID    string    `json:"lease_id"`
	Generation uint64    `json:"generation"`
	State      string    `json:"state"`
	Since      time.Time `json:"since"`
	Remote     string    `json:"remote"`
	// RequestTime is when the client's latest request began (zero when
	// the protocol does not keep SessionStats, or before any request).
	RequestTime time.Time `json:"request_time,omitzero"`
	// Pinned says why a session-mode session cannot move to a new
	// credential at a rotation (it is closed at the drain deadline).
	Pinned string `json:"pinned,omitempty"`
	// ConnectionID and ThreadID are MySQL's: the id the greeting gave
	// the client and the upstream's, both of which KILL accepts.
	ConnectionID uint32 `json:"connection_id,omitempty"`
	ThreadID     uint32 `json:"thread_id,omitempty"`
	// Listener is the listener the client connected to.
	Listener string `json:"listener"`
	// BackendPID is the upstream server's process id (PostgreSQL's
	// BackendKeyData pid; MySQL's thread id) of the server connection
	// the session holds now (BackendPIDHeld) or, in a transaction pool
	// between transactions, held last. 0: none yet.
	BackendPID     uint32 `json:"backend_pid,omitempty"`
	BackendPIDHeld bool   `json:"backend_pid_held,omitempty"`
	// Transactions counts the transactions the session completed.
	Transactions int64 `json:"transactions"`
	BytesIn      int64 `json:"bytes_in"`
	BytesOut     int64 `json:"bytes_out"`
}

// KillReason is why a session is stopped from outside its goroutine. A
// greater one overrides a smaller one (see Rank).
type KillReason uint32

// The reasons, weakest first.
const (
	KillNone         KillReason = iota
	KillIdleShutdown            // shutdown: only a session with nothing in flight
	KillLeaseEnd                // its server connection's credential reached the drain deadline
	KillShutdown                // shutdown deadline: every session
	KillByClient                // a client's KILL CONNECTION (MySQL)
	KillTokenExpired            // the token that identified the client expired
	KillByOperator              // an operator's kill (admin API, CLI, console): see KillID
	KillRevoked                 // a configuration reload took its grant, backend or listener away
)

// Rank orders reasons: a client's KILL, an expired token, an operator's
// kill and a revoked grant are as strong as the shutdown deadline, none
// overrides another.
func (r KillReason) Rank() KillReason { return min(r, KillShutdown) }

// Result is the dbproxy_client_sessions_total result of a session stopped
// for r.
func (r KillReason) Result() string {
	switch r {
	case KillLeaseEnd:
		return "lease_end"
	case KillByClient:
		return "killed"
	case KillTokenExpired:
		return "token_expired"
	case KillByOperator:
		return "operator_kill"
	case KillRevoked:
		return "config_reload"
	}
	return "shutdown"
}

// ReasonText says in words why a credential generation ended, from
// creds.Generation.Reason, for the message a client gets at a lease end.
func ReasonText(r string) string {
	switch r {
	case "max_ttl":
		return "its max TTL"
	case "token":
		return "dbproxy's Vault token expires"
	case "external_revoke", "auth_failed":
		return "the lease was revoked in Vault"
	case "manual":
		return "an operator rotated it"
	case "":
		return "lease expired"
	}
	return r
}
