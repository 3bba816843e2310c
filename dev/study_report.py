#!/usr/bin/env python3
"""Turns the runs of train_gpt2_gkd.sh into its results: study.md (mean ± std over seeds,
and verdicts with 95% t intervals from dev/verdicts.py, over training seeds and, on repair,
over data seeds),
the gnuplot data and script for accuracy.png and curves.png, and metrics/ (a copy of every
run's raw metrics.jsonl, which git does not keep, and its test evaluation). Standard library only."""
import argparse
import json
import math
import os
import shutil
import subprocess

from cpuinfo import cpu_model_and_isa  # dev/cpuinfo.py, beside this script
from verdicts import compare_paired, seeds_needed, verdict_line  # dev/verdicts.py: the twin of the experiment's cli/verdicts.h

TASKS = ["repair", "walks", "arithmetic", "words"]  # those that the runs folder holds
CHECKED = ("walks", "repair")  # scored by a checker: their valid steps are a column
LABELS = {
    "teacher": "teacher (SFT)",
    "warm-start": "student, warm start (SFT)",
    "sft": "SFT",
    "seqkd": "SeqKD",
    "supervised-kd": "supervised KD (lambda 0, FKL)",
    "supervised-rkl": "supervised KD (lambda 0, RKL)",
    "mixed": "mixed (lambda 0.5, FKL)",
    "on-policy-fkl": "on-policy FKL",
    "on-policy-rkl": "on-policy RKL",
    "on-policy-jsd0.1": "on-policy JSD(0.1)",
    "on-policy-jsd0.5": "on-policy JSD(0.5)",
    "on-policy-jsd0.9": "on-policy JSD(0.9)",
    "supervised-rkl-top8": "supervised RKL, teacher top-8 + tail",
    "on-policy-rkl-top8": "on-policy RKL, teacher top-8 + tail",
    "supervised-rkl-top64": "supervised RKL, teacher top-64 + tail",
    "on-policy-rkl-top64": "on-policy RKL, teacher top-64 + tail",
    "supervised-kd-top64": "supervised KD (FKL), live top-64 + tail",
    "supervised-kd-cache64": "supervised KD (FKL), cached top-64 + tail",
    "on-policy-srkl": "on-policy sampled-token RKL",
    "supervised-tv": "supervised TV (lambda 0)",
    "on-policy-tv": "on-policy TV (lambda 1)",
    "supervised-kd-slips": "supervised KD (FKL) on injected slips",
    "supervised-rkl-slips": "supervised KD (RKL) on injected slips",
}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean_std(values):
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def pct(values):
    m, s = mean_std([100 * v for v in values])
    return f"{m:.1f} ± {s:.1f}" if len(values) > 1 else f"{m:.1f}"


def differences(a, b, key):
    """The per-seed differences a - b of a metric, in points."""
    return [100 * (x[key] - y[key]) for x, y in zip(a, b)]


def verdict(res, a, b, key, unit):
    """The verdict line on method a against method b, res[m] being m's evaluations per seed
    (dev/verdicts.py: the mean difference, its 95% t interval, and the word it gives)."""
    return verdict_line(LABELS[a], LABELS[b], compare_paired(differences(res[a], res[b], key)), unit)


