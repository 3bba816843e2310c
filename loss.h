// loss.h — what a step minimises, on the CPU: the batch it is computed over, each
// divergence of docs/algorithm.md §1 with its exact gradient over one row of logits, and the
// batch loss that sums them.
//
// GPU twin: cuda/loss.cuh (gpu_batch_loss, the same dispatch; a kernel for each loss and
// for the teacher's top-K; bucket_term is compiled for both devices).
//
// One entry point, batch_loss(..., spec): it calls full_row_loss for JSD(beta) and
// cross-entropy, loss_over_positions with top_k_divergence_row or total_variation_row for
// the top-K and TV objectives, and sampled_reverse_kl_loss for the sampled-token reverse KL.
// full_row_loss calls loss_over_positions with divergence_row or cross_entropy_row; both
// end in sum_position_losses, and so does the GPU's twin (gpu_full_row_loss).
//
// Tricks worth knowing:
// - The divergence math runs in double per row even for fp32 logits: it is O(V) per
//   position against O(V*C) for the LM head that produced them, and it keeps small
//   probabilities exact enough to match an fp64 reference to ~1e-6.
// - The loss writes its gradient over the student's logits in place (each row is read
//   before it is written), so a model holds one (N, Vp) buffer; RL's policy gradient
//   is added in the same pass, before the row is overwritten.
// - exp and log1p are written here so that the loops over a row vectorize (libm's are
//   scalar calls); both stay within a few ulp of libm, tested.
// - A row is prompt + completion (+ EOS). The model reads all of it but the last token;
//   the logits at position t predict token t+1, so the targets are the positions
//   P-1 .. n-2. A batch's rows are packed end to end (TrainBatch): no padding, and every
//   per-position array of the loss is (N) or (N, Vp), N the batch's real positions.
// - Per-position values are summed in one fixed order (sum_position_losses), whatever
//   the device and the threads: the loss is the same run after run.
//
// Part of gkd.cu's single translation unit, after model.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "utils.h"

// ----------------------------------------------------------------------------
// the batch the loss is over: rows, targets and each target's weight (docs/algorithm.md §2-3)

// A training row: the prompt and its completion. The completion ends with EOS when it
// ended by itself; a sampled completion cut at max_new_tokens has none.
struct Sequence {
    const std::vector<int>* prompt = nullptr;
    std::vector<int> completion;
};

// A batch packed (docs/algorithm.md §2): its rows laid end to end as one stream of N
// positions, row i's at [row_start[i], row_start[i + 1]), each row's positions counted from
// 0 (the model's position embedding and its causal attention are per row). No position is
// padding, so no layer spends work on one. pad_batch gives the same rows padded to the
// longest, the layout a rectangular (B, T) trainer would run: the tests and the benchmark
// compare the two.
struct TrainBatch {
    int B = 0;                       // rows
    int N = 0;                       // positions of all rows
    int T = 0;                       // the longest row's positions
    std::vector<int> row_start;      // (B + 1) where each row begins; row_start[B] = N
    std::vector<int> tokens;         // (N) model inputs
    std::vector<int> targets;        // (N) the next token where a position is a target, else -1
    std::vector<int> row_of;         // (N) the row of each position
    std::vector<int> target_count;   // (B) target positions per row (its L_y)
    int num_targets = 0;
    // what the loss is normalised over: this batch's rows and targets (0), or, for one
    // rank's share of a data-parallel batch, the whole batch's (distributed.h)
    int norm_rows = 0;
    long long norm_targets = 0;
    int length(int i) const { return row_start[i + 1] - row_start[i]; }
    // (re)builds row_start's companions: N, T and row_of, from row_start
    void index_rows() {
        N = row_start[B];
        T = 0;
        row_of.assign(N, 0);
        for (int i = 0; i < B; i++) {
            T = std::max(T, length(i));
            std::fill(row_of.begin() + row_start[i], row_of.begin() + row_start[i + 1], i);
        }
    }
};

// docs/algorithm.md §2: the completion tokens (and the EOS that ends them) are the targets;
// prompt positions never are. Row i has P + |c| - 1 positions: every token but the last.
static TrainBatch build_batch(const std::vector<Sequence>& rows, int eos) {
    TrainBatch b;
    b.B = (int)rows.size();
    b.row_start.assign(b.B + 1, 0);
    for (int i = 0; i < b.B; i++) {
        const std::vector<int>& p = *rows[i].prompt;
        const std::vector<int>& c = rows[i].completion;
        GKD_ASSERT(!p.empty() && !c.empty(), "a row needs a prompt token and a completion token");
        b.row_start[i + 1] = b.row_start[i] + (int)(p.size() + c.size()) - 1;
    }
    b.index_rows();
    b.tokens.assign(b.N, eos);
    b.targets.assign(b.N, -1);
    b.target_count.assign(b.B, 0);
    for (int i = 0; i < b.B; i++) {
        const std::vector<int>& p = *rows[i].prompt;
        const std::vector<int>& c = rows[i].completion;
        const int P = (int)p.size(), n = P + (int)c.size(), at = b.row_start[i];
        auto token = [&](int j) { return j < P ? p[j] : c[j - P]; };
        for (int t = 0; t < n - 1; t++) b.tokens[at + t] = token(t);
        for (int t = P - 1; t < n - 1; t++) b.targets[at + t] = token(t + 1);
        b.target_count[i] = n - P;
        b.num_targets += n - P;
    }
    return b;
}

