package creds

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dbproxy/dbproxy/events"
)

const (
	testBackend = "pg"
	testRole    = "app"
)

// testLogger records every entry, Debug and up.
func testLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// writeFile writes content into a fresh file in the test's temp dir.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newClient builds a client for fv with the given auth options.
func newClient(t *testing.T, fv *fakeVault, auth AuthOptions, log *zap.Logger) *Client {
	t.Helper()
	c, err := NewClient(ClientOptions{Address: fv.URL(), RequestTimeout: 5 * time.Second, Auth: auth}, log, NewMetrics(nil))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tokenClient is a client logged in with fv's root token from a file.
func tokenClient(t *testing.T, fv *fakeVault, log *zap.Logger) *Client {
	t.Helper()
	c := newClient(t, fv, AuthOptions{Method: "token", TokenFile: writeFile(t, "token", fv.rootToken+"\n")}, log)
	if err := c.Login(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// nowCounter replaces s.now with one that counts its calls: every step of
// the Run loop calls it, so a loop that spins shows as a count in the
// hundreds per second.
type nowCounter struct{ n atomic.Int64 }

func (nc *nowCounter) now() time.Time {
	nc.n.Add(1)
	return time.Now()
}

// calls counts s.now calls over d.
func (nc *nowCounter) over(d time.Duration) int64 {
	before := nc.n.Load()
	time.Sleep(d)
	return nc.n.Load() - before
}

type testSource struct {
	*Source
	clock *nowCounter
}

// startSource runs a source for testBackend/testRole until the test ends.
func startSource(t *testing.T, c *Client, o LeaseOptions, log *zap.Logger) testSource {
	t.Helper()
	s := newSource(c, testBackend, "database", testRole, o, log, NewMetrics(nil))
	s.ev = events.New(events.Options{})
	nc := &nowCounter{}
	s.now = nc.now
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return testSource{s, nc}
}

// current waits up to d for a generation numbered at least n.
func (s testSource) current(t *testing.T, n uint64, d time.Duration) *Generation {
	t.Helper()
	deadline := time.Now().Add(d)
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Until(deadline))
		g, err := s.Current(ctx)
		cancel()
		if err == nil && g.N >= n {
			return g
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no generation %d within %v (last error: %v)", n, d, lastErr)
	return nil
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closedWithin reports whether ch closes within d.
func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func counterValue(t *testing.T, c *prometheus.CounterVec, labels ...string) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.WithLabelValues(labels...).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// countLogs counts entries whose message contains msg.
func countLogs(logs *observer.ObservedLogs, msg string) int {
	n := 0
	for _, e := range logs.All() {
		if strings.Contains(e.Message, msg) {
			n++
		}
	}
	return n
}

// assertNoSecrets fails if any secret appears in any log entry (message
// and every field, errors included) or in any of texts.
func assertNoSecrets(t *testing.T, logs *observer.ObservedLogs, secrets []string, texts ...string) {
	t.Helper()
	enc := zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig())
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, buf.String())
		buf.Free()
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		for _, text := range texts {
			if strings.Contains(text, s) {
				t.Errorf("secret %q leaked into %q", s, text)
			}
		}
	}
}
