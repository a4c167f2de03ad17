package mysql

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"
)

// KILL through dbproxy. MySQL has no cancel key: a client cancels a query
// by sending "KILL QUERY <id>" on a second connection, with the id the
// greeting gave it (mysql_thread_id, what the mariadb client uses on
// Ctrl-C) or the one CONNECTION_ID() returns. Through dbproxy the first is
// a proxy-issued id and the second is the upstream's thread id, and the
// second connection may be logged in as another Vault user (after a
// rotation), which the server would refuse. So dbproxy answers KILL for
// its own sessions itself: it finds the target by either id, allows it
// only within one identity (ids are guessable, unlike PostgreSQL's cancel
// keys), and kills the query over a side connection with the target's own
// credential, or the whole session by closing it. A KILL for an id that
// is no session of this dbproxy goes to the server unchanged.

// killRE matches KILL [HARD|SOFT] [CONNECTION|QUERY] <id>, MariaDB's and
// MySQL's syntax for a thread id.
var killRE = regexp.MustCompile(`(?is)^\s*KILL\s+(?:(?:HARD|SOFT)\s+)?(?:(CONNECTION|QUERY)\s+)?(\d+)\s*;?\s*$`)

// maxKillQuery bounds the statements intercept looks at.
const maxKillQuery = 128

// intercept answers a command dbproxy handles itself. body is the whole
// command packet. It reports whether the command was answered.
func (s *session) intercept(cmd byte, body []byte) (bool, error) {
	if !s.track.idle() {
		return false, nil // an answer in flight: the reply would overtake it
	}
	var (
		id    uint64
		query bool
	)
	switch cmd {
	case gomysql.COM_QUERY:
		if len(body) > maxKillQuery || !bytes.EqualFold(firstWord(body[1:]), []byte("kill")) {
			return false, nil // most queries: no regexp
		}
		m := killRE.FindSubmatch(body[1:])
		if m == nil {
			return false, nil
		}
		var err error
		if id, err = strconv.ParseUint(string(m[2]), 10, 32); err != nil {
			return false, nil
		}
		query = strings.EqualFold(string(m[1]), "QUERY")
	case gomysql.COM_PROCESS_KILL:
		if len(body) != 5 {
			return false, nil
		}
		id = uint64(binary.LittleEndian.Uint32(body[1:]))
	default:
		return false, nil
	}
	target := s.srv.killTarget(s, uint32(id))
	if target == nil {
		return false, nil
	}
	m := s.srv.metrics.Cancels
	if target.id.Name != s.id.Name {
		m.WithLabelValues("denied").Inc()
		s.log.Info("KILL refused: target belongs to another identity", zap.Uint32("target", uint32(id)))
		e := &Error{Code: erKillDenied, State: "HY000",
			Message: fmt.Sprintf("You are not owner of thread %d: it is a session of another dbproxy identity", id)}
		s.srv.metrics.Errors.WithLabelValues(e.class()).Inc()
		return true, s.reply(e.packet(1))
	}
	if !query {
		target.kill(killByClient)
		m.WithLabelValues("killed").Inc()
		return true, s.reply(okPacket(1, uint16(s.status.Load())))
	}
	if err := s.srv.killQuery(target); err != nil {
		m.WithLabelValues("error").Inc()
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: erUnknownError, State: "HY000", Message: fmt.Sprintf("dbproxy could not forward KILL QUERY: %v", err), Err: err}
		}
		s.log.Warn("forwarding KILL QUERY failed", zap.Error(err))
		return true, s.reply(e.packet(1))
	}
	m.WithLabelValues("forwarded").Inc()
	return true, s.reply(okPacket(1, uint16(s.status.Load())))
}

// killTarget finds a session by the id the greeting gave it or by its
// upstream thread id on the same backend as s.
func (srv *Server) killTarget(s *session, id uint32) *session {
	var byConn, byThread *session
	srv.front.ForEach(func(t *session) {
		switch {
		case t.connID == id:
			byConn = t
		case byThread == nil && t.backend == s.backend:
			if up := t.currentUpstream(); up != nil && up.threadID == id {
				byThread = t
			}
		}
	})
	if byConn != nil {
		return byConn
	}
	return byThread
}

// killQuery stops what target's upstream is running, over a side
// connection logged in with target's own credential (a user may kill its
// own threads without extra privileges).
func (srv *Server) killQuery(target *session) error {
	target.mu.Lock()
	lease := target.lease
	target.mu.Unlock()
	if lease == nil {
		return nil // between upstreams: nothing runs
	}
	up := lease.Conn.(*upstream)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kc, err := dial(ctx, target.backend, lease.Gen, dialParams{collation: "utf8mb4_general_ci", charset: "utf8mb4",
		attrs: map[string]string{"program_name": "dbproxy:kill"}})
	if err != nil {
		return err
	}
	defer kc.Close()
	if err := kc.exec(ctx, fmt.Sprintf("KILL QUERY %d", up.threadID)); err != nil {
		return err
	}
	return nil
}
