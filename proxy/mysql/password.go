package mysql

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/identity"
)

// authClearPassword is the client plugin that sends the password as is.
const authClearPassword = "mysql_clear_password"

// tokenListener returns lo with an Authenticate that yields the identity
// proved by the token (Vault token or JWT) the client sends as its
// password, for listeners with ListenerOptions.Token; others are returned
// unchanged. go-mysql has finished its own (empty) auth exchange: this
// asks for the password with an AuthSwitchRequest to mysql_clear_password,
// and only over TLS or a unix socket, so a token never crosses the
// network in clear text.
func (a *clientAuth) tokenListener(c *server.Conn) (ListenerOptions, error) {
	lo := a.lo
	if lo.Token == nil {
		return lo, nil
	}
	kind := lo.Token.Kind()
	if _, unix := a.s.raw.(*net.UnixConn); a.g.tlsState == nil && !unix {
		return lo, &Error{Code: erAccessDenied, State: "28000",
			Message: fmt.Sprintf("Access denied: dbproxy listener %s takes a %s as the password only over TLS; connect with --ssl (mariadb) or tls=true (Go driver), and allow the clear text plugin (--enable-cleartext-plugin, allowCleartextPasswords=true); dbproxy did not ask for the password, so it was not sent", lo.Name, kind)}
	}
	sw := make([]byte, 4, 4+1+len(authClearPassword)+1)
	sw = append(sw, gomysql.EOF_HEADER)
	sw = append(sw, authClearPassword...)
	sw = append(sw, 0)
	if err := c.WritePacket(sw); err != nil {
		return lo, err
	}
	data, err := c.ReadPacket()
	if err != nil {
		return lo, err
	}
	if n := len(data); n > 0 && data[n-1] == 0 {
		data = data[:n-1]
	}
	limit := lo.MaxTokenBytes
	if limit <= 0 {
		limit = identity.DefaultMaxTokenBytes
	}
	if len(data) > limit {
		return lo, &Error{Code: erAccessDenied, State: "28000",
			Message: fmt.Sprintf("Access denied: the %s is %d bytes; dbproxy accepts at most %d", kind, len(data), limit)}
	}
	if len(data) == 0 {
		return lo, &Error{Code: erAccessDenied, State: "28000",
			Message: fmt.Sprintf("Access denied: no password; send your %s as the password (with the clear text plugin allowed: --enable-cleartext-plugin, allowCleartextPasswords=true)", kind)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.s.srv.opts.StartupTimeout)
	defer cancel()
	id, err := lo.Token.Authenticate(ctx, string(data))
	if err != nil {
		var ie *identity.Error
		if errors.As(err, &ie) && ie.Reason == identity.ReasonTokenCheckFailed && ie.Err != nil {
			a.s.startupLog().Warn("cannot check a client's token", zap.String("kind", kind), zap.NamedError("cause", ie.Err))
		}
		if errors.As(err, &ie) {
			return lo, &Error{Code: erAccessDenied, State: "28000", Message: fmt.Sprintf("Access denied: %s refused: %s", kind, ie.Msg), Err: err}
		}
		return lo, err
	}
	lo.Authenticate = func(net.Conn, *tls.ConnectionState) (identity.Identity, error) { return id, nil }
	return lo, nil
}

// tokenExpiredError is what a client whose token expired is told.
func (s *session) tokenExpiredError() *Error {
	kind := "Vault token"
	if s.id.Method == identity.MethodJWT {
		kind = "JWT"
	}
	return &Error{Code: erConnectionKilled, State: "70100",
		Message: fmt.Sprintf("Connection was killed: dbproxy closed this session because your %s expired at %s; reconnect with a fresh token", kind, s.id.Expires.UTC().Format(time.RFC3339))}
}
