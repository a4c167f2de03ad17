package mysql

import "github.com/dbproxy/dbproxy/proxy/frontend"

// The relay counts SHOW STATS (frontend.SessionStats) at three places:
// a command read and its answer done (txn.go, loop; both pool modes run
// there) and a checkout (txn.go, attach; session.go, checkoutOpen). A
// query is one command, a transaction ends when the server status no
// longer says IN_TRANS.

// mono is the clock checkouts are timed with.
func mono() int64 { return frontend.Mono() }
