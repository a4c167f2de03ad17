package postgres

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime/metrics"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// allocLimit bounds what one readStartup+parseStartup may allocate. The
// runtime counts small allocations a whole span per size class at a time,
// so a single call can show 100-200 KiB however little it allocated; the
// limit sits well above that noise and far below a body allocated from an
// unchecked length word (which the fuzzer draws from up to 4 GiB).
// TestReadStartupAllocationBounded checks the tight bound by averaging.
const allocLimit = 1 << 20

var heapAllocs = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

func heapAllocated() uint64 {
	metrics.Read(heapAllocs)
	return heapAllocs[0].Value.Uint64()
}

func FuzzReadStartup(f *testing.F) {
	seed := func(b []byte) { f.Add(b) }
	enc := func(m pgproto3.FrontendMessage) []byte {
		b, err := m.Encode(nil)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	seed(packet(pgproto3.ProtocolVersion30, params("user", "alice", "database", "orders")))
	seed(packet(pgproto3.ProtocolVersion32, params("user", "bob", "database", "orders", "application_name", "psql",
		"client_encoding", "UTF8", "DateStyle", "ISO, MDY", "search_path", "a,b")))
	seed(packet(pgproto3.ProtocolVersion30, params("user", "u", "fallback_application_name", "f", "application_name", "")))
	seed(packet(pgproto3.ProtocolVersion30, params("user", "u", "replication", "database")))
	seed(packet(pgproto3.ProtocolVersion30, params("user", "u", "options", "-c x=y")))
	seed(packet(pgproto3.ProtocolVersion30, params("user", "u", "work_mem", "1GB")))
	seed(packet(pgproto3.ProtocolVersion30, params("database", "d")))
	seed(enc(&pgproto3.SSLRequest{}))
	seed(enc(&pgproto3.GSSEncRequest{}))
	seed(enc(&pgproto3.CancelRequest{ProcessID: 1234, SecretKey: []byte{1, 2, 3, 4}}))
	seed(enc(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: bytes.Repeat([]byte{7}, 32)}))
	// SSLRequest then a StartupMessage, as a client sends them.
	seed(append(enc(&pgproto3.SSLRequest{}), packet(pgproto3.ProtocolVersion30, params("user", "u"))...))
	seed(rawLen(7))
	seed(rawLen(maxStartupLen + 1))
	seed(rawLen(1<<32-1, 0, 3, 0, 0))
	seed(packet(pgproto3.ProtocolVersion30, params("user", "alice"))[:11])
	seed(packet(2 << 16))
	seed([]byte("GET / HTTP/1.1\r\n\r\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		r := bufio.NewReaderSize(src, 16<<10)

		before := heapAllocated()
		msg, err := readStartup(r)
		var sp *startupParams
		var perr error
		sm, isStartup := msg.(*pgproto3.StartupMessage)
		if isStartup {
			sp, perr = parseStartup(sm)
		}
		allocated := heapAllocated() - before

		consumed := len(data) - src.Len() - r.Buffered()
		if consumed > maxStartupLen {
			t.Fatalf("readStartup consumed %d bytes, over the %d byte startup limit", consumed, maxStartupLen)
		}
		if allocated > allocLimit {
			t.Fatalf("readStartup+parseStartup allocated %d bytes for a %d byte input", allocated, len(data))
		}

		if err != nil {
			if msg != nil {
				t.Fatalf("message %#v returned with error %v", msg, err)
			}
			var pe *Error
			switch {
			case errors.As(err, &pe):
				if pe.Code != codeProtocolViolation && pe.Code != codeFeatureNotSupported {
					t.Fatalf("unexpected SQLSTATE %s: %v", pe.Code, err)
				}
				_ = pe.encode(nil)
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			default:
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}
		// An accepted packet is exactly as long as its length word says.
		if len(data) < 4 || consumed != int(binary.BigEndian.Uint32(data)) {
			t.Fatalf("accepted %T after consuming %d bytes, length word says otherwise", msg, consumed)
		}

		switch m := msg.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
		case *pgproto3.CancelRequest:
			roundTrip(t, m)
		case *pgproto3.StartupMessage:
			roundTrip(t, m)
			checkParsed(t, m, sp, perr)
		default:
			t.Fatalf("unexpected message type %T", msg)
		}
	})
}

// roundTrip encodes an accepted message and reads it back.
func roundTrip(t *testing.T, m pgproto3.FrontendMessage) {
	t.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatalf("accepted %#v does not encode: %v", m, err)
	}
	if len(b) > maxStartupLen {
		t.Fatalf("accepted %#v re-encodes to %d bytes, over the limit", m, len(b))
	}
	r := bufio.NewReader(bytes.NewReader(b))
	back, err := readStartup(r)
	if err != nil {
		t.Fatalf("re-encoded %#v (%x) is refused: %v", m, b, err)
	}
	if !reflect.DeepEqual(back, m) {
		t.Fatalf("round trip changed the message:\n got %#v\nwant %#v", back, m)
	}
	if r.Buffered() != 0 {
		t.Fatalf("round trip left %d bytes", r.Buffered())
	}
}

// checkParsed checks parseStartup's result for internal consistency and
// that it does not depend on map iteration order.
func checkParsed(t *testing.T, m *pgproto3.StartupMessage, sp *startupParams, perr error) {
	t.Helper()
	for range 3 {
		sp2, perr2 := parseStartup(m)
		if (perr == nil) != (perr2 == nil) || !reflect.DeepEqual(sp, sp2) {
			t.Fatalf("parseStartup is not deterministic: %+v, %v vs %+v, %v", sp, perr, sp2, perr2)
		}
		if perr != nil && perr2.(*Error).Code != perr.(*Error).Code {
			t.Fatalf("parseStartup error is not deterministic: %v vs %v", perr, perr2)
		}
	}
	if perr != nil {
		var pe *Error
		if !errors.As(perr, &pe) {
			t.Fatalf("parseStartup error %T: %v", perr, perr)
		}
		switch pe.Code {
		case codeProtocolViolation, codeFeatureNotSupported, codeInvalidAuth:
		default:
			t.Fatalf("parseStartup: unexpected SQLSTATE %s", pe.Code)
		}
		_ = pe.encode(nil)
		return
	}
	if sp.user == "" || sp.user != m.Parameters["user"] {
		t.Fatalf("user = %q for %v", sp.user, m.Parameters)
	}
	if sp.database == "" {
		t.Fatalf("empty database for %v", m.Parameters)
	}
	if v := m.Parameters["application_name"]; v != "" && sp.appName != v {
		t.Fatalf("appName = %q, want application_name %q", sp.appName, v)
	}
	if _, ok := m.Parameters["replication"]; ok {
		t.Fatalf("replication accepted: %v", m.Parameters)
	}
	for k, v := range sp.forward {
		if !forwardedParams[k] || k == "application_name" || m.Parameters[k] != v {
			t.Fatalf("forwarded %q=%q from %v", k, v, m.Parameters)
		}
	}
	for k := range m.Parameters {
		switch k {
		case "user", "database", "application_name", "fallback_application_name", "options":
		default:
			if _, ok := sp.forward[k]; !ok {
				t.Fatalf("parameter %q accepted but not forwarded", k)
			}
		}
	}
	_ = sp.key("dbproxy:x")
}
