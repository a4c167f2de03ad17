package mysql

import (
	"testing"
)

// trackerOp is one step of a tracker fuzz script: the client side
// expecting an answer of kind, or the upstream side's packet b whose
// logical packet is n bytes long.
type trackerOp struct {
	expect bool
	kind   respKind
	b      []byte
	n      int
}

// trackerScript decodes arbitrary bytes into steps. A byte below 0x20
// expects kind op%8 (7 is no kind dbproxy uses); any other byte starts a
// packet of op-0x20 payload bytes, followed by a byte that stretches the
// logical length n past the bytes seen (by up to 16 MiB, as a packet the
// relay only peeked at would).
func trackerScript(in []byte) []trackerOp {
	var ops []trackerOp
	for len(in) > 0 {
		op := in[0]
		in = in[1:]
		if op < 0x20 {
			ops = append(ops, trackerOp{expect: true, kind: respKind(op % 8)})
			continue
		}
		l := min(int(op-0x20), len(in))
		b := in[:l]
		in = in[l:]
		n := len(b)
		if len(in) > 0 {
			if e := in[0]; e >= 0x80 {
				n += int(e-0x80) << 17
			}
			in = in[1:]
		}
		ops = append(ops, trackerOp{b: b, n: n})
	}
	return ops
}

// FuzzTracker feeds the command/response tracker arbitrary server packets
// after expects of arbitrary kinds. It must never panic, never complete
// more answers than were expected, and keep idle() true exactly when
// every expected answer is complete. An error ends the script, as it ends
// the session.
func FuzzTracker(f *testing.F) {
	const (
		qry   = byte(respQuery)
		prep  = byte(respPrepare)
		exec  = byte(respExecute)
		fetch = byte(respFetch)
		list  = byte(respFieldList)
		one   = byte(respSimple)
	)
	pkt := func(payload ...byte) []byte { return append([]byte{byte(0x20 + len(payload))}, append(payload, 0)...) }
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	ok := pkt(0x00, 0, 0, 0x02, 0, 0, 0)
	okMore := pkt(0x00, 0, 0, 0x0a, 0, 0, 0) // SERVER_MORE_RESULTS_EXISTS
	eof := pkt(0xfe, 0, 0, 0x02, 0)
	eofCursor := pkt(0xfe, 0, 0, 0x42, 0) // SERVER_STATUS_CURSOR_EXISTS
	errp := pkt(0xff, 0x15, 0x04, '#', 'H', 'Y', '0', '0', '0', 'x')
	col := pkt(3, 'd', 'e', 'f', 0, 0, 0, 1, 'a')
	row := pkt(1, '1')

	for _, deprecateEOF := range []bool{false, true} {
		f.Add(cat([]byte{one}, ok), deprecateEOF)
		f.Add(cat([]byte{qry}, pkt(1), col, eof, row, row, eof), deprecateEOF)
		f.Add(cat([]byte{qry, qry}, okMore, ok, errp), deprecateEOF)
		f.Add(cat([]byte{qry}, pkt(2), col, col, eof, row, pkt(0xfe, 0, 0, 0x0a, 0), ok), deprecateEOF)
		f.Add(cat([]byte{prep}, pkt(0, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0), col, col, eof, col, eof), deprecateEOF)
		f.Add(cat([]byte{exec}, pkt(1), col, eofCursor, []byte{fetch}, row, eof), deprecateEOF)
		f.Add(cat([]byte{list}, col, col, eof), deprecateEOF)
		f.Add(cat([]byte{qry}, pkt(0xfb, 'f')), deprecateEOF) // LOCAL INFILE
		f.Add(cat(errp, ok), deprecateEOF)                    // unsolicited ERR, then a stray OK
		f.Add(cat([]byte{7, 0, qry}, []byte{0x20, 0xff}, ok), deprecateEOF)
		f.Add(cat([]byte{qry}, pkt(0xfc, 0xff, 0xff), col, []byte{0x21, 0xfe, 0xff}), deprecateEOF)
	}

	f.Fuzz(func(t *testing.T, script []byte, deprecateEOF bool) {
		tr := newTracker(deprecateEOF)
		expected, done := 0, 0
		for i, op := range trackerScript(script) {
			if op.expect {
				tr.expect(op.kind)
				if op.kind != respNone {
					expected++
				}
				continue
			}
			ev, err := tr.packet(op.b, op.n)
			if ev.done {
				done++
			}
			if done > expected {
				t.Fatalf("step %d: %d answers complete, only %d expected", i, done, expected)
			}
			if ev.errPacket && ev.done {
				t.Fatalf("step %d: an unsolicited ERR also completed an answer", i)
			}
			if p := tr.pending.Load(); p != int64(expected-done) || tr.idle() != (p == 0) {
				t.Fatalf("step %d: pending %d, idle %v; %d expected, %d complete", i, p, tr.idle(), expected, done)
			}
			if err != nil {
				return
			}
		}
	})
}
