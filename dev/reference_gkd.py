#!/usr/bin/python3
"""Independent float64 PyTorch reference of gkd's off-policy distill / sft step.

Written from docs/algorithm.md only (not from the C++ sources), to cross-check the C++ trainer.
Run with Debian's /usr/bin/python3 (torch + numpy).

Modes
  distill (default): --teacher T --student S --data D --steps N --batch B --beta b
                     --loss-temperature tau --loss-norm sequence|token --lr ...
  sft:               --sft --student S (or --model S) --data D ...
  random checkpoint: --init OUT --layers L --channels C --heads NH --context T --seed S
  self tests:        --selftest

Each training step prints {"step": k, "loss": ..., "tokens": ..., "grad_norm": ..., "lr": ...}
on stdout; the loss is the one of step k's batch before step k's update, grad_norm the total
2-norm of the student gradient before clipping, lr the learning rate used by step k's update.
Only --lambda 0 and --shuffle 0 are supported (step k uses examples (k*B+i) mod N).
"""
import argparse
import json
import math
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

MAGIC = 20240326
BYTE_EOS = 256
BYTE_V = 257

PARAM_NAMES = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]
DECAYED = {"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"}


# ----------------------------------------------------------------------------- checkpoints

def param_shapes(cfg):
    Vp, maxT, L, C = cfg["Vp"], cfg["maxT"], cfg["L"], cfg["C"]
    return {
        "wte": (Vp, C), "wpe": (maxT, C),
        "ln1w": (L, C), "ln1b": (L, C),
        "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
        "attprojw": (L, C, C), "attprojb": (L, C),
        "ln2w": (L, C), "ln2b": (L, C),
        "fcw": (L, 4 * C, C), "fcb": (L, 4 * C),
        "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
        "lnfw": (C,), "lnfb": (C,),
    }


