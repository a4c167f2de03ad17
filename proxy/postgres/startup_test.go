package postgres

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// packet frames an untyped startup packet: length, code, then body.
func packet(code uint32, body ...[]byte) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, 0) // patched below
	b = binary.BigEndian.AppendUint32(b, code)
	for _, p := range body {
		b = append(b, p...)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// params renders key/value pairs as a StartupMessage body, in order,
// followed by the terminating empty name.
func params(kv ...string) []byte {
	var b []byte
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	return append(b, 0)
}

// rawLen is a packet whose length word is n, whatever follows.
func rawLen(n uint32, rest ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, n), rest...)
}

func readStartupBytes(b []byte) (pgproto3.FrontendMessage, *bufio.Reader, error) {
	r := bufio.NewReaderSize(bytes.NewReader(b), 16<<10)
	m, err := readStartup(r)
	return m, r, err
}

// wantCode checks that err is an *Error with the given SQLSTATE.
func wantCode(t *testing.T, err error, code string) *Error {
	t.Helper()
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("error = %v (%T), want *Error with SQLSTATE %s", err, err, code)
	}
	if pe.Code != code {
		t.Fatalf("SQLSTATE = %s, want %s (%v)", pe.Code, code, err)
	}
	if pe.Severity != "FATAL" {
		t.Errorf("severity = %q, want FATAL", pe.Severity)
	}
	return pe
}

func TestReadStartup(t *testing.T) {
	bigValue := strings.Repeat("x", maxStartupLen-8-len("user\x00\x00search_path\x00\x00\x00"))
	tests := []struct {
		name string
		in   []byte
		want pgproto3.FrontendMessage // nil when an error is expected
		code string                   // SQLSTATE of the expected *Error
		err  error                    // expected plain error (errors.Is)
	}{
		{
			name: "startup 3.0",
			in:   packet(pgproto3.ProtocolVersion30, params("user", "alice", "database", "orders")),
			want: &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
				Parameters: map[string]string{"user": "alice", "database": "orders"}},
		},
		{
			name: "startup 3.2",
			in:   packet(pgproto3.ProtocolVersion32, params("user", "bob", "application_name", "psql")),
			want: &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32,
				Parameters: map[string]string{"user": "bob", "application_name": "psql"}},
		},
		{
			name: "startup of exactly the maximum length",
			in:   packet(pgproto3.ProtocolVersion30, params("user", "", "search_path", bigValue)),
			want: &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
				Parameters: map[string]string{"user": "", "search_path": bigValue}},
		},
		{
			name: "empty value",
			in:   packet(pgproto3.ProtocolVersion30, params("user", "u", "options", "")),
			want: &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
				Parameters: map[string]string{"user": "u", "options": ""}},
		},
		{name: "SSLRequest", in: packet(sslRequestCode), want: &pgproto3.SSLRequest{}},
		{name: "GSSEncRequest", in: packet(gssEncRequestCode), want: &pgproto3.GSSEncRequest{}},
		{
			name: "CancelRequest 3.0 (4-byte key)",
			in:   packet(cancelRequestCode, binary.BigEndian.AppendUint32(nil, 4242), []byte{1, 2, 3, 4}),
			want: &pgproto3.CancelRequest{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}},
		},
		{
			name: "CancelRequest 3.2 (32-byte key)",
			in:   packet(cancelRequestCode, binary.BigEndian.AppendUint32(nil, 7), bytes.Repeat([]byte{0xab}, 32)),
			want: &pgproto3.CancelRequest{ProcessID: 7, SecretKey: bytes.Repeat([]byte{0xab}, 32)},
		},
		{name: "CancelRequest without key", in: packet(cancelRequestCode, []byte{0, 0, 0, 1}), code: codeProtocolViolation},

		{name: "length 0", in: rawLen(0, 0, 0, 0, 0), code: codeProtocolViolation},
		{name: "length 4", in: rawLen(4, 0, 0, 0, 0), code: codeProtocolViolation},
		{name: "length 7", in: rawLen(7, 4, 210, 22, 47), code: codeProtocolViolation},
		{name: "length max+1", in: rawLen(maxStartupLen + 1), code: codeProtocolViolation},
		{name: "length 2^31-1", in: rawLen(1<<31 - 1), code: codeProtocolViolation},
		{name: "length 2^32-1", in: rawLen(1<<32 - 1), code: codeProtocolViolation},

		{name: "empty input", in: nil, err: io.EOF},
		{name: "short header", in: []byte{0, 0, 0}, err: io.ErrUnexpectedEOF},
		{name: "truncated body", in: packet(pgproto3.ProtocolVersion30, params("user", "alice"))[:12], err: io.ErrUnexpectedEOF},
		// The client hung up right after the length word: io.EOF from the
		// body read, which the session treats as a silent disconnect.
		{name: "header only", in: rawLen(8), err: io.EOF},

		{name: "protocol 2.0", in: packet(2 << 16), code: codeFeatureNotSupported},
		{name: "protocol 3.1", in: packet(3<<16|1, params("user", "u")), code: codeFeatureNotSupported},
		{name: "protocol 3.3", in: packet(3<<16|3, params("user", "u")), code: codeFeatureNotSupported},
		{name: "protocol 4.0", in: packet(4<<16, params("user", "u")), code: codeFeatureNotSupported},
		{name: "unknown special code 1234.5681", in: packet(1234<<16 | 5681), code: codeFeatureNotSupported},

		{name: "startup without terminator", in: packet(pgproto3.ProtocolVersion30, []byte("user\x00alice\x00")), code: codeProtocolViolation},
		{name: "startup with name but no value", in: packet(pgproto3.ProtocolVersion30, []byte("user\x00")), code: codeProtocolViolation},
		{name: "startup with bad last byte", in: packet(pgproto3.ProtocolVersion30, []byte("user\x00alice\x00x")), code: codeProtocolViolation},
		{name: "startup without parameters", in: packet(pgproto3.ProtocolVersion30), code: codeProtocolViolation},

		{name: "garbage: HTTP request", in: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), code: codeProtocolViolation},
		{name: "garbage: TLS ClientHello", in: []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, code: codeProtocolViolation},
		{name: "garbage: typed Query message", in: []byte("Q\x00\x00\x00\x0dSELECT 1\x00"), code: codeProtocolViolation},
		{name: "garbage: small length, random code", in: rawLen(12, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4), code: codeFeatureNotSupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _, err := readStartupBytes(tt.in)
			switch {
			case tt.want != nil:
				if err != nil {
					t.Fatalf("readStartup: %v", err)
				}
				if !reflect.DeepEqual(m, tt.want) {
					t.Fatalf("readStartup = %#v, want %#v", m, tt.want)
				}
			case tt.code != "":
				if m != nil {
					t.Errorf("message = %#v, want nil", m)
				}
				wantCode(t, err, tt.code)
			default:
				if m != nil {
					t.Errorf("message = %#v, want nil", m)
				}
				if !errors.Is(err, tt.err) {
					t.Fatalf("error = %v, want %v", err, tt.err)
				}
			}
		})
	}
}

