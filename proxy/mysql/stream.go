package mysql

import (
	"io"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// Commands larger than the client's read buffer (64 KiB): a bulk INSERT,
// a row with a large BLOB. The relay looks at the start of one where it
// lies in the buffer and, for the commands whose start says all it needs
// (queries other than the session-state statements, statement executes
// and long data), sends it upstream as it arrives, so a session's memory
// does not grow with the size of its commands. Anything else is read
// whole into memory first. A streamed command is never retried: its
// bytes go upstream once.

// streams reports whether a large command whose start is p can be sent
// upstream as it arrives.
func streams(p []byte) bool {
	switch p[0] {
	case gomysql.COM_QUERY:
		// What session state tracking or KILL handling would parse.
		return !wordIn(firstWord(p[1:]), "set", "use", "kill", "prepare", "execute", "deallocate")
	case gomysql.COM_STMT_EXECUTE, gomysql.COM_STMT_SEND_LONG_DATA:
		return true
	}
	return false
}

// readWhole reads the large command still in s.cbr, all its 16 MiB
// parts, into memory.
func (t *txnSession) readWhole() ([]byte, error) {
	s := t.s
	t.large = false
	maxLen := s.srv.opts.MaxMessageBytes
	var p []byte
	for seq := byte(0); ; seq++ {
		n, err := t.nextPart(seq)
		if err != nil {
			return nil, err
		}
		if len(p)+n > maxLen {
			return nil, tooLarge(maxLen)
		}
		p = append(p, make([]byte, n)...)
		if _, err := io.ReadFull(s.cbr, p[len(p)-n:]); err != nil {
			return nil, err
		}
		s.bytesIn.Add(int64(4 + n))
		if n < maxPayload {
			return p, nil
		}
	}
}

// streamUp copies the large command still in s.cbr to the held upstream,
// packet by packet. The start may have been changed in place (a statement
// id). An error from the client's side leaves the upstream with part of a
// command: the session ends and the connection is closed, not reused.
func (t *txnSession) streamUp() error {
	s := t.s
	t.large, t.fresh, t.midStream = false, false, true
	maxLen := s.srv.opts.MaxMessageBytes
	total := 0
	for seq := byte(0); ; seq++ {
		n, err := t.nextPart(seq)
		if err != nil {
			t.poisoned = true
			return err
		}
		if total += n; total > maxLen {
			t.poisoned = true
			return tooLarge(maxLen)
		}
		if _, err := t.up.bw.Write(t.hdr[:]); err != nil {
			return t.hungUp(err)
		}
		m, rerr, werr := copyBytes(s.cbr, t.up.bw, n)
		s.bytesIn.Add(int64(4 + m))
		switch {
		case rerr != nil:
			t.poisoned = true
			return rerr
		case werr != nil:
			return t.hungUp(werr)
		}
		if n < maxPayload {
			t.midStream = false
			if err := t.up.bw.Flush(); err != nil {
				return t.hungUp(err)
			}
			return nil
		}
	}
}

// hungUp handles a server that closed the connection while a command was
// streamed to it, typically one over its max_allowed_packet: the ERR it
// sent first, if any, goes to the client, and the session ends with the
// connection as it would without dbproxy.
func (t *txnSession) hungUp(werr error) error {
	up := t.up
	_ = up.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, p, err := readPacket(up.br, 1<<16)
	if err != nil || len(p) == 0 || p[0] != 0xff {
		return upErr(werr)
	}
	putHeader(t.hdr[:], len(p), 1)
	_, _ = t.s.cbw.Write(t.hdr[:])
	_, _ = t.s.cbw.Write(p)
	t.s.bytesOut.Add(int64(4 + len(p)))
	if err := t.s.flushClient(); err != nil {
		return err
	}
	return errHangup
}

// skipLarge reads past a large command that was answered without going
// upstream.
func (t *txnSession) skipLarge() error {
	s := t.s
	t.large = false
	for seq := byte(0); ; seq++ {
		n, err := t.nextPart(seq)
		if err != nil {
			return err
		}
		if _, err := s.cbr.Discard(n); err != nil {
			return err
		}
		s.bytesIn.Add(int64(4 + n))
		if n < maxPayload {
			return nil
		}
	}
}

// nextPart reads the header of part seq of the large command in s.cbr (a
// 16 MiB part, or the last, shorter one) and returns its payload length.
func (t *txnSession) nextPart(seq byte) (int, error) {
	if _, err := io.ReadFull(t.s.cbr, t.hdr[:]); err != nil {
		return 0, err
	}
	if t.hdr[3] != seq {
		return 0, outOfOrder(seq, t.hdr[3])
	}
	return payloadLen(t.hdr[:]), nil
}
