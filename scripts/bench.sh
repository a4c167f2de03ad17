#!/usr/bin/env bash
# bench.sh (make bench) runs pgbench against one PostgreSQL four ways and
# writes bench/RESULTS.md:
#
#   direct     PostgreSQL itself (test/devstack, 127.0.0.1)
#   pgbouncer  /usr/sbin/pgbouncer in front of it: database appdb in
#              pool_mode=session, appdb_txn in pool_mode=transaction
#   floor      bin/pgfloor (bench/floor/pgfloor): the smallest synchronous Go
#              relay, one goroutine and one server connection per client, no
#              pooling; the cost floor of Go on this machine (issue 9)
#   dbproxy    bin/dbproxy, sidecar listener, Vault credentials: backend
#              appdb in session mode, appdb_txn in transaction mode
#
# Workloads (pgbench builtin select-only, -T BENCH_TIME seconds each, the
# four targets back to back): session pools: -S at 1 and 16 clients, -S -C
# (a new connection per transaction) at 4 clients; transaction pools (16
# server connections): -S at 1, 16 and 64 clients, -S -M prepared at 16,
# -S -C at 4, and -S at a fixed rate (-R BENCH_RATE, 16 clients) for
# latency average and stddev. Direct and the floor use as many server
# connections as clients. A target that cannot run a workload (PgBouncer
# 1.18 has no prepared statements in transaction mode) is reported as failed.
#
# First, before the stack starts, dbproxy's own relay benchmarks (go test
# -bench '^BenchmarkRelay' -benchmem ./proxy/..., about 15 s). Then, on the
# same stack: syscalls per transaction of each proxy (strace -c
# -f, short 1- and 16-client runs), a CPU profile of dbproxy (pprof) during
# a transaction-pool 16-client run, RSS per idle client (bin/idleclients
# holds BENCH_IDLE idle authenticated clients on dbproxy and on PgBouncer),
# and dbproxy's Go runtime settings (GOMAXPROCS, GOGC, GOMEMLIMIT) compared
# at 16 clients in the transaction pool.
#
# Duration: 36 runs of BENCH_TIME plus 9 more for the profile and the
# runtime settings (dbproxy's and the floor's), 3 s each of strace, and
# setup: about 12 minutes at the default 10 s (make bench then runs
# bench-mysql.sh, about 3 minutes: 15 in all).
#
# All traffic stays on 127.0.0.1. State goes to a temporary directory that is
# removed at the end (kept on failure or with BENCH_KEEP=1); the raw pgbench
# output goes to bench/bench.log (not committed).
#
#   BENCH_TIME   seconds per run (default 10)
#   BENCH_RATE   pgbench -R rate of the fixed-rate run (default 2000 tps)
#   BENCH_IDLE   idle clients for the memory figure (default 5000)
#   BENCH_SCALE  pgbench -i scale (default 10)
#   BENCH_OUT    results file (default bench/RESULTS.md)
#   BENCH_KEEP   keep the temporary directory
#   BENCH_REV    build dbproxy and devstack from this commit instead of the
#                working tree (e.g. HEAD while others edit the tree)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
T="${BENCH_TIME:-10}"
rate="${BENCH_RATE:-2000}"
nidle="${BENCH_IDLE:-5000}"
scale="${BENCH_SCALE:-10}"
out="${BENCH_OUT:-$root/bench/RESULTS.md}"
rawlog="$root/bench/bench.log"
pgbouncer_bin=/usr/sbin/pgbouncer
t_start=$SECONDS

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/bench-lib.sh
. "$root/scripts/bench-lib.sh"

for c in pgbench psql "$pgbouncer_bin" awk curl; do
	command -v "$c" >/dev/null || die "$c not found (make deps installs PostgreSQL clients and PgBouncer)"
done

# Idle clients need a descriptor each in dbproxy, PgBouncer and idleclients.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < nidle + 500)); then
	nidle=$(($(ulimit -n) - 500))
	log "warning: ulimit -n is $(ulimit -n): idle clients lowered to $nidle"
fi

work="$(mktemp -d /tmp/dbproxy-bench.XXXXXX)"
chmod 755 "$work" # PostgreSQL and PgBouncer run as another user when we are root
devstack_pid='' proxy_pid='' bouncer_pid='' floor_pid='' idle_pid=''

cleanup() {
	local st=$?
	stop "$idle_pid" idleclients
	stop "$proxy_pid" dbproxy
	stop "$floor_pid" pgfloor
	stop "$bouncer_pid" pgbouncer
	stop "$devstack_pid" devstack
	finish "$st"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

upstream_logins() { grep -c 'connection authorized' "$PG_LOG" || true; }

# --- build and start the stack ---------------------------------------------

build_bins

# The relay's own Go benchmarks (issue 9: 0 allocs/op), before the stack
# starts: in process, over loopback to a fake server.
log "go test -bench '^BenchmarkRelay' -benchmem ./proxy/..."
gosrc="$root"
[[ -z "${BENCH_REV:-}" ]] || gosrc="$work/src"
gobench="$(cd "$gosrc" && "$GO" test -run '^$' -bench '^BenchmarkRelay' -benchmem ./proxy/... 2>&1 |
	grep -E '^(Benchmark|cpu:|FAIL|--- FAIL|panic)')" || true

log "starting devstack (PostgreSQL + Vault) in $work/stack"
"$bindir/devstack" --dir "$work/stack" --ttl 1h --max-ttl 24h >"$work/devstack.log" 2>&1 </dev/null &
devstack_pid=$!
wait_for devstack "$devstack_pid" 900 test -f "$work/stack/stack.env"
# shellcheck source=/dev/null
. "$work/stack/stack.env"

bench_pw="bench-$RANDOM$RANDOM$RANDOM"
export PGPASSFILE="$work/pgpass" PGCONNECT_TIMEOUT=10
unset PGUSER PGPASSWORD PGSSLMODE PGOPTIONS PGAPPNAME
printf '127.0.0.1:%s:*:bench:%s\n' "$PGPORT" "$bench_pw" >"$PGPASSFILE"
chmod 600 "$PGPASSFILE"

