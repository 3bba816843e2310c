#!/usr/bin/env bash
# insert_results.sh — copies generated results into the pages that show them, between
# markers, so that no table in README.md or docs/ is edited by hand:
#
#   <!-- begin NAME: generated, see dev/insert_results.sh -->
#   ...
#   <!-- end NAME -->
#
# NAME and its source:
#   default-experiment   runs/default/repair/results.md  (./gkd)
#   default-experiment-headline   the same file's first table and its verdicts (README.md)
#   study-data-seeds     results/study.md's "Across data seeds" table and verdicts (./train_gpt2_gkd.sh)
#   speculative          results/speculative.md           (dev/speculative_table.sh)
#   perf-NAME            results/performance/NAME.md      (dev/measure_performance.sh)
# A source that does not exist leaves its blocks as they are, and says so.
#
#   dev/insert_results.sh [FILE...]     (default: README.md and every docs/*.md)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
declare -A source=([default-experiment]=runs/default/repair/results.md [speculative]=results/speculative.md)
for f in results/performance/*.md; do [ -f "$f" ] && source[perf-$(basename "$f" .md)]=$f; done
headline=$(mktemp)
data_seeds=$(mktemp)
trap 'rm -f "$headline" "$data_seeds"' EXIT
# the headline: everything of results.md before its gap table
if [ -f runs/default/repair/results.md ]; then
  awk '/^The on-policy gap/ { exit } { print }' runs/default/repair/results.md | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$headline"
  source[default-experiment-headline]=$headline
fi
# the study's data-seed section: from its table to the next heading
if [ -f results/study.md ] && grep -q '^## Across data seeds' results/study.md; then
  awk '/^## Across data seeds/ { on = 1; next } on && /^## / { exit } on && /^\| data seed/ { show = 1 } show { print }' \
      results/study.md | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$data_seeds"
  source[study-data-seeds]=$data_seeds
fi
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(README.md docs/*.md)
for name in "${!source[@]}"; do
  src=${source[$name]}
  if [ ! -f "$src" ]; then echo "insert_results: $src not found: the '$name' blocks are unchanged" >&2; continue; fi
  for f in "${files[@]}"; do
    grep -q "^<!-- begin $name:" "$f" || continue
    awk -v name="$name" -v src="$src" '
      index($0, "<!-- begin " name ":") == 1 { print; while ((getline line < src) > 0) print line; close(src); skip = 1; next }
      $0 == "<!-- end " name " -->" { skip = 0 }
      !skip { print }' "$f" > "$f.tmp" && mv "$f.tmp" "$f"
    echo "insert_results: $src -> $f" >&2
  done
done
