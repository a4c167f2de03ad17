package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"

	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/config"
)

func TestApplyRuntime(t *testing.T) {
	procs, gc, limit := runtime.GOMAXPROCS(0), debug.SetGCPercent(100), debug.SetMemoryLimit(-1)
	debug.SetGCPercent(gc)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(procs)
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
	})

	// Zero values change nothing.
	applyRuntime(config.Runtime{}, zap.NewNop())
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS = %d after a zero runtime section, want %d", got, procs)
	}
	if got := debug.SetMemoryLimit(-1); got != limit {
		t.Errorf("memory limit = %d after a zero runtime section, want %d", got, limit)
	}

	applyRuntime(config.Runtime{GOMAXPROCS: 1, GOGC: 250, MemoryLimit: "300MiB"}, zap.NewNop())
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS = %d, want 1", got)
	}
	if got := debug.SetGCPercent(gc); got != 250 {
		t.Errorf("GOGC = %d, want 250", got)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != 300<<20 {
		t.Errorf("memory limit = %d, want %d", got, 300<<20)
	}

	applyRuntime(config.Runtime{GOGC: -1, MemoryLimit: "1GiB"}, zap.NewNop())
	if got := debug.SetGCPercent(gc); got != -1 {
		t.Errorf("GOGC = %d, want -1 (off)", got)
	}
}
