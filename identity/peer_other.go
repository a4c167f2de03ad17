//go:build !linux

package identity

import (
	"errors"
	"net"
)

// peerUID is implemented only on Linux (SO_PEERCRED).
func peerUID(*net.UnixConn) (int, error) {
	return 0, errors.New("unix peer credentials are supported only on Linux")
}
