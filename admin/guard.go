package admin

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// A web page open in a browser on the operator's machine can send POSTs to
// 127.0.0.1 and, through DNS rebinding, even read the answers. A bearer
// token does not help when none is configured (the loopback default), so
// every state-changing request must show it was not sent by a browser on
// behalf of another site: it names this listener in Host, carries no
// foreign Origin or Sec-Fetch-Site, and has no body a page could send
// without a CORS preflight. The dbproxy CLI and curl meet all of this.

// guard refuses state-changing requests that may come from a web page.
// Safe methods (GET, HEAD, OPTIONS) pass: they change nothing.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		if why := s.crossSite(r); why != "" {
			s.log.Warn("refused a state-changing request that may come from a web page",
				zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("host", r.Host),
				zap.String("origin", r.Header.Get("Origin")), zap.String("remote", r.RemoteAddr), zap.String("why", why))
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "refused: " + why})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// crossSite says why r may have been sent by a browser for another site,
// or "" when it may not.
func (s *Server) crossSite(r *http.Request) string {
	if !s.hostAllowed(r.Host) {
		return fmt.Sprintf("Host %q is not this admin listener's address (%s) nor localhost, 127.0.0.1 or [::1]; "+
			"a web page can reach the API under its own name through DNS rebinding. Call the API by the address it "+
			"listens on, or list the name in admin.allowed_hosts", r.Host, s.ownAddr())
	}
	origin := r.Header.Get("Origin")
	if origin != "" && !originIsHost(origin, r.Host) {
		return fmt.Sprintf("Origin %q is not this API's origin (Host %q): a web page on another site sent the request", origin, r.Host)
	}
	if sfs := r.Header.Get("Sec-Fetch-Site"); sfs != "" && sfs != "same-origin" && sfs != "none" {
		return fmt.Sprintf("Sec-Fetch-Site is %q: the browser says a page on another site sent the request", sfs)
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		// A form or text body is what a page can send cross-site without
		// a CORS preflight. One with an Origin equal to Host (checked
		// above) comes from a page this listener served: the status
		// page's own forms.
		if mt, _, err := mime.ParseMediaType(ct); (err != nil || mt != "application/json") && origin == "" {
			return fmt.Sprintf("Content-Type %q without an Origin: send no body, or a body with Content-Type: application/json "+
				"(text/plain and form bodies are what a web page can send without asking first)", ct)
		}
	} else if r.ContentLength != 0 {
		return "a request body without Content-Type: send no body, or Content-Type: application/json"
	}
	return ""
}

// hostAllowed reports whether a Host header names this listener: any
// port on localhost, 127.0.0.1 or ::1, the configured or bound address,
// a local interface address when bound to all of them, or AllowedHosts.
func (s *Server) hostAllowed(hostport string) bool {
	if hostport == "" {
		return false
	}
	host, port := splitHost(hostport, "80")
	switch host {
	case "localhost", "127.0.0.1", "::1":
		return true
	}
	s.mu.Lock()
	own := s.ownHosts
	s.mu.Unlock()
	if own[host+":"+port] {
		return true
	}
	for _, a := range s.opts.AllowedHosts {
		h, p := splitHost(a, "")
		if h == host && (p == "" || p == port) {
			return true
		}
	}
	return false
}

// splitHost lowercases a Host header and splits off its port, def when
// absent.
func splitHost(hostport, def string) (host, port string) {
	hostport = strings.ToLower(hostport)
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), def
	}
	return h, p
}

// ownHostsFor lists the host:port names of a listener configured as
// configured and bound to bound (nil before it listens): the configured
// name, the bound address, and every local interface address when it
// listens on all of them (0.0.0.0 or ::).
func ownHostsFor(configured string, bound net.Addr) map[string]bool {
	out := map[string]bool{}
	ch, cp := splitHost(configured, "80")
	if ch != "" && cp != "0" {
		out[ch+":"+cp] = true
	}
	t, ok := bound.(*net.TCPAddr)
	if !ok {
		return out
	}
	port := strconv.Itoa(t.Port)
	if ch != "" {
		out[ch+":"+port] = true
	}
	out[strings.ToLower(t.IP.String())+":"+port] = true
	if t.IP.IsUnspecified() {
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				out[strings.ToLower(n.IP.String())+":"+port] = true
			}
		}
	}
	return out
}

// ownAddr is the listener's address for messages.
func (s *Server) ownAddr() string {
	if a := s.Addr(); a != nil {
		return a.String()
	}
	return s.opts.Address
}

// originIsHost reports whether an Origin header names the same host:port
// as the Host header, default ports filled in by the scheme.
func originIsHost(origin, hostport string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false // includes "null": an opaque, sandboxed or file origin
	}
	def := "80"
	if u.Scheme == "https" {
		def = "443"
	}
	oh, op := splitHost(u.Host, def)
	hh, hp := splitHost(hostport, def)
	return oh == hh && op == hp
}
