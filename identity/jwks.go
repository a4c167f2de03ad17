package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// maxJWKSBytes caps a fetched or read key set.
const maxJWKSBytes = 1 << 20

// keySet is a JWKS from a file or URL, loaded once and reloaded when a
// token names a key it does not hold (key rotation) or when it is older
// than maxAge, but never more often than minInterval: a stream of tokens
// with made-up key ids must not become a stream of fetches.
type keySet struct {
	file, url   string
	client      *http.Client
	minInterval time.Duration
	maxAge      time.Duration
	now         func() time.Time

	loadMu sync.Mutex // one load at a time
	mu     sync.Mutex
	keys   []jose.JSONWebKey
	loaded time.Time // last load attempt, successful or not
	ok     time.Time // last successful load
}

// find returns the keys with id kid (all keys when kid is empty),
// reloading the set if kid is unknown or the set is stale and the rate
// limit allows. The error says why the set could not be loaded, if it was
// needed and could not.
func (ks *keySet) find(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	keys, stale := ks.lookup(kid)
	if len(keys) > 0 && !stale {
		return keys, nil
	}
	err := ks.reload(ctx)
	if k, _ := ks.lookup(kid); len(k) > 0 {
		return k, nil
	}
	return keys, err
}

func (ks *keySet) lookup(kid string) ([]jose.JSONWebKey, bool) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	stale := ks.ok.IsZero() || ks.maxAge > 0 && ks.now().Sub(ks.ok) > ks.maxAge
	if kid == "" {
		return ks.keys, stale
	}
	var out []jose.JSONWebKey
	for _, k := range ks.keys {
		if k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out, stale
}

// reload loads the set again unless the last attempt was too recent.
func (ks *keySet) reload(ctx context.Context) error {
	ks.loadMu.Lock()
	defer ks.loadMu.Unlock()
	ks.mu.Lock()
	recent := !ks.loaded.IsZero() && ks.now().Sub(ks.loaded) < ks.minInterval
	ks.mu.Unlock()
	if recent {
		return nil
	}
	keys, err := ks.load(ctx)
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.loaded = ks.now()
	if err != nil {
		return err // keep the keys we had
	}
	ks.keys, ks.ok = keys, ks.loaded
	return nil
}

func (ks *keySet) load(ctx context.Context) ([]jose.JSONWebKey, error) {
	var data []byte
	var err error
	if ks.file != "" {
		data, err = readCapped(ks.file)
	} else {
		data, err = ks.fetch(ctx)
	}
	if err != nil {
		return nil, err
	}
	return parseJWKS(data)
}

func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read JWKS: %w", err)
	}
	defer f.Close()
	return readAllCapped(f, path)
}

func readAllCapped(r io.Reader, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read JWKS %s: %w", what, err)
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS %s is larger than %d bytes", what, maxJWKSBytes)
	}
	return data, nil
}

func (ks *keySet) fetch(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ks.url, nil)
	if err != nil {
		return nil, fmt.Errorf("JWKS URL: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS %s: HTTP status %d", ks.url, resp.StatusCode)
	}
	return readAllCapped(resp.Body, ks.url)
}

// parseJWKS keeps the usable public signing keys of a JWKS. Symmetric
// keys are dropped: a public key set must never hold an HMAC secret, and
// accepting one would let anyone who reads the set sign tokens.
func parseJWKS(data []byte) ([]jose.JSONWebKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWKS is not a JSON key set: %w", err)
	}
	var out []jose.JSONWebKey
	for _, raw := range set.Keys {
		var k jose.JSONWebKey
		// A key go-jose cannot parse (another kty, an encryption key)
		// is skipped, not fatal: issuers publish such keys too.
		if err := k.UnmarshalJSON(raw); err != nil || !k.Valid() || (k.Use != "" && k.Use != "sig") {
			continue
		}
		pub := k.Public()
		if !pub.Valid() || !pub.IsPublic() {
			continue // symmetric
		}
		out = append(out, pub)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("JWKS holds no usable public signing key")
	}
	return out, nil
}
