package postgres

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// fuzzFrame encodes one typed message: type, length (itself + body), body.
func fuzzFrame(typ byte, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// FuzzFrames feeds arbitrary bytes, as a client sends them after startup,
// through copyFrame, readFrame and skipFrame with an arbitrary reader buffer and
// message limit, and checks both against a plain model of the framing:
// whole frames come out byte for byte, a length under 4 or over the limit
// is refused before anything of that frame is written, a short stream ends
// in EOF, and nothing panics.
func FuzzFrames(f *testing.F) {
	var stream []byte
	for _, m := range [][]byte{
		fuzzFrame('Q', []byte("select 1\x00")),
		fuzzFrame('P', []byte("s1\x00select $1\x00\x00\x00")),
		fuzzFrame('B', []byte("\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00")),
		fuzzFrame('E', []byte("\x00\x00\x00\x00\x00")),
		fuzzFrame('S', nil),
		fuzzFrame('d', bytes.Repeat([]byte("row\n"), 40)),
		fuzzFrame('X', nil),
	} {
		stream = append(stream, m...)
		f.Add(m, uint16(64), uint32(1<<20))
	}
	f.Add(stream, uint16(16), uint32(1<<20))
	f.Add(stream, uint16(64), uint32(8))                                  // over the limit
	f.Add([]byte{'Q', 0, 0, 0, 3}, uint16(64), uint32(1<<20))             // length under 4
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, uint16(64), uint32(1<<20)) // 4 GiB claimed
	f.Add([]byte{'Q', 0, 0, 0, 200, 'a'}, uint16(64), uint32(1<<20))      // truncated, streamed
	f.Add([]byte{'Q', 0, 0, 0, 9, 'a'}, uint16(64), uint32(1<<20))        // truncated, buffered
	f.Add([]byte{'Q', 0, 0}, uint16(64), uint32(1<<20))                   // truncated header

	f.Fuzz(func(t *testing.T, in []byte, bufSize uint16, limit uint32) {
		// The limit stays small enough that readFrame, which allocates
		// the declared length up front, cannot exhaust the fuzzer's memory.
		maxLen := int(limit % (1<<20 + 1))
		size := max(int(bufSize), 16)
		checkCopyFrames(t, in, size, maxLen)
		checkReadFrames(t, in, size, maxLen)
		checkSkipFrames(t, in, size, maxLen)
	})
}

// modelFrame says what the next frame in rest is: its total length, and
// whether it is refused (bad length) or truncated.
func modelFrame(rest []byte, maxLen int) (n int, refused, truncated bool) {
	if len(rest) < 5 {
		return 0, false, true
	}
	size := int(binary.BigEndian.Uint32(rest[1:5]))
	if size < 4 || size-4 > maxLen {
		return 0, true, false
	}
	return 1 + size, false, len(rest) < 1+size
}

func checkCopyFrames(t *testing.T, in []byte, bufSize, maxLen int) {
	var out bytes.Buffer
	r := bufio.NewReaderSize(bytes.NewReader(in), bufSize)
	w := bufio.NewWriterSize(&out, bufSize)
	pos := 0
	for {
		want, refused, truncated := modelFrame(in[pos:], maxLen)
		typ, body, n, err := copyFrame(r, w, maxLen)
		if ferr := w.Flush(); ferr != nil {
			t.Fatal(ferr)
		}
		switch {
		case refused:
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != codeProgramLimit || n != 0 {
				t.Fatalf("frame at %d: length out of range: n %d, err %v; want a %s error", pos, n, err, codeProgramLimit)
			}
		case truncated:
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("frame at %d: truncated stream: err %v, want EOF", pos, err)
			}
		default:
			if err != nil || n != want || typ != in[pos] {
				t.Fatalf("frame at %d: typ %q n %d err %v; want %q %d", pos, typ, n, err, in[pos], want)
			}
			if body != nil && !bytes.Equal(body, in[pos+5:pos+want]) {
				t.Fatalf("frame at %d: body differs from the input", pos)
			}
			pos += want
		}
		// Whatever was written is exactly the input so far: complete
		// frames, then at most a prefix of a truncated one.
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatalf("wrote %d bytes that are not a prefix of the input", out.Len())
		}
		if refused || truncated {
			if refused && out.Len() != pos {
				t.Fatalf("refused frame at %d, but %d bytes were written", pos, out.Len())
			}
			return
		}
		if out.Len() != pos {
			t.Fatalf("after %d bytes of frames, %d were written", pos, out.Len())
		}
	}
}

func checkReadFrames(t *testing.T, in []byte, bufSize, maxLen int) {
	r := bufio.NewReaderSize(bytes.NewReader(in), bufSize)
	pos := 0
	for {
		want, refused, truncated := modelFrame(in[pos:], maxLen)
		typ, body, err := readFrame(r, maxLen)
		switch {
		case refused || truncated:
			if err == nil {
				t.Fatalf("readFrame at %d: no error for a bad or truncated frame", pos)
			}
			return
		case err != nil || typ != in[pos] || !bytes.Equal(body, in[pos+5:pos+want]):
			t.Fatalf("readFrame at %d: typ %q, %d byte body, err %v", pos, typ, len(body), err)
		}
		pos += want
	}
}

func checkSkipFrames(t *testing.T, in []byte, bufSize, maxLen int) {
	r := bufio.NewReaderSize(bytes.NewReader(in), bufSize)
	pos := 0
	for {
		want, refused, truncated := modelFrame(in[pos:], maxLen)
		typ, err := skipFrame(r, maxLen)
		switch {
		case refused || truncated:
			if err == nil {
				t.Fatalf("skipFrame at %d: no error for a bad or truncated frame", pos)
			}
			return
		case err != nil || typ != in[pos]:
			t.Fatalf("skipFrame at %d: typ %q, err %v", pos, typ, err)
		}
		pos += want
	}
}
