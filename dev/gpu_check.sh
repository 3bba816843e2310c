#!/usr/bin/env bash
# gpu_check.sh — the whole validation of the CUDA path, in one command on a GPU machine:
#   1. builds ./gkd and tests/test_gpu for the GPU that nvidia-smi reports;
#   2. runs tests/test_gpu (make test-gpu): every kernel against the CPU path, the fused
#      loss, a full GKD step, a 20-step trajectory, greedy sampling token for token,
#      speculative sampling; then, through the command line, speculative sampling on the
#      GPU against the CPU and (with OpenMPI there) a 1-rank NCCL run against a plain one;
#   3. times ./gkd bench --device cuda on the reference configuration and on the GPT-2
#      configuration (124M-shaped student, 355M-shaped teacher, B=8, 128 + 128 tokens),
#      fp32 (the parity mode) and TF32;
#   4. times the same step in PyTorch eager on the same GPU (dev/compare_pytorch.sh) and
#      prints the ratio measured in the same run.
# Logs and tables go to $OUT (the device tool's folder) or build/gpu-check/; the summary
# is printed last. QUICK=1 skips the GPT-2 configuration and TF32.
#
# Where the machine lacks nlohmann/json (a GPU image with no Debian packages), run
# `make dev-headers` here first: it copies the header into build/include/, which the
# Makefile then uses; carry build/include with the call.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-build/gpu-check}"
mkdir -p "$out"
status=0
echo "== GPU" | tee "$out/summary.txt"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$out/summary.txt"

echo "== build" | tee -a "$out/summary.txt"
if ! make -j"$(nproc)" gkd tests/test_gpu > "$out/build.log" 2>&1; then
  tail -30 "$out/build.log"; echo "build failed: $out/build.log"; exit 1
fi
grep -E '^gkd:' "$out/build.log" | tee -a "$out/summary.txt"

echo "== make test-gpu" | tee -a "$out/summary.txt"
# GKD_REQUIRE_GPU=1: no usable GPU fails; CUDA_LAUNCH_BLOCKING=1: a fault names its launch
CUDA_LAUNCH_BLOCKING=1 GKD_REQUIRE_GPU=1 ./tests/test_gpu > "$out/test_gpu.log" 2>&1 || status=1
grep -E '^FAIL' "$out/test_gpu.log" | tee -a "$out/summary.txt"
tail -1 "$out/test_gpu.log" | tee -a "$out/summary.txt"

# end to end through the command line: speculative greedy sampling on the GPU gives the CPU's
# output; with OpenMPI on the machine, a 1-rank NCCL run (mpirun -np 1) matches the plain GPU run
e2e="$out/e2e"; mkdir -p "$e2e"
./gkd init --layers 2 --channels 64 --heads 4 --context 64 --seed 1 --out "$e2e/s.bin" 2>/dev/null
./gkd init --layers 2 --channels 128 --heads 4 --context 64 --seed 2 --out "$e2e/t.bin" 2>/dev/null
./gkd data --task arithmetic --out "$e2e/data" --train 64 --validation 16 --test 16 2>/dev/null
echo "== speculative sampling, GPU against CPU (greedy, K = 4)" | tee -a "$out/summary.txt"
for d in cpu cuda; do
  ./gkd sample --device $d --model "$e2e/t.bin" --draft "$e2e/s.bin" --draft-tokens 4 --temperature 0 \
      --data "$e2e/data/test.jsonl" --max-new-tokens 24 > "$e2e/spec-$d.jsonl" 2> "$e2e/spec-$d.log"
done
# random models' logits are close together, so an argmax may hinge on rounding: allow one row of 16
same=$(paste -d'\n' "$e2e/spec-cpu.jsonl" "$e2e/spec-cuda.jsonl" | paste - - | awk -F'\t' '$1 == $2' | wc -l)
if [ "$same" -ge 15 ]; then
  echo "ok: $same of 16 rows identical; $(tail -1 "$e2e/spec-cuda.log")" | tee -a "$out/summary.txt"
else
  status=1; echo "FAIL: $same of 16 rows identical to the CPU's ($e2e)" | tee -a "$out/summary.txt"
fi
echo "== data parallel: NCCL over one GPU (mpirun -np 1) against the plain GPU run" | tee -a "$out/summary.txt"
if command -v mpirun >/dev/null && ldd ./gkd | grep -q libnccl; then
  run=(distill --device cuda --teacher "$e2e/t.bin" --student "$e2e/s.bin" --data "$e2e/data/train.jsonl" --lambda 1
       --steps 10 --batch 8 --max-new-tokens 16 --quiet --overwrite)
  ./gkd "${run[@]}" --out "$e2e/plain" 2> "$e2e/plain.log"
  mpirun --allow-run-as-root -np 1 ./gkd "${run[@]}" --out "$e2e/nccl" 2> "$e2e/nccl.log"
  if cmp -s "$e2e/plain/model.bin" "$e2e/nccl/model.bin"; then
    echo "ok: identical model.bin after 10 steps" | tee -a "$out/summary.txt"
  else
    status=1; echo "FAIL: the NCCL run differs ($e2e)" | tee -a "$out/summary.txt"
  fi
else
  echo "not run: no mpirun, or ./gkd built without MPI and NCCL (apt-get install libopenmpi-dev openmpi-bin)" | tee -a "$out/summary.txt"
fi

reference=(--student 2,128,4 --teacher 4,256,4 --vocab byte --context 128 --batch 32 --prompt-tokens 32 --new-tokens 64)
gpt2=(--student 12,768,12 --teacher 24,1024,16 --vocab 50257 --context 1024 --batch 8 --prompt-tokens 128 --new-tokens 128)
bench() {  # name, precision flag (or ""), shape flags...
  local name=$1 prec=$2; shift 2
  echo "== bench $name ${prec:-fp32}" | tee -a "$out/summary.txt"
  if ./gkd bench --device cuda $prec --steps 5 --warmup 1 "$@" > "$out/bench-$name${prec:+-tf32}.md" 2>&1; then
    grep -E '^\| (step|sample|teacher|student|loss|AdamW)' "$out/bench-$name${prec:+-tf32}.md" | tee -a "$out/summary.txt"
    grep -E '^peak device memory' "$out/bench-$name${prec:+-tf32}.md" | tee -a "$out/summary.txt"
  else
    status=1; tail -5 "$out/bench-$name${prec:+-tf32}.md" | tee -a "$out/summary.txt"
  fi
}
compare() {  # name, rounds, flags...
  local name=$1 rounds=$2; shift 2
  echo "== PyTorch comparison $name $*" | tee -a "$out/summary.txt"
  if DEVICE=cuda dev/compare_pytorch.sh "$(nproc)" "$rounds" "$@" > "$out/pytorch-$name.md" 2> "$out/pytorch-$name.log"; then
    grep -E '^\| whole step|^gkd:|^on-policy' "$out/pytorch-$name.md" | tee -a "$out/summary.txt"
  else
    status=1; tail -5 "$out/pytorch-$name.log" | tee -a "$out/summary.txt"
  fi
}
bench reference "" "${reference[@]}"
compare reference 3 "${reference[@]}"
if [ -z "${QUICK:-}" ]; then
  bench reference --tf32 "${reference[@]}"
  bench gpt2 "" "${gpt2[@]}"
  bench gpt2 --tf32 "${gpt2[@]}"
  compare gpt2 2 "${gpt2[@]}"
  compare gpt2-tf32 2 --tf32 "${gpt2[@]}"
fi
echo "== done: status $status; logs in $out" | tee -a "$out/summary.txt"
exit $status
