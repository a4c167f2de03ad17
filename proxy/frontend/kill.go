package frontend

import (
	"strings"
	"sync/atomic"
	"unicode"

	"go.uber.org/zap"
)

// An operator ends one session by its ID (admin API, CLI, SQL console)
// and may say why; the client is told that reason in its protocol's
// error. IDs are unique in the process across protocols, so one number
// names a session whichever front end holds it.

// nextSessionID numbers sessions of every Server in the process.
var nextSessionID atomic.Uint64

// tracked is what the registry keeps per open session.
type tracked struct {
	id uint64
	// note is the operator's reason for a kill, once there is one.
	note atomic.Pointer[string]
}

// MaxKillReason caps the reason an operator gives, in bytes.
const MaxKillReason = 200

// CleanKillReason makes an operator's reason fit for a client's error
// message: control characters become spaces, the length is capped.
func CleanKillReason(r string) string {
	r = strings.Map(func(c rune) rune {
		if unicode.IsControl(c) {
			return ' '
		}
		return c
	}, strings.TrimSpace(r))
	if len(r) > MaxKillReason {
		// A rune cut in two is dropped.
		r = strings.ToValidUTF8(r[:MaxKillReason], "")
	}
	return r
}

// id is s's session ID, or 0 if it is not tracked.
func (f *Server[S]) id(s S) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.sessions[s]; t != nil {
		return t.id
	}
	return 0
}

// KillID stops the session with ID id for an operator (KillByOperator),
// recording reason (cleaned) for the client's error message. It returns
// the session as it was and false if no open session has that ID.
func (f *Server[S]) KillID(id uint64, reason string) (SessionInfo, bool) {
	var (
		target S
		t      *tracked
	)
	f.mu.Lock()
	for s, tr := range f.sessions {
		if tr.id == id {
			target, t = s, tr
			break
		}
	}
	f.mu.Unlock()
	if t == nil {
		return SessionInfo{}, false
	}
	reason = CleanKillReason(reason)
	t.note.Store(&reason)
	si := target.Info()
	si.ID = id
	f.log.Info("session killed by an operator", zap.Uint64("session_id", id), zap.String("protocol", si.Protocol),
		zap.String("identity", si.Identity), zap.String("backend", si.Backend), zap.String("remote", si.Remote),
		zap.String("reason", reason))
	target.Kill(KillByOperator)
	return si, true
}

// KillNote is the reason an operator gave for killing s ("" if none),
// for the message the session's client gets.
func (f *Server[S]) KillNote(s S) string {
	f.mu.Lock()
	t := f.sessions[s]
	f.mu.Unlock()
	if t == nil {
		return ""
	}
	if p := t.note.Load(); p != nil {
		return *p
	}
	return ""
}

// OperatorKillText is the message both protocols give a client whose
// session an operator killed.
func OperatorKillText(reason string) string {
	if reason == "" {
		return "an operator of dbproxy killed this session"
	}
	return "an operator of dbproxy killed this session: " + reason
}
