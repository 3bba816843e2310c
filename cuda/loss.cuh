// cuda/loss.cuh — the loss on the device: batch_loss's twin (loss.h), every divergence and
// teacher signal of the CPU path, in loss.h's order.
//
// - fused_loss_kernel (full_row_loss's and total_variation_row's twin): one block per
//   position n of the batch (N blocks, N the packed batch's positions). It reads the student's logits row (and the
//   teacher's), computes D(P, Q) of docs/algorithm.md §1 (forward KL, reverse KL, JSD(beta)
//   or TV at temperature tau), or SFT's cross-entropy, and overwrites the student's row with
//   the gradient, like llm.c's fused classifier: the model keeps one (N, Vp) buffer.
// - teacher_top_k_kernel and target_log_prob_kernel: the teacher's signal when the loss
//   needs less than its rows (teacher_top_k_row's and token_log_prob's twins);
//   top_k_loss_kernel: the divergence over the K + 1 buckets (top_k_divergence_row's twin);
//   sampled_token_gradient_kernel: the sampled reverse KL's gradient.
// - gpu_batch_loss: the entry point, the same dispatch as batch_loss.
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
    const int* teacher_row = nullptr; // (N) the teacher's row for position n (its LM head ran at targets only), or null: n
    bool cross_entropy = false;
    bool total_variation = false;    // TV(P, Q) over the full rows instead of JSD(beta)
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

// The end of a loss kernel's row: zeros over the padded columns, and (thread 0) the
// position's value and, with RL, log p(target) at the sampling temperature.
__device__ inline void finish_row(const LossArgs& a, float* s, size_t n, double D, double s_target, double lse_p) {
    for (int i = a.V + threadIdx.x; i < a.Vp_student; i += blockDim.x) s[i] = 0.0f;
    if (threadIdx.x == 0) {
        a.per_position[n] = D;
        if (a.pg_coef) a.logp[n] = s_target * a.pg_inv_t - lse_p;
    }
}

