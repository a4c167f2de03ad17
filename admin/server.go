// Package admin is dbproxy's operator HTTP listener: /metrics, /healthz,
// /readyz, and the /v1 API whose endpoints other packages add with Handle.
// /v1 requests need a bearer token when one is configured; cmd/dbproxy
// requires one whenever the listener is not on loopback. State-changing
// requests that a web page could have sent are refused (guard.go).
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Options configure a Server.
type Options struct {
	// Address is the host:port to listen on; port 0 picks a free port
	// (see Addr).
	Address string
	// Registry is the process's metrics registry. /metrics serves it
	// (unless Gatherer is set) and the server registers dbproxy_ready on it.
	Registry *prometheus.Registry
	// Gatherer, if set, is what /metrics serves instead of Registry.
	Gatherer prometheus.Gatherer
	// Logger receives server errors. Default: no logging.
	Logger *zap.Logger
	// Token, when non-empty, is the bearer token every /v1 request must
	// present ("Authorization: Bearer TOKEN"). It is compared in constant
	// time. /metrics, /healthz and /readyz never need it.
	Token string
	// AllowedHosts are further names (host or host:port) that
	// state-changing requests may carry in their Host header, e.g. a DNS
	// name operators use for a listener on 0.0.0.0. The listener's own
	// address and localhost, 127.0.0.1 and [::1] are always allowed.
	AllowedHosts []string
}

// Server is the admin HTTP server. Create it with New, add endpoints with
// Handle, then Start it. All methods are safe for concurrent use.
type Server struct {
	opts      Options
	log       *zap.Logger
	mux       *http.ServeMux
	root      http.Handler // mux behind the cross-site guard
	srv       *http.Server
	tokenHash [sha256.Size]byte

	ready atomic.Bool

	mu       sync.Mutex
	ln       net.Listener
	ownHosts map[string]bool // host:port names of this listener (see guard.go)
	started  bool
	checks   []check
	done     chan struct{}
}

type check struct {
	name string
	fn   func() error
}

// New builds a Server; it does not listen until Start.
func New(opts Options) *Server {
	s := &Server{opts: opts, log: opts.Logger, mux: http.NewServeMux(), done: make(chan struct{})}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.log = s.log.Named("admin")
	s.tokenHash = sha256.Sum256([]byte(opts.Token))
	s.root = s.guard(s.mux)
	s.ownHosts = ownHostsFor(opts.Address, nil)

	g := opts.Gatherer
	if g == nil && opts.Registry != nil {
		g = opts.Registry
	}
	if g == nil {
		g = prometheus.NewRegistry()
	}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      zap.NewStdLog(s.log),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
	})
	s.mux.HandleFunc("GET /readyz", s.serveReadyz)

	if opts.Registry != nil {
		err := opts.Registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dbproxy_ready",
			Help: "1 when dbproxy has started and every readiness check passes, else 0.",
		}, func() float64 {
			if len(s.failing()) == 0 {
				return 1
			}
			return 0
		}))
		if err != nil {
			s.log.Warn("cannot register dbproxy_ready", zap.Error(err))
		}
	}

	s.srv = &http.Server{
		Handler:           s.root,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(s.log),
	}
	return s
}

// Handle registers h for pattern (http.ServeMux syntax, e.g.
// "GET /v1/sessions" or "POST /v1/backends/{name}/drain"). Handlers under
// /v1 are wrapped with the bearer token check. Handle may be called before
// or after Start.
func (s *Server) Handle(pattern string, h http.Handler) {
	if isV1(pattern) {
		h = s.requireToken(h)
	}
	s.mux.Handle(pattern, h)
}

// isV1 reports whether a ServeMux pattern ("[METHOD ][HOST]/PATH") is
// under /v1.
func isV1(pattern string) bool {
	p := strings.TrimSpace(pattern)
	if i := strings.IndexAny(p, " \t"); i >= 0 {
		p = strings.TrimSpace(p[i+1:])
	}
	if i := strings.IndexByte(p, '/'); i >= 0 {
		p = p[i:]
	}
	return p == "/v1" || strings.HasPrefix(p, "/v1/")
}

func (s *Server) requireToken(h http.Handler) http.Handler {
	if s.opts.Token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="dbproxy"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token; send Authorization: Bearer <token from admin.token_file>"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ServeHTTP serves a request as the listener would, guard included.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.root.ServeHTTP(w, r) }

// SetReady marks startup as complete (true) or the process as going away
// (false). /readyz answers 503 until SetReady(true).
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// AddReadinessCheck adds a named check run by every /readyz request; a
// non-nil error makes the process not ready. Checks must be quick (read
// state, do no I/O). Adding a check with an existing name replaces it.
func (s *Server) AddReadinessCheck(name string, fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.checks {
		if s.checks[i].name == name {
			s.checks[i].fn = fn
			return
		}
	}
	s.checks = append(s.checks, check{name, fn})
}

type failure struct {
	Name  string `json:"name"`
	Error string `json:"error"`
}

// failing runs the readiness checks and returns those that fail.
func (s *Server) failing() []failure {
	var out []failure
	if !s.ready.Load() {
		out = append(out, failure{"startup", "not started, or shutting down"})
	}
	s.mu.Lock()
	checks := append([]check(nil), s.checks...)
	s.mu.Unlock()
	for _, c := range checks {
		if err := c.fn(); err != nil {
			out = append(out, failure{c.name, err.Error()})
		}
	}
	return out
}

// serveReadyz answers 200 "ready" or 503 with each failing check, as text
// or, when the client accepts application/json, as JSON.
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	fails := s.failing()
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		if len(fails) == 0 {
			writeJSON(w, http.StatusOK, map[string]any{"status": "ready"})
			return
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "failing": fails})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(fails) == 0 {
		_, _ = w.Write([]byte("ready"))
		return
	}
	var b strings.Builder
	b.WriteString("not ready\n")
	for _, f := range fails {
		fmt.Fprintf(&b, "%s: %s\n", f.Name, f.Error)
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(b.String()))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Start listens on Options.Address now and serves in the background until
// Shutdown. A listen error is returned. ctx bounds only the listen call.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("admin: already started")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.opts.Address)
	if err != nil {
		return fmt.Errorf("admin: listen on %s: %w", s.opts.Address, err)
	}
	s.ln, s.started = ln, true
	s.ownHosts = ownHostsFor(s.opts.Address, ln.Addr())
	if s.opts.Token == "" && !loopback(ln.Addr()) {
		s.log.Warn("admin listener is not on loopback and has no token: /v1 is open to anyone who can reach it", zap.Stringer("address", ln.Addr()))
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server stopped", zap.Error(err))
		}
	}()
	s.log.Info("admin listening", zap.Stringer("address", ln.Addr()))
	return nil
}

func loopback(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsLoopback()
}

// Addr is the address the server listens on, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown marks the process not ready, stops accepting, and waits for
// in-flight requests until ctx ends. It is a no-op before Start.
func (s *Server) Shutdown(ctx context.Context) error {
	s.SetReady(false)
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("admin: shutdown: %w", ctx.Err())
	}
	return nil
}
