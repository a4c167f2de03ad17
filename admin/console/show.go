package console

import (
	"time"
)

// show builds the table for SHOW what.
func (c *Console) show(what string) (*table, error) {
	switch what {
	case "POOLS":
		return c.showPools(c.snapshot()), nil
	case "CLIENTS":
		return c.showClients(c.snapshot()), nil
	case "SERVERS":
		return c.showServers(c.snapshot())
	case "LEASES":
		return c.showLeases(c.snapshot()), nil
	case "STATS":
		return c.showStats()
	case "CONFIG":
		t := &table{cols: textCols("key", "value", "changeable")}
		for _, s := range c.opts.Config {
			t.add(s.Key, s.Value, "no")
		}
		return t, nil
	case "VERSION":
		t := &table{cols: textCols("version")}
		t.add("dbproxy " + c.opts.Version)
		return t, nil
	}
	return showHelp(), nil
}

func showHelp() *table {
	t := &table{cols: textCols("command", "description")}
	for _, h := range [][2]string{
		{"SHOW POOLS", "one row per backend and Vault role: clients, server connections, pool mode, current credential"},
		{"SHOW CLIENTS", "one row per client session of either protocol, with its id for KILL"},
		{"SHOW SERVERS", "one row per upstream connection lent to a client, and per idle one"},
		{"SHOW LEASES", "one row per credential generation: state, lease end, hard end, renewals, connections"},
		{"SHOW STATS", "transactions, queries and their times, and checkout waits, per backend and identity"},
		{"SHOW CONFIG", "the configuration dbproxy runs with (file paths, never secrets)"},
		{"SHOW VERSION", "dbproxy's version"},
		{"PAUSE [backend]", "hold new transactions (and sessions) back; those in flight finish"},
		{"RESUME [backend]", "let them go on"},
		{"RECONNECT [backend]", "close idle server connections now and busy ones when returned (drain)"},
		{"ROTATE backend", "fetch a new credential; the old one drains"},
		{"KILL client_id ['reason']", "end one client session; its client is told the reason"},
		{"WAIT_CLOSE [backend]", "wait until server connections of superseded credentials, and those a RECONNECT marked, are closed"},
	} {
		t.add(h[0], h[1])
	}
	return t
}

// Column groups shared by the views: dbproxy's own columns follow
// PgBouncer's.
var credentialCols = cols(intCols("generation"), textCols("lease_end", "hard_end"))

func (c *Console) showPools(s snapshot) *table {
	t := &table{cols: cols(textCols("database", "user"),
		intCols("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait", "maxwait_us"),
		textCols("pool_mode", "protocol", "role"), intCols("max_connections", "paused"), credentialCols)}
	for _, p := range s.pools {
		clients, waitingSessions := 0, 0
		var maxWait time.Duration
		for _, cl := range s.sessions {
			if cl.Backend != p.Backend || cl.Role != p.Role {
				continue
			}
			clients++
			if cl.waiting() {
				waitingSessions++
				maxWait = max(maxWait, waitFor(cl, s.now))
			}
		}
		b := c.opts.Backends[p.Backend]
		cur := s.current(p.Backend, p.Role)
		t.add(p.Backend, cur.Username, max(clients-waitingSessions, 0), max(p.Waiting, waitingSessions),
			p.Open-p.Idle, p.Idle, 0, int64(maxWait/time.Second), int64(maxWait%time.Second/time.Microsecond),
			b.PoolMode, b.Protocol, p.Role, p.Max, p.Paused, cur.Generation, cur.LeaseEnd, cur.HardEnd)
	}
	return t
}

func (c *Console) showClients(s snapshot) *table {
	t := &table{cols: cols(textCols("type", "user", "database", "state", "addr"), intCols("port"),
		textCols("connect_time", "request_time"), intCols("wait", "wait_us", "id"),
		textCols("protocol", "identity", "method", "role", "db_user", "activity"), credentialCols, textCols("pinned"))}
	for _, cl := range s.sessions {
		state := "active"
		if cl.waiting() {
			state = "waiting"
		}
		addr, port := splitAddr(cl.Remote)
		w := waitFor(cl, s.now)
		l := s.lease(cl.Backend, cl.Role, cl.Generation)
		var gen any
		if cl.Generation != 0 {
			gen = cl.Generation
		}
		t.add("C", cl.user(), cl.Backend, state, addr, port, cl.Since, cl.RequestTime,
			int64(w/time.Second), int64(w%time.Second/time.Microsecond), cl.ID,
			cl.Protocol, cl.Identity, cl.Method, cl.Role, cl.DBUser, cl.State, gen, l.LeaseEnd, l.HardEnd, cl.Pinned)
	}
	return t
}

func (c *Console) showServers(s snapshot) (*table, error) {
	t := &table{cols: cols(textCols("type", "user", "database", "state", "addr"), intCols("port"),
		textCols("request_time"), intCols("link"), textCols("protocol", "role", "identity"), credentialCols)}
	linked := map[genKey]int{}
	for _, cl := range s.sessions {
		if cl.DBUser == "" || cl.Backend == Database {
			continue
		}
		linked[genKey{cl.Backend, cl.Role, cl.Generation}]++
		addr, port := splitAddr(c.opts.Backends[cl.Backend].Address)
		l := s.lease(cl.Backend, cl.Role, cl.Generation)
		t.add("S", cl.DBUser, cl.Backend, "active", addr, port, cl.RequestTime, cl.ID,
			cl.Protocol, cl.Role, cl.Identity, cl.Generation, l.LeaseEnd, l.HardEnd)
	}
	idle, err := c.idleServers()
	if err != nil {
		return nil, err
	}
	for _, l := range s.leases {
		k := genKey{l.Backend, l.Role, l.Generation}
		b := c.opts.Backends[l.Backend]
		addr, port := splitAddr(b.Address)
		for range idle[k] {
			t.add("S", l.Username, l.Backend, "idle", addr, port, nil, nil, b.Protocol, l.Role, nil, l.Generation, l.LeaseEnd, l.HardEnd)
		}
	}
	return t, nil
}

func (c *Console) showLeases(s snapshot) *table {
	t := &table{cols: cols(textCols("backend", "role"), intCols("generation"), textCols("state", "reason", "db_user", "lease_id",
		"issued_at", "lease_end", "hard_end", "drain_deadline"), intCols("renewals", "connections", "ttl_seconds"))}
	for _, l := range s.leases {
		t.add(l.Backend, l.Role, l.Generation, l.State, l.Reason, l.Username, l.LeaseID,
			l.IssuedAt, l.LeaseEnd, l.HardEnd, l.Deadline, l.Renewals, l.Connections, l.TTLSeconds)
	}
	return t
}
