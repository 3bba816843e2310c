#!/usr/bin/env bash
# tests/bad_input_test.sh — every way bad input enters gkd, as a table: the command, the
# exit status and the message it must print. Each refusal is one line on stderr that names
# the file (and line) or the flag; never a signal, never a half-written output.
# Prints "bad input: N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
GKD=${GKD:-./gkd}
W=$(mktemp -d /tmp/gkd_bad.XXXXXX)
trap 'rm -rf "$W"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# CPU tests: on a machine with a GPU too, --device auto stays on the CPU and cuda is refused
export CUDA_VISIBLE_DEVICES=""

# --- the inputs the table refers to
$GKD init --layers 1 --channels 16 --heads 2 --context 32 --seed 1 --out "$W/s.bin" 2>/dev/null
$GKD init --layers 1 --channels 16 --heads 2 --context 32 --vocab 300 --out "$W/v300.bin" 2>/dev/null
printf '{"prompt": "2+3=", "completion": "5"}\n{"prompt": "1+1=", "completion": "2"}\n' >"$W/ok.jsonl"
size=$(stat -c %s "$W/s.bin")
# a teacher cache of ok.jsonl, and broken ones
$GKD teacher-cache --teacher "$W/s.bin" --data "$W/ok.jsonl" --top-k 8 --out "$W/c.bin" --quiet 2>/dev/null
printf '{"prompt": "2+3=", "completion": "6"}\n{"prompt": "1+1=", "completion": "2"}\n' >"$W/other.jsonl"
head -c 100 /dev/zero >"$W/junk.cache"
head -c $(( $(stat -c %s "$W/c.bin") - 3 )) "$W/c.bin" >"$W/short.cache"
mkdir -p "$W/hf" && $GKD convert "$W/v300.bin" "$W/hf/model.safetensors" 2>/dev/null
python3 - "$W" <<'EOF'
import json, os, struct, sys
w = sys.argv[1]

# safetensors corruptions of a good file
st = open(f"{w}/hf/model.safetensors", "rb").read()
n = struct.unpack("<Q", st[:8])[0]
header, data = json.loads(st[8:8 + n]), st[8 + n:]
def safetensors(name, hdr, length=None):
    text = json.dumps(hdr).encode()
    os.makedirs(f"{w}/{name}", exist_ok=True)
    open(f"{w}/{name}/model.safetensors", "wb").write(struct.pack("<Q", length or len(text)) + text + data)
    open(f"{w}/{name}/config.json", "w").write(open(f"{w}/hf/config.json").read())
safetensors("st_past_end", header, length=len(st) * 2)
safetensors("st_missing", {k: v for k, v in header.items() if k != "h.0.mlp.c_fc.bias"})
safetensors("st_shape", {**header, "h.0.ln_2.weight": {**header["h.0.ln_2.weight"], "shape": [4, 4]}})
safetensors("st_dtype", {**header, "ln_f.bias": {**header["ln_f.bias"], "dtype": "I32"}})
safetensors("st_offsets", {**header, "wpe.weight": {**header["wpe.weight"], "data_offsets": [0, len(data) + 4]}})

# tiny byte-level BPE files: 256 byte tokens, <|endoftext|>, and "Ġt"
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs, k = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + k); k += 1
spell = {b: chr(c) for b, c in zip(bs, cs)}
vocab = {spell[b]: b for b in range(256)}
vocab["<|endoftext|>"] = 256
vocab[spell[32] + "t"] = 257
def tokenizer(name, merges, v=vocab):
    os.makedirs(f"{w}/{name}", exist_ok=True)
    json.dump(v, open(f"{w}/{name}/vocab.json", "w"))
    open(f"{w}/{name}/merges.txt", "w").write(merges)
