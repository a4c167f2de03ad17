package postgres

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// maxStartupLen is PostgreSQL's own MAX_STARTUP_PACKET_LENGTH.
const maxStartupLen = 10000

// Startup request codes (the "protocol version" of special packets).
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
)

// readStartup reads one untyped startup packet and decodes it. It uses
// pgproto3's message types but its own framing, so that the caller's
// bufio.Reader shows exactly which bytes arrived after the packet.
func readStartup(r *bufio.Reader) (pgproto3.FrontendMessage, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 || n > maxStartupLen {
		return nil, fatal(codeProtocolViolation, fmt.Sprintf("invalid startup packet length %d (must be 8 to %d bytes)", n, maxStartupLen))
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	code := binary.BigEndian.Uint32(body)
	var msg pgproto3.FrontendMessage
	switch code {
	case sslRequestCode:
		msg = &pgproto3.SSLRequest{}
	case gssEncRequestCode:
		msg = &pgproto3.GSSEncRequest{}
	case cancelRequestCode:
		msg = &pgproto3.CancelRequest{}
	case pgproto3.ProtocolVersion30, pgproto3.ProtocolVersion32:
		msg = &pgproto3.StartupMessage{}
	default:
		return nil, fatal(codeFeatureNotSupported, fmt.Sprintf("unsupported frontend protocol %d.%d: dbproxy speaks 3.0", code>>16, code&0xffff))
	}
	if err := msg.Decode(body); err != nil {
		return nil, &Error{Severity: "FATAL", Code: codeProtocolViolation, Message: "invalid startup packet: " + err.Error(), Err: err}
	}
	return msg, nil
}

// forwardedParams are the startup parameters passed to the upstream as
// session defaults. Anything else is refused, as PgBouncer does, because
// an unknown parameter would otherwise fail late or change session state
// that a pooled connection must not carry.
var forwardedParams = map[string]bool{
	"application_name": true, "client_encoding": true, "DateStyle": true,
	"TimeZone": true, "extra_float_digits": true, "search_path": true,
	"IntervalStyle": true, "datestyle": true, "timezone": true,
	"default_transaction_isolation": true, "default_transaction_read_only": true,
	"statement_timeout": true, "lock_timeout": true,
	"idle_in_transaction_session_timeout": true, "lc_messages": true,
	"standard_conforming_strings": true, "bytea_output": true,
}

// startupParams is the validated result of a StartupMessage.
type startupParams struct {
	user, database, appName string
	forward                 map[string]string // excluding application_name
}

func parseStartup(m *pgproto3.StartupMessage) (*startupParams, error) {
	p := &startupParams{forward: map[string]string{}}
	// Sorted, so that a packet with several bad parameters always gets
	// the same error (map order would pick one at random).
	names := make([]string, 0, len(m.Parameters))
	for k := range m.Parameters {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := m.Parameters[k]
		switch k {
		case "user":
			p.user = v
		case "database":
			p.database = v
		case "application_name":
			// An empty application_name is unset (as in libpq): it
			// must not clear fallback_application_name.
			if v != "" {
				p.appName = v
			}
		case "fallback_application_name":
			if p.appName == "" {
				p.appName = v
			}
		case "replication":
			return nil, fatal(codeFeatureNotSupported, "replication connections are not supported through dbproxy: connect to the database directly for replication")
		case "options":
			if strings.TrimSpace(v) != "" {
				return nil, fatal(codeFeatureNotSupported, "the startup parameter \"options\" is not supported through dbproxy: set parameters with SET or as individual startup parameters (e.g. search_path)")
			}
		default:
			if !forwardedParams[k] {
				return nil, fatal(codeProtocolViolation, fmt.Sprintf("unsupported startup parameter %q: dbproxy forwards only %s", k, allowedList()))
			}
			p.forward[k] = v
		}
	}
	if m.Parameters["application_name"] != "" {
		p.appName = m.Parameters["application_name"]
	}
	if p.user == "" {
		return nil, fatal(codeInvalidAuth, "no user name in startup packet: set user (it selects which of your identity's grants to use)")
	}
	if p.database == "" {
		p.database = p.user
	}
	return p, nil
}

func allowedList() string {
	names := []string{"user", "database"} // application_name is in forwardedParams
	for k := range forwardedParams {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// key identifies startup parameters that make two upstream connections
// interchangeable, so an idle connection is reused only by a client that
// would have opened the same one.
func (p *startupParams) key(appName string) string {
	ks := make([]string, 0, len(p.forward))
	for k := range p.forward {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	b.WriteString(appName)
	for _, k := range ks {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(p.forward[k])
	}
	return b.String()
}