__global__ void __launch_bounds__(LOSS_THREADS, 2) fused_loss_kernel(LossArgs a) {
    const size_t n = blockIdx.x;
    const int target = a.targets[n];
    float* s = a.student + n * a.Vp_student;
    if (target < 0) {
        for (int i = threadIdx.x; i < a.Vp_student; i += blockDim.x) s[i] = 0.0f;
        return;  // the whole block leaves together
    }
    const float* t = a.cross_entropy ? nullptr : a.teacher + (a.teacher_row ? (size_t)a.teacher_row[n] : n) * a.Vp_teacher;
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
            if (a.total_variation) {
                double g;
                D += bucket_term(p, q, Objective::TotalVariation, 0.0, &g);  // each token its own bucket
                qg += q * g;
            } else if (beta == 0.0) {
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
            if (a.total_variation) {
                double g;
                bucket_term(p, q, Objective::TotalVariation, 0.0, &g);
                grad = q * (g - qg);
            } else if (beta == 0.0) {
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
    finish_row(a, s, n, D, s_target, lse_p);
}

// ---- the teacher's signal when the loss needs less than its rows (loss.h's TeacherSignal)

// teacher_top_k_row's twin, one block per row of `logits`: the row of batch position
// n = position_of[blockIdx.x] (a target).
// K rounds of a block-wide argmax, each over the tokens ranked after the last one picked,
// give the top-K in order with no marks and no sort (K V / threads comparisons a thread);
// then the normaliser and the tail's mass, summed over the tail itself.
//   logits (rows, Vp); position_of (rows); logp (N, K + 1) and ids (N, K) out, at those positions
__global__ void teacher_top_k_kernel(const float* logits, int Vp, const int* position_of, int V, int K,
                                     double inv_tau, float* logp, int* ids) {
    const size_t n = position_of[blockIdx.x];
    const float* x = logits + (size_t)blockIdx.x * Vp;
    float last_v = INFINITY, best_v = 0;
    int last_i = -1;  // nothing picked yet: every token ranks after it
    for (int k = 0; k < K; k++) {
        float v = -INFINITY;
        int id = V;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            if (ranks_before(last_v, last_i, x[i], i) && ranks_before(x[i], i, v, id)) { v = x[i]; id = i; }
        block_best(v, id);
        if (threadIdx.x == 0) ids[n * K + k] = id;
        if (k == 0) best_v = v;
        last_v = v;
        last_i = id;
    }
    const double m = (double)best_v;  // every exp below is at most 1
    double z = 0, tail = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const double e = exp(((double)x[i] - m) * inv_tau);
        z += e;
        if (ranks_before(last_v, last_i, x[i], i)) tail += e;  // after the K-th: the tail
    }
    z = block_sum(z);
    tail = block_sum(tail);
    const double log_z = log(z);
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        logp[n * (K + 1) + k] = (float)(((double)x[ids[n * K + k]] - m) * inv_tau - log_z);
    if (threadIdx.x == 0) logp[n * (K + 1) + K] = K < V ? (float)(log(tail) - log_z) : -INFINITY;
}

// token_log_prob's twin, one block per row of `logits`, the row of batch position
// n = position_of[blockIdx.x] (or n = blockIdx.x without it), skipped unless a target:
// log softmax(x / tau)[target], as a float (the teacher's signal) and/or a double, and the
// row's log-normaliser lse(x / tau) (the sampled reverse KL's gradient reuses it).
__global__ void target_log_prob_kernel(const float* logits, int Vp, const int* targets, const int* position_of, int V,
                                       double inv_tau, float* out_float, double* out_double, double* log_norm) {
    const size_t n = position_of ? (size_t)position_of[blockIdx.x] : blockIdx.x;
    const int y = targets[n];
    if (y < 0) return;
    const float* x = logits + (size_t)blockIdx.x * Vp;
    MaxSum ms{-INFINITY, 0.0};
    for (int i = threadIdx.x; i < V; i += blockDim.x) ms = max_sum_add(ms, (double)x[i] * inv_tau);
    ms = block_max_sum(ms);
    if (threadIdx.x != 0) return;
    const double lse = ms.m + log(ms.z), lp = (double)x[y] * inv_tau - lse;
    if (out_float) out_float[n] = (float)lp;
    if (out_double) out_double[n] = lp;
    if (log_norm) log_norm[n] = lse;
}

// The sampled reverse KL's gradient (loss.h's sampled_reverse_kl_loss), one block per
// position: coef[n] (onehot(target) - softmax(s / tau)) over the row, in place, from the
// log-normaliser target_log_prob_kernel left; zeros at masked positions and padded columns.
__global__ void sampled_token_gradient_kernel(float* student, int Vp, int V, const int* targets, const double* coef,
                                              const double* log_norm, double inv_tau) {
    const size_t n = blockIdx.x;
    float* s = student + n * Vp;
    const int y = targets[n];
    for (int i = threadIdx.x; i < Vp; i += blockDim.x) {  // each element read, then written, by one thread
        double g = 0;
        if (y >= 0 && i < V) g = coef[n] * ((i == y ? 1.0 : 0.0) - exp((double)s[i] * inv_tau - log_norm[n]));
        s[i] = (float)g;
    }
}

// top_k_divergence_row's twin over the batch (with RL's policy gradient, as the fused
// kernel), one block per position: D over the teacher's K + 1 buckets and its gradient,
// over the student's row in place. The bucket of a column is found by binary search in
// the position's ids sorted (a rank sort into sorted_ids / sorted_slot, (N, K) scratch);
// each bucket's term is loss.h's bucket_term, its derivative kept in g (N, K + 1) scratch.
struct TopKArgs {
    const float* logp = nullptr;    // (N, K + 1) the teacher's top-K log-probs, then the tail's
    const int* ids = nullptr;       // (N, K)
    int K = 0;
    Objective objective = Objective::Jsd;
    int* sorted_ids = nullptr;      // (N, K) scratch
    int* sorted_slot = nullptr;     // (N, K) scratch
    double* g = nullptr;            // (N, K + 1) scratch
};
__device__ inline int bucket_of(const int* sorted_ids, const int* sorted_slot, int K, int i) {
    int lo = 0, hi = K;  // the first sorted id >= i
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (sorted_ids[mid] < i) lo = mid + 1; else hi = mid;
    }
    return lo < K && sorted_ids[lo] == i ? sorted_slot[lo] : K;
}
__global__ void __launch_bounds__(LOSS_THREADS, 2) top_k_loss_kernel(LossArgs a, TopKArgs k) {
    const size_t n = blockIdx.x;
    const int target = a.targets[n], K = k.K;
    float* s = a.student + n * a.Vp_student;
    if (target < 0) {
        for (int i = threadIdx.x; i < a.Vp_student; i += blockDim.x) s[i] = 0.0f;
        return;
    }
    const bool pg = a.pg_coef != nullptr;
    const double inv_tau = a.inv_tau, s_target = s[target];
    const float* logp = k.logp + n * (K + 1);
    const int* ids = k.ids + n * K;
    int* sorted_ids = k.sorted_ids + n * K;
    int* sorted_slot = k.sorted_slot + n * K;
    double* g = k.g + n * (K + 1);
    // the ids in increasing order, each with its slot (ties, which a valid signal has not, by slot)
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
        int rank = 0;
        for (int o = 0; o < K; o++) rank += ids[o] < ids[j] || (ids[o] == ids[j] && o < j);
        sorted_ids[rank] = ids[j];
        sorted_slot[rank] = j;
    }
    MaxSum ms{-INFINITY, 0.0}, mp{-INFINITY, 0.0};
    for (int i = threadIdx.x; i < a.V; i += blockDim.x) {
        ms = max_sum_add(ms, (double)s[i] * inv_tau);
        if (pg) mp = max_sum_add(mp, (double)s[i] * a.pg_inv_t);
    }
    ms = block_max_sum(ms);  // its barriers also publish the sorted ids
    const double lse_s = ms.m + log(ms.z);
    double lse_p = 0;
    if (pg) { mp = block_max_sum(mp); lse_p = mp.m + log(mp.z); }
    double q_tail = 0;  // summed over the tail itself, not 1 - sum: no cancellation
    for (int i = threadIdx.x; i < a.V; i += blockDim.x)
        if (bucket_of(sorted_ids, sorted_slot, K, i) == K) q_tail += exp((double)s[i] * inv_tau - lse_s);
    q_tail = block_sum(q_tail);
    double D = 0, Qg = 0;
    for (int j = threadIdx.x; j <= K; j += blockDim.x) {
        const double P = exp((double)logp[j]);
        const double Q = j < K ? exp((double)s[ids[j]] * inv_tau - lse_s) : q_tail;
        D += bucket_term(P, Q, k.objective, a.beta, &g[j]);
        Qg += Q * g[j];
    }
    D = block_sum(D);    // its barriers publish g, and every read of the row happens before
    Qg = block_sum(Qg);  // any write below
    const double scale = a.weight[n] * inv_tau, coef = pg ? a.pg_coef[n] : 0.0;
    for (int i = threadIdx.x; i < a.V; i += blockDim.x) {
        const double q = exp((double)s[i] * inv_tau - lse_s);
        double grad = q * (g[bucket_of(sorted_ids, sorted_slot, K, i)] - Qg) * scale;
        if (pg) grad += coef * ((i == target ? 1.0 : 0.0) - exp((double)s[i] * a.pg_inv_t - lse_p));
        s[i] = (float)grad;
    }
    finish_row(a, s, n, D, s_target, lse_p);
}
}  // namespace gpu

