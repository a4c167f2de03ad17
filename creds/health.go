package creds

import (
	"context"
	"fmt"
)

// VaultHealth is what sys/health says about the Vault dbproxy uses.
type VaultHealth struct {
	Version     string `json:"version"`
	ClusterName string `json:"cluster_name,omitempty"`
	Initialized bool   `json:"initialized"`
	Sealed      bool   `json:"sealed"`
	Standby     bool   `json:"standby"`
}

// Health reads sys/health (unauthenticated) for reports.
func (c *Client) Health(ctx context.Context) (VaultHealth, error) {
	h, err := c.api.Sys().HealthWithContext(ctx)
	c.metrics.request("health", err)
	if err != nil {
		return VaultHealth{}, fmt.Errorf("vault sys/health: %w", err)
	}
	return VaultHealth{Version: h.Version, ClusterName: h.ClusterName, Initialized: h.Initialized, Sealed: h.Sealed, Standby: h.Standby}, nil
}

// Client returns the broker's Vault client.
func (b *Broker) Client() *Client { return b.client }
