#!/usr/bin/env bash
# bench_ab.sh — is a change faster? Two gkd binaries (before, after) time the same step,
# alternating ROUNDS times so that both see the same machine state (a shared VM's speed
# drifts by 20% within minutes: the same binary against itself has shown 1.16x), and the
# table gives each phase's best and median over the rounds (each round: the median of 5
# steps) and their ratios. Interference only adds time, so the best is the steadier
# figure for deciding; the median says what a user sees. Every optimisation of the CPU
# step was kept or dropped on this table.
#
#   dev/bench_ab.sh BEFORE AFTER [THREADS] [ROUNDS] [gkd bench flags...]
#   e.g. git worktree add /tmp/base HEAD && make -C /tmp/base gkd-cpu && make gkd-cpu &&
#        dev/bench_ab.sh /tmp/base/build/gkd-cpu build/gkd-cpu 2 7
set -euo pipefail
before=$1; after=$2; threads=${3:-2}; rounds=${4:-5}; shift $(( $# < 4 ? $# : 4 ))
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for r in $(seq "$rounds"); do
  OMP_NUM_THREADS=$threads "$before" bench --json --steps 5 "$@" >> "$work/before.jsonl"
  OMP_NUM_THREADS=$threads "$after" bench --json --steps 5 "$@" >> "$work/after.jsonl"
  echo "round $r of $rounds done" >&2
done
python3 - "$work/before.jsonl" "$work/after.jsonl" "$threads" "$*" <<'PY'
import json, statistics, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
med = lambda rows, k: statistics.median(r[k] for r in rows)
best = lambda rows, k: min(r[k] for r in rows)
print(f"gkd bench {sys.argv[4] or '(reference configuration)'}, {sys.argv[3]} threads, {len(a)} alternating rounds x 5 steps\n")
print("| phase | before ms (best, median) | after ms (best, median) | before / after (best, median) |\n|---|---:|---:|---:|")
for k in ["sample", "teacher", "forward", "loss", "backward", "update", "step"]:
    if k + "_ms" in a[0]:
        x, y, xm, ym = best(a, k + "_ms"), best(b, k + "_ms"), med(a, k + "_ms"), med(b, k + "_ms")
        print(f"| {k} | {x:.2f}, {xm:.2f} | {y:.2f}, {ym:.2f} | {x / y:.2f}x, {xm / ym:.2f}x |")
print(f"\nsgemm ceiling (median) before {med(a, 'sgemm_gflops'):.0f}, after {med(b, 'sgemm_gflops'):.0f} GFLOP/s; "
      f"step at {100 * med(a, 'step_gflops') / med(a, 'sgemm_gflops'):.0f}% / {100 * med(b, 'step_gflops') / med(b, 'sgemm_gflops'):.0f}% of it")
PY
