// cuda/loss.cuh — the fused divergence kernel: full_row_loss's twin (loss.h).
//
// One block per position n of the batch (B * T blocks). It reads the student's logits
// row (and the teacher's), computes D(P, Q) of docs/algorithm.md §1 (forward KL, reverse KL or
// JSD(beta) at temperature tau), or SFT's cross-entropy, and overwrites the student's row
// with the gradient, like llm.c's fused classifier: the model keeps one (B, T, Vp) buffer.
//
// Tricks worth knowing:
// - Pass 1 is an online max/sum (MaxSum) of every softmax it needs, so any V works with
//   any block size; the math is in double, as on the CPU (O(V) per position against
//   O(V * C) for the LM head that produced the row).
// - Each element is written only by the thread that read it, and only after every read of
//   the row: the block reductions between the passes are barriers.
// - RL's policy gradient is added in the same pass, before the row is overwritten.
// - The per-position values come back to the host, which sums them in the CPU's fixed
//   order (sum_position_losses): the two paths add the same way.
// - 256 threads a block, with __launch_bounds__(256, 2): ptxas must leave room for two
//   resident blocks per SM, so that one block's reductions (its barriers) can overlap
//   another block's reads. What ptxas gives it is in docs/cuda.md; whether the overlap
//   pays is for a GPU to measure. At GPT-2's V = 50257 each thread walks ~196 entries of a
//   row, rescaling its running max/sum as it goes.
#pragma once
#include "common.cuh"

namespace gpu {

// ---- the fused loss: one block per position n of the batch (docs/algorithm.md §1)
//
// Reads the student's row (and the teacher's) and overwrites the student's row with the
// gradient of weight[n] * D(P, Q) (+ the policy gradient): pass 1 is the online max/sum of
// every softmax it needs, pass 2 the divergence and sum q g, pass 3 the gradient. Each
// element is written only by the thread that read it, after every read of the row (the
// block reductions between the passes are barriers). Masked positions (target < 0) get zero.
struct LossArgs {
    const float* teacher = nullptr;  // (N, Vp_teacher), null for cross-entropy
    int Vp_teacher = 0;
    float* student = nullptr;        // (N, Vp_student) logits in, gradient out
    int Vp_student = 0, V = 0;
    const int* targets = nullptr;    // (N) next token, or -1
    const double* weight = nullptr;  // (N) the position's weight in the batch loss (times alpha with RL)
    const double* pg_coef = nullptr; // (N) -(1-alpha)/B * A_b / t, or null without RL
    bool cross_entropy = false;
    double beta = 0.5, inv_tau = 1.0, pg_inv_t = 1.0;
    double* per_position = nullptr;  // (N) out: D (or the NLL) at each target position
    double* logp = nullptr;          // (N) out with pg_coef: log p(target) at the sampling temperature
};

// log M = log(beta p + (1 - beta) q) from log(beta p) and log((1 - beta) q): the CPU's
// log_add_exp, on the device
__device__ inline double log_mixture(double x, double y) {
    const double hi = fmax(x, y);
    return hi == -INFINITY ? -INFINITY : hi + log1p(exp(fmin(x, y) - hi));
}

constexpr int LOSS_THREADS = 256;

__global__ void __launch_bounds__(LOSS_THREADS, 2) fused_loss_kernel(LossArgs a) {
    const size_t n = blockIdx.x;
    const int target = a.targets[n];
    float* s = a.student + n * a.Vp_student;
    if (target < 0) {
        for (int i = threadIdx.x; i < a.Vp_student; i += blockDim.x) s[i] = 0.0f;
        return;  // the whole block leaves together
    }
    const float* t = a.cross_entropy ? nullptr : a.teacher + n * a.Vp_teacher;
    const double inv_tau = a.cross_entropy ? 1.0 : a.inv_tau, beta = a.beta;
    const bool pg = a.pg_coef != nullptr;
    const double s_target = s[target];
    // pass 1: normalisers of q = softmax(s / tau), p = softmax(t / tau), pi = softmax(s / t_sample)
    MaxSum ms{-INFINITY, 0.0}, mt{-INFINITY, 0.0}, mp{-INFINITY, 0.0};
    for (int i = threadIdx.x; i < a.V; i += blockDim.x) {
        ms = max_sum_add(ms, (double)s[i] * inv_tau);
        if (t) mt = max_sum_add(mt, (double)t[i] * inv_tau);
        if (pg) mp = max_sum_add(mp, (double)s[i] * a.pg_inv_t);
    }
    ms = block_max_sum(ms);
    const double lse_s = ms.m + log(ms.z);
    double lse_t = 0, lse_p = 0;
    if (t) { mt = block_max_sum(mt); lse_t = mt.m + log(mt.z); }
    if (pg) { mp = block_max_sum(mp); lse_p = mp.m + log(mp.z); }
    // pass 2: D and sum_i q_i g_i, with g = dD/dq up to a constant
    const double log_beta = log(beta), log_1mbeta = log1p(-beta);
    double D = 0, qg = 0;
    if (!t) {
        D = -(s_target - lse_s);
    } else {
        for (int i = threadIdx.x; i < a.V; i += blockDim.x) {
            const double lp = (double)t[i] * inv_tau - lse_t, lq = (double)s[i] * inv_tau - lse_s;
            const double p = exp(lp), q = exp(lq);
            if (beta == 0.0) {
                D += p * (lp - lq);
            } else if (beta == 1.0) {
                D += q * (lq - lp);
                qg += q * (lq - lp);
            } else {
                const double lm = log_mixture(log_beta + lp, log_1mbeta + lq);
                D += beta * p * (lp - lm) + (1.0 - beta) * q * (lq - lm);
                qg += q * (1.0 - beta) * (lq - lm);
            }
        }
        D = block_sum(D);
        qg = block_sum(qg);
    }
    __syncthreads();  // every read of the row above happens before any write below
    // pass 3: the gradient, over the logits it was computed from
    const double scale = a.weight[n] * inv_tau;
    const double coef = pg ? a.pg_coef[n] : 0.0;
    for (int i = threadIdx.x; i < a.V; i += blockDim.x) {
        const double lq = (double)s[i] * inv_tau - lse_s, q = exp(lq);
        double grad;
        if (!t) {
            grad = q - (i == target ? 1.0 : 0.0);
        } else {
            const double lp = (double)t[i] * inv_tau - lse_t, p = exp(lp);
            if (beta == 0.0) {
                grad = q - p;
            } else if (beta == 1.0) {
                grad = q * ((lq - lp) - qg);
            } else {
                const double lm = log_mixture(log_beta + lp, log_1mbeta + lq);
                grad = q * ((1.0 - beta) * (lq - lm) - qg);
            }
        }
        grad *= scale;
        if (pg) grad += coef * ((i == target ? 1.0 : 0.0) - exp((double)s[i] * a.pg_inv_t - lse_p));
        s[i] = (float)grad;
    }
    for (int i = a.V + threadIdx.x; i < a.Vp_student; i += blockDim.x) s[i] = 0.0f;
    if (threadIdx.x == 0) {
        a.per_position[n] = D;
        if (pg) a.logp[n] = s_target * a.pg_inv_t - lse_p;
    }
}
}  // namespace gpu

