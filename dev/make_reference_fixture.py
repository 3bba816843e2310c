#!/usr/bin/python3
"""Writes tests/fixtures/reference/{teacher.bin,student.bin,data.jsonl,expected.json}
from the float64 reference in dev/reference_gkd.py, so C++ tests can compare without Python.

Usage: /usr/bin/python3 dev/make_reference_fixture.py [OUTDIR]
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_gkd as R  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "reference")

EXAMPLES = [
    {"prompt": "Q: 2+2=", "completion": " 4"},
    {"prompt": "a", "completion": "bcdefghijklmnopqrstu"},
    {"prompt": "The caf\u00e9 is", "completion": " open."},
    {"prompt": "Say hi to everyone!!", "completion": "x"},
    {"prompt": "abc", "completion": "defgh"},
    {"prompt": "Hello, ", "completion": "world! \u2192 ok"},
    {"prompt_ids": [72, 105, 0, 255], "completion_ids": [1, 128, 200, 33]},
]

GRAD_CASES = {(0.5, 1.0, "sequence"), (0.0, 2.0, "token"), (1.0, 0.5, "sequence")}

TRAJ_BASE = {"lambda": "0", "shuffle": "0", "steps": "6", "batch": "3", "lr": "1e-2",
             "grad-clip": "0", "weight-decay": "0", "warmup": "0", "lr-schedule": "constant",
             "adam-beta1": "0.9", "adam-beta2": "0.999", "adam-eps": "1e-8", "seed": "0"}
TRAJS = [
    {"beta": "0.5", "loss-temperature": "1", "loss-norm": "sequence"},
    {"beta": "0", "loss-temperature": "0.5", "loss-norm": "token"},
    {"beta": "1", "loss-temperature": "2", "loss-norm": "sequence"},
    {"beta": "0.9", "loss-temperature": "1", "loss-norm": "token",
     "weight-decay": "0.1", "warmup": "2", "lr-schedule": "cosine"},
]


def flat(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def run_flags(flags, sft=False):
    argv = []
    for k, v in flags.items():
        argv += [f"--{k}", v]
    argv += ["--student", os.path.join(OUT, "student.bin"), "--data", os.path.join(OUT, "data.jsonl")]
    argv += ["--sft"] if sft else ["--teacher", os.path.join(OUT, "teacher.bin")]
    a = R.build_parser().parse_args(argv)
    return R.train(a, out=None)


def main():
    os.makedirs(OUT, exist_ok=True)
    np.random.seed(1234)
    torch.manual_seed(1234)
    tcfg = R.byte_cfg(L=2, C=32, NH=4, maxT=64)
    scfg = R.byte_cfg(L=1, C=16, NH=2, maxT=64)
    assert tcfg["Vp"] == 384 and scfg["Vp"] == 384
    R.save_checkpoint(os.path.join(OUT, "teacher.bin"), tcfg, R.random_params(tcfg, 1001))
    R.save_checkpoint(os.path.join(OUT, "student.bin"), scfg, R.random_params(scfg, 2002))
    with open(os.path.join(OUT, "data.jsonl"), "w", encoding="utf-8") as f:
        for ex in EXAMPLES:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")

    # reload everything from the files, exactly as a consumer would
    tcfg, teacher = R.load_checkpoint(os.path.join(OUT, "teacher.bin"))
    scfg, student = R.load_checkpoint(os.path.join(OUT, "student.bin"))
    data = R.load_data(os.path.join(OUT, "data.jsonl"), maxT=64)
    first = data[:4]
    batch = R.make_batch(first)
    inp, tgt, mask = batch

    with torch.no_grad():
        t_logits = R.gpt_forward(teacher, tcfg, inp)
        s_logits = R.gpt_forward(student, scfg, inp)

    cases = []
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for tau in (0.5, 1.0, 2.0):
            for norm in ("sequence", "token"):
                if (beta, tau, norm) in GRAD_CASES:
                    loss, grads = R.loss_and_grads(student, scfg, teacher, tcfg, batch, beta, tau, norm)
                    c = {"beta": beta, "tau": tau, "loss_norm": norm, "loss": loss,
                         "grads": {n: flat(grads[n]) for n in R.PARAM_NAMES}}
                else:
                    loss = R.reduce_loss(R.divergence(t_logits, s_logits, scfg["V"], beta, tau),
                                         mask, norm).item()
                    c = {"beta": beta, "tau": tau, "loss_norm": norm, "loss": loss}
                cases.append(c)

    sft_loss, sft_grads = R.loss_and_grads(student, scfg, None, None, batch, 0, 1, "sequence", sft=True)
    sft_tok = R.reduce_loss(R.cross_entropy(s_logits, tgt, scfg["V"]), mask, "token").item()

    trajs = []
    for tr in TRAJS:
        flags = dict(TRAJ_BASE)
        flags.update(tr)
        log = run_flags(flags)
        trajs.append({"flags": flags, "losses": [r["loss"] for r in log],
                      "tokens": [r["tokens"] for r in log], "grad_norms": [r["grad_norm"] for r in log],
                      "lrs": [r["lr"] for r in log]})
    sft_flags = dict(TRAJ_BASE)
    sft_flags["loss-norm"] = "sequence"
    sft_log = run_flags(sft_flags, sft=True)

    # example 0 alone: raw logits, to isolate forward-pass bugs
    inp0, _, _ = R.make_batch(data[:1])
    with torch.no_grad():
        fw_t = R.gpt_forward(teacher, tcfg, inp0)[0]
        fw_s = R.gpt_forward(student, scfg, inp0)[0]

    expected = {
        "description": "float64 PyTorch reference (dev/reference_gkd.py); regenerate with "
                       "/usr/bin/python3 dev/make_reference_fixture.py",
        "teacher": {k: tcfg[k] for k in ("maxT", "V", "Vp", "L", "NH", "C")},
        "student": {k: scfg[k] for k in ("maxT", "V", "Vp", "L", "NH", "C")},
        "num_examples": len(data),
        "first_batch": {
            "examples": [0, 1, 2, 3],
            "input_ids": [inp[b, :int(len(p) + len(c))].tolist() for b, (p, c) in enumerate(first)],
            "target_positions": [[int(i) for i in mask[b].nonzero().reshape(-1)] for b in range(4)],
            "tokens": int(mask.sum()),
        },
        "forward": {
            "example": 0,
            "input_ids": inp0[0].tolist(),
            "teacher_logits": flat(fw_t),
            "student_logits": flat(fw_s),
        },
        "cases": cases,
        "sft": {"loss_norm": "sequence", "loss": sft_loss, "loss_token": sft_tok,
                "grads": {n: flat(sft_grads[n]) for n in R.PARAM_NAMES}},
        "trajectories": trajs,
        "sft_trajectory": {"flags": sft_flags, "losses": [r["loss"] for r in sft_log],
                           "tokens": [r["tokens"] for r in sft_log],
                           "grad_norms": [r["grad_norm"] for r in sft_log]},
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, separators=(",", ":"))
        f.write("\n")

    total = 0
    print(f"fixture in {OUT}:")
    for fn in ("teacher.bin", "student.bin", "data.jsonl", "expected.json"):
        sz = os.path.getsize(os.path.join(OUT, fn))
        total += sz
        print(f"  {fn:14s} {sz:9d} bytes")
    print(f"  total          {total:9d} bytes")
    print(f"first batch: {int(mask.sum())} target tokens, rows {[int(m.sum()) for m in mask]}")
    for c in cases:
        if "grads" in c:
            gn = sum(sum(x * x for x in g) for g in c["grads"].values()) ** 0.5
            print(f"  beta={c['beta']} tau={c['tau']} {c['loss_norm']}: loss {c['loss']:.10f} |grad| {gn:.6f}")
    print(f"  sft: loss {sft_loss:.10f} (token norm {sft_tok:.10f})")
    print("loss range over cases: %.4g .. %.4g" % (min(c["loss"] for c in cases), max(c["loss"] for c in cases)))
    for t in trajs:
        print(f"  traj beta={t['flags']['beta']} tau={t['flags']['loss-temperature']} "
              f"{t['flags']['loss-norm']}: " + " ".join(f"{x:.5f}" for x in t["losses"]))


if __name__ == "__main__":
    main()
