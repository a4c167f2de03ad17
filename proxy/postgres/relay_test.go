package postgres

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// frame renders a typed message: type, length (including itself), body.
func frame(typ byte, body []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(body)))
	return append(b, body...)
}

// typedHeader is a typed message header with an arbitrary length word.
func typedHeader(typ byte, size uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{typ}, size)
}

const testReaderSize = 64 // bufio's minimum is 16

func newTestRelay(in []byte) (*bufio.Reader, *bufio.Writer, *bytes.Buffer) {
	var out bytes.Buffer
	return bufio.NewReaderSize(bytes.NewReader(in), testReaderSize), bufio.NewWriterSize(&out, testReaderSize), &out
}

func TestCopyFrame(t *testing.T) {
	pattern := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i * 7)
		}
		return b
	}
	tests := []struct {
		name     string
		typ      byte
		body     []byte
		buffered bool // fits the reader's buffer: body is returned
	}{
		{"empty body", 'S', nil, true},
		{"ReadyForQuery", 'Z', []byte{'I'}, true},
		{"small query", 'Q', []byte("SELECT 1\x00"), true},
		{"exactly the buffer", 'd', pattern(testReaderSize - 5), true},
		{"one byte over the buffer", 'd', pattern(testReaderSize - 4), false},
		{"large", 'D', pattern(10 * testReaderSize), false},
		{"very large", 'd', pattern(1 << 20), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := frame(tt.typ, tt.body)
			next := frame('Z', []byte{'T'})
			r, w, out := newTestRelay(append(append([]byte{}, f...), next...))

			typ, body, n, err := copyFrame(r, w, 1<<20)
			if err != nil {
				t.Fatalf("copyFrame: %v", err)
			}
			if typ != tt.typ || n != len(f) {
				t.Fatalf("typ, n = %q, %d; want %q, %d", typ, n, tt.typ, len(f))
			}
			if tt.buffered {
				if !bytes.Equal(body, tt.body) {
					t.Fatalf("body = %q, want %q", body, tt.body)
				}
				if body == nil {
					t.Fatalf("buffered frame: body is nil, want an empty slice")
				}
			} else if body != nil {
				t.Fatalf("streamed frame: body has %d bytes, want nil", len(body))
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), f) {
				t.Fatalf("wrote %d bytes, want the %d byte frame unchanged", out.Len(), len(f))
			}

			// The next frame is untouched and copies too.
			out.Reset()
			typ, body, n, err = copyFrame(r, w, 1<<20)
			if err != nil || typ != 'Z' || string(body) != "T" || n != len(next) {
				t.Fatalf("next frame: %q %q %d %v", typ, body, n, err)
			}
			_ = w.Flush()
			if !bytes.Equal(out.Bytes(), next) {
				t.Fatalf("next frame written as %x", out.Bytes())
			}
			if _, _, _, err := copyFrame(r, w, 1<<20); !errors.Is(err, io.EOF) {
				t.Fatalf("after the last frame: %v, want io.EOF", err)
			}
		})
	}
}

// A streamed frame is never held whole: the writer sees it in pieces no
// larger than the reader's buffer.
func TestCopyFrameStreams(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 100_000)
	f := frame('d', body)
	cw := &chunkWriter{}
	r := bufio.NewReaderSize(bytes.NewReader(f), 4096)
	w := bufio.NewWriterSize(cw, 4096)
	_, got, n, err := copyFrame(r, w, len(body))
	if err != nil || got != nil || n != len(f) {
		t.Fatalf("copyFrame = body %d bytes, n %d, %v", len(got), n, err)
	}
	_ = w.Flush()
	if cw.total != len(f) || cw.max > 4096 {
		t.Fatalf("writer saw %d bytes in chunks of up to %d, want %d in chunks <= 4096", cw.total, cw.max, len(f))
	}
}

type chunkWriter struct{ total, max int }

func (c *chunkWriter) Write(p []byte) (int, error) {
	c.total += len(p)
	c.max = max(c.max, len(p))
	return len(p), nil
}

func TestCopyFrameLimits(t *testing.T) {
	const limit = 100
	tests := []struct {
		name string
		in   []byte
	}{
		{"length 0", typedHeader('Q', 0)},
		{"length 3", append(typedHeader('Q', 3), "abc"...)},
		{"body one over the limit", frame('Q', make([]byte, limit+1))},
		{"length 2^31", append(typedHeader('d', 1<<31), "data"...)},
		{"length 2^32-1", append(typedHeader('d', 1<<32-1), "data"...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w, out := newTestRelay(tt.in)
			typ, body, n, err := copyFrame(r, w, limit)
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != codeProgramLimit || pe.Severity != "FATAL" {
				t.Fatalf("error = %v, want *Error with SQLSTATE %s", err, codeProgramLimit)
			}
			if typ != tt.in[0] || body != nil || n != 0 {
				t.Fatalf("typ, body, n = %q, %q, %d; want %q, nil, 0", typ, body, n, tt.in[0])
			}
			if !strings.Contains(pe.Message, "100") {
				t.Errorf("message %q does not name the limit", pe.Message)
			}
			if w.Buffered() != 0 {
				t.Fatalf("%d bytes written to the writer's buffer", w.Buffered())
			}
			_ = w.Flush()
			if out.Len() != 0 {
				t.Fatalf("%d bytes written", out.Len())
			}
		})
	}

	t.Run("body at the limit", func(t *testing.T) {
		f := frame('Q', make([]byte, limit))
		r, w, out := newTestRelay(f)
		if _, _, n, err := copyFrame(r, w, limit); err != nil || n != len(f) {
			t.Fatalf("copyFrame = %d, %v", n, err)
		}
		_ = w.Flush()
		if !bytes.Equal(out.Bytes(), f) {
			t.Fatal("frame not copied unchanged")
		}
	})
}

