#!/usr/bin/env bash
# gpu_check.sh — the whole validation of the CUDA path, in one command that fits in five
# minutes on a GPU machine (one H100 or H200 and 16 cores: the device tool's), most
# important first. Each stage runs under its own `timeout` and writes its log under
# build/gpu-check as it goes; after every stage (and at exit, a failure or a timeout
# included) every log and the summary are packed into one archive, $OUT/gpu-check-logs.tar.gz,
# with no model file in it. $OUT then holds two files: summary.txt and that archive, which
# is what a borrowed machine can bring back (a handful of small files).
#   preflight  10 s: the headers the build needs (carried?), nvcc, cuBLAS and NCCL where
#              gkd and make look for them, mpirun, compute-sanitizer, the Python packages
#              the hf and pytorch stages need; nothing here fails the check, it says what
#              the later stages will find
#   gpu        nvidia-smi: the card, its compute capability, driver, memory
#   build      ./gkd and tests/test_gpu in parallel, for the GPU found (or GPU_ARCH=sm_90)
#   test-gpu   CUDA_LAUNCH_BLOCKING=1 GKD_REQUIRE_GPU=1 tests/test_gpu: every kernel against
#              the CPU path, the fused loss, full steps, sampling, and GPT-2's widths (C 768,
#              head size 64, V 50257, ~130 positions); no usable GPU is a failure
#   bench-*    ./gkd bench --device cuda: GPT-2 (124M-shaped student, 355M-shaped teacher,
#              B 8, 128 + 128 tokens) in bf16 (--precision bf16, the default from sm_80)
#              and in fp32 with TF32 matmuls, then the reference configuration in bf16: step
#              times, MFU (each against its own peak), and the memory table beside what ran;
#              test-gpu's bf16 lines give the bf16 run's agreement with fp32
#   e2e        speculative sampling on the GPU against the CPU through the command line; a
#              1-rank NCCL run against a plain one where OpenMPI is installed
#   hf         tests/hf_parity.py: random Hugging Face GPT2LMHeadModels loaded by gkd; NLL,
#              TRL's generalized JSD for beta 0, 0.5, 1, and one step's loss (needs transformers)
#   bench-gpt2-tf32-graphs  the same bench with decode steps replayed as CUDA graphs
#              (GKD_CUDA_GRAPHS=1), only if time remains
#   pytorch    one PyTorch eager round on the GPT-2 shape (TF32), only if time remains
#   memcheck   compute-sanitizer --tool memcheck on tests/test_gpu's small tests, only if
#              time remains
# The summary ($OUT/summary.txt, also printed) has one line per stage and the figures.
# Exit status 0 only when every stage that ran passed and test-gpu ran.
#   BUDGET_S (280): seconds for the whole check, so that it ends within five minutes with
#   the machine's start outside it; an optional stage (hf, e2e, bench-gpt2-fp32, graphs,
#   pytorch, memcheck, in that order) starts only if its limit fits in what is left. The
#   others always run, each under its own timeout: preflight, gpu, build, test-gpu, the
#   GPT-2 bf16 and TF32 benches and the reference bench, expected near 220 s on one H100
#   (not yet measured: no GPU has run this version), 530 s if every one of them timed out.
#   QUICK=1: preflight, gpu, build, test-gpu and the reference bench only.
#
# On a machine without nlohmann/json (a GPU image with no Debian packages) it refuses at
# once: run `make dev-headers` where the header is installed, and carry build/include.
set -uo pipefail
cd "$(dirname "$0")/.."
out=build/gpu-check              # every stage's log, and the models the stages make
back="${OUT:-$out}"              # what comes back: summary.txt and gpu-check-logs.tar.gz
mkdir -p "$out" "$back"
budget=${BUDGET_S:-280}
t0=$SECONDS
status=0
say() { echo "$*" | tee -a "$out/summary.txt"; }
left() { echo $((budget - (SECONDS - t0))); }
: > "$out/summary.txt"
rm -f "$out"/*.log
# the logs (never a model: *.bin, *.safetensors stay behind) into one archive beside the summary
pack() {
  (cd "$out" && find . -name '*.log' -o -name 'summary.txt' -o -name '*.jsonl' -size -1M | sort |
     tar czf "$back/gpu-check-logs.tar.gz.part" -T - 2>/dev/null) &&
    mv "$back/gpu-check-logs.tar.gz.part" "$back/gpu-check-logs.tar.gz"
  [ "$back" != "$out" ] && cp "$out/summary.txt" "$back/summary.txt"
  return 0
}
trap pack EXIT

# stage NAME LIMIT CMD...: runs CMD under `timeout LIMIT`, its output in $out/NAME.log; a
# summary line with the verdict and the seconds (and the log's tail when it failed)
stage() {
  local name=$1 limit=$2; shift 2
  local s=$SECONDS rc
  timeout --kill-after=5 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  pack
  if [ $rc -eq 0 ]; then say "stage $name: ok in $((SECONDS - s)) s"; return 0; fi
  status=1
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then say "stage $name: FAIL: timed out after $limit s (log: $out/$name.log)"
  else say "stage $name: FAIL: exit $rc in $((SECONDS - s)) s (log: $out/$name.log)"; fi
  tail -3 "$out/$name.log" | sed 's/^/    /' | tee -a "$out/summary.txt"
  return $rc
}
# optional NAME LIMIT CMD...: a stage that runs only when its whole limit fits in what is
# left; a skip is no failure (exit 3, which the callers read as "no figures")
optional() {
  local name=$1 limit=$2
  if [ "$(left)" -lt "$limit" ]; then say "stage $name: skipped ($(left) s left, it needs $limit)"; return 3; fi
  stage "$@"
}

# what the later stages will find on this machine, in one look (no stage fails here)
preflight() {
  local found
  for h in nlohmann/json.hpp; do
    if [ -f "/usr/include/$h" ]; then echo "header $h: /usr/include"
    elif [ -f "build/include/$h" ]; then echo "header $h: build/include (carried)"
    else echo "header $h: MISSING (make dev-headers where it is installed, and carry build/include)"; fi
  done
  found=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null); echo "nvcc: ${found:-MISSING}"
  [ -n "$found" ] && "$found" --version | tail -2 | head -1
  for lib in libcublas.so libnccl.so; do
    found=$( { ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 ~ "^"l {print $NF}';
               for d in ${LD_LIBRARY_PATH//:/ } /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib \
                        /usr/lib/x86_64-linux-gnu /usr/local/lib/python3*/*-packages/nvidia/*/lib \
                        /usr/lib/python3*/*-packages/nvidia/*/lib; do ls "$d/$lib"* 2>/dev/null; done; } | head -1)
    echo "$lib: ${found:-not found (the loader's cache, LD_LIBRARY_PATH, the CUDA toolkit, Python's nvidia/*/lib)}"
  done
  for tool in mpirun compute-sanitizer nsys python3; do
    found=$(command -v $tool || ls /usr/local/cuda/bin/$tool 2>/dev/null); echo "$tool: ${found:-not found}"
  done
  for py in torch transformers numpy; do
    python3 -c "import $py; print('python $py', $py.__version__)" 2>/dev/null || echo "python $py: missing"
  done
  return 0
}
stage preflight 10 bash -c "$(declare -f preflight); preflight"
sed 's/^/  /' "$out/preflight.log" | tee -a "$out/summary.txt"

