#!/usr/bin/env bash
# tests/run_tests.sh — runs every suite and prints "N passed, N failed" over all of them
# as its last line: the doctest unit tests (test cases), the CLI tests, the table of bad
# inputs, kill-and-resume, data parallelism over MPI ranks, GPT-2's tokenizer against gpt-3-encoder (one check per text),
# the study's verdicts against the experiment's fixture,
# and a short bounded fuzz pass (one check per fuzz target).
# Exits non-zero when anything failed or a suite died before its summary.
set -u
cd "$(dirname "$0")/.."
# These are the CPU path's tests (make test-gpu checks the GPU): with a GPU present,
# --device auto must still pick the CPU here.
export CUDA_VISIBLE_DEVICES=""
log=$(mktemp)
trap 'rm -f "$log"' EXIT
passed=0
failed=0

# suite NAME SUMMARY_REGEX COMMAND...: the regex's two groups are passed and failed
suite() {
  local name=$1 regex=$2
  shift 2
  echo "=== $name" >&2
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local line p f
  line=$(grep -E "$regex" "$log" | tail -1)
  if [ -z "$line" ]; then
    echo "$name: no summary (exit $rc)" >&2
    failed=$((failed + 1))
    return
  fi
  p=$(echo "$line" | sed -E "s/$regex/\1/")
  f=$(echo "$line" | sed -E "s/$regex/\2/")
  passed=$((passed + p))
  failed=$((failed + f))
  [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && failed=$((failed + 1))
  return 0
}

suite unit '^\[doctest\] test cases: *[0-9]+ \| *([0-9]+) passed \| *([0-9]+) failed.*' ./tests/test_gkd
# gkd's own kernels run AVX-512 where the CPU has it (cpu/packed_tile.h): there the cases
# that run them (attention, decode, sampling, the reference fixtures, the seeds' runs,
# speculative decoding) run again on the AVX2 variant
if grep -qw avx512f /proc/cpuinfo; then
  suite unit-avx2 '^\[doctest\] test cases: *[0-9]+ \| *([0-9]+) passed \| *([0-9]+) failed.*' \
      env GKD_CPU_KERNELS=avx2 ./tests/test_gkd \
      -tc='*attention*,*decode*,*sampl*,*greedy*,sharing rows*,packed batches*,reference fixture*,the same seed*,speculative*'
fi
suite cli '^cli: ([0-9]+) passed, ([0-9]+) failed' bash tests/cli_test.sh
# the study's verdicts (dev/verdicts.py) on the cases the unit tests feed the experiment's (cli/verdicts.h)
suite verdicts '^verdicts: ([0-9]+) passed, ([0-9]+) failed' python3 tests/verdicts_test.py
suite bad-input '^bad input: ([0-9]+) passed, ([0-9]+) failed' bash tests/bad_input_test.sh
suite resume '^resume: ([0-9]+) passed, ([0-9]+) failed' bash tests/resume_test.sh
# data parallelism: 2 MPI ranks against 1 process (GKD_REQUIRE_MPI=1: no MPI is a failure)
suite mpi '^mpi: ([0-9]+) passed, ([0-9]+) failed' bash tests/mpi_test.sh
# GPT-2's BPE against the npm package gpt-3-encoder on the whole corpus (about 300 kB)
suite tokenizer '^tokenizer: ([0-9]+) passed, ([0-9]+) failed' bash tests/compare_tokenizer.sh ./gkd
# the GPU test's refusal to pass on nothing: with no usable GPU (CUDA_VISIBLE_DEVICES=""
# above hides any) it checks nothing and says so, and GKD_REQUIRE_GPU=1 (dev/gpu_check.sh)
# makes that a failure
gpu_harness() {
  local p=0 f=0 out
  if [ ! -x tests/test_gpu ]; then
    echo "gpu harness: tests/test_gpu not built (no nvcc): not run"
  else
    if out=$(./tests/test_gpu) && echo "$out" | grep -q "nothing was checked"; then p=$((p + 1))
    else f=$((f + 1)); echo "FAIL: without a GPU, tests/test_gpu must exit 0 saying it checked nothing: $out"; fi
    if GKD_REQUIRE_GPU=1 ./tests/test_gpu >/dev/null; then f=$((f + 1)); echo "FAIL: GKD_REQUIRE_GPU=1 without a GPU must fail"
    else p=$((p + 1)); fi
  fi
  echo "gpu harness: $p passed, $f failed"
}
# the CUDA path on the CPU: the SIMT emulator runs tests/test_gpu.cu, its own expected
# failures, and --device cuda through the command line (tests/gpu_emulated_test.sh)
suite gpu-emulated '^gpu emulated: ([0-9]+) passed, ([0-9]+) failed' bash tests/gpu_emulated_test.sh
suite gpu-harness '^gpu harness: ([0-9]+) passed, ([0-9]+) failed' gpu_harness
# tests/hf_parity.py on the CPU where torch and transformers are installed (gpu_check.sh runs
# it on the GPU); elsewhere it says that it did not run
hf_parity() {
  local py=/usr/bin/python3 out
  if ! "$py" -c 'import torch, transformers' 2>/dev/null; then
    echo "hf parity: not run: $py lacks torch or transformers (Hugging Face's GPT2LMHeadModel is the reference)"
    echo "hf parity: 0 passed, 0 failed"
    return
  fi
  out=$("$py" tests/hf_parity.py --device cpu --gkd ./gkd 2>&1)
  echo "$out"
  echo "$out" | sed -n 's/^hf_parity: \([0-9]*\) passed, \([0-9]*\) failed$/hf parity: \1 passed, \2 failed/p' | grep . ||
    echo "hf parity: 0 passed, 1 failed"
}
suite hf-parity '^hf parity: ([0-9]+) passed, ([0-9]+) failed' hf_parity
fuzz_smoke() {
  local p=0 f=0
  for t in checkpoint training_state jsonl_line tokenizer bpe_text tokenizer_json safetensors; do
    mkdir -p build/corpus/$t
    if ./build/fuzz_$t -max_total_time=${FUZZ_SMOKE_SECONDS:-5} -malloc_limit_mb=512 -rss_limit_mb=2048 -timeout=10 \
         -artifact_prefix=build/fuzz-$t- build/corpus/$t tests/fuzz/corpus/$t >build/fuzz-$t.log 2>&1; then
      p=$((p + 1))
    else
      f=$((f + 1)); tail -20 build/fuzz-$t.log
    fi
  done
  echo "fuzz: $p passed, $f failed"
}
suite fuzz '^fuzz: ([0-9]+) passed, ([0-9]+) failed' fuzz_smoke

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
