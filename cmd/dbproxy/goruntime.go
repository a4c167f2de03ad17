package main

import (
	"runtime"
	"runtime/debug"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/config"
)

// applyRuntime applies the configuration's runtime: section at start. A
// zero setting leaves Go's default alone, so GOMAXPROCS, GOGC and
// GOMEMLIMIT in the environment still work when the file says nothing;
// config.Validate has already rejected values Go would misread (a memory
// limit without a unit, GOGC below -1).
func applyRuntime(r config.Runtime, log *zap.Logger) {
	if r == (config.Runtime{}) {
		return // nothing to apply or to tell
	}
	if r.GOMAXPROCS > 0 {
		runtime.GOMAXPROCS(r.GOMAXPROCS)
	}
	if r.GOGC != 0 {
		debug.SetGCPercent(r.GOGC) // -1 is off, as in GOGC=off
	}
	if n, err := r.MemoryLimitBytes(); err == nil && n > 0 {
		debug.SetMemoryLimit(n)
	}
	log.Info("go runtime settings applied",
		zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)),
		zap.Int("gogc", r.GOGC),                                   // 0: Go's default
		zap.Int64("memory_limit_bytes", debug.SetMemoryLimit(-1)), // -1 reads it
	)
}