if [ ! -f /usr/include/nlohmann/json.hpp ] && [ ! -f build/include/nlohmann/json.hpp ]; then
  say "refused: nlohmann/json is missing here. Run \`make dev-headers\` on a machine that has it (apt-get install nlohmann-json3-dev) and bring build/include along (the device tool: carry build/include)."
  exit 2
fi
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { say "refused: no nvcc (the CUDA toolkit) on this machine"; exit 2; }

stage gpu 20 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv,noheader &&
  tee -a "$out/summary.txt" < "$out/gpu.log"
# make picks the arch from nvidia-smi (GPU_ARCH overrides); -j2 compiles the two at once
stage build 200 make -j2 gkd tests/test_gpu || { say "== stopped: nothing to test without a build"; exit 1; }
grep -E '^gkd:' "$out/build.log" | tee -a "$out/summary.txt"
stage test-gpu 150 env CUDA_LAUNCH_BLOCKING=1 GKD_REQUIRE_GPU=1 ./tests/test_gpu
grep -E '^test-gpu on|^test-gpu: |^FAIL|bf16 (greedy|[0-9]+-step)|memory table' "$out/test-gpu.log" | tee -a "$out/summary.txt"
grep -E '^[0-9]+ passed, [0-9]+ failed' "$out/test-gpu.log" | tail -1 | sed 's/^/test-gpu: /' | tee -a "$out/summary.txt"
grep -q '^[0-9]* passed, 0 failed' "$out/test-gpu.log" || status=1

reference=(--student 2,128,4 --teacher 4,256,4 --vocab byte --context 128 --batch 32 --prompt-tokens 32 --new-tokens 64)
gpt2=(--student 12,768,12 --teacher 24,1024,16 --vocab 50257 --context 1024 --batch 8 --prompt-tokens 128 --new-tokens 128)
bench() {  # name, limit, flags...
  local name=$1 limit=$2; shift 2
  if stage "bench-$name" "$limit" ./gkd bench --device cuda --steps 3 --warmup 1 "$@"; then
    grep -E '^gkd bench|^\| (step|sample|teacher|student|loss|AdamW|total)|^peak device memory|^this run' \
        "$out/bench-$name.log" | tee -a "$out/summary.txt"
  fi
}
[ -z "${QUICK:-}" ] && bench gpt2-bf16 60 --precision bf16 "${gpt2[@]}"
[ -z "${QUICK:-}" ] && bench gpt2-tf32 60 --precision fp32 --tf32 "${gpt2[@]}"
bench reference 30 --precision bf16 "${reference[@]}"
[ -n "${QUICK:-}" ] && { say "== done (QUICK): status $status in $((SECONDS - t0)) s; logs in $out, packed in $back/gpu-check-logs.tar.gz"; exit $status; }

