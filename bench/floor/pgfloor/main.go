// Command pgfloor is a measuring tool, not product code: the smallest
// PostgreSQL relay Go can be on this machine, so that `make bench` can put
// dbproxy next to the cost floor of the language and runtime (issue 9).
//
// One goroutine per client, synchronous, no pooling: each client gets its
// own server connection, dialled at accept. The startup (StartupMessage,
// the server's authentication exchange, ParameterStatus, BackendKeyData)
// is relayed byte for byte until the first ReadyForQuery, so the client
// authenticates to PostgreSQL itself (SCRAM works: there is no TLS to bind
// to). Then, in a loop: read the client's messages up to a request
// boundary (Sync, Query, FunctionCall, Flush), write them upstream with one
// flush, relay the answer until ReadyForQuery (for Flush, until the server
// has nothing more buffered), flush the client.
//
// It does not do what a real proxy must: no TLS or GSS encryption (answers 'N'), no
// CancelRequest, no COPY, no length caps, no deadlines. It allocates
// nothing per transaction, so what it costs is syscalls, the netpoller and
// the scheduler.
//
//	pgfloor -listen 127.0.0.1:6543 -upstream 127.0.0.1:5432
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
)

const bufSize = 16 << 10

func main() {
	listen := flag.String("listen", "127.0.0.1:6543", "address to accept clients on")
	upstream := flag.String("upstream", "127.0.0.1:5432", "PostgreSQL server address")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "pgfloor: listening on %s, upstream %s\n", ln.Addr(), *upstream)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c, *upstream)
	}
}

func serve(client net.Conn, upstream string) {
	defer client.Close()
	server, err := net.Dial("tcp", upstream)
	if err != nil {
		log.Printf("dial upstream: %v", err)
		return
	}
	defer server.Close()
	cr, cw := bufio.NewReaderSize(client, bufSize), bufio.NewWriterSize(client, bufSize)
	sr, sw := bufio.NewReaderSize(server, bufSize), bufio.NewWriterSize(server, bufSize)
	if err := startup(cr, cw, sr, sw); err != nil {
		return
	}
	for {
		// The request: client messages up to a boundary.
		var typ byte
		for {
			if typ, err = copyMsg(sw, cr); err != nil {
				return
			}
			if typ == 'X' {
				sw.Flush()
				return
			}
			if typ == 'S' || typ == 'Q' || typ == 'F' || (typ == 'H' && cr.Buffered() == 0) {
				break
			}
		}
		if sw.Flush() != nil {
			return
		}
		// The answer: up to ReadyForQuery (after Flush: what the server sent).
		for {
			t, err := copyMsg(cw, sr)
			if err != nil {
				return
			}
			if t == 'Z' || (typ == 'H' && sr.Buffered() == 0) {
				break
			}
		}
		if cw.Flush() != nil {
			return
		}
	}
}

// startup relays the startup packet, then the server's messages to the
// client until ReadyForQuery, and one client message (password, SASL)
// after each authentication request that wants an answer.
func startup(cr *bufio.Reader, cw *bufio.Writer, sr *bufio.Reader, sw *bufio.Writer) error {
	for {
		hdr, err := cr.Peek(8)
		if err != nil {
			return err
		}
		if code := binary.BigEndian.Uint32(hdr[4:]); code != 80877103 && code != 80877104 {
			break // not SSLRequest or GSSENCRequest
		}
		cr.Discard(8)
		cw.WriteByte('N')
		cw.Flush()
	}
	if err := copyN(sw, cr, int(binary.BigEndian.Uint32(mustPeek(cr, 4)))); err != nil {
		return err
	}
	sw.Flush()
	for {
		typ, code, err := peekAuth(sr)
		if err != nil {
			return err
		}
		if _, err := copyMsg(cw, sr); err != nil {
			return err
		}
		switch {
		case typ == 'Z':
			return cw.Flush()
		case typ == 'E':
			cw.Flush()
			return errors.New("startup refused")
		case typ == 'R' && (code == 3 || code == 5 || code == 10 || code == 11):
			cw.Flush()
			if _, err := copyMsg(sw, cr); err != nil {
				return err
			}
			sw.Flush()
		}
	}
}

// peekAuth returns the type of the next message and, for 'R', its code.
func peekAuth(r *bufio.Reader) (byte, uint32, error) {
	h, err := r.Peek(5)
	if err != nil {
		return 0, 0, err
	}
	if h[0] != 'R' {
		return h[0], 0, nil
	}
	h, err = r.Peek(9)
	if err != nil {
		return 0, 0, err
	}
	return 'R', binary.BigEndian.Uint32(h[5:]), nil
}

func mustPeek(r *bufio.Reader, n int) []byte {
	b, err := r.Peek(n)
	if err != nil {
		return make([]byte, n) // length 0: copyN fails on the short read
	}
	return b
}

// copyMsg copies one typed message (type, length, body) from src to dst.
func copyMsg(dst *bufio.Writer, src *bufio.Reader) (byte, error) {
	h, err := src.Peek(5)
	if err != nil {
		return 0, err
	}
	typ := h[0]
	return typ, copyN(dst, src, 1+int(binary.BigEndian.Uint32(h[1:])))
}

// copyN copies n bytes through src's buffer, without allocating.
func copyN(dst *bufio.Writer, src *bufio.Reader, n int) error {
	if n < 4 {
		return io.ErrUnexpectedEOF
	}
	for n > 0 {
		k := min(n, src.Size())
		if b := src.Buffered(); b > 0 && b < k {
			k = b
		}
		b, err := src.Peek(k)
		if err != nil {
			return err
		}
		dst.Write(b)
		src.Discard(k)
		n -= k
	}
	return nil
}
