// Package events keeps a bounded in-memory log of credential lifecycle
// events: the last rotations, revocations and lost leases with their
// reasons (for the status page and GET /v1/events), and counts per
// (backend, role, kind, reason) over the last MaxAge (for `dbproxy
// report`). Events are recorded by the credential sources at the rare
// moments a lease changes, never per transaction.
package events

import (
	"sort"
	"sync"
	"time"
)

// Kind is what happened to a credential.
type Kind string

// The kinds of event. Renewed is only counted, not listed: a lease renews
// every few minutes and would push the rotations off the list.
const (
	Issued      Kind = "issued"        // a new credential from Vault (a rotation; Reason says why)
	IssueFailed Kind = "issue_failed"  // the first failed fetch of a run of failures
	Renewed     Kind = "renewed"       // a lease renewal (Reason "capped" when max_ttl capped it; "error" or "gone" when it failed)
	RevokeFail  Kind = "revoke_failed" // a failed revoke of a superseded lease, retried (counted only)
	Revoked     Kind = "revoked"       // dbproxy revoked a lease in Vault (Reason: what superseded it)
	Expired     Kind = "expired"       // a lease ended before dbproxy revoked it: expired without renewal
	Lost        Kind = "lost"          // the lease vanished outside dbproxy or the database refused it
)

// Event is one credential lifecycle event.
type Event struct {
	Time       time.Time `json:"time"`
	Kind       Kind      `json:"kind"`
	Backend    string    `json:"backend"`
	Role       string    `json:"role"`
	Generation uint64    `json:"generation"`
	Reason     string    `json:"reason"`
	Result     string    `json:"result"`
	// Connections the credential still had when it was cut, if any.
	Connections int `json:"connections,omitempty"`
}

// Count is how many events of one kind and reason a (backend, role) had
// within the window.
type Count struct {
	Backend string `json:"backend"`
	Role    string `json:"role"`
	Kind    Kind   `json:"kind"`
	Reason  string `json:"reason,omitempty"`
	N       int    `json:"count"`
}

// Options bound a Log. Zero values take the defaults.
type Options struct {
	// MaxEvents listed (default 200); older ones drop off the list but
	// stay counted until MaxAge.
	MaxEvents int
	// MaxAge drops events and counts older than this (default 24h).
	MaxAge time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// bucketWidth is the resolution of the counts' window: an event is
// counted until the minute it falls in is MaxAge old.
const bucketWidth = time.Minute

type countKey struct {
	backend, role string
	kind          Kind
	reason        string
}

type bucket struct {
	start int64 // Unix minute
	n     int
}

// Log is the event log. A nil *Log records nothing and lists nothing.
type Log struct {
	opts   Options
	mu     sync.Mutex
	list   []Event // oldest first, at most MaxEvents
	counts map[countKey][]bucket
}

// New makes an empty Log.
func New(o Options) *Log {
	if o.MaxEvents <= 0 {
		o.MaxEvents = 200
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Log{opts: o, counts: map[countKey][]bucket{}}
}

// MaxAge is the window of Events and Counts.
func (l *Log) MaxAge() time.Duration {
	if l == nil {
		return 0
	}
	return l.opts.MaxAge
}

// Record lists and counts e; a zero Time is now.
func (l *Log) Record(e Event) {
	if l == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = l.opts.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.list) == l.opts.MaxEvents {
		copy(l.list, l.list[1:])
		l.list = l.list[:len(l.list)-1]
	}
	l.list = append(l.list, e)
	l.countLocked(countKey{e.Backend, e.Role, e.Kind, e.Reason}, e.Time)
}

// Count counts an event without listing it (renewals).
func (l *Log) Count(kind Kind, backend, role, reason string) {
	if l == nil {
		return
	}
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.countLocked(countKey{backend, role, kind, reason}, now)
}

func (l *Log) countLocked(k countKey, at time.Time) {
	m := at.Unix() / int64(bucketWidth/time.Second)
	bs := l.counts[k]
	if n := len(bs); n > 0 && bs[n-1].start >= m {
		// Same minute, or a clock step back: count it in the last bucket.
		bs[n-1].n++
		return
	}
	l.counts[k] = append(l.trimmed(bs, at), bucket{start: m, n: 1})
}

// trimmed drops the buckets that have left the window ending at now.
func (l *Log) trimmed(bs []bucket, now time.Time) []bucket {
	oldest := now.Add(-l.opts.MaxAge).Unix() / int64(bucketWidth/time.Second)
	i := 0
	for i < len(bs) && bs[i].start < oldest {
		i++
	}
	return bs[i:]
}

// Events lists the events of the last MaxAge, newest first.
func (l *Log) Events() []Event {
	if l == nil {
		return []Event{}
	}
	from := l.opts.Now().Add(-l.opts.MaxAge)
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Event, 0, len(l.list))
	for i := len(l.list) - 1; i >= 0 && !l.list[i].Time.Before(from); i-- {
		out = append(out, l.list[i])
	}
	return out
}

// Counts returns the non-zero counts of the last MaxAge, ordered by
// backend, role, kind and reason.
func (l *Log) Counts() []Count {
	if l == nil {
		return []Count{}
	}
	now := l.opts.Now()
	l.mu.Lock()
	out := make([]Count, 0, len(l.counts))
	for k, bs := range l.counts {
		bs = l.trimmed(bs, now)
		if len(bs) == 0 {
			delete(l.counts, k) // a role gone by a reload leaves no trace
			continue
		}
		l.counts[k] = bs
		c := Count{Backend: k.backend, Role: k.role, Kind: k.kind, Reason: k.reason}
		for _, b := range bs {
			c.N += b.n
		}
		out = append(out, c)
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Backend != b.Backend {
			return a.Backend < b.Backend
		}
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Reason < b.Reason
	})
	return out
}