def load_checkpoint(path):
    """Returns (config dict, {name: float64 tensor}). Accepts version 3 (fp32) and 5 (bf16)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 1024:
        raise ValueError(f"{path}: too short for a checkpoint header")
    header = np.frombuffer(raw[:1024], dtype="<i4")
    if int(header[0]) != MAGIC:
        raise ValueError(f"{path}: bad magic {int(header[0])}")
    version = int(header[1])
    cfg = {"version": version, "maxT": int(header[2]), "V": int(header[3]), "L": int(header[4]),
           "NH": int(header[5]), "C": int(header[6]), "Vp": int(header[7])}
    if cfg["Vp"] == 0:  # very old llm.c files had no Vp
        cfg["Vp"] = cfg["V"]
    shapes = param_shapes(cfg)
    total = sum(int(np.prod(s)) for s in shapes.values())
    if version == 3:
        need = 1024 + 4 * total
        if len(raw) < need:
            raise ValueError(f"{path}: truncated ({len(raw)} < {need} bytes)")
        flat = np.frombuffer(raw[1024:need], dtype="<f4").astype(np.float64)
    elif version == 5:
        need = 1024 + 2 * total
        if len(raw) < need:
            raise ValueError(f"{path}: truncated ({len(raw)} < {need} bytes)")
        bits = np.frombuffer(raw[1024:need], dtype="<u2").astype(np.uint32) << 16
        flat = bits.view(np.float32).astype(np.float64)
    else:
        raise ValueError(f"{path}: unsupported version {version}")
    params = {}
    off = 0
    for name in PARAM_NAMES:
        n = int(np.prod(shapes[name]))
        params[name] = torch.from_numpy(flat[off:off + n].copy()).reshape(shapes[name])
        off += n
    return cfg, params


def save_checkpoint(path, cfg, params):
    """Writes a version-3 (fp32) checkpoint; wte rows V..Vp-1 are written as zero."""
    header = np.zeros(256, dtype="<i4")
    header[0] = MAGIC
    header[1] = 3
    header[2], header[3], header[4] = cfg["maxT"], cfg["V"], cfg["L"]
    header[5], header[6], header[7] = cfg["NH"], cfg["C"], cfg["Vp"]
    shapes = param_shapes(cfg)
    chunks = [header.tobytes()]
    for name in PARAM_NAMES:
        t = params[name].detach().to(torch.float64).clone()
        assert tuple(t.shape) == tuple(shapes[name]), (name, t.shape, shapes[name])
        if name == "wte":
            t[cfg["V"]:] = 0.0
        chunks.append(t.numpy().astype("<f4").tobytes())
    with open(path, "wb") as f:
        f.write(b"".join(chunks))


def random_params(cfg, seed, rich=True):
    """Random checkpoint. rich=True: large weights, random LN params and biases, so every
    parameter matters for the loss and teacher/student logits differ a lot."""
    g = torch.Generator().manual_seed(seed)
    shapes = param_shapes(cfg)
    p = {}
    for name in PARAM_NAMES:
        s = shapes[name]
        if not rich:
            if name in ("ln1w", "ln2w", "lnfw"):
                t = torch.ones(s)
            elif name in DECAYED:
                t = 0.02 * torch.randn(s, generator=g)
            else:
                t = torch.zeros(s)
        elif name in ("ln1w", "ln2w", "lnfw"):
            t = 1.0 + 0.1 * torch.randn(s, generator=g)
        elif name in DECAYED:
            t = 0.2 * torch.randn(s, generator=g)
        else:
            t = 0.1 * torch.randn(s, generator=g)
        p[name] = t
    p["wte"][cfg["V"]:] = 0.0
    # round to fp32 so the in-memory params equal what a v3 file holds
    return {k: v.float().double() for k, v in p.items()}


# ----------------------------------------------------------------------------- model

def layernorm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt_forward(params, cfg, tokens):
    """tokens: (B,T) int64 tensor; returns logits (B,T,Vp) float64."""
    B, T = tokens.shape
    C, NH, L = cfg["C"], cfg["NH"], cfg["L"]
    hs = C // NH
    if T > cfg["maxT"]:
        raise ValueError(f"sequence length {T} > context {cfg['maxT']}")
    x = params["wte"][tokens] + params["wpe"][:T].unsqueeze(0)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(L):
        h = layernorm(x, params["ln1w"][l], params["ln1b"][l])
        qkv = h @ params["qkvw"][l].T + params["qkvb"][l]
        q, k, v = qkv.split(C, dim=-1)
        q = q.reshape(B, T, NH, hs).transpose(1, 2)
        k = k.reshape(B, T, NH, hs).transpose(1, 2)
        v = v.reshape(B, T, NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ params["attprojw"][l].T + params["attprojb"][l]
        h = layernorm(x, params["ln2w"][l], params["ln2b"][l])
        h = gelu_tanh(h @ params["fcw"][l].T + params["fcb"][l])
        x = x + h @ params["fcprojw"][l].T + params["fcprojb"][l]
    x = layernorm(x, params["lnfw"], params["lnfb"])
    return x @ params["wte"].T


# ----------------------------------------------------------------------------- divergence

def divergence(teacher_logits, student_logits, V, beta, tau):
    """Per-position D(P,Q) over the first V columns; inputs (..., Vp); returns (...)."""
    lp = torch.log_softmax(teacher_logits[..., :V] / tau, dim=-1)
    lq = torch.log_softmax(student_logits[..., :V] / tau, dim=-1)
    if beta == 0:
        return (lp.exp() * (lp - lq)).sum(-1)
    if beta == 1:
        return (lq.exp() * (lq - lp)).sum(-1)
    lm = torch.logsumexp(torch.stack([lp + math.log(beta), lq + math.log(1.0 - beta)]), dim=0)
    return beta * (lp.exp() * (lp - lm)).sum(-1) + (1.0 - beta) * (lq.exp() * (lq - lm)).sum(-1)


def cross_entropy(student_logits, targets, V):
    """Per-position NLL of targets over the first V columns (no temperature)."""
    lq = torch.log_softmax(student_logits[..., :V], dim=-1)
    return -lq.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- data

def load_data(path, V=BYTE_V, eos=BYTE_EOS, maxT=None):
    """Returns list of (prompt_ids, completion_ids). Byte-level tokenizer for text."""
    out = []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if "prompt_ids" in obj:
                p = [int(i) for i in obj["prompt_ids"]]
            else:
                if V != BYTE_V:
                    raise ValueError(f"{path}:{lineno}: text data needs the byte tokenizer (V=257) here")
                p = list(obj["prompt"].encode("utf-8"))
            if "completion_ids" in obj:
                c = [int(i) for i in obj["completion_ids"]]
            elif "completion" in obj:
                c = list(obj["completion"].encode("utf-8"))
            else:
                raise ValueError(f"{path}:{lineno}: no completion")
            for i in p + c:
                if not 0 <= i < V:
                    raise ValueError(f"{path}:{lineno}: id {i} outside [0,{V})")
            if len(p) == 0:
                raise ValueError(f"{path}:{lineno}: empty prompt (no position predicts the first completion token)")
            if maxT is not None and len(p) + len(c) > maxT:
                raise ValueError(f"{path}:{lineno}: prompt+completion {len(p)+len(c)} > context {maxT}")
            out.append((p, c))
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def make_batch(examples, eos=BYTE_EOS):
    """Returns inputs (B,T) int64, targets (B,T) int64, mask (B,T) bool of target positions."""
    rows = [p + c + [eos] for p, c in examples]
    T = max(len(r) - 1 for r in rows)
    B = len(rows)
    inp = torch.zeros(B, T, dtype=torch.long)
    tgt = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, ((p, c), r) in enumerate(zip(examples, rows)):
        n = len(r)
        inp[b, :n - 1] = torch.tensor(r[:-1])
        tgt[b, :n - 1] = torch.tensor(r[1:])
        mask[b, len(p) - 1:n - 1] = True
    return inp, tgt, mask


def reduce_loss(per_pos, mask, loss_norm):
    m = mask.to(per_pos.dtype)
    per_pos = torch.where(mask, per_pos, torch.zeros_like(per_pos))
    if loss_norm == "sequence":
        return ((per_pos * m).sum(1) / m.sum(1)).mean()
    if loss_norm == "token":
        return (per_pos * m).sum() / m.sum()
    raise ValueError(f"bad loss norm {loss_norm}")


def batch_loss(student, scfg, teacher, tcfg, batch, beta, tau, loss_norm, sft=False):
    inp, tgt, mask = batch
    s_logits = gpt_forward(student, scfg, inp)
    if sft:
        per = cross_entropy(s_logits, tgt, scfg["V"])
    else:
        with torch.no_grad():
            t_logits = gpt_forward(teacher, tcfg, inp)
        per = divergence(t_logits, s_logits, scfg["V"], beta, tau)
    return reduce_loss(per, mask, loss_norm)


def loss_and_grads(student, scfg, teacher, tcfg, batch, beta, tau, loss_norm, sft=False):
    sp = {k: v.detach().clone().requires_grad_(True) for k, v in student.items()}
    loss = batch_loss(sp, scfg, teacher, tcfg, batch, beta, tau, loss_norm, sft)
    grads = torch.autograd.grad(loss, [sp[k] for k in PARAM_NAMES])
    return loss.item(), dict(zip(PARAM_NAMES, grads))


# ----------------------------------------------------------------------------- training

def lr_at(k, a):
    if a.warmup > 0 and k < a.warmup:
        return a.lr * (k + 1) / a.warmup
    if a.lr_schedule == "cosine":
        frac = (k - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return a.lr


def adamw_step(params, grads, m, v, t, lr, b1, b2, eps, wd):
    """torch.optim.AdamW semantics (t = 1-based step); decay only the DECAYED tensors."""
    for n in PARAM_NAMES:
        p, g = params[n], grads[n]
        if n in DECAYED and wd != 0:
            p = p * (1.0 - lr * wd)
        m[n] = b1 * m[n] + (1 - b1) * g
        v[n] = b2 * v[n] + (1 - b2) * g * g
        denom = (v[n] / (1 - b2 ** t)).sqrt() + eps
        params[n] = p - (lr / (1 - b1 ** t)) * m[n] / denom


def clip_grads(grads, max_norm):
    """clip_grad_norm_ semantics; returns (maybe scaled grads, pre-clip total norm)."""
    gnorm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    if max_norm > 0:
        coef = max_norm / (gnorm + 1e-6)
        if coef < 1.0:
            grads = {n: g * coef for n, g in grads.items()}
    return grads, gnorm


def train(a, out=sys.stdout):
    """Runs a.steps steps; returns list of per-step dicts (also printed as JSON lines)."""
    if a.lambda_ != 0:
        raise SystemExit("reference supports only --lambda 0")
    if a.shuffle != 0:
        raise SystemExit("reference supports only --shuffle 0")
    scfg, student = load_checkpoint(a.student)
    teacher, tcfg = None, None
    if not a.sft:
        tcfg, teacher = load_checkpoint(a.teacher)
        if tcfg["V"] != scfg["V"]:
            raise SystemExit("teacher and student vocabularies differ")
    maxT = scfg["maxT"] if tcfg is None else min(scfg["maxT"], tcfg["maxT"])
    data = load_data(a.data, V=scfg["V"], maxT=maxT)
    N, B = len(data), a.batch
    m = {k: torch.zeros_like(v) for k, v in student.items()}
    v2 = {k: torch.zeros_like(v) for k, v in student.items()}
    b1, b2, eps, wd = a.adam_beta1, a.adam_beta2, a.adam_eps, a.weight_decay
    log = []
    for k in range(a.steps):
        ex = [data[(k * B + i) % N] for i in range(B)]
        batch = make_batch(ex, eos=scfg["V"] - 1)  # byte: 256, GPT-2 BPE: 50256
        loss, grads = loss_and_grads(student, scfg, teacher, tcfg, batch, a.beta,
                                     a.loss_temperature, a.loss_norm, a.sft)
        grads, gnorm = clip_grads(grads, a.grad_clip)
        lr = lr_at(k, a)
        adamw_step(student, grads, m, v2, k + 1, lr, b1, b2, eps, wd)
        rec = {"step": k, "loss": loss, "tokens": int(batch[2].sum()), "grad_norm": gnorm, "lr": lr}
        log.append(rec)
        if out is not None:
            print(json.dumps(rec), file=out, flush=True)
    return log


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher")
    ap.add_argument("--student")
    ap.add_argument("--model", help="alias of --student (sft)")
    ap.add_argument("--data")
    ap.add_argument("--out", help="ignored (accepted for command-line compatibility)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--lambda", dest="lambda_", type=float, default=0.0)
    ap.add_argument("--shuffle", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss-temperature", type=float, default=1.0)
    ap.add_argument("--loss-norm", choices=["sequence", "token"], default="sequence")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=0.0)
    ap.add_argument("--adam-beta1", type=float, default=0.9)
    ap.add_argument("--adam-beta2", type=float, default=0.999)
    ap.add_argument("--adam-eps", type=float, default=1e-8)
    ap.add_argument("--sft", action="store_true", help="cross-entropy on completions instead of distillation")
    # random checkpoint mode
    ap.add_argument("--init", metavar="OUT", help="write a random v3 checkpoint and exit")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--gpt2-init", action="store_true", help="with --init: plain GPT-2 init instead of the rich one")
    ap.add_argument("--selftest", action="store_true")
    return ap


def byte_cfg(L, C, NH, maxT):
    return {"version": 3, "maxT": maxT, "V": BYTE_V, "L": L, "NH": NH, "C": C,
            "Vp": ((BYTE_V + 127) // 128) * 128}


# ----------------------------------------------------------------------------- self tests

def selftest():
    import os
    import tempfile
    rng = np.random.default_rng(1)
    ok = True

    def check(name, cond, detail=""):
        nonlocal ok
        print(f"{'PASS' if cond else 'FAIL'} {name} {detail}")
        ok = ok and cond

    # 1. divergence vs brute force python loops
    V, Vp = 7, 9
    for trial in range(6):
        t = torch.tensor(rng.normal(0, 2, Vp))
        s = torch.tensor(rng.normal(0, 2, Vp))
        for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
            for tau in (0.5, 1.0, 2.0):
                P = [math.exp(x / tau) for x in t[:V].tolist()]
                Q = [math.exp(x / tau) for x in s[:V].tolist()]
                P = [x / sum(P) for x in P]
                Q = [x / sum(Q) for x in Q]
                Mx = [beta * p + (1 - beta) * q for p, q in zip(P, Q)]
                kl = lambda A, Bv: sum(a * math.log(a / b) for a, b in zip(A, Bv))
                if beta == 0:
                    ref = kl(P, Q)
                elif beta == 1:
                    ref = kl(Q, P)
                else:
                    ref = beta * kl(P, Mx) + (1 - beta) * kl(Q, Mx)
                got = divergence(t, s, V, beta, tau).item()
                if abs(got - ref) > 1e-12 * max(1, abs(ref)):
                    check(f"divergence brute force beta={beta} tau={tau}", False, f"{got} vs {ref}")
    check("divergence vs brute force (90 cases)", ok)

    # 2. limits: JSD(beta)/beta -> KL(P||Q) as beta->0, JSD/(1-beta) -> KL(Q||P) as beta->1
    t = torch.tensor(rng.normal(0, 2, Vp))
    s = torch.tensor(rng.normal(0, 2, Vp))
    fkl = divergence(t, s, V, 0.0, 1.0).item()
    rkl = divergence(t, s, V, 1.0, 1.0).item()
    errs0, errs1 = [], []
    for e in (1e-2, 1e-3, 1e-4, 1e-5):
        errs0.append(abs(divergence(t, s, V, e, 1.0).item() / e - fkl))
        errs1.append(abs(divergence(t, s, V, 1 - e, 1.0).item() / e - rkl))
    check("JSD/beta -> forward KL", errs0[-1] < 1e-3 * fkl and errs0[0] > errs0[1] > errs0[2],
          f"fkl={fkl:.6f} errs={['%.2e' % x for x in errs0]}")
    check("JSD/(1-beta) -> reverse KL", errs1[-1] < 1e-3 * rkl and errs1[0] > errs1[1] > errs1[2],
          f"rkl={rkl:.6f} errs={['%.2e' % x for x in errs1]}")

    # 3. docs/algorithm.md's closed-form gradient w.r.t. student logits vs autograd
    worst = 0.0
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for tau in (0.5, 1.0, 2.0):
            sl = s.clone().requires_grad_(True)
            g_auto, = torch.autograd.grad(divergence(t, sl, V, beta, tau), sl)
            p = torch.softmax(t[:V] / tau, -1)
            q = torch.softmax(s[:V] / tau, -1)
            if beta == 0:
                g = (q - p) / tau
            else:
                gi = torch.log(q / p) if beta == 1 else (1 - beta) * torch.log(q / (beta * p + (1 - beta) * q))
                g = q * (gi - (q * gi).sum()) / tau
            worst = max(worst, float((g - g_auto[:V]).abs().max()), float(g_auto[V:].abs().max()))
    check("the closed-form dD/ds (docs/algorithm.md) vs autograd", worst < 1e-12, f"max err {worst:.2e}")

    # 4. gradcheck of the full loss w.r.t. every student parameter on a tiny model
    scfg = {"version": 3, "maxT": 8, "V": 11, "L": 1, "NH": 2, "C": 4, "Vp": 16}
    tcfg = {"version": 3, "maxT": 8, "V": 11, "L": 2, "NH": 2, "C": 6, "Vp": 16}
    student = random_params(scfg, 3)
    teacher = random_params(tcfg, 4)
    ex = [([1, 2], [3, 4, 5]), ([7], []), ([2, 3, 4, 5], [9])]
    batch = make_batch(ex, eos=10)
    for beta, tau, norm, sft in ((0.5, 1.0, "sequence", False), (0.0, 2.0, "token", False),
                                 (1.0, 0.5, "sequence", False), (0.0, 1.0, "token", True)):
        def f(*ps):
            return batch_loss(dict(zip(PARAM_NAMES, ps)), scfg, teacher, tcfg, batch, beta, tau, norm, sft)
        inputs = tuple(student[n].clone().requires_grad_(True) for n in PARAM_NAMES)
        res = torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
        check(f"gradcheck beta={beta} tau={tau} {norm} sft={sft}", res)

    # 5. masking: positions/targets of make_batch
    inp, tgt, mask = make_batch([([1, 2], [3]), ([5], [])], eos=9)
    check("make_batch", inp.tolist() == [[1, 2, 3], [5, 0, 0]] and tgt[0].tolist() == [2, 3, 9]
          and mask.tolist() == [[False, True, True], [True, False, False]] and tgt[1, 0].item() == 9)

    # 6. padding invariance: a row's loss does not depend on the other rows / padding
    ex2 = [([1, 2], [3, 4, 5])]
    l_alone = batch_loss(student, scfg, teacher, tcfg, make_batch(ex2, eos=10), 0.5, 1.0, "sequence").item()
    inp, tgt, mask = make_batch(ex2 + [([1, 2, 3, 4, 5, 6], [7])], eos=10)
    mask[1] = False
    inp[0, 5:] = 7
    per = divergence(gpt_forward(teacher, tcfg, inp), gpt_forward(student, scfg, inp), 11, 0.5, 1.0)
    l_pad = (per[0] * mask[0]).sum().item() / mask[0].sum().item()
    check("padding invariance", abs(l_alone - l_pad) < 1e-13, f"{l_alone} {l_pad}")

    # 7. checkpoint round trip (v3) and bf16 (v5) read
    with tempfile.TemporaryDirectory() as d:
        cfg = byte_cfg(1, 8, 2, 16)
        p = random_params(cfg, 5)
        save_checkpoint(os.path.join(d, "a.bin"), cfg, p)
        cfg2, p2 = load_checkpoint(os.path.join(d, "a.bin"))
        rt = all(torch.equal(p[n], p2[n]) for n in PARAM_NAMES) and cfg2 == cfg
        check("v3 save/load round trip", rt)
        raw = open(os.path.join(d, "a.bin"), "rb").read()
        hdr = np.frombuffer(raw[:1024], dtype="<i4").copy()
        hdr[1] = 5
        f32 = np.frombuffer(raw[1024:], dtype="<u4")
        bf = (f32 >> 16).astype("<u2")
        open(os.path.join(d, "b.bin"), "wb").write(hdr.tobytes() + bf.tobytes())
        _, p3 = load_checkpoint(os.path.join(d, "b.bin"))
        err = max(float(((p3[n] - p[n]).abs() / (p[n].abs() + 1e-30)).max()) for n in PARAM_NAMES)
        check("v5 bf16 load (truncation)", err < 2 ** -7, f"max rel err {err:.2e}")
        ok_zero = bool((p2["wte"][cfg["V"]:] == 0).all())
        check("padded wte rows zero", ok_zero)
    # 8. hand-written AdamW + clipping vs torch.optim.AdamW + clip_grad_norm_
    cfg = byte_cfg(1, 8, 2, 16)
    mine = random_params(cfg, 6)
    tp = {n: mine[n].clone().requires_grad_(True) for n in PARAM_NAMES}
    opt = torch.optim.AdamW([{"params": [tp[n] for n in PARAM_NAMES if n in DECAYED], "weight_decay": 0.1},
                             {"params": [tp[n] for n in PARAM_NAMES if n not in DECAYED], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.8, 0.99), eps=1e-7)
    mm = {n: torch.zeros_like(v) for n, v in mine.items()}
    vv = {n: torch.zeros_like(v) for n, v in mine.items()}
    g = torch.Generator().manual_seed(7)
    for t in range(1, 5):
        grads = {n: torch.randn(mine[n].shape, generator=g) for n in PARAM_NAMES}
        for n in PARAM_NAMES:
            tp[n].grad = grads[n].clone()
        tn = float(torch.nn.utils.clip_grad_norm_([tp[n] for n in PARAM_NAMES], 5.0))
        opt.step()
        grads, gn = clip_grads(grads, 5.0)
        adamw_step(mine, grads, mm, vv, t, 1e-2, 0.8, 0.99, 1e-7, 0.1)
    err = max(float((mine[n] - tp[n].detach()).abs().max()) for n in PARAM_NAMES)
    check("AdamW + clipping vs torch.optim", err < 1e-12 and abs(tn - gn) < 1e-9, f"max err {err:.2e}")
    print("ALL PASS" if ok else "SOME FAILED")
    return ok


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.selftest:
        sys.exit(0 if selftest() else 1)
    if a.init:
        cfg = byte_cfg(a.layers, a.channels, a.heads, a.context)
        save_checkpoint(a.init, cfg, random_params(cfg, a.seed, rich=not a.gpt2_init))
        return
    if a.model and not a.student:
        a.student = a.model
    if not a.student or not a.data or (not a.sft and not a.teacher):
        build_parser().error("need --student, --data and (unless --sft) --teacher")
    train(a)


if __name__ == "__main__":
    main()