// The same rows padded to the longest (every row T positions, the padding `pad` tokens
// with no targets): what a trainer that pads computes. Causal attention with positions
// from 0 in every row keeps padding out of every real position, so the loss and gradients
// equal the packed batch's up to float summation order (tests/test_gkd.cpp).
static TrainBatch pad_batch(const TrainBatch& b, int pad) {
    TrainBatch p = b;
    for (int i = 0; i <= b.B; i++) p.row_start[i] = i * b.T;
    p.index_rows();
    p.tokens.assign(p.N, pad);
    p.targets.assign(p.N, -1);
    for (int i = 0; i < b.B; i++)
        for (int t = 0; t < b.length(i); t++) {
            p.tokens[(size_t)i * b.T + t] = b.tokens[b.row_start[i] + t];
            p.targets[(size_t)i * b.T + t] = b.targets[b.row_start[i] + t];
        }
    return p;
}

enum class LossNorm { Sequence, Token };
inline const std::vector<std::string> LOSS_NORM_NAMES = {"sequence", "token"};  // --loss-norm, in the enum's order

// The weight of each target position in the batch loss: 1/(B * L_y) for the paper's
// per-sequence normalisation, 1/(number of targets) for TRL's per-token one; B and the
// targets are the whole batch's when b is one rank's share of it.
static double position_weight(const TrainBatch& b, int row, LossNorm norm) {
    const double rows = b.norm_rows ? b.norm_rows : b.B;
    const double targets = b.norm_targets ? (double)b.norm_targets : b.num_targets;
    return norm == LossNorm::Sequence ? 1.0 / (rows * b.target_count[row]) : 1.0 / targets;
}
// ----------------------------------------------------------------------------
// one row of logits: a divergence (or cross-entropy) and its gradient (docs/algorithm.md §1)

// Online max and sum of exp over x[0..V) / tau: one pass, one exp per element.
template <typename T>
static void online_logsumexp(const T* x, int V, double inv_tau, double& maxv, double& log_z) {
    double m = -INFINITY, z = 0;
    for (int i = 0; i < V; i++) {
        double v = (double)x[i] * inv_tau;
        if (v > m) { z = z * std::exp(m - v) + 1.0; m = v; }
        else z += std::exp(v - m);
    }
    maxv = m;
    log_z = std::log(z);
}

// exp and log1p in double precision, written so that the loops calling them vectorize:
// libm's are scalar calls, one per element of a row of V. Both are accurate to a
// few ulp (tests/test_gkd.cpp checks them against libm), so the loss stays an fp64
// computation: the float logits are the only rounding it inherits.
// exp: x = k ln2 + r with |r| <= ln2/2 (ln2 in two parts), exp(r) by its degree-13 Taylor
// polynomial, times 2^k built from its exponent bits; 0 below the smallest normal. The
// loss only needs x <= 0 (shifted logits); the domain is x <= 709.
__attribute__((always_inline)) static inline double exp_vectorizable(double x) {
    const double xc = std::min(std::max(x, -708.39), 709.0);
    const int32_t ki = (int32_t)(xc * 1.4426950408889634 + 1024.5) - 1024;  // round(x / ln2)
    const double k = (double)ki;
    const double r = xc - k * 0.6931471803691238 - k * 1.9082149292705877e-10;
    const double p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720 +
                     r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800 + r * (1.0 / 39916800 +
                     r * (1.0 / 479001600 + r * (1.0 / 6227020800.0)))))))))))));
    const int64_t bits = (int64_t)(ki + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, 8);
    return x < -708.39 ? 0.0 : p * scale;
}
// log(1 + y) for y in [0, 1] (all log(e^a + e^b) needs, as max + log1p(e^(min - max))): 1 + y = 2^e m with m in [1/sqrt2, sqrt2],
// log m = 2 atanh(s), s = (m - 1)/(m + 1), |s| <= 0.172, by its series to s^23.
__attribute__((always_inline)) static inline double log1p_unit(double y) {
    const double u = 1.0 + y;
    const bool halve = u > 1.4142135623730951;
    const double m = halve ? 0.5 * u : u, s = (m - 1.0) / (m + 1.0), s2 = s * s;
    const double p = 1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (1.0 / 11 + s2 * (1.0 / 13 +
                     s2 * (1.0 / 15 + s2 * (1.0 / 17 + s2 * (1.0 / 19 + s2 * (1.0 / 21 + s2 * (1.0 / 23)))))))))));
    // the rounding of 1 + y moves log(1 + y) by at most 1.1e-16: absolute, harmless here
    return 2.0 * s * p + (halve ? 0.6931471805599453 : 0.0);
}