def findings(task, res, val, seeds):
    """Computed comparisons (paired by seed, test accuracy): the on-policy method best on
    the validation split (greedy accuracy after the last step, the one validation score the
    runs log) against the SFT control; on-policy against supervised KD at the same
    divergence (reverse KL, forward KL); supervised KD against the control; and the same
    pairs' acceptance rates as the teacher's speculative draft. Each: the mean difference,
    its 95% t interval, and "beats" or "loses to" only when the interval excludes zero."""
    on_policy = [m for m in res if m.startswith("on-policy")]
    if not on_policy or "sft" not in res:
        return []
    best = max(on_policy, key=lambda m: val.get(m, -1))
    # on-policy against supervised at the same divergence: what on-policy data adds
    pairs = [(best, "sft"), ("on-policy-rkl", "supervised-rkl"), ("on-policy-fkl", "supervised-kd"),
             ("supervised-rkl", "sft"), ("supervised-kd", "sft"),
             # repair's control: the same error states covered offline, slips injected by hand
             ("on-policy-rkl", "supervised-rkl-slips"), ("on-policy-fkl", "supervised-kd-slips"),
             ("supervised-rkl-slips", "supervised-rkl"), ("supervised-kd-slips", "supervised-kd")]
    out = [f"Computed ({len(seeds)} seed(s), paired by seed; the mean difference and its 95% interval over the "
           f"training seeds; the on-policy method best on validation is {LABELS[best]}, "
           f"{val.get(best, float('nan')):.1f}% greedy):", ""]
    for a, b in pairs:
        if a in res and b in res:
            out.append(f"- {verdict(res, a, b, 'sample_accuracy', 'points sampled at T=1')}")
            out.append(f"- {verdict(res, a, b, 'accuracy', 'points greedy')}")
    # as the teacher's speculative draft: the fraction of drafts the teacher accepts
    if all("draft_acceptance_rate" in e for m in res for e in res[m]):
        out += ["", "As the teacher's speculative draft (K = 4, T = 1; acceptance in points, paired by seed):", ""]
        for a, b in [("on-policy-rkl", "supervised-rkl"), ("on-policy-fkl", "supervised-kd"), (best, "sft"),
                     ("supervised-rkl", "sft")]:
            if a in res and b in res:
                out.append(f"- {verdict(res, a, b, 'draft_acceptance_rate', 'points of acceptance')}")
    return out + [""]


def gap_table(task, rows, res):
    """The on-policy gap of each student (gkd eval --teacher): KL(teacher||student) per token
    on the data's completions and on the student's own samples, before and after their first
    invalid step; how many samples slip, and how many of those are still valid (repaired)."""
    def cell(evals, key, scale=1.0, digits=3):
        v = [e[key] * scale for e in evals if key in e]
        if not v:
            return "-"
        m, s = mean_std(v)
        return f"{m:.{digits}f} ± {s:.{digits}f}" if len(v) > 1 else f"{m:.{digits}f}"
    lines = [f"The on-policy gap ({task}, test, T=1): KL(teacher‖student) per token on the data's completions, and "
             "on the student's own samples before and after their first invalid step; the samples with one, and of "
             "those the share still valid (repaired).", "",
             "| method | on the data | samples, before the first slip | after it | samples that slip (%) | "
             "repaired (%) |", "|---|---|---|---|---|---|"]
    for m in rows:
        e = res[m]
        lines.append(f"| {LABELS[m]} | {cell(e, 'data_forward_kl')} | {cell(e, 'sample_forward_kl_before_slip')} | "
                     f"{cell(e, 'sample_forward_kl_after_slip')} | {cell(e, 'sample_slip_rate', 100, 1)} | "
                     f"{cell(e, 'sample_recovered', 100, 1)} |")
    return lines + [""]


def train_seconds(path):
    """A run's training time: the sum of its steps' wall times (evaluations excluded)."""
    return sum(j["step_ms"] for j in read_lines(path) if "step_ms" in j) / 1000


