package frontend

import "bufio"

// Buffers are the client-side readers and writers of one size that idle
// sessions give back and active ones borrow: an idle client then costs
// little more than its socket. They wait in bounded free lists, not a
// sync.Pool: a GC empties a sync.Pool, and refilling it would allocate on
// the hot path.
type Buffers struct {
	size    int
	readers chan *bufio.Reader
	writers chan *bufio.Writer
}

// NewBuffers keeps at most max readers and max writers of size bytes.
func NewBuffers(size, max int) *Buffers {
	return &Buffers{size: size, readers: make(chan *bufio.Reader, max), writers: make(chan *bufio.Writer, max)}
}

// Reader returns a free reader or a new one.
func (b *Buffers) Reader() *bufio.Reader {
	select {
	case r := <-b.readers:
		return r
	default:
		return bufio.NewReaderSize(nil, b.size)
	}
}

// Writer returns a free writer or a new one.
func (b *Buffers) Writer() *bufio.Writer {
	select {
	case w := <-b.writers:
		return w
	default:
		return bufio.NewWriterSize(nil, b.size)
	}
}

// PutReader gives r back; it must not be used again.
func (b *Buffers) PutReader(r *bufio.Reader) {
	r.Reset(nil)
	select {
	case b.readers <- r:
	default:
	}
}

// PutWriter gives w back; it must not be used again.
func (b *Buffers) PutWriter(w *bufio.Writer) {
	w.Reset(nil)
	select {
	case b.writers <- w:
	default:
	}
}
