"""What a paired comparison over seeds says, for the study's report (dev/study_report.py):
the twin of cli/verdicts.h, which says it for the default experiment. Both are held to
tests/fixtures/verdicts.json (tests/verdicts_test.py and tests/test_gkd.cpp).

d_i = A_i - B_i is seed i's difference of a metric between two methods run on the same
seeds. The interval is Student's t over the n differences: mean ± t(0.975, n - 1) · sd /
sqrt(n). "beats" when it lies above zero, "loses to" when below, "no difference shown"
when it holds zero; one seed gives no interval and no verdict.

The t quantile is a bisection on the closed-form CDF for integer degrees of freedom
(Abramowitz & Stegun 26.7.3, 26.7.4), in the same order of operations as the C++ twin.
Standard library only."""
import math


def t_two_sided_cdf(t, df):
    """P(|T| <= t) for Student's t with df (>= 1) degrees of freedom."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) * math.cos(theta)
    s = math.sin(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, (df - 2) // 2 + 1):
            term *= (2.0 * k - 1) / (2.0 * k) * c2
            total += term
        return s * total
    term, total = 1.0, (1.0 if df > 1 else 0.0)
    for k in range(1, (df - 3) // 2 + 1):
        term *= (2.0 * k) / (2.0 * k + 1) * c2
        total += term
    return 2 / math.pi * (theta + s * math.cos(theta) * total)


def t_critical(coverage, df):
    """The t with P(|T| <= t) = coverage (0.95: the two-sided 95% critical value)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_cdf(hi, df) < coverage:
        hi *= 2
    i = 0
    while i < 200 and hi - lo > 1e-13 * hi:
        mid = 0.5 * (lo + hi)
        if t_two_sided_cdf(mid, df) < coverage:
            lo = mid
        else:
            hi = mid
        i += 1
    return 0.5 * (lo + hi)


def compare_paired(d, coverage=0.95):
    """The per-seed differences d summed up: dict(n, mean, sd, lo, hi, word); sd, lo and hi
    are NaN for one seed."""
    n = len(d)
    nan = float("nan")
    c = {"n": n, "mean": nan, "sd": nan, "lo": nan, "hi": nan, "word": ""}
    if n == 0:
        return c
    total = 0.0
    for x in d:
        total += x
    c["mean"] = total / n
    c["word"] = "no difference shown"
    if n < 2:
        return c
    ss = 0.0
    for x in d:
        ss += (x - c["mean"]) * (x - c["mean"])
    c["sd"] = math.sqrt(ss / (n - 1))
    half = t_critical(coverage, n - 1) * c["sd"] / math.sqrt(n)
    c["lo"], c["hi"] = c["mean"] - half, c["mean"] + half
    c["word"] = "beats" if c["lo"] > 0 else "loses to" if c["hi"] < 0 else "no difference shown"
    return c


def seeds_needed(delta, sd, power):
    """The smallest n at which a true mean difference delta, per-seed differences spread by
    sd, gives an interval that excludes zero with probability power: n >= ((t(0.975, n - 1)
    + t(power, n - 1)) sd / delta)^2, as cli/verdicts.h; 0 when delta or sd is not positive."""
    if not (delta > 0) or not (sd > 0) or not math.isfinite(delta / sd):
        return 0
    for n in range(2, 100000):
        t = t_critical(0.95, n - 1) + t_critical(2 * power - 1, n - 1)
        if t * sd / delta <= math.sqrt(n):
            return n
    return 0


def verdict_line(a, b, c, unit, digits=1, seed="seed"):
    """One verdict line, as cli/verdicts.h writes it: "A beats B: +1.8 points sampled at T=1,
    95% CI +0.8 to +2.8 (5 seeds)", or "A vs B: no difference shown, +0.9 ..."; seed names
    what was paired ("data seed": "(5 data seeds)")."""
    mean = f"{c['mean']:+.{digits}f} {unit}"
    if c["n"] < 2:
        interval = f"no interval from {c['n']} {seed}"
    else:
        interval = f"95% CI {c['lo']:+.{digits}f} to {c['hi']:+.{digits}f} ({c['n']} {seed}s)"
    if c["word"] == "no difference shown":
        return f"{a} vs {b}: no difference shown, {mean}, {interval}"
    return f"{a} {c['word']} {b}: {mean}, {interval}"
