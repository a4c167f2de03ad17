package identity

// Reason classifies an *Error, for metrics labels and for tests.
type Reason string

// Reasons a client is refused.
const (
	// ReasonUnknownIdentity: nothing about the client maps to a configured
	// identity (or a name is not configured).
	ReasonUnknownIdentity Reason = "unknown_identity"
	// ReasonAmbiguousIdentity: the client certificate's URI SANs map to
	// more than one identity.
	ReasonAmbiguousIdentity Reason = "ambiguous_identity"
	// ReasonNotGranted: the identity has no grant for the backend.
	ReasonNotGranted Reason = "not_granted"
	// ReasonAmbiguousGrant: the identity has several roles on the backend
	// and the user name picks none of them.
	ReasonAmbiguousGrant Reason = "ambiguous_grant"
	// ReasonNoClientCert: the connection carries no verified client
	// certificate.
	ReasonNoClientCert Reason = "no_client_cert"
)

// Error is a refusal that may be shown to the client: Error() says what is
// wrong and what to do. It never contains a secret. Use errors.As to get
// it and Reason to classify it.
type Error struct {
	Reason Reason
	// Identity is the identity name involved, if any.
	Identity string
	// Backend is the backend asked for, if any.
	Backend string
	// Msg is the complete message.
	Msg string
	// Err is the cause, if any (for logs and errors.Is); it is not part
	// of the message the client sees.
	Err error
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	if e.Msg == "" {
		return "identity: " + string(e.Reason)
	}
	return e.Msg
}

// Reasons a presented token is refused.
const (
	// ReasonInvalidToken: the token is malformed, badly signed, for
	// someone else (issuer, audience) or unknown to Vault.
	ReasonInvalidToken Reason = "invalid_token"
	// ReasonExpiredToken: the token's lifetime is over (or has not begun).
	ReasonExpiredToken Reason = "expired_token"
	// ReasonTokenCheckFailed: the token could not be checked (Vault or
	// the JWKS URL unreachable); retrying may help.
	ReasonTokenCheckFailed Reason = "token_check_failed"
)
