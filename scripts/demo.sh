#!/usr/bin/env bash
# demo.sh runs dbproxy in front of a real PostgreSQL with credentials from a
# real Vault (test/devstack) whose leases live seconds, not hours, so that
# credential rotations happen while you watch. It shows `dbproxy status`, one
# client session that keeps querying across several live rotations (each
# transaction runs as whichever Vault-made user is current), `dbproxy status`
# again, and leaves it all running for you to try.
#
#   scripts/demo.sh [start]   (make demo)       start, or restart, the demo
#   scripts/demo.sh stop      (make demo-stop)  stop dbproxy and devstack
#
# Everything lives in ./demo (DEMO_DIR): devstack's servers and logs,
# dbproxy.yaml, dbproxy.log and the two pid files. stop stops the processes
# named by the pid files and removes nothing but those files.
#
#   DEMO_DIR            state directory (default ./demo)
#   DEMO_PORT           dbproxy's sidecar listener port (default 6432)
#   DEMO_ADMIN_PORT     dbproxy's admin port (default 9187)
#   DEMO_START_TIMEOUT  seconds to wait for devstack (default 900: a cold
#                       Vault build takes minutes; a cached one seconds)
#   DEMO_TTL            the Vault role's default TTL (default 10s)
#   DEMO_MAX_TTL        its max TTL, the hard end (default 30s: dbproxy
#                       rotates at half of it, so every 15s)
#   DEMO_LOOP_SECONDS   how long the client loop runs (default 60)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
dir="${DEMO_DIR:-$root/demo}"
port="${DEMO_PORT:-6432}"
admin_port="${DEMO_ADMIN_PORT:-9187}"
start_timeout="${DEMO_START_TIMEOUT:-900}"
ttl="${DEMO_TTL:-10s}"
max_ttl="${DEMO_MAX_TTL:-30s}"
loop_seconds="${DEMO_LOOP_SECONDS:-60}"
identity=orders-api

log() { printf '>> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# ours NAME PIDFILE: prints the pid in PIDFILE if that process is alive and
# is our NAME binary (not a recycled pid); fails otherwise.
ours() {
	local name=$1 pidfile=$2 pid cmdline
	[[ -f "$pidfile" ]] || return 1
	pid="$(<"$pidfile")"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
	[[ "$cmdline" == *"bin/$name "* ]] || return 1
	echo "$pid"
}

# stop_one NAME: SIGTERM the process in DIR/NAME.pid, wait up to 45s (dbproxy
# drains for its shutdown_timeout, devstack stops three servers), then SIGKILL.
stop_one() {
	local name=$1 pidfile="$dir/$1.pid" pid i
	if ! pid="$(ours "$name" "$pidfile")"; then
		if [[ -f "$pidfile" ]]; then
			log "$name: not running (stale $pidfile removed)"
			rm -f "$pidfile"
		else
			log "$name: not running"
		fi
		return 0
	fi
	log "$name: stopping pid $pid"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 450; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$name: still running after 45s, sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
}

stop_demo() {
	# dbproxy first: it may revoke its leases while Vault is still up.
	stop_one dbproxy
	stop_one devstack
}

# in_use PORT: something accepts connections on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tail_log() {
	[[ -f "$1" ]] || return 0
	printf -- '--- last lines of %s ---\n' "$1" >&2
	tail -n "${2:-25}" "$1" >&2
	printf -- '---\n' >&2
}