// The per-position arrays of the loss on the device, reused from step to step.
struct GpuLossBuffers {
    DeviceBuffer<int> targets, teacher_row, sorted_ids, sorted_slot;
    DeviceBuffer<double> weight, pg_coef, per_position, logp, log_norm, bucket_g;
};

// The loss's per-position weights and RL's coefficients, uploaded, and the arguments every
// loss kernel shares.
static gpu::LossArgs loss_args(GpuLossBuffers& buf, const TrainBatch& b, float* student, int V, int Vp_student,
                               double tau, LossNorm norm, const PolicyGradientTerm* pg) {
    const int N = b.N;
    std::vector<double> weight(N, 0.0), coef(pg ? N : 0, 0.0);
    for (int n = 0; n < N; n++) {
        if (b.targets[n] < 0) continue;
        weight[n] = position_weight(b, b.row_of[n], norm) * (pg ? pg->alpha : 1.0);
        if (pg) coef[n] = -pg->scale * pg->advantage[b.row_of[n]] / pg->temperature;
    }
    buf.targets.upload(b.targets.data(), N);
    buf.weight.upload(weight);
    buf.per_position.ensure(N);
    buf.logp.ensure(N);
    gpu::LossArgs a;
    a.student = student; a.Vp_student = Vp_student; a.V = V;
    a.targets = buf.targets.ptr; a.weight = buf.weight.ptr;
    a.inv_tau = 1.0 / tau; a.per_position = buf.per_position.ptr; a.logp = buf.logp.ptr;
    if (pg) { buf.pg_coef.upload(coef); a.pg_coef = buf.pg_coef.ptr; a.pg_inv_t = 1.0 / pg->temperature; }
    return a;
}
// Each position's value (and log p(y) with RL) to the host, summed in the CPU's fixed order.
static double sum_on_host(GpuLossBuffers& buf, const TrainBatch& b, LossNorm norm, double* mean_per_token,
                          PolicyGradientTerm* pg) {
    const int N = b.N;
    std::vector<double> per_position(N), logp(pg ? N : 0);
    download(per_position.data(), buf.per_position.ptr, N);
    if (pg) download(logp.data(), buf.logp.ptr, N);
    return sum_position_losses(b, per_position, logp, norm, mean_per_token, pg);
}

