# shellcheck shell=bash disable=SC2154 # work and root come from the caller
# bench-lib.sh: helpers shared by bench.sh and bench-mysql.sh (sourced, not
# run). The caller defines log, die and $work, $root, $GO before using them.

# stop PID NAME: SIGTERM, wait up to 30s, SIGKILL.
stop() {
	local pid=$1 i
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "$2 (pid $pid) did not stop in 30s; SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
}

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a port that is free now, below the kernel's ephemeral range (so
# no outgoing connection takes it before the server binds it).
free_port() {
	local lo p i
	read -r lo _ </proc/sys/net/ipv4/ip_local_port_range || lo=32768
	((lo > 12000)) || lo=32768
	for ((i = 0; i < 100; i++)); do
		p=$((10000 + RANDOM % (lo - 10000)))
		in_use "$p" || { echo "$p"; return 0; }
	done
	die "no free port found"
}

# wait_ready PID SECONDS CMD...: run CMD every 0.1s until it succeeds (0);
# 1 when PID exits first, 2 when time runs out.
wait_ready() {
	local pid=$1 limit=$(($2 * 10)) i
	shift 2
	for ((i = 0; i < limit; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 2
}

# wait_for WHAT PID SECONDS CMD...: wait_ready or die.
wait_for() {
	local what=$1 st=0
	shift
	wait_ready "$@" || st=$?
	case $st in
	0) return 0 ;;
	1) die "$what exited (logs in $work)" ;;
	*) die "$what not ready after ${2}s (logs in $work)" ;;
	esac
}

# cpu_ticks PID: user+system CPU time of PID in clock ticks.
cpu_ticks() {
	local s f
	s="$(<"/proc/$1/stat")"
	read -ra f <<<"${s##*) }"
	echo $((f[11] + f[12]))
}

# machine_ticks: "busy total" jiffies summed over all CPUs.
machine_ticks() {
	awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# build_bins: dbproxy and devstack from the working tree into bin/, or with
# BENCH_REV from that commit (git archive into $work); sets commit and bindir.
# The measuring tools (bench/floor/pgfloor, bench/floor/myfloor,
# bench/idleclients) are always built from the working tree into $toolsdir.
build_bins() {
	if [[ -n "${BENCH_REV:-}" ]]; then
		rev="$(git rev-parse --verify "$BENCH_REV^{commit}")" || die "BENCH_REV=$BENCH_REV is not a commit"
		commit="$(git rev-parse --short "$rev")"
		bindir="$work/bin"
		log "building dbproxy and devstack at commit $commit"
		mkdir -p "$work/src"
		git archive "$rev" | tar -x -C "$work/src"
		(cd "$work/src" && "$GO" build -o "$bindir/dbproxy" ./cmd/dbproxy && "$GO" build -o "$bindir/devstack" ./test/devstack)
	else
		commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
		git diff --quiet HEAD -- . 2>/dev/null || commit="$commit with uncommitted changes"
		bindir="$root/bin"
		log "building bin/dbproxy and bin/devstack"
		"$GO" build -o bin/dbproxy ./cmd/dbproxy
		"$GO" build -o bin/devstack ./test/devstack
	fi
	toolsdir="$root/bin"
	log "building the measuring tools: bin/pgfloor, bin/myfloor, bin/idleclients"
	"$GO" build -o bin/pgfloor ./bench/floor/pgfloor
	"$GO" build -o bin/myfloor ./bench/floor/myfloor
	"$GO" build -o bin/idleclients ./bench/idleclients
}

# start_floor BINARY UPSTREAM READY_CMD...: starts a floor relay on a free
# port (sets fport and floor_pid), with the environment settings in the
# array floor_env, if any, and waits until READY_CMD (run with $fport set)
# succeeds.
start_floor() {
	local bin=$1 upstream=$2 attempt st
	shift 2
	for ((attempt = 1; attempt <= 3; attempt++)); do
		fport="$(free_port)"
		log "starting $(basename "$bin") (the floor) on 127.0.0.1:$fport"
		env ${floor_env[@]+"${floor_env[@]}"} "$bin" -listen "127.0.0.1:$fport" -upstream "$upstream" >"$work/floor.log" 2>&1 </dev/null &
		floor_pid=$!
		st=0
		wait_ready "$floor_pid" 30 "$@" || st=$?
		((st == 0)) && return 0
		((st == 1)) && grep -q 'address already in use' "$work/floor.log" && continue
		die "the floor did not start (logs in $work)"
	done
	die "floor: no free port after 3 attempts"
}

# rss_kib PID: resident set size of PID in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2; exit }' "/proc/$1/status"; }

# metric NAME: the value of an unlabelled metric on dbproxy's /metrics.
# (awk reads to the end: an early exit would fail curl, and pipefail the script)
metric() { curl -fsS "http://127.0.0.1:$aport/metrics" | awk -v m="$1" '$1 == m && v == "" { v = $2 } END { if (v != "") printf "%.0f", v }'; }

# start_dbproxy WRITE_CONFIG LABEL: picks pport and aport, runs WRITE_CONFIG
# to write $work/dbproxy.yaml, starts dbproxy (sets proxy_pid) with the
# environment settings in the array proxy_env (e.g. GOGC=200), if any, and
# waits for /readyz; retries on a port lost to a race.
start_dbproxy() {
	local attempt st
	for ((attempt = 1; attempt <= 3; attempt++)); do
		pport="$(free_port)"
		aport="$(free_port)"
		"$1"
		log "starting dbproxy on 127.0.0.1:$pport ($2)"
		env ${proxy_env[@]+"${proxy_env[@]}"} "$bindir/dbproxy" run --config "$work/dbproxy.yaml" >"$work/dbproxy.log" 2>&1 </dev/null &
		proxy_pid=$!
		st=0
		wait_ready "$proxy_pid" 30 curl -fsS "http://127.0.0.1:$aport/readyz" || st=$?
		((st == 0)) && return 0
		((st == 1)) && grep -q 'address already in use' "$work/dbproxy.log" && continue
		die "dbproxy did not start (logs in $work)"
	done
	die "dbproxy: no free port after 3 attempts"
}

# finish STATUS: keeps $work on failure or with BENCH_KEEP, else removes it,
# and exits with STATUS. The scripts' EXIT traps call it after stopping
# their processes.
finish() {
	if (($1 != 0)) || [[ -n "${BENCH_KEEP:-}" ]]; then
		log "state and logs kept in $work"
	else
		rm -rf "$work"
	fi
	exit "$1"
}
