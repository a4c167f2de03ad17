#!/usr/bin/env bash
# bench.sh (make bench) runs pgbench against one PostgreSQL three ways and
# writes bench/RESULTS.md:
#
#   direct     PostgreSQL itself (test/devstack, 127.0.0.1)
#   pgbouncer  /usr/sbin/pgbouncer in front of it: database appdb in
#              pool_mode=session, appdb_txn in pool_mode=transaction
#   dbproxy    bin/dbproxy, sidecar listener, Vault credentials: backend
#              appdb in session mode, appdb_txn in transaction mode
#
# Workloads (pgbench builtin select-only, -T BENCH_TIME seconds each):
#   session pools: pgbench -S at 1 client and at 16 clients (-j 2), and
#   pgbench -S -C (a new connection per transaction) at 4 clients;
#   transaction pools (16 server connections): pgbench -S and -S -M prepared
#   at 16 and 64 clients. Direct runs use as many server connections as
#   clients. A target that cannot run a workload (PgBouncer 1.18 has no
#   prepared statements in transaction mode) is reported as failed.
#   One dbproxy run per transaction workload is CPU-profiled (pprof).
#
# Then, where strace and perf are installed and may attach, one short extra
# 1-client run per proxy under each, for the "where the time goes" notes
# (syscalls per transaction, kernel share of CPU samples).
#
# All traffic stays on 127.0.0.1. State goes to a temporary directory that is
# removed at the end (kept on failure or with BENCH_KEEP=1); the raw pgbench
# output goes to bench/bench.log (not committed).
#
#   BENCH_TIME   seconds per run (default 15; 21 runs)
#   BENCH_SCALE  pgbench -i scale (default 10)
#   BENCH_OUT    results file (default bench/RESULTS.md)
#   BENCH_KEEP   keep the temporary directory
#   BENCH_REV    build dbproxy and devstack from this commit instead of the
#                working tree (e.g. HEAD while others edit the tree)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
T="${BENCH_TIME:-15}"
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

work="$(mktemp -d /tmp/dbproxy-bench.XXXXXX)"
chmod 755 "$work" # PostgreSQL and PgBouncer run as another user when we are root
devstack_pid='' proxy_pid='' bouncer_pid=''

