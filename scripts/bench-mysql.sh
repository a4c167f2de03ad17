#!/usr/bin/env bash
# bench-mysql.sh (make bench-mysql; make bench runs it after bench.sh) runs
# sysbench oltp_read_only against one MariaDB four ways and writes the
# section "## MySQL/MariaDB: sysbench oltp_read_only" at the end of
# bench/RESULTS.md (that line and everything after it is replaced; the rest
# of the file, bench.sh's PostgreSQL results, is kept):
#
#   direct   MariaDB itself (test/devstack --mariadb, 127.0.0.1), as the
#            admin user
#   floor        bin/myfloor (bench/floor/myfloor): the smallest synchronous
#                Go relay, one goroutine and one server connection per
#                client, handshake relayed verbatim (so as the admin user);
#                the cost floor of Go on this machine (issue 9)
#   dbproxy      bin/dbproxy, sidecar listener (no client password), session
#                pool (backend appdb), logging in to MariaDB with Vault-issued
#                users
#   dbproxy_txn  the same dbproxy, transaction pool of 16 server connections
#                (backend appdb_txn, same upstream database)
#
# Workload: sysbench oltp_read_only (per transaction BEGIN, 10 point
# selects, 4 range selects, COMMIT; server-side prepared statements) on 4
# tables of 10000 rows, at 1 and at 16 threads, --time BENCH_TIME seconds
# each, the four targets back to back: 8 runs, about 3 minutes with setup
# at the default 10 s.
#
# All traffic stays on 127.0.0.1. State goes to a temporary directory that is
# removed at the end (kept on failure or with BENCH_KEEP=1); the raw sysbench
# output goes to bench/bench-mysql.log (not committed).
#
#   BENCH_TIME   seconds per run (default 10; 8 runs)
#   BENCH_OUT    results file (default bench/RESULTS.md)
#   BENCH_KEEP   keep the temporary directory
#   BENCH_REV    build dbproxy and devstack from this commit instead of the
#                working tree (e.g. HEAD while others edit the tree)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
T="${BENCH_TIME:-10}"
tables=4
table_size=10000
out="${BENCH_OUT:-$root/bench/RESULTS.md}"
rawlog="$root/bench/bench-mysql.log"
heading='## MySQL/MariaDB: sysbench oltp_read_only'
t_start=$SECONDS

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'bench-mysql: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/bench-lib.sh
. "$root/scripts/bench-lib.sh"

for c in sysbench mariadb awk curl; do
	command -v "$c" >/dev/null || die "$c not found (make deps installs MariaDB and sysbench)"
done

work="$(mktemp -d /tmp/dbproxy-bench-mysql.XXXXXX)"
chmod 755 "$work"
devstack_pid='' proxy_pid='' floor_pid=''

