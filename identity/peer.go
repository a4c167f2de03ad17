package identity

import (
	"fmt"
	"net"
)

// FromPeer identifies the process on the other end of a unix socket by its
// uid (SO_PEERCRED, taken by the kernel at connect time). A uid no identity
// matches is an *Error with ReasonUnknownIdentity naming the uid; failing
// to read the credentials is a plain error.
func (p *Policy) FromPeer(conn *net.UnixConn) (Identity, error) {
	uid, err := peerUID(conn)
	if err != nil {
		return Identity{}, fmt.Errorf("identity: read unix peer credentials: %w", err)
	}
	name, ok := p.uid[uid]
	if !ok {
		return Identity{}, &Error{
			Reason: ReasonUnknownIdentity,
			Msg:    fmt.Sprintf("no identity matches unix peer uid %d: add unix_uid: %d under identities.<name>.match", uid, uid),
		}
	}
	return Identity{Name: name, Method: MethodPeer}, nil
}