func TestReadStartupDecodeErrorKeepsCause(t *testing.T) {
	_, _, err := readStartupBytes(packet(pgproto3.ProtocolVersion30, []byte("user\x00")))
	pe := wantCode(t, err, codeProtocolViolation)
	if pe.Err == nil || !strings.Contains(pe.Message, "invalid startup packet") {
		t.Fatalf("error = %+v, want message naming the invalid packet and a cause", pe)
	}
}

func TestReadStartupLengthErrorNamesLength(t *testing.T) {
	_, _, err := readStartupBytes(rawLen(maxStartupLen + 1))
	pe := wantCode(t, err, codeProtocolViolation)
	if !strings.Contains(pe.Message, "10001") {
		t.Errorf("message %q does not name the length", pe.Message)
	}
}

func TestReadStartupUnsupportedVersionNamesIt(t *testing.T) {
	_, _, err := readStartupBytes(packet(2 << 16))
	pe := wantCode(t, err, codeFeatureNotSupported)
	if !strings.Contains(pe.Message, "2.0") {
		t.Errorf("message %q does not name protocol 2.0", pe.Message)
	}
}

// readStartup must consume exactly one packet, so that the caller sees
// what arrived after it (bytes sent before a TLS handshake are refused).
func TestReadStartupReadsOnlyOnePacket(t *testing.T) {
	after := []byte("\x00\x00\x00\x08\x04\xd2\x16\x2fnext")
	for _, first := range [][]byte{
		packet(sslRequestCode),
		packet(gssEncRequestCode),
		packet(pgproto3.ProtocolVersion30, params("user", "u")),
		packet(cancelRequestCode, []byte{0, 0, 0, 1, 9, 9, 9, 9}),
	} {
		_, r, err := readStartupBytes(append(append([]byte{}, first...), after...))
		if err != nil {
			t.Fatalf("readStartup(%x): %v", first, err)
		}
		if r.Buffered() != len(after) {
			t.Fatalf("after %x: %d bytes buffered, want %d", first, r.Buffered(), len(after))
		}
		rest, _ := io.ReadAll(r)
		if !bytes.Equal(rest, after) {
			t.Fatalf("after %x: rest = %q, want %q", first, rest, after)
		}
	}
}