log "pgbench -i -s $scale on the direct server"
pgbench -i -s "$scale" -q "$PG_SUPER_DSN" >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; die "pgbench -i failed"; }
psql -X -q -v ON_ERROR_STOP=1 "$PG_SUPER_DSN" >/dev/null <<EOF
CREATE ROLE bench LOGIN PASSWORD '$bench_pw';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC;
VACUUM ANALYZE;
EOF
# The bench role logs in without a password over 127.0.0.1 (trust, the
# first line of pg_hba.conf), like the proxies' clients: direct and the
# floor then pay no SCRAM per connection either, so -C and the start of
# every run (16 or 64 logins before -R's schedule and -T's clock are
# fair) measure the path, not password hashing.
hba="$(psql -X -At "$PG_SUPER_DSN" -c 'SHOW hba_file' </dev/null)"
{ printf 'host all bench 127.0.0.1/32 trust\n'; cat "$hba"; } >"$work/pg_hba.conf"
cat "$work/pg_hba.conf" >"$hba" # keeps the file's owner
psql -X -At "$PG_SUPER_DSN" -c 'SELECT pg_reload_conf()' >/dev/null </dev/null

# PgBouncer refuses to run as root: run it as the user PostgreSQL runs as.
bdir="$work/pgbouncer"
mkdir -p "$bdir"
printf '"bench" "%s"\n' "$bench_pw" >"$bdir/userlist.txt"
chmod 600 "$bdir/userlist.txt"
run_as=()
if ((EUID == 0)); then
	chown -R postgres: "$bdir"
	run_as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

