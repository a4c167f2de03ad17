package postgres

import "github.com/dbproxy/dbproxy/proxy/frontend"

// The relay counts SHOW STATS (frontend.SessionStats) at three places:
// a request read (relay.go, step), a ReadyForQuery relayed (txn.go,
// answer) and a checkout (txn.go, attach; session.go, checkoutAlive).

// mono is the clock checkouts are timed with.
func mono() int64 { return frontend.Mono() }
