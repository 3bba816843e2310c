#!/usr/bin/env bash
# dev/same_bits.sh — does a change keep every bit? Runs one battery of commands with two
# builds of gkd and compares what they wrote, byte for byte.
#
#   bash dev/same_bits.sh OLD_GKD NEW_GKD [WORK]
#
# Build OLD_GKD from the commit before the change (git worktree add ../before HEAD~1 &&
# make -C ../before gkd), NEW_GKD from the change. The battery, at 1 and at 2 OpenMP
# threads: a teacher trained with SFT, then distill on-policy (JSD(0.5)), supervised
# (forward KL, token normalisation, cosine schedule with warmup), mixed lambda 0.5 (reverse
# KL), SeqKD, total variation, top-K + tail, the sampled-token reverse KL with a discount,
# RL + GKD with 2 samples a prompt, a teacher cache and a run from it, a run evaluated on
# held-out data every 5 steps, and a run killed in a checkpoint write and resumed; then greedy,
# sampled and speculative sampling and gkd eval with a teacher, samples and drafts.
# With DEVICE=auto (or cuda), distill, sft, sample and eval get --device DEVICE: with the
# emulated builds (make build/emulator/gkd) that runs the CUDA path's kernels where it has
# them. Compared: every model.bin, every metrics.jsonl without its wall-clock fields, the
# cache, and what sample and eval print. The last line is "same bits: N of N identical";
# the exit status is 1 when any differ.
#
# This is how a move that should change nothing is checked (CONTRIBUTING.md), together
# with the default experiment's table (./gkd with both builds, runs/default/*/results.md
# without the training-time column).
set -u
old=${1:?usage: dev/same_bits.sh OLD_GKD NEW_GKD [WORK]}
new=${2:?usage: dev/same_bits.sh OLD_GKD NEW_GKD [WORK]}
work=${3:-$(mktemp -d)}
old=$(realpath "$old"); new=$(realpath "$new")

battery() {  # battery GKD DIR: every command of the battery, its outputs under DIR
  local G=$1 D=$2 on=${DEVICE:+--device $DEVICE}
  rm -rf "$D"; mkdir -p "$D"
  (
    cd "$D" || exit 1
    set -e
    $G init --layers 2 --channels 64 --heads 4 --context 64 --seed 1 --out teacher0.bin
    $G init --layers 1 --channels 32 --heads 2 --context 64 --seed 2 --out student.bin
    $G data --task arithmetic --seed 3 --out data --train 96 --validation 16 --test 16
    local Q="--quiet --batch 8 $on"
    $G sft --model teacher0.bin --data data/train.jsonl --out teacher --steps 30 --lr 3e-3 $Q
    local T="--teacher teacher/model.bin --student student.bin --data data/train.jsonl --steps 10 --lr 3e-3 $Q"
    $G distill $T --out on-policy --lambda 1 --beta 0.5 --max-new-tokens 12
    $G distill $T --out supervised --lambda 0 --beta 0 --loss-norm token --lr-schedule cosine --warmup 3
    $G distill $T --out mixed --lambda 0.5 --beta 1 --max-new-tokens 12 --seed 7
    $G sft --model student.bin --teacher teacher/model.bin --seq-kd --data data/train.jsonl --steps 10 --lr 3e-3 \
        --max-new-tokens 12 --out seqkd $Q
    $G distill $T --out tv --lambda 0.5 --objective tv --max-new-tokens 12
    $G distill $T --out top-k --lambda 0.5 --teacher-top-k 8 --beta 0.9 --max-new-tokens 12
    $G distill $T --out sampled-rkl --lambda 1 --objective sampled-reverse-kl --kl-discount 0.9 --max-new-tokens 12
    $G distill $T --out rl --lambda 1 --alpha 0.5 --reward arithmetic --samples-per-prompt 2 --max-new-tokens 12
    $G teacher-cache --teacher teacher/model.bin --data data/train.jsonl --top-k 16 --out cache.bin --quiet
    $G distill --student student.bin --data data/train.jsonl --steps 10 --lr 3e-3 $Q --out cached --lambda 0 \
        --teacher-cache cache.bin
    $G distill $T --out evaluated --lambda 0.5 --eval-data data/validation.jsonl --eval-every 5 --task arithmetic \
        --max-new-tokens 12
    # killed while writing its second checkpoint, then resumed from the first
    (GKD_FAULT=kill-in-checkpoint-write:6 exec $G distill $T --out resumed --lambda 0.5 --max-new-tokens 12 \
        --checkpoint-every 3) 2>/dev/null || true
    $G distill --resume resumed --quiet $on
    $G sample $on --model on-policy/model.bin --data data/test.jsonl --temperature 0 --max-new-tokens 12 > sample-greedy.jsonl
    $G sample $on --model on-policy/model.bin --data data/test.jsonl --temperature 1 --num-samples 2 --max-new-tokens 12 \
        > sample-t1.jsonl
    $G sample $on --model teacher/model.bin --draft on-policy/model.bin --data data/test.jsonl --temperature 1 \
        --draft-tokens 3 --baseline 0 --max-new-tokens 12 > sample-speculative.jsonl 2>/dev/null
    $G eval $on --model on-policy/model.bin --teacher teacher/model.bin --data data/test.jsonl --task arithmetic \
        --sample-temperature 1 --samples-per-example 2 --draft-tokens 2 --max-new-tokens 12 > eval.json 2>/dev/null
    # the wall-clock fields are the only ones allowed to differ
    for m in */metrics.jsonl; do
      sed -E 's/"(step_ms|sample_ms)":[^,}]*,?//g' "$m" > "${m%.jsonl}.bits"
    done
  ) > "$D.log" 2>&1 || { echo "the battery failed with $G (see $D.log)"; tail -5 "$D.log"; return 1; }
}

same=0 total=0
for threads in 1 2; do
  export OMP_NUM_THREADS=$threads
  battery "$old" "$work/old-$threads" || exit 1
  battery "$new" "$work/new-$threads" || exit 1
  while read -r f; do
    total=$((total + 1))
    if cmp -s "$work/old-$threads/$f" "$work/new-$threads/$f"; then same=$((same + 1))
    else echo "differs ($threads threads): $f"; fi
  done < <(cd "$work/old-$threads" && find . \( -name model.bin -o -name '*.bits' -o -name 'sample-*.jsonl' \
             -o -name eval.json -o -name cache.bin \) | sort)
done
echo "same bits: $same of $total identical"
[ "$same" -eq "$total" ] && [ "$total" -gt 0 ]