// D(P, Q) for P = softmax(teacher/tau), Q = softmax(student/tau) over the V real columns:
// beta = 0 forward KL(P||Q), beta = 1 reverse KL(Q||P), else beta KL(P||M) + (1-beta) KL(Q||M)
// with M = beta P + (1-beta) Q. Writes grad_scale * dD/dstudent into dstudent[0..Vp)
// (padded columns get 0) when dstudent is not null. Returns D.
// In double throughout, in straight passes over the row that the compiler vectorizes: the
// maxima, the shifted logits and their exps, then the divergence, then the gradient.
template <typename T>
double divergence_row(const T* teacher, const T* student, T* dstudent, int V, int Vp, double beta, double tau,
                      double grad_scale) {
    const double inv_tau = 1.0 / tau;
    // per-thread rows of (V) values, reused: the shifted logits, then log p and log q; p and q
    static thread_local std::vector<double> buffers;
    buffers.resize(4 * (size_t)V);
    double *lp = buffers.data(), *lq = lp + V, *p = lq + V, *q = p + V;
    double mt = -INFINITY, ms = -INFINITY;
    #pragma omp simd reduction(max : mt, ms)
    for (int i = 0; i < V; i++) {
        mt = std::max(mt, (double)teacher[i]);
        ms = std::max(ms, (double)student[i]);
    }
    double zt = 0, zs = 0;
    #pragma omp simd reduction(+ : zt, zs)
    for (int i = 0; i < V; i++) {
        lp[i] = ((double)teacher[i] - mt) * inv_tau;
        lq[i] = ((double)student[i] - ms) * inv_tau;
        p[i] = exp_vectorizable(lp[i]);
        q[i] = exp_vectorizable(lq[i]);
        zt += p[i];
        zs += q[i];
    }
    const double lzt = std::log(zt), lzs = std::log(zs), izt = 1.0 / zt, izs = 1.0 / zs;
    const double log_beta = std::log(beta), log_1mbeta = std::log1p(-beta);
    // D, and g = dD/dq up to a constant that the softmax Jacobian removes (kept in lp); one
    // loop per kind of divergence, so that each vectorizes
    double D = 0, qg = 0;  // qg = sum_i q_i g_i
    if (beta == 0.0) {
        #pragma omp simd reduction(+ : D)
        for (int i = 0; i < V; i++) {
            const double lpi = lp[i] - lzt, lqi = lq[i] - lzs, pi = p[i] * izt;
            D += pi * (lpi - lqi);
            q[i] *= izs;
            lp[i] = pi;
        }
    } else if (beta == 1.0) {
        #pragma omp simd reduction(+ : D)
        for (int i = 0; i < V; i++) {
            const double g = (lq[i] - lzs) - (lp[i] - lzt), qi = q[i] * izs;
            D += qi * g;
            q[i] = qi;
            lp[i] = g;
        }
        qg = D;
    } else {
        #pragma omp simd reduction(+ : D, qg)
        for (int i = 0; i < V; i++) {
            const double lpi = lp[i] - lzt, lqi = lq[i] - lzs, pi = p[i] * izt, qi = q[i] * izs;
            const double a = log_beta + lpi, b = log_1mbeta + lqi, hi = std::max(a, b), lo = std::min(a, b);
            const double lm = hi + log1p_unit(exp_vectorizable(lo - hi));  // log(beta p + (1-beta) q)
            const double g = (1.0 - beta) * (lqi - lm);
            D += beta * pi * (lpi - lm) + (1.0 - beta) * qi * (lqi - lm);
            qg += qi * g;
            q[i] = qi;
            lp[i] = g;
        }
    }
    if (!dstudent) return D;
    const double scale = grad_scale * inv_tau;
    if (beta == 0.0) {
        #pragma omp simd
        for (int i = 0; i < V; i++) dstudent[i] = (T)((q[i] - lp[i]) * scale);
    } else {
        #pragma omp simd
        for (int i = 0; i < V; i++) dstudent[i] = (T)(q[i] * (lp[i] - qg) * scale);
    }
    for (int i = V; i < Vp; i++) dstudent[i] = T(0);
    return D;
}

