package postgres

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// readUntil reads frames until one of type stop, returning the types seen
// and the message of the last ErrorResponse.
func (h *relayHarness) readUntil(t *testing.T, stop byte) (string, string) {
	t.Helper()
	_ = h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = h.client.SetReadDeadline(time.Time{}) }()
	var types []byte
	msg := ""
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(h.cr, hdr[:]); err != nil {
			return string(types), msg + " (" + err.Error() + ")"
		}
		body := make([]byte, int(binary.BigEndian.Uint32(hdr[1:]))-4)
		if _, err := io.ReadFull(h.cr, body); err != nil {
			t.Fatal(err)
		}
		types = append(types, hdr[0])
		if hdr[0] == 'E' {
			msg = string(body)
		}
		if hdr[0] == stop {
			return string(types), msg
		}
	}
}

func TestRelayIdleShutdownClosesOnlyIdle(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			h := startRelay(t, mode)
			h.roundTrip(t, simpleQuery)
			h.srvKillIdle()
			types, msg := h.readUntil(t, 'E')
			if types != "E" || !strings.Contains(msg, "57P01") || !strings.Contains(msg, "idle session") {
				t.Fatalf("got %q %q, want one FATAL 57P01 naming the idle shutdown", types, msg)
			}
			select {
			case <-h.done:
			case <-time.After(5 * time.Second):
				t.Fatal("session did not end")
			}
		})
	}
}

func TestRelayShutdownKillsTransaction(t *testing.T) {
	h := startRelay(t, "session")
	// Open a transaction: the fake answers every Query with status I, so
	// fake it by sending a partial request (the session is busy).
	if _, err := h.client.Write(simpleQuery[:3]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	h.srvKillIdle() // busy: must not be closed as idle
	select {
	case <-h.done:
		t.Fatal("a busy session was closed as idle")
	case <-time.After(200 * time.Millisecond):
	}
	h.srvKill()
	types, msg := h.readUntil(t, 'E')
	if !strings.HasSuffix(types, "E") || !strings.Contains(msg, "shutting down") {
		t.Fatalf("got %q %q", types, msg)
	}
	<-h.done
}

// A checkout that fails between transactions costs the request, not the
// session: ERROR + ReadyForQuery, and the next request works.
func TestRelayCheckoutFailureIsNotFatal(t *testing.T) {
	h := startRelay(t, "transaction")
	h.roundTrip(t, simpleQuery)
	h.pool.Pause()
	_, _ = h.client.Write(simpleQuery)
	types, msg := h.readUntil(t, 'Z')
	if types != "EZ" || !strings.Contains(msg, "SERROR") || !strings.Contains(msg, "57P03") {
		t.Fatalf("got %q %q, want ERROR 57P03 then ReadyForQuery", types, msg)
	}
	h.pool.Resume()
	if st := h.roundTrip(t, simpleQuery); st != 'I' {
		t.Fatalf("status %c after the refused request", st)
	}
}

// A client that pipelines far more than the socket buffers hold before
// reading anything: the relay must not deadlock (it goes duplex).
func TestRelayLargePipeline(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			h := startRelay(t, mode)
			q := frameOf('Q', "SELECT '"+strings.Repeat("x", 1000)+"'\x00")
			const n = 5000 // 5 MB of queries, 300 KB of answers
			wrote := make(chan error, 1)
			go func() {
				_, err := h.client.Write(bytes.Repeat(q, n))
				wrote <- err
			}()
			// Nothing is read before everything is written.
			select {
			case err := <-wrote:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("the relay stopped reading the client's pipeline (deadlock)")
			}
			_ = h.client.SetReadDeadline(time.Now().Add(60 * time.Second))
			for i := range n {
				if st := h.roundTripRead(t); st != 'I' {
					t.Fatalf("answer %d: status %c", i, st)
				}
			}

		})
	}
}

