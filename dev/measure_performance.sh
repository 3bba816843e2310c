#!/usr/bin/env bash
# measure_performance.sh — regenerates every CPU performance figure of docs/performance.md
# and the README into results/performance/, each file headed by when and on what it ran,
# then copies them into the pages (dev/insert_results.sh). Run it on a quiet machine:
# another process on the cores moves every figure.
#
#   dev/measure_performance.sh [THREADS] [LLMC_CHECKOUT]
# THREADS (default: nproc) for every run; with LLMC_CHECKOUT (a checkout of
# github.com/karpathy/llm.c), also the llm.c comparison. About 15 minutes on 2 cores.
# Where the environment forces OpenBLAS's kernels (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE),
# gkd bench, the PyTorch comparisons and the library comparison each also run with
# OpenBLAS's own choice (those variables unset for that run alone).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
threads=${1:-$(nproc)}; llmc=${2:-}
out=results/performance
mkdir -p "$out"
stamp() {  # the header of every figure: date, build, machine
  printf 'Measured %s on commit %s%s: %s, %s cores, %s threads; OpenBLAS %s.\n\n' \
    "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git diff --quiet HEAD -- . ':!results' 2>/dev/null || echo ' (with uncommitted changes)')" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" "$(nproc)" "$threads" \
    "$(dpkg-query -W -f '${Version}' libopenblas0-openmp 2>/dev/null || echo '?')"
}
run() {  # run NAME COMMAND...: the command's stdout, stamped, into results/performance/NAME.md
  local name=$1; shift
  echo "== $name: $*" >&2
  { stamp; "$@"; } > "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name.md"
}
run bench env OMP_NUM_THREADS="$threads" ./gkd bench --steps 5
run ragged env OMP_NUM_THREADS="$threads" ./gkd bench --ragged
run compare_pytorch dev/compare_pytorch.sh "$threads" 5
run compare_pytorch_gpt2 env STEPS=2 dev/compare_pytorch.sh "$threads" 1 --student 12,768,12 --teacher 24,1024,16 \
    --vocab 50257 --context 256 --batch 4 --prompt-tokens 128 --new-tokens 128
run kernel_libraries dev/kernel_libraries.sh "$threads"
run mpi_overhead dev/mpi_overhead.sh 2 5 10
[ -n "$llmc" ] && run compare_llmc dev/compare_llmc.sh "$llmc" "$threads" 3
dev/insert_results.sh
