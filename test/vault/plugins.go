//go:build tools

package main

// The database plugins are built from this module as their own binaries
// (see scripts/build-vault.sh); these imports keep their dependencies in go.sum.
import (
	_ "github.com/hashicorp/vault/plugins/database/mysql"
	_ "github.com/hashicorp/vault/plugins/database/postgresql"
	_ "github.com/hashicorp/vault/sdk/database/dbplugin/v5"
)