// -log softmax(logits)[target] over the V real columns; gradient (softmax - onehot) * scale.
template <typename T>
double cross_entropy_row(const T* logits, int target, T* dlogits, int V, int Vp, double grad_scale) {
    double m, lz;
    online_logsumexp(logits, V, 1.0, m, lz);
    double nll = -((double)logits[target] - m - lz);
    if (dlogits) {
        for (int i = 0; i < V; i++) {
            double q = std::exp((double)logits[i] - m - lz);
            dlogits[i] = (T)((q - (i == target ? 1.0 : 0.0)) * grad_scale);
        }
        for (int i = V; i < Vp; i++) dlogits[i] = T(0);
    }
    return nll;
}

// ----------------------------------------------------------------------------
// the teacher's signal in less than a full row: top-K with a tail, or one token's log-prob
//
// docs/algorithm.md §1.4: with --teacher-top-k K the divergence runs over K + 1 buckets,
// the teacher's K most likely tokens and one tail bucket holding the rest of the mass, on
// both sides: P' = (p_i1 .. p_iK, 1 - sum p_ik), Q' = (q_i1 .. q_iK, 1 - sum q_ik). The
// teacher then needs to hand over only (K + 1) log-probs and K ids per position, which is
// what lets it be stored (data/teacher_cache.h) instead of sitting beside the student.

// The teacher's top-K tokens of one row (ties: the lower id first), their log-probs at
// temperature tau, and the tail's log-prob computed from the tail's own logits (not as
// 1 - sum, which cancels to 0 or below when the top-K hold nearly all the mass).
// logp (K + 1): the K log-probs in the order of ids (K), then the tail's (-inf when K = V).
// One pass keeps a min-heap of the K best so far: most tokens fail the one comparison with
// its root, so the pass costs about V comparisons rather than a sort's V log K.
template <typename T>
void teacher_top_k_row(const T* logits, int V, int K, double tau, float* logp, int32_t* ids) {
    static thread_local std::vector<int32_t> heap;        // (K) token ids, the worst at the root
    static thread_local std::vector<unsigned char> kept;  // (V) 1 for the top-K
    auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    heap.clear();
    for (int i = 0; i < V; i++) {
        if ((int)heap.size() < K) {
            heap.push_back(i);
            std::push_heap(heap.begin(), heap.end(), before);  // "before" as less: the root comes last in order
        } else if (before(i, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), before);
            heap.back() = i;
            std::push_heap(heap.begin(), heap.end(), before);
        }
    }
    std::sort(heap.begin(), heap.end(), before);
    const double inv_tau = 1.0 / tau, m = (double)logits[heap[0]];
    kept.assign(V, 0);
    for (int j = 0; j < K; j++) kept[heap[j]] = 1;
    double z = 0, tail = 0;
    #pragma omp simd reduction(+ : z, tail)
    for (int i = 0; i < V; i++) {
        const double e = exp_vectorizable(((double)logits[i] - m) * inv_tau);
        z += e;
        tail += kept[i] ? 0.0 : e;  // summed over the tail itself: no 1 - sum cancellation
    }
    const double log_z = std::log(z);
    for (int j = 0; j < K; j++) {
        ids[j] = heap[j];
        logp[j] = (float)(((double)logits[heap[j]] - m) * inv_tau - log_z);
    }
    logp[K] = K < V ? (float)(std::log(tail) - log_z) : -INFINITY;
}

// log softmax(logits / tau)[y] over the V real columns.
template <typename T>
double token_log_prob(const T* logits, int y, int V, double tau) {
    double m, lz;
    online_logsumexp(logits, V, 1.0 / tau, m, lz);
    return (double)logits[y] / tau - m - lz;
}

// Which divergence a distillation step minimises (--objective): JSD(beta) (forward KL,
// reverse KL and between), total variation, or the reverse KL estimated on the sampled
// tokens alone and optimised by policy gradient (docs/algorithm.md §1.5-1.6).
enum class Objective { Jsd, TotalVariation, SampledReverseKl };
inline const std::vector<std::string> OBJECTIVE_NAMES = {"jsd", "tv", "sampled-reverse-kl"};  // --objective, in order
inline const char* objective_name(Objective o) { return OBJECTIVE_NAMES[(size_t)o].c_str(); }

