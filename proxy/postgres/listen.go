package postgres

import (
	"regexp"
	"slices"
	"strings"
	"time"
)

// LISTEN across a move (migrate.go): a session-mode session that listens
// is duplex (notifications arrive unasked) and mostly idle, waiting for
// them. When its credential is superseded the session goroutine is woken,
// stops the answer goroutine, opens the new connection with the session's
// state and LISTENs on every channel there, then relays what notifications
// the old connection still holds and closes it, and goes duplex again on
// the new one. Nothing is lost; a notification sent in the instant both
// connections listen can arrive twice (clients of NOTIFY treat it as a
// hint; the PostgreSQL docs advise idempotent handling).

// listenCmdRE is a single LISTEN or UNLISTEN statement dbproxy follows.
var listenCmdRE = regexp.MustCompile(`(?is)^\s*(listen|unlisten)\s+("[^"]+"|[a-z_][\w$]*|\*)\s*;?\s*$`)

// trackListen records a LISTEN or UNLISTEN query's channel and reports
// whether q was one it follows.
func (t *txnSession) trackListen(q []byte) bool {
	m := listenCmdRE.FindSubmatch(q)
	if m == nil {
		return false
	}
	ch := string(m[2])
	if ch[0] != '"' {
		ch = strings.ToLower(ch) // as PostgreSQL folds it
	}
	switch {
	case strings.EqualFold(string(m[1]), "listen"):
		if ch != "*" && !slices.Contains(t.channels, ch) {
			t.channels = append(t.channels, ch)
		}
	case ch == "*":
		t.channels = t.channels[:0]
	default:
		t.channels = slices.DeleteFunc(t.channels, func(c string) bool { return c == ch })
	}
	return true
}

// listenSQL is the LISTEN statements that restore the session's channels.
func (t *txnSession) listenSQL() string {
	var q []byte
	for _, ch := range t.channels {
		q = append(append(append(q, "LISTEN "...), ch...), ';')
	}
	return string(q)
}

// pauseListening stops the answer goroutine of a listening session so the
// session goroutine owns the connection for a move.
func (t *txnSession) pauseListening() error {
	d := t.duplex
	if d == nil {
		return nil
	}
	t.mu.Lock()
	d.release = true
	t.mu.Unlock()
	return t.endDuplex()
}

// relayLeftNotifications relays the notifications the old connection
// received before it was closed: it stopped listening only when it closes.
func (t *txnSession) relayLeftNotifications(up *upstream) error {
	_ = up.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	for {
		typ, body, err := readFrame(up.br, 1<<20)
		if err != nil {
			return nil // timed out (nothing more) or gone: it closes anyway
		}
		if typ == 'A' {
			if _, err := t.s.cbw.Write(appendFrame(nil, 'A', body)); err != nil {
				return err
			}
		}
	}
}

// awaitDuplex waits for the client's next bytes while the answer
// goroutine runs. A listening session is woken there by Superseded to
// move (listen.go), and goes on waiting.
func (s *session) awaitDuplex() error {
	for {
		listen := s.waitingOnListener()
		if listen {
			s.mu.Lock()
			s.idleWaiting = true
			s.mu.Unlock()
		}
		_, err := s.cbr.Peek(1)
		if !listen {
			return err
		}
		s.mu.Lock()
		s.idleWaiting = false
		s.mu.Unlock()
		if !isTimeout(err) || !s.moveWanted.Load() || s.why.Load() != whyNone {
			return err
		}
		_ = s.client.SetReadDeadline(time.Time{})
		if s.why.Load() != whyNone {
			_ = s.client.SetReadDeadline(time.Unix(1, 0)) // a kill came in between
			return err
		}
		s.maybeMove()
	}
}

// waitingOnListener reports a session-mode session idle in the duplex
// relay because it listens: Superseded must wake it to move.
func (s *session) waitingOnListener() bool {
	return !s.txnMode && s.rl.listening && s.rl.duplex != nil
}