cleanup() {
	local st=$?
	stop "$proxy_pid" dbproxy
	stop "$floor_pid" myfloor
	stop "$devstack_pid" devstack
	finish "$st"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# admin_sql SQL: run SQL on MariaDB as the admin user (password from a file),
# print the rows tab-separated.
admin_sql() {
	mariadb --defaults-extra-file="$work/admin.cnf" -N -B -e "$1" </dev/null
}

# server_status: what MariaDB has counted so far: "connections questions
# stmt_executes stmt_prepares" (each server_status call is one connection
# and one question itself).
server_status() {
	admin_sql "SHOW GLOBAL STATUS WHERE Variable_name IN ('Connections', 'Questions', 'Com_stmt_execute', 'Com_stmt_prepare')" |
		awk '{ v[tolower($1)] = $2 } END { print v["connections"] + 0, v["questions"] + 0, v["com_stmt_execute"] + 0, v["com_stmt_prepare"] + 0 }'
}

# --- build and start the stack ---------------------------------------------

build_bins

log "starting devstack (PostgreSQL + MariaDB + Vault) in $work/stack"
"$bindir/devstack" --dir "$work/stack" --mariadb --ttl 1h --max-ttl 24h >"$work/devstack.log" 2>&1 </dev/null &
devstack_pid=$!
wait_for devstack "$devstack_pid" 900 test -f "$work/stack/stack.env"
# shellcheck source=/dev/null
. "$work/stack/stack.env"
[[ -n "${MARIADB_ADDR:-}" ]] || die "stack.env has no MARIADB_ADDR"
maria_pid="$(<"$DEVSTACK_DIR/mariadb/mariadb.pid")"
db="$MARIADB_DATABASE"

# The admin password goes to a client option file, not onto command lines
# of our own mariadb calls (sysbench takes it as an argument only).
(
	umask 077
	printf '[client]\nhost=%s\nport=%s\nuser=%s\npassword=%s\ndatabase=%s\n' \
		"$MYSQL_HOST" "$MYSQL_TCP_PORT" "$MARIADB_ADMIN_USER" "$MARIADB_ADMIN_PASSWORD" "$db" >"$work/admin.cnf"
)
unset MYSQL_PWD

common=(--db-driver=mysql --mysql-ssl=off --tables="$tables" --table-size="$table_size")
direct_auth=(--mysql-host="$MYSQL_HOST" --mysql-port="$MYSQL_TCP_PORT" --mysql-user="$MARIADB_ADMIN_USER" --mysql-password="$MARIADB_ADMIN_PASSWORD")
# As shown in logs and RESULTS.md: no password.
direct_shown="--mysql-host=$MYSQL_HOST --mysql-port=\$MYSQL_TCP_PORT --mysql-user=$MARIADB_ADMIN_USER --mysql-password=\$ADMIN_PASSWORD"

log "sysbench oltp_read_only prepare: $tables tables of $table_size rows in $db, as $MARIADB_ADMIN_USER"
sysbench oltp_read_only "${common[@]}" --mysql-db="$db" "${direct_auth[@]}" prepare >"$work/prepare.log" 2>&1 ||
	{ cat "$work/prepare.log" >&2; die "sysbench prepare failed"; }
admin_sql "ANALYZE TABLE $(seq -s, -f 'sbtest%g' 1 "$tables")" >/dev/null

# The Vault role's creation statements (test/integration/harness) grant
# SELECT, INSERT, UPDATE, DELETE ON appdb.* to each user it creates: the
# sysbench tables are in appdb, so dbproxy's Vault users can read them.
[[ $db == appdb ]] || die "MARIADB_DATABASE is $db; the Vault role grants on appdb.* only"

# dbproxy_config writes $work/dbproxy.yaml for ports $pport and $aport.
dbproxy_config() {
	cat >"$work/dbproxy.yaml" <<EOF
vault:
  address: $VAULT_ADDR
  auth: { method: token, token_file: $VAULT_TOKEN_FILE }
backends:
  $db:
    protocol: mysql
    address: $MARIADB_ADDR
    database: $db
    vault_mount: $VAULT_MOUNT
    vault_role: $VAULT_MYSQL_ROLE
    pool: { mode: session, max_connections: 32 }
  ${db}_txn:
    protocol: mysql
    address: $MARIADB_ADDR
    database: $db
    vault_mount: $VAULT_MOUNT
    vault_role: $VAULT_MYSQL_ROLE
    pool: { mode: transaction, max_connections: 16 }
listeners:
  - { name: bench, protocol: mysql, address: "127.0.0.1:$pport", auth: listener, identity: bench }
identities:
  bench:
    grants: [ { backend: $db }, { backend: ${db}_txn } ]
admin: { address: "127.0.0.1:$aport" }
EOF
}

start_dbproxy dbproxy_config "mysql, session and transaction pools"
floor_ready() {
	mariadb --defaults-extra-file="$work/admin.cnf" --port="$fport" -N -B -e 'SELECT 1' </dev/null
}
start_floor "$toolsdir/myfloor" "$MARIADB_ADDR" floor_ready

proxy_auth=(--mysql-host=127.0.0.1 --mysql-port="$pport" --mysql-user=bench --mysql-password=)
proxy_shown="--mysql-host=127.0.0.1 --mysql-port=\$DBPROXY_PORT --mysql-user=bench --mysql-password="

# Through dbproxy, with no password: the table must be readable, and the
# server-side user must be one Vault made (not the admin).
via_proxy="$(mariadb --no-defaults -h 127.0.0.1 -P "$pport" -u bench --skip-password -N -B "$db" \
	-e "SELECT CURRENT_USER(), COUNT(*) FROM sbtest1" </dev/null 2>&1)" || die "dbproxy: cannot read sbtest1: $via_proxy"
read -r vault_user nrows <<<"$via_proxy"
[[ $nrows == "$table_size" ]] || die "dbproxy: sbtest1 has '$nrows' rows, want $table_size"
[[ ${vault_user%@*} != "$MARIADB_ADMIN_USER" ]] || die "dbproxy logged in as the admin user, not a Vault user"
log "dbproxy reads sbtest1 as $vault_user (Vault: $VAULT_MOUNT/creds/$VAULT_MYSQL_ROLE)"

# --- runs --------------------------------------------------------------------

targets=(direct floor dbproxy dbproxy_txn)
threads=(1 16)
declare -A ppid=([floor]=$floor_pid [dbproxy]=$proxy_pid [dbproxy_txn]=$proxy_pid)
declare -A tps qps lat p95 errs recon cpu dbcpu busy logins ntx machcpu stmts execs prepares
hz="$(getconf CLK_TCK)"
: >"$rawlog"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${load_before%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	log "warning: load average $load_before on $(nproc) CPUs: other work will skew the figures"
fi

log "warm-up: 3s oltp_read_only direct, 2 threads"
sysbench oltp_read_only "${common[@]}" --mysql-db="$db" "${direct_auth[@]}" --threads=2 --time=3 run >>"$rawlog" 2>&1 ||
	die "warm-up failed (see $rawlog)"

# field NAME TEXT: the first number after "NAME:" in sysbench's report.
field() { awk -v k="$1:" '{ sub(/^[ \t]+/, "") } index($0, k) == 1 { s = substr($0, length(k) + 1); gsub(/[()]/, " ", s); split(s, f, " "); print f[1]; exit }' <<<"$2"; }
# rate NAME TEXT: the "(N per sec.)" figure of a line of sysbench's report.
rate() { awk -v k="$1:" '{ sub(/^[ \t]+/, "") } index($0, k) == 1 && match($0, /\([0-9.]+ per sec/) { print substr($0, RSTART + 1, RLENGTH - 9); exit }' <<<"$2"; }

# us_per_txn TICKS N: clock ticks as microseconds per transaction.
us_per_txn() { awk -v c="$1" -v hz="$hz" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", c / hz * 1e6 / n; else print "-" }'; }

for n in "${threads[@]}"; do
	for t in "${targets[@]}"; do
		case $t in
		direct) auth=(--mysql-db="$db" "${direct_auth[@]}") shown="--mysql-db=$db $direct_shown" ;;
		floor) auth=(--mysql-db="$db" "${direct_auth[@]/--mysql-port=$MYSQL_TCP_PORT/--mysql-port=$fport}") shown="--mysql-db=$db ${direct_shown/\$MYSQL_TCP_PORT/$fport}" ;;
		dbproxy) auth=(--mysql-db="$db" "${proxy_auth[@]}") shown="--mysql-db=$db ${proxy_shown/\$DBPROXY_PORT/$pport}" ;;
		dbproxy_txn) auth=(--mysql-db="${db}_txn" "${proxy_auth[@]}") shown="--mysql-db=${db}_txn ${proxy_shown/\$DBPROXY_PORT/$pport}" ;;
		esac
		args=(oltp_read_only "${common[@]}" "${auth[@]}" --threads="$n" --time="$T" --report-interval=0 run)
		shown="sysbench oltp_read_only ${common[*]} $shown --threads=$n --time=$T --report-interval=0 run"
		log "$t: $shown"
		read -r l0 q0 e0 p0 < <(server_status)
		read -r b0 m0 < <(machine_ticks)
		d0="$(cpu_ticks "$maria_pid")"
		c0=0
		[[ -n "${ppid[$t]:-}" ]] && c0="$(cpu_ticks "${ppid[$t]}")"
		st=0
		res="$(timeout $((T + 60)) sysbench "${args[@]}" 2>&1)" || st=$?
		c1=0
		[[ -n "${ppid[$t]:-}" ]] && c1="$(cpu_ticks "${ppid[$t]}")"
		d1="$(cpu_ticks "$maria_pid")"
		read -r b1 m1 < <(machine_ticks)
		read -r l1 q1 e1 p1 < <(server_status)
		printf '### %s, %s threads: %s\n%s\n\n' "$t" "$n" "$shown" "$res" >>"$rawlog"
		((st == 0)) || { printf '%s\n' "$res" >&2; die "$t: sysbench failed (exit $st)"; }
		k="$n,$t"
		ntx[$k]="$(field transactions "$res")"
		tps[$k]="$(rate transactions "$res")"
		qps[$k]="$(rate queries "$res")"
		lat[$k]="$(field avg "$res")"
		p95[$k]="$(field '95th percentile' "$res")"
		errs[$k]="$(field 'ignored errors' "$res")"
		recon[$k]="$(field reconnects "$res")"
		[[ -n "${tps[$k]}" && -n "${qps[$k]}" && -n "${lat[$k]}" && -n "${p95[$k]}" && -n "${ntx[$k]}" ]] ||
			{ printf '%s\n' "$res" >&2; die "$t: cannot parse sysbench output"; }
		# The second server_status is one connection and question of our own.
		logins[$k]=$((l1 - l0 - 1))
		stmts[$k]="$(awk -v q=$((q1 - q0 - 1)) -v n="${ntx[$k]}" 'BEGIN { if (n > 0) printf "%.1f", q / n; else print "-" }')"
		execs[$k]="$(awk -v e=$((e1 - e0)) -v n="${ntx[$k]}" 'BEGIN { if (n > 0) printf "%.1f", e / n; else print "-" }')"
		prepares[$k]=$((p1 - p0))
		busy[$k]="$(awk -v b=$((b1 - b0)) -v m=$((m1 - m0)) 'BEGIN { printf "%.0f", m ? 100 * b / m : 0 }')"
		# CPU per transaction, in microseconds: the proxy, MariaDB, the whole machine.
		cpu[$k]="$(us_per_txn $((c1 - c0)) "${ntx[$k]}")"
		[[ -n "${ppid[$t]:-}" ]] || cpu[$k]="-"
		dbcpu[$k]="$(us_per_txn $((d1 - d0)) "${ntx[$k]}")"
		machcpu[$k]="$(us_per_txn $((b1 - b0)) "${ntx[$k]}")"
		log "$t: tps ${tps[$k]}, qps ${qps[$k]}, latency avg ${lat[$k]} ms, 95th ${p95[$k]} ms, errors ${errs[$k]:-?}, upstream logins ${logins[$k]}, statements ${stmts[$k]}/txn (${execs[$k]} prepared executions, ${prepares[$k]} prepares), proxy CPU ${cpu[$k]} us/txn, MariaDB CPU ${dbcpu[$k]} us/txn, machine busy ${busy[$k]}%"
	done
