// Command myfloor is a measuring tool, not product code: the smallest
// MySQL/MariaDB relay Go can be on this machine, so that `make bench` can
// put dbproxy next to the cost floor of the language and runtime (issue 9).
//
// One goroutine per client, synchronous, no pooling: each client gets its
// own server connection, dialled at accept. The handshake is relayed byte
// for byte (greeting, the client's response, then the server's answers and
// the client's replies to auth switches and more-data requests until OK or
// ERR), so the client logs in to the server itself. Then, in a loop: read
// one command, write it upstream with one flush, relay its complete answer
// (result sets up to the last EOF/OK without SERVER_MORE_RESULTS_EXISTS,
// prepare answers with their parameter and column definitions), flush the
// client.
//
// It does not do what a real proxy must: no TLS, no LOAD DATA LOCAL
// INFILE, no COM_CHANGE_USER, no cursors (COM_STMT_FETCH), no length caps,
// no deadlines. It allocates nothing per command, so what it costs is
// syscalls, the netpoller and the scheduler.
//
//	myfloor -listen 127.0.0.1:6544 -upstream 127.0.0.1:3306
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
)

const (
	bufSize         = 16 << 10
	maxPayload      = 0xffffff
	capDeprecateEOF = 1 << 24
	moreResults     = 0x0008 // SERVER_MORE_RESULTS_EXISTS
)

func main() {
	listen := flag.String("listen", "127.0.0.1:6544", "address to accept clients on")
	upstream := flag.String("upstream", "127.0.0.1:3306", "MySQL/MariaDB server address")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "myfloor: listening on %s, upstream %s\n", ln.Addr(), *upstream)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c, *upstream)
	}
}

// relay is one client and its server connection.
type relay struct {
	cr, sr       *bufio.Reader
	cw, sw       *bufio.Writer
	deprecateEOF bool
	head         []byte // the start of the last packet's payload (a view of head0)
	head0        [128]byte
	plen         int // the last packet's payload length
}

func serve(client net.Conn, upstream string) {
	defer client.Close()
	server, err := net.Dial("tcp", upstream)
	if err != nil {
		log.Printf("dial upstream: %v", err)
		return
	}
	defer server.Close()
	r := &relay{
		cr: bufio.NewReaderSize(client, bufSize), cw: bufio.NewWriterSize(client, bufSize),
		sr: bufio.NewReaderSize(server, bufSize), sw: bufio.NewWriterSize(server, bufSize),
	}
	if r.handshake() != nil {
		return
	}
	for {
		if r.copy(r.sw, r.cr) != nil || r.first() == 0x01 { // COM_QUIT
			r.sw.Flush()
			return
		}
		if r.sw.Flush() != nil || r.answer(r.first()) != nil || r.cw.Flush() != nil {
			return
		}
	}
}

// handshake relays the greeting, the client's response and the exchange
// that follows until the server says OK (or ERR).
func (r *relay) handshake() error {
	if r.copy(r.cw, r.sr) != nil || r.cw.Flush() != nil {
		return errors.New("greeting")
	}
	var srvCaps uint32
	if i := bytes.IndexByte(r.head[1:], 0) + 1 + 1 + 4 + 8 + 1; i > 13 && len(r.head) >= i+7 {
		srvCaps = uint32(binary.LittleEndian.Uint16(r.head[i:])) | uint32(binary.LittleEndian.Uint16(r.head[i+5:]))<<16
	}
	if r.copy(r.sw, r.cr) != nil || r.sw.Flush() != nil || len(r.head) < 4 {
		return errors.New("handshake response")
	}
	r.deprecateEOF = srvCaps&binary.LittleEndian.Uint32(r.head)&capDeprecateEOF != 0
	for {
		if err := r.copy(r.cw, r.sr); err != nil || r.cw.Flush() != nil {
			return errors.New("login")
		}
		switch {
		case r.first() == 0x00:
			return nil
		case r.first() == 0xff:
			return errors.New("login refused")
		case r.first() == 0xfe || (r.first() == 0x01 && len(r.head) > 1 && r.head[1] == 0x04): // auth switch; full auth
			if r.copy(r.sw, r.cr) != nil || r.sw.Flush() != nil {
				return errors.New("auth reply")
			}
		}
	}
}

