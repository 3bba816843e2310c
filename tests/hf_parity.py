#!/usr/bin/env python3
"""hf_parity.py — gkd against Hugging Face transformers on random GPT-2s at GPT-2's widths.

    python3 tests/hf_parity.py [--device cuda|cpu] [--gkd ./gkd] [--work DIR]

Two random GPT2LMHeadModel (student 2 layers, teacher 3; C 768, 12 heads, V 50257,
context 256), built from a GPT2Config and saved with save_pretrained (model.safetensors +
config.json), are what gkd loads. Random prompt and completion ids go in a JSONL (EOS
appended, docs/algorithm.md §2). Compared, in fp32 on both sides (TF32 off):
  1. the mean token NLL of the completions: transformers' logits against `gkd eval`;
  2. the mean divergence per completion token, for beta = 0, 0.5 and 1: TRL's published
     generalized_jsd_loss (GKDTrainer; written out below from its definition, token-level
     "batchmean" over the labelled positions) on transformers' logits, against
     `gkd eval --teacher --beta`;
  3. one GKD step's loss (lambda 0: the dataset's completions; docs/algorithm.md §3's per-sequence mean,
     the paper's 1/L_y) against `gkd distill --steps 1`, whose first metrics line is the
     loss before the update.
Prints one line per comparison and exits 1 if any is off by more than 1e-4 (relative);
exits 0 with one "skipped:" line naming the package that is missing (torch, transformers).
Written for transformers 4.x and 5.x and torch 1.x and 2.x: no argument a version removed
(save_pretrained's safe_serialization is given only where safetensors is not already the
default), and fp32 matmuls through torch's current precision API where it has one.
"""
import argparse, importlib, json, math, os, random, struct, subprocess, sys, tempfile

for package in ("torch", "transformers"):
    try:
        importlib.import_module(package)
    except ImportError as e:
        print(f"hf_parity: skipped: the Python package {package} is missing ({e}); pip install torch transformers")
        sys.exit(0)
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

V, EOS = 50257, 50256
TOL = 1e-4