# start_pgbouncer: sets bport and bouncer_pid; retries on a port lost to a race.
start_pgbouncer() {
	local attempt st
	for ((attempt = 1; attempt <= 3; attempt++)); do
		bport="$(free_port)"
		cat >"$bdir/pgbouncer.ini" <<EOF
[databases]
appdb = host=127.0.0.1 port=$PGPORT dbname=appdb
appdb_txn = host=127.0.0.1 port=$PGPORT dbname=appdb pool_mode=transaction pool_size=16

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
pool_mode = session
; clients are not authenticated (like dbproxy's sidecar listener); the
; password in the userlist is for logging in to PostgreSQL (SCRAM).
auth_type = trust
auth_file = $bdir/userlist.txt
max_client_conn = $((nidle + 200))
default_pool_size = 32
logfile = $bdir/pgbouncer.log
pidfile = $bdir/pgbouncer.pid
EOF
		log "starting PgBouncer on 127.0.0.1:$bport (pool_mode=session)"
		"${run_as[@]}" "$pgbouncer_bin" "$bdir/pgbouncer.ini" >"$bdir/stdout.log" 2>&1 </dev/null &
		bouncer_pid=$!
		st=0
		wait_ready "$bouncer_pid" 30 psql -X -At "host=127.0.0.1 port=$bport dbname=appdb user=bench sslmode=disable" -c 'select 1' || st=$?
		((st == 0)) && return 0
		((st == 1)) && grep -qi 'address already in use' "$bdir/pgbouncer.log" "$bdir/stdout.log" 2>/dev/null && continue
		die "pgbouncer did not start (logs in $bdir)"
	done
	die "pgbouncer: no free port after 3 attempts"
}

# dbproxy_config writes $work/dbproxy.yaml for ports $pport and $aport.
dbproxy_config() {
	cat >"$work/dbproxy.yaml" <<EOF
vault:
  address: $VAULT_ADDR
  auth: { method: token, token_file: $VAULT_TOKEN_FILE }
backends:
  appdb:
    protocol: postgres
    address: $PG_ADDR
    database: appdb
    vault_mount: $VAULT_MOUNT
    vault_role: $VAULT_PG_ROLE
    pool: { mode: session, max_connections: 32 }
  appdb_txn:
    protocol: postgres
    address: $PG_ADDR
    database: appdb
    vault_mount: $VAULT_MOUNT
    vault_role: $VAULT_PG_ROLE
    pool: { mode: transaction, max_connections: 16 }
listeners:
  - { name: bench, protocol: postgres, address: "127.0.0.1:$pport", identity: bench }
identities:
  bench:
    grants: [ { backend: appdb }, { backend: appdb_txn } ]
admin: { address: "127.0.0.1:$aport", pprof: true }
EOF
}

start_pgbouncer
start_dbproxy dbproxy_config "session and transaction pools"
pport0=$pport # the runtime settings restart dbproxy on other ports
# floor_ready: the floor answers a query. It relays SCRAM to PostgreSQL, so
# libpq needs the password for the floor's port too.
floor_ready() {
	grep -q "^127.0.0.1:$fport:" "$PGPASSFILE" || printf '127.0.0.1:%s:*:bench:%s\n' "$fport" "$bench_pw" >>"$PGPASSFILE"
	psql -X -At "host=127.0.0.1 port=$fport dbname=appdb user=bench sslmode=disable" -c 'select 1' </dev/null
}
start_floor "$toolsdir/pgfloor" "$PG_ADDR" floor_ready

declare -A dsn=(
	[direct]="host=127.0.0.1 port=$PGPORT dbname=appdb user=bench sslmode=disable"
	[pgbouncer]="host=127.0.0.1 port=$bport dbname=appdb user=bench sslmode=disable"
	[floor]="host=127.0.0.1 port=$fport dbname=appdb user=bench sslmode=disable"
	[dbproxy]="host=127.0.0.1 port=$pport dbname=appdb user=bench sslmode=disable"
)
declare -A ppid=([pgbouncer]=$bouncer_pid [floor]=$floor_pid [dbproxy]=$proxy_pid)
for t in direct pgbouncer floor dbproxy; do
	[[ "$(psql -X -At "${dsn[$t]}" -c 'select count(*) from pgbench_branches' </dev/null)" == "$scale" ]] ||
		die "$t: cannot read pgbench_branches"
done


# --- runs --------------------------------------------------------------------

targets=(direct pgbouncer floor dbproxy)
wl_names=("session pool: select-only, 1 client" "session pool: select-only, 16 clients"
	"session pool: select-only, new connection per txn (-C), 4 clients"
	"transaction pool: select-only, 1 client" "transaction pool: select-only, 16 clients"
	"transaction pool: select-only, 64 clients" "transaction pool: select-only -M prepared, 16 clients"
	"transaction pool: select-only, new connection per txn (-C), 4 clients"
	"transaction pool: select-only at $rate tps (-R), 16 clients")
wl_flags=("-S -c 1 -j 1" "-S -c 16 -j 2" "-S -C -c 4 -j 2"
	"-S -c 1 -j 1" "-S -c 16 -j 2" "-S -c 64 -j 2" "-S -M prepared -c 16 -j 2" "-S -C -c 4 -j 2"
	"-S -R $rate -c 16 -j 2")
# The proxies' database (pool) per workload; direct and the floor use appdb.
wl_db=(appdb appdb appdb appdb_txn appdb_txn appdb_txn appdb_txn appdb_txn appdb_txn)
# Workloads by role in the report.
w_s1=0 w_c_session=2 w_t1=3 w_t16=4 w_t64=5 w_prep=6 w_c_txn=7 w_rate=8
declare -A tps lat sd lag fails logins cpu busy ntx failed_why
hz="$(getconf CLK_TCK)"
: >"$rawlog"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${load_before%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	log "warning: load average $load_before on $(nproc) CPUs: other work will skew the figures"
fi

log "warm-up: 3s select-only direct"
pgbench -n -S -c 2 -j 2 -T 3 "${dsn[direct]}" >>"$rawlog" 2>&1

# pgbench_run KEY PID DSN ARGS...: one pgbench run; its figures go to the
# arrays above under KEY, with the CPU of PID (none when empty). Returns
# pgbench's status, or 100 when its output has no figures; its output is
# in $res.
pgbench_run() {
	local k=$1 pid=$2 target_dsn=$3 st=0 l0 l1 b0 m0 b1 m1 c0=0 c1=0 processed
	shift 3
	l0="$(upstream_logins)"
	read -r b0 m0 < <(machine_ticks)
	[[ -n "$pid" ]] && c0="$(cpu_ticks "$pid")"
	res="$(timeout $((T + 60)) pgbench "$@" "$target_dsn" 2>&1)" || st=$?
	[[ -n "$pid" ]] && c1="$(cpu_ticks "$pid")"
	read -r b1 m1 < <(machine_ticks)
	l1="$(upstream_logins)"
	printf '### %s: pgbench %s "%s"\n%s\n\n' "$k" "$*" "$target_dsn" "$res" >>"$rawlog"
	((st == 0)) || return "$st"
	tps[$k]="$(awk '/^tps = / { print $3; exit }' <<<"$res")"
	lat[$k]="$(awk '/^latency average = / { print $4; exit }' <<<"$res")"
	sd[$k]="$(awk '/^latency stddev = / { print $4; exit }' <<<"$res")"
	lag[$k]="$(awk '/^rate limit schedule lag: avg / { print $6; exit }' <<<"$res")"
	fails[$k]="$(awk -F'[:(]' '/^number of failed transactions/ { gsub(/ /, "", $2); print $2; exit }' <<<"$res")"
	processed="$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' <<<"$res")"
	# No figures: no transaction completed (e.g. the logins of 64 clients
	# took the whole run on a loaded machine).
	[[ -n "${tps[$k]}" && -n "${lat[$k]}" ]] || return 100
	ntx[$k]="${processed:-0}"
	logins[$k]=$((l1 - l0))
	busy[$k]="$(awk -v b=$((b1 - b0)) -v m=$((m1 - m0)) 'BEGIN { printf "%.0f", m ? 100 * b / m : 0 }')"
	cpu[$k]=-
	[[ -n "$pid" ]] && cpu[$k]="$(us_per_txn $((c1 - c0)) "${ntx[$k]}")"
	log "$k: tps ${tps[$k]}, latency ${lat[$k]} ms${sd[$k]:+ (stddev ${sd[$k]})}, failed ${fails[$k]:-?}, upstream logins ${logins[$k]}, proxy CPU ${cpu[$k]} us/txn, machine busy ${busy[$k]}%"
}

# us_per_txn TICKS N: clock ticks as microseconds per transaction.
us_per_txn() { awk -v c="$1" -v hz="$hz" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", c / hz * 1e6 / n; else print "-" }'; }

# target_dsn TARGET WORKLOAD: the DSN of TARGET for workload i (its pool).
target_dsn() {
	local d="${dsn[$1]}"
	[[ $1 == direct || $1 == floor ]] || d="${d/dbname=appdb/dbname=${wl_db[$2]}}"
	echo "$d"
}

for i in "${!wl_names[@]}"; do
	for t in "${targets[@]}"; do
		# shellcheck disable=SC2206 # word splitting of the flags is intended
		args=(-n ${wl_flags[$i]} -T "$T")
		d="$(target_dsn "$t" "$i")"
		log "$t: pgbench ${args[*]} ($d)"
		st=0
		pgbench_run "$i,$t" "${ppid[$t]:-}" "$d" "${args[@]}" || st=$?
		if ((st != 0)); then
			if ((st == 100)); then
				failed_why[$i,$t]="no transaction completed in $T s"
			else
				[[ $t == pgbouncer && ${wl_db[$i]} == appdb_txn ]] || { printf '%s\n' "$res" >&2; die "$t: pgbench failed"; }
				# Expected where PgBouncer lacks a feature: report it, go on.
				failed_why[$i,$t]="$(grep -m1 -o 'ERROR: .*' <<<"$res" | cut -c1-100)"
			fi
			log "$t: pgbench failed: ${failed_why[$i,$t]:-see $rawlog}"
			tps[$i,$t]=0 lat[$i,$t]='-' cpu[$i,$t]='-' logins[$i,$t]='-' busy[$i,$t]='-' fails[$i,$t]="all (${failed_why[$i,$t]:-pgbench failed})"
		fi
	done
done

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- where the time goes: syscalls per transaction, CPU profile ----------------
# Short extra runs, not part of the figures above: each proxy under
# `strace -c -f` at 1 and 16 clients (transaction pools), and dbproxy with a
# pprof CPU profile at 16 clients in the transaction pool.

# strace_run TARGET CLIENTS: syscalls per transaction of TARGET's process
# during a 3 s run, as "N (name n, ...)".
strace_run() {
	local t=$1 c=$2 spid n
	strace -f -c -o "$work/strace.$t.$c" -p "${ppid[$t]}" 2>/dev/null &
	spid=$!
	sleep 0.5
	n="$(timeout 40 pgbench -n -S -c "$c" -j "$((c > 1 ? 2 : 1))" -T 3 "$(target_dsn "$t" "$w_t16")" 2>&1 |
		awk -F': ' '/^number of transactions actually processed/ { print $2; exit }')"
	kill -INT "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	[[ -s "$work/strace.$t.$c" && "${n:-0}" -gt 0 ]] || return 0
	# Rows: % time, seconds, usecs/call, calls, [errors], syscall.
	awk -v n="$n" '
		$1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 {
			calls = $4 / n; errs = (NF == 6) ? $5 / n : 0; tot += calls
			if (calls >= 0.05) {
				s = sprintf("%s %.2f", $NF, calls)
				if (errs >= 0.05) s = s sprintf(" (%.2f failed)", errs)
				out = out (out ? ", " : "") s
			}
		}
		END { if (tot > 0) printf "%.2f (%s)", tot, out }' "$work/strace.$t.$c"
}

declare -A sys_per_txn
if command -v strace >/dev/null; then
	for c in 1 16; do
		for t in pgbouncer floor dbproxy; do
			sys_per_txn[$t,$c]="$(strace_run "$t" "$c")"
			log "$t at $c clients: ${sys_per_txn[$t,$c]:-n/a} syscalls per transaction"
		done
	done
fi

prof_secs=$((T > 6 ? T - 4 : T))
log "dbproxy: CPU profile (${prof_secs}s) during pgbench -S -c 16, transaction pool"
curl -fsS -o "$work/cpu.pprof" "http://127.0.0.1:$aport/debug/pprof/profile?seconds=$prof_secs" &
prof_pid=$!
pgbench_run prof "$proxy_pid" "$(target_dsn dbproxy "$w_t16")" -n -S -c 16 -j 2 -T "$T" || log "warning: the profiled run failed"
wait "$prof_pid" || log "warning: no CPU profile"

# --- idle clients: RSS per idle authenticated client -----------------------------

declare -A idle_before idle_after idle_gor
# idle_run TARGET PORT: holds $nidle idle clients on the transaction pool
# of TARGET and records its RSS before and with them.
idle_run() {
	local t=$1 port=$2 pid=${ppid[$1]} i g0=''
	[[ $t == dbproxy ]] && g0="$(metric go_goroutines)"
	idle_before[$t]="$(rss_kib "$pid")"
	log "$t: $nidle idle clients (RSS before: ${idle_before[$t]} KiB)"
	"$toolsdir/idleclients" -addr "127.0.0.1:$port" -n "$nidle" -user bench -database appdb_txn \
		>"$work/idle.$t.out" 2>"$work/idle.$t.err" </dev/null &
	idle_pid=$!
	for ((i = 0; i < 1200; i++)); do
		grep -q '^ready' "$work/idle.$t.out" && break
		kill -0 "$idle_pid" 2>/dev/null || die "idleclients on $t failed: $(cat "$work/idle.$t.err")"
		sleep 0.1
	done
	grep -q '^ready' "$work/idle.$t.out" || die "idleclients on $t: not ready after 120s"
	sleep 2 # let the proxy settle
	idle_after[$t]="$(rss_kib "$pid")"
	[[ $t == dbproxy ]] && idle_gor[$t]="$(awk -v a="$(metric go_goroutines)" -v b="$g0" -v n="$nidle" 'BEGIN { printf "%.2f", (a - b) / n }')"
	stop "$idle_pid" idleclients
	idle_pid=''
	log "$t: RSS with $nidle idle clients ${idle_after[$t]} KiB: $(per_idle "$t") KiB per client"
	sleep 2 # let the proxy close them
}
per_idle() { awk -v a="${idle_after[$1]}" -v b="${idle_before[$1]}" -v n="$nidle" 'BEGIN { printf "%.1f", (a - b) / n }'; }

# A fresh dbproxy (its pool warmed by one query), so that heap left over
# from the runs above neither hides nor inflates what idle clients cost.
stop "$proxy_pid" dbproxy
start_dbproxy dbproxy_config "fresh, for the idle clients"
ppid[dbproxy]=$proxy_pid
psql -X -At "host=127.0.0.1 port=$pport dbname=appdb_txn user=bench sslmode=disable" -c 'select 1' >/dev/null </dev/null ||
	die "the fresh dbproxy does not answer"
idle_run dbproxy "$pport"
idle_run pgbouncer "$bport"

# --- Go runtime settings (issue 9, item 7) ---------------------------------------
# dbproxy restarted with each setting (environment variables, which is what
# the runtime: section of the configuration sets too), a 2 s warm-up, then
# pgbench -S -c 16 in the transaction pool. The default runs first and last:
# the difference between those two is the noise.

# (A memory limit with GOGC=100 would change nothing here: dbproxy's heap
# stays far below 256 MiB, so only GOGC=off makes the limit the trigger.)
rt_names=("default (GOMAXPROCS=$(nproc), GOGC=100)" "GOMAXPROCS=1" "GOGC=200" "GOGC=400"
	"GOGC=off, GOMEMLIMIT=256MiB" "default again")
rt_env=("" "GOMAXPROCS=1" "GOGC=200" "GOGC=400" "GOGC=off GOMEMLIMIT=256MiB" "")
declare -A rt_gc rt_rss
last_rt=$((${#rt_names[@]} - 1))
for r in "${!rt_names[@]}"; do
	stop "$proxy_pid" dbproxy
	# shellcheck disable=SC2206 # word splitting of the settings is intended
	proxy_env=(${rt_env[$r]})
	start_dbproxy dbproxy_config "${rt_names[$r]}"
	proxy_env=()
	d="host=127.0.0.1 port=$pport dbname=appdb_txn user=bench sslmode=disable"
	pgbench -n -S -c 16 -j 2 -T 2 "$d" >>"$rawlog" 2>&1 || die "warm-up with ${rt_names[$r]} failed"
	g0="$(metric go_gc_duration_seconds_count)"
	log "dbproxy with ${rt_names[$r]}: pgbench -n -S -c 16 -j 2 -T $T"
	pgbench_run "rt,$r" "$proxy_pid" "$d" -n -S -c 16 -j 2 -T "$T" || { tps[rt,$r]=0 lat[rt,$r]=- cpu[rt,$r]=- ntx[rt,$r]=0; log "warning: the run with ${rt_names[$r]} failed"; }
	rt_gc[$r]="$(awk -v a="$(metric go_gc_duration_seconds_count)" -v b="$g0" -v n="${ntx[rt,$r]}" 'BEGIN { printf "%.2f", n ? (a - b) * 1000 / n : 0 }')"
	rt_rss[$r]="$(rss_kib "$proxy_pid")"
done

# The same for the floor: does GOMAXPROCS move Go's floor itself?
fl_names=("floor, default (GOMAXPROCS=$(nproc))" "floor, GOMAXPROCS=1")
fl_env=("" "GOMAXPROCS=1")
for r in "${!fl_names[@]}"; do
	stop "$floor_pid" pgfloor
	# shellcheck disable=SC2206 # word splitting of the settings is intended
	floor_env=(${fl_env[$r]})
	start_floor "$toolsdir/pgfloor" "$PG_ADDR" floor_ready
	floor_env=()
	d="host=127.0.0.1 port=$fport dbname=appdb user=bench sslmode=disable"
	log "${fl_names[$r]}: pgbench -n -S -c 16 -j 2 -T $T"
	pgbench_run "fl,$r" "$floor_pid" "$d" -n -S -c 16 -j 2 -T "$T" || { tps[fl,$r]=0 lat[fl,$r]=- cpu[fl,$r]=- ntx[fl,$r]=0; log "warning: the run with ${fl_names[$r]} failed"; }
done

# --- report --------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }
fmt_tps() { awk -v x="$1" 'BEGIN { if (x > 0) printf "%.0f", x; else print "failed" }'; }
# pct A B: A over B as a signed percentage ("+4%").
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%+.0f%%", 100 * (a - b) / b; else print "-" }'; }
# verdict VALUE OP GOAL: "met" or "missed" (OP is >= or <=).
verdict() {
	awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN { if (v == "-" || v == "") { print "n/a"; exit }
		ok = (op == ">=") ? v + 0 >= g : v + 0 <= g; print ok ? "met" : "**missed**" }'
}

table() {
	echo "| Workload | Direct TPS | PgBouncer TPS | floor TPS | dbproxy TPS | dbproxy / floor | dbproxy / PgBouncer | dbproxy / direct |"
	echo "|---|--:|--:|--:|--:|--:|--:|--:|"
	for i in "${!wl_names[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${wl_names[$i]}" \
			"$(fmt_tps "${tps[$i,direct]}")" "$(fmt_tps "${tps[$i,pgbouncer]}")" "$(fmt_tps "${tps[$i,floor]}")" "$(fmt_tps "${tps[$i,dbproxy]}")" \
			"$(ratio "${tps[$i,dbproxy]}" "${tps[$i,floor]}")" "$(ratio "${tps[$i,dbproxy]}" "${tps[$i,pgbouncer]}")" \
			"$(ratio "${tps[$i,dbproxy]}" "${tps[$i,direct]}")"
	done
}

cpu_table() {
	echo "| Workload | PgBouncer µs/txn | floor µs/txn | dbproxy µs/txn | dbproxy / floor | dbproxy / PgBouncer | Latency ms: direct / PgBouncer / floor / dbproxy |"
	echo "|---|--:|--:|--:|--:|--:|--:|"
	for i in "${!wl_names[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s | %s / %s / %s / %s |\n' "${wl_names[$i]}" \
			"${cpu[$i,pgbouncer]}" "${cpu[$i,floor]}" "${cpu[$i,dbproxy]}" \
			"$(ratio "${cpu[$i,dbproxy]}" "${cpu[$i,floor]}")" "$(ratio "${cpu[$i,dbproxy]}" "${cpu[$i,pgbouncer]}")" \
			"${lat[$i,direct]}" "${lat[$i,pgbouncer]}" "${lat[$i,floor]}" "${lat[$i,dbproxy]}"
	done
}

rate_table() {
	local i=$w_rate t
	echo "| Target | TPS | Latency average ms | Latency stddev ms | Schedule lag average ms | Proxy CPU µs/txn |"
	echo "|---|--:|--:|--:|--:|--:|"
	for t in "${targets[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$(fmt_tps "${tps[$i,$t]}")" "${lat[$i,$t]}" "${sd[$i,$t]:--}" "${lag[$i,$t]:--}" "${cpu[$i,$t]}"
	done
}

targets_table() {
	local r
	echo "| Target (issue 9) | Figure in this run | Goal | |"
	echo "|---|--:|--:|---|"
	r="$(ratio "${tps[$w_t16,dbproxy]}" "${tps[$w_t16,floor]}")"
	echo "| -S 16 clients, transaction pool: dbproxy / floor | $r | >= 0.95 | $(verdict "$r" '>=' 0.95) |"
	r="$(ratio "${tps[$w_t64,dbproxy]}" "${tps[$w_t64,pgbouncer]}")"
	echo "| -S 64 clients, transaction pool: dbproxy / PgBouncer | $r | >= 1.00 | $(verdict "$r" '>=' 1) |"
	r="$(ratio "${tps[$w_s1,dbproxy]}" "${tps[$w_s1,floor]}")"
	echo "| -S 1 client, session pool: dbproxy / floor | $r | >= 0.95 | $(verdict "$r" '>=' 0.95) |"
	r="$(ratio "${tps[$w_t1,dbproxy]}" "${tps[$w_t1,floor]}")"
	echo "| -S 1 client, transaction pool: dbproxy / floor | $r | >= 0.95 | $(verdict "$r" '>=' 0.95) |"
	r="$(ratio "${tps[$w_c_session,dbproxy]}" "${tps[$w_c_session,pgbouncer]}")"
	echo "| -S -C 4 clients, session pool: dbproxy / PgBouncer | $r | >= 0.90 (aim 1.0) | $(verdict "$r" '>=' 0.9) |"
	r="$(ratio "${tps[$w_c_txn,dbproxy]}" "${tps[$w_c_txn,pgbouncer]}")"
	echo "| -S -C 4 clients, transaction pool: dbproxy / PgBouncer | $r | >= 0.90 (aim 1.0) | $(verdict "$r" '>=' 0.9) |"
	r="$(ratio "${tps[$w_prep,dbproxy]}" "${tps[$w_t16,dbproxy]}")"
	echo "| -S -M prepared 16 clients, transaction pool: dbproxy prepared / dbproxy simple | $r | >= 0.90 | $(verdict "$r" '>=' 0.9) |"
	r="$(ratio "${cpu[$w_t16,dbproxy]}" "${cpu[$w_t16,floor]}")"
	echo "| CPU per transaction, -S 16 clients, transaction pool: dbproxy / floor | $r | <= 1.10 | $(verdict "$r" '<=' 1.1) |"
	r="$(ratio "${cpu[$w_s1,dbproxy]}" "${cpu[$w_s1,floor]}")"
	echo "| CPU per transaction, -S 1 client, session pool: dbproxy / floor | $r | <= 1.10 | $(verdict "$r" '<=' 1.1) |"
	r="$(per_idle dbproxy)"
	echo "| RSS per idle client, KiB | $r | <= 12 | $(verdict "$r" '<=' 12) |"
	echo
	echo "The MySQL targets (dbproxy / floor >= 0.95 in sysbench oltp_read_only, session and transaction pool) are in the MySQL section below."
}

runtime_table() {
	local r
	echo "| Runtime setting | TPS | vs dbproxy default (first run) | Latency ms | CPU µs/txn | GC cycles per 1000 txn | RSS after the run, MiB |"
	echo "|---|--:|--:|--:|--:|--:|--:|"
	for r in "${!rt_names[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${rt_names[$r]}" "$(fmt_tps "${tps[rt,$r]}")" \
			"$(pct "${tps[rt,$r]}" "${tps[rt,0]}")" "${lat[rt,$r]}" "${cpu[rt,$r]}" "${rt_gc[$r]}" \
			"$(awk -v k="${rt_rss[$r]}" 'BEGIN { printf "%.1f", k / 1024 }')"
	done
	for r in "${!fl_names[@]}"; do
		printf '| %s | %s | %s | %s | %s | - | - |\n' "${fl_names[$r]}" "$(fmt_tps "${tps[fl,$r]}")" \
			"$(pct "${tps[fl,$r]}" "${tps[rt,0]}")" "${lat[fl,$r]}" "${cpu[fl,$r]}"
	done
}

# runtime_notes: which settings beat the default by more than this run's
# noise (the spread between the two default runs).
runtime_notes() {
	local r hi lo better=()
	hi="$(awk -v a="${tps[rt,0]}" -v b="${tps[rt,$last_rt]}" 'BEGIN { print (a > b) ? a : b }')"
	lo="$(awk -v a="${tps[rt,0]}" -v b="${tps[rt,$last_rt]}" 'BEGIN { print (a < b) ? a : b }')"
	for ((r = 1; r < last_rt; r++)); do
		awk -v x="${tps[rt,$r]}" -v hi="$hi" -v lo="$lo" 'BEGIN { exit !(x > hi + (hi - lo)) }' && better+=("${rt_names[$r]}")
	done
	echo "The two default runs differ by $(pct "$hi" "$lo") in TPS: a setting has to beat the better of them by more than that to count."
	if ((${#better[@]})); then
		echo "Beyond that noise in this run: $(printf '%s; ' "${better[@]}" | sed 's/; $//'). Repeat the run before changing a default on one figure."
	else
		echo "No setting beat the default beyond that noise in this run, so dbproxy keeps Go's defaults (\`runtime:\` left out)."
	fi
}

idle_table() {
	local t
	echo "| Target | Idle clients | RSS before, MiB | RSS with them, MiB | KiB per idle client | Goroutines per idle client |"
	echo "|---|--:|--:|--:|--:|--:|"
	for t in dbproxy pgbouncer; do
		printf '| %s | %s | %.1f | %.1f | %s | %s |\n' "$t" "$nidle" \
			"$(awk -v k="${idle_before[$t]}" 'BEGIN { print k / 1024 }')" "$(awk -v k="${idle_after[$t]}" 'BEGIN { print k / 1024 }')" \
			"$(per_idle "$t")" "${idle_gor[$t]:--}"
	done
}

cost_table() {
	echo "| Workload | Target | Transactions | Proxy CPU µs/txn | Upstream logins | Failed txns | Machine CPU busy |"
	echo "|---|---|--:|--:|--:|--:|--:|"
	for i in "${!wl_names[@]}"; do
		for t in "${targets[@]}"; do
			printf '| %s | %s | %s | %s | %s | %s | %s%% |\n' "${wl_names[$i]}" "$t" "${ntx[$i,$t]:--}" "${cpu[$i,$t]}" "${logins[$i,$t]}" "${fails[$i,$t]:-?}" "${busy[$i,$t]}"
		done
	done
}

# pprof_split FILE: dbproxy's CPU samples by kind, from a pprof profile.
pprof_split() {
	"$GO" tool pprof -top -nodecount=100000 "$bindir/dbproxy" "$1" 2>/dev/null | awk '
		$2 ~ /%$/ && $5 ~ /%$/ {
			p = $2; sub(/%/, "", p); name = $6
			if (name ~ /syscall/) k = "sys"
			else if (name ~ /^runtime\./ || name ~ /^internal\/runtime/) k = "rt"
			else if (name ~ /^github.com\/dbproxy/) k = "own"
			else k = "lib"
			sum[k] += p
		}
		END { printf "system calls %.0f%%, Go runtime (scheduler, netpoller, GC) %.0f%%, dbproxy code %.0f%%, libraries (bufio, sync, pgx, zap, ...) %.0f%%", sum["sys"], sum["rt"], sum["own"], sum["lib"] }'
}

# pprof_top FILE FLAGS: the top functions, as text.
pprof_top() {
	"$GO" tool pprof -top "$2" -nodecount=18 "$bindir/dbproxy" "$1" 2>/dev/null | sed -n '/flat%/,$p'
}

# where: the "Where the time goes" notes, from this run's figures.
where() {
	local c t name
	echo "- **One client**: a transaction is one query round trip (${lat[$w_s1,direct]} ms direct). Through the session pools PgBouncer adds $(us_delta "${lat[$w_s1,pgbouncer]}" "${lat[$w_s1,direct]}") µs, the floor $(us_delta "${lat[$w_s1,floor]}" "${lat[$w_s1,direct]}") µs and dbproxy $(us_delta "${lat[$w_s1,dbproxy]}" "${lat[$w_s1,direct]}") µs: two more loopback hops and a proxy wake-up each way. CPU per transaction: PgBouncer ${cpu[$w_s1,pgbouncer]} µs, floor ${cpu[$w_s1,floor]} µs, dbproxy ${cpu[$w_s1,dbproxy]} µs."
	echo "- **16 clients**: the machine is ${busy[$w_t16,direct]}% busy direct; whatever CPU a proxy spends per transaction is taken from pgbench and PostgreSQL. Transaction pool: PgBouncer ${cpu[$w_t16,pgbouncer]} µs, floor ${cpu[$w_t16,floor]} µs (no pool: 16 server connections), dbproxy ${cpu[$w_t16,dbproxy]} µs; dbproxy/floor = $(ratio "${tps[$w_t16,dbproxy]}" "${tps[$w_t16,floor]}"), floor/PgBouncer = $(ratio "${tps[$w_t16,floor]}" "${tps[$w_t16,pgbouncer]}")."
	if [[ -n "${sys_per_txn[dbproxy,16]:-}" ]]; then
		echo "- **System calls per transaction** (\`strace -c -f -p PID\` during separate 3 s pgbench -S runs, transaction pools; strace slows every call, so only the counts mean anything):"
		for c in 1 16; do
			for t in pgbouncer floor dbproxy; do
				name=$t
				[[ $t == pgbouncer ]] && name=PgBouncer
				echo "  - $name, $c client(s): ${sys_per_txn[$t,$c]:-not measured}"
			done
		done
		echo "  - A relay needs 2 reads and 2 writes per transaction (client request in, upstream out, answer in, client out). Go reads a socket until it would block (the failed reads, EAGAIN), then parks the goroutine in the netpoller (epoll_pwait); futex and nanosleep are threads of the Go scheduler waking each other. PgBouncer is one thread in an event loop (epoll_wait, recvfrom, sendto)."
	fi
	if [[ -s "$work/cpu.pprof" ]]; then
		echo "- **CPU profile of dbproxy** during pgbench -S -c 16 in the transaction pool (\`/debug/pprof/profile\`, ${prof_secs} s; that run: $(fmt_tps "${tps[prof]:-0}") TPS, ${cpu[prof]:--} µs CPU/txn): $(pprof_split "$work/cpu.pprof")."
		echo
		echo "  By own time (flat):"
		echo
		echo '  ```'
		pprof_top "$work/cpu.pprof" -flat | sed 's/^/  /'
		echo '  ```'
		echo
		echo "  By cumulative time:"
		echo
		echo '  ```'
		pprof_top "$work/cpu.pprof" -cum | sed 's/^/  /'
		echo '  ```'
	fi
	echo "- **New connection per transaction** (-C, 4 clients): direct and through the floor every transaction is a PostgreSQL login (${logins[$w_c_session,direct]} and ${logins[$w_c_session,floor]} logins seen: fork a backend, load the catalog caches; no password, see Setup); PgBouncer logged in upstream ${logins[$w_c_session,pgbouncer]} times and dbproxy ${logins[$w_c_session,dbproxy]} times (session pools). CPU per client connection and transaction: PgBouncer ${cpu[$w_c_session,pgbouncer]} µs, dbproxy ${cpu[$w_c_session,dbproxy]} µs (session pool), PgBouncer ${cpu[$w_c_txn,pgbouncer]} µs, dbproxy ${cpu[$w_c_txn,dbproxy]} µs (transaction pool)."
	echo "- **Noise**: before the runs the load average was $load_before (1, 5, 15 min) on $(nproc) CPUs, after them $load_after (this benchmark's own clients and backends included). The runtime table's first and last rows are the same setting: their difference is this run's noise. Compare ratios from one run, not figures across runs."
}

# us_delta A B: (A - B) ms as microseconds.
us_delta() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.0f", (a - b) * 1000 }'; }

cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"

mkdir -p "$(dirname "$out")"
{
	cat <<EOF2
# dbproxy benchmark: direct, PgBouncer, the floor and dbproxy

Written by \`make bench\` (scripts/bench.sh) on $(date -u '+%Y-%m-%d %H:%M UTC'), dbproxy at commit $commit.
Rerun it to refresh; the raw pgbench output of the run is in bench/bench.log (not committed).
This part took $(((SECONDS - t_start) / 60)) min $(((SECONDS - t_start) % 60)) s at $T s per run.

## Machine and versions

- CPUs (\`nproc\`): $(nproc); CPU model: ${cpu_model:-unknown}; kernel $(uname -r)
- Go: $("$GO" version)
- dbproxy: $("$bindir/dbproxy" version) at commit $commit
- PostgreSQL: $PG_VERSION
- PgBouncer: $("$pgbouncer_bin" --version | head -n1)
- pgbench: $(pgbench --version)

## Setup

Everything runs on this one machine over 127.0.0.1 TCP: pgbench, PostgreSQL, PgBouncer, the floor, dbproxy
and Vault share $(nproc) CPUs, so a proxy's CPU is taken from the client and the server.

- **PostgreSQL**: one server from \`test/devstack\` (fsync=off, shared_buffers=32MB, max_connections=200,
  log_connections=on). pgbench data: \`pgbench -i -s $scale\` as the superuser, then
  \`GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC\` and a role \`bench\` with a fixed password.
- **direct**: pgbench logs in as \`bench\`, without a password: the script puts
  \`host all bench 127.0.0.1/32 trust\` first in pg_hba.conf, so that direct and the floor pay no SCRAM per
  connection, like the proxies' clients (dbproxy logs in upstream as a Vault user, with SCRAM; PgBouncer as
  \`bench\`, which trust lets in).
- **PgBouncer**: \`pool_mode = session\`, \`default_pool_size = 32\` (database \`appdb_txn\`: \`pool_mode=transaction\`,
  \`pool_size=16\`), \`auth_type = trust\` for clients (like dbproxy's sidecar listener, which does no client
  authentication), logs in to PostgreSQL as \`bench\` (its userlist holds the password; trust lets it in). Run
  as the \`postgres\` user because it refuses to run as root.
- **floor**: \`bench/floor/pgfloor\`, a measuring tool, not product code: the smallest Go relay, one
  goroutine per client, synchronous (request up to Sync/Query, then the answer up to ReadyForQuery), each
  client on its own server connection dialled at accept; the client's startup (and authentication, were
  there any) is relayed byte for byte. It holds as many server connections as there are clients (16 at 16 clients)
  and allocates nothing per transaction: what it costs is Go's syscalls, netpoller and scheduler here.
- **dbproxy**: a sidecar listener bound to identity \`bench\`, backend pool \`mode: session\`,
  \`max_connections: 32\` (backend \`appdb_txn\`: \`mode: transaction\`, \`max_connections: 16\`), logs in to
  PostgreSQL with a Vault-issued user (\`$VAULT_MOUNT/creds/$VAULT_PG_ROLE\`, ttl 1h, so no rotation happens
  during the run), default (info) logging, Go runtime defaults.
- Every run uses \`sslmode=disable\` and \`-n\` (no vacuum); a 3 s select-only warm-up runs first. Runs go
  workload by workload, the four targets back to back.

## Commands

\`\`\`sh
pgbench -i -s $scale -q "\$SUPERUSER_DSN"
EOF2
	for i in "${!wl_names[@]}"; do
		echo "pgbench -n ${wl_flags[$i]} -T $T \"\$DSN\"    # ${wl_names[$i]}"
	done
	cat <<EOF2

# DSN, one per target (the proxies' dbname is appdb_txn for the transaction pool):
direct:    ${dsn[direct]/port=$PGPORT/port=\$PG_PORT}
pgbouncer: ${dsn[pgbouncer]/port=$bport/port=\$PGBOUNCER_PORT}
floor:     ${dsn[floor]/port=$fport/port=\$FLOOR_PORT}
dbproxy:   ${dsn[dbproxy]/port=$pport0/port=\$DBPROXY_PORT}

# the floor and the idle-client tool
bin/pgfloor -listen 127.0.0.1:\$FLOOR_PORT -upstream 127.0.0.1:\$PG_PORT
bin/idleclients -addr 127.0.0.1:\$PORT -n $nidle -user bench -database appdb_txn
\`\`\`

## Results

TPS as reported by pgbench (without initial connection time; with \`-C\` including reconnection times).
Ratios are dbproxy's TPS over the other's (1.00 = as fast).

EOF2
	table
	cat <<EOF2

CPU of the proxy process per transaction (utime+stime from /proc/PID/stat over the run, divided by the
transactions pgbench processed), and latency average:

EOF2
	cpu_table
	cat <<EOF2

### Fixed rate

\`pgbench -n -S -R $rate -c 16 -j 2 -T $T\`, transaction pools: pgbench schedules $rate transactions per second;
the latency counts from the scheduled start, so it includes waiting for a busy client (the schedule lag).

EOF2
	rate_table
	cat <<EOF2

### Targets

EOF2
	targets_table
	cat <<EOF2

### Go runtime settings

dbproxy restarted with each setting (as environment variables; the configuration's \`runtime:\` section sets
the same), a 2 s warm-up, then \`pgbench -n -S -c 16 -j 2 -T $T\` in the transaction pool. The first and last
rows for dbproxy are the same default setting: their difference is the noise of this run. GC cycles from
\`go_gc_duration_seconds_count\` on /metrics. The last two rows are the floor (bin/pgfloor, 16 server
connections, no pool) restarted the same way: what GOMAXPROCS does to Go's floor itself.

EOF2
	runtime_table
	echo
	runtime_notes
	cat <<EOF2

### Idle clients

\`bin/idleclients\` opens $nidle client connections to the transaction pool (startup message, AuthenticationOk,
ReadyForQuery) and holds them idle; the figure is the proxy's RSS (VmRSS) with them minus before, over
$nidle. dbproxy is restarted first (one query warms its pool), so the heap grown by the runs above does not
absorb them; PgBouncer has run all along. dbproxy's goroutines from \`go_goroutines\` on /metrics.

EOF2
	idle_table
	cat <<EOF2

### Relay benchmarks (Go)

\`go test -run '^\$' -bench '^BenchmarkRelay' -benchmem ./proxy/...\` at the same commit, before the stack started:
dbproxy's relay in process, over loopback to a small fake server, per protocol and pool mode.

\`\`\`
${gobench:-no BenchmarkRelay benchmarks at this commit}
\`\`\`

## Where the time goes

EOF2
	where
	cat <<EOF2

## Every run

Transactions, CPU of the proxy per transaction, logins PostgreSQL saw during the run (\`connection
authorized\` lines in its log), failed transactions and how busy the whole machine was (/proc/stat).

EOF2
	cost_table
	# make bench-fleet is a separate, hour-long run: point to its table.
	cat <<EOF2

## Fleet mode (make bench-fleet)

What fleet mode saves (Vault credential reads, lease renewals and revocations, database users
created and existing at once, with 1, 3 and 10 dbproxy processes, with and without \`fleet:\`) is
measured separately by \`make bench-fleet\` (bench/fleet, not part of \`make bench\`): the table, the
command, the duration and the date of the recorded run are in
[docs/fleet.md](../docs/fleet.md#benchmark).
EOF2
} >"$out"

echo
table
echo
cpu_table
echo
rate_table
echo
targets_table
echo
runtime_table
echo
idle_table
echo
log "wrote $out in $((SECONDS - t_start))s (raw pgbench output: $rawlog)"
