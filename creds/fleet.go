package creds

// Fleet mode: many dbproxy instances, one credential generation.
//
// Without it every instance fetches its own credential for each (backend,
// role): N sidecars mean N leases, N database users created and dropped at
// every rotation, N times the renewals. With `fleet:` set, instances that
// share a fleet name share each (backend, role) generation. The shared
// state lives in Vault's KV v2 engine, written with check-and-set: it is
// the replicated store users already run (Vault's Raft replicates it, its
// ACLs guard it, every dbproxy already talks to it), so dbproxy runs no
// consensus of its own and needs no new infrastructure.
//
// # Records
//
// Per (backend, role), under <kv_mount>/data/<kv_path>/<fleet>/<backend>/<role>/:
//
//	lock        {holder, term, expires}
//	generation  {term, issuer, generations: [{n, username, password,
//	            lease_id, renewable, ttl, issued_at, lease_end, hard_end,
//	            state, reason, drain_deadline, drained_by: {id: time}}],
//	            members: {id: {seen, beat}}, rotate: {reason, by, at}}
//
// Every write carries cas = the version just read, so concurrent writers
// never lose each other's updates: a writer that loses the race reads
// again, re-applies its change and retries.
//
// # Issuer
//
// The lock is a lease-style lock. The instance holding it, the issuer,
// extends it (CAS) every lock_ttl/3. Another instance takes it over (CAS,
// term+1) once the lock's version has not changed for lock_ttl as measured
// on its own clock, so clock skew between hosts does not matter. The
// issuer runs exactly the single-instance Source logic (fetch, renew,
// rotate, drain deadlines, revoke) and publishes each change to the
// generation record. A new generation is published before it is used: if
// publishing fails, its lease is revoked at once. The record's term fences
// a deposed issuer: it writes only while record.term equals its own term,
// and steps down when it sees a newer one.
//
// # Followers
//
// Every other instance polls the generation record (a KV read returns the
// version; jittered interval of poll_interval/2..poll_interval, backoff on
// errors, never a hot loop) and adopts what it finds as its own Generation
// objects, so pools and relays see no difference: the newest active
// generation is Current, a draining one drains its connections by the
// published deadline with the same Draining/Expired mechanics, and lease
// end and hard end follow the issuer's renewals. When none of its
// connections holds a superseded generation any more, the follower records
// that in drained_by. Followers never renew or revoke.
//
// # Revocation, liveness, failover
//
// Members write a heartbeat (beat counter) into the record. The issuer
// counts an instance live while its beat changed within three heartbeat
// intervals of its own clock, and revokes a superseded lease once every
// live instance has drained it, or at its drain deadline, whichever comes
// first. If the issuer dies, its leases must live on: they are tied to the
// token that created them and die with it, so dbproxy's token must be an
// orphan or periodic token from a token role (see docs/fleet.md). The next
// issuer adopts the published generations, renews them and rotates them.
//
// # Partition
//
// An instance that cannot reach Vault keeps serving its current generation
// until the lease end it last saw, like a single dbproxy in an outage, and
// re-adopts the published state when Vault answers again. An issuer that
// cannot extend its lock within lock_ttl steps down, so at most one
// instance acts as issuer at a time in the fleet's view.
//
// # Shutdown
//
// A stopping instance removes itself from members (CAS). The issuer also
// frees the lock so another takes over at once. Whoever removes the last
// live member revokes every remaining lease, so the fleet leaves no
// database user behind; CAS makes "last" exact when instances stop
// together.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// FleetOptions turns fleet mode on. A zero Name leaves it off.
type FleetOptions struct {
	// Name: instances with the same name share generations.
	Name string
	// KVMount is the KV v2 mount holding the records. Default "secret".
	KVMount string
	// KVPath is the path under the mount. Default "dbproxy/fleet".
	KVPath string
	// InstanceID names this instance in the records. Default
	// hostname-pid-random, unique per process start.
	InstanceID string
	// LockTTL: an issuer that has not extended its lock this long is
	// replaced. Keep it well under the credentials' TTL. Default 10s.
	LockTTL time.Duration
	// PollInterval: the records are read every PollInterval/2 to
	// PollInterval (jittered). Default 2s.
	PollInterval time.Duration
}

func (o FleetOptions) withDefaults() FleetOptions {
	if o.KVMount == "" {
		o.KVMount = "secret"
	}
	if o.KVPath == "" {
		o.KVPath = "dbproxy/fleet"
	}
	if o.InstanceID == "" {
		o.InstanceID = defaultInstanceID()
	}
	if o.LockTTL <= 0 {
		o.LockTTL = 10 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 2 * time.Second
	}
	return o
}

func defaultInstanceID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "dbproxy"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// heartbeat is how often a member refreshes its entry; an instance whose
// beat has not changed for liveWindow is no longer waited for.
func (o FleetOptions) heartbeat() time.Duration { return max(2*o.PollInterval, o.LockTTL/2) }

func (o FleetOptions) liveWindow() time.Duration { return 3*o.heartbeat() + o.PollInterval }

// renewLead is how long before its lease end the issuer renews at the
// latest, so that a successor has time to notice the issuer is gone and
// renew before the lease runs out.
func (o FleetOptions) renewLead() time.Duration { return o.LockTTL + 2*o.PollInterval + time.Second }

// lockRecord is the issuer lock of one (backend, role).
type lockRecord struct {
	Holder  string    `json:"holder"`
	Term    uint64    `json:"term"`
	Expires time.Time `json:"expires"`
}

// genRecord is one published generation.
type genRecord struct {
	N         uint64               `json:"n"`
	Username  string               `json:"username"`
	Password  string               `json:"password"`
	LeaseID   string               `json:"lease_id"`
	Renewable bool                 `json:"renewable"`
	TTL       int64                `json:"ttl_seconds"`
	IssuedAt  time.Time            `json:"issued_at"`
	LeaseEnd  time.Time            `json:"lease_end"`
	HardEnd   time.Time            `json:"hard_end,omitzero"`
	ByToken   bool                 `json:"hard_end_is_token_end,omitempty"`
	State     string               `json:"state"`
	Reason    string               `json:"reason,omitempty"`
	Deadline  time.Time            `json:"drain_deadline,omitzero"`
	DrainedBy map[string]time.Time `json:"drained_by,omitempty"`
}

// member is one instance's heartbeat.
type member struct {
	Seen time.Time `json:"seen"`
	Beat uint64    `json:"beat"`
}

// rotateRequest asks the issuer for a new generation (manual rotation or
// a credential refused by the database, seen by a follower).
type rotateRequest struct {
	Reason string    `json:"reason"`
	By     string    `json:"by"`
	At     time.Time `json:"at"`
}

// fleetRecord is the generation record of one (backend, role).
type fleetRecord struct {
	Term        uint64            `json:"term"`
	Issuer      string            `json:"issuer"`
	Generations []genRecord       `json:"generations"`
	Members     map[string]member `json:"members"`
	Rotate      *rotateRequest    `json:"rotate,omitempty"`
}

func (r *fleetRecord) gen(n uint64) *genRecord {
	for i := range r.Generations {
		if r.Generations[i].N == n {
			return &r.Generations[i]
		}
	}
	return nil
}

// clone is a deep copy, so a failed write leaves the cached view intact.
func (r fleetRecord) clone() fleetRecord {
	var out fleetRecord
	b, _ := json.Marshal(r)
	_ = json.Unmarshal(b, &out)
	if out.Members == nil {
		out.Members = map[string]member{}
	}
	return out
}
