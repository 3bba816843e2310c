#!/usr/bin/env bash
# tests/mpi_test.sh — data parallelism over MPI ranks (distributed.h), on the CPU:
# - 2 ranks against 1 process with the same global batch (5 prompts: 2 + 3, an uneven split),
#   for SFT, supervised KD, on-policy GKD with both loss normalisations, RL + GKD with
#   the batch-mean baseline and with 4 samples per prompt (whole prompts per rank), and
#   batches by tokens (--batch-tokens: shares of equal tokens, whatever the rows): every
#   step's loss within 1e-5 relative, and the final models within 1e-5 (relative L2);
# - for a fixed number of ranks, two runs are bitwise identical;
# - a rank killed mid-run ends the job within seconds, the last checkpoint is intact, and
#   --resume reproduces the uninterrupted run (2 ranks: bit for bit; 1 process: to 1e-5);
# - bad input reaches the user as one line naming the rank, status 1; what several ranks
#   too few prompts for the ranks is refused; a build without MPI refuses an mpirun launch.
# Without mpirun or an MPI build of ./gkd it says so and checks nothing; GKD_REQUIRE_MPI=1
# (CI) makes that a failure. Prints "mpi: N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
GKD=${GKD:-./gkd}
export CUDA_VISIBLE_DEVICES=""
passed=0
failed=0
ok() { echo "ok    $1"; passed=$((passed + 1)); }
bad() { echo "FAIL  $1"; failed=$((failed + 1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

if ! command -v mpirun >/dev/null 2>&1 || ! ldd "$GKD" 2>/dev/null | grep -q libmpi; then
  echo "mpi: not run: $(command -v mpirun >/dev/null 2>&1 && echo "$GKD was built without MPI (make found no mpicxx)" \
                        || echo "no mpirun (apt-get install openmpi-bin libopenmpi-dev, then make)")"
  if [ "${GKD_REQUIRE_MPI:-0}" = 1 ]; then echo "mpi: 0 passed, 1 failed"; exit 1; fi
  echo "mpi: 0 passed, 0 failed"
  exit 0
fi
W=$(mktemp -d /tmp/gkd_mpi.XXXXXX)
trap 'rm -rf "$W"' EXIT
# root may run mpirun here (CI); a 2-core machine holds 2 ranks of 1 thread each; -q keeps
# OpenMPI's banners out of the way of gkd's own one-line errors
MPI="mpirun -q --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x CUDA_VISIBLE_DEVICES"
ranks() { local n=$1; shift; $MPI -np "$n" "$GKD" "$@"; }
export OMP_NUM_THREADS=1

$GKD init --layers 1 --channels 16 --heads 2 --context 48 --seed 1 --out "$W/student.bin" 2>/dev/null
$GKD init --layers 1 --channels 32 --heads 2 --context 48 --seed 2 --out "$W/teacher.bin" 2>/dev/null
$GKD data --task arithmetic --seed 0 --out "$W/data" --train 40 --validation 10 --test 10 2>/dev/null
COMMON="--data $W/data/train.jsonl --steps 20 --batch 5 --lr 3e-3 --max-new-tokens 12 --seed 3 --quiet"

# compare A B: metrics losses step by step and model.bin, within 1e-5 relative
compare() { python3 tests/compare_runs.py "$1" "$2" 1e-5 20; }

for case in "sft-sequence|sft --model $W/student.bin --loss-norm sequence" \
            "kd-token|distill --teacher $W/teacher.bin --student $W/student.bin --lambda 0 --beta 0 --loss-norm token" \
            "gkd-sequence|distill --teacher $W/teacher.bin --student $W/student.bin --lambda 1 --beta 0.5 --loss-norm sequence" \
            "gkd-token|distill --teacher $W/teacher.bin --student $W/student.bin --lambda 1 --beta 1 --loss-norm token" \
            "rl-batch-baseline|distill --teacher $W/teacher.bin --student $W/student.bin --lambda 1 --alpha 0.5 --reward arithmetic" \
            "rl-4-per-prompt|distill --teacher $W/teacher.bin --student $W/student.bin --lambda 1 --alpha 0.5 --reward arithmetic --samples-per-prompt 4" \
            "batch-tokens|distill --teacher $W/teacher.bin --student $W/student.bin --lambda 0.5 --beta 0.5 --batch-tokens 90"; do
  name=${case%%|*}; flags=${case#*|}
  $GKD $flags $COMMON --out "$W/$name-1" 2>"$W/err" || cat "$W/err"
  ranks 2 $flags $COMMON --out "$W/$name-2" 2>"$W/err" || cat "$W/err"
  check "$name: 2 ranks (whole prompts each) match 1 process: $(compare "$W/$name-1" "$W/$name-2" 2>&1 | tail -1)" \
        "compare '$W/$name-1' '$W/$name-2' >/dev/null 2>&1"
done
check "gkd-sequence: only the root wrote (metrics 20 lines, one model.bin)" \
      "[ \$(wc -l < '$W/gkd-sequence-2/metrics.jsonl') = 20 ] && [ -s '$W/gkd-sequence-2/model.bin' ]"

# for a fixed N, bitwise
ranks 2 distill --teacher "$W/teacher.bin" --student "$W/student.bin" --lambda 1 --beta 0.5 $COMMON \
  --out "$W/again" 2>/dev/null
check "2 ranks twice: identical losses and model.bin" \
      "cmp -s '$W/again/model.bin' '$W/gkd-sequence-2/model.bin' && \
       diff <(grep -o '\"loss\":[^,]*' '$W/again/metrics.jsonl') <(grep -o '\"loss\":[^,]*' '$W/gkd-sequence-2/metrics.jsonl') >/dev/null"

# a rank dies after step 12; the checkpoint of step 10 survives; --resume finishes the run
KILL="distill --teacher $W/teacher.bin --student $W/student.bin --lambda 1 --beta 0.5 $COMMON --checkpoint-every 5"
start=$(date +%s)
# (without -q: mpirun's report of the rank that died is what names it)
${MPI/ -q / } -np 2 -x GKD_FAULT=rank-dies:12 "$GKD" $KILL --out "$W/killed" >"$W/kill.log" 2>&1
rc=$?
took=$(( $(date +%s) - start ))
check "rank 1 killed at step 12: the job ends (status $rc) within 20 s ($took s)" "[ $rc -ne 0 ] && [ $took -le 20 ]"
check "... and says which rank died: $(grep -m1 -io 'rank 1[^.]*' "$W/kill.log")" "grep -qi 'rank 1' '$W/kill.log'"
check "... the checkpoint of step 10 is intact" "[ -s '$W/killed/checkpoint.bin' ]"
cp -r "$W/killed" "$W/killed1"
ranks 2 distill --resume "$W/killed" --quiet 2>"$W/err" || cat "$W/err"
check "--resume with 2 ranks: the uninterrupted run's losses and model, bit for bit" \
      "cmp -s '$W/killed/model.bin' '$W/gkd-sequence-2/model.bin' && \
       diff <(grep -o '\"loss\":[^,]*' '$W/killed/metrics.jsonl') <(grep -o '\"loss\":[^,]*' '$W/gkd-sequence-2/metrics.jsonl') >/dev/null"
$GKD distill --resume "$W/killed1" --quiet 2>"$W/err" || cat "$W/err"
check "--resume in 1 process: the same run to 1e-5 ($(compare "$W/killed1" "$W/gkd-sequence-2" 2>&1 | tail -1))" \
      "compare '$W/killed1' '$W/gkd-sequence-2' >/dev/null 2>&1"

# Ctrl-C on mpirun: it passes SIGTERM to the ranks, which agree to stop after the same step;
# rank 0 saves the checkpoint and says how to continue
${MPI/ -q / } -np 2 "$GKD" distill --teacher "$W/teacher.bin" --student "$W/student.bin" --lambda 1 --batch 4 \
  --data "$W/data/train.jsonl" --steps 1000000 --max-new-tokens 12 --quiet --out "$W/stopped" >"$W/stop.log" 2>&1 &
launcher=$!
sleep 3
kill -INT $launcher
wait $launcher
left=$(pgrep -f "$W/stopped" | wc -l)
check "Ctrl-C on mpirun: every rank stops, rank 0 saves the state ($(grep -o 'terminated (SIGTERM) after step [0-9]*' "$W/stop.log"))" \
      "grep -q 'continue with gkd distill --resume $W/stopped' '$W/stop.log' && [ -s '$W/stopped/checkpoint.bin' ] && [ $left = 0 ]"

# errors: one line naming the rank, status 1, nobody left waiting
printf '{"prompt": "1+1=", "completion": "2"}\n{"prompt": 5}\n' > "$W/bad.jsonl"
ranks 2 sft --model "$W/student.bin" --data "$W/bad.jsonl" --out "$W/never" >"$W/bad.log" 2>&1
rc=$?
check "bad data with 2 ranks: status $rc, one line naming the rank: $(grep 'gkd: error' "$W/bad.log" | head -1)" \
      "[ $rc -ne 0 ] && [ \$(grep -c 'gkd: error' '$W/bad.log') = 1 ] && grep -q 'gkd: error (rank 0 of 2): $W/bad.jsonl:2' '$W/bad.log'"
ranks 3 sft --model "$W/student.bin" --data "$W/data/train.jsonl" --batch 2 --steps 2 --out "$W/small" >"$W/small.log" 2>&1
check "a batch smaller than the ranks is refused: $(grep -m1 'gkd: error' "$W/small.log")" \
      "grep -q 'gives fewer prompts than the 3 ranks' '$W/small.log'"
if [ -x build/gkd-cpu ] && ! ldd build/gkd-cpu | grep -q libmpi; then
  $MPI -np 2 build/gkd-cpu sft --model "$W/student.bin" $COMMON --out "$W/nompi" >"$W/nompi.log" 2>&1
  check "a build without MPI refuses an mpirun launch: $(grep -m1 'gkd: error' "$W/nompi.log")" \
        "grep -q 'this build has no MPI' '$W/nompi.log' && [ ! -e '$W/nompi/model.bin' ]"
fi
echo "mpi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
