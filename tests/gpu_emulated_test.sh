#!/usr/bin/env bash
# tests/gpu_emulated_test.sh — the CUDA path run by the SIMT emulator (emulator/), on a
# machine with no GPU: `make test-gpu-emulated`, and part of `make test`.
# - build/emulator/test_gpu: every test of tests/test_gpu.cu (every kernel against the CPU
#   path, full steps, sampling, graphs, GPT-2's widths), in race mode;
# - build/emulator/test_emulator: the failures the emulator must catch, each with its words;
# - the command line, build/emulator/gkd --device cuda against ./gkd --device cpu: distill
#   on-policy (greedy student samples, so both sides train on the same tokens) and SFT,
#   losses step by step and the models within 1e-3 (the GPU tests' trajectory tolerance);
#   total variation, the teacher's top-K, the offline cache within 1e-5; the sampled
#   reverse KL and RL + GKD (samples at T > 0, another generator on each device) run;
#   greedy sampling and speculative sampling token for token; eval within 1e-4; bench runs;
#   all of these in --precision fp32, the parity mode;
# - --precision bf16 at the command line: distill and SFT against the CPU's fp32 within
#   BF16_TOL, a bf16 checkpoint resumed on the CPU and a CPU one resumed in bf16, sample,
#   eval and bench in bf16;
# - data parallel: mpirun -np 2 of the emulated --device cuda (the all-reduce is the emulated
#   NCCL's, over MPI) against one process, within 1e-5 as tests/mpi_test.sh asks of the CPU.
# Prints "gpu emulated: N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
EMU=build/emulator
CPU=${GKD:-./gkd}
FP32="--precision fp32"  # the parity mode: bf16 is the default on the emulated sm_90
BF16_TOL=2e-2           # bf16 runs against the CPU's fp32 (docs/testing.md)
unset CUDA_VISIBLE_DEVICES  # run_tests.sh hides GPUs from the CPU suites; the emulated device is wanted here
passed=0
failed=0
ok() { echo "ok    $1"; passed=$((passed + 1)); }
bad() { echo "FAIL  $1"; failed=$((failed + 1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

# the two test programs, their own counts added to ours
for prog in test_gpu test_emulator; do
  out=$("$EMU/$prog" 2>&1)
  rc=$?
  echo "$out" | grep -E '^(FAIL|---|test-gpu|[0-9]+ passed|emulator:)' | grep -v '^--- ' | head -40
  line=$(echo "$out" | grep -E '([0-9]+) passed, ([0-9]+) failed' | tail -1)
  p=$(echo "$line" | sed -E 's/^(.*[^0-9])?([0-9]+) passed, ([0-9]+) failed.*/\2/')
  f=$(echo "$line" | sed -E 's/^(.*[^0-9])?([0-9]+) passed, ([0-9]+) failed.*/\3/')
  if [ -z "$line" ]; then bad "$prog: no summary (exit $rc)"; continue; fi
  passed=$((passed + p)); failed=$((failed + f))
  [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && bad "$prog exited $rc"
done

W=$(mktemp -d /tmp/gkd_emu.XXXXXX)
trap 'rm -rf "$W"' EXIT
$CPU init --layers 2 --channels 32 --heads 2 --context 64 --seed 1 --out "$W/s.bin" 2>/dev/null
$CPU init --layers 2 --channels 64 --heads 4 --context 64 --seed 2 --out "$W/t.bin" 2>/dev/null
$CPU data --task arithmetic --seed 0 --out "$W/data" --train 32 --validation 8 --test 8 2>/dev/null
COMMON="--data $W/data/train.jsonl --steps 8 --lr 3e-3 --max-new-tokens 12 --seed 3 --quiet --overwrite"

# compare A B TOL: metrics losses step by step and model.bin, within TOL relative
compare() { python3 tests/compare_runs.py "$1" "$2" "$3" 8; }
# both_devices TOL "NAME|FLAGS"...: each case run with --device cpu and with the emulated
# --device cuda, compared within TOL
both_devices() {
  local tol=$1 case name flags
  shift
  for case in "$@"; do
    name=${case%%|*}; flags=${case#*|}
    $CPU $flags $COMMON --batch 4 --device cpu --out "$W/cpu" 2>"$W/err" || cat "$W/err"
    $EMU/gkd $flags $COMMON --batch 4 --device cuda $FP32 --out "$W/cuda" 2>"$W/err" || cat "$W/err"
    check "$name, --device cuda (emulated) against --device cpu: $(compare "$W/cuda" "$W/cpu" "$tol" 2>&1 | tail -1)" \
          "compare '$W/cuda' '$W/cpu' $tol >/dev/null 2>&1"
  done
}

both_devices 1e-3 \
   "gkd on-policy|distill --teacher $W/t.bin --student $W/s.bin --lambda 1 --beta 0.5 --temperature 0" \
  "supervised kd|distill --teacher $W/t.bin --student $W/s.bin --lambda 0 --beta 1" \
  "sft|sft --model $W/s.bin"

# every objective and teacher signal beyond JSD(beta)'s full rows, off-policy or with
# greedy samples (the same rows on both devices): losses within 1e-5 relative at each step
$CPU teacher-cache --teacher "$W/t.bin" --data "$W/data/train.jsonl" --top-k 8 --out "$W/cache.bin" --quiet 2>"$W/err" || cat "$W/err"
both_devices 1e-5 \
  "total variation|distill --teacher $W/t.bin --student $W/s.bin --lambda 0 --objective tv" \
  "top-8 with the tail, JSD(0.5)|distill --teacher $W/t.bin --student $W/s.bin --lambda 0 --beta 0.5 --teacher-top-k 8" \
  "top-8 TV on-policy|distill --teacher $W/t.bin --student $W/s.bin --lambda 1 --temperature 0 --objective tv --teacher-top-k 8" \
  "the offline teacher cache|distill --student $W/s.bin --lambda 0 --teacher-cache $W/cache.bin"
# the sampled reverse KL and RL + GKD need samples at a temperature above 0, which the two
# devices draw from different generators (docs/cuda.md): here the CUDA run completes, with a
# finite loss at every step; tests/test_gpu.cu compares their losses and a greedy step
for case in "sampled reverse KL|distill --teacher $W/t.bin --student $W/s.bin --lambda 1 --objective sampled-reverse-kl --kl-discount 0.9" \
            "RL + GKD, top-8|distill --teacher $W/t.bin --student $W/s.bin --lambda 1 --reward arithmetic --alpha 0.5 --teacher-top-k 8"; do
  name=${case%%|*}; flags=${case#*|}
  check "$name, --device cuda (emulated): 8 steps, every loss finite" \
        "$EMU/gkd $flags $COMMON --batch 4 --device cuda $FP32 --out '$W/cuda' 2>'$W/err' && python3 -c 'import json,math,sys; l=[json.loads(x)[\"loss\"] for x in open(sys.argv[1]) if \"eval\" not in x]; sys.exit(0 if len(l)==8 and all(math.isfinite(v) for v in l) else 1)' '$W/cuda/metrics.jsonl'"
done

for d in cpu cuda; do
  bin=$CPU; [ $d = cuda ] && bin=$EMU/gkd
  $bin sample --device $d $FP32 --model "$W/t.bin" --data "$W/data/test.jsonl" --temperature 0 --max-new-tokens 16 \
      > "$W/greedy-$d.jsonl" 2> "$W/greedy-$d.log"
  $bin sample --device $d $FP32 --model "$W/t.bin" --draft "$W/s.bin" --draft-tokens 4 --temperature 0 \
      --data "$W/data/test.jsonl" --max-new-tokens 16 > "$W/spec-$d.jsonl" 2> "$W/spec-$d.log"
  # teacher-forced numbers only: sampling at T = 1 may pick another token where two
  # devices' logits differ in the last bits (greedy and speculative sampling are compared above)
  $bin eval --device $d $FP32 --model "$W/s.bin" --teacher "$W/t.bin" --data "$W/data/test.jsonl" --sample-temperature 0 \
      > "$W/eval-$d.json" 2> "$W/eval-$d.log"
done
check "greedy sampling, emulated --device cuda: the CPU's tokens ($(wc -l < "$W/greedy-cpu.jsonl") rows)" \
      "[ -s '$W/greedy-cpu.jsonl' ] && cmp -s '$W/greedy-cpu.jsonl' '$W/greedy-cuda.jsonl'"
check "speculative sampling, emulated --device cuda: the CPU's tokens" \
      "[ -s '$W/spec-cpu.jsonl' ] && cmp -s '$W/spec-cpu.jsonl' '$W/spec-cuda.jsonl'"
eval_same() {
  python3 - "$W/eval-cpu.json" "$W/eval-cuda.json" <<'PY'
import json, sys
def flat(x, p=""):
    if isinstance(x, dict):
        for k, v in x.items(): yield from flat(v, p + "." + k)
    elif isinstance(x, (int, float)) and not isinstance(x, bool): yield p, float(x)
def load(f):
    t = open(f).read(); return dict(flat(json.loads(t[t.index("{"):])))
a, b = load(sys.argv[1]), load(sys.argv[2])
keys = [k for k in a if k in b and "seconds" not in k and "per_s" not in k and "time" not in k]
worst = max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-9) for k in keys), default=float("inf"))
print(f"{len(keys)} numbers, worst relative difference {worst:.1e}")
sys.exit(0 if keys and worst <= 1e-4 else 1)
PY
}
check "eval --teacher, emulated --device cuda against --device cpu: $(eval_same 2>&1 | tail -1)" "eval_same >/dev/null 2>&1"
check "bench --device cuda runs on the emulator" \
      "$EMU/gkd bench --device cuda $FP32 --student 1,32,2 --teacher 1,64,2 --vocab byte --context 64 --batch 2 --prompt-tokens 8 --new-tokens 8 --steps 1 --warmup 0 > '$W/bench.log' 2>&1 && grep -q '| step' '$W/bench.log'"

# --precision bf16: the same runs against the CPU's fp32, within BF16_TOL (losses step by
# step, the models after 8 steps)
both_precisions() {
  local case name flags
  for case in "$@"; do
    name=${case%%|*}; flags=${case#*|}
    $CPU $flags $COMMON --batch 4 --device cpu --out "$W/cpu" 2>"$W/err" || cat "$W/err"
    $EMU/gkd $flags $COMMON --batch 4 --device cuda --precision bf16 --out "$W/bf16" 2>"$W/err" || cat "$W/err"
    check "$name, --precision bf16 (emulated) against the CPU's fp32: $(compare "$W/bf16" "$W/cpu" $BF16_TOL 2>&1 | tail -1)" \
          "compare '$W/bf16' '$W/cpu' $BF16_TOL >/dev/null 2>&1"
  done
}
both_precisions \
  "gkd on-policy, bf16|distill --teacher $W/t.bin --student $W/s.bin --lambda 1 --beta 0.5 --temperature 0" \
  "supervised kd, top-8, bf16|distill --teacher $W/t.bin --student $W/s.bin --lambda 0 --beta 0.5 --teacher-top-k 8" \
  "sft, bf16|sft --model $W/s.bin"
# a bf16 run's checkpoint (fp32 master weights) resumed on the CPU, and a CPU one in bf16:
# each stops at step 5 (a NaN loss injected) with the checkpoint of step 4, is resumed on
# the other device, and ends as the CPU's uninterrupted run within BF16_TOL
RUN="--teacher $W/t.bin --student $W/s.bin --lambda 0 --beta 0.5 $COMMON --batch 4 --checkpoint-every 4"
$CPU distill $RUN --device cpu --out "$W/whole" 2>"$W/err" || cat "$W/err"
resume_across() {  # NAME FIRST-BINARY FIRST-DEVICE SECOND-BINARY SECOND-DEVICE
  rm -rf "$W/moved"
  (GKD_FAULT=nan-loss:5 $2 distill $RUN $3 --out "$W/moved" 2>/dev/null)
  $4 distill --resume "$W/moved" $5 --quiet 2>"$W/err" || cat "$W/err"
  check "$1: $(compare "$W/moved" "$W/whole" $BF16_TOL 2>&1 | tail -1)" \
        "[ -s '$W/moved/model.bin' ] && compare '$W/moved' '$W/whole' $BF16_TOL >/dev/null 2>&1"
}
resume_across "a bf16 checkpoint resumed on the CPU" "$EMU/gkd" "--device cuda --precision bf16" "$CPU" "--device cpu"
resume_across "a CPU checkpoint resumed in bf16 (emulated)" "$CPU" "--device cpu" "$EMU/gkd" "--device cuda --precision bf16"
$EMU/gkd sample --device cuda --precision fp32 --model "$W/t.bin" --data "$W/data/test.jsonl" --temperature 0 \
    --max-new-tokens 16 > "$W/greedy-fp32.jsonl" 2>/dev/null
$EMU/gkd sample --device cuda --precision bf16 --model "$W/t.bin" --data "$W/data/test.jsonl" --temperature 0 \
    --max-new-tokens 16 > "$W/greedy-bf16.jsonl" 2>/dev/null
check "sample --precision bf16 (emulated), greedy: $(wc -l < "$W/greedy-bf16.jsonl") rows, $(cmp -s "$W/greedy-bf16.jsonl" "$W/greedy-fp32.jsonl" && echo "fp32's tokens" || echo "some tokens differ from fp32's (a random model's near ties)")" \
      "[ \$(wc -l < '$W/greedy-bf16.jsonl') -eq \$(wc -l < '$W/greedy-fp32.jsonl') ] && [ -s '$W/greedy-bf16.jsonl' ]"
check "eval --precision bf16 (emulated) runs" \
      "$EMU/gkd eval --device cuda --precision bf16 --model '$W/s.bin' --teacher '$W/t.bin' --data '$W/data/test.jsonl' --sample-temperature 0 > '$W/eval-bf16.json' 2>'$W/err'"
check "bench --precision bf16 (emulated) runs and prints the memory table" \
      "$EMU/gkd bench --device cuda --precision bf16 --student 1,32,2 --teacher 1,64,2 --vocab byte --context 64 --batch 2 --prompt-tokens 8 --new-tokens 8 --steps 1 --warmup 0 > '$W/bench16.log' 2>&1 && grep -q 'bf16 / fp32' '$W/bench16.log'"
check "--precision bf16 with --tf32 is refused in one line" \
      "! $EMU/gkd sft --model $W/s.bin $COMMON --device cuda --precision bf16 --tf32 --out $W/x 2>'$W/err' && [ \$(wc -l < '$W/err') -eq 1 ] && grep -q 'tf32' '$W/err'"

# two emulated GPU ranks against one emulated GPU
if command -v mpirun >/dev/null 2>&1 && ldd "$EMU/gkd" | grep -q libmpi; then
  MPI="mpirun -q --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1"
  flags="distill --teacher $W/t.bin --student $W/s.bin --lambda 0 --beta 0.5 --device cuda $FP32"
  OMP_NUM_THREADS=1 $EMU/gkd $flags $COMMON --batch 5 --out "$W/one" 2>"$W/err" || cat "$W/err"
  $MPI -np 2 $EMU/gkd $flags $COMMON --batch 5 --out "$W/two" 2>"$W/err" || cat "$W/err"
  check "2 emulated GPU ranks (the all-reduce over MPI) match 1: $(compare "$W/two" "$W/one" 1e-5 2>&1 | tail -1)" \
        "compare '$W/two' '$W/one' 1e-5 >/dev/null 2>&1"
else
  bad "2 emulated GPU ranks: not run (no mpirun, or the emulated gkd was built without MPI)"
fi
echo "gpu emulated: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