// roundTripRead reads one answer up to ReadyForQuery.
func (h *relayHarness) roundTripRead(t *testing.T) byte {
	for {
		hdr, err := h.cr.Peek(5)
		if err != nil {
			t.Fatal(err)
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) + 1
		if hdr[0] == 'Z' {
			b, _ := h.cr.Peek(6)
			st := b[5]
			_, _ = h.cr.Discard(n)
			return st
		}
		_, _ = h.cr.Discard(n)
	}
}

func TestRelayUnknownMessageRefusedLocally(t *testing.T) {
	h := startRelay(t, "transaction")
	h.roundTrip(t, simpleQuery)
	_, _ = h.client.Write(frameOf('z', "junk"))
	types, msg := h.readUntil(t, 'E')
	if types != "E" || !strings.Contains(msg, "08P01") {
		t.Fatalf("got %q %q", types, msg)
	}
	if st := h.pool.Stats(); st.Open != 1 || st.Idle != 1 {
		t.Fatalf("pool %+v: the refused message must not cost a server connection", st)
	}
}

// The server answers a big result while the client is still sending a
// large second query: the server stops reading until its answer is read,
// so the relay must switch to duplex (deterministic with small buffers).
func TestRelayStalledPipelineGoesDuplex(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			h := startRelay(t, mode)
			h.roundTrip(t, simpleQuery)
			big := frameOf('Q', "BIG\x00")
			second := frameOf('Q', "SELECT '"+strings.Repeat("y", 2<<20)+"'\x00")
			wrote := make(chan error, 1)
			go func() {
				_, err := h.client.Write(append(big, second...))
				wrote <- err
			}()
			select {
			case err := <-wrote:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("deadlock: the relay never read the server's answer while forwarding")
			}
			_ = h.client.SetReadDeadline(time.Now().Add(30 * time.Second))
			for range 2 {
				if st := h.roundTripRead(t); st != 'I' {
					t.Fatalf("status %c", st)
				}
			}
			if got := testutil.ToFloat64(h.s.srv.metrics.duplex); got < 1 {
				t.Fatalf("duplex switches = %v, want the stall noticed", got)
			}
			// Back to one goroutine: a plain request works.
			if st := h.roundTrip(t, simpleQuery); st != 'I' {
				t.Fatalf("status %c", st)
			}
		})
	}
}

// A pooled connection the server ended while idle costs the client
// nothing: the request goes to another connection.
func TestRelayRetriesDeadPooledConnection(t *testing.T) {
	for _, goodbye := range []bool{false, true} {
		name := "closed"
		if goodbye {
			name = "fatal_then_closed"
		}
		t.Run(name, func(t *testing.T) {
			h := startRelay(t, "transaction")
			h.roundTrip(t, simpleQuery)
			h.fake.terminateAll(goodbye)
			for _, req := range [][]byte{simpleQuery, extendedTxn} {
				if st := h.roundTrip(t, req); st != 'I' {
					t.Fatalf("status %c", st)
				}
				h.fake.terminateAll(goodbye)
			}
			if got := testutil.ToFloat64(h.s.srv.metrics.Retries); got != 2 {
				t.Fatalf("retries = %v, want 2", got)
			}
		})
	}
}

// A client whose state must be applied (RESET/SET swallowed in front of
// its request) and whose Parse the connection already has (a fake
// ParseComplete): the fake comes right after the swallowed answer, and
// the request is answered in full (this hung once).
func TestRelayStateApplyThenFakeParse(t *testing.T) {
	h := startRelay(t, "transaction")
	if st := h.roundTrip(t, prepareStmt); st != 'I' {
		t.Fatalf("status %c", st)
	}
	for i := range 3 {
		// A new state each time: the connection's tag never matches.
		h.s.rl.sets = []setStmt{{name: "application_name", sql: "SET application_name = 'x" + strings.Repeat("y", i) + "'"}}
		h.s.rl.setTag = stateTag(h.s.rl.sets)
		_ = h.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if st := h.roundTrip(t, prepareStmt); st != 'I' {
			t.Fatalf("round %d: status %c", i, st)
		}
		if st := h.roundTrip(t, preparedExec); st != 'I' {
			t.Fatalf("round %d exec: status %c", i, st)
		}
	}
}
