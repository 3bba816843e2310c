#!/usr/bin/env bash
# Compares ./gkd distill (and sft) per-step losses with the float64 PyTorch reference
# (dev/reference_gkd.py) over beta in {0,0.1,0.5,0.9,1} x tau in {0.5,1,2} x {sequence,token}.
# Pass: step-0 relative error < 1e-4 and every step < 2e-3. Exit status 1 on any failure.
#
# Environment:
#   GKD=./gkd           binary under test
#   PY=/usr/bin/python3 python with torch
#   GKD_FLAGS=""        extra flags for every gkd run (e.g. "--device cpu")
#   INIT=ref|gkd        who writes the random checkpoints (ref: rich random weights from the
#                       reference; gkd: ./gkd init, GPT-2 initialisation)
#   KEEP=1              keep the work directory (printed)
#   SFT=1               also compare ./gkd sft against the reference's --sft (default 1)
set -u
cd "$(dirname "$0")/.."
GKD=${GKD:-./gkd}
PY=${PY:-/usr/bin/python3}
GKD_FLAGS=${GKD_FLAGS:-}
INIT=${INIT:-ref}
SFT=${SFT:-1}
STEPS=5
BATCH=4
LR=1e-3

if [ ! -x "$GKD" ]; then
  echo "compare_with_reference: no executable $GKD (build it first)" >&2
  exit 2
fi
WORK=$(mktemp -d /tmp/gkd_compare.XXXXXX)
if [ "${KEEP:-0}" = 1 ]; then echo "work dir: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

# --- checkpoints
if [ "$INIT" = gkd ]; then
  "$GKD" init --layers 2 --channels 32 --heads 4 --context 64 --vocab byte --seed 11 --out "$WORK/teacher.bin" || exit 1
  "$GKD" init --layers 1 --channels 16 --heads 2 --context 64 --vocab byte --seed 22 --out "$WORK/student.bin" || exit 1
else
  "$PY" dev/reference_gkd.py --init "$WORK/teacher.bin" --layers 2 --channels 32 --heads 4 --context 64 --seed 11 || exit 1
  "$PY" dev/reference_gkd.py --init "$WORK/student.bin" --layers 1 --channels 16 --heads 2 --context 64 --seed 22 || exit 1
fi

# --- data: 12 examples, varied lengths, UTF-8, an empty completion, a row exactly filling the
# context (prompt+completion = 64), one pre-tokenized line; batch 4 x 5 steps wraps around.
"$PY" - "$WORK/data.jsonl" <<'EOF'
import json, random, sys
rng = random.Random(5)
alpha = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ.,!?0123456789\u00e9\u00fc\u2192\u4e2d"
def text(nbytes):
    s = ""
    while len((s + "x").encode()) <= nbytes:
        s += rng.choice(alpha)
        while len(s.encode()) > nbytes:
            s = s[:-1]
    return s
rows = []
for i in range(9):
    rows.append({"prompt": text(rng.randint(1, 20)), "completion": text(rng.randint(1, 30))})
rows.append({"prompt": "Empty completion:", "completion": ""})
rows.append({"prompt": "p" * 30, "completion": "c" * 34})
rows.append({"prompt_ids": [rng.randrange(256) for _ in range(5)],
             "completion_ids": [rng.randrange(256) for _ in range(7)]})
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
EOF
[ $? -eq 0 ] || exit 1

COMMON=(--data "$WORK/data.jsonl" --shuffle 0 --grad-clip 0 --steps $STEPS --batch $BATCH --lr $LR)
ARGS=()
n=0
for beta in 0 0.1 0.5 0.9 1; do
  for tau in 0.5 1 2; do
    for norm in sequence token; do
      run="d_b${beta}_t${tau}_${norm}"
      D="$WORK/$run"; mkdir -p "$D"
      FLAGS=(--teacher "$WORK/teacher.bin" --student "$WORK/student.bin" "${COMMON[@]}"
             --lambda 0 --beta $beta --loss-temperature $tau --loss-norm $norm)
      # shellcheck disable=SC2086
      if ! "$GKD" distill "${FLAGS[@]}" --out "$D/out" $GKD_FLAGS >"$D/gkd.log" 2>&1; then
        echo "gkd distill failed for $run:"; tail -n 5 "$D/gkd.log"
      fi
      "$PY" dev/reference_gkd.py "${FLAGS[@]}" >"$D/ref.jsonl" 2>"$D/ref.log" || { echo "reference failed for $run"; cat "$D/ref.log"; }
      ARGS+=("beta=$beta tau=$tau $norm" "$D/out/metrics.jsonl" "$D/ref.jsonl")
      n=$((n + 1))
    done
  done
done

if [ "$SFT" = 1 ]; then
  for norm in sequence token; do
    run="sft_${norm}"
    D="$WORK/$run"; mkdir -p "$D"
    FLAGS=(--model "$WORK/student.bin" "${COMMON[@]}" --loss-norm $norm)
    # shellcheck disable=SC2086
    if ! "$GKD" sft "${FLAGS[@]}" --out "$D/out" $GKD_FLAGS >"$D/gkd.log" 2>&1; then
      echo "gkd sft failed for $run:"; tail -n 5 "$D/gkd.log"
    fi
    "$PY" dev/reference_gkd.py --sft "${FLAGS[@]}" >"$D/ref.jsonl" 2>"$D/ref.log" || { echo "reference failed for $run"; cat "$D/ref.log"; }
    ARGS+=("sft $norm" "$D/out/metrics.jsonl" "$D/ref.jsonl")
  done
fi

"$PY" dev/compare_losses.py --tol0 1e-4 --tol 2e-3 "${ARGS[@]}"
