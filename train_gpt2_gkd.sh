#!/usr/bin/env bash
# train_gpt2_gkd.sh — the study: GKD against its baselines on the built-in tasks.
#
# For each task (arithmetic with worked steps, numbers to English words), one teacher is
# trained with SFT and cached; then, for each seed, a small student is warm-started with a
# short SFT and trained further by each method for the same number of steps:
#
#   sft               more SFT on the dataset's completions
#   seqkd             SFT on the teacher's samples (SeqKD)
#   supervised-kd     lambda 0, forward KL on the dataset's completions
#   mixed             lambda 0.5, forward KL (ImitKD-style mixing)
#   on-policy-fkl     lambda 1, forward KL
#   on-policy-rkl     lambda 1, reverse KL
#   on-policy-jsd0.1  lambda 1, JSD(0.1)   (and jsd0.5, jsd0.9)
#
# Every model is scored on the held-out test split, greedy and at sampling temperature 1.
#
# RL + GKD (the paper's section 5), on arithmetic from seed 0's warm-started student:
# maximise (1-alpha) E[reward] - alpha E[JSD(0.5)] on the student's samples (4 per
# prompt, per-prompt baseline), reward = the final answer is right, alpha in
# {1, 0.5, 0.1, 0}, learning rate 1e-4; rl.png plots the reward against the divergence
# to the teacher.
# Writes, under the results folder: study.md (the tables, mean ± std over seeds),
# accuracy.png (per method), curves.png (validation accuracy against steps), rl.png, and
# metrics/ (every run's raw metrics.jsonl and test evaluation).
#
#   ./train_gpt2_gkd.sh            the full study, 3 seeds        (results/)
#   ./train_gpt2_gkd.sh --quick    1 seed, shorter training       (results/quick/)
#   ./train_gpt2_gkd.sh --tiny     seconds, for the tests        (--out DIR required)
#   --out DIR  results folder; --runs DIR  run folder (default runs/study/MODE)
#
# Runs already finished are reused, so an interrupted study continues where it stopped.
# Needs ./gkd (make), python3 and gnuplot (apt-get install gnuplot-nox).
set -euo pipefail
cd "$(dirname "$0")"

MODE=full
OUT=""
RUNS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --tiny) MODE=tiny ;;
    --out) OUT=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "train_gpt2_gkd.sh: unknown flag $1 (see --help)" >&2; exit 1 ;;
  esac
  shift
done
case $MODE in
  full)  OUT=${OUT:-results}; SEEDS="0 1 2"; WARM=1000; STEPS=500; EVAL_EVERY=100; SIZES="" ;;
  quick) OUT=${OUT:-results/quick}; SEEDS="0"; WARM=600; STEPS=200; EVAL_EVERY=100; SIZES="" ;;
  tiny)  [ -n "$OUT" ] || { echo "train_gpt2_gkd.sh --tiny needs --out DIR" >&2; exit 1; }
         SEEDS="0 1"; WARM=3; STEPS=3; EVAL_EVERY=2; SIZES="--train 40 --validation 6 --test 6" ;;
esac
RUNS=${RUNS:-runs/study/$MODE}
GKD=${GKD:-./gkd}
command -v gnuplot >/dev/null || { echo "train_gpt2_gkd.sh: gnuplot is missing (apt-get install gnuplot-nox)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "train_gpt2_gkd.sh: python3 is missing" >&2; exit 1; }
[ -x "$GKD" ] || make gkd
# this script owns the folders under $RUNS: a rerun replaces an unfinished run in them

METHODS="sft seqkd supervised-kd mixed on-policy-fkl on-policy-rkl on-policy-jsd0.1 on-policy-jsd0.5 on-policy-jsd0.9"

# the shapes and steps of each task: the teacher near-perfect, the student clearly smaller
task_config() {
  case "$1" in
    arithmetic) CONTEXT=32; MAX_NEW=16; TEACHER_STEPS=1000 ;;
    words)      CONTEXT=64; MAX_NEW=48; TEACHER_STEPS=1000 ;;
  esac
  [ "$MODE" = quick ] && TEACHER_STEPS=700
  TEACHER_SHAPE="--layers 4 --channels 128 --heads 4"
  STUDENT_SHAPE="--layers 1 --channels 32 --heads 2"
  if [ "$MODE" = tiny ]; then
    TEACHER_STEPS=4
    TEACHER_SHAPE="--layers 1 --channels 16 --heads 2"
    STUDENT_SHAPE="--layers 1 --channels 8 --heads 2"
  fi
}

# common training flags (train_flags STEPS [BATCH]): batch, schedule, validation evaluation
train_flags() {
  echo "--data $DATA/train.jsonl --eval-data $DATA/validation.jsonl --eval-every $EVAL_EVERY --task $TASK" \
       "--batch ${2:-64} --warmup $(( $1 / 10 < 30 ? $1 / 10 : 30 )) --lr-schedule cosine --max-new-tokens $MAX_NEW --quiet"
}

method_flags() {
  case "$1" in
    sft)               echo "sft" ;;
    seqkd)             echo "sft --seq-kd --teacher $TEACHER" ;;
    supervised-kd)     echo "distill --teacher $TEACHER --lambda 0 --beta 0" ;;
    mixed)             echo "distill --teacher $TEACHER --lambda 0.5 --beta 0" ;;
    on-policy-fkl)     echo "distill --teacher $TEACHER --lambda 1 --beta 0" ;;
    on-policy-rkl)     echo "distill --teacher $TEACHER --lambda 1 --beta 1" ;;
    on-policy-jsd*)    echo "distill --teacher $TEACHER --lambda 1 --beta ${1#on-policy-jsd}" ;;
  esac
}

