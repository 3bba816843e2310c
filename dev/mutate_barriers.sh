#!/usr/bin/env bash
# dev/mutate_barriers.sh — does the emulator catch a missing __syncthreads? For each
# __syncthreads() in cuda/, in turn: remove it from a copy of the sources, build the
# emulated tests/test_gpu from that copy, run it (without the GPT-2-width tests, for time),
# and report whether it failed and which kernel its first failure names. About 40 s a
# barrier on 2 cores. Prints one line per barrier, and "mutants: N caught, N missed" last.
set -u
cd "$(dirname "$0")/.."
M=build/mutants  # a second emulated build (make EMU=...), its sources mutated after preparing
caught=0 missed=0
for site in $(grep -n '__syncthreads()' cuda/*.cuh | grep -v '^\S*:[0-9]*: *//' | cut -d: -f1,2); do
  file=${site%%:*} line=${site##*:}
  rm -rf "$M/src" "$M/test_gpu"
  make -s EMU=$M "$M/src/.prepared" "$M/libcublas.so.13" >/dev/null || exit 1
  sed -i "${line}s/__syncthreads();/(void)0;  \/\/ removed by dev\/mutate_barriers.sh/" "$M/src/$file"
  make -s EMU=$M "$M/test_gpu" >/dev/null 2>&1 ||
    { echo "$site: the mutant did not build"; missed=$((missed + 1)); continue; }
  out=$(cd "$M" && GKD_GPU_TEST_SKIP="GPT-2 width" timeout 600 ./test_gpu 2>&1)
  summary=$(echo "$out" | tail -1)
  first=$(echo "$out" | grep -m1 '^FAIL' | grep -o 'kernel [A-Za-z_:]*' | head -1)
  what=$(echo "$out" | grep -m1 '^FAIL' | cut -c1-160)
  if echo "$summary" | grep -q ' 0 failed'; then
    echo "$site: MISSED ($summary)"; missed=$((missed + 1))
  else
    echo "$site: caught, ${first:-no kernel named}: $summary; first: $what"; caught=$((caught + 1))
  fi
done
echo "mutants: $caught caught, $missed missed"