done

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report --------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }
rnd() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
# us_delta A B: (A - B) ms as microseconds.
us_delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (a - b) * 1000 }'; }
# per_query US N: US microseconds per transaction over the queries per
# transaction of run N (QPS / TPS).
per_query() { awk -v u="$1" -v q="${qps[$2,direct]}" -v t="${tps[$2,direct]}" 'BEGIN { if (q > 0 && t > 0) printf "%.0f", u / (q / t); else print "-" }'; }
qpt() { awk -v q="${qps[$1,direct]}" -v t="${tps[$1,direct]}" 'BEGIN { if (t > 0) printf "%.0f", q / t; else print "-" }'; }

table() {
	echo "| Threads | Direct TPS | floor TPS | dbproxy session TPS | dbproxy txn TPS | session / floor | txn / floor | session / direct | txn / direct |"
	echo "|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for n in "${threads[@]}"; do
		printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" \
			"$(rnd "${tps[$n,direct]}")" "$(rnd "${tps[$n,floor]}")" "$(rnd "${tps[$n,dbproxy]}")" "$(rnd "${tps[$n,dbproxy_txn]}")" \
			"$(ratio "${tps[$n,dbproxy]}" "${tps[$n,floor]}")" "$(ratio "${tps[$n,dbproxy_txn]}" "${tps[$n,floor]}")" \
			"$(ratio "${tps[$n,dbproxy]}" "${tps[$n,direct]}")" "$(ratio "${tps[$n,dbproxy_txn]}" "${tps[$n,direct]}")"
	done
}