// full_row_loss's twin (loss.h), and total_variation_row's over the batch: the fused kernel
// over every position, then the same fixed-order sums on the host (sum_position_losses).
//   teacher (N, Vp_teacher), or (targets, Vp_teacher) with teacher_row (N) on the
//   device, or null; student (N, Vp_student) on the device, which becomes the gradient
static double gpu_full_row_loss(GpuLossBuffers& buf, const TrainBatch& b, const float* teacher, int Vp_teacher,
                                float* student, int V, int Vp_student, bool cross_entropy, double beta, double tau,
                                LossNorm norm, double* mean_per_token = nullptr, PolicyGradientTerm* pg = nullptr,
                                bool total_variation = false, const int* teacher_row = nullptr) {
    gpu::LossArgs a = loss_args(buf, b, student, V, Vp_student, cross_entropy ? 1.0 : tau, norm, pg);
    a.teacher = teacher; a.Vp_teacher = Vp_teacher; a.teacher_row = teacher_row;
    a.cross_entropy = cross_entropy; a.total_variation = total_variation; a.beta = beta;
    GPU_LAUNCH(gpu::fused_loss_kernel, b.N, gpu::LOSS_THREADS, 0, gpu::stream(), a);
    return sum_on_host(buf, b, norm, mean_per_token, pg);
}

// The teacher's signal on the device (TeacherSignal's twin): top-K log-probs and ids, or
// the target's log-prob. Computed there from the teacher's logits (gpu_teacher_top_k,
// gpu_target_log_prob), or uploaded from an offline cache.
struct GpuTeacherSignal {
    int K = 0;
    DeviceBuffer<float> logp;          // (N, K + 1)
    DeviceBuffer<int> ids;             // (N, K)
    DeviceBuffer<float> target_logp;   // (N), with K = 0
    void upload(const TeacherSignal& t) {
        K = t.K;
        if (K) { logp.upload(t.logp); ids.upload(t.ids); } else target_logp.upload(t.target_logp);
    }
};

// top_k_divergence_row's twin over the batch (loss_over_positions with it): the top-K
// kernel, then the host's fixed-order sums.
static double gpu_top_k_loss(GpuLossBuffers& buf, const TrainBatch& b, const GpuTeacherSignal& signal, float* student,
                             int V, int Vp_student, Objective objective, double beta, double tau, LossNorm norm,
                             double* mean_per_token = nullptr, PolicyGradientTerm* pg = nullptr) {
    const int N = b.N, K = signal.K;
    gpu::LossArgs a = loss_args(buf, b, student, V, Vp_student, tau, norm, pg);
    a.beta = beta;
    gpu::TopKArgs k;
    k.logp = signal.logp.ptr; k.ids = signal.ids.ptr; k.K = K; k.objective = objective;
    k.sorted_ids = buf.sorted_ids.ensure((size_t)N * K);
    k.sorted_slot = buf.sorted_slot.ensure((size_t)N * K);
    k.g = buf.bucket_g.ensure((size_t)N * (K + 1));
    GPU_LAUNCH(gpu::top_k_loss_kernel, N, gpu::LOSS_THREADS, 0, gpu::stream(), a, k);
    return sum_on_host(buf, b, norm, mean_per_token, pg);
}

