// Command dbproxy is a lease-aware database credential proxy: clients
// connect to it as to PostgreSQL or MySQL, and it connects upstream with
// dynamic credentials from Vault, rotating them before their leases end.
//
//	dbproxy [--log-format json|console] [--log-level LEVEL] COMMAND [flags]
//
// Commands: run, check, version, and the operator commands status, rotate,
// pause, resume and drain. See root.go for the dispatch.
package main

import (
	"context"
	"os"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(Execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