# targets_table: issue 9's MySQL targets, from this run.
targets_table() {
	local r t name
	echo "| Target (issue 9) | Figure in this run | Goal | |"
	echo "|---|--:|--:|---|"
	for t in dbproxy dbproxy_txn; do
		name="session pool"
		[[ $t == dbproxy_txn ]] && name="transaction pool"
		r="$(ratio "${tps[16,$t]}" "${tps[16,floor]}")"
		echo "| oltp_read_only 16 threads, $name: dbproxy / floor | $r | >= 0.95 | $(verdict "$r" '>=' 0.95) |"
		r="$(ratio "${cpu[16,$t]}" "${cpu[16,floor]}")"
		echo "| CPU per transaction, 16 threads, $name: dbproxy / floor | $r | <= 1.10 | $(verdict "$r" '<=' 1.1) |"
	done
}

# verdict VALUE OP GOAL: "met" or "missed" (OP is >= or <=).
verdict() {
	awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN { if (v == "-" || v == "") { print "n/a"; exit }
		ok = (op == ">=") ? v + 0 >= g : v + 0 <= g; print ok ? "met" : "**missed**" }'
}

cost_table() {
	echo "| Threads | Target | Transactions | TPS | QPS | Latency avg / 95th ms | Proxy CPU µs/txn | MariaDB CPU µs/txn | Machine CPU µs/txn | Statements/txn at MariaDB (prepared executions) | Prepares | Upstream logins | Errors / reconnects | Machine CPU busy |"
	echo "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for n in "${threads[@]}"; do
		for t in "${targets[@]}"; do
			printf '| %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s (%s) | %s | %s | %s / %s | %s%% |\n' "$n" "$t" "${ntx[$n,$t]}" \
				"$(rnd "${tps[$n,$t]}")" "$(rnd "${qps[$n,$t]}")" "${lat[$n,$t]}" "${p95[$n,$t]}" "${cpu[$n,$t]}" \
				"${dbcpu[$n,$t]}" "${machcpu[$n,$t]}" "${stmts[$n,$t]}" "${execs[$n,$t]}" "${prepares[$n,$t]}" \
				"${logins[$n,$t]}" "${errs[$n,$t]:-?}" "${recon[$n,$t]:-?}" "${busy[$n,$t]}"
		done
	done
}