// sampled_reverse_kl_loss's twin: log q(y_t) and the row's normaliser per target on the
// device, the log-ratios to the host for the advantages (discounted_advantages, the
// CPU's code), each position's coefficient back, and the gradient kernel.
//   teacher_target_logp (N) on the device; student (N, Vp_student) on the device
static double gpu_sampled_reverse_kl_loss(GpuLossBuffers& buf, const TrainBatch& b, const float* teacher_target_logp,
                                          float* student, int V, int Vp_student, double tau, double discount,
                                          LossNorm norm, double* mean_per_token = nullptr) {
    const int N = b.N;
    buf.targets.upload(b.targets.data(), N);
    double* log_q = buf.logp.ensure(N);
    double* log_norm = buf.log_norm.ensure(N);
    GPU_LAUNCH(gpu::target_log_prob_kernel, N, gpu::LOSS_THREADS, 0, gpu::stream(), student, Vp_student,
               buf.targets.ptr, (const int*)nullptr, V, 1.0 / tau, (float*)nullptr, log_q, log_norm);
    std::vector<double> log_ratio(N, 0.0), student_lp(N);
    std::vector<float> teacher_f(N);
    download(student_lp.data(), log_q, N);
    download(teacher_f.data(), teacher_target_logp, N);
    for (int n = 0; n < N; n++)
        if (b.targets[n] >= 0) log_ratio[n] = student_lp[n] - teacher_f[n];
    std::vector<double> advantage, coef(N, 0.0);
    discounted_advantages(b, log_ratio, discount, advantage);
    for (int n = 0; n < N; n++)
        if (b.targets[n] >= 0) coef[n] = -position_weight(b, b.row_of[n], norm) * advantage[n] / tau;
    buf.pg_coef.upload(coef);
    GPU_LAUNCH(gpu::sampled_token_gradient_kernel, N, gpu::LOSS_THREADS, 0, gpu::stream(), student, Vp_student, V,
               buf.targets.ptr, buf.pg_coef.ptr, log_norm, 1.0 / tau);
    return sum_position_losses(b, log_ratio, {}, norm, mean_per_token, nullptr);
}

// batch_loss's twin (loss.h), the entry point of the GPU's loss: the same dispatch.
//   teacher (N, Vp_teacher) (or its target rows, with teacher_row) when the loss reads
//   whole rows, else signal; student (N, Vp_student), which becomes the gradient
static double gpu_batch_loss(GpuLossBuffers& buf, const TrainBatch& b, const float* teacher, int Vp_teacher,
                             const int* teacher_row, const GpuTeacherSignal& signal, float* student, int V,
                             int Vp_student, const LossSpec& spec, double* mean_per_token = nullptr,
                             PolicyGradientTerm* pg = nullptr) {
    if (spec.cross_entropy)
        return gpu_full_row_loss(buf, b, nullptr, 0, student, V, Vp_student, true, 0, 1, spec.norm, mean_per_token, pg);
    if (spec.objective == Objective::SampledReverseKl)
        return gpu_sampled_reverse_kl_loss(buf, b, signal.target_logp.ptr, student, V, Vp_student, spec.tau,
                                           spec.kl_discount, spec.norm, mean_per_token);
    if (spec.top_k == 0)
        return gpu_full_row_loss(buf, b, teacher, Vp_teacher, student, V, Vp_student, false, spec.beta, spec.tau,
                                 spec.norm, mean_per_token, pg, spec.objective == Objective::TotalVariation,
                                 teacher_row);
    GKD_ASSERT(signal.K == spec.top_k, "the teacher's top-K signal has another K than the loss");
    return gpu_top_k_loss(buf, b, signal, student, V, Vp_student, spec.objective, spec.beta, spec.tau, spec.norm,
                          mean_per_token, pg);
}

// The teacher's signal from its logits, on the device, at `count` target positions:
// teacher_top_k_row's or token_log_prob's twin at each.
//   logits (count, Vp), position_of (count): the batch position of each row; targets (N)
static void gpu_teacher_signal(GpuTeacherSignal& out, const float* logits, int Vp, const int* position_of,
                               const int* targets, int count, int V, int K, double tau) {
    if (count == 0) return;
    if (K)
        GPU_LAUNCH(gpu::teacher_top_k_kernel, count, gpu::THREADS, 0, gpu::stream(), logits, Vp, position_of, V, K,
                   1.0 / tau, out.logp.ptr, out.ids.ptr);
    else
        GPU_LAUNCH(gpu::target_log_prob_kernel, count, gpu::LOSS_THREADS, 0, gpu::stream(), logits, Vp, targets,
                   position_of, V, 1.0 / tau, out.target_logp.ptr, (double*)nullptr, (double*)nullptr);
}
