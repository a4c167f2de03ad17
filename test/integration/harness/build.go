package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// module is the main module's path; RepoRoot looks for its go.mod.
const module = "github.com/dbproxy/dbproxy"

// RepoRoot returns the directory of the dbproxy go.mod, walking up from the
// working directory (go test runs in the package directory), then from this
// source file.
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, d := range starts {
		for ; ; d = filepath.Dir(d) {
			b, err := os.ReadFile(filepath.Join(d, "go.mod"))
			if err == nil && modulePath(b) == module {
				return d, nil
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	return "", fmt.Errorf("go.mod of %s not found above %s", module, strings.Join(starts, ", "))
}

func modulePath(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// BuildVault returns a directory with the Vault binary and the two
// database plugins (VaultBinaries). It uses $DBPROXY_VAULT_BIN when that
// holds them, else runs scripts/build-vault.sh, which caches the build
// (a cold build takes several minutes). The script's log goes to stderr.
func BuildVault(ctx context.Context) (string, error) {
	if d := os.Getenv("DBPROXY_VAULT_BIN"); d != "" {
		for _, b := range VaultBinaries {
			if _, err := os.Stat(filepath.Join(d, b)); err != nil {
				return "", fmt.Errorf("DBPROXY_VAULT_BIN: %w", err)
			}
		}
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "build-vault.sh"))
	cmd.Dir = root
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("scripts/build-vault.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if dir == "" {
		return "", errors.New("scripts/build-vault.sh printed no directory")
	}
	return dir, nil
}

// BuildDBProxy builds ./cmd/dbproxy into outDir/dbproxy and returns its path.
func BuildDBProxy(ctx context.Context, outDir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	path, err := filepath.Abs(filepath.Join(outDir, "dbproxy"))
	if err != nil {
		return "", err
	}
	// DBPROXY_BUILD_FLAGS=-race runs the integration tests against a
	// race-detector build of the proxy.
	args := append([]string{"build"}, strings.Fields(os.Getenv("DBPROXY_BUILD_FLAGS"))...)
	cmd := exec.CommandContext(ctx, "go", append(args, "-o", path, "./cmd/dbproxy")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/dbproxy: %w\n%s", err, out)
	}
	return path, nil
}
