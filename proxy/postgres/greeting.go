package postgres

import (
	"encoding/binary"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The greeting is what PostgreSQL sends a client after authentication:
// AuthenticationOk, a ParameterStatus for each reported setting,
// BackendKeyData and ReadyForQuery. Everything up to the parameters is
// the same for every client of a server connection (and of a transaction
// pool's key), so it is encoded once per server connection and cached per
// pool key; a login only appends its own application_name, its
// proxy-issued cancel key and ReadyForQuery.

// encodeGreeting encodes AuthenticationOk and the ParameterStatus
// messages of params but application_name, which is each client's own.
func encodeGreeting(params map[string]string) []byte {
	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	for k, v := range params {
		if k != "application_name" {
			buf, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(buf)
		}
	}
	return buf
}

// greet sends the greeting, the client's application name, a cancel key
// and ReadyForQuery, in one write.
func (s *session) greet(version uint32, greeting []byte) error {
	buf := s.cbw.AvailableBuffer()
	if version != pgproto3.ProtocolVersion30 {
		buf, _ = (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0}).Encode(buf)
	}
	buf = append(buf, greeting...)
	// The server connection may have been opened for another client.
	buf = appendParameterStatus(buf, "application_name", s.appName)
	pid, secret := s.srv.cancels.issue(s)
	s.cancelPID = pid
	buf = append(buf, 'K', 0, 0, 0, 12)
	buf = binary.BigEndian.AppendUint32(buf, pid)
	buf = append(buf, secret[:]...)
	buf = append(buf, readyIdle...)
	s.txStatus.Store('I')
	if _, err := s.cbw.Write(buf); err != nil {
		return err
	}
	return s.cbw.Flush()
}

func appendParameterStatus(buf []byte, name, value string) []byte {
	buf = append(buf, 'S')
	buf = binary.BigEndian.AppendUint32(buf, uint32(4+len(name)+1+len(value)+1))
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, value...)
	return append(buf, 0)
}