// One bucket's share of D and its derivative over the bucket's mass: p and q are the
// teacher's and the student's masses in it, *g gets g_b = dD/dQ_b. For TV, g_b is
// sign(q - p) / 2 with sign(0) = 0: TV is not differentiable where p = q, and gkd takes that
// subgradient, the one that leaves a bucket already matched alone. The same code on both
// devices (cuda/loss.cuh's top-K kernel calls it per bucket).
GKD_HOST_DEVICE inline double bucket_term(double p, double q, Objective objective, double beta, double* g) {
    if (objective == Objective::TotalVariation) {
        *g = q > p ? 0.5 : q < p ? -0.5 : 0.0;
        return 0.5 * ::fabs(q - p);
    }
    if (beta == 0.0) {  // KL(P || Q); a bucket empty on both sides adds nothing
        *g = p > 0 ? -p / q : 0.0;
        return p > 0 ? p * (::log(p) - ::log(q)) : 0.0;
    }
    if (beta == 1.0) {  // KL(Q || P)
        *g = q > 0 ? ::log(q) - ::log(p) : 0.0;
        return q > 0 ? q * (::log(q) - ::log(p)) : 0.0;
    }
    const double m = beta * p + (1 - beta) * q;
    if (m <= 0) { *g = 0; return 0.0; }
    const double lm = ::log(m);
    *g = q > 0 ? (1 - beta) * (::log(q) - lm) : 0.0;
    return (p > 0 ? beta * p * (::log(p) - lm) : 0.0) + (q > 0 ? (1 - beta) * q * (::log(q) - lm) : 0.0);
}

// D over buckets and its derivative over each bucket's mass (bucket_term, bucket by
// bucket). P (n) and Q (n) are the bucket masses. With g_b = dD/dQ_b and b(i) the bucket of
// column i, the gradient over the student's logits z_i (at temperature tau) is
// q_i (g_b(i) - sum_b Q_b g_b) / tau (the callers apply it): the softmax Jacobian of a sum
// of q's is q_i (1[i in b] - Q_b). Returns D; fills g (n).
static double bucket_divergence(const double* P, const double* Q, int n, Objective objective, double beta,
                                double* g) {
    double D = 0;
    for (int b = 0; b < n; b++) D += bucket_term(P[b], Q[b], objective, beta, &g[b]);
    return D;
}

// D(P', Q') over the teacher's top-K buckets and the tail (teacher_top_k_row's logp and
// ids); grad_scale * dD/dstudent into dstudent[0..Vp) when it is not null. K = V gives
// divergence_row's value to rounding (the tail is empty on both sides).
template <typename T>
double top_k_divergence_row(const float* logp, const int32_t* ids, int K, const T* student, T* dstudent, int V,
                            int Vp, Objective objective, double beta, double tau, double grad_scale) {
    static thread_local std::vector<double> q;          // (V) the student's softmax
    static thread_local std::vector<int32_t> bucket;    // (V) K for the tail, else the top-k slot
    static thread_local std::vector<double> P, Q, g;    // (K + 1)
    q.resize(V);
    bucket.assign(V, K);
    P.resize(K + 1); Q.resize(K + 1); g.resize(K + 1);
    double m, lz;
    online_logsumexp(student, V, 1.0 / tau, m, lz);
    #pragma omp simd
    for (int i = 0; i < V; i++) q[i] = exp_vectorizable((double)student[i] / tau - m - lz);
    double q_tail = 0;
    for (int j = 0; j < K; j++) bucket[ids[j]] = j;
    for (int i = 0; i < V; i++) if (bucket[i] == K) q_tail += q[i];  // summed, not 1 - sum: no cancellation
    for (int j = 0; j < K; j++) { P[j] = std::exp((double)logp[j]); Q[j] = q[ids[j]]; }
    P[K] = std::exp((double)logp[K]);
    Q[K] = q_tail;
    const double D = bucket_divergence(P.data(), Q.data(), K + 1, objective, beta, g.data());
    if (!dstudent) return D;
    double Qg = 0;
    for (int b = 0; b <= K; b++) Qg += Q[b] * g[b];
    const double scale = grad_scale / tau;
    for (int i = 0; i < V; i++) dstudent[i] = (T)(q[i] * (g[bucket[i]] - Qg) * scale);
    for (int i = V; i < Vp; i++) dstudent[i] = T(0);
    return D;
}