cleanup() {
	local st=$?
	stop "$proxy_pid" dbproxy
	stop "$bouncer_pid" pgbouncer
	stop "$devstack_pid" devstack
	finish "$st"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

upstream_logins() { grep -c 'connection authorized' "$PG_LOG" || true; }

# --- build and start the stack ---------------------------------------------

build_bins

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
max_client_conn = 200
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

declare -A dsn=(
	[direct]="host=127.0.0.1 port=$PGPORT dbname=appdb user=bench sslmode=disable"
	[pgbouncer]="host=127.0.0.1 port=$bport dbname=appdb user=bench sslmode=disable"
	[dbproxy]="host=127.0.0.1 port=$pport dbname=appdb user=bench sslmode=disable"
)
declare -A ppid=([pgbouncer]=$bouncer_pid [dbproxy]=$proxy_pid)
for t in direct pgbouncer dbproxy; do
	[[ "$(psql -X -At "${dsn[$t]}" -c 'select count(*) from pgbench_branches' </dev/null)" == "$scale" ]] ||
		die "$t: cannot read pgbench_branches"
done

# --- runs --------------------------------------------------------------------

targets=(direct pgbouncer dbproxy)
wl_names=("select-only, 1 client" "select-only, 16 clients" "select-only, new connection per txn (-C), 4 clients"
	"transaction pool: select-only, 16 clients" "transaction pool: select-only, 64 clients"
	"transaction pool: select-only -M prepared, 16 clients" "transaction pool: select-only -M prepared, 64 clients")
wl_flags=("-S -c 1 -j 1" "-S -c 16 -j 2" "-S -C -c 4 -j 2"
	"-S -c 16 -j 2" "-S -c 64 -j 2" "-S -M prepared -c 16 -j 2" "-S -M prepared -c 64 -j 2")
# The proxies' database (pool) per workload; direct always uses appdb.
wl_db=(appdb appdb appdb appdb_txn appdb_txn appdb_txn appdb_txn)
declare -A tps lat fails logins cpu busy ntx failed_why profile
hz="$(getconf CLK_TCK)"
: >"$rawlog"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${load_before%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	log "warning: load average $load_before on $(nproc) CPUs: other work will skew the figures"
fi

log "warm-up: 3s select-only direct"
pgbench -n -S -c 2 -j 2 -T 3 "${dsn[direct]}" >>"$rawlog" 2>&1

for i in "${!wl_names[@]}"; do
	for t in "${targets[@]}"; do
		# shellcheck disable=SC2206 # word splitting of the flags is intended
		args=(-n ${wl_flags[$i]} -T "$T")
		target_dsn="${dsn[$t]}"
		[[ $t == direct ]] || target_dsn="${target_dsn/dbname=appdb/dbname=${wl_db[$i]}}"
		log "$t: pgbench ${args[*]} ($target_dsn)"
		prof_pid=''
		if [[ $t == dbproxy && ${wl_db[$i]} == appdb_txn ]]; then
			# CPU profile of the middle of the run.
			curl -fsS -o "$work/cpu.$i.pprof" "http://127.0.0.1:$aport/debug/pprof/profile?seconds=$((T > 6 ? T - 4 : T))" &
			prof_pid=$!
		fi
		l0="$(upstream_logins)"
		read -r b0 m0 < <(machine_ticks)
		c0=0
		[[ -n "${ppid[$t]:-}" ]] && c0="$(cpu_ticks "${ppid[$t]}")"
		st=0
		res="$(timeout $((T + 60)) pgbench "${args[@]}" "$target_dsn" 2>&1)" || st=$?
		[[ -n "$prof_pid" ]] && { wait "$prof_pid" || true; profile[$i]="$work/cpu.$i.pprof"; }
		if ((st != 0)); then
			printf '%s\n' "$res" >>"$rawlog"
			[[ $t == pgbouncer && ${wl_db[$i]} == appdb_txn ]] || { printf '%s\n' "$res" >&2; die "$t: pgbench failed"; }
			# Expected where PgBouncer lacks a feature: report it, go on.
			failed_why[$i,$t]="$(grep -m1 -o 'ERROR: .*' <<<"$res" | cut -c1-100)"
			log "$t: pgbench failed: ${failed_why[$i,$t]:-see $rawlog}"
			tps[$i,$t]=0 lat[$i,$t]='-' cpu[$i,$t]='-' logins[$i,$t]='-' busy[$i,$t]='-' fails[$i,$t]="all (${failed_why[$i,$t]:-pgbench failed})"
			continue
		fi
		c1=0
		[[ -n "${ppid[$t]:-}" ]] && c1="$(cpu_ticks "${ppid[$t]}")"
		read -r b1 m1 < <(machine_ticks)
		l1="$(upstream_logins)"
		printf '### %s %s: pgbench %s "%s"\n%s\n\n' "$t" "${wl_names[$i]}" "${args[*]}" "$target_dsn" "$res" >>"$rawlog"
		k="$i,$t"
		tps[$k]="$(awk '/^tps = / { print $3; exit }' <<<"$res")"
		lat[$k]="$(awk '/^latency average = / { print $4; exit }' <<<"$res")"
		fails[$k]="$(awk -F'[:(]' '/^number of failed transactions/ { gsub(/ /, "", $2); print $2; exit }' <<<"$res")"
		processed="$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' <<<"$res")"
		[[ -n "${tps[$k]}" && -n "${lat[$k]}" ]] || { printf '%s\n' "$res" >&2; die "$t: cannot parse pgbench output"; }
		ntx[$k]="${processed:-0}"
		logins[$k]=$((l1 - l0))
		busy[$k]="$(awk -v b=$((b1 - b0)) -v m=$((m1 - m0)) 'BEGIN { printf "%.0f", m ? 100 * b / m : 0 }')"
		# proxy CPU per transaction, in microseconds
		cpu[$k]="$(awk -v c=$((c1 - c0)) -v hz="$hz" -v n="${processed:-0}" 'BEGIN { if (n > 0) printf "%.1f", c / hz * 1e6 / n; else print "-" }')"
		[[ -n "${ppid[$t]:-}" ]] || cpu[$k]="-"
		log "$t: tps ${tps[$k]}, latency ${lat[$k]} ms, failed ${fails[$k]:-?}, upstream logins ${logins[$k]}, proxy CPU ${cpu[$k]} us/txn, machine busy ${busy[$k]}%"
	done
done

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- where the time goes: syscalls and kernel/user split at 1 client ----------
# One extra short 1-client run per proxy under `strace -c -f` (syscalls per
# transaction) and one under `perf record` (share of samples in the kernel),
# when those tools are here and allowed to attach. The figures of the main
# runs above are taken without either.

# probe_run TARGET SECONDS: a 1-client select-only run; prints transactions.
probe_run() {
	timeout $(($2 + 30)) pgbench -n -S -c 1 -j 1 -T "$2" "${dsn[$1]}" 2>&1 |
		awk -F': ' '/^number of transactions actually processed/ { print $2; exit }'
}

declare -A sys_per_txn kernel_share
for t in pgbouncer dbproxy; do
	if command -v strace >/dev/null; then
		strace -f -c -o "$work/strace.$t" -p "${ppid[$t]}" 2>/dev/null &
		spid=$!
		sleep 0.5
		n="$(probe_run "$t" 3)"
		kill -INT "$spid" 2>/dev/null || true
		wait "$spid" 2>/dev/null || true
		if [[ -s "$work/strace.$t" && "${n:-0}" -gt 0 ]]; then
			# Rows: % time, seconds, usecs/call, calls, [errors], syscall.
			sys_per_txn[$t]="$(awk -v n="$n" '
				$1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 {
					calls = $4 / n; errs = (NF == 6) ? $5 / n : 0; tot += calls
					if (calls >= 0.05) {
						s = sprintf("%s %.1f", $NF, calls)
						if (errs >= 0.05) s = s sprintf(" (%.1f failed)", errs)
						out = out (out ? ", " : "") s
					}
				}
				END { if (tot > 0) printf "%.1f syscalls per transaction (%s)", tot, out }' "$work/strace.$t")"
		fi
	fi
	if command -v perf >/dev/null; then
		perf record -q -F 999 -p "${ppid[$t]}" -o "$work/perf.$t" -- sleep 3 >/dev/null 2>&1 &
		spid=$!
		probe_run "$t" 4 >/dev/null
		wait "$spid" 2>/dev/null || true
		if [[ -s "$work/perf.$t" ]]; then
			kernel_share[$t]="$(perf report -i "$work/perf.$t" --no-children --sort=dso --stdio 2>/dev/null |
				awk '$1 ~ /%$/ && $2 ~ /^\[kernel/ { sub(/%/, "", $1); k += $1 } END { if (k > 0) printf "%.0f%%", k }')"
		fi
	fi
	log "$t at 1 client: syscalls ${sys_per_txn[$t]:-n/a}; kernel share of CPU samples ${kernel_share[$t]:-n/a}"
done

# --- report --------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }
fmt_tps() { awk -v x="$1" 'BEGIN { if (x > 0) printf "%.0f", x; else print "failed" }'; }

table() {
	echo "| Workload | Direct TPS | PgBouncer TPS | dbproxy TPS | dbproxy / direct | dbproxy / PgBouncer | Direct latency ms | PgBouncer latency ms | dbproxy latency ms |"
	echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
	for i in "${!wl_names[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${wl_names[$i]}" \
			"$(fmt_tps "${tps[$i,direct]}")" "$(fmt_tps "${tps[$i,pgbouncer]}")" "$(fmt_tps "${tps[$i,dbproxy]}")" \
			"$(ratio "${tps[$i,dbproxy]}" "${tps[$i,direct]}")" "$(ratio "${tps[$i,dbproxy]}" "${tps[$i,pgbouncer]}")" \
			"${lat[$i,direct]}" "${lat[$i,pgbouncer]}" "${lat[$i,dbproxy]}"
	done
}

cost_table() {
	echo "| Workload | Target | Proxy CPU µs/txn | Upstream logins | Failed txns | Machine CPU busy |"
	echo "|---|---|--:|--:|--:|--:|"
	for i in "${!wl_names[@]}"; do
		for t in "${targets[@]}"; do
			printf '| %s | %s | %s | %s | %s | %s%% |\n' "${wl_names[$i]}" "$t" "${cpu[$i,$t]}" "${logins[$i,$t]}" "${fails[$i,$t]:-?}" "${busy[$i,$t]}"
		done
	done
}

# us_delta A B: (A - B) ms as microseconds.
us_delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (a - b) * 1000 }'; }