// An over-long length is refused from the header alone: nothing of the
// body is read (or allocated).
func TestReadStartupOverlongReadsOnlyHeader(t *testing.T) {
	in := append(rawLen(1<<30), bytes.Repeat([]byte{'a'}, 100)...)
	_, r, err := readStartupBytes(in)
	wantCode(t, err, codeProtocolViolation)
	if r.Buffered() != 100 {
		t.Fatalf("%d bytes left buffered, want the 100 body bytes untouched", r.Buffered())
	}
}

// Two packets in a row, as in the SSLRequest-then-StartupMessage flow.
func TestReadStartupSequence(t *testing.T) {
	in := append(packet(sslRequestCode), packet(pgproto3.ProtocolVersion30, params("user", "u"))...)
	r := bufio.NewReader(bytes.NewReader(in))
	m1, err := readStartup(r)
	if _, ok := m1.(*pgproto3.SSLRequest); !ok || err != nil {
		t.Fatalf("first = %#v, %v; want SSLRequest", m1, err)
	}
	m2, err := readStartup(r)
	if sm, ok := m2.(*pgproto3.StartupMessage); !ok || err != nil || sm.Parameters["user"] != "u" {
		t.Fatalf("second = %#v, %v; want StartupMessage for u", m2, err)
	}
	if _, err := readStartup(r); !errors.Is(err, io.EOF) {
		t.Fatalf("third: %v, want io.EOF", err)
	}
}

func startupMsg(kv ...string) *pgproto3.StartupMessage {
	m := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Parameters[kv[i]] = kv[i+1]
	}
	return m
}

