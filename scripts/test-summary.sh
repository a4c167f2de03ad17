#!/usr/bin/env bash
# test-summary.sh LOG: the verdict lines of a `go test -v` log, then, for
# each failed test, the lines its t.Error/t.Log calls wrote (first line of
# each, at most 40 per test), so the reason is visible where CI shows the
# tail of the output and not only in the full log.
set -u
log=$1
grep -E '^(--- (PASS|FAIL|SKIP)|FAIL|ok|PASS|panic:)' "$log" || true
awk '
/^=== (RUN|CONT) / { cur = $3; sub(/\/.*/, "", cur); next }
/^[ \t]+[A-Za-z0-9_]+_test\.go:[0-9]+: / { if (cur != "" && n[cur] < 40) { n[cur]++; msg[cur] = msg[cur] "\n" $0 } ; next }
/^[ \t]*--- FAIL: / { name = $3; sub(/\/.*/, "", name); if (!(name in done) && name in msg) { failed[++k] = name; done[name] = 1 } }
/^panic: / { p = p "\n" $0 }
END {
  for (i = 1; i <= k; i++) { printf "\n>> why %s failed (its own log lines):%s\n", failed[i], msg[failed[i]] }
  if (p != "") printf "\n>> panics:%s\n", p
}' "$log"
