// cli/verdicts.h — what a paired comparison over seeds says, for the default experiment's
// verdict lines. Its twin, dev/verdicts.py, says the same for the study's report; both
// are held to tests/fixtures/verdicts.json (tests/test_gkd.cpp and tests/verdicts_test.py).
//
// Method A and method B run on the same n seeds (the same warm start, the same data
// order); d_i = A_i - B_i is seed i's difference of a metric. The interval is Student's t
// over those n differences: mean ± t(0.975, n - 1) · sd / sqrt(n), sd with n - 1. The
// verdict reads the interval: "beats" when it lies above zero, "loses to" when below,
// "no difference shown" when it holds zero; one seed gives no interval and no verdict.
// docs/study.md says why t and not a bootstrap, and what the interval covers (the
// training seeds, not the data split or the teacher).
//
// The trick: the t distribution with an integer number of degrees of freedom has a
// closed-form CDF (Abramowitz & Stegun 26.7.3 and 26.7.4, a finite series in cos θ with
// θ = atan(t / sqrt(ν))), so the quantile is a bisection on it: no incomplete beta
// function, no table, and the same steps in Python.
#pragma once
#include <cmath>
#include <string>
#include <vector>

// P(|T| <= t) for Student's t with `df` (>= 1) degrees of freedom.
static double t_two_sided_cdf(double t, int df) {
    if (t <= 0) return 0;
    const double theta = std::atan(t / std::sqrt((double)df)), c2 = std::cos(theta) * std::cos(theta);
    const double s = std::sin(theta);
    if (df % 2 == 0) {  // sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ... up to cos^(ν-2)θ)
        double term = 1, sum = 1;
        for (int k = 1; k <= (df - 2) / 2; k++) sum += term *= (2.0 * k - 1) / (2.0 * k) * c2;
        return s * sum;
    }
    // odd: 2/π (θ + sin θ cos θ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + ... up to cos^(ν-3)θ)); ν = 1: 2θ/π
    double term = 1, sum = df > 1 ? 1 : 0;
    for (int k = 1; k <= (df - 3) / 2; k++) sum += term *= (2.0 * k) / (2.0 * k + 1) * c2;
    return 2 / M_PI * (theta + s * std::cos(theta) * sum);
}

// The t with P(|T| <= t) = `coverage` (0.95: the two-sided 95% critical value), by bisection.
static double t_critical(double coverage, int df) {
    double lo = 0, hi = 1;
    while (t_two_sided_cdf(hi, df) < coverage) hi *= 2;
    for (int i = 0; i < 200 && hi - lo > 1e-13 * hi; i++) {
        const double mid = 0.5 * (lo + hi);
        (t_two_sided_cdf(mid, df) < coverage ? lo : hi) = mid;
    }
    return 0.5 * (lo + hi);
}

// the mean; NAN for no value (the experiment's table cells use these two as well)
static double mean_of(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? NAN : s / v.size();
}
// the sample standard deviation (n - 1); 0 for a single value
static double sd_of(const std::vector<double>& v) {
    if (v.size() < 2) return 0;
    double m = mean_of(v), s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return std::sqrt(s / (v.size() - 1));
}

// The per-seed differences d (n of them), summed up.
struct PairedComparison {
    size_t n = 0;
    double mean = NAN, sd = NAN;  // sd with n - 1; NAN for one seed
    double lo = NAN, hi = NAN;    // the 95% interval of the mean; NAN for one seed
    std::string word;             // "beats", "loses to" or "no difference shown"
};

static PairedComparison compare_paired(const std::vector<double>& d, double coverage = 0.95) {
    PairedComparison c;
    c.n = d.size();
    if (c.n == 0) return c;
    c.mean = mean_of(d);
    c.word = "no difference shown";
    if (c.n < 2) return c;
    c.sd = sd_of(d);
    const double half = t_critical(coverage, (int)c.n - 1) * c.sd / std::sqrt((double)c.n);
    c.lo = c.mean - half;
    c.hi = c.mean + half;
    c.word = c.lo > 0 ? "beats" : c.hi < 0 ? "loses to" : "no difference shown";
    return c;
}

// How many seeds a paired comparison needs: the smallest n at which a true mean difference
// `delta`, with per-seed differences spread by `sd`, gives an interval that excludes zero
// with probability `power`. The usual approximation to the noncentral t: n >= ((t(0.975,
// n - 1) + t(power, n - 1)) sd / delta)^2, t(power) one-sided. power = 0.5: the n at which
// the half-width t(0.975, n - 1) sd / sqrt(n) drops below delta, so that a mean observed
// at delta is resolved. 0 when `delta` or `sd` is not positive and finite.
static size_t seeds_needed(double delta, double sd, double power) {
    if (!(delta > 0) || !(sd > 0) || !std::isfinite(delta / sd)) return 0;
    for (size_t n = 2; n < 100000; n++) {
        const double t = t_critical(0.95, (int)n - 1) + t_critical(2 * power - 1, (int)n - 1);
        if (t * sd / delta <= std::sqrt((double)n)) return n;
    }
    return 0;
}

// One verdict line, e.g. "on-policy GKD beats supervised KD: +1.8 points sampled at T=1,
// 95% CI +0.8 to +2.8 (5 seeds)" or "on-policy GKD vs supervised KD: no difference shown,
// +0.9 points sampled at T=1, 95% CI -0.3 to +2.1 (3 seeds)". `unit` follows the number
// ("points sampled at T=1"); `digits` is the decimals shown; `seed` names what was paired
// ("data seed": "(5 data seeds)").
static std::string verdict_line(const std::string& a, const std::string& b, const PairedComparison& c,
                                const std::string& unit, int digits = 1, const std::string& seed = "seed") {
    char mean[64], interval[160];
    snprintf(mean, sizeof mean, "%+.*f %s", digits, c.mean, unit.c_str());
    if (c.n < 2)
        snprintf(interval, sizeof interval, "no interval from %zu %s", c.n, seed.c_str());
    else
        snprintf(interval, sizeof interval, "95%% CI %+.*f to %+.*f (%zu %ss)", digits, c.lo, digits, c.hi, c.n,
                 seed.c_str());
    if (c.word == "no difference shown") return a + " vs " + b + ": no difference shown, " + mean + ", " + interval;
    return a + " " + c.word + " " + b + ": " + mean + ", " + interval;
}
