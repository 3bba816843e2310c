#!/usr/bin/env bash
# tests/run_tests.sh — runs the unit tests (doctest) and the CLI tests, then prints
# "N passed, N failed" over both (doctest test cases + CLI checks) as its last line.
# Exits non-zero when anything failed or a runner died before its summary.
set -u
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
passed=0
failed=0

./tests/test_gkd 2>&1 | tee "$log"
unit_rc=${PIPESTATUS[0]}
summary=$(grep -E '^\[doctest\] test cases:' "$log" | tail -1)
if [ -n "$summary" ]; then
  passed=$((passed + $(echo "$summary" | sed -E 's/.*\| *([0-9]+) passed.*/\1/')))
  failed=$((failed + $(echo "$summary" | sed -E 's/.*\| *([0-9]+) failed.*/\1/')))
fi
[ -z "$summary" ] || [ "$unit_rc" -ne 0 -a "$failed" -eq 0 ] && failed=$((failed + 1))  # died before its summary

bash tests/cli_test.sh 2>&1 | tee "$log"
cli_rc=${PIPESTATUS[0]}
summary=$(grep -E '^cli: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
if [ -n "$summary" ]; then
  passed=$((passed + $(echo "$summary" | sed -E 's/cli: ([0-9]+) passed.*/\1/')))
  failed=$((failed + $(echo "$summary" | sed -E 's/.* ([0-9]+) failed.*/\1/')))
fi
[ -z "$summary" ] || [ "$cli_rc" -ne 0 -a "$failed" -eq 0 ] && failed=$((failed + 1))

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