def trl_generalized_jsd(student_logits, teacher_logits, beta, temperature=1.0):
    """Per-position divergence of TRL's generalized_jsd_loss before its reduction:
    beta = 0 is KL(teacher || student), beta = 1 is KL(student || teacher), and between,
    beta KL(teacher || M) + (1 - beta) KL(student || M) with M = beta teacher + (1 - beta) student."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        d = t.exp() * (t - s)
    elif beta == 1:
        d = s.exp() * (s - t)
    else:
        b = torch.tensor(beta, dtype=s.dtype)
        m = torch.logsumexp(torch.stack([s + torch.log1p(-b), t + torch.log(b)]), dim=0)
        d = b * t.exp() * (t - m) + (1 - b) * s.exp() * (s - m)
    return d.sum(-1)


def random_model(layers, seed, folder):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=256, n_embd=768, n_layer=layers, n_head=12,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.08, tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # LayerNorms away from (1, 0) and biases away from 0 (their init), so that a misplaced one shows
        for name, p in model.named_parameters():
            if ".ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.2)
    save_safetensors(model, folder)
    return model


def save_safetensors(model, folder):
    """model.safetensors + config.json: transformers 5.x always writes safetensors (and has no
    safe_serialization argument), 4.35 on does by default, older ones only when asked."""
    model.save_pretrained(folder)
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        model.save_pretrained(folder, safe_serialization=True)


def fp32_matmuls():
    """Matmuls in IEEE fp32, not TF32: torch 2.9's fp32_precision where it exists (the
    allow_tf32 switches are deprecated there), else set_float32_matmul_precision and the
    switches (torch 1.12 to 2.8), else the switches alone."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "ieee"
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            conv.fp32_precision = "ieee"
        return
    if hasattr(torch, "set_float32_matmul_precision"):
        torch.set_float32_matmul_precision("highest")
    matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def write_tokenizer(path):
    """An llm.c gpt2_tokenizer.bin (version 2) of V made-up tokens: gkd needs a tokenizer of
    the model's size, and this check speaks ids only."""
    with open(path, "wb") as f:
        f.write(struct.pack("<256I", 20240328, 2, V, EOS, *([0] * 252)))
        for i in range(V):
            b = (f"<t{i}>" if i != EOS else "<|endoftext|>").encode()
            f.write(bytes([len(b)]) + b)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"hf_parity: FAIL: {' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gkd", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gkd"))
    ap.add_argument("--work", default=None, help="keep the models and data here (default: a temporary folder)")
    a = ap.parse_args()
    fp32_matmuls()
    work = a.work or tempfile.mkdtemp(prefix="hf_parity_")
    os.makedirs(work, exist_ok=True)
    sdir, tdir = os.path.join(work, "student"), os.path.join(work, "teacher")
    student = random_model(2, 1, sdir).to(a.device)
    teacher = random_model(3, 2, tdir).to(a.device)
    tok = os.path.join(work, "gpt2_tokenizer.bin")
    write_tokenizer(tok)
    rng = random.Random(3)
    examples = []
    for _ in range(4):
        p = [rng.randrange(EOS) for _ in range(rng.randint(5, 20))]
        c = [rng.randrange(EOS) for _ in range(rng.randint(40, 100))]
        examples.append({"prompt_ids": p, "completion_ids": c})
    data = os.path.join(work, "ids.jsonl")
    with open(data, "w") as f:
        for e in examples:
            f.write(json.dumps(e) + "\n")

    # transformers' side: each row alone (no padding), fp32 logits, the sums in fp64
    nll_sum, count = 0.0, 0
    per_seq = {0.0: [], 0.5: [], 1.0: []}
    with torch.no_grad():
        for e in examples:
            row = e["prompt_ids"] + e["completion_ids"] + [EOS]
            x = torch.tensor([row[:-1]], device=a.device)
            ls = student(x).logits[0].double()
            lt = teacher(x).logits[0].double()
            P = len(e["prompt_ids"])
            targets = torch.tensor(row[P:], device=a.device)
            ls, lt = ls[P - 1:], lt[P - 1:]  # the completion positions (labels != -100)
            nll_sum += -ls.log_softmax(-1).gather(1, targets[:, None]).sum().item()
            count += len(targets)
            for beta in per_seq:
                per_seq[beta].append(trl_generalized_jsd(ls, lt, beta))
    hf = {"nll": nll_sum / count}
    for beta, rows in per_seq.items():
        hf[f"D{beta}"] = torch.cat(rows).mean().item()      # TRL: batchmean over labelled tokens
    hf["loss_seq"] = sum(r.mean().item() for r in per_seq[0.5]) / len(examples)  # docs/algorithm.md §3: mean of sequence means

    gkd = {}
    common = ["--data", data, "--tokenizer", tok, "--device", a.device, "--batch", "4"]
    common += ["--precision", "fp32"]  # the parity mode (bf16 is the GPU's default from sm_80)
    for beta in (0.0, 0.5, 1.0):
        out = json.loads(run([a.gkd, "eval", "--model", os.path.join(sdir, "model.safetensors"), "--teacher",
                              os.path.join(tdir, "model.safetensors"), "--beta", str(beta), "--max-new-tokens", "1"]
                             + common).strip().splitlines()[-1])
        gkd["nll"] = out["nll"]
        gkd[f"D{beta}"] = out["divergence"]
        if out["tokens"] != count:
            raise SystemExit(f"hf_parity: FAIL: gkd counted {out['tokens']} tokens, transformers {count}")
    run_dir = os.path.join(work, "distill")
    run([a.gkd, "distill", "--student", os.path.join(sdir, "model.safetensors"), "--teacher",
         os.path.join(tdir, "model.safetensors"), "--out", run_dir, "--lambda", "0", "--beta", "0.5", "--steps", "1",
         "--overwrite", "--quiet"] + common)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        first = next(json.loads(l) for l in f if l.strip() and "loss" in json.loads(l))
    gkd["loss_seq"] = first["loss"]

    names = {"nll": "mean token NLL (student)", "D0.0": "forward KL per token (TRL beta 0)",
             "D0.5": "JSD(0.5) per token (TRL beta 0.5)", "D1.0": "reverse KL per token (TRL beta 1)",
             "loss_seq": "one step's loss, JSD(0.5), mean of sequence means"}
    bad = 0
    print(f"hf_parity on {a.device}: {len(examples)} rows, {count} completion tokens; student 2x768, teacher 3x768, V {V}")
    for k, name in names.items():
        err = abs(gkd[k] - hf[k]) / max(abs(hf[k]), 1e-12)
        ok = err <= TOL
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:52s} gkd {gkd[k]:.9g}  transformers {hf[k]:.9g}  rel {err:.1e} (limit {TOL:.0e})")
    print(f"hf_parity: {len(names) - bad} passed, {bad} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
