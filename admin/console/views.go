package console

import (
	"encoding/json"
	"net"
	"sort"
	"strconv"
	"time"
)

// The console reads Operations' answers as the JSON the /v1 API sends,
// into its own types, so it depends on no package that produces them.

type sessionView struct {
	ID          uint64    `json:"id"`
	Protocol    string    `json:"protocol"`
	Identity    string    `json:"identity"`
	Method      string    `json:"method"`
	Backend     string    `json:"backend"`
	Role        string    `json:"role"`
	DBUser      string    `json:"db_user"`
	Generation  uint64    `json:"generation"`
	State       string    `json:"state"`
	Since       time.Time `json:"since"`
	Remote      string    `json:"remote"`
	Pinned      string    `json:"pinned"`
	RequestTime time.Time `json:"request_time"`
}

// waiting reports a client with a request in flight and no server
// connection: it waits for a checkout.
func (s sessionView) waiting() bool {
	return s.State == "active" && s.DBUser == "" && s.Backend != Database
}

// user is PgBouncer's user column: the database user the client runs as,
// or its Vault role while it holds no connection.
func (s sessionView) user() string {
	if s.DBUser != "" {
		return s.DBUser
	}
	return s.Role
}

type poolView struct {
	Backend string `json:"backend"`
	Role    string `json:"role"`
	Open    int    `json:"open"`
	Idle    int    `json:"idle"`
	Max     int    `json:"max"`
	Paused  bool   `json:"paused"`
	Waiting int    `json:"waiting"`
}

type leaseView struct {
	Backend     string    `json:"backend"`
	Role        string    `json:"role"`
	Generation  uint64    `json:"generation"`
	LeaseID     string    `json:"lease_id"`
	Username    string    `json:"username"`
	State       string    `json:"state"`
	Reason      string    `json:"reason"`
	IssuedAt    time.Time `json:"issued_at"`
	LeaseEnd    time.Time `json:"lease_end"`
	HardEnd     time.Time `json:"hard_end"`
	Deadline    time.Time `json:"drain_deadline"`
	Renewals    int       `json:"renewals"`
	Connections int       `json:"connections"`
	TTLSeconds  int       `json:"ttl_seconds"`
}

// decode turns an Operations answer into the console's own types.
func decode[T any](v any) []T {
	var out []T
	b, err := json.Marshal(v)
	if err == nil {
		_ = json.Unmarshal(b, &out)
	}
	return out
}

// snapshot is one consistent-enough read of sessions, pools and leases.
type snapshot struct {
	now      time.Time
	sessions []sessionView
	pools    []poolView
	leases   []leaseView
}

func (c *Console) snapshot() snapshot {
	s := snapshot{now: time.Now(), sessions: decode[sessionView](c.opts.Ops.Sessions()),
		pools: decode[poolView](c.opts.Ops.Pools()), leases: decode[leaseView](c.opts.Ops.Leases())}
	sort.Slice(s.sessions, func(i, j int) bool { return s.sessions[i].ID < s.sessions[j].ID })
	sort.Slice(s.pools, func(i, j int) bool {
		a, b := s.pools[i], s.pools[j]
		return a.Backend < b.Backend || a.Backend == b.Backend && a.Role < b.Role
	})
	sort.Slice(s.leases, func(i, j int) bool {
		a, b := s.leases[i], s.leases[j]
		if a.Backend != b.Backend {
			return a.Backend < b.Backend
		}
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		return a.Generation < b.Generation
	})
	return s
}

// lease finds a generation, or a zero one.
func (s snapshot) lease(backend, role string, gen uint64) leaseView {
	for _, l := range s.leases {
		if l.Backend == backend && l.Role == role && l.Generation == gen {
			return l
		}
	}
	return leaseView{}
}

// current is the newest active generation of a pool, or a zero one.
func (s snapshot) current(backend, role string) leaseView {
	var cur leaseView
	for _, l := range s.leases {
		if l.Backend == backend && l.Role == role && l.State == "active" && l.Generation >= cur.Generation {
			cur = l
		}
	}
	return cur
}

// splitAddr splits a remote address into PgBouncer's addr and port; a
// unix socket peer is addr "unix".
func splitAddr(a string) (string, int) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "unix", 0
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

// waitFor is how long a waiting client has waited, 0 for others.
func waitFor(s sessionView, now time.Time) time.Duration {
	if !s.waiting() || s.RequestTime.IsZero() {
		return 0
	}
	return max(now.Sub(s.RequestTime), 0)
}