# where: the "Where the time goes" notes, from this run's figures.
where() {
	local p1 name
	echo "- **One client**: a transaction is one query round trip (${lat[0,direct]} ms direct). PgBouncer adds $(us_delta "${lat[0,pgbouncer]}" "${lat[0,direct]}") µs and dbproxy $(us_delta "${lat[0,dbproxy]}" "${lat[0,direct]}") µs to it: two more loopback hops and a proxy wake-up each way. Relaying costs dbproxy ${cpu[0,dbproxy]} µs of CPU per transaction, PgBouncer ${cpu[0,pgbouncer]} µs."
	if ((busy[1,direct] >= 90)); then
		if [[ -n "${sys_per_txn[dbproxy]:-}${kernel_share[dbproxy]:-}" ]]; then
		echo "- **Per transaction, at 1 client** (separate 3 s runs, one under \`strace -c -f\`, one under \`perf record\`; not part of the figures above):"
		echo "  - PgBouncer: ${sys_per_txn[pgbouncer]:-syscalls not measured}; ${kernel_share[pgbouncer]:-n/a} of its CPU samples in the kernel."
		echo "  - dbproxy: ${sys_per_txn[dbproxy]:-syscalls not measured}; ${kernel_share[dbproxy]:-n/a} of its CPU samples in the kernel."
		printf '  - PgBouncer is one thread in an event loop: per query it waits, reads and writes on each side. dbproxy relays each direction in its own goroutine; Go reads a socket until it would block (the failed reads) and then parks the goroutine, so every query also costs goroutine wake-ups across OS threads (futex, epoll, and nanosleep from the runtime'"'"'s spinning threads).'
		local k1=0 k2=0
		[[ "${kernel_share[dbproxy]:-}" =~ ^([0-9]+)%$ ]] && k1=${BASH_REMATCH[1]}
		[[ "${kernel_share[pgbouncer]:-}" =~ ^([0-9]+)%$ ]] && k2=${BASH_REMATCH[1]}
		if ((k1 >= 70 && k2 >= 70)); then
			printf ' Both proxies spend most of their CPU in the kernel (sockets, wake-ups), so the gap comes from the extra syscalls and thread wake-ups per query, not from work in dbproxy'"'"'s own code.'
		fi
		echo
	fi
	echo "- **16 clients**: the machine is ${busy[1,direct]}% busy already direct, so throughput is bounded by CPU, and a proxy's CPU per transaction (dbproxy ${cpu[1,dbproxy]} µs, PgBouncer ${cpu[1,pgbouncer]} µs) is taken from pgbench and PostgreSQL: dbproxy/direct = $(ratio "${tps[1,dbproxy]}" "${tps[1,direct]}"), PgBouncer/direct = $(ratio "${tps[1,pgbouncer]}" "${tps[1,direct]}")."
	else
		echo "- **16 clients**: the machine is ${busy[1,direct]}% busy direct; dbproxy spends ${cpu[1,dbproxy]} µs of CPU per transaction, PgBouncer ${cpu[1,pgbouncer]} µs: dbproxy/direct = $(ratio "${tps[1,dbproxy]}" "${tps[1,direct]}"), PgBouncer/direct = $(ratio "${tps[1,pgbouncer]}" "${tps[1,direct]}")."
	fi
	echo "- **New connection per transaction**: direct, each of the ${ntx[2,direct]} transactions is a PostgreSQL login (${logins[2,direct]} logins seen: fork a backend, SCRAM, load the catalog caches). That is what a pool saves:"
	for p1 in pgbouncer dbproxy; do
		name=PgBouncer
		[[ $p1 == dbproxy ]] && name=dbproxy
		if ((logins[2,$p1] * 10 < ntx[2,$p1])); then
			echo "  - $name logged in upstream ${logins[2,$p1]} times for ${ntx[2,$p1]} client connections: each new client gets an idle pooled upstream connection (reset with DISCARD ALL when the previous client left), so it costs only its startup handshake with the proxy. $name spends ${cpu[2,$p1]} µs of CPU per client connection and transaction."
		else
			echo "  - $name logged in upstream ${logins[2,$p1]} times for ${ntx[2,$p1]} client connections: most client connections cost a PostgreSQL login as well. $name spends ${cpu[2,$p1]} µs of CPU per client connection and transaction."
		fi
	done
	echo "- **Noise**: before the runs the load average was $load_before (1, 5, 15 min) on $(nproc) CPUs: that is other work on the machine (after them it was $load_after, mostly this benchmark's own pgbench clients and backends). Other work shows in \"Machine CPU busy\" and makes single runs noisy (the 1-client figures vary most between runs); compare ratios from one run, not figures across runs."
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

# pprof_top FILE: the functions with the most cumulative CPU, as text.
pprof_top() {
	"$GO" tool pprof -top -cum -nodecount=14 "$bindir/dbproxy" "$1" 2>/dev/null | sed -n '/flat%/,$p'
}

# where_txn: notes on the transaction-pool runs.
where_txn() {
	local i
	for i in 3 4 5 6; do
		echo "- **${wl_names[$i]}**: dbproxy/direct = $(ratio "${tps[$i,dbproxy]}" "${tps[$i,direct]}"), dbproxy/PgBouncer = $(ratio "${tps[$i,dbproxy]}" "${tps[$i,pgbouncer]}"); dbproxy used ${cpu[$i,dbproxy]} µs of CPU per transaction (PgBouncer ${cpu[$i,pgbouncer]} µs) and logged in upstream ${logins[$i,dbproxy]} times.${failed_why[$i,pgbouncer]:+ PgBouncer failed this run: \`${failed_why[$i,pgbouncer]}\` (PgBouncer supports prepared statements in transaction mode only from 1.21, with max_prepared_statements).}"
	done
	for i in 4 6; do
		[[ -s "${profile[$i]:-}" ]] || continue
		echo "- **CPU profile of dbproxy** during \"${wl_names[$i]}\" (\`/debug/pprof/profile\`, $((T > 6 ? T - 4 : T)) s): $(pprof_split "${profile[$i]}")."
		echo
		echo '  ```'
		pprof_top "${profile[$i]}" | sed 's/^/  /'
		echo '  ```'
	done
}

cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"

mkdir -p "$(dirname "$out")"
{
	cat <<EOF
# dbproxy benchmark: direct vs PgBouncer vs dbproxy

Written by \`make bench\` (scripts/bench.sh) on $(date -u '+%Y-%m-%d %H:%M UTC'). Rerun it to refresh;
the raw pgbench output of the run is in bench/bench.log (not committed).

## Machine and versions

- CPUs (\`nproc\`): $(nproc); CPU model: ${cpu_model:-unknown}; kernel $(uname -r)
- Go: $("$GO" version)
- dbproxy: $("$bindir/dbproxy" version) at commit $commit
- PostgreSQL: $PG_VERSION
- PgBouncer: $("$pgbouncer_bin" --version | head -n1)
- pgbench: $(pgbench --version)

## Setup

Everything runs on this one machine over 127.0.0.1 TCP: pgbench, PostgreSQL, PgBouncer, dbproxy and
Vault share $(nproc) CPUs, so a proxy's CPU is taken from the client and the server.

- **PostgreSQL**: one server from \`test/devstack\` (fsync=off, shared_buffers=32MB, max_connections=200,
  log_connections=on). pgbench data: \`pgbench -i -s $scale\` as the superuser, then
  \`GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC\` and a role \`bench\` with a fixed password.
- **direct**: pgbench logs in as \`bench\` (scram-sha-256, the server's pg_hba for TCP).
- **PgBouncer**: \`pool_mode = session\`, \`default_pool_size = 32\` (database \`appdb_txn\`: \`pool_mode=transaction\`,
  \`pool_size=16\`), \`auth_type = trust\` for clients (like
  dbproxy's sidecar listener, which does no client authentication), logs in to PostgreSQL as \`bench\` with
  the password from its userlist (SCRAM). Run as the \`postgres\` user because it refuses to run as root.
- **dbproxy**: a sidecar listener bound to identity \`bench\`, backend pool \`mode: session\`,
  \`max_connections: 32\` (backend \`appdb_txn\`: \`mode: transaction\`, \`max_connections: 16\`), logs in to PostgreSQL with a Vault-issued user (\`$VAULT_MOUNT/creds/$VAULT_PG_ROLE\`,
  ttl 1h, so no rotation happens during the run), default (info) logging.
- Every run uses \`sslmode=disable\` and \`-n\` (no vacuum); a 3 s select-only warm-up runs first. Runs go
  workload by workload, the three targets back to back.

## Commands

\`\`\`sh
pgbench -i -s $scale -q "\$SUPERUSER_DSN"
EOF
	for i in "${!wl_names[@]}"; do
		echo "pgbench -n ${wl_flags[$i]} -T $T \"\$DSN\"    # ${wl_names[$i]}"
	done
	cat <<EOF

# DSN, one per target:
direct:    ${dsn[direct]/port=$PGPORT/port=\$PG_PORT}
pgbouncer: ${dsn[pgbouncer]/port=$bport/port=\$PGBOUNCER_PORT}
dbproxy:   ${dsn[dbproxy]/port=$pport/port=\$DBPROXY_PORT}
\`\`\`

## Results

TPS as reported by pgbench (without initial connection time; with \`-C\` including reconnection times),
latency average in ms. Ratios are dbproxy's TPS over the other's (1.00 = as fast).

EOF
	table
	cat <<EOF

What each run cost: CPU of the proxy process per transaction (utime+stime from /proc/PID/stat over
the run), logins PostgreSQL saw during the run (\`connection authorized\` lines in its log), and how busy
the whole machine was (/proc/stat).

EOF
	cost_table
	cat <<EOF

## Where the time goes

EOF
	where
	cat <<EOF

## Transaction pooling

Both proxies lend one of 16 server connections per transaction (PgBouncer \`pool_mode=transaction\`,
\`pool_size=16\`; dbproxy backend \`appdb_txn\` with \`mode: transaction\`, \`max_connections: 16\`); direct runs
hold one server connection per client. With \`-M prepared\`, dbproxy prepares each statement once per server
connection under its own name and maps the client's name to it.

EOF
	where_txn
} >"$out"

echo
table
echo
cost_table
echo
log "wrote $out in $((SECONDS - t_start))s (raw pgbench output: $rawlog)"
