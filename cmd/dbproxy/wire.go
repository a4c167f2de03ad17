// wire.go is owned by the proxy wiring: it maps config.Config onto the
// packages' own option structs and starts them. The rest of cmd/dbproxy
// only calls startProxies.

package main

import (
	"context"

	"github.com/dbproxy/dbproxy/config"
)

// startProxies starts the credential broker, pools and listeners that cfg
// describes, and returns them as Services to be shut down on SIGTERM.
// ctx is cancelled only after every Service's Shutdown has returned. On
// error it must stop whatever it already started (Services it still
// returns alongside the error are shut down too).
//
// For now it starts nothing.
func startProxies(ctx context.Context, cfg *config.Config, deps Deps) ([]Service, error) {
	return nil, nil
}
