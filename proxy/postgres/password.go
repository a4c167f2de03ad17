package postgres

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/identity"
)

// passwordMessageType is the type byte of a PasswordMessage.
const passwordMessageType = 'p'

// tokenThenLogin is login, preceded for token listeners by the password
// exchange.
func (s *session) tokenThenLogin(lo ListenerOptions, m *pgproto3.StartupMessage, st *tls.ConnectionState) error {
	lo, err := s.tokenLogin(lo, m, st)
	if err != nil {
		return err
	}
	return s.login(lo, m, st)
}

// tokenLogin runs the password exchange of a listener whose clients send a
// token (Vault token or JWT) as their password, and returns lo with an
// Authenticate that yields the identity the token proved. Listeners
// without ListenerOptions.Token are returned unchanged.
//
// The token is a bearer credential, so the password is asked for only
// over TLS or a unix socket: anywhere else the client is refused before
// AuthenticationCleartextPassword, and never gets to send it.
func (s *session) tokenLogin(lo ListenerOptions, m *pgproto3.StartupMessage, st *tls.ConnectionState) (ListenerOptions, error) {
	if lo.Token == nil {
		return lo, nil
	}
	if _, err := parseStartup(m); err != nil {
		return lo, err // refuse a bad startup before asking for anything
	}
	kind := lo.Token.Kind()
	if _, unix := s.raw.(*net.UnixConn); st == nil && !unix {
		return lo, &Error{Severity: "FATAL", Code: codeInvalidAuth,
			Message: fmt.Sprintf("listener %s takes a %s as the password only over TLS: connect with sslmode=require or verify-full (dbproxy did not ask for the password, so it was not sent)", lo.Name, kind)}
	}
	req, _ := (&pgproto3.AuthenticationCleartextPassword{}).Encode(nil)
	if _, err := s.client.Write(req); err != nil {
		return lo, err
	}
	token, err := s.readPassword(lo.tokenLimit(), kind)
	if err != nil {
		return lo, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.StartupTimeout)
	defer cancel()
	id, err := lo.Token.Authenticate(ctx, token)
	if err != nil {
		logCheckFailure(s.startupLog(), kind, err)
		return lo, fmt.Errorf("%s refused: %w", kind, err)
	}
	lo.Authenticate = func(net.Conn, *tls.ConnectionState) (identity.Identity, error) { return id, nil }
	return lo, nil
}

// logCheckFailure logs why a token could not be checked at all (Vault or
// the JWKS URL unreachable): the client is told only to retry. The cause
// names URLs and statuses, never the token.
func logCheckFailure(log *zap.Logger, kind string, err error) {
	var ie *identity.Error
	if errors.As(err, &ie) && ie.Reason == identity.ReasonTokenCheckFailed && ie.Err != nil {
		log.Warn("cannot check a client's token", zap.String("kind", kind), zap.NamedError("cause", ie.Err))
	}
}

func (lo ListenerOptions) tokenLimit() int {
	if lo.MaxTokenBytes > 0 {
		return lo.MaxTokenBytes
	}
	return identity.DefaultMaxTokenBytes
}

// readPassword reads one PasswordMessage of at most limit bytes of
// password; a longer one is refused without being read.
func (s *session) readPassword(limit int, kind string) (string, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(s.cbr, hdr[:]); err != nil {
		return "", err
	}
	if hdr[0] != passwordMessageType {
		return "", fatal(codeProtocolViolation, fmt.Sprintf("expected a password message, got message type %q", hdr[0]))
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 1 || n > limit+1 {
		// Read a modest excess away, so that closing the connection does
		// not reset it before the client has read why.
		if n > 0 && n <= 4*limit {
			_, _ = io.CopyN(io.Discard, s.cbr, int64(n))
		}
		return "", fatal(codeInvalidAuth, fmt.Sprintf("%s refused: the password is %d bytes; dbproxy accepts at most %d", kind, max(n-1, 0), limit))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(s.cbr, body); err != nil {
		return "", err
	}
	if body[n-1] != 0 {
		return "", fatal(codeProtocolViolation, "password message is not NUL-terminated")
	}
	return string(body[:n-1]), nil
}

// whyTokenExpired: the token that identified the client has expired. It
// is outside interrupt.go's iota block to keep that file the relay's; it
// ranks above shutdown (both are true then, and this one is the client's
// to fix), and like shutdown it cancels a waiting checkout.
const whyTokenExpired = whyShutdown + 1

// tokenExpiredError is what a client whose token expired is told.
func (s *session) tokenExpiredError() *Error {
	return &Error{Severity: "FATAL", Code: codeAdminShutdown,
		Message: fmt.Sprintf("dbproxy closed this session: your %s expired at %s", tokenKind(s.id.Method), s.id.Expires.UTC().Format(time.RFC3339)),
		Hint:    "reconnect with a fresh token"}
}

func tokenKind(m identity.Method) string {
	if m == identity.MethodJWT {
		return "JWT"
	}
	return "Vault token"
}