func TestParseStartup(t *testing.T) {
	tests := []struct {
		name    string
		kv      []string
		want    *startupParams
		code    string // SQLSTATE of the expected *Error
		mention string // the error message must contain this
	}{
		{
			name: "user and database",
			kv:   []string{"user", "alice", "database", "orders"},
			want: &startupParams{user: "alice", database: "orders", forward: map[string]string{}},
		},
		{
			name: "database defaults to user",
			kv:   []string{"user", "alice"},
			want: &startupParams{user: "alice", database: "alice", forward: map[string]string{}},
		},
		{
			name: "empty database defaults to user",
			kv:   []string{"user", "alice", "database", ""},
			want: &startupParams{user: "alice", database: "alice", forward: map[string]string{}},
		},
		{name: "user required", kv: []string{"database", "orders"}, code: codeInvalidAuth, mention: "user"},
		{name: "empty user refused", kv: []string{"user", "", "database", "orders"}, code: codeInvalidAuth},
		{name: "no parameters", kv: nil, code: codeInvalidAuth},
		{
			name: "application_name",
			kv:   []string{"user", "u", "application_name", "psql"},
			want: &startupParams{user: "u", database: "u", appName: "psql", forward: map[string]string{}},
		},
		{
			name: "fallback_application_name alone",
			kv:   []string{"user", "u", "fallback_application_name", "fallback"},
			want: &startupParams{user: "u", database: "u", appName: "fallback", forward: map[string]string{}},
		},
		{
			name: "application_name beats fallback",
			kv:   []string{"user", "u", "application_name", "app", "fallback_application_name", "fallback"},
			want: &startupParams{user: "u", database: "u", appName: "app", forward: map[string]string{}},
		},
		{
			// libpq semantics: an empty application_name is unset, so the
			// fallback applies.
			name: "empty application_name uses fallback",
			kv:   []string{"user", "u", "application_name", "", "fallback_application_name", "fallback"},
			want: &startupParams{user: "u", database: "u", appName: "fallback", forward: map[string]string{}},
		},
		{name: "replication=database refused", kv: []string{"user", "u", "replication", "database"}, code: codeFeatureNotSupported, mention: "replication"},
		{name: "replication=true refused", kv: []string{"user", "u", "replication", "true"}, code: codeFeatureNotSupported, mention: "replication"},
		{name: "options refused", kv: []string{"user", "u", "options", "-c search_path=evil"}, code: codeFeatureNotSupported, mention: "options"},
		{
			name: "empty options ignored",
			kv:   []string{"user", "u", "options", "  "},
			want: &startupParams{user: "u", database: "u", forward: map[string]string{}},
		},
		{name: "unknown parameter refused", kv: []string{"user", "u", "work_mem", "1GB"}, code: codeProtocolViolation, mention: `"work_mem"`},
		{name: "protocol extension refused", kv: []string{"user", "u", "_pq_.foo", "1"}, code: codeProtocolViolation, mention: `"_pq_.foo"`},
		{name: "empty parameter name refused", kv: []string{"user", "u", "", "x"}, code: codeProtocolViolation},
		{name: "session_authorization refused", kv: []string{"user", "u", "session_authorization", "postgres"}, code: codeProtocolViolation, mention: "session_authorization"},
		{
			name: "allowed parameters forwarded",
			kv: []string{"user", "u", "database", "d", "application_name", "a",
				"client_encoding", "UTF8", "DateStyle", "ISO, MDY", "TimeZone", "UTC",
				"extra_float_digits", "3", "search_path", "app,public", "statement_timeout", "5s",
				"default_transaction_read_only", "on", "standard_conforming_strings", "on"},
			want: &startupParams{user: "u", database: "d", appName: "a", forward: map[string]string{
				"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
				"extra_float_digits": "3", "search_path": "app,public", "statement_timeout": "5s",
				"default_transaction_read_only": "on", "standard_conforming_strings": "on",
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Parameters are a map: repeat so that every iteration order
			// has a chance to show an order dependence.
			for range 50 {
				p, err := parseStartup(startupMsg(tt.kv...))
				if tt.code != "" {
					pe := wantCode(t, err, tt.code)
					if p != nil {
						t.Errorf("params = %+v, want nil", p)
					}
					if !strings.Contains(pe.Message, tt.mention) {
						t.Errorf("message %q does not mention %q", pe.Message, tt.mention)
					}
					continue
				}
				if err != nil {
					t.Fatalf("parseStartup: %v", err)
				}
				if !reflect.DeepEqual(p, tt.want) {
					t.Fatalf("parseStartup = %+v, want %+v", p, tt.want)
				}
			}
		})
	}
}

// Every parameter in forwardedParams is forwarded, and the error for an
// unknown one lists them.
func TestParseStartupForwardsEveryAllowedParameter(t *testing.T) {
	for k := range forwardedParams {
		if k == "application_name" {
			continue // becomes appName, checked above
		}
		p, err := parseStartup(startupMsg("user", "u", k, "v"))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if p.forward[k] != "v" || len(p.forward) != 1 {
			t.Fatalf("%s: forward = %v", k, p.forward)
		}
	}
	_, err := parseStartup(startupMsg("user", "u", "nope", "v"))
	pe := wantCode(t, err, codeProtocolViolation)
	for _, k := range []string{"user", "database", "application_name", "search_path", "TimeZone"} {
		if !strings.Contains(pe.Message, k) {
			t.Errorf("message %q does not list %s", pe.Message, k)
		}
	}
}

// A packet with several refused parameters gets the same error every
// time, not one picked by map iteration order.
func TestParseStartupErrorIsDeterministic(t *testing.T) {
	m := startupMsg("user", "u", "options", "-c x=y", "work_mem", "1GB", "replication", "true", "zzz", "1")
	_, first := parseStartup(m)
	if first == nil {
		t.Fatal("accepted")
	}
	for range 100 {
		if _, err := parseStartup(m); err.Error() != first.Error() {
			t.Fatalf("error changed: %v vs %v", err, first)
		}
	}
}

func TestAllowedListHasNoDuplicates(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range strings.Split(allowedList(), ", ") {
		if seen[k] {
			t.Errorf("%q listed twice in %q", k, allowedList())
		}
		seen[k] = true
	}
}

func TestStartupParamsKey(t *testing.T) {
	parse := func(kv ...string) *startupParams {
		t.Helper()
		p, err := parseStartup(startupMsg(kv...))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := []string{"user", "u", "search_path", "a", "TimeZone", "UTC", "client_encoding", "UTF8"}

	// Order independence: the same parameters, given in any order and
	// keyed repeatedly, give the same key.
	want := parse(base...).key("dbproxy:svc")
	reordered := parse("client_encoding", "UTF8", "TimeZone", "UTC", "user", "u", "search_path", "a")
	byHand := &startupParams{user: "u", database: "u", forward: map[string]string{}}
	for _, k := range []string{"TimeZone", "client_encoding", "search_path"} {
		byHand.forward[k] = parse(base...).forward[k]
	}
	for range 50 {
		if got := reordered.key("dbproxy:svc"); got != want {
			t.Fatalf("key depends on order: %q vs %q", got, want)
		}
		if got := byHand.key("dbproxy:svc"); got != want {
			t.Fatalf("key depends on insertion order: %q vs %q", got, want)
		}
	}

	// user and database select the pool, not the key: they do not matter.
	if got := parse("user", "other", "database", "x", "search_path", "a", "TimeZone", "UTC", "client_encoding", "UTF8").key("dbproxy:svc"); got != want {
		t.Errorf("key depends on user/database: %q vs %q", got, want)
	}

	differ := map[string]string{
		"value differs":     parse("user", "u", "search_path", "b", "TimeZone", "UTC", "client_encoding", "UTF8").key("dbproxy:svc"),
		"parameter missing": parse("user", "u", "search_path", "a", "TimeZone", "UTC").key("dbproxy:svc"),
		"parameter added":   parse(append(base, "statement_timeout", "1s")...).key("dbproxy:svc"),
		"name differs":      parse("user", "u", "search_path", "a", "timezone", "UTC", "client_encoding", "UTF8").key("dbproxy:svc"),
		"app name differs":  parse(base...).key("dbproxy:svc:psql"),
		"no app name":       parse(base...).key(""),
	}
	seen := map[string]string{want: "base"}
	for name, k := range differ {
		if prev, dup := seen[k]; dup {
			t.Errorf("%s: key %q equals that of %s", name, k, prev)
		}
		seen[k] = name
	}

	// Separators cannot be forged with '=' in a value or the app name (NUL,
	// the other separator, cannot occur in a decoded startup string).
	a := (&startupParams{forward: map[string]string{"search_path": "x", "TimeZone": "y"}}).key("")
	c := (&startupParams{forward: map[string]string{"search_path": "x=TimeZone=y"}}).key("")
	d := (&startupParams{forward: map[string]string{"TimeZone": "y"}}).key("search_path=x")
	if a == c || a == d || c == d {
		t.Errorf("distinct parameters share a key: %q %q %q", a, c, d)
	}
}

// The body is allocated only after the length word is checked: a bogus
// length costs the error message, not the length. Averaged over many
// calls to smooth the runtime's span-granular allocation accounting.
func TestReadStartupAllocationBounded(t *testing.T) {
	const calls = 2000
	for _, tt := range []struct {
		n     uint32
		limit uint64 // bytes per call
	}{
		{maxStartupLen + 1, 2 << 10},
		{1 << 20, 2 << 10},
		{1<<31 - 1, 2 << 10},
		{1<<32 - 1, 2 << 10},
		{maxStartupLen, maxStartupLen + 2<<10}, // truncated: the body buffer, once
	} {
		in := rawLen(tt.n, 0, 3, 0, 0) // truncated after the version
		readers := make([]*bufio.Reader, calls)
		for i := range readers {
			readers[i] = bufio.NewReaderSize(bytes.NewReader(in), 16<<10)
		}
		before := heapAllocated()
		for _, r := range readers {
			if _, err := readStartup(r); err == nil {
				t.Fatalf("length %d: accepted", tt.n)
			}
		}
		if per := (heapAllocated() - before) / calls; per > tt.limit {
			t.Errorf("length %d: %d bytes allocated per call, want <= %d", tt.n, per, tt.limit)
		}
	}
}
