package frontend

import (
	"errors"

	"github.com/dbproxy/dbproxy/creds"
	"github.com/dbproxy/dbproxy/identity"
	"github.com/dbproxy/dbproxy/proxy/pool"
)

// Class is what kind of failure kept a client from its database, as far
// as both protocols see it alike. Each front end turns a class into its
// own codes (SQLSTATE, MySQL error number) and words.
type Class int

// The classes. Unreachable is the rest: a dial error, a timeout, or an
// upstream's own refusal, which each protocol recognises by its driver's
// error type.
const (
	Unreachable  Class = iota
	Denied             // identity.Error: the client is not identified, or its grant is ambiguous
	NotGranted         // identity.Error: the identity may not use the backend
	NoCredential       // creds.ErrNoCredential: Vault has no valid credential for now
	Exhausted          // pool.ExhaustedError: no server connection freed up in time
	Paused             // pool.PausedError: an operator paused the backend
)

// Classify returns err's class and the message of the error that decided
// it (err's own for Unreachable).
func Classify(err error) (Class, string) {
	var ie *identity.Error
	if errors.As(err, &ie) {
		if ie.Reason == identity.ReasonNotGranted {
			return NotGranted, ie.Error()
		}
		return Denied, ie.Error()
	}
	var nc *creds.ErrNoCredential
	if errors.As(err, &nc) {
		return NoCredential, nc.Error()
	}
	var ex *pool.ExhaustedError
	if errors.As(err, &ex) {
		return Exhausted, ex.Error()
	}
	var pe *pool.PausedError
	if errors.As(err, &pe) {
		return Paused, pe.Error()
	}
	if err == nil {
		return Unreachable, ""
	}
	return Unreachable, err.Error()
}