# end to end through the command line: speculative greedy sampling on the GPU gives the
# CPU's output; with OpenMPI on the machine, a 1-rank NCCL run matches the plain GPU run
e2e() {
  local e=$out/e2e status=0
  mkdir -p "$e"
  ./gkd init --layers 2 --channels 64 --heads 4 --context 64 --seed 1 --out "$e/s.bin" 2>/dev/null
  ./gkd init --layers 2 --channels 128 --heads 4 --context 64 --seed 2 --out "$e/t.bin" 2>/dev/null
  ./gkd data --task arithmetic --out "$e/data" --train 64 --validation 16 --test 16 2>/dev/null
  for d in cpu cuda; do
    ./gkd sample --device $d --precision fp32 --model "$e/t.bin" --draft "$e/s.bin" --draft-tokens 4 --temperature 0 \
        --data "$e/data/test.jsonl" --max-new-tokens 24 > "$e/spec-$d.jsonl" 2> "$e/spec-$d.log"
  done
  # random models' logits are close together, so an argmax may hinge on rounding: one row of 16 may differ
  local same
  same=$(paste -d'\n' "$e/spec-cpu.jsonl" "$e/spec-cuda.jsonl" | paste - - | awk -F'\t' '$1 == $2' | wc -l)
  if [ "$same" -ge 15 ]; then echo "ok: speculative sampling, GPU against CPU: $same of 16 rows identical"
  else status=1; echo "FAIL: speculative sampling: $same of 16 rows identical to the CPU's"; fi
  if command -v mpirun >/dev/null && ldd ./gkd | grep -q libnccl; then
    local run=(distill --device cuda --teacher "$e/t.bin" --student "$e/s.bin" --data "$e/data/train.jsonl" --lambda 1
               --steps 10 --batch 8 --max-new-tokens 16 --quiet --overwrite)
    ./gkd "${run[@]}" --out "$e/plain" 2> "$e/plain.log"
    mpirun --allow-run-as-root -np 1 ./gkd "${run[@]}" --out "$e/nccl" 2> "$e/nccl.log"
    if cmp -s "$e/plain/model.bin" "$e/nccl/model.bin"; then echo "ok: NCCL over one GPU: identical model.bin after 10 steps"
    else status=1; echo "FAIL: the NCCL run differs from the plain one"; fi
  else
    echo "not run: NCCL (no mpirun, or ./gkd built without MPI and NCCL)"
  fi
  return $status
}
optional hf 90 python3 tests/hf_parity.py --device cuda --gkd ./gkd --work "$out/hf"
[ -f "$out/hf.log" ] && grep -E '^(ok  |FAIL|hf_parity)' "$out/hf.log" | tee -a "$out/summary.txt"
optional e2e 60 bash -c "$(declare -f e2e); out='$out'; e2e"
[ -f "$out/e2e.log" ] && grep -E '^(ok|FAIL|not run):' "$out/e2e.log" | tee -a "$out/summary.txt"
if optional bench-gpt2-fp32 60 ./gkd bench --device cuda --steps 3 --warmup 1 --precision fp32 "${gpt2[@]}"; then
  grep -E '^\| (step|sample|teacher|student|loss|AdamW)|^peak device memory' "$out/bench-gpt2-fp32.log" | tee -a "$out/summary.txt"
fi
# decode steps replayed as CUDA graphs (GKD_CUDA_GRAPHS=1, off by default): the sample phase against bench-gpt2-tf32's
if optional bench-gpt2-tf32-graphs 45 env GKD_CUDA_GRAPHS=1 ./gkd bench --device cuda --steps 3 --warmup 1 --precision fp32 --tf32 "${gpt2[@]}"; then
  grep -E '^\| (step|sample)' "$out/bench-gpt2-tf32-graphs.log" | tee -a "$out/summary.txt"
fi
if optional pytorch 100 env DEVICE=cuda STEPS=3 dev/compare_pytorch.sh "$(nproc)" 1 --tf32 "${gpt2[@]}"; then
  grep -E '^\| whole step|^gkd:|^on-policy' "$out/pytorch.log" | tee -a "$out/summary.txt"
fi
# memcheck is 10-100x slower: the small tests only (GKD_GPU_TEST_SKIP leaves out GPT-2's widths)
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  optional memcheck 60 env GKD_REQUIRE_GPU=1 GKD_GPU_TEST_SKIP="GPT-2 width" \
      "$sanitizer" --tool memcheck --error-exitcode 1 ./tests/test_gpu
else
  say "stage memcheck: not run (no compute-sanitizer)"
fi
[ -f "$out/memcheck.log" ] && grep -E 'ERROR SUMMARY|^[0-9]+ passed' "$out/memcheck.log" | tail -2 | tee -a "$out/summary.txt"
say "== done: status $status in $((SECONDS - t0)) s; logs in $out, packed in $back/gpu-check-logs.tar.gz"
exit $status
