package identity

import (
	"crypto/tls"
	"fmt"
	"sort"
)

// FromCert identifies the client of a TLS connection by its verified
// certificate: state.VerifiedChains[0][0], so a certificate that was not
// verified against the listener's client CA is never trusted (configure
// the listener with tls.RequireAndVerifyClientCert). Its URI SANs are
// matched against SPIFFE IDs first, then its subject CN against cert_cn.
// No verified certificate is ReasonNoClientCert, no match
// ReasonUnknownIdentity, URI SANs naming two identities
// ReasonAmbiguousIdentity.
func (p *Policy) FromCert(state tls.ConnectionState) (Identity, error) {
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return Identity{}, &Error{
			Reason: ReasonNoClientCert,
			Msg:    "no verified client certificate: connect over TLS with a client certificate signed by the proxy's client CA",
		}
	}
	leaf := state.VerifiedChains[0][0]

	uris := make([]string, len(leaf.URIs))
	names := map[string]bool{}
	for i, u := range leaf.URIs {
		uris[i] = u.String()
		if name, ok := p.spiffe[uris[i]]; ok {
			names[name] = true
		}
	}
	switch len(names) {
	case 0:
	case 1:
		for name := range names {
			return Identity{Name: name, Method: MethodMTLS}, nil
		}
	default:
		list := make([]string, 0, len(names))
		for name := range names {
			list = append(list, name)
		}
		sort.Strings(list)
		return Identity{}, &Error{
			Reason: ReasonAmbiguousIdentity,
			Msg: fmt.Sprintf("client certificate URI SANs %q match several identities (%s): issue the certificate with one SPIFFE ID",
				uris, quoteList(list)),
		}
	}

	cn := leaf.Subject.CommonName
	if cn != "" {
		if name, ok := p.cn[cn]; ok {
			return Identity{Name: name, Method: MethodMTLS}, nil
		}
	}
	return Identity{}, &Error{
		Reason: ReasonUnknownIdentity,
		Msg: fmt.Sprintf("no identity matches client certificate (URI SANs %q, CN %q): add it under identities.<name>.match as spiffe_id or cert_cn",
			uris, cn),
	}
}
