package creds

import (
	"flag"
	"os"
	"testing"
)

// TestMain raises -test.parallel unless it was given: most tests here wait
// on real lease timers (seconds) and use almost no CPU, so running them
// GOMAXPROCS at a time would only make the package slow.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "32")
	}
	os.Exit(m.Run())
}
