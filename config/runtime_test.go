package config

import (
	"strings"
	"testing"
)

func TestRuntimeSettings(t *testing.T) {
	tests := []struct {
		name    string
		runtime string // appended to base as the runtime: section
		want    string // a problem, "LINE:COL: substring"; "" for valid
		check   func(t *testing.T, r Runtime)
	}{
		{"absent means Go's defaults", "", "", func(t *testing.T, r Runtime) {
			if r != (Runtime{}) {
				t.Errorf("Runtime = %+v, want zero", r)
			}
		}},
		{"all set", "runtime:\n  gomaxprocs: 2\n  gogc: 200\n  memory_limit: 256MiB\n", "", func(t *testing.T, r Runtime) {
			n, err := r.MemoryLimitBytes()
			if r.GOMAXPROCS != 2 || r.GOGC != 200 || n != 256<<20 || err != nil {
				t.Errorf("Runtime = %+v (%d bytes, %v)", r, n, err)
			}
		}},
		{"gc off with a limit", "runtime:\n  gogc: -1\n  memory_limit: 1GiB\n", "", nil},
		{"negative gomaxprocs", "runtime:\n  gomaxprocs: -2\n", "21:15: runtime.gomaxprocs: -2 is negative", nil},
		{"bad gogc", "runtime:\n  gogc: -5\n", "21:9: runtime.gogc: -5 is not a GC percentage", nil},
		{"gc off without a limit", "runtime:\n  gogc: -1\n", "21:9: runtime.gogc: -1 turns the collector off", nil},
		{"limit without unit", "runtime:\n  memory_limit: \"256\"\n", `21:17: runtime.memory_limit: "256" has no unit`, nil},
		{"limit not a number", "runtime:\n  memory_limit: lotsMiB\n", `21:17: runtime.memory_limit: "lotsMiB" is not a size`, nil},
		{"limit too small", "runtime:\n  memory_limit: 1MiB\n", "21:17: runtime.memory_limit: 1MiB is below 16MiB", nil},
		{"unknown key", "runtime:\n  gomaxproc: 1\n", `21:3: unknown key "gomaxproc" in runtime: did you mean "gomaxprocs"?`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := load(t, base+tt.runtime)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if tt.check != nil {
					tt.check(t, c.Runtime)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "0B": 0, "1B": 1, "2KiB": 2048, "256MiB": 256 << 20, "3GiB": 3 << 30, "1TiB": 1 << 40} {
		if got, err := ParseByteSize(in); got != want || err != nil {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"1", "MiB", "-1MiB", "1.5GiB", "1MB", "99999999999TiB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q): no error", in)
		}
	}
}