// answer relays the server's complete answer to a command.
func (r *relay) answer(cmd byte) error {
	switch cmd {
	case 0x18, 0x19: // COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE: no answer
		return nil
	case 0x16: // COM_STMT_PREPARE: OK, then parameter and column definitions
		if err := r.copy(r.cw, r.sr); err != nil || r.first() != 0x00 || len(r.head) < 9 {
			return err
		}
		cols, params := int(binary.LittleEndian.Uint16(r.head[5:])), int(binary.LittleEndian.Uint16(r.head[7:]))
		for _, n := range [2]int{params, cols} {
			if n > 0 && !r.deprecateEOF {
				n++ // EOF after the definitions
			}
			if err := r.relayN(n); err != nil {
				return err
			}
		}
		return nil
	case 0x03, 0x17: // COM_QUERY, COM_STMT_EXECUTE: result sets
		return r.results()
	default: // one packet: OK, ERR, EOF or a string
		return r.copy(r.cw, r.sr)
	}
}

// results relays result sets until one ends without more results.
func (r *relay) results() error {
	for {
		if err := r.copy(r.cw, r.sr); err != nil || r.first() == 0xff {
			return err
		}
		if r.first() == 0x00 { // OK: no result set
			if r.status()&moreResults == 0 {
				return nil
			}
			continue
		}
		n, _ := lenenc(r.head) // column count
		if !r.deprecateEOF {
			n++
		}
		if err := r.relayN(int(n)); err != nil {
			return err
		}
		for { // rows, up to EOF (OK with 0xfe under DEPRECATE_EOF) or ERR
			if err := r.copy(r.cw, r.sr); err != nil || r.first() == 0xff {
				return err
			}
			if r.first() == 0xfe && (r.plen < 9 || r.deprecateEOF && r.plen < maxPayload) {
				break
			}
		}
		if r.status()&moreResults == 0 {
			return nil
		}
	}
}

// status is the server status of the last packet, an OK or EOF.
func (r *relay) status() uint16 {
	p := r.head
	if r.first() == 0xfe && !r.deprecateEOF { // EOF: 0xfe, warnings, status
		if len(p) < 5 {
			return 0
		}
		return binary.LittleEndian.Uint16(p[3:])
	}
	_, a := lenenc(p[1:])                       // affected rows
	_, b := lenenc(p[1+a:])                     // last insert id
	if i := 1 + a + b; i > 2 && len(p) >= i+2 { // both parsed
		return binary.LittleEndian.Uint16(p[i:])
	}
	return 0
}

// lenenc decodes a length-encoded integer: its value and size (0 if short).
func lenenc(p []byte) (v uint64, size int) {
	if len(p) == 0 || p[0] == 0xfb || p[0] == 0xff {
		return 0, 0
	} else if p[0] < 0xfb {
		return uint64(p[0]), 1
	}
	if size = [3]int{3, 4, 9}[p[0]-0xfc]; len(p) < size {
		return 0, 0
	}
	for i := size - 1; i >= 1; i-- {
		v = v<<8 | uint64(p[i])
	}
	return v, size
}

func (r *relay) first() byte {
	if len(r.head) == 0 {
		return 0
	}
	return r.head[0]
}

// relayN relays n packets from the server to the client.
func (r *relay) relayN(n int) error {
	for ; n > 0; n-- {
		if err := r.copy(r.cw, r.sr); err != nil {
			return err
		}
	}
	return nil
}

// copy relays one packet (and its continuations when it is 16 MiB or
// more) from src to dst, keeping the start of its payload in r.head.
func (r *relay) copy(dst *bufio.Writer, src *bufio.Reader) error {
	for cont := false; ; cont = true {
		h, err := src.Peek(4)
		if err != nil {
			return err
		}
		n := int(h[0]) | int(h[1])<<8 | int(h[2])<<16
		if !cont {
			r.plen = n
			if h, err = src.Peek(4 + min(n, len(r.head0))); err != nil {
				return err
			}
			r.head = r.head0[:copy(r.head0[:], h[4:])]
		}
		for left := 4 + n; left > 0; {
			k := min(left, src.Size())
			if b := src.Buffered(); b > 0 && b < k {
				k = b
			}
			b, err := src.Peek(k)
			if err != nil {
				return err
			}
			dst.Write(b)
			src.Discard(k)
			left -= k
		}
		if n < maxPayload {
			return nil
		}
	}
}
