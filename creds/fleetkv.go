package creds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	vault "github.com/hashicorp/vault/api"
)

// errCAS means another instance wrote the record since it was read.
var errCAS = errors.New("kv check-and-set: the record changed since it was read")

// kvStore reads and writes JSON records in a KV v2 mount with CAS.
type kvStore struct {
	c     *Client
	mount string
	m     *Metrics
}

// read decodes the record at path into v and returns its version; 0 with
// v untouched when there is none.
func (k *kvStore) read(ctx context.Context, path string, v any) (int, error) {
	p := k.mount + "/data/" + path
	sec, err := k.c.api.Logical().ReadWithContext(ctx, p)
	k.m.request("kv_read", err)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	if sec == nil || sec.Data == nil {
		return 0, nil
	}
	ver := 0
	if md, ok := sec.Data["metadata"].(map[string]any); ok {
		ver = intField(md["version"])
	}
	data, ok := sec.Data["data"].(map[string]any)
	if !ok || data == nil {
		return ver, nil // a deleted version: the path exists, the record does not
	}
	b, err := json.Marshal(data)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		return 0, fmt.Errorf("decode %s: %w", p, err)
	}
	return ver, nil
}

// write stores v at path if its version is still cas (0: only if absent)
// and returns the new version.
func (k *kvStore) write(ctx context.Context, path string, v any, cas int) (int, error) {
	p := k.mount + "/data/" + path
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %s: %w", p, err)
	}
	var data map[string]any
	if err := json.Unmarshal(b, &data); err != nil {
		return 0, fmt.Errorf("encode %s: %w", p, err)
	}
	sec, err := k.c.api.Logical().WriteWithContext(ctx, p, map[string]any{
		"options": map[string]any{"cas": cas}, "data": data,
	})
	k.m.request("kv_write", err)
	if err != nil {
		if isCASMismatch(err) {
			return 0, errCAS
		}
		return 0, fmt.Errorf("write %s: %w", p, err)
	}
	if sec == nil || sec.Data == nil {
		return cas + 1, nil
	}
	return intField(sec.Data["version"]), nil
}

func isCASMismatch(err error) bool {
	var re *vault.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest {
		return false
	}
	for _, e := range re.Errors {
		if strings.Contains(e, "check-and-set") {
			return true
		}
	}
	return false
}

func intField(v any) int {
	switch x := v.(type) {
	case json.Number:
		n, _ := x.Int64()
		return int(n)
	case float64:
		return int(x)
	case int:
		return x
	}
	return 0
}
