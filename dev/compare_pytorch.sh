#!/usr/bin/env bash
# compare_pytorch.sh — gkd's on-policy GKD step against the same step in PyTorch eager
# (dev/pytorch_gkd_step.py), on the same cores and thread count, in one run: the two
# alternate ROUNDS times (so that both see the same machine load) and the table gives
# each phase's median over the rounds, and the ratio.
#
#   dev/compare_pytorch.sh [THREADS] [ROUNDS] [extra gkd bench flags...]
# Defaults: 2 threads, 3 rounds, the reference configuration. Needs /usr/bin/python3 with
# Debian's python3-torch.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
threads=${1:-2}; rounds=${2:-3}; shift $(( $# < 2 ? $# : 2 )) || true
py=/usr/bin/python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for r in $(seq "$rounds"); do
  OMP_NUM_THREADS=$threads "$here/gkd" bench --json --steps 5 "$@" >> "$work/gkd.jsonl"
  OMP_NUM_THREADS=$threads "$py" "$here/dev/pytorch_gkd_step.py" --threads "$threads" --steps 5 >> "$work/torch.jsonl"
  echo "round $r of $rounds done" >&2
done
"$py" - "$work/gkd.jsonl" "$work/torch.jsonl" "$threads" <<'PY'
import json, statistics, sys
g = [json.loads(l) for l in open(sys.argv[1])]
t = [json.loads(l) for l in open(sys.argv[2])]
med = lambda rows, k: statistics.median(r[k] for r in rows)
phases = [("sample (student, KV cache)", "sample_ms", "sample_ms"), ("teacher forward", "teacher_ms", "teacher_ms"),
          ("student forward", "forward_ms", "student_forward_ms"), ("loss (JSD)", "loss_ms", "loss_ms"),
          ("student backward (gkd: + grad norm; PyTorch: + clipping)", "backward_ms", "backward_ms"), ("AdamW (gkd: + clipping)", "update_ms", "update_ms"),
          ("whole step", "step_ms", "step_ms")]
print(f"on-policy GKD step, reference configuration, {sys.argv[3]} threads, median of {len(g)} rounds x 5 steps")
print(f"(PyTorch {t[0]['torch']} eager; gkd matmuls: {g[0]['matmuls']}; sgemm ceiling {med(g, 'sgemm_gflops'):.0f} GFLOP/s)\n")
print("| phase | gkd ms | PyTorch ms | PyTorch / gkd |")
print("|---|---:|---:|---:|")
for name, gk, tk in phases:
    a, b = med(g, gk), med(t, tk)
    print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.1f}x |")
print(f"\ngkd: {med(g, 'step_gflops'):.0f} GFLOP/s over the step ({100 * med(g, 'step_gflops') / med(g, 'sgemm_gflops'):.0f}% of sgemm), peak RSS {med(g, 'peak_rss_mb'):.0f} MB")
PY
