#!/usr/bin/env bash
# speculative_table.sh — the walks experiment's students as the teacher's speculative
# draft: for each student (SFT warm start, more SFT, supervised KD, on-policy GKD; every
# seed) and K = 2, 4, 8, `gkd sample --model TEACHER --draft STUDENT --draft-tokens K` on
# the walks test prompts at temperature 1, with the plain teacher timed on the same rows in
# the same run (gkd sample interleaves the two batch by batch). Two batch sizes: 1 (one
# prompt at a time: the latency-bound case speculative decoding is for) and 100.
#
#   ./gkd --task walks             first: the walks experiment's models (runs/default/walks)
#   dev/speculative_table.sh [RUNS_DIR] [OUT.md]
# Defaults: runs/default/walks, results/speculative.md. Prints the table too.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
runs=${1:-$here/runs/default/walks}
out=${2:-$here/results/speculative.md}
gkd=${GKD:-$here/gkd}
teacher=$runs/teacher/model.bin
[ -s "$teacher" ] || { echo "speculative_table.sh: $teacher is missing: run ./gkd --task walks first" >&2; exit 1; }
# the distillation runs the experiment kept: the divergence chosen on validation is the one
# every seed ran (seed 0 ran them all)
pick() { (cd "$runs/seed1" && ls -d "$1"-beta* | head -1); }
kd=$(pick kd); gkd_dir=$(pick gkd)
methods="sft more-sft $kd $gkd_dir"
seeds=$(cd "$runs" && ls -d seed* | sed 's/seed//' | sort -n | tr '\n' ' ')
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
total=$(( $(echo $methods | wc -w) * $(echo $seeds | wc -w) * 3 * 2 )); done_runs=0; start=$(date +%s)
for m in $methods; do
  for s in $seeds; do
    for K in 2 4 8; do
      for B in 1 100; do
        "$gkd" sample --model "$teacher" --draft "$runs/seed$s/$m/model.bin" --draft-tokens "$K" \
            --data "$runs/data/test.jsonl" --temperature 1 --max-new-tokens 12 --batch "$B" --seed "$s" \
            2> "$work/err" > /dev/null
        grep '^{"speculative"' "$work/err" | sed "s/^/$m $s $K $B /" >> "$work/all.txt"
        done_runs=$((done_runs + 1)); el=$(( $(date +%s) - start ))
        printf '[%d/%d] %-14s seed %s K=%d batch %3d  %ds elapsed, ETA %ds\n' "$done_runs" "$total" "$m" "$s" "$K" \
            "$B" "$el" $(( el * (total - done_runs) / done_runs )) >&2
      done
    done
  done
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
isa=$(grep -m1 -o -w 'avx512f' /proc/cpuinfo || grep -m1 -o -w 'avx2' /proc/cpuinfo || echo "no AVX2")
threads=${OMP_NUM_THREADS:-$(nproc)}
python3 - "$work/all.txt" "$out" "$cpu" "$isa" "$threads" "$(( $(date +%s) - start ))" <<'PY'
import json, math, sys
path, out, cpu, isa, threads, seconds = sys.argv[1:7]
rows = {}
for line in open(path):
    m, s, K, B, text = line.split(" ", 4)
    rows.setdefault((m, int(K)), {}).setdefault(int(B), []).append(json.loads(text)["speculative"])
def ms(v, fmt):
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{fmt.format(mean)} ± {fmt.format(sd)}"
label = lambda m: {"sft": "student (SFT warm start)", "more-sft": "+ more SFT (control)"}.get(m) or (
    ("+ supervised KD" if m.startswith("kd") else "+ on-policy GKD") +
    " (" + {"0": "forward KL", "1": "reverse KL"}.get(m.split("beta")[1], "JSD(" + m.split("beta")[1] + ")") + ")")
order = []
for m, K in rows:
    if m not in order: order.append(m)
lines = ["| draft | K | acceptance (counted) | acceptance (expected) | tokens per teacher forward | "
         "speed-up, batch 1 | speed-up, batch 100 |", "|---|---|---|---|---|---|---|"]
for m in order:
    for K in (2, 4, 8):
        one, hundred = rows[(m, K)][1], rows[(m, K)][100]
        lines.append(f"| {label(m)} | {K} | {ms([100 * r['acceptance_rate'] for r in one], '{:.1f}')}% | "
                     f"{ms([100 * r['expected_acceptance'] for r in one], '{:.1f}')}% | "
                     f"{ms([r['tokens_per_target_forward'] for r in one], '{:.2f}')} | "
                     f"{ms([r['speedup'] for r in one], '{:.2f}')}x | {ms([r['speedup'] for r in hundred], '{:.2f}')}x |")
plain1 = [r["plain_tokens_per_second"] for v in rows.values() for r in v[1]]
plain100 = [r["plain_tokens_per_second"] for v in rows.values() for r in v[100]]
n_seeds = len(next(iter(rows.values()))[1])
text = "\n".join(lines) + (
    f"\n\nThe walks test prompts (500), 12 new tokens, temperature 1; mean ± std over {n_seeds} seeds (each seed's "
    f"students, sampled with that seed). Speed-up: tokens per second of speculative sampling over plain sampling "
    f"from the teacher, timed batch by batch in the same run. Plain teacher sampling ran at "
    f"{sum(plain1) / len(plain1):.0f} tokens/s at batch 1 and {sum(plain100) / len(plain100):.0f} at batch 100 "
    f"(means over the runs). Machine: {cpu} ({isa}), {threads} OpenMP threads, OpenBLAS; "
    f"{int(seconds) // 60} min {int(seconds) % 60} s in all.\n")
open(out, "w").write(text)
print(text)
PY