def signal_section(runs, methods, seeds, out):
    """The teacher-signal rows on walks (docs/algorithm.md §1.4-1.6): a table beside the
    full-vocabulary references, and verdicts computed from the numbers, paired by seed."""
    tdir = os.path.join(runs, "walks")
    refs = ["supervised-kd", "supervised-rkl", "on-policy-fkl", "on-policy-rkl"]
    have = [m for m in refs + methods
            if all(os.path.isfile(os.path.join(tdir, f"seed{s}", m, "test.json")) for s in seeds)]
    if not any(m in methods for m in have):
        return []
    res, secs = {}, {}
    for m in have:
        res[m] = [read_json(os.path.join(tdir, f"seed{s}", m, "test.json")) for s in seeds]
        secs[m] = [train_seconds(os.path.join(tdir, f"seed{s}", m, "metrics.jsonl")) for s in seeds]
        for s in seeds:
            if m in methods:
                dest = os.path.join(out, "metrics", "walks", f"seed{s}")
                os.makedirs(dest, exist_ok=True)
                shutil.copy(os.path.join(tdir, f"seed{s}", m, "metrics.jsonl"), os.path.join(dest, f"{m}.jsonl"))
                shutil.copy(os.path.join(tdir, f"seed{s}", m, "test.json"), os.path.join(dest, f"{m}-test.json"))
    lines = ["## Teacher signals (walks)", "",
             "The same protocol as above (the same warm starts, steps and test split), with the teacher's signal cut "
             "down or the objective changed: the divergence over the teacher's top-K tokens plus one tail bucket, "
             "supervised KD from the offline cache (no teacher loaded), the sampled-token reverse KL (a policy "
             "gradient on the log-ratio of the sampled tokens alone), and total variation, whose complement is the "
             "draft's acceptance rate. The first four rows are the full-vocabulary runs of the table above. Training "
             "time: the sum of the steps' wall times, evaluations excluded.", "",
             "| method | greedy | sampled (T=1) | valid steps (T=1) | draft acceptance (K=4) | expected acceptance "
             "sum min(p,q) | training time (s) |", "|---|---|---|---|---|---|---|"]
    for m in have:
        e = res[m]
        t = mean_std(secs[m])
        lines.append(f"| {LABELS[m]} | {pct([x['accuracy'] for x in e])} | {pct([x['sample_accuracy'] for x in e])} | "
                     f"{pct([x['sample_similarity'] for x in e])} | {pct([x['draft_acceptance_rate'] for x in e])}% | "
                     f"{pct([x['draft_expected_acceptance'] for x in e])}% | {t[0]:.1f} ± {t[1]:.1f} |")
    lines.append("")
    cache_ms = os.path.join(tdir, "teacher", "cache64.ms")
    cache_bin = os.path.join(tdir, "teacher", "cache64.bin")
    if os.path.isfile(cache_ms) and os.path.isfile(cache_bin):
        with open(cache_ms) as f:
            ms = int(f.read().strip() or 0)
        lines += [f"The cache (`gkd teacher-cache --top-k 64` over the training split): "
                  f"{os.path.getsize(cache_bin) / 1e6:.1f} MB, written in {ms / 1000:.1f} s, once for every seed.", ""]

    def compare(a, b, key="sample_accuracy", unit="points sampled at T=1"):
        return verdict(res, a, b, key, unit)

    out_lines = [f"Computed ({len(seeds)} seed(s), paired by seed; the mean difference and its 95% interval over the "
                 "training seeds):", ""]
    for k in ("", "-top8", "-top64"):
        a, b = "on-policy-rkl" + k, "supervised-rkl" + k
        if a in res and b in res:
            out_lines.append(f"- {compare(a, b)}")
            out_lines.append(f"- {compare(a, b, 'accuracy', 'points greedy')}")
    if "supervised-kd-cache64" in res and "supervised-kd-top64" in res:
        worst = 0.0
        for s in seeds:
            la = [j["loss"] for j in read_lines(os.path.join(tdir, f"seed{s}", "supervised-kd-cache64", "metrics.jsonl")) if "loss" in j]
            lb = [j["loss"] for j in read_lines(os.path.join(tdir, f"seed{s}", "supervised-kd-top64", "metrics.jsonl")) if "loss" in j]
            worst = max([worst] + [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(la, lb)])
        out_lines.append(f"- {compare('supervised-kd-cache64', 'supervised-kd-top64')}; the training losses differ by "
                         f"at most {100 * worst:.3f}% relative at any step (fp16 log-probs)")
        out_lines.append(f"- {compare('supervised-kd-cache64', 'supervised-kd-top64', 'draft_acceptance_rate', 'points of acceptance')}")
    if "supervised-kd-top64" in res and "supervised-kd" in res:
        out_lines.append(f"- {compare('supervised-kd-top64', 'supervised-kd')}")
    if "on-policy-srkl" in res and "on-policy-rkl" in res:
        ratio = mean_std([x / y for x, y in zip(secs["on-policy-srkl"], secs["on-policy-rkl"])])
        out_lines.append(f"- {compare('on-policy-srkl', 'on-policy-rkl')}; its training time is "
                         f"{ratio[0]:.2f} ± {ratio[1]:.2f} times the full reverse KL's")
    for a, b in [("supervised-tv", "supervised-kd"), ("supervised-tv", "supervised-rkl"), ("on-policy-tv", "on-policy-rkl"),
                 ("on-policy-tv", "on-policy-fkl")]:
        if a in res and b in res:
            out_lines.append(f"- as a draft: {compare(a, b, 'draft_acceptance_rate', 'points of acceptance')}")
            out_lines.append(f"- {compare(a, b)}")
    return lines + out_lines + [""]


