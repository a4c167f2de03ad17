package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// sdNotify tells the service manager about a state change (systemd
// Type=notify: "READY=1" once serving, "STOPPING=1" when shutdown begins) by
// sending one datagram to the unix socket named by $NOTIFY_SOCKET. Without
// that variable it does nothing, so running outside systemd costs nothing.
// It is the whole sd_notify protocol dbproxy needs; no library is worth a
// dependency for one datagram.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	// systemd also allows vsock: addresses (for VMs); dbproxy supports the
	// unix socket paths and abstract names ("@...") that service units get.
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return fmt.Errorf("sd_notify: NOTIFY_SOCKET %q is not a unix socket path or abstract name", addr)
	}
	// Go maps a leading '@' to the abstract namespace itself.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %q: %w", state, err)
	}
	return nil
}
