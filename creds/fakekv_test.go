package creds

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// fakeKV is one KV v2 secret: its newest version and data.
type fakeKV struct {
	version int
	data    map[string]any
}

// serveKV answers KV v2 reads and writes with check-and-set the way Vault
// does: a missing secret is a 404, a write whose options.cas is not the
// current version (0: absent) is a 400 naming check-and-set. Called with
// f.mu held.
func (f *fakeVault) serveKV(w http.ResponseWriter, op, path string, body map[string]any, now time.Time) {
	e := f.kv[path]
	if op == opKVRead {
		if e == nil {
			writeErr(w, fakeErr{404, nil})
			return
		}
		writeJSON(w, 200, map[string]any{"request_id": "req", "data": map[string]any{
			"data":     e.data,
			"metadata": map[string]any{"version": e.version, "created_time": now.UTC().Format(time.RFC3339Nano), "deletion_time": "", "destroyed": false},
		}})
		return
	}
	cur := 0
	if e != nil {
		cur = e.version
	}
	if opts, ok := body["options"].(map[string]any); ok {
		if cas, ok := opts["cas"]; ok && jsonInt(cas) != cur {
			writeErr(w, fakeErr{400, []string{"check-and-set parameter did not match the current version"}})
			return
		}
	}
	data, _ := body["data"].(map[string]any)
	f.kv[path] = &fakeKV{version: cur + 1, data: data}
	writeJSON(w, 200, map[string]any{"request_id": "req", "data": map[string]any{
		"version": cur + 1, "created_time": now.UTC().Format(time.RFC3339Nano), "deletion_time": "", "destroyed": false,
	}})
}

// kvRecord decodes the KV secret at path into v; false if there is none.
func (f *fakeVault) kvRecord(t *testing.T, path string, v any) bool {
	t.Helper()
	f.mu.Lock()
	e := f.kv[path]
	var b []byte
	if e != nil {
		b, _ = json.Marshal(e.data)
	}
	f.mu.Unlock()
	if e == nil {
		return false
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
	return true
}

// cutter forwards to a server until cut: then every request fails with
// 503, the way one instance sees Vault during a network partition.
type cutter struct {
	srv *httptest.Server
	cut atomic.Bool
}

func newCutter(t *testing.T, target string) *cutter {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{}
	rp := httputil.NewSingleHostReverseProxy(u)
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.cut.Load() {
			writeErr(w, fakeErr{503, []string{"partitioned (test)"}})
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(c.srv.Close)
	return c
}
