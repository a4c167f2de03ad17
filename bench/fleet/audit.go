package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// auditCounts are the successful Vault requests of one configuration.
type auditCounts struct {
	creds       int // database/creds/ROLE reads: each creates a database user
	renewals    int // sys/leases/renew
	revocations int // sys/leases/revoke (Vault's own expiry revocations are not requests)
	kv          int // the fleet's records in KV (secret/...)
	all         int // every request, token renewals and refused ones (a lost CAS race) included
}

// countAudit reads Vault's file audit log from offset (where the
// configuration began) and counts the responses: all of them in all, the
// ones without an error in the other counts. Request
// paths are not HMAC'd, so the default (non-raw) audit device suffices.
func countAudit(path string, offset int64, role string) (auditCounts, error) {
	var c auditCounts
	f, err := os.Open(path)
	if err != nil {
		return c, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return c, err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var entry struct {
			Type    string `json:"type"`
			Error   string `json:"error"`
			Request struct {
				Path string `json:"path"`
			} `json:"request"`
		}
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			return c, fmt.Errorf("audit log: %w", err)
		}
		if entry.Type != "response" {
			continue
		}
		c.all++
		if entry.Error != "" {
			continue
		}
		p := entry.Request.Path
		switch {
		case p == "database/creds/"+role:
			c.creds++
		case p == "sys/leases/renew":
			c.renewals++
		case p == "sys/leases/revoke":
			c.revocations++
		case strings.HasPrefix(p, "secret/"):
			c.kv++
		}
	}
	return c, sc.Err()
}