tokenizer("tok_ok", "#version: 0.2\n" + spell[32] + " t\n")
tokenizer("tok_badmerge", "#version: 0.2\n" + spell[32] + " t\nabc\n")
tokenizer("tok_unknown", "#version: 0.2\nq z\n")
tokenizer("tok_notbytes", "", {**vocab, "\u4e00": 258})
other = {k: v for k, v in vocab.items() if v < 257}
other["<|endoftext|>"] = 256
other["he"] = 257
tokenizer("tok_other", "#version: 0.2\nh e\n", other)  # V = 258 too, another merge
os.makedirs(f"{w}/notok", exist_ok=True)
open(f"{w}/badjson.json", "w").write('{"model": {"type": "BPE", "vocab": {')
llmc = struct.pack("<256I", 20240328, 2, 2, 1, *([0] * 252)) + bytes([1]) + b"a" + bytes([1]) + b"b"
open(f"{w}/llmc_tokenizer.bin", "wb").write(llmc)
good = open(f"{w}/s.bin", "rb").read()
def patch(name, index, value, data=good):
    b = bytearray(data)
    b[4 * index:4 * index + 4] = struct.pack("<i", value)
    open(f"{w}/{name}", "wb").write(bytes(b))
patch("magic.bin", 0, 12345)
patch("version.bin", 1, 4)
patch("channels.bin", 6, 1 << 30)         # absurd: would allocate terabytes
patch("layers.bin", 4, 2)                  # a valid shape that the file is too short for
patch("heads.bin", 5, 3)                   # 3 does not divide 16
patch("vp.bin", 7, 100)                    # Vp < V
open(f"{w}/truncated.bin", "wb").write(good[:5000])
open(f"{w}/trailing.bin", "wb").write(good + b"\0\0\0\0")
open(f"{w}/short.bin", "wb").write(good[:100])
open(f"{w}/empty.bin", "wb").write(b"")
lines = {
    "malformed.jsonl": '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"\n',
    "notobject.jsonl": '["a", "b"]\n',
    "prompttype.jsonl": '{"prompt": 5, "completion": "b"}\n',
    "completiontype.jsonl": '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ["b"]}\n',
    "idstype.jsonl": '{"prompt_ids": "12", "completion_ids": [3]}\n',
    "idfloat.jsonl": '{"prompt_ids": [1, 2.5], "completion_ids": [3]}\n',
    "idrange.jsonl": '{"prompt_ids": [1, 2], "completion_ids": [3, 257]}\n',
    "idnegative.jsonl": '{"prompt_ids": [-1], "completion_ids": [3]}\n',
    "noprompt.jsonl": '{"completion": "b"}\n',
    "nocompletion.jsonl": '{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n',
    "both.jsonl": '{"prompt": "a", "prompt_ids": [1], "completion": "b"}\n',
    "emptyprompt.jsonl": '{"prompt": "", "completion": "b"}\n',
    "long.jsonl": '{"prompt": "' + "a" * 20 + '", "completion": "' + "b" * 20 + '"}\n',
    "longprompt.jsonl": '{"prompt": "' + "a" * 32 + '"}\n',
    "empty.jsonl": "",
    "blank.jsonl": "\n   \n",
    "badutf8.jsonl": '{"prompt": "a\xff", "completion": "b"}\n',
    "gsm8k_noanswer.jsonl": '{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": "2+2?"}\n',
    "gsm8k_malformed.jsonl": '{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?",\n',
    "gsm8k_nohash.jsonl": '{"question": "1+1?", "answer": "it is 2"}\n',
    "inst_nooutput.jsonl": '{"instruction": "say hi", "input": ""}\n',
    "inst_type.jsonl": '{"instruction": "say hi", "output": 5}\n',
}
for name, text in lines.items():
    open(f"{w}/{name}", "wb").write(text.encode("latin-1") if name == "badutf8.jsonl" else text.encode())
EOF
mkdir -p "$W/busy" && touch "$W/busy/something"
# a student and a teacher of V = 258, each with its own (different) tokenizer beside it
mkdir -p "$W/sA" "$W/tB"
$GKD init --layers 1 --channels 16 --heads 2 --context 32 --vocab 258 --out "$W/sA/model.bin" 2>/dev/null
$GKD init --layers 1 --channels 32 --heads 2 --context 32 --vocab 258 --out "$W/tB/model.bin" 2>/dev/null
cp "$W/tok_ok/vocab.json" "$W/tok_ok/merges.txt" "$W/sA/" && cp "$W/tok_other/vocab.json" "$W/tok_other/merges.txt" "$W/tB/"
mkdir -p "$W/badstate" && head -c 100 "$W/s.bin" >"$W/badstate/checkpoint.bin"
mkdir -p "$W/tornstate" && printf 'GKDSTATE\001\000\000\000\000\000\000\000\377\377\377\377\377\377\377\177' >"$W/tornstate/checkpoint.bin"

