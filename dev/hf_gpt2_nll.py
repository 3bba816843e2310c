#!/usr/bin/env python3
"""hf_gpt2_nll.py — an independent check of gkd's Hugging Face GPT-2 import and export.

Reads a model.safetensors with nothing but json/struct and torch, runs GPT-2 the way
Hugging Face's GPT2LMHeadModel does (Conv1D: y = x @ W + b with W stored (in, out); tied
LM head; tanh GELU; LayerNorm eps from config.json), in float64, and prints the mean
token NLL of the completions of a JSONL file of {"prompt_ids", "completion_ids"} lines
(EOS appended, as gkd's rows, docs/algorithm.md §2). Compare with `./gkd eval --model THE_SAME --data F`:

    /usr/bin/python3 dev/hf_gpt2_nll.py model.safetensors data.jsonl
"""
import json, math, os, struct, sys
import torch

def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", "this checker reads F32 only"
        b, en = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:en]), dtype=torch.float32).reshape(e["shape"])
        out[name[len("transformer."):] if name.startswith("transformer.") else name] = t.double()
    return out

def forward(w, cfg, ids):
    T = len(ids)
    C, NH = cfg["n_embd"], cfg["n_head"]
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (C,), w[p + ".weight"], w[p + ".bias"], cfg["layer_norm_epsilon"])
    conv1d = lambda x, p: x @ w[p + ".weight"] + w[p + ".bias"]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for l in range(cfg["n_layer"]):
        h = f"h.{l}."
        q, k, v = conv1d(ln(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=-1)
        q, k, v = (t.reshape(T, NH, C // NH).transpose(0, 1) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // NH)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(T, C)
        x = x + conv1d(y, h + "attn.c_proj")
        m = conv1d(ln(x, h + "ln_2"), h + "mlp.c_fc")
        m = 0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m ** 3)))
        x = x + conv1d(m, h + "mlp.c_proj")
    return ln(x, "ln_f") @ w["wte.weight"].T  # tied head

def main():
    model, data = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(os.path.dirname(os.path.abspath(model)), "config.json")))
    w = load_safetensors(model)
    eos = cfg["vocab_size"] - 1
    total, count = 0.0, 0
    for line in open(data):
        ex = json.loads(line)
        row = ex["prompt_ids"] + ex["completion_ids"] + [eos]
        logp = forward(w, cfg, row[:-1]).log_softmax(-1)
        P = len(ex["prompt_ids"])
        for t in range(P - 1, len(row) - 1):
            total -= logp[t, row[t + 1]].item()
            count += 1
    print(json.dumps({"nll": total / count, "tokens": count}))

if __name__ == "__main__":
    main()
