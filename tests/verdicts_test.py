#!/usr/bin/env python3
"""dev/verdicts.py (the study's verdicts) against tests/fixtures/verdicts.json, the cases
that tests/test_gkd.cpp also feeds cli/verdicts.h (the default experiment's): the same
words, the same lines byte for byte, and intervals rebuilt from a printed t table.
Prints "verdicts: N passed, M failed"; exit status 1 on any failure."""
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
from verdicts import compare_paired, seeds_needed, t_critical, verdict_line  # noqa: E402

passed = failed = 0


def check(what, ok):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", file=sys.stderr)


with open(os.path.join(ROOT, "tests", "fixtures", "verdicts.json")) as f:
    fixture = json.load(f)
table = {int(k): v for k, v in fixture["t_table"].items()}
for df, t in table.items():
    check(f"t(0.975, {df}) = {t} within the table's 6 decimals", abs(t_critical(0.95, df) - t) < 1e-6 * t)
for case in fixture["cases"]:
    d = case["differences"]
    c = compare_paired(d)
    n = len(d)
    check(f"{case['why']}: the word ({c['word']})", c["word"] == case["word"])
    line = verdict_line(case["a"], case["b"], c, case["unit"], seed=case.get("seed", "seed"))
    check(f"{case['why']}: the line\n  got      {line}\n  expected {case['line']}", line == case["line"])
    mean = sum(d) / n
    check(f"{case['why']}: the mean", abs(c["mean"] - mean) < 1e-12)
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        half = table[n - 1] * sd / math.sqrt(n)
        check(f"{case['why']}: the interval [{c['lo']}, {c['hi']}] from the table's t",
              abs(c["lo"] - (mean - half)) <= 1e-6 * half + 1e-12 and abs(c["hi"] - (mean + half)) <= 1e-6 * half + 1e-12)
    else:
        check(f"{case['why']}: no interval from one seed", math.isnan(c["lo"]) and math.isnan(c["hi"]))
# the sample size, as tests/test_gkd.cpp checks the C++ twin's: R's power.t.test(delta = 1,
# sd = 1, power = 0.8, type = "paired") gives n = 9.94; at 50% power, the first n whose
# interval's half-width falls to delta
check("seeds_needed(1, 1, 0.8) = 10", seeds_needed(1.0, 1.0, 0.8) == 10)
for sd in (0.3, 0.5, 1.0, 2.5):
    n = seeds_needed(1.0, sd, 0.5)
    half = lambda k: t_critical(0.95, k - 1) * sd / math.sqrt(k)  # noqa: E731
    check(f"seeds_needed(1, {sd}, 0.5) = {n}: the first n whose half-width is within 1",
          n >= 2 and half(n) <= 1.0 and (n == 2 or half(n - 1) > 1.0) and seeds_needed(1.0, sd, 0.8) >= n)
check("no difference to find: no n", seeds_needed(0.0, 1.0, 0.8) == 0 and seeds_needed(1.0, 0.0, 0.8) == 0)
print(f"verdicts: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