start_demo() {
	local t0=$SECONDS p
	for p in psql curl; do
		command -v "$p" >/dev/null || die "$p not found (make deps installs it)"
	done

	if ours dbproxy "$dir/dbproxy.pid" >/dev/null || ours devstack "$dir/devstack.pid" >/dev/null; then
		log "a demo is already running in $dir: stopping it first"
		stop_demo
	fi
	for p in "$port" "$admin_port"; do
		if in_use "$p"; then
			die "127.0.0.1:$p is in use by another program (see: ss -ltnp 'sport = :$p'); free it or set DEMO_PORT / DEMO_ADMIN_PORT"
		fi
	done
	mkdir -p "$dir"

	log "building bin/dbproxy and bin/devstack"
	"$GO" build -o bin/dbproxy ./cmd/dbproxy
	"$GO" build -o bin/devstack ./test/devstack

	# From here on, a failure stops what was started.
	trap 'st=$?; if ((st != 0)); then echo "demo: failed; stopping what was started" >&2; stop_demo >&2; fi' EXIT

	log "starting devstack (PostgreSQL 15 + Vault dev server) in $dir (log: $dir/devstack.log)"
	rm -f "$dir/stack.env"
	nohup bin/devstack --dir "$dir" --ttl "$ttl" --max-ttl "$max_ttl" >"$dir/devstack.log" 2>&1 </dev/null &
	echo $! >"$dir/devstack.pid"
	local devpid=$! waited=0
	until [[ -f "$dir/stack.env" ]]; do
		if ! kill -0 "$devpid" 2>/dev/null; then
			tail_log "$dir/devstack.log"
			die "devstack exited before it was ready"
		fi
		if ((waited >= start_timeout * 10)); then
			tail_log "$dir/devstack.log"
			die "devstack not ready after ${start_timeout}s"
		fi
		if ((waited == 100)); then
			log "still waiting for devstack (a first run builds Vault from source; that takes minutes)"
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	# shellcheck source=/dev/null
	. "$dir/stack.env"
	log "devstack ready: PostgreSQL $PG_ADDR, Vault $VAULT_ADDR (role $VAULT_MOUNT/creds/$VAULT_PG_ROLE, ttl $VAULT_ROLE_TTL, max $VAULT_ROLE_MAXTTL)"

	cat >"$dir/dbproxy.yaml" <<EOF
# Written by scripts/demo.sh for the stack in stack.env (test/devstack).
shutdown_timeout: 5s
vault:
  address: $VAULT_ADDR
  auth: { method: token, token_file: $VAULT_TOKEN_FILE }
backends:
  appdb:
    protocol: postgres
    address: $PG_ADDR
    database: $PGDATABASE
    vault_mount: $VAULT_MOUNT
    vault_role: $VAULT_PG_ROLE
    pool: { mode: transaction, max_connections: 5 }
listeners:
  # Sidecar: every client of this loopback listener is $identity.
  - { name: orders-sidecar, protocol: postgres, address: "127.0.0.1:$port", identity: $identity }
identities:
  $identity:
    grants: [ { backend: appdb } ]
admin: { address: "127.0.0.1:$admin_port" }
EOF
	bin/dbproxy check --config "$dir/dbproxy.yaml" >/dev/null

	log "starting dbproxy (config: $dir/dbproxy.yaml, log: $dir/dbproxy.log)"
	nohup bin/dbproxy run --config "$dir/dbproxy.yaml" >"$dir/dbproxy.log" 2>&1 </dev/null &
	echo $! >"$dir/dbproxy.pid"
	local proxypid=$!
	waited=0
	until curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/readyz" 2>/dev/null; do
		if ! kill -0 "$proxypid" 2>/dev/null; then
			tail_log "$dir/dbproxy.log"
			die "dbproxy exited before it was ready"
		fi
		if ((waited >= 300)); then
			curl -sS "http://127.0.0.1:$admin_port/readyz" >&2 || true
			tail_log "$dir/dbproxy.log"
			die "dbproxy not ready after 30s"
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	log "dbproxy ready (http://127.0.0.1:$admin_port/readyz)"

	local dsn="host=127.0.0.1 port=$port dbname=appdb user=$identity"
	local out
	echo
	log "psql \"$dsn\" -c 'select current_user, session_user'"
	out="$(PGCONNECT_TIMEOUT=10 psql -X -P pager=off "$dsn" -v ON_ERROR_STOP=1 </dev/null \
		-c 'select current_user, session_user' \
		-c "select pid, usename, application_name, client_addr, backend_start::timestamp(0), state
		    from pg_stat_activity where application_name = 'dbproxy:$identity:psql'" 2>&1)" || {
		echo "$out" >&2
		tail_log "$dir/dbproxy.log"
		die "psql through dbproxy failed"
	}
	echo "$out"
	grep -Eq '^ *v-[^ ]+ *\| *v-' <<<"$out" || die "current_user is not a Vault-made user (v-...)"
	grep -q "dbproxy:$identity:psql" <<<"$out" || die "no pg_stat_activity row with application_name dbproxy:$identity:psql"

	echo
	log "dbproxy status (before)"
	bin/dbproxy status --config "$dir/dbproxy.yaml"
	echo
	client_loop "$dsn"
	echo
	log "dbproxy status (after)"
	bin/dbproxy status --config "$dir/dbproxy.yaml"
	echo
	log "rotations so far: curl -s 127.0.0.1:$admin_port/metrics | grep ^dbproxy_credential_rotations_total"
	curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep '^dbproxy_credential_rotations_total' || true

	trap - EXIT
	cat <<EOF

The demo is running ($((SECONDS - t0))s in all). dbproxy keeps rotating the credential at
half its max TTL ($max_ttl): see bin/dbproxy status --config $dir/dbproxy.yaml.
 Connect through dbproxy (no password: the
listener is the identity $identity, and Vault makes the database user):

    psql "host=127.0.0.1 port=$port dbname=appdb user=$identity"

Admin API:   curl -s 127.0.0.1:$admin_port/v1/sessions   (also /v1/pools, /v1/leases, /metrics)
Real server: . $dir/stack.env && psql "\$PG_SUPER_DSN"
Logs:        $dir/dbproxy.log  $dir/devstack.log  $PG_LOG  $VAULT_LOG
Config:      $dir/dbproxy.yaml
Stop it:     make demo-stop
EOF
}

# client_loop DSN: ONE psql session (one client connection, transaction
# pooling) that runs a query every 3 seconds for loop_seconds. Each query is
# its own transaction, so it runs on a server connection of the credential
# generation that is current at that moment: the user changes under a client
# that never reconnects and never sees an error.
client_loop() {
	local dsn=$1 n=$((loop_seconds / 3)) i out users
	log "one psql session, a query every 3s for ${loop_seconds}s, across live rotations (lease ttl $ttl, max ttl $max_ttl)"
	# tee to a file, not /dev/stderr: opening that truncates a log file
	# the caller redirected stderr to.
	for ((i = 1; i <= n; i++)); do
		echo "select to_char(clock_timestamp(), 'HH24:MI:SS') || '  query $i  ran as ' || current_user;"
		if ((i < n)); then echo '\! sleep 3'; fi
	done | PGCONNECT_TIMEOUT=10 psql -X -q -At -v ON_ERROR_STOP=1 "$dsn" 2>&1 | tee "$dir/client-loop.log" || {
		tail_log "$dir/dbproxy.log"
		die "the client loop failed: a rotation reached the client"
	}
	out="$(<"$dir/client-loop.log")"
	users="$(grep -o 'ran as v-[^ ]*' <<<"$out" | sort -u | wc -l)"
	log "the session ran as $users different Vault-made users without reconnecting or seeing an error"
	((users >= 2)) || die "no rotation happened during the loop (is DEMO_MAX_TTL much longer than DEMO_LOOP_SECONDS?)"
}

case "${1:-start}" in
start) start_demo ;;
stop) stop_demo ;;
*) die "usage: $0 [start|stop]" ;;
esac
