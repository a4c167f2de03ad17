// Command vault is the HashiCorp Vault server built from its Go module, so
// the integration tests run against a real Vault without a Debian package.
// It is built with -tags minimal; the database plugins are built separately.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
