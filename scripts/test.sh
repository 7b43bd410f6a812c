#!/usr/bin/env bash
# THE test command (`npm test`, `.ci/run`): install what is missing, type check, lint, run every test/*.test.ts.
# Exit code: the test runner's when it failed; else 1 when the type check or lint failed; else 0.
# Everything the run starts (Redis, slapd, API, worker processes of the tests) is stopped on exit,
# including daemons that left the process group: they are found by CERTGATE_TEST_RUN in their environment
# (or by a pid file in CERTGATE_TEST_PIDS_DIR, for daemons that rewrite their environment, like redis-server).
# TEST_TOTAL_TIMEOUT (seconds, default 5100 = 85 min) bounds the test runner so that CI (90 min) sees a result.
set -uo pipefail
set -m # background jobs get their own process group, which the exit trap can signal as a whole

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*"; }

CERTGATE_TEST_RUN="$$-$(date +%s%N)"
export CERTGATE_TEST_RUN
# Helpers that start a daemon the exit trap could not otherwise find may write its pid into a file here.
CERTGATE_TEST_PIDS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/certgate-test-pids.XXXXXX")
export CERTGATE_TEST_PIDS_DIR
runner_pgid=""

# All live processes as "pid ppid" lines.
pid_table() {
  local f pid ppid
  for f in /proc/[0-9]*/status; do
    pid=${f#/proc/}
    pid=${pid%/status}
    ppid=$({ grep -m1 '^PPid:' "$f" | cut -f2; } 2>/dev/null) || continue
    [ -n "$ppid" ] && echo "$pid $ppid"
  done
}

# Processes this run started and that are still there (never this shell or the subshell computing it):
# descendants of this shell, processes whose environment carries this run's marker (daemons that
# detached, like slapd), and pids registered in CERTGATE_TEST_PIDS_DIR.
leftover_pids() {
  local self=$$ sub=$BASHPID table pid ppid f
  table=$(pid_table)
  declare -A seen=()
  local queue=("$self")
  while [ ${#queue[@]} -gt 0 ]; do
    local parent=${queue[0]}
    queue=("${queue[@]:1}")
    while read -r pid ppid; do
      if [ "$ppid" = "$parent" ] && [ -z "${seen[$pid]:-}" ]; then
        seen[$pid]=1
        queue+=("$pid")
      fi
    done <<<"$table"
  done
  while read -r pid ppid; do
    [ -n "${seen[$pid]:-}" ] && continue
    if { tr '\0' '\n' <"/proc/$pid/environ" | grep -qxF "CERTGATE_TEST_RUN=$CERTGATE_TEST_RUN"; } 2>/dev/null; then
      seen[$pid]=1
    fi
  done <<<"$table"
  for f in "$CERTGATE_TEST_PIDS_DIR"/*; do
    [ -f "$f" ] || continue
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && seen[$pid]=1
  done
  unset 'seen[$self]' 'seen[$sub]'
  for pid in "${!seen[@]}"; do
    [ -d "/proc/$pid" ] && echo "$pid"
  done
}

cleanup() {
  local rc=$? left
  trap - EXIT
  trap '' INT TERM HUP # a second Ctrl-C or SIGTERM must not cut the cleanup short
  set +m # no job status lines while stopping
  left=$(leftover_pids)
  left=${left//$'\n'/ }
  if [ -n "$runner_pgid" ]; then kill -TERM -- "-$runner_pgid" 2>/dev/null || true; fi
  if [ -n "${left// /}" ]; then
    say "stopping leftover processes: $left"
    # shellcheck disable=SC2086
    kill -TERM $left 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      local alive=""
      for pid in $left; do [ -d "/proc/$pid" ] && alive+="$pid "; done
      left=$alive
      [ -z "$left" ] && break
      sleep 0.3
    done
    # shellcheck disable=SC2086
    if [ -n "$left" ]; then kill -KILL $left 2>/dev/null || true; fi
  fi
  if [ -n "$runner_pgid" ]; then kill -KILL -- "-$runner_pgid" 2>/dev/null || true; fi
  rm -rf "$CERTGATE_TEST_PIDS_DIR" "${failures_file:-}"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

bash scripts/ensure-deps.sh --test || { say "ensure-deps failed"; exit 1; }

static_failed=0
say "type check: npx tsc -p tsconfig.json"
if ! npx --no-install tsc -p tsconfig.json; then
  say "type check FAILED"
  static_failed=1
fi
say "lint: npx eslint ."
if ! npx --no-install eslint .; then
  say "lint FAILED"
  static_failed=1
fi

shopt -s nullglob
files=(test/*.test.ts)
shopt -u nullglob
if [ ${#files[@]} -eq 0 ]; then
  say "no test files found (test/*.test.ts)"
  exit 1
fi

failures_file=$(mktemp "${TMPDIR:-/tmp}/certgate-test-failures.XXXXXX")
# Files run side by side (TEST_CONCURRENCY, default 2); those sharing a fixed resource (Samba's ports,
# the demo's) serialise themselves with flock. No test depends on timing, so a busy machine only slows it.
say "running ${#files[@]} test files, ${TEST_CONCURRENCY:-2} at a time: ${files[*]}"
start=$(date +%s)
timeout --kill-after=30 "${TEST_TOTAL_TIMEOUT:-5100}" \
  node --import tsx --test --test-concurrency="${TEST_CONCURRENCY:-2}" --test-timeout=600000 \
  --test-reporter=tap --test-reporter-destination=stdout \
  --test-reporter=./scripts/failures-reporter.mjs --test-reporter-destination="$failures_file" \
  "${files[@]}" </dev/null &
runner_pgid=$!
wait "$runner_pgid"
test_rc=$?
say "test runner exited $test_rc after $(($(date +%s) - start)) s"
if [ "$test_rc" -eq 124 ]; then say "test runner stopped: over TEST_TOTAL_TIMEOUT=${TEST_TOTAL_TIMEOUT:-5100} s"; fi
if [ -s "$failures_file" ]; then
  say "failing tests ($(wc -l <"$failures_file")):"
  sed 's/^/test.sh:   /' "$failures_file"
fi

if [ "$test_rc" -ne 0 ]; then exit "$test_rc"; fi
if [ "$static_failed" -ne 0 ]; then
  say "tests passed, but the type check or lint failed"
  exit 1
fi
exit 0