// full_row_loss's twin (loss.h): the fused kernel over every position, then the same
// fixed-order sums on the host (sum_position_losses).
//   teacher (B, T, Vp_teacher) or null, on the device; student (B, T, Vp_student) on the
//   device, which becomes the gradient
struct GpuLossBuffers {
    DeviceBuffer<int> targets;
    DeviceBuffer<double> weight, pg_coef, per_position, logp;
};
static double gpu_full_row_loss(GpuLossBuffers& buf, const TrainBatch& b, const float* teacher, int Vp_teacher,
                                float* student, int V, int Vp_student, bool cross_entropy, double beta, double tau,
                                LossNorm norm, double* mean_per_token = nullptr, PolicyGradientTerm* pg = nullptr) {
    const int N = b.B * b.T;
    std::vector<double> weight(N, 0.0), coef(pg ? N : 0, 0.0);
    for (int n = 0; n < N; n++) {
        if (b.targets[n] < 0) continue;
        weight[n] = position_weight(b, n / b.T, norm) * (pg ? pg->alpha : 1.0);
        if (pg) coef[n] = -pg->scale * pg->advantage[n / b.T] / pg->temperature;
    }
    buf.targets.upload(b.targets.data(), N);
    buf.weight.upload(weight);
    buf.per_position.ensure(N);
    buf.logp.ensure(N);
    gpu::LossArgs a;
    a.teacher = teacher; a.Vp_teacher = Vp_teacher; a.student = student; a.Vp_student = Vp_student; a.V = V;
    a.targets = buf.targets.ptr; a.weight = buf.weight.ptr; a.cross_entropy = cross_entropy;
    a.beta = beta; a.inv_tau = 1.0 / tau; a.per_position = buf.per_position.ptr; a.logp = buf.logp.ptr;
    if (pg) { buf.pg_coef.upload(coef); a.pg_coef = buf.pg_coef.ptr; a.pg_inv_t = 1.0 / pg->temperature; }
    GPU_LAUNCH(gpu::fused_loss_kernel, N, gpu::LOSS_THREADS, 0, gpu::stream(), a);
    std::vector<double> per_position(N), logp(pg ? N : 0);
    download(per_position.data(), buf.per_position.ptr, N);
    if (pg) download(logp.data(), buf.logp.ptr, N);
    return sum_position_losses(b, per_position, logp, norm, mean_per_token, pg);
}
