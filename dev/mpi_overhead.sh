#!/usr/bin/env bash
# mpi_overhead.sh — what data parallelism costs on one machine: the reference on-policy
# GKD step (gkd bench's configuration: student 2,128,4, teacher 4,256,4, byte vocabulary,
# context 128, batch 32, 32-token prompts, up to 64 sampled tokens) run by `gkd distill` as
# 1 process x T threads and as N ranks x T/N threads, alternating ROUNDS times, each for
# STEPS steps; tokens/s from the root's metrics (target tokens / step time, the first step
# left out). Then the size of the gradient each step moves, for GPT-2's shapes.
#
#   dev/mpi_overhead.sh [RANKS] [ROUNDS] [STEPS]      defaults: 2 ranks, 3 rounds, 8 steps
# Uses every core: T = nproc threads in all.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n=${1:-2}; rounds=${2:-3}; steps=${3:-8}
gkd=${GKD:-$here/gkd}
threads=$(nproc)
per_rank=$(( threads / n > 0 ? threads / n : 1 ))
ldd "$gkd" | grep -q libmpi || { echo "mpi_overhead.sh: $gkd has no MPI (apt-get install libopenmpi-dev openmpi-bin; make)" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$gkd" init --layers 2 --channels 128 --heads 4 --context 128 --seed 1 --out "$W/student.bin" 2>/dev/null
"$gkd" init --layers 4 --channels 256 --heads 4 --context 128 --seed 2 --out "$W/teacher.bin" 2>/dev/null
python3 - "$W/prompts.jsonl" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(256):
        f.write(json.dumps({"prompt_ids": [random.randrange(256) for _ in range(32)]}) + "\n")
PY
flags="--teacher $W/teacher.bin --student $W/student.bin --data $W/prompts.jsonl --lambda 1 --beta 0.5 --batch 32
       --max-new-tokens 64 --steps $steps --lr 1e-4 --quiet --overwrite"
for r in $(seq "$rounds"); do
  OMP_NUM_THREADS=$threads "$gkd" distill $flags --out "$W/one-$r" 2>/dev/null
  mpirun -q --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=$per_rank -np "$n" \
      "$gkd" distill $flags --out "$W/ranks-$r" 2>/dev/null
  echo "round $r of $rounds done" >&2
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
python3 - "$W" "$rounds" "$n" "$threads" "$per_rank" "$cpu" "$(mpirun --version | head -1)" <<'PY'
import json, statistics, sys
w, rounds, n, threads, per_rank, cpu, mpi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
def rate(d):
    lines = [json.loads(l) for l in open(f"{w}/{d}/metrics.jsonl") if '"eval"' not in l][1:]
    return sum(l["tokens"] for l in lines) / (sum(l["step_ms"] for l in lines) / 1000), \
           statistics.median(l["step_ms"] for l in lines)
one = [rate(f"one-{r}") for r in range(1, rounds + 1)]
many = [rate(f"ranks-{r}") for r in range(1, rounds + 1)]
med = lambda v, i: statistics.median(x[i] for x in v)
print(f"| run | tokens/s | step (ms) |\n|---|---:|---:|")
print(f"| 1 process x {threads} threads | {med(one, 0):.0f} | {med(one, 1):.0f} |")
print(f"| {n} ranks x {per_rank} thread{'s' if per_rank != '1' else ''} | {med(many, 0):.0f} | {med(many, 1):.0f} |")
print(f"\nMedians over {rounds} alternating rounds; {n} ranks / 1 process: {med(many, 0) / med(one, 0):.2f}x tokens/s. "
      f"Machine: {cpu}, {threads} cores; {mpi}; OpenBLAS (OpenMP) on both sides.\n")
# the gradient each step sums across ranks: all parameters in fp32, Vp = 50304, context 1024
print("| GPT-2 | parameters | gradient all-reduced per step (fp32) | sent by each rank per step (ring all-reduce, 8 ranks: 2 x 7/8 of it) |")
print("|---|---:|---:|---:|")
for name, L, C in (("124M", 12, 768), ("355M", 24, 1024), ("774M", 36, 1280), ("1558M", 48, 1600)):
    p = 50304 * C + 1024 * C + L * (12 * C * C + 13 * C) + 2 * C
    print(f"| {name} | {p / 1e6:.1f}M | {4 * p / 2**20:.0f} MiB | {2 * 7 / 8 * 4 * p / 2**20:.0f} MiB |")
PY
