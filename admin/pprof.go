package admin

import (
	"net/http"
	"net/http/pprof"
)

// MountPprof serves Go's profiler under /debug/pprof/ (config
// admin.pprof). Profiles show query timing and memory, so they need the
// same bearer token as /v1 when one is set.
func (s *Server) MountPprof() {
	wrap := s.requireToken
	s.mux.Handle("GET /debug/pprof/", wrap(http.HandlerFunc(pprof.Index)))
	s.mux.Handle("GET /debug/pprof/cmdline", wrap(http.HandlerFunc(pprof.Cmdline)))
	s.mux.Handle("GET /debug/pprof/profile", wrap(http.HandlerFunc(pprof.Profile)))
	s.mux.Handle("GET /debug/pprof/symbol", wrap(http.HandlerFunc(pprof.Symbol)))
	s.mux.Handle("GET /debug/pprof/trace", wrap(http.HandlerFunc(pprof.Trace)))
}
