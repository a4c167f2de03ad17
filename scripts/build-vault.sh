#!/usr/bin/env bash
# build-vault.sh builds the Vault server and its PostgreSQL and MySQL database
# plugins from the test/vault module into a cache directory keyed by the
# module's go.sum, and prints that directory on the last line of stdout.
# Logs go to stderr. Nothing is rebuilt when all three binaries exist.
#
#   DBPROXY_CACHE   cache root (default $HOME/.cache/dbproxy)
#
# Result: $DBPROXY_CACHE/vault-<first 16 hex of sha256(test/vault/go.sum)>/
#         {vault, postgresql-database-plugin, mysql-database-plugin}
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/vault"
bins=(vault postgresql-database-plugin mysql-database-plugin)

log() { printf 'build-vault: %s\n' "$*" >&2; }

[[ -f "$mod/go.sum" ]] || { log "missing $mod/go.sum"; exit 1; }
hash="$(sha256sum "$mod/go.sum" | cut -c1-16)"
cache="${DBPROXY_CACHE:-${HOME:-/tmp}/.cache/dbproxy}"
dir="$cache/vault-$hash"

have_all() {
	local b
	for b in "${bins[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

if have_all; then
	log "cached: $dir"
	echo "$dir"
	exit 0
fi

mkdir -p "$cache"
# One build at a time per cache key (parallel test packages, make -j).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$cache/vault-$hash.lock"
	log "waiting for build lock $cache/vault-$hash.lock"
	flock 9
	if have_all; then
		log "cached (built by another process): $dir"
		echo "$dir"
		exit 0
	fi
fi

# Build into a temporary directory and move the results in at the end, so an
# interrupted build never leaves a directory that looks complete.
tmp="$(mktemp -d "$cache/vault-$hash.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

export GOWORK=off
# -buildvcs=false: the module sits in a git checkout that may be owned by
# another user (CI); -s -w: smaller binaries, faster link (compile cache unaffected).
flags=(-buildvcs=false -ldflags=-s\ -w)

start=$SECONDS
step() {
	local t=$SECONDS
	log "go build $*"
	(cd "$mod" && go build "${flags[@]}" "$@") >&2
	log "  done in $((SECONDS - t))s"
}
step -tags minimal -o "$tmp/vault" .
step -o "$tmp/postgresql-database-plugin" github.com/hashicorp/vault/plugins/database/postgresql/postgresql-database-plugin
step -o "$tmp/mysql-database-plugin" github.com/hashicorp/vault/plugins/database/mysql/mysql-database-plugin

mkdir -p "$dir"
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$dir/$b"; done
have_all || { log "build finished but binaries are missing in $dir"; exit 1; }
log "built in $((SECONDS - start))s: $dir"
echo "$dir"