# evaluate MODEL OUT_JSON: held-out test accuracy, greedy and sampled at temperature 1
evaluate() {
  [ -s "$2" ] && return 0
  $GKD eval --model "$1" --data "$DATA/test.jsonl" --teacher "$TEACHER" --beta 0.5 --task "$TASK" \
       --sample-temperature 1 --max-new-tokens "$MAX_NEW" --batch 100 > "$2.tmp"
  mv "$2.tmp" "$2"
}

start=$(date +%s)
total_runs=0
for TASK in arithmetic words; do total_runs=$((total_runs + 1 + $(echo $SEEDS | wc -w) * (1 + $(echo $METHODS | wc -w)))); done
done_runs=0
progress() {
  done_runs=$((done_runs + 1))
  local elapsed=$(( $(date +%s) - start ))
  local eta=$(( elapsed * (total_runs - done_runs) / done_runs ))
  printf '[%d/%d] %-40s %4ds elapsed, ETA %dm%02ds\n' "$done_runs" "$total_runs" "$1" "$elapsed" $((eta / 60)) $((eta % 60)) >&2
}

# the teachers first, so that a teacher that fails to learn shows before the long part
for TASK in arithmetic words; do
  task_config "$TASK"
  DATA=$RUNS/$TASK/data
  [ -s "$DATA/test.jsonl" ] || $GKD data --task "$TASK" --seed 0 --out "$DATA" $SIZES 2>/dev/null
  TEACHER=$RUNS/$TASK/teacher/model.bin
  if [ ! -s "$TEACHER" ]; then
    mkdir -p "$RUNS/$TASK/teacher"
    $GKD init $TEACHER_SHAPE --context $CONTEXT --seed 100 --out "$RUNS/$TASK/teacher/init.bin" 2>/dev/null
    $GKD sft --model "$RUNS/$TASK/teacher/init.bin" --out "$RUNS/$TASK/teacher" --steps $TEACHER_STEPS --lr 3e-3 \
         --seed 100 --overwrite $(train_flags $TEACHER_STEPS)
  fi
  evaluate "$TEACHER" "$RUNS/$TASK/teacher/test.json"
  progress "$TASK teacher: $(grep -o '"accuracy":[0-9.]*' "$RUNS/$TASK/teacher/test.json" | head -1)"
done

for TASK in arithmetic words; do
  task_config "$TASK"
  DATA=$RUNS/$TASK/data
  TEACHER=$RUNS/$TASK/teacher/model.bin
  for SEED in $SEEDS; do
    S=$RUNS/$TASK/seed$SEED
    if [ ! -s "$S/warm-start/model.bin" ]; then
      mkdir -p "$S/warm-start"
      $GKD init $STUDENT_SHAPE --context $CONTEXT --seed $((200 + SEED)) --out "$S/warm-start/init.bin" 2>/dev/null
      $GKD sft --model "$S/warm-start/init.bin" --out "$S/warm-start" --steps $WARM --lr 3e-3 --seed $SEED --overwrite \
           $(train_flags $WARM)
    fi
    evaluate "$S/warm-start/model.bin" "$S/warm-start/test.json"
    progress "$TASK seed $SEED warm start"
    for M in $METHODS; do
      if [ ! -s "$S/$M/model.bin" ]; then
        set -- $(method_flags $M)
        cmd=$1; shift
        if [ "$cmd" = sft ]; then from="--model"; else from="--student"; fi
        rm -rf "$S/$M"
        $GKD $cmd "$@" $from "$S/warm-start/model.bin" --out "$S/$M" --steps $STEPS --lr 1e-3 --seed $SEED $(train_flags $STEPS)
      fi
      evaluate "$S/$M/model.bin" "$S/$M/test.json"
      progress "$TASK seed $SEED $M"
    done
  done
done

# RL + GKD: the reward/divergence trade-off, from the same SFT student
RL_ALPHAS="1 0.5 0.1 0"
RL_LR=1e-4  # REINFORCE's noisy gradient at the methods' 1e-3 wrecks the student first (measured)
TASK=arithmetic
task_config "$TASK"
DATA=$RUNS/$TASK/data
TEACHER=$RUNS/$TASK/teacher/model.bin
S=$RUNS/$TASK/seed0
for A in $RL_ALPHAS; do
  R=$S/rl-alpha$A
  if [ ! -s "$R/model.bin" ]; then
    rm -rf "$R"
    $GKD distill --teacher "$TEACHER" --student "$S/warm-start/model.bin" --out "$R" --lambda 1 --beta 0.5 \
         --alpha $A --reward arithmetic --samples-per-prompt 4 --steps $STEPS --lr $RL_LR --seed 0 $(train_flags $STEPS 16)
  fi
  evaluate "$R/model.bin" "$R/test.json"
  echo "[rl] alpha $A: $(grep -o '"accuracy":[0-9.]*' "$R/test.json" | head -1)" >&2
done

mkdir -p "$OUT"
python3 dev/study_report.py --rl-alphas "$RL_ALPHAS" --runs "$RUNS" --out "$OUT" --methods "$METHODS" --seeds "$SEEDS" --steps "$STEPS" \
        --seconds $(( $(date +%s) - start )) --mode "$MODE"
gnuplot "$OUT/plots.gp"
echo "wrote $OUT/study.md, $OUT/accuracy.png, $OUT/curves.png, $OUT/rl.png, $OUT/metrics/" >&2