S="--model $W/s.bin"
TRAIN="--out $W/never"
# status <TAB> message <TAB> command (word-split; paths have no spaces)
TABLE=$(cat <<EOF
1	$W/magic.bin: bad magic number 12345	sample --model $W/magic.bin --prompt x
1	$W/version.bin: unsupported checkpoint version 4	sample --model $W/version.bin --prompt x
1	$W/channels.bin: invalid model shape: channels C must be in [1, 65536]	sample --model $W/channels.bin --prompt x
1	$W/layers.bin: file is $size bytes but its header	sample --model $W/layers.bin --prompt x
1	$W/heads.bin: invalid model shape: heads NH must divide channels C	sample --model $W/heads.bin --prompt x
1	$W/vp.bin: invalid model shape: padded vocabulary Vp must be in [V, V + 65536]	sample --model $W/vp.bin --prompt x
1	$W/truncated.bin: file is 5000 bytes but its header	eval --model $W/truncated.bin --data $W/ok.jsonl
1	$W/trailing.bin: file is $((size + 4)) bytes but its header	eval --model $W/trailing.bin --data $W/ok.jsonl
1	$W/short.bin: not a gkd/llm.c checkpoint: 100 bytes	eval --model $W/short.bin --data $W/ok.jsonl
1	$W/empty.bin: not a gkd/llm.c checkpoint: 0 bytes	eval --model $W/empty.bin --data $W/ok.jsonl
1	$W/missing.bin: cannot open for reading	eval --model $W/missing.bin --data $W/ok.jsonl
1	vocabulary mismatch: teacher $W/v300.bin has V = 300 but student $W/s.bin has V = 257	distill --teacher $W/v300.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN
1	the model $W/v300.bin has a vocabulary of 300 tokens, so it needs a tokenizer	sample --model $W/v300.bin --prompt x
1	$W/st_past_end/model.safetensors: safetensors header length	sample --model $W/st_past_end --prompt x
1	$W/st_missing/model.safetensors: tensor h.0.mlp.c_fc.bias is missing	sample --model $W/st_missing --prompt x
1	$W/st_shape/model.safetensors: tensor h.0.ln_2.weight has shape (4, 4) but this GPT-2 needs (16)	sample --model $W/st_shape --prompt x
1	$W/st_dtype/model.safetensors: tensor ln_f.bias has dtype I32; only F32, F16 and BF16 are read	convert $W/st_dtype $W/never.bin
1	$W/st_offsets/model.safetensors: tensor wpe.weight: data_offsets	convert $W/st_offsets $W/never.bin
1	gkd convert: needs exactly two arguments	convert $W/s.bin
1	vocabulary mismatch: tokenizer $W/tok_ok has 258 tokens but the model $W/s.bin has V = 257	sample --model $W/s.bin --tokenizer $W/tok_ok --prompt x
1	$W/tok_badmerge/merges.txt:3: a merge line must be two tokens separated by one space	tokenize --tokenizer $W/tok_badmerge
1	$W/tok_unknown/merges.txt:2: merge "q z" uses or makes a token that is not in the vocabulary	tokenize --tokenizer $W/tok_unknown
1	is not spelled in GPT-2's byte-to-unicode alphabet	tokenize --tokenizer $W/tok_notbytes/vocab.json
1	$W/notok: no tokenizer in this folder	tokenize --tokenizer $W/notok
1	$W/badjson.json: not valid JSON	tokenize --tokenizer $W/badjson.json
1	$W/llmc_tokenizer.bin: llm.c's tokenizer file can only decode	tokenize --tokenizer $W/llmc_tokenizer.bin
1	$W/gsm8k_noanswer.jsonl:2: needs a string "answer" (GSM8K)	data --convert gsm8k --in $W/gsm8k_noanswer.jsonl --out $W/never.jsonl
1	$W/gsm8k_nohash.jsonl:1: the answer has no final "#### <number>" line	data --convert gsm8k --in $W/gsm8k_nohash.jsonl --out $W/never.jsonl
1	$W/inst_nooutput.jsonl:1: needs a string "output"	data --convert instruction --in $W/inst_nooutput.jsonl --out $W/never.jsonl
1	$W/inst_type.jsonl:1: "output" must be a string	data --convert instruction --in $W/inst_type.jsonl --out $W/never.jsonl
1	$W/gsm8k_malformed.jsonl:2: malformed JSON	data --convert gsm8k --in $W/gsm8k_malformed.jsonl --out $W/never.jsonl
1	--convert 'dolly' must be one of gsm8k|instruction	data --convert dolly --in $W/ok.jsonl --out $W/never.jsonl
1	give exactly one of --task NAME or --convert FORMAT	data --out $W/never.jsonl
1	tokenizer mismatch: $W/tB/vocab.json (beside the teacher $W/tB/model.bin) is not the same vocabulary and merges as $W/sA/vocab.json	distill --teacher $W/tB/model.bin --student $W/sA/model.bin --data $W/ok.jsonl $TRAIN
1	tokenizer mismatch: $W/tB/vocab.json (beside the teacher $W/tB) is not the same vocabulary	eval --model $W/sA --teacher $W/tB --data $W/ok.jsonl
1	gkd bench: --student '2,128' must be LAYERS,CHANNELS,HEADS	bench --student 2,128
1	gkd bench --teacher: invalid model shape: heads NH must divide channels C	bench --teacher 1,30,4
1	--prompt-tokens 100 + --new-tokens 64 exceed --context 128	bench --prompt-tokens 100
1	use --device cpu (or auto)	bench --device cuda
1	--tf32 is a GPU mode: it needs --device cuda	bench --tf32 --device cpu
1	gkd bench: --kernel-choices 'some' must be all or this	bench --kernel-choices some
1	--kernel-choices all times the CPU's kernels in the table: not with --json	bench --kernel-choices all --json
1	gkd bench: --rounds counts the runs of --kernel-choices all	bench --rounds 2 --json
1	gkd bench: --kernel-choices applies to the step's bench, not --ragged	bench --ragged --kernel-choices this
1	--precision bf16 is the CUDA path's: it needs --device cuda	bench --precision bf16 --device cpu
1	--precision 'half' must be one of auto|bf16|fp32	bench --precision half
1	--precision bf16 is the CUDA path's: it needs --device cuda	sample $S --prompt hi --precision bf16 --device cpu
1	$W/malformed.jsonl:2: malformed JSON	sft $S --data $W/malformed.jsonl $TRAIN
1	$W/notobject.jsonl:1: expected a JSON object	sft $S --data $W/notobject.jsonl $TRAIN
1	$W/prompttype.jsonl:1: "prompt" must be a string	sft $S --data $W/prompttype.jsonl $TRAIN
1	$W/completiontype.jsonl:2: "completion" must be a string	sft $S --data $W/completiontype.jsonl $TRAIN
1	$W/idstype.jsonl:1: "prompt_ids" must be an array of integers	sft $S --data $W/idstype.jsonl $TRAIN
1	$W/idfloat.jsonl:1: "prompt_ids"[1] is not an integer	sft $S --data $W/idfloat.jsonl $TRAIN
1	$W/idrange.jsonl:1: "completion_ids"[1] = 257 is outside the vocabulary [0, 257)	sft $S --data $W/idrange.jsonl $TRAIN
1	$W/idnegative.jsonl:1: "prompt_ids"[0] = -1 is outside the vocabulary	sft $S --data $W/idnegative.jsonl $TRAIN
1	$W/noprompt.jsonl:1: missing "prompt"	sft $S --data $W/noprompt.jsonl $TRAIN
1	$W/nocompletion.jsonl:3: missing "completion"	sft $S --data $W/nocompletion.jsonl $TRAIN
1	$W/both.jsonl:1: has both "prompt" and "prompt_ids"	sft $S --data $W/both.jsonl $TRAIN
1	$W/emptyprompt.jsonl:1: the prompt is empty	sft $S --data $W/emptyprompt.jsonl $TRAIN
1	$W/long.jsonl:1: prompt (20 tokens) + completion (20 tokens) is longer than the model's context of 32 tokens	sft $S --data $W/long.jsonl $TRAIN
1	$W/longprompt.jsonl:1: the prompt (32 tokens) leaves no room	sample $S --data $W/longprompt.jsonl
1	$W/empty.jsonl: no examples (the file is empty)	sft $S --data $W/empty.jsonl $TRAIN
1	$W/blank.jsonl: no examples	eval $S --data $W/blank.jsonl
1	$W/badutf8.jsonl:1: malformed JSON	sft $S --data $W/badutf8.jsonl $TRAIN
1	$W/missing.jsonl: cannot open for reading	sft $S --data $W/missing.jsonl $TRAIN
1	unknown flag --lamda	distill --lamda 0.5
1	gkd sft: --lambda does not apply to sft (it is a flag of gkd distill	sft $S --data $W/ok.jsonl $TRAIN --lambda 0.7 --beta 0.3
1	gkd sft: --beta does not apply to sft (it is a flag of gkd distill, eval, bench	sft $S --data $W/ok.jsonl $TRAIN --beta 0.3
1	gkd sft: --alpha does not apply to sft	sft $S --data $W/ok.jsonl $TRAIN --alpha 0.5
1	gkd sft: --temperature is the teacher's sampling temperature with --seq-kd	sft $S --data $W/ok.jsonl $TRAIN --temperature 0.5
1	gkd distill: --eval-every applies to the evaluation of held-out data: give --eval-data	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --eval-every 5
1	gkd sft: --task applies to the evaluation of held-out data: give --eval-data	sft $S --data $W/ok.jsonl $TRAIN --task arithmetic
1	gkd sft: --teacher applies to SeqKD, SFT on the teacher's samples: give --seq-kd too	sft $S --data $W/ok.jsonl $TRAIN --teacher $W/s.bin
1	gkd distill: --reward applies to --objective jsd|tv, not sampled-reverse-kl	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --objective sampled-reverse-kl --lambda 1 --reward arithmetic
1	gkd sample: --teacher does not apply to sample (it is a flag of gkd distill, sft, eval, bench	sample $S --prompt x --teacher $W/s.bin
1	gkd eval: --lr does not apply to eval (it is a flag of gkd distill, sft	eval $S --data $W/ok.jsonl --lr 1
1	gkd init: --data does not apply to init	init --layers 1 --data x
1	--steps needs a value	sft $S --data $W/ok.jsonl $TRAIN --steps
1	--lr 'fast' is not a number	sft $S --data $W/ok.jsonl $TRAIN --lr fast
1	--batch '2.5' is not an integer	sft $S --data $W/ok.jsonl $TRAIN --batch 2.5
1	--lambda 1.5 is outside [0, 1]	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --lambda 1.5
1	--lambda -0.1 is outside [0, 1]	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --lambda -0.1
1	--beta 2 is outside [0, 1]	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --beta 2
1	--temperature -1 is outside	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --temperature -1
1	--temperature -0.5 is outside	sample $S --prompt x --temperature -0.5
1	--loss-temperature 0 is outside	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --loss-temperature 0
1	--max-new-tokens 0 is outside	sample $S --prompt x --max-new-tokens 0
1	--loss-norm 'mean' must be one of sequence|token	sft $S --data $W/ok.jsonl $TRAIN --loss-norm mean
1	--shuffle 2 is outside [0, 1]	sft $S --data $W/ok.jsonl $TRAIN --shuffle 2
1	--lr 'nan' is not a number	sft $S --data $W/ok.jsonl $TRAIN --lr nan
1	--data is required	sft $S $TRAIN
1	--teacher is given twice	distill --teacher a --teacher b
1	unexpected argument 'extra'	sample $S extra
1	unknown command 'train'	train
1	gkd experiment: --task 'poetry' must be one of repair|walks|arithmetic	--task poetry
1	gkd experiment: --steps does not apply to experiment	experiment --steps 3
1	$W/busy: the folder exists and is not empty; give --overwrite	sft $S --data $W/ok.jsonl --out $W/busy
1	$W/never/checkpoint.bin: no checkpoint to resume from	sft --resume $W/never
1	$W/badstate/checkpoint.bin: not a gkd training checkpoint	sft --resume $W/badstate
1	$W/tornstate/checkpoint.bin: header length	sft --resume $W/tornstate
1	use --device cpu (or auto)	sample $S --prompt x --device cuda
1	vocabulary mismatch: the model $W/s.bin has V = 257 but the draft $W/v300.bin has V = 300	sample $S --draft $W/v300.bin --prompt x
1	tokenizer mismatch: $W/sA/vocab.json (beside the draft $W/sA/model.bin) is not the same vocabulary	sample --model $W/tB/model.bin --draft $W/sA/model.bin --prompt x
1	--draft-tokens 0 is outside [1,	sample $S --draft $W/s.bin --prompt x --draft-tokens 0
1	gkd sample: --draft-tokens 32 is beyond the context: a round reads K + 1 positions, and the shorter model's context is 32 tokens (K <= 31)	sample $S --draft $W/s.bin --prompt x --draft-tokens 32
1	gkd sample: --draft-tokens applies to speculative sampling: give --draft F too	sample $S --prompt x --draft-tokens 4
1	gkd sample: --baseline applies to speculative sampling: give --draft F too	sample $S --prompt x --baseline 0
1	$W/missing.bin: cannot open for reading	sample $S --draft $W/missing.bin --prompt x
1	gkd eval: --draft-tokens measures the model as a draft for a teacher: give --teacher F too	eval $S --data $W/ok.jsonl --draft-tokens 4
1	gkd eval: --draft-temperature applies to --draft-tokens: give --draft-tokens K too	eval $S --teacher $W/s.bin --data $W/ok.jsonl --draft-temperature 0
1	gkd eval: --draft-tokens 40 is beyond the context	eval $S --teacher $W/s.bin --data $W/ok.jsonl --draft-tokens 40
1	--draft-tokens 0 is outside [1,	eval $S --teacher $W/s.bin --data $W/ok.jsonl --draft-tokens 0
1	<stdin>: malformed JSON	tokenize --decode
1	gkd distill: --teacher-top-k 300 is above the vocabulary's 257 tokens	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --teacher-top-k 300
1	--teacher-top-k 0 is outside	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --teacher-top-k 0
1	gkd sft: --teacher-top-k does not apply to sft	sft $S --data $W/ok.jsonl $TRAIN --teacher-top-k 8
1	--objective 'kl' must be one of jsd|tv|sampled-reverse-kl	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --objective kl
1	is a policy gradient on the student's own samples: give --lambda 1	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --objective sampled-reverse-kl
1	--teacher-top-k applies to --objective jsd|tv, not sampled-reverse-kl	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --objective sampled-reverse-kl --lambda 1 --teacher-top-k 8
1	gkd distill: --kl-discount applies to --objective sampled-reverse-kl, not jsd	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --kl-discount 0.5
1	--kl-discount 2 is outside [0, 1]	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --objective sampled-reverse-kl --lambda 1 --kl-discount 2
1	gkd distill: --beta applies to --objective jsd, not tv	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --objective tv --beta 0.5
1	with --lambda 0.5 the on-policy steps score the student's samples with the live teacher: give --teacher too	distill --student $W/s.bin --data $W/ok.jsonl $TRAIN --teacher-cache $W/c.bin
1	--teacher-cache holds the teacher's scores of the dataset's completions; --seq-kd	distill --teacher $W/s.bin --student $W/s.bin --data $W/ok.jsonl $TRAIN --teacher-cache $W/c.bin --seq-kd
1	$W/missing.cache: cannot open the teacher cache	distill --student $W/s.bin --data $W/ok.jsonl $TRAIN --lambda 0 --teacher-cache $W/missing.cache
1	$W/junk.cache: not a gkd teacher cache (bad magic)	distill --student $W/s.bin --data $W/ok.jsonl $TRAIN --lambda 0 --teacher-cache $W/junk.cache
1	$W/short.cache: no trailer at the end: truncated	distill --student $W/s.bin --data $W/ok.jsonl $TRAIN --lambda 0 --teacher-cache $W/short.cache
1	$W/c.bin: this cache does not match the run: its data.hash is	distill --student $W/s.bin --data $W/other.jsonl $TRAIN --lambda 0 --teacher-cache $W/c.bin
1	$W/c.bin: this cache does not match the run: its temperature (--loss-temperature) is 1	distill --student $W/s.bin --data $W/ok.jsonl $TRAIN --lambda 0 --teacher-cache $W/c.bin --loss-temperature 2
1	gkd distill: --teacher-top-k 4, but $W/c.bin holds the top 8	distill --student $W/s.bin --data $W/ok.jsonl $TRAIN --lambda 0 --teacher-cache $W/c.bin --teacher-top-k 4
1	--top-k 0 is outside	teacher-cache --teacher $W/s.bin --data $W/ok.jsonl --top-k 0 --out $W/never.cache
1	gkd teacher-cache: --top-k 300 is above the teacher's vocabulary of 257 tokens	teacher-cache --teacher $W/s.bin --data $W/ok.jsonl --top-k 300 --out $W/never.cache
1	--out is required	teacher-cache --teacher $W/s.bin --data $W/ok.jsonl
EOF
)

pass=0
fail=0
# ONLY=TEXT runs the rows whose message or command holds TEXT (and the checks below)
while IFS=$'\t' read -r want message cmd; do
  [ -n "$cmd" ] || continue
  [ -z "${ONLY:-}" ] || [[ "$message $cmd" == *"$ONLY"* ]] || continue
  $GKD $cmd >"$W/out" 2>"$W/err" </dev/null
  rc=$?
  lines=$(wc -l <"$W/err")
  if [ "$rc" -ne "$want" ]; then fail=$((fail + 1)); echo "FAIL: exit $rc (wanted $want): gkd $cmd: $(head -c 300 "$W/err")" >&2
  elif [ "$lines" -ne 1 ]; then fail=$((fail + 1)); echo "FAIL: $lines lines on stderr: gkd $cmd: $(cat "$W/err")" >&2
  elif ! grep -qF -- "$message" "$W/err"; then fail=$((fail + 1)); echo "FAIL: gkd $cmd: wanted '$message', got: $(cat "$W/err")" >&2
  elif [ -s "$W/out" ]; then fail=$((fail + 1)); echo "FAIL: gkd $cmd wrote to stdout: $(head -c 200 "$W/out")" >&2
  else pass=$((pass + 1)); fi
done <<<"$TABLE"
# the environment's choice of gkd's CPU kernels (cpu/packed_tile.h): a name it does not know
GKD_CPU_KERNELS=avx9 $GKD init --layers 1 --channels 16 --heads 2 --out "$W/never.bin" >"$W/out" 2>"$W/err"
rc=$?
if [ "$rc" -eq 1 ] && [ "$(wc -l <"$W/err")" -eq 1 ] && grep -qF "GKD_CPU_KERNELS=avx9: expected avx512, avx2 or portable" "$W/err"; then
  pass=$((pass + 1))
else fail=$((fail + 1)); echo "FAIL: GKD_CPU_KERNELS=avx9: exit $rc: $(cat "$W/err")" >&2; fi
# nothing half-written: no refused run left a folder or a file behind
if [ -e "$W/never" ]; then fail=$((fail + 1)); echo "FAIL: a refused run created its --out folder" >&2; else pass=$((pass + 1)); fi
if ls "$W"/never.* "$W"/*.partial >/dev/null 2>&1; then fail=$((fail + 1)); echo "FAIL: a refused convert left $(ls "$W"/never.*)" >&2; else pass=$((pass + 1)); fi
if [ "$(ls "$W/busy")" = something ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: the refused run touched the busy folder" >&2; fi
echo "bad input: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
