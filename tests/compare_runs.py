#!/usr/bin/env python3
"""tests/compare_runs.py A B TOL STEPS — two training runs' folders agree: their metrics'
losses step by step and their model.bin parameters, each within TOL relative (the model as
||a - b|| / ||b||), with STEPS steps in each. Prints one line; exit status 0 when they agree.
Used by tests/mpi_test.sh (ranks against one process) and tests/gpu_emulated_test.sh."""
import json
import math
import struct
import sys

a, b, tol, steps = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])


def losses(d):
    return [json.loads(line)["loss"] for line in open(f"{d}/metrics.jsonl") if '"eval"' not in line]


def params(d):
    raw = open(f"{d}/model.bin", "rb").read()[1024:]
    return struct.unpack(f"<{len(raw) // 4}f", raw)


la, lb = losses(a), losses(b)
worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(la, lb)) if la and len(la) == len(lb) else math.inf
pa, pb = params(a), params(b)
rel = math.sqrt(sum((x - y) ** 2 for x, y in zip(pa, pb)) / sum(y * y for y in pb)) if len(pa) == len(pb) else math.inf
print(f"{len(la)} steps, worst loss difference {worst:.1e}, model difference {rel:.1e} (limit {tol:.0e})")
sys.exit(0 if len(la) == steps and worst <= tol and rel <= tol else 1)