// Total variation TV(P, Q) = 1/2 sum_i |p_i - q_i| over the full rows (each token its own
// bucket), with bucket_divergence's subgradient. 1 - TV is speculative sampling's
// acceptance rate at the position: the divergence that targets a draft's acceptance.
template <typename T>
double total_variation_row(const T* teacher, const T* student, T* dstudent, int V, int Vp, double tau,
                           double grad_scale) {
    static thread_local std::vector<double> p, q, g;  // (V)
    p.resize(V); q.resize(V); g.resize(V);
    double mt, lzt, ms, lzs;
    online_logsumexp(teacher, V, 1.0 / tau, mt, lzt);
    online_logsumexp(student, V, 1.0 / tau, ms, lzs);
    #pragma omp simd
    for (int i = 0; i < V; i++) {
        p[i] = exp_vectorizable((double)teacher[i] / tau - mt - lzt);
        q[i] = exp_vectorizable((double)student[i] / tau - ms - lzs);
    }
    const double D = bucket_divergence(p.data(), q.data(), V, Objective::TotalVariation, 0, g.data());
    if (!dstudent) return D;
    double qg = 0;
    for (int i = 0; i < V; i++) qg += q[i] * g[i];
    for (int i = 0; i < V; i++) dstudent[i] = (T)(q[i] * (g[i] - qg) * grad_scale / tau);
    for (int i = V; i < Vp; i++) dstudent[i] = T(0);
    return D;
}

// ----------------------------------------------------------------------------
// the batch loss: each target position's value and gradient, summed in a fixed order

// RL + GKD (the paper's section 5): REINFORCE on the sampled rows, added to the divergence
// weighted by alpha. The gradient of -scale * A_b log p(y_t | x, y_<t) over the logits of
// one target position, p = softmax(logits / temperature), is -scale * A_b (onehot_y - p) / temperature.
struct PolicyGradientTerm {
    std::vector<double> advantage;  // (B) reward minus baseline, per row
    double scale = 0;               // (1 - alpha) / B
    double alpha = 1;               // the divergence's weight
    double temperature = 1;         // of the sampling policy
    double surrogate = 0;           // out: -(1/B) sum over targets of A_b log p(y_t)
};

// Adds one target position's policy gradient to grad (V); returns log p(y).
template <typename T>
double policy_gradient_row(const T* logits, int y, int V, double inv_t, double g, double* grad) {
    double m, lz;
    online_logsumexp(logits, V, inv_t, m, lz);
    for (int i = 0; i < V; i++) grad[i] += g * ((i == y ? 1.0 : 0.0) - std::exp((double)logits[i] * inv_t - m - lz));
    return (double)logits[y] * inv_t - m - lz;
}

// The batch loss from each target position's value (and log p(y) for the policy gradient),
// weighted (position_weight) and summed in a fixed order: shared by the CPU and GPU paths,
// so both add the same way.
static double sum_position_losses(const TrainBatch& b, const std::vector<double>& per_position,
                                  const std::vector<double>& logp, LossNorm norm, double* mean_per_token,
                                  PolicyGradientTerm* pg) {
    double loss = 0, total = 0;
    if (pg) pg->surrogate = 0;
    for (int n = 0; n < b.N; n++)
        if (b.targets[n] >= 0) {
            loss += per_position[n] * position_weight(b, b.row_of[n], norm);
            total += per_position[n];
            if (pg) pg->surrogate -= pg->advantage[b.row_of[n]] * logp[n] / (b.norm_rows ? b.norm_rows : b.B);
        }
    if (mean_per_token) *mean_per_token = total / b.num_targets;
    return loss;
}

// The batch loss from one call per target position, row_loss(n, logits, dlogits, weight),
// which returns the position's value and writes weight * its gradient over dlogits (null:
// value only); non-target positions get zero gradient. dstudent may be the student logits
// themselves: each row is read before it is overwritten, so the model keeps one
// (N, Vp) buffer, as llm.c's fused classifier does. With pg, the row loss is weighted
// by pg->alpha and the policy gradient added. Ends in sum_position_losses.
//   student, dstudent (N, Vp_student), N the batch's positions
template <typename T, typename RowLoss>
double loss_over_positions(const TrainBatch& b, const T* student, T* dstudent, int V, int Vp_student, LossNorm norm,
                           double* mean_per_token, PolicyGradientTerm* pg, RowLoss row_loss) {
    const int N = b.N;
    std::vector<double> per_position(N, 0.0), logp(pg ? N : 0, 0.0);
    #pragma omp parallel for schedule(dynamic, 8)
    for (int n = 0; n < N; n++) {
        const T* s = student + (size_t)n * Vp_student;
        T* ds = dstudent ? dstudent + (size_t)n * Vp_student : nullptr;
        int target = b.targets[n];
        if (target < 0) {
            if (ds) std::fill(ds, ds + Vp_student, T(0));
            continue;
        }
        double w = position_weight(b, b.row_of[n], norm);
        static thread_local std::vector<double> pg_grad;  // (V) one per thread, reused
        if (pg) {  // the policy gradient reads this row's logits before they become gradients
            pg_grad.assign(V, 0.0);
            double g = -pg->scale * pg->advantage[b.row_of[n]] / pg->temperature;
            logp[n] = policy_gradient_row(s, target, V, 1.0 / pg->temperature, g, pg_grad.data());
            w *= pg->alpha;
        }
        per_position[n] = row_loss(n, s, ds, w);
        if (pg) for (int i = 0; i < V; i++) ds[i] += (T)pg_grad[i];
    }
    return sum_position_losses(b, per_position, logp, norm, mean_per_token, pg);
}