def data_seed_section(runs, data_seeds, methods, out):
    """Repair across data seeds: per data seed D, its own split and teacher, then training
    seed 0's warm start and the headline's methods (data seed 0: the main runs' seed 0).
    Paired by data seed, the interval covers the split, the teacher and the training seed."""
    if not data_seeds:
        return []
    dirs = [("0", os.path.join(runs, "repair"))] + [(d, os.path.join(runs, f"repair-data{d}")) for d in data_seeds]
    res = {m: [] for m in methods}
    teachers = []
    for d, tdir in dirs:
        teachers.append(read_json(os.path.join(tdir, "teacher", "test.json")))
        if d != "0":
            shutil.copy(os.path.join(tdir, "teacher", "test.json"),
                        os.path.join(out, "metrics", f"repair-data{d}-teacher-test.json"))
        for m in methods:
            rdir = os.path.join(tdir, "seed0", m)
            res[m].append(read_json(os.path.join(rdir, "test.json")))
            if d != "0":
                dest = os.path.join(out, "metrics", f"repair-data{d}", "seed0")
                os.makedirs(dest, exist_ok=True)
                shutil.copy(os.path.join(rdir, "metrics.jsonl"), os.path.join(dest, f"{m}.jsonl"))
                shutil.copy(os.path.join(rdir, "test.json"), os.path.join(dest, f"{m}-test.json"))
    lines = ["## Across data seeds (repair)", "",
             f"The headline's comparison with the data drawn again: for each of {len(dirs)} data seeds, its own "
             "training, validation and test splits and its own teacher (SFT from its own initialisation), then "
             "training seed 0's warm start and each method from it, as above. Data seed 0 is the table above "
             "(its seed 0). Test accuracy sampled at T=1 (%); the last column is on-policy minus supervised.", "",
             "| data seed | teacher | " + " | ".join(LABELS[m] for m in methods) + " | difference (points) |",
             "|---|---|" + "---|" * len(methods) + "---|"]
    # the headline: on-policy (methods[-1]) minus supervised (methods[-2]), sampled
    headline = differences(res[methods[-1]], res[methods[-2]], "sample_accuracy")
    for i, (d, _) in enumerate(dirs):
        cells = " | ".join(f"{100 * res[m][i]['sample_accuracy']:.1f}" for m in methods)
        lines.append(f"| {d} | {100 * teachers[i]['sample_accuracy']:.1f} | {cells} | {headline[i]:+.1f} |")
    lines += ["", f"Computed ({len(dirs)} data seeds, paired by data seed; the interval covers the data split, the "
              "teacher and the training seed):", ""]
    pairs = [(methods[-1], methods[-2])] + [(m, methods[0]) for m in methods[1:]]
    for a, b in pairs:
        for key, unit in (("sample_accuracy", "points sampled at T=1"), ("accuracy", "points greedy")):
            c = compare_paired(differences(res[a], res[b], key))
            lines.append(f"- {verdict_line(LABELS[a], LABELS[b], c, unit, seed='data seed')}")
    c = compare_paired(headline)
    if c["n"] > 1 and c["sd"] > 0:
        lines += ["", f"Across data seeds, {LABELS[methods[-1]]} minus {LABELS[methods[-2]]} (sampled) varies with a "
                  f"standard deviation of {c['sd']:.2f} points: {len(dirs)} data seeds resolve {c['hi'] - c['mean']:.2f} "
                  f"points, and a true 1-point difference would need {seeds_needed(1.0, c['sd'], 0.5)} data seeds to be "
                  f"called when observed at its size, {seeds_needed(1.0, c['sd'], 0.8)} to be called with 80% "
                  "probability."]
    return lines + [""]


