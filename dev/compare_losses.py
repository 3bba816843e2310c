#!/usr/bin/python3
"""Compares per-step losses of gkd runs (DIR/metrics.jsonl) against reference runs.

Usage: compare_losses.py [--tol0 1e-4] [--tol 2e-3] LABEL GKD_METRICS REF_JSONL [LABEL ...]
Training lines are matched by order (lines with an "eval" key, or without "loss", are skipped).
Relative error = |gkd - ref| / max(|ref|, 1e-12). Exit status 1 if any run fails.
"""
import json
import sys


def read_steps(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if "eval" in obj or "loss" not in obj:
                continue
            out.append(obj)
    return out


def main(argv):
    tol0, tol = 1e-4, 2e-3
    while argv and argv[0].startswith("--"):
        if argv[0] == "--tol0":
            tol0 = float(argv[1])
        elif argv[0] == "--tol":
            tol = float(argv[1])
        else:
            sys.exit(f"unknown option {argv[0]}")
        argv = argv[2:]
    if len(argv) % 3:
        sys.exit(__doc__)
    failures = 0
    print(f"{'run':34s} {'steps':>5s} {'ref loss[0]':>13s} {'gkd loss[0]':>13s} {'relerr[0]':>10s} "
          f"{'max relerr':>10s} {'tokens':>6s}  status")
    for i in range(0, len(argv), 3):
        label, gpath, rpath = argv[i:i + 3]
        why = []
        try:
            g = read_steps(gpath)
        except (OSError, ValueError) as e:
            g, why = [], [f"cannot read {gpath}: {e}"]
        try:
            r = read_steps(rpath)
        except (OSError, ValueError) as e:
            r, why = [], why + [f"cannot read {rpath}: {e}"]
        n = min(len(g), len(r))
        errs = [abs(float(g[k]["loss"]) - r[k]["loss"]) / max(abs(r[k]["loss"]), 1e-12) for k in range(n)]
        tok_ok = all("tokens" not in g[k] or int(g[k]["tokens"]) == r[k]["tokens"] for k in range(n))
        if not why:
            if len(g) != len(r):
                why.append(f"{len(g)} gkd steps vs {len(r)} reference steps")
            if n == 0:
                why.append("no steps")
            elif errs[0] >= tol0:
                why.append(f"step 0 rel err {errs[0]:.2e} >= {tol0:g}")
            if n and max(errs) >= tol:
                why.append(f"max rel err {max(errs):.2e} >= {tol:g} (training line {errs.index(max(errs))}, 0-based)")
            if not tok_ok:
                bad = [k for k in range(n) if "tokens" in g[k] and int(g[k]["tokens"]) != r[k]["tokens"]]
                why.append("tokens differ at steps " + ",".join(map(str, bad)) +
                           f" (gkd {g[bad[0]]['tokens']} vs ref {r[bad[0]]['tokens']})")
        status = "ok" if not why else "FAIL: " + "; ".join(why)
        failures += bool(why)
        if n:
            print(f"{label:34s} {n:5d} {r[0]['loss']:13.8f} {float(g[0]['loss']):13.8f} {errs[0]:10.2e} "
                  f"{max(errs):10.2e} {'same' if tok_ok else 'DIFF':>6s}  {status}")
        else:
            print(f"{label:34s} {n:5d} {'-':>13s} {'-':>13s} {'-':>10s} {'-':>10s} {'-':>6s}  {status}")
    total = len(argv) // 3
    print(f"{total - failures}/{total} runs within tolerance (step 0 < {tol0:g}, all steps < {tol:g})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