# where: the "Where the time goes" notes, from this run's figures.
where() {
	local n t
	echo "- **1 thread**: a transaction is $(qpt 1) statements, each a round trip (BEGIN, 10 point selects, 4 range selects, COMMIT), ${lat[1,direct]} ms direct. Per transaction the floor adds $(us_delta "${lat[1,floor]}" "${lat[1,direct]}") µs, dbproxy $(us_delta "${lat[1,dbproxy]}" "${lat[1,direct]}") µs (session pool) and $(us_delta "${lat[1,dbproxy_txn]}" "${lat[1,direct]}") µs (transaction pool): two more loopback hops and a proxy wake-up each way per statement. CPU per transaction: floor ${cpu[1,floor]} µs (about $(per_query "${cpu[1,floor]}" 1) µs per statement), dbproxy ${cpu[1,dbproxy]} µs session, ${cpu[1,dbproxy_txn]} µs transaction pool."
	echo "- **16 threads**: the machine is ${busy[16,direct]}% busy direct, so every µs a transaction costs anywhere is taken from sysbench and MariaDB. The whole machine spends ${machcpu[16,direct]} µs of CPU per transaction direct, ${machcpu[16,floor]} µs through the floor (its own ${cpu[16,floor]} µs), ${machcpu[16,dbproxy]} µs through dbproxy's session pool (its own ${cpu[16,dbproxy]} µs) and ${machcpu[16,dbproxy_txn]} µs through its transaction pool (its own ${cpu[16,dbproxy_txn]} µs); MariaDB ${dbcpu[16,direct]}, ${dbcpu[16,floor]}, ${dbcpu[16,dbproxy]} and ${dbcpu[16,dbproxy_txn]} µs."
	for n in "${threads[@]}"; do
		for t in "${targets[@]}"; do
			awk -v a="${stmts[$n,$t]}" -v b="${stmts[$n,direct]}" 'BEGIN { d = a - b; exit !(d > 0.15 || d < -0.15) }' || continue
			echo "- **Statements, $t at $n threads**: MariaDB counted ${stmts[$n,$t]} statements per transaction (${execs[$n,$t]} prepared executions, ${prepares[$n,$t]} prepares) against ${stmts[$n,direct]} direct: what the pool adds (state applied or reset on a server connection) or saves."
		done
	done
	echo "- **Logins**: direct and through the floor every sysbench connection is a MariaDB login (${logins[16,direct]} and ${logins[16,floor]} at 16 threads). dbproxy logs in (as the pool's Vault user) only when no pooled connection is idle: ${logins[16,dbproxy]} (session pool) and ${logins[16,dbproxy_txn]} (transaction pool) at 16 threads."
	echo "- **Noise**: before the runs the load average was $load_before (1, 5, 15 min) on $(nproc) CPUs, after them $load_after (this benchmark's own sysbench threads and MariaDB included). Compare ratios from one run, not figures across runs."
}

cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
libmariadb="$(dpkg-query -W -f='${Version}' libmariadb3 2>/dev/null || echo unknown)"

section() {
	cat <<EOF
$heading

Written by \`make bench-mysql\` (scripts/bench-mysql.sh; \`make bench\` runs it after scripts/bench.sh) on
$(date -u '+%Y-%m-%d %H:%M UTC'). The raw sysbench output of the run is in bench/bench-mysql.log (not committed).

### Machine and versions

- CPUs (\`nproc\`): $(nproc); CPU model: ${cpu_model:-unknown}; kernel $(uname -r)
- dbproxy: $("$bindir/dbproxy" version) at commit $commit
- MariaDB: $(sed -E 's/^[^ ]*mariadbd +//' <<<"$MARIADB_VERSION")
- sysbench: $(sysbench --version) (client library libmariadb3 $libmariadb)

### Setup

Everything runs on this one machine over 127.0.0.1 TCP: sysbench, MariaDB, the floor, dbproxy and Vault
share $(nproc) CPUs, so a proxy's CPU is taken from sysbench and MariaDB.

- **MariaDB**: one server from \`test/devstack --mariadb\` (innodb_buffer_pool_size=64M,
  innodb_flush_log_at_trx_commit=2, no binary log, performance_schema on). sysbench tables: \`prepare\`
  as the admin user (\`$MARIADB_ADMIN_USER\`, ALL PRIVILEGES) into database \`$db\`, then \`ANALYZE TABLE\`.
- **direct**: sysbench logs in as \`$MARIADB_ADMIN_USER\` with its password (mysql_native_password).
- **floor**: \`bench/floor/myfloor\`, a measuring tool, not product code: the smallest Go relay, one goroutine
  per client, synchronous (one command, then its complete answer), each client on its own server connection
  dialled at accept; the handshake is relayed verbatim, so sysbench logs in as \`$MARIADB_ADMIN_USER\` as
  direct. It allocates nothing per command: what it costs is Go's syscalls, netpoller and scheduler here.
- **dbproxy**: a sidecar listener (\`auth: listener\`, identity \`bench\`, no client password: sysbench sends
  user \`bench\` and an empty password), backend \`$db\` (the client's database names the backend) with
  pool \`mode: session\`, \`max_connections: 32\`; it logs in to MariaDB with a Vault-issued user
  (\`$VAULT_MOUNT/creds/$VAULT_MYSQL_ROLE\`, ttl 1h, so no rotation happens during the run; its creation statements
  grant SELECT, INSERT, UPDATE, DELETE on \`$db.*\`, so it reads the sysbench tables), default (info) logging.
  **dbproxy_txn** is the same dbproxy through backend \`${db}_txn\` (same upstream database \`$db\`), pool
  \`mode: transaction\`, \`max_connections: 16\`.
  Before the runs the script checks through dbproxy that \`CURRENT_USER()\` is a Vault user (this run:
  \`${vault_user%%@*}\`) and that sbtest1 has $table_size rows.
- Every run uses \`--mysql-ssl=off\` and sysbench's default server-side prepared statements
  (\`--db-ps-mode=auto\`); a 3 s warm-up direct at 2 threads runs first. Runs go thread count by thread count,
  the four targets back to back.

### Commands

\`\`\`sh
sysbench oltp_read_only ${common[*]} $direct_shown prepare
EOF
	for n in "${threads[@]}"; do
		echo "sysbench oltp_read_only ${common[*]} \$AUTH --threads=$n --time=$T --report-interval=0 run"
	done
	cat <<EOF

# AUTH, one per target:
direct:      --mysql-db=$db $direct_shown
floor:       --mysql-db=$db ${direct_shown/MYSQL_TCP_PORT/FLOOR_PORT}
dbproxy:     --mysql-db=$db $proxy_shown
dbproxy_txn: --mysql-db=${db}_txn $proxy_shown

# the floor
bin/myfloor -listen 127.0.0.1:\$FLOOR_PORT -upstream 127.0.0.1:\$MYSQL_TCP_PORT
\`\`\`

(\`\$MYSQL_TCP_PORT\` and \`\$ADMIN_PASSWORD\` are MariaDB's port and the admin password from devstack's stack.env:
MYSQL_TCP_PORT, MARIADB_ADMIN_PASSWORD.)

### Results

Transactions per second as reported by sysbench; ratios are dbproxy's TPS over the floor's and direct's
(1.00 = as fast). Session: backend \`$db\` (session pool); txn: backend \`${db}_txn\` (transaction pool).

EOF
	table
	cat <<EOF

#### Targets

EOF
	targets_table
	cat <<EOF

#### Every run

Queries per second and latency of one transaction (average and 95th percentile) as sysbench reports them;
CPU per transaction of the proxy process, of MariaDB (mariadbd) and of the whole machine (utime+stime
from /proc/PID/stat, busy jiffies from /proc/stat, over the run); what MariaDB counted during the run
(\`SHOW GLOBAL STATUS\`: \`Questions\` and \`Com_stmt_execute\` per transaction, \`Com_stmt_prepare\`,
\`Connections\` as upstream logins); errors sysbench ignored; and how busy the whole machine was.

EOF
	cost_table
	cat <<EOF

### Where the time goes

EOF
	where
}

# The section replaces "$heading" and everything after it, or is appended.
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
if [[ -f "$out" ]]; then
	awk -v h="$heading" '$0 == h { exit } { print }' "$out" |
		awk '{ lines[NR] = $0 } NF { last = NR } END { for (i = 1; i <= last; i++) print lines[i] }' >"$tmp"
	[[ -s "$tmp" ]] && echo >>"$tmp"
else
	: >"$tmp"
fi
section >>"$tmp"
mv "$tmp" "$out"

echo
table
echo
targets_table
echo
cost_table
echo
log "wrote the MySQL section of $out in $((SECONDS - t_start))s (raw sysbench output: $rawlog)"
