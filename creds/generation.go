package creds

import (
	"sync"
	"time"
)

// State is where a generation is in its life.
type State int

const (
	// Active: new connections may use it (only the newest generation is).
	Active State = iota
	// Draining: superseded; existing connections finish their transaction.
	Draining
	// Expired: past the drain deadline; every connection must close now.
	Expired
	// Revoked: the lease is gone; nothing may use it.
	Revoked
)

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Draining:
		return "draining"
	case Expired:
		return "expired"
	default:
		return "revoked"
	}
}

// Generation is one credential: from database/creds/ROLE and its lease, or
// one password of a static role or KV secret (static.go), which has none.
// Connections made with it Acquire it and Release it when they close; once
// it is superseded and released by all, its lease is revoked.
type Generation struct {
	N        uint64
	Backend  string
	Role     string
	Username string
	LeaseID  string
	IssuedAt time.Time

	password string
	src      *Source

	// Static and KV credentials (static.go): version tells one password
	// from the next (last_vault_rotation or the KV version), checkAt is
	// when to read the secret again (zero: never), rotation is when Vault
	// rotates a static password next.
	version  string
	checkAt  time.Time
	rotation time.Time

	mu       sync.Mutex
	ttl      time.Duration // lease duration at issue; each renewal asks for it again
	leaseEnd time.Time
	hardEnd  time.Time // zero while unknown
	// endsWithToken: the hard end is dbproxy's token expiry, not max_ttl.
	endsWithToken bool
	renewable     bool
	renewals      int
	fails         int // consecutive failed renewals or revocations, for backoff
	nextRenew     time.Time
	state         State
	reason        string
	deadline      time.Time // drain deadline, set when draining starts
	refs          int
	// opRevoke: an operator revoke (Source.Revoke) owns the Vault call for
	// this lease; leaseRevoked: that call succeeded, so retiring the
	// generation needs none.
	opRevoke, leaseRevoked bool
	drainCh                chan struct{}
	expireCh               chan struct{}
}

func newGeneration(src *Source, n uint64) *Generation {
	return &Generation{N: n, src: src, drainCh: make(chan struct{}), expireCh: make(chan struct{})}
}

// Password is the credential's password. It is a method, not a field, so
// that printing a Generation never prints it.
func (g *Generation) Password() string { return g.password }

// Acquire records a new connection using this credential. It fails once
// the generation is past its drain deadline or revoked.
func (g *Generation) Acquire() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state >= Expired {
		return false
	}
	g.refs++
	return true
}

// Release records that a connection using this credential closed.
func (g *Generation) Release() {
	g.mu.Lock()
	g.refs--
	idle := g.refs == 0 && g.state != Active
	g.mu.Unlock()
	if idle && g.src != nil {
		g.src.poke()
	}
}

// Draining is closed when the generation is superseded: connections
// should close at their next transaction boundary.
func (g *Generation) Draining() <-chan struct{} { return g.drainCh }

// Expired is closed at the drain deadline: connections must close now.
func (g *Generation) Expired() <-chan struct{} { return g.expireCh }

// Reason says why the generation was superseded, for client messages.
func (g *Generation) Reason() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reason
}

// AuthFailed tells the source that the database refused this credential,
// which means the lease was revoked behind our back.
func (g *Generation) AuthFailed() {
	if g.src != nil {
		g.src.reportGone(g, "auth_failed")
	}
}

// Info is a snapshot of a generation for the admin API.
type Info struct {
	Backend     string    `json:"backend"`
	Role        string    `json:"role"`
	Generation  uint64    `json:"generation"`
	LeaseID     string    `json:"lease_id"`
	Username    string    `json:"username"`
	State       string    `json:"state"`
	Reason      string    `json:"reason,omitempty"`
	IssuedAt    time.Time `json:"issued_at"`
	LeaseEnd    time.Time `json:"lease_end"`
	HardEnd     time.Time `json:"hard_end,omitzero"`
	Deadline    time.Time `json:"drain_deadline,omitzero"`
	Renewals    int       `json:"renewals"`
	Connections int       `json:"connections"`
	// TTLSeconds is the lease duration Vault granted at issue.
	TTLSeconds int `json:"ttl_seconds"`
	// Kind is static or kv for those sources; absent for dynamic leases.
	Kind string `json:"kind,omitempty"`
	// Version is a static password's last_vault_rotation or the KV
	// secret's version.
	Version string `json:"version,omitempty"`
	// NextRotation is when Vault rotates a static password next.
	NextRotation time.Time `json:"next_rotation,omitzero"`
	// Fleet is the shared state in fleet mode; absent otherwise.
	Fleet *FleetInfo `json:"fleet,omitempty"`
}

// FleetInfo is what this instance knows of its fleet, for one generation.
type FleetInfo struct {
	Name     string `json:"name"`
	Instance string `json:"instance"`
	// Issuer is the lock holder; IsIssuer says whether that is us.
	Issuer   string `json:"issuer"`
	IsIssuer bool   `json:"is_issuer"`
	Term     uint64 `json:"term"`
	// Members are the instances in the record, live or not.
	Members []FleetMember `json:"members"`
	// DrainedBy lists the instances done with this generation.
	DrainedBy map[string]time.Time `json:"drained_by,omitempty"`
	// LagSeconds is the age of this instance's view of the records.
	LagSeconds float64 `json:"lag_seconds"`
}

// FleetMember is one instance as the record shows it.
type FleetMember struct {
	ID   string    `json:"id"`
	Seen time.Time `json:"seen"`
	Live bool      `json:"live"`
}

// Info returns a snapshot for display.
func (g *Generation) Info() Info {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Info{
		Backend: g.Backend, Role: g.Role, Generation: g.N, LeaseID: g.LeaseID,
		Username: g.Username, State: g.state.String(), Reason: g.reason,
		IssuedAt: g.IssuedAt, LeaseEnd: g.leaseEnd, HardEnd: g.hardEnd,
		Deadline: g.deadline, Renewals: g.renewals, Connections: g.refs,
		TTLSeconds: int(g.ttl.Seconds()), Version: g.version, NextRotation: g.rotation,
		Kind: g.kindName(),
	}
}

// State returns the generation's current state.
func (g *Generation) State() State {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state
}

// startDrain moves an active generation to Draining with a deadline.
// Callers hold no lock.
func (g *Generation) startDrain(reason string, deadline time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != Active {
		if !deadline.IsZero() && (g.deadline.IsZero() || deadline.Before(g.deadline)) {
			g.deadline = deadline
		}
		return
	}
	g.state = Draining
	g.reason = reason
	g.deadline = deadline
	close(g.drainCh)
}

// expire moves a draining generation past its deadline.
func (g *Generation) expire() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.expireLocked()
}

// retireIfUnused expires a superseded generation that no connection
// holds, in one step with respect to Acquire: once it says true, no new
// connection can start with a credential about to be revoked.
func (g *Generation) retireIfUnused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == Active || g.refs > 0 || g.opRevoke && !g.leaseRevoked {
		return false
	}
	g.expireLocked()
	return true
}

func (g *Generation) expireLocked() {
	if g.state >= Expired {
		return
	}
	if g.state == Active {
		close(g.drainCh)
	}
	g.state = Expired
	close(g.expireCh)
}