func TestCopyFrameTruncated(t *testing.T) {
	t.Run("header", func(t *testing.T) {
		r, w, out := newTestRelay([]byte{'Q', 0, 0})
		if _, _, _, err := copyFrame(r, w, 1<<20); !errors.Is(err, io.EOF) {
			t.Fatalf("error = %v, want io.EOF", err)
		}
		_ = w.Flush()
		if out.Len() != 0 {
			t.Fatalf("%d bytes written", out.Len())
		}
	})
	t.Run("buffered body", func(t *testing.T) {
		f := frame('Q', []byte("SELECT 1\x00"))
		r, w, out := newTestRelay(f[:len(f)-3])
		_, body, n, err := copyFrame(r, w, 1<<20)
		if err == nil || body != nil || n != 0 {
			t.Fatalf("copyFrame = %q, %d, %v; want an error", body, n, err)
		}
		_ = w.Flush()
		if out.Len() != 0 {
			t.Fatalf("%d bytes of a partial frame written", out.Len())
		}
	})
	t.Run("streamed body", func(t *testing.T) {
		f := frame('d', make([]byte, 1000))
		r, w, _ := newTestRelay(f[:500])
		_, body, n, err := copyFrame(r, w, 1<<20)
		if !errors.Is(err, io.EOF) || body != nil || n != 500 {
			t.Fatalf("copyFrame = %d bytes, n %d, %v; want n 500 and io.EOF", len(body), n, err)
		}
	})
}

func TestCopyFrameWriteError(t *testing.T) {
	boom := errors.New("boom")
	// A frame larger than the writer's buffer reaches the failing writer
	// inside copyFrame; a smaller one only at the caller's Flush.
	f := frame('d', make([]byte, 1000))
	r := bufio.NewReaderSize(bytes.NewReader(f), testReaderSize)
	w := bufio.NewWriterSize(failWriter{boom}, 16)
	if _, _, _, err := copyFrame(r, w, 1<<20); !errors.Is(err, boom) {
		t.Fatalf("large frame: error = %v, want %v", err, boom)
	}
	f = frame('Z', []byte{'I'})
	r = bufio.NewReaderSize(bytes.NewReader(f), testReaderSize)
	w = bufio.NewWriterSize(failWriter{boom}, 16)
	if _, _, _, err := copyFrame(r, w, 1<<20); err != nil {
		t.Fatalf("small frame: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, boom) {
		t.Fatalf("small frame flush: %v, want %v", err, boom)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestReadFrame(t *testing.T) {
	const limit = 64
	tests := []struct {
		name    string
		in      []byte
		typ     byte
		body    []byte
		wantErr bool
		errIs   error
	}{
		{name: "empty body", in: frame('1', nil), typ: '1', body: []byte{}},
		{name: "small", in: frame('R', []byte{0, 0, 0, 0}), typ: 'R', body: []byte{0, 0, 0, 0}},
		{name: "at the limit", in: frame('S', make([]byte, limit)), typ: 'S', body: make([]byte, limit)},
		{name: "one over the limit", in: frame('S', make([]byte, limit+1)), wantErr: true},
		{name: "length 3", in: typedHeader('R', 3), wantErr: true},
		{name: "length 0", in: typedHeader('R', 0), wantErr: true},
		{name: "length 2^32-1", in: typedHeader('R', 1<<32-1), wantErr: true},
		{name: "no input", in: nil, wantErr: true, errIs: io.EOF},
		{name: "short header", in: []byte{'R', 0}, wantErr: true, errIs: io.ErrUnexpectedEOF},
		{name: "truncated body", in: frame('S', []byte("abcdef"))[:8], wantErr: true, errIs: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bufio.NewReaderSize(bytes.NewReader(tt.in), testReaderSize)
			typ, body, err := readFrame(r, limit)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("readFrame = %q, %d bytes; want an error", typ, len(body))
				}
				if tt.errIs != nil && !errors.Is(err, tt.errIs) {
					t.Fatalf("error = %v, want %v", err, tt.errIs)
				}
				if body != nil {
					t.Fatalf("body = %q with error", body)
				}
				return
			}
			if err != nil {
				t.Fatalf("readFrame: %v", err)
			}
			if typ != tt.typ || !bytes.Equal(body, tt.body) || body == nil {
				t.Fatalf("readFrame = %q, %q; want %q, %q", typ, body, tt.typ, tt.body)
			}
		})
	}
}

// An over-limit length is refused from the header: the body is neither
// read nor allocated.
func TestReadFrameOverLimitReadsOnlyHeader(t *testing.T) {
	in := append(typedHeader('D', 1<<30), bytes.Repeat([]byte{'z'}, 20)...)
	r := bufio.NewReaderSize(bytes.NewReader(in), testReaderSize)
	const calls = 1000
	before := heapAllocated()
	for range calls {
		if _, _, err := readFrame(bufio.NewReaderSize(bytes.NewReader(in), testReaderSize), 1<<20); err == nil {
			t.Fatal("accepted")
		}
	}
	// The reader itself is ~100 bytes plus its 64 byte buffer; the error a
	// few hundred. 1<<30 would be a gigabyte per call.
	if per := (heapAllocated() - before) / calls; per > 4<<10 {
		t.Fatalf("%d bytes allocated per call", per)
	}
	if _, _, err := readFrame(r, 1<<20); err == nil {
		t.Fatal("accepted")
	}
	if r.Buffered() != 20 {
		t.Fatalf("%d bytes left buffered, want the 20 body bytes untouched", r.Buffered())
	}
}
