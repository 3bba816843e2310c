#!/usr/bin/env bash
# compare_llmc.sh — gkd's SFT step against llm.c's own CPU trainer (train_gpt2.c) on a
# 124M-shaped GPT-2 with random weights, B = 4, T = 64 (train_gpt2.c's own settings), the
# same thread count, in one run.
#
#   dev/compare_llmc.sh LLMC_CHECKOUT [THREADS] [ROUNDS]
# LLMC_CHECKOUT: a checkout of github.com/karpathy/llm.c (for example a git clone of the
# mirror the search tool's fetch brings). Nothing of it is committed here: this script
# copies train_gpt2.c to a temporary folder, changes only its loop (5 steps instead of 40,
# no validation passes and no text generation between steps, which are not timed anyway),
# builds it with -Ofast -march=native -fopenmp as its Makefile does, and gives it
# gkd's random 124M checkpoint (llm.c's format) and random tokens in its data format.
# Each round runs llm.c then gkd; the table gives medians over rounds of each one's
# median step.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
llmc="$(cd "${1:?usage: dev/compare_llmc.sh LLMC_CHECKOUT [THREADS] [ROUNDS]}" && pwd)"
threads=${2:-2}; rounds=${3:-3}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/dev/data/tinyshakespeare"
cp -r "$llmc/llmc" "$work/"
sed -e 's/step <= 40/step <= 5/' -e 's/if (step % 10 == 0)/if (0)/' -e 's/if (step > 0 \&\& step % 20 == 0)/if (0)/' \
    "$llmc/train_gpt2.c" > "$work/train_gpt2.c"
grep -q 'step <= 5' "$work/train_gpt2.c" || { echo "compare_llmc: train_gpt2.c's loop has changed; update the sed" >&2; exit 1; }
(cd "$work" && gcc -Ofast -march=native -fopenmp -DOMP train_gpt2.c -lm -o train_gpt2)
"$here/gkd" init --layers 12 --channels 768 --heads 12 --context 1024 --vocab 50257 --seed 1 --out "$work/gpt2_124M.bin" 2>/dev/null
python3 - "$work/dev/data/tinyshakespeare" <<'PY'
import random, struct, sys
rng = random.Random(0)
for split, n in (("train", 200000), ("val", 20000)):
    with open(f"{sys.argv[1]}/tiny_shakespeare_{split}.bin", "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
        f.write(struct.pack(f"<{n}H", *(rng.randrange(50256) for _ in range(n))))
PY
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
: > "$work/llmc.txt"; : > "$work/gkd.txt"
for r in $(seq "$rounds"); do
  (cd "$work" && OMP_NUM_THREADS=$threads ./train_gpt2) | grep -o 'took [0-9.]*' | tail -n +2 | awk '{print $2}' | median >> "$work/llmc.txt"
  OMP_NUM_THREADS=$threads "$here/gkd" bench --sft --json --student 12,768,12 --vocab 50257 --context 1024 --batch 4 \
      --prompt-tokens 1 --new-tokens 63 --steps 5 | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])' >> "$work/gkd.txt"
  echo "round $r of $rounds: llm.c $(tail -1 "$work/llmc.txt") ms, gkd $(tail -1 "$work/gkd.txt") ms" >&2
done
l=$(median < "$work/llmc.txt"); g=$(median < "$work/gkd.txt")
echo "SFT step, 124M-shaped GPT-2 (random weights), B=4, T=64, $threads threads, median of $rounds rounds x 5 steps"
echo
echo "| trainer | ms/step | llm.c / gkd |"
echo "|---|---:|---:|"
printf '| llm.c train_gpt2.c (-Ofast -march=native -fopenmp) | %.0f | 1.0x |\n' "$l"
printf '| gkd sft | %.0f | %.1fx |\n' "$g" "$(echo "$l / $g" | bc -l)"