def machine_line():
    """What the numbers depend on: the build (commit), the CPU and its widest vector ISA, the threads."""
    cpu, isa = cpu_model_and_isa()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    except OSError:
        commit = "?"
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    return f"Commit {commit}; {cpu} ({isa}), {threads} OpenMP threads, OpenBLAS."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--steps", required=True)
    ap.add_argument("--seconds", type=int, required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--rl-alphas", default="")
    ap.add_argument("--signal-methods", default="")
    ap.add_argument("--slip-methods", default="")
    ap.add_argument("--data-seeds", default="")
    ap.add_argument("--data-seed-methods", default="sft supervised-rkl on-policy-rkl")
    a = ap.parse_args()
    methods, seeds = a.methods.split(), a.seeds.split()
    os.makedirs(os.path.join(a.out, "metrics"), exist_ok=True)

    lines = [f"# GKD study ({a.mode}): {len(seeds)} seed(s), {a.steps} steps per method from the same "
             f"warm-started student, {a.seconds // 60} min {a.seconds % 60} s in all", "", machine_line(), ""]
    bars = {}    # task -> [(method, greedy mean, std, sampled mean, std)]
    results = {}  # task -> method -> [test evaluation per seed]
    curves = {}  # task -> method -> [(step, mean validation accuracy)]
    for task in TASKS:
        tdir = os.path.join(a.runs, task)
        if not os.path.isdir(tdir):
            continue
        teacher = read_json(os.path.join(tdir, "teacher", "test.json"))
        rows = ["warm-start"] + methods + (a.slip_methods.split() if task == "repair" else [])
        sim = task == "words"
        what = {"walks": "the whole walk valid (a checker, not the reference)", "words": "exact match of the whole "
                "completion", "arithmetic": "exact match of the final answer",
                "repair": "the whole chain valid once its undos are applied (a checker)"}[task]
        lines += [f"## {task}", "",
                  f"Held-out test accuracy (%): {what}, greedy and at sampling temperature 1 (the mean over 4 samples "
                  "per example); mean ± std over seeds." +
                  (" Similarity: 1 - edit distance / length, greedy." if sim else "") +
                  (" Valid steps: the fraction of the 7 steps valid given all before them, sampled." if task == "walks"
                   else " Valid steps: the fraction of the 8 letters left after the undos that are valid steps, "
                   "sampled." if task == "repair" else "") +
                  " On the student's own samples: the teacher's NLL per token, KL(teacher‖student) and "
                  "KL(student‖teacher) per token, and the distinct samples among 4 per example. As the teacher's "
                  "speculative draft (K = 4 tokens, T = 1): the fraction of drafted tokens the teacher accepts, and "
                  "the tokens per teacher forward pass (plain sampling: 1).", ""]
        head = ("| method | greedy | sampled (T=1) |" + (" similarity (greedy) |" if sim else "") +
                (" valid steps (T=1) |" if task in CHECKED else "") +
                " JSD(0.5) to teacher | teacher NLL of samples | FKL on samples | RKL on samples | distinct samples |"
                " draft acceptance (K=4) | tokens per teacher forward |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        lines.append(f"| {LABELS['teacher']} | {100 * teacher['accuracy']:.1f} | {100 * teacher['sample_accuracy']:.1f} |" +
                     (f" {teacher['similarity']:.3f} |" if sim else "") +
                     (f" {100 * teacher['sample_similarity']:.1f} |" if task in CHECKED else "") +
                     f" - | - | - | - | {100 * teacher.get('sample_diversity', float('nan')):.0f}% | - | - |")
        shutil.copy(os.path.join(tdir, "teacher", "test.json"), os.path.join(a.out, "metrics", f"{task}-teacher-test.json"))
        bars[task] = []
        curves[task] = {}
        for m in rows:
            evals = []
            per_step = {}
            for s in seeds:
                rdir = os.path.join(tdir, f"seed{s}", m)
                evals.append(read_json(os.path.join(rdir, "test.json")))
                dest = os.path.join(a.out, "metrics", task, f"seed{s}")
                os.makedirs(dest, exist_ok=True)
                shutil.copy(os.path.join(rdir, "metrics.jsonl"), os.path.join(dest, f"{m}.jsonl"))
                shutil.copy(os.path.join(rdir, "test.json"), os.path.join(dest, f"{m}-test.json"))
                for j in read_lines(os.path.join(rdir, "metrics.jsonl")):
                    if "eval" in j:
                        per_step.setdefault(j["step"] + 1, []).append(j["eval"]["accuracy"])
            g = [e["accuracy"] for e in evals]
            smp = [e["sample_accuracy"] for e in evals]
            div = mean_std([e["divergence"] for e in evals])
            row = f"| {LABELS[m]} | {pct(g)} | {pct(smp)} |"
            if sim:
                sm = mean_std([e["similarity"] for e in evals])
                row += f" {sm[0]:.3f} |"
            if task in CHECKED:
                row += f" {pct([e['sample_similarity'] for e in evals])} |"
            row += f" {div[0]:.4f} |"
            for k in ("sample_teacher_nll", "sample_forward_kl", "sample_reverse_kl"):
                row += f" {mean_std([e.get(k, float('nan')) for e in evals])[0]:.3f} |"
            row += f" {pct([e.get('sample_diversity', float('nan')) for e in evals])}% |"
            row += f" {pct([e.get('draft_acceptance_rate', float('nan')) for e in evals])}% |"
            tpf = mean_std([e.get('draft_tokens_per_target_forward', float('nan')) for e in evals])
            row += f" {tpf[0]:.2f} ± {tpf[1]:.2f} |" if len(evals) > 1 else f" {tpf[0]:.2f} |"
            lines.append(row)
            results.setdefault(task, {})[m] = evals
            if m != "warm-start":
                bars[task].append((m, *mean_std([100 * v for v in g]), *mean_std([100 * v for v in smp])))
                curves[task][m] = sorted((k, 100 * sum(v) / len(v)) for k, v in per_step.items())
        lines.append("")
        lines += gap_table(task, rows, results[task])
        lines += findings(task, results[task], {m: c[-1][1] for m, c in curves[task].items() if c}, seeds)
    lines += data_seed_section(a.runs, a.data_seeds.split(), a.data_seed_methods.split(), a.out)
    lines += signal_section(a.runs, a.signal_methods.split(), seeds, a.out)
    rl = []  # (alpha, greedy accuracy, sampled accuracy = mean reward at T=1, divergence)
    for alpha in a.rl_alphas.split():
        rdir = os.path.join(a.runs, "arithmetic", "seed0", f"rl-alpha{alpha}")
        e = read_json(os.path.join(rdir, "test.json"))
        rl.append((alpha, 100 * e["accuracy"], 100 * e["sample_accuracy"], e["divergence"]))
        dest = os.path.join(a.out, "metrics", "arithmetic", "seed0")
        os.makedirs(dest, exist_ok=True)
        shutil.copy(os.path.join(rdir, "metrics.jsonl"), os.path.join(dest, f"rl-alpha{alpha}.jsonl"))
        shutil.copy(os.path.join(rdir, "test.json"), os.path.join(dest, f"rl-alpha{alpha}-test.json"))
    if rl:
        lines += ["## RL + GKD (arithmetic)", "",
                  "From seed 0's SFT student: maximise (1-alpha) E[reward] - alpha E[JSD(0.5)] on the student's "
                  f"own samples (4 per prompt, per-prompt baseline), {a.steps} steps at learning rate 1e-4; reward 1 when the final answer "
                  "is right. Test set: the mean reward of a temperature-1 sample is the sampled accuracy.", "",
                  "| alpha | greedy accuracy (%) | mean reward, T=1 (%) | JSD(0.5) to teacher |", "|---|---|---|---|"]
        lines += [f"| {al} | {g:.1f} | {smp:.1f} | {d:.4f} |" for al, g, smp, d in rl]
        lines.append("")
    lines += ["Each run's test evaluation: `metrics/*-test.json`; its per-step metrics, `metrics/*.jsonl`, are "
              "written by the study and not kept in git. Plots: `accuracy.png` (test accuracy per method), "
              "`curves.png` (validation accuracy, greedy, against training steps)" +
              (", `rl.png` (reward against divergence to the teacher)." if rl else "."), ""]
    with open(os.path.join(a.out, "study.md"), "w") as f:
        f.write("\n".join(lines))

    # gnuplot data and script
    tasks = list(bars)
    for t in tasks:
        with open(os.path.join(a.out, f"bars-{t}.dat"), "w") as f:
            f.write("# method greedy_mean greedy_std sampled_mean sampled_std\n")
            for m, gm, gs, sm, ss in bars[t]:
                f.write(f'"{LABELS[m]}" {gm:.3f} {gs:.3f} {sm:.3f} {ss:.3f}\n')
        with open(os.path.join(a.out, f"curves-{t}.dat"), "w") as f:
            for m in curves[t]:
                f.write(f'# {m}\n')
                for k, v in curves[t][m]:
                    f.write(f"{k} {v:.3f}\n")
                f.write("\n\n")
    out = a.out
    gp = [f'set terminal pngcairo size 1200,{420 * len(tasks)} font ",10"',
          f'set output "{out}/accuracy.png"',
          f'set multiplot layout {len(tasks)},1',
          'set style data histogram', 'set style histogram errorbars gap 2 lw 1', 'set style fill solid 0.7 border -1',
          'set ylabel "test accuracy (%)"', 'set yrange [0:105]', 'set xtics rotate by -25 scale 0', 'set key top left',
          'set grid ytics']
    for t in tasks:
        gp += [f'set title "{t}: held-out accuracy after {a.steps} more steps (mean ± std over seeds)"',
               f'plot "{out}/bars-{t}.dat" using 2:3:xtic(1) title "greedy", "" using 4:5 title "sampled, T=1"']
    gp += ['unset multiplot', 'reset',
           f'set terminal pngcairo size 1200,{420 * len(tasks)} font ",10"',
           f'set output "{out}/curves.png"', f'set multiplot layout {len(tasks)},1',
           'set xlabel "training steps"', 'set ylabel "validation accuracy, greedy (%)"', 'set yrange [0:105]', 'set key outside right',
           'set grid']
    for t in tasks:
        plot = ", ".join(f'"{out}/curves-{t}.dat" index {i} using 1:2 with linespoints title "{LABELS[m]}"'
                         for i, m in enumerate(curves[t]))
        gp += [f'set title "{t}"', f"plot {plot}"]
    gp += ["unset multiplot"]
    if rl:
        with open(os.path.join(out, "rl.dat"), "w") as f:
            f.write("# alpha divergence mean_reward_T1 greedy_accuracy\n")
            for al, g, smp, d in rl:
                f.write(f"{al} {d:.6f} {smp:.3f} {g:.3f}\n")
        gp += ["reset", 'set terminal pngcairo size 800,560 font ",10"', f'set output "{out}/rl.png"',
               'set title "RL + GKD on arithmetic: reward against divergence to the teacher"',
               'set xlabel "JSD(0.5) to the teacher on the test set (lower: closer)"',
               'set ylabel "test reward (%)"', 'set yrange [0:105]', 'set grid', 'set key bottom right', 'set offsets graph 0.1, graph 0.1, 2, 2',
               f'plot "{out}/rl.dat" using 2:3 with linespoints pt 7 title "sampled, T=1", '
               f'"" using 2:4 with linespoints pt 5 title "greedy", '
               f'"" using 2:3:(sprintf("alpha %s", stringcolumn(1))) with labels offset 0,1 notitle']
    with open(os.path.join(out, "plots.gp"), "w") as f:
        f.write("\n".join(gp) + "\n")


if __name__ == "__main__":
    main()