// The losses that read whole logit rows, and their gradient over the student's logits
// (loss_over_positions): JSD(beta) of docs/algorithm.md §1 against the teacher's logits, or
// cross-entropy against the targets (teacher may then be null). The GPU computes these two
// in one fused kernel (cuda/loss.cuh's gpu_full_row_loss).
//   teacher (N, Vp_teacher); student, dstudent (N, Vp_student)
template <typename T>
double full_row_loss(const TrainBatch& b, const T* teacher, int Vp_teacher, const T* student, T* dstudent, int V,
                     int Vp_student, bool cross_entropy, double beta, double tau, LossNorm norm,
                     double* mean_per_token = nullptr, PolicyGradientTerm* pg = nullptr) {
    return loss_over_positions(b, student, dstudent, V, Vp_student, norm, mean_per_token, pg,
                               [&](int n, const T* s, T* ds, double w) {
                                   return cross_entropy
                                       ? cross_entropy_row(s, b.targets[n], ds, V, Vp_student, w)
                                       : divergence_row(teacher + (size_t)n * Vp_teacher, s, ds, V, Vp_student, beta,
                                                        tau, w);
                               });
}

// What the loss computes: cross-entropy on the targets (SFT), or a divergence between the
// teacher and the student (docs/algorithm.md §1).
struct LossSpec {
    bool cross_entropy = false;
    Objective objective = Objective::Jsd;
    double beta = 0.5, tau = 1.0;  // JSD(beta) at temperature tau (tau also for the others)
    LossNorm norm = LossNorm::Sequence;
    int top_k = 0;                 // > 0: over the teacher's top-K tokens and the tail (§1.4)
    double kl_discount = 0;        // sampled reverse KL: the discount of the per-token reward (§1.6)
    // whether the loss reads the teacher's whole logit rows (else a TeacherSignal)
    bool needs_teacher_rows() const {
        return !cross_entropy && top_k == 0 && objective != Objective::SampledReverseKl;
    }
};

// The teacher's signal at each position of a batch when it is less than a logit row: the
// top-K log-probs with the tail (teacher_top_k_row), or, for the sampled reverse KL, the
// log-prob of the target token alone. Filled at target positions only.
struct TeacherSignal {
    int K = 0;                        // > 0: top-K
    std::vector<float> logp;          // (N, K + 1) the K log-probs, then the tail's
    std::vector<int32_t> ids;         // (N, K)
    std::vector<float> target_logp;   // (N) log p(target), with K = 0
    void reset(size_t positions, int top_k) {
        K = top_k;
        logp.assign(top_k ? positions * (top_k + 1) : 0, 0.f);
        ids.assign(positions * top_k, 0);
        target_logp.assign(top_k ? 0 : positions, 0.f);
    }
    size_t bytes() const { return logp.size() * 4 + ids.size() * 4 + target_logp.size() * 4; }
};

// The sampled reverse KL's advantages (below): at each target n, A_t = r_t + gamma A_{t+1}
// with r_t = -log_ratio[n], summed from the row's end. Both devices call it on the host.
//   log_ratio, advantage (N)
static void discounted_advantages(const TrainBatch& b, const std::vector<double>& log_ratio, double discount,
                                  std::vector<double>& advantage) {
    advantage.assign((size_t)b.N, 0.0);
    for (int row = 0; row < b.B; row++) {
        double later = 0;
        for (int n = b.row_start[row + 1] - 1; n >= b.row_start[row]; n--) {
            if (b.targets[n] < 0) continue;
            later = -log_ratio[n] + discount * later;
            advantage[n] = later;
        }
    }
}

