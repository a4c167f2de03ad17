#!/usr/bin/env bash
# install-deps.sh makes sure the Debian packages the integration tests and
# benchmarks need are installed (chromium: the status page test opens the
# page in headless Chromium). As root it installs what is missing with
# apt-get; as another user it prints the command to run and exits 1.
set -euo pipefail

pkgs=(postgresql-15 postgresql-client-15 mariadb-server mariadb-client pgbouncer sysbench chromium)

installed() {
	[[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
	for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
else
	# Not Debian: check for the programs instead.
	for b in /usr/lib/postgresql/15/bin/postgres mariadbd mariadb-install-db mariadb pgbouncer sysbench chromium; do
		command -v "$b" >/dev/null 2>&1 || missing+=("$b")
	done
	if ((${#missing[@]})); then
		echo "install-deps: missing programs: ${missing[*]} (install PostgreSQL 15, MariaDB 10.11, PgBouncer, sysbench, Chromium)" >&2
		exit 1
	fi
fi

if ((${#missing[@]} == 0)); then
	echo "install-deps: all present: ${pkgs[*]}" >&2
	exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
	echo "install-deps: missing Debian packages: ${missing[*]}" >&2
	echo "install-deps: run as root:" >&2
	echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
for p in "${missing[@]}"; do
	installed "$p" || { echo "install-deps: $p still not installed" >&2; exit 1; }
done
echo "install-deps: done" >&2