// Sampled-token reverse KL (docs/algorithm.md §1.6): the reward of target token y_t is
// r_t = -(log q(y_t) - log p(y_t)) at temperature tau, its advantage the discounted sum
// A_t = sum_{s >= t} gamma^(s-t) r_s over the row's later targets, and the loss
// -sum_t w_t A_t log q(y_t) with A_t held constant: REINFORCE. Its gradient over the
// logits at t is -w_t A_t (onehot(y_t) - q_t) / tau; the value returned is the estimate
// sum_t w_t (log q(y_t) - log p(y_t)) of the reverse KL. Needs the teacher's log p(y_t) only.
//   teacher_target_logp (N); student, dstudent (N, Vp_student)
template <typename T>
double sampled_reverse_kl_loss(const TrainBatch& b, const float* teacher_target_logp, const T* student, T* dstudent,
                               int V, int Vp_student, double tau, double discount, LossNorm norm,
                               double* mean_per_token = nullptr) {
    const int N = b.N;
    // per target: the student's max and log-normaliser (online_logsumexp), kept for the gradient
    std::vector<double> log_ratio(N, 0.0), advantage, max_of(N, 0.0), log_z(N, 0.0);
    #pragma omp parallel for schedule(dynamic, 8)
    for (int n = 0; n < N; n++)
        if (b.targets[n] >= 0) {
            const T* s = student + (size_t)n * Vp_student;
            online_logsumexp(s, V, 1.0 / tau, max_of[n], log_z[n]);
            log_ratio[n] = ((double)s[b.targets[n]] / tau - max_of[n] - log_z[n]) - teacher_target_logp[n];
        }
    discounted_advantages(b, log_ratio, discount, advantage);
    if (dstudent) {
        #pragma omp parallel for schedule(dynamic, 8)
        for (int n = 0; n < N; n++) {
            const T* s = student + (size_t)n * Vp_student;
            T* ds = dstudent + (size_t)n * Vp_student;
            const int y = b.targets[n];
            if (y < 0) { std::fill(ds, ds + Vp_student, T(0)); continue; }
            const double m = max_of[n], lz = log_z[n];
            const double g = -position_weight(b, b.row_of[n], norm) * advantage[n] / tau;
            for (int i = 0; i < V; i++)  // reads s[i] before writing ds[i]: in place is safe
                ds[i] = (T)(g * ((i == y ? 1.0 : 0.0) - std::exp((double)s[i] / tau - m - lz)));
            for (int i = V; i < Vp_student; i++) ds[i] = T(0);
        }
    }
    return sum_position_losses(b, log_ratio, {}, norm, mean_per_token, nullptr);
}

// The batch loss of a step, as spec says, and its gradient over the student's logits: the
// entry point (the file's header says which function it calls for which loss). The teacher
// hands over its logit rows (spec.needs_teacher_rows()) or a TeacherSignal.
//   teacher (N, Vp_teacher) or null; student, dstudent (N, Vp_student)
template <typename T>
double batch_loss(const TrainBatch& b, const T* teacher, int Vp_teacher, const TeacherSignal& signal,
                  const T* student, T* dstudent, int V, int Vp_student, const LossSpec& spec,
                  double* mean_per_token = nullptr, PolicyGradientTerm* pg = nullptr) {
    if (spec.cross_entropy)
        return full_row_loss(b, (const T*)nullptr, 0, student, dstudent, V, Vp_student, true, 0, 1, spec.norm,
                             mean_per_token, pg);
    if (spec.objective == Objective::SampledReverseKl)
        return sampled_reverse_kl_loss(b, signal.target_logp.data(), student, dstudent, V, Vp_student, spec.tau,
                                       spec.kl_discount, spec.norm, mean_per_token);
    if (spec.top_k == 0 && spec.objective == Objective::Jsd)
        return full_row_loss(b, teacher, Vp_teacher, student, dstudent, V, Vp_student, false, spec.beta, spec.tau,
                             spec.norm, mean_per_token, pg);
    const int K = spec.top_k;
    GKD_ASSERT(K == 0 || signal.K == K, "the teacher's top-K signal has another K than the loss");
    return loss_over_positions(b, student, dstudent, V, Vp_student, spec.norm, mean_per_token, pg,
                               [&](int n, const T* s, T* ds, double w) {
                                   return K ? top_k_divergence_row(signal.logp.data() + (size_t)n * (K + 1),
                                                                   signal.ids.data() + (size_t)n * K, K, s, ds, V,
                                                                   Vp_student, spec.objective, spec.beta, spec.tau, w)
                                            : total_variation_row(teacher + (size_t)n * Vp_teacher, s, ds, V,
                                                                  Vp_student, spec.tau, w);
                               });
}

// Advantages r - baseline: the mean reward of the row's own prompt when each prompt has
// K > 1 samples (rows k*K .. k*K+K-1), else the batch mean: `batch_mean` when given (the
// whole batch's, when these rows are one rank's share), else these rows' mean.
static std::vector<double> advantages(const std::vector<double>& reward, int samples_per_prompt,
                                      double batch_mean = NAN) {
    const size_t n = reward.size(), K = samples_per_prompt > 1 ? samples_per_prompt : n;
    std::vector<double> a(n);
    for (size_t g = 0; g < n; g += K) {
        double mean = 0;
        for (size_t i = g; i < g + K; i++) mean += reward[i];
        mean /= K;
        if (samples_per_prompt == 1 && !std::isnan(batch_mean)) mean = batch_mean;
        for (size_t i = g; i < g + K; i++) a[i] = reward[i] - mean;
    }
    return a;
}
