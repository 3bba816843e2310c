// gkd.cu — Generalized Knowledge Distillation (Agarwal et al., ICLR 2024) for GPT-2.
//
// This file holds the algorithm and the program around it:
//   1. the divergences D(P, Q) of SPEC section 1 (forward KL, reverse KL, JSD(beta)) and
//      cross-entropy, each computing value and gradient in one call per row of logits;
//   2. batched sampling with a KV cache (prefill the prompts, then one token per step);
//   3. the CUDA path (nvcc builds): a kernel or a cuBLAS call for every layer, the fused
//      divergence kernel, AdamW, and sampling with a KV cache, all on the device;
//   4. the GKD training step, written to read like the paper's Algorithm 1 (gkd_step),
//      each phase on the CPU or the GPU (--device);
//   5. evaluation, and the command line: init, distill, sft, sample, eval, tokenize,
//      convert, data, bench (one step timed by phase).
// The model itself (layers, forward/backward, checkpoints) is in model.h; Hugging Face
// checkpoints in safetensors.h; tokenizers in tokenizer.h.
//
// Non-obvious choices:
// - The divergence math runs in double per row even for fp32 logits: it is O(V) per
//   position against O(V*C) for the LM head that produced them, and it keeps small
//   probabilities exact enough to match an fp64 reference to ~1e-6.
// - The loss writes its gradient over the student's logits in place (each row is read
//   before it is written), so a model holds one (B, T, Vp) buffer; RL's policy gradient
//   is added in the same pass, before the row is overwritten.
// - Randomness is counter-based: the lambda coin of step k and the sampling RNG of
//   (step k, row b) are derived from (seed, k, b). A run is reproducible, the samples do
//   not depend on batch composition, and a resumed run needs no RNG state but the step.
// - A row is prompt + completion (+ EOS). The model reads all of it but the last token;
//   the logits at position t predict token t+1, so the targets are the positions
//   P-1 .. n-2. Rows are right-padded; with causal attention and positions starting at 0
//   in every row, padding never changes a real position's logits.
// - The file compiles as C++ (g++ -x c++) on machines without nvcc: then the CUDA path
//   (section 3, behind __CUDACC__) is left out and --device cuda is refused.
#ifndef GKD_CU  // the tests and fuzzers include this file
#define GKD_CU

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>
#include <csignal>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "data/convert.h"
#include "data/dataset.h"
#include "data/tasks.h"
#include "model.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "utils.h"

using nlohmann::json;

// ----------------------------------------------------------------------------
// 1. divergences and cross-entropy over one row of logits

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

static inline double log_add_exp(double a, double b) {
    double m = std::max(a, b);
    if (m == -INFINITY) return -INFINITY;
    return m + std::log1p(std::exp(std::min(a, b) - m));  // one exp: the larger term is exp(0)
}

// D(P, Q) for P = softmax(teacher/tau), Q = softmax(student/tau) over the V real columns:
// beta = 0 forward KL(P||Q), beta = 1 reverse KL(Q||P), else beta KL(P||M) + (1-beta) KL(Q||M)
// with M = beta P + (1-beta) Q. Writes grad_scale * dD/dstudent into dstudent[0..Vp)
// (padded columns get 0) when dstudent is not null. Returns D.
template <typename T>
double divergence_row(const T* teacher, const T* student, T* dstudent, int V, int Vp, double beta, double tau,
                      double grad_scale) {
    const double inv_tau = 1.0 / tau;
    double mt, lzt, ms, lzs;
    online_logsumexp(teacher, V, inv_tau, mt, lzt);
    online_logsumexp(student, V, inv_tau, ms, lzs);
    const double log_beta = std::log(beta), log_1mbeta = std::log1p(-beta);
    // log p, log q, and g = dD/dq (up to a constant that the softmax Jacobian removes)
    auto logs = [&](int i, double& lp, double& lq) {
        lp = (double)teacher[i] * inv_tau - mt - lzt;
        lq = (double)student[i] * inv_tau - ms - lzs;
    };
    // the first pass keeps q_i and g_i / (1 - beta)-style factors so the gradient pass
    // needs no more exp or log
    static thread_local std::vector<double> q_of, g_of;  // (V) one pair per thread, reused
    q_of.resize(V);
    g_of.resize(V);
    double D = 0, qg = 0;  // qg = sum_i q_i g_i
    for (int i = 0; i < V; i++) {
        double lp, lq;
        logs(i, lp, lq);
        double p = std::exp(lp), q = std::exp(lq);
        q_of[i] = q;
        if (beta == 0.0) {
            D += p * (lp - lq);
            g_of[i] = p;
        } else if (beta == 1.0) {
            double g = lq - lp;
            D += q * g;
            qg += q * g;
            g_of[i] = g;
        } else {
            double lm = log_add_exp(log_beta + lp, log_1mbeta + lq);
            D += beta * p * (lp - lm) + (1.0 - beta) * q * (lq - lm);
            double g = (1.0 - beta) * (lq - lm);
            qg += q * g;
            g_of[i] = g;
        }
    }
    if (!dstudent) return D;
    const double scale = grad_scale * inv_tau;
    for (int i = 0; i < V; i++) {
        double q = q_of[i];
        double grad = beta == 0.0 ? q - g_of[i] : q * (g_of[i] - qg);
        dstudent[i] = (T)(grad * scale);
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
// sequences and batches

// A training row: the prompt and its completion. The completion ends with EOS when it
// ended by itself; a sampled completion cut at max_new_tokens has none.
struct Sequence {
    const std::vector<int>* prompt = nullptr;
    std::vector<int> completion;
};

struct TrainBatch {
    int B = 0, T = 0;                // T = the longest row's input length
    std::vector<int> tokens;         // (B, T) model inputs, right-padded with EOS
    std::vector<int> targets;        // (B, T) the next token where a position is a target, else -1
    std::vector<int> target_count;   // (B) target positions per row (its L_y)
    int num_targets = 0;
};

// SPEC section 2: the completion tokens (and the EOS that ends them) are the targets;
// prompt positions never are.
static TrainBatch build_batch(const std::vector<Sequence>& rows, int eos) {
    TrainBatch b;
    b.B = (int)rows.size();
    for (const auto& r : rows) b.T = std::max(b.T, (int)(r.prompt->size() + r.completion.size()) - 1);
    b.tokens.assign((size_t)b.B * b.T, eos);
    b.targets.assign((size_t)b.B * b.T, -1);
    b.target_count.assign(b.B, 0);
    for (int i = 0; i < b.B; i++) {
        const std::vector<int>& p = *rows[i].prompt;
        const std::vector<int>& c = rows[i].completion;
        GKD_ASSERT(!p.empty() && !c.empty(), "a row needs a prompt token and a completion token");
        int P = (int)p.size(), n = P + (int)c.size();
        auto token = [&](int j) { return j < P ? p[j] : c[j - P]; };
        for (int t = 0; t < n - 1; t++) b.tokens[(size_t)i * b.T + t] = token(t);
        for (int t = P - 1; t < n - 1; t++) b.targets[(size_t)i * b.T + t] = token(t + 1);
        b.target_count[i] = n - P;
        b.num_targets += n - P;
    }
    return b;
}

enum class LossNorm { Sequence, Token };

// The weight of each target position in the batch loss: 1/(B * L_y) for the paper's
// per-sequence normalisation, 1/(number of targets) for TRL's per-token one.
static double position_weight(const TrainBatch& b, int row, LossNorm norm) {
    return norm == LossNorm::Sequence ? 1.0 / ((double)b.B * b.target_count[row]) : 1.0 / b.num_targets;
}

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

// The batch loss from each position's value (and log p(y) for the policy gradient), summed
// in a fixed order: shared by the CPU and GPU paths, so both add the same way.
static double sum_batch_loss(const TrainBatch& b, const std::vector<double>& per_position,
                             const std::vector<double>& logp, LossNorm norm, double* mean_per_token,
                             PolicyGradientTerm* pg) {
    double loss = 0, total = 0;
    if (pg) pg->surrogate = 0;
    for (int n = 0; n < b.B * b.T; n++)
        if (b.targets[n] >= 0) {
            loss += per_position[n] * position_weight(b, n / b.T, norm);
            total += per_position[n];
            if (pg) pg->surrogate -= pg->advantage[n / b.T] * logp[n] / b.B;
        }
    if (mean_per_token) *mean_per_token = total / b.num_targets;
    return loss;
}

// Loss over the batch and its gradient over the student logits, written into dstudent
// (B, T, Vps); non-target positions get zero gradient. dstudent may be the student
// logits themselves: each row is read before it is overwritten, so the model keeps one
// (B, T, Vp) buffer, as llm.c's fused classifier does. teacher may be null for
// cross-entropy (sft). With pg, the divergence is weighted by pg->alpha and the policy
// gradient added. Per-position values are summed in a fixed order.
template <typename T>
double batch_loss(const TrainBatch& b, const T* teacher, int Vpt, const T* student, T* dstudent, int V, int Vps,
                  bool cross_entropy, double beta, double tau, LossNorm norm, double* mean_per_token = nullptr,
                  PolicyGradientTerm* pg = nullptr) {
    const int N = b.B * b.T;
    std::vector<double> per_position(N, 0.0), logp(pg ? N : 0, 0.0);
    #pragma omp parallel for schedule(dynamic, 8)
    for (int n = 0; n < N; n++) {
        const T* s = student + (size_t)n * Vps;
        T* ds = dstudent ? dstudent + (size_t)n * Vps : nullptr;
        int target = b.targets[n];
        if (target < 0) {
            if (ds) std::fill(ds, ds + Vps, T(0));
            continue;
        }
        double w = position_weight(b, n / b.T, norm);
        static thread_local std::vector<double> pg_grad;  // (V) one per thread, reused
        if (pg) {  // the policy gradient reads this row's logits before they become gradients
            pg_grad.assign(V, 0.0);
            double g = -pg->scale * pg->advantage[n / b.T] / pg->temperature;
            logp[n] = policy_gradient_row(s, target, V, 1.0 / pg->temperature, g, pg_grad.data());
            w *= pg->alpha;
        }
        per_position[n] = cross_entropy
            ? cross_entropy_row(s, target, ds, V, Vps, w)
            : divergence_row(teacher + (size_t)n * Vpt, s, ds, V, Vps, beta, tau, w);
        if (pg) for (int i = 0; i < V; i++) ds[i] += (T)pg_grad[i];
    }
    return sum_batch_loss(b, per_position, logp, norm, mean_per_token, pg);
}

// Advantages r - baseline: the mean reward of the row's own prompt when each prompt has
// K > 1 samples (rows k*K .. k*K+K-1), else the batch mean.
static std::vector<double> advantages(const std::vector<double>& reward, int samples_per_prompt) {
    const size_t n = reward.size(), K = samples_per_prompt > 1 ? samples_per_prompt : n;
    std::vector<double> a(n);
    for (size_t g = 0; g < n; g += K) {
        double mean = 0;
        for (size_t i = g; i < g + K; i++) mean += reward[i];
        mean /= K;
        for (size_t i = g; i < g + K; i++) a[i] = reward[i] - mean;
    }
    return a;
}

// ----------------------------------------------------------------------------
// 2. sampling with a KV cache

// softmax(logits / temperature) over the V real tokens; temperature 0 is argmax (the
// lowest id wins ties).
static int pick_token(const float* logits, int V, double temperature, Rng& rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature == 0.0) return best;
    double mx = logits[best], total = 0;
    for (int i = 0; i < V; i++) total += std::exp(((double)logits[i] - mx) / temperature);
    double u = rng.uniform() * total, cum = 0;
    int last_positive = best;
    for (int i = 0; i < V; i++) {
        double w = std::exp(((double)logits[i] - mx) / temperature);
        if (w > 0) last_positive = i;
        cum += w;
        if (cum > u) return i;
    }
    return last_positive;  // u landed on rounding slack at the very end
}

// Reusable buffers for batched generation from one model.
struct Generator {
    KVCache<float> cache;
    InferScratch<float> scratch;
    std::vector<float> logits;                       // (rows, Vp)
};

// The bookkeeping of batched generation, whichever device runs the model: prefill all
// prompts at once, then decode one token per step for the rows still going. Row b stops
// at its first EOS (kept) or after budgets[b] tokens.
//   run(tokens, cache_row, start, n_new, Bn, Tn): gpt_infer's arguments; leaves each
//       row's next-token logits in slot order
//   pick(active, draws): the next token of each slot i (batch row active[i], its draws[i]-th)
template <typename Run, typename Pick>
static std::vector<std::vector<int>> generation_loop(const std::vector<const std::vector<int>*>& prompts,
                                                     const std::vector<int>& budgets, int eos, int context, Run run,
                                                     Pick pick) {
    const int Bn = (int)prompts.size();
    std::vector<std::vector<int>> out(Bn);
    if (Bn == 0) return out;
    int Pmax = 0;
    for (auto* p : prompts) Pmax = std::max(Pmax, (int)p->size());
    std::vector<int> tokens((size_t)Bn * Pmax, eos), cache_row(Bn), start(Bn, 0), n_new(Bn), draws(Bn);
    for (int b = 0; b < Bn; b++) {
        const std::vector<int>& p = *prompts[b];
        GKD_ASSERT(budgets[b] >= 1 && (int)p.size() + budgets[b] <= context, "budget past the context");
        std::copy(p.begin(), p.end(), tokens.begin() + (size_t)b * Pmax);
        cache_row[b] = b;
        n_new[b] = (int)p.size();
    }
    run(tokens.data(), cache_row.data(), start.data(), n_new.data(), Bn, Pmax);
    std::vector<int> active(Bn);  // active[i] = the batch row whose logits are in slot i
    for (int b = 0; b < Bn; b++) active[b] = b;
    while (!active.empty()) {
        for (size_t i = 0; i < active.size(); i++) draws[i] = (int)out[active[i]].size();
        std::vector<int> picked = pick(active, draws), still;
        for (size_t i = 0; i < active.size(); i++) {
            int b = active[i];
            out[b].push_back(picked[i]);
            if (picked[i] != eos && (int)out[b].size() < budgets[b]) still.push_back(b);
        }
        active.swap(still);
        if (active.empty()) break;
        int n = (int)active.size();
        for (int i = 0; i < n; i++) {
            int b = active[i];
            tokens[i] = out[b].back();
            cache_row[i] = b;
            start[i] = (int)(prompts[b]->size() + out[b].size()) - 1;
            n_new[i] = 1;
        }
        run(tokens.data(), cache_row.data(), start.data(), n_new.data(), n, 1);
    }
    return out;
}

// Samples a completion for every prompt (generation_loop) on the CPU. Row b's randomness
// comes from (seed, stream, row_ids[b]) alone.
static std::vector<std::vector<int>> generate(const GPT<float>& m, Generator& g,
                                              const std::vector<const std::vector<int>*>& prompts,
                                              const std::vector<int>& budgets, double temperature, int eos,
                                              uint64_t seed, uint64_t stream, const std::vector<uint64_t>& row_ids) {
    const int Bn = (int)prompts.size(), Vp = m.config.padded_vocab_size, V = m.config.vocab_size;
    std::vector<Rng> rngs;
    for (int b = 0; b < Bn; b++) rngs.emplace_back(derive_seed(seed, stream, row_ids[b]));
    g.cache.allocate(m.config, Bn);
    g.logits.resize((size_t)Bn * Vp);
    auto run = [&](const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn) {
        gpt_infer(m, g.cache, g.scratch, tokens, cache_row, start, n_new, n, Tn, g.logits.data(), false);
    };
    auto pick = [&](const std::vector<int>& active, const std::vector<int>&) {
        std::vector<int> picked(active.size());
        for (size_t i = 0; i < active.size(); i++)
            picked[i] = pick_token(g.logits.data() + i * Vp, V, temperature, rngs[active[i]]);
        return picked;
    };
    return generation_loop(prompts, budgets, eos, m.config.max_seq_len, run, pick);
}

// ----------------------------------------------------------------------------
// optimizer and schedule

struct AdamW {
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    std::vector<float> m, v;  // first and second moments, like the parameters
    long long t = 0;          // updates taken
};

// PyTorch's AdamW, in float as PyTorch computes it: decoupled weight decay (only on
// PARAMETER_DECAYS tensors), then Adam with bias correction. The gradient is multiplied
// by grad_scale on the way in: that is how clipping is applied, without a pass of its own
// over the gradients. One fused loop per tensor: the update is memory-bound.
static void adamw_update(GPT<float>& model, AdamW& opt, double lr, double grad_scale = 1.0) {
    if (opt.m.empty()) { opt.m.assign(model.num_parameters, 0.f); opt.v.assign(model.num_parameters, 0.f); }
    opt.t++;
    const double bc1 = 1.0 - std::pow(opt.beta1, (double)opt.t), bc2 = 1.0 - std::pow(opt.beta2, (double)opt.t);
    const float beta1 = (float)opt.beta1, beta2 = (float)opt.beta2, eps = (float)opt.eps, scale = (float)grad_scale;
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)std::sqrt(bc2);
    size_t offset = 0;
    for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
        const size_t n = model.param_sizes[k];
        const float keep = (float)(1.0 - lr * (PARAMETER_DECAYS[k] ? opt.weight_decay : 0.0));
        float* p = model.params_memory.data() + offset;
        const float* g = model.grads_memory.data() + offset;
        float* m = opt.m.data() + offset;
        float* v = opt.v.data() + offset;
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * scale;
            float mi = beta1 * m[i] + (1.0f - beta1) * gi;
            float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * keep - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
        }
        offset += n;
    }
}

// Global L2 norm of the gradient, summed over fixed chunks in a fixed order.
static double grad_norm(const GPT<float>& model) {
    const size_t n = model.num_parameters, chunk = 1 << 16, nchunks = (n + chunk - 1) / chunk;
    std::vector<double> partial(nchunks, 0.0);
    #pragma omp parallel for
    for (size_t c = 0; c < nchunks; c++) {
        double s = 0;
        for (size_t i = c * chunk; i < std::min(n, (c + 1) * chunk); i++) s += (double)model.grads_memory[i] * model.grads_memory[i];
        partial[c] = s;
    }
    double total = 0;
    for (double s : partial) total += s;
    return std::sqrt(total);
}

// PyTorch's clip_grad_norm_: the gradient is scaled by max_norm / (norm + 1e-6) when that
// is below 1 (max_norm 0: no clipping). adamw_update applies the factor.
static double clip_coefficient(double norm, double max_norm) {
    if (max_norm <= 0) return 1.0;
    return std::min(1.0, max_norm / (norm + 1e-6));
}

enum class Schedule { Constant, Cosine };

// Linear warmup over `warmup` steps (step k gets (k+1)/warmup of the rate), then constant
// or a cosine decay to zero at the last step.
static double learning_rate(double lr, Schedule schedule, int warmup, int steps, int step) {
    if (step < warmup) return lr * (step + 1) / warmup;
    if (schedule == Schedule::Constant) return lr;
    double progress = (double)(step - warmup) / std::max(1, steps - warmup);
    return lr * 0.5 * (1.0 + std::cos(M_PI * progress));
}

// ----------------------------------------------------------------------------
// 3. the CUDA path (nvcc builds only: the g++ build of this file skips this section)
//
// The same model and the same step as the CPU path, on one GPU. What to know:
// - Parameters, gradients, AdamW's moments and activations are each one cudaMalloc carved
//   into model.h's named tensors (ParameterTensors, ActivationTensors), in the CPU's
//   layout: a model goes to the device and back in one copy, and the tests compare any
//   tensor with its CPU twin element for element.
// - Every layer is a gpu:: function named like its CPU op in model.h, forward and
//   backward side by side. Matmuls are cuBLAS SGEMMs: fp32 (the parity mode), or TF32
//   tensor cores with --tf32. Everything else is a kernel written here.
// - Attention is llm.c's: q, k, v permuted to (B, NH, T, hs), scores and output as batched
//   GEMMs, a causal softmax kernel (max subtracted) between them.
// - No atomics: every reduction (layernorm and bias gradients, the embedding gradient
//   grouped by token on the host, the loss, the gradient norm) sums in a fixed order, so
//   a run is reproducible on a given GPU.
// - The loss is one fused kernel per position, like llm.c's fused classifier: an online
//   max/sum for both softmaxes, the divergence, and its gradient written over the student's
//   logits, in double as on the CPU.
// - Sampling stays on the device: KV cache, decode attention over each row's own length,
//   and a Gumbel-max draw argmax(logits/t + G) whose noise is a hash of (row seed, draw,
//   token id): counter-based, so a run is reproducible. Only the B new ids come back per
//   decode step; the CPU path draws from the same distribution with its own generator, so
//   sampled tokens differ between devices (greedy ones do not).
#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nvtx3/nvToolsExt.h>

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
static void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
    if (e == cudaSuccess) return;
    const char* hint = e == cudaErrorMemoryAllocation ? " (out of device memory: lower --batch or --max-new-tokens)"
                     : e == cudaErrorNoKernelImageForDevice ? " (this binary has no code for this GPU: rebuild with make GPU_ARCH=sm_XY)"
                     : e == cudaErrorInsufficientDriver ? " (the driver is older than this CUDA toolkit)" : "";
    GKD_FAIL("%s:%d: CUDA error: %s, in %s%s", file, line, cudaGetErrorString(e), what, hint);
}
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)
static void cublas_check(cublasStatus_t s, const char* what, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) GKD_FAIL("%s:%d: cuBLAS error %d in %s", file, line, (int)s, what);
}

// NVTX ranges name the phases of a step in Nsight Systems' timeline.
struct NvtxRange {
    explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
    ~NvtxRange() { nvtxRangePop(); }
};

// cuBLAS is opened when a GPU run starts, not linked: loading it (with cuBLASLt, hundreds
// of MB) cost every start of gkd 60 ms and 220 MB of RSS, CPU runs included. The four
// functions gkd calls, looked up by name.
struct CublasApi {
    decltype(&cublasCreate_v2) create = nullptr;
    decltype(&cublasSetMathMode) set_math_mode = nullptr;
    decltype(&cublasSgemm_v2) sgemm = nullptr;
    decltype(&cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
};
static CublasApi& cublas() {
    static CublasApi api;
    return api;
}
static void load_cublas() {
    CublasApi& api = cublas();
    if (api.create) return;
    const std::string names[] = {strf("libcublas.so.%d", CUBLAS_VER_MAJOR), "libcublas.so"};
    void* lib = nullptr;
    for (const std::string& name : names)
        if ((lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib)
        GKD_FAIL("--device cuda: cannot load cuBLAS %s (%s); put the CUDA toolkit's library folder on LD_LIBRARY_PATH",
                 names[0].c_str(), dlerror());
    auto symbol = [&](const char* name) {
        void* f = dlsym(lib, name);
        if (!f) GKD_FAIL("--device cuda: %s lacks %s: a cuBLAS older than this build's (%d)", names[0].c_str(), name,
                         CUBLAS_VER_MAJOR);
        return f;
    };
    api.create = (decltype(api.create))symbol("cublasCreate_v2");
    api.set_math_mode = (decltype(api.set_math_mode))symbol("cublasSetMathMode");
    api.sgemm = (decltype(api.sgemm))symbol("cublasSgemm_v2");
    api.sgemm_strided_batched = (decltype(api.sgemm_strided_batched))symbol("cublasSgemmStridedBatched");
}

// The device, the cuBLAS handle and the precision mode, set once by gpu_init.
struct GpuContext {
    bool ready = false, tf32 = false;
    cublasHandle_t blas = nullptr;
    cudaDeviceProp prop{};
    double clock_hz = 0;                     // the SM clock the peak rates assume
    size_t bytes_now = 0, bytes_peak = 0;    // what gkd has allocated on the device
};
static GpuContext& gpu_context() { static GpuContext g; return g; }

static int gpu_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;  // no driver or no device: 0
}

static void gpu_init(bool tf32) {
    GpuContext& g = gpu_context();
    if (!g.ready) {
        if (gpu_count() == 0) GKD_FAIL("--device cuda: no CUDA GPU is visible (nvidia-smi should list one); use --device cpu");
        CUDA_CHECK(cudaSetDevice(0));
        CUDA_CHECK(cudaGetDeviceProperties(&g.prop, 0));
        int khz = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
        g.clock_hz = khz * 1e3;
        load_cublas();
        CUBLAS_CHECK(cublas().create(&g.blas));
        g.ready = true;
    }
    g.tf32 = tf32;
    CUBLAS_CHECK(cublas().set_math_mode(g.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

// Peak rates of the card at its boost clock, for MFU: fp32 on the CUDA cores (128 FMA
// lanes per SM from sm_86 on, 64 on sm_80), TF32 on the tensor cores (dense).
static double gpu_peak_flops(bool tf32) {
    const GpuContext& g = gpu_context();
    const int cc = g.prop.major * 10 + g.prop.minor;
    double fp32_per_sm_clock = 2.0 * (cc == 80 ? 64 : 128);
    double tf32_per_sm_clock = cc >= 90 ? 2048 : cc == 80 ? 1024 : 512;
    return g.prop.multiProcessorCount * g.clock_hz * (tf32 ? tf32_per_sm_clock : fp32_per_sm_clock);
}

// A growable device array, counted in gpu_context's memory tally.
template <typename T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t count = 0;
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() { release(); }
    void release() {
        if (!ptr) return;
        cudaFree(ptr);
        gpu_context().bytes_now -= count * sizeof(T);
        ptr = nullptr;
        count = 0;
    }
    // at least n elements; the contents are not kept when it grows
    T* ensure(size_t n) {
        if (n <= count) return ptr;
        release();
        CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T)));
        count = n;
        GpuContext& g = gpu_context();
        g.bytes_now += n * sizeof(T);
        g.bytes_peak = std::max(g.bytes_peak, g.bytes_now);
        return ptr;
    }
    void upload(const T* host, size_t n) { ensure(n); CUDA_CHECK(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice)); }
    void upload(const std::vector<T>& host) { upload(host.data(), host.size()); }
};

template <typename T>
static void download(T* host, const T* device, size_t n) {
    CUDA_CHECK(cudaMemcpy(host, device, n * sizeof(T), cudaMemcpyDeviceToHost));
}

namespace gpu {

constexpr int THREADS = 256;
inline unsigned blocks_for(size_t n, int threads = THREADS) { return (unsigned)((n + threads - 1) / threads); }
constexpr unsigned FULL_MASK = 0xffffffffu;

// ---- reductions: warp shuffles, then one value per warp through shared memory

template <typename T>
__device__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the result.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // a previous call's readers are done with `partial`
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    T total = lane < warps ? partial[lane] : T(0);
    return warp_sum(total);
}

// A running softmax normaliser: max m and sum z of exp(x - m), merged in any grouping.
struct MaxSum {
    double m, z;
};
__device__ inline MaxSum max_sum_add(MaxSum a, double x) {
    if (x > a.m) return {x, a.z * exp(a.m - x) + 1.0};
    return {a.m, a.z + exp(x - a.m)};
}
__device__ inline MaxSum max_sum_merge(MaxSum a, MaxSum b) {
    if (a.m < b.m) { MaxSum t = a; a = b; b = t; }
    if (b.m == -INFINITY) return a;
    return {a.m, a.z + b.z * exp(b.m - a.m)};
}
__device__ MaxSum block_max_sum(MaxSum v) {
    __shared__ double pm[32], pz[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1)
        v = max_sum_merge(v, {__shfl_xor_sync(FULL_MASK, v.m, o), __shfl_xor_sync(FULL_MASK, v.z, o)});
    __syncthreads();
    if (lane == 0) { pm[warp] = v.m; pz[warp] = v.z; }
    __syncthreads();
    MaxSum w = lane < warps ? MaxSum{pm[lane], pz[lane]} : MaxSum{-INFINITY, 0.0};
    for (int o = 16; o > 0; o >>= 1)
        w = max_sum_merge(w, {__shfl_xor_sync(FULL_MASK, w.m, o), __shfl_xor_sync(FULL_MASK, w.z, o)});
    return w;
}

// ---- GEMMs through cuBLAS, in the row-major terms of model.h's gemm:
// C (M, N) = op(A) op(B) + beta C. cuBLAS is column-major, and a row-major matrix is its
// column-major transpose, so we ask it for C^T = op(B)^T op(A)^T.
static void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                 float beta, float* C, int ldc) {
    const float one = 1.0f;
    CUBLAS_CHECK(cublas().sgemm(gpu_context().blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                             N, M, K, &one, B, ldb, A, lda, &beta, C, ldc));
}
// `batch` independent products, each operand `stride_*` floats after the previous one
static void gemm_batched(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, long long stride_a,
                         const float* B, int ldb, long long stride_b, float beta, float* C, int ldc, long long stride_c,
                         int batch) {
    const float one = 1.0f;
    CUBLAS_CHECK(cublas().sgemm_strided_batched(gpu_context().blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &one, B, ldb, stride_b, A, lda,
                                           stride_a, &beta, C, ldc, stride_c, batch));
}

// ---- encoder

__global__ void encoder_forward_kernel(float* out, const int* inp, const float* wte, const float* wpe, int Tn, int C,
                                       size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / C;
    int c = (int)(i % C), t = (int)(n % Tn);
    out[i] = wte[(size_t)inp[n] * C + c] + wpe[(size_t)t * C + c];
}
// out (B, T, C) = wte[token] + wpe[position]
static void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B, int Tn, int C) {
    size_t total = (size_t)B * Tn * C;
    encoder_forward_kernel<<<blocks_for(total), THREADS>>>(out, inp, wte, wpe, Tn, C, total);
    CUDA_LAUNCH_CHECK();
}

// dwpe: one thread per (t, c), summing over the rows b in order
__global__ void position_grad_kernel(float* dwpe, const float* dout, int B, int Tn, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= Tn * C) return;
    float s = 0;
    for (int b = 0; b < B; b++) s += dout[(size_t)b * Tn * C + i];
    dwpe[i] += s;
}
// dwte: one block per distinct token, its positions (in order) listed by the host
__global__ void token_grad_kernel(float* dwte, const float* dout, const int* token_ids, const int* first,
                                  const int* positions, int C) {
    const int u = blockIdx.x, tok = token_ids[u];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0;
        for (int k = first[u]; k < first[u + 1]; k++) s += dout[(size_t)positions[k] * C + c];
        dwte[(size_t)tok * C + c] += s;
    }
}
// The positions of each token, grouped: what token_grad_kernel sums without atomics.
struct TokenGroups {
    std::vector<int> token_ids, first, positions;  // (U), (U + 1), (N)
    void build(const int* tokens, int N) {
        std::vector<int> order(N);
        for (int i = 0; i < N; i++) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return tokens[a] < tokens[b]; });
        token_ids.clear();
        first.clear();
        positions = order;
        for (int k = 0; k < N; k++)
            if (k == 0 || tokens[order[k]] != tokens[order[k - 1]]) { token_ids.push_back(tokens[order[k]]); first.push_back(k); }
        first.push_back(N);
    }
};
struct DeviceTokenGroups {
    DeviceBuffer<int> token_ids, first, positions;
    int count = 0;
    void upload(const TokenGroups& g) {
        token_ids.upload(g.token_ids);
        first.upload(g.first);
        positions.upload(g.positions);
        count = (int)g.token_ids.size();
    }
};
static void encoder_backward(float* dwte, float* dwpe, const float* dout, const DeviceTokenGroups& groups, int B, int Tn,
                             int C) {
    position_grad_kernel<<<blocks_for((size_t)Tn * C), THREADS>>>(dwpe, dout, B, Tn, C);
    CUDA_LAUNCH_CHECK();
    if (groups.count == 0) return;
    token_grad_kernel<<<groups.count, 128>>>(dwte, dout, groups.token_ids.ptr, groups.first.ptr, groups.positions.ptr, C);
    CUDA_LAUNCH_CHECK();
}

// ---- per-column sums over rows (bias and LayerNorm parameter gradients), in two fixed-order
// passes: chunks of COLUMN_CHUNK rows, then the chunks in order

constexpr int COLUMN_CHUNK = 32;
inline size_t column_scratch_size(int N, int C) { return 2 * (size_t)((N + COLUMN_CHUNK - 1) / COLUMN_CHUNK) * C; }

// partial_b[chunk][c] = sum of dout over the chunk's rows; with inp, also
// partial_w[chunk][c] = sum of dout * (inp - mean) * rstd (LayerNorm's weight gradient)
__global__ void column_partials_kernel(float* partial_w, float* partial_b, const float* dout, int ld, const float* inp,
                                       const float* mean, const float* rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    float sw = 0, sb = 0;
    for (int n = chunk * COLUMN_CHUNK; n < min(N, (chunk + 1) * COLUMN_CHUNK); n++) {
        float d = dout[(size_t)n * ld + c];
        sb += d;
        if (inp) sw += d * (inp[(size_t)n * C + c] - mean[n]) * rstd[n];
    }
    partial_b[(size_t)chunk * C + c] = sb;
    if (inp) partial_w[(size_t)chunk * C + c] = sw;
}
__global__ void column_totals_kernel(float* dw, float* db, const float* partial_w, const float* partial_b, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sw = 0, sb = 0;
    for (int k = 0; k < chunks; k++) {
        sb += partial_b[(size_t)k * C + c];
        if (dw) sw += partial_w[(size_t)k * C + c];
    }
    db[c] += sb;
    if (dw) dw[c] += sw;
}
// db (C) += column sums of dout (N, C; row stride ld); with dw, LayerNorm's weight gradient too
static void column_sums(float* dw, float* db, const float* dout, int ld, const float* inp, const float* mean,
                        const float* rstd, int N, int C, float* scratch) {
    const int chunks = (N + COLUMN_CHUNK - 1) / COLUMN_CHUNK;
    float* partial_b = scratch;
    float* partial_w = scratch + (size_t)chunks * C;
    column_partials_kernel<<<dim3(blocks_for(C, 128), chunks), 128>>>(partial_w, partial_b, dout, ld, inp, mean, rstd, N, C);
    CUDA_LAUNCH_CHECK();
    column_totals_kernel<<<blocks_for(C, 128), 128>>>(dw, db, partial_w, partial_b, chunks, C);
    CUDA_LAUNCH_CHECK();
}

// ---- layernorm: one warp per row

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                         const float* bias, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* x = inp + (size_t)row * C;
    float s = 0;
    for (int i = lane; i < C; i += 32) s += x[i];
    const float m = warp_sum(s) / C;
    float v = 0;
    for (int i = lane; i < C; i += 32) { float d = x[i] - m; v += d * d; }
    const float r = 1.0f / sqrtf(warp_sum(v) / C + 1e-5f);
    float* o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32) o[i] = (x[i] - m) * r * weight[i] + bias[i];
    if (mean && lane == 0) { mean[row] = m; rstd[row] = r; }
}
// out (N, C), mean/rstd (N) or null: normalise each row, biased variance, eps 1e-5
static void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                              const float* bias, int N, int C) {
    layernorm_forward_kernel<<<blocks_for((size_t)N * 32), THREADS>>>(out, mean, rstd, inp, weight, bias, N, C);
    CUDA_LAUNCH_CHECK();
}

__global__ void layernorm_backward_kernel(float* dinp, const float* dout, const float* inp, const float* weight,
                                          const float* mean, const float* rstd, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* d = dout + (size_t)row * C;
    const float* x = inp + (size_t)row * C;
    const float m = mean[row], s = rstd[row];
    float dnorm_mean = 0, dnorm_norm_mean = 0;
    for (int i = lane; i < C; i += 32) {
        float norm = (x[i] - m) * s, dnorm = weight[i] * d[i];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean = warp_sum(dnorm_mean) / C;
    dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
    float* dx = dinp + (size_t)row * C;
    for (int i = lane; i < C; i += 32) {
        float norm = (x[i] - m) * s, dnorm = weight[i] * d[i];
        dx[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
}
// scratch: column_scratch_size(N, C) floats
static void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                               const float* weight, const float* mean, const float* rstd, int N, int C, float* scratch) {
    layernorm_backward_kernel<<<blocks_for((size_t)N * 32), THREADS>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    CUDA_LAUNCH_CHECK();
    column_sums(dweight, dbias, dout, C, inp, mean, rstd, N, C, scratch);
}

// ---- matmul: out (N, OC) = inp (N, C) weight^T (OC, C) + bias; out's rows are ld_out apart

__global__ void add_bias_kernel(float* out, const float* bias, int OC, int ld_out, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / OC;
    int o = (int)(i % OC);
    out[n * ld_out + o] += bias[o];
}
static void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                           int ld_out) {
    gemm(false, true, N, OC, C, inp, C, weight, C, 0.0f, out, ld_out);
    if (!bias) return;
    size_t total = (size_t)N * OC;
    add_bias_kernel<<<blocks_for(total), THREADS>>>(out, bias, OC, ld_out, total);
    CUDA_LAUNCH_CHECK();
}
// accumulates: dinp (N, C) += dout weight; dweight (OC, C) += dout^T inp; dbias += column sums
static void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, int N, int C, int OC, int ld_out, float* scratch) {
    gemm(false, false, N, C, OC, dout, ld_out, weight, C, 1.0f, dinp, C);
    gemm(true, false, OC, C, N, dout, ld_out, inp, C, 1.0f, dweight, C);
    if (dbias) column_sums(nullptr, dbias, dout, ld_out, nullptr, nullptr, nullptr, N, OC, scratch);
}

// ---- attention

// Element idx of a (B, NH, T, hs) tensor lives at this offset of a (B, T, ld) one, at
// column h*hs + i: how heads are interleaved in qkv and in the attention output.
__device__ inline size_t interleaved_offset(size_t idx, int Tn, int NH, int hs, int ld) {
    int i = (int)(idx % hs);
    size_t r = idx / hs;
    int t = (int)(r % Tn);
    r /= Tn;
    int h = (int)(r % NH);
    size_t b = r / NH;
    return (b * Tn + t) * ld + (size_t)h * hs + i;
}
// dst (B, NH, T, hs) <- src (B, T, ld)
__global__ void split_heads_kernel(float* dst, const float* src, int ld, int Tn, int NH, int hs, size_t total) {
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx < total) dst[idx] = src[interleaved_offset(idx, Tn, NH, hs, ld)];
}
// the inverse, written or added: dst (B, T, ld) <- src (B, NH, T, hs)
__global__ void merge_heads_kernel(float* dst, int ld, const float* src, int Tn, int NH, int hs, bool accumulate,
                                   size_t total) {
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= total) return;
    float* d = dst + interleaved_offset(idx, Tn, NH, hs, ld);
    *d = accumulate ? *d + src[idx] : src[idx];
}
static void split_heads(float* dst, const float* src, int ld, int B, int Tn, int NH, int hs) {
    size_t total = (size_t)B * NH * Tn * hs;
    split_heads_kernel<<<blocks_for(total), THREADS>>>(dst, src, ld, Tn, NH, hs, total);
    CUDA_LAUNCH_CHECK();
}
static void merge_heads(float* dst, int ld, const float* src, int B, int Tn, int NH, int hs, bool accumulate) {
    size_t total = (size_t)B * NH * Tn * hs;
    merge_heads_kernel<<<blocks_for(total), THREADS>>>(dst, ld, src, Tn, NH, hs, accumulate, total);
    CUDA_LAUNCH_CHECK();
}

// In place over att (rows, T): row r is query t = r % T; softmax(scale * x) over columns
// 0..t (the max subtracted), zero after. One warp per row.
__global__ void causal_softmax_kernel(float* att, size_t rows, int Tn, float scale) {
    size_t row = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int t = (int)(row % Tn);
    float* a = att + row * Tn;
    float maxv = -INFINITY;
    for (int j = lane; j <= t; j += 32) maxv = fmaxf(maxv, a[j] * scale);
    for (int o = 16; o > 0; o >>= 1) maxv = fmaxf(maxv, __shfl_xor_sync(FULL_MASK, maxv, o));
    float sum = 0;
    for (int j = lane; j <= t; j += 32) { float e = expf(a[j] * scale - maxv); a[j] = e; sum += e; }
    const float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < Tn; j += 32) a[j] = j <= t ? a[j] * inv : 0.0f;
}
// Through the softmax, in place over dA (rows, T): dS = A (dA - rowsum(A dA)) scale, causal.
__global__ void causal_softmax_backward_kernel(float* datt, const float* att, size_t rows, int Tn, float scale) {
    size_t row = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int t = (int)(row % Tn);
    const float* a = att + row * Tn;
    float* g = datt + row * Tn;
    float dot = 0;
    for (int j = lane; j <= t; j += 32) dot += a[j] * g[j];
    dot = warp_sum(dot);
    for (int j = lane; j < Tn; j += 32) g[j] = j <= t ? a[j] * (g[j] - dot) * scale : 0.0f;
}
static void causal_softmax(float* att, size_t rows, int Tn, float scale) {
    causal_softmax_kernel<<<blocks_for(rows * 32), THREADS>>>(att, rows, Tn, scale);
    CUDA_LAUNCH_CHECK();
}

// Floats of scratch that attention needs for (B, T): q, k, v, and their gradients, the
// output (or its gradient) per head, each (B, NH, T, hs); dA (B, NH, T, T).
inline size_t attention_scratch_size(int B, int Tn, int C, int NH) {
    return 7 * (size_t)B * Tn * C + (size_t)B * NH * Tn * Tn;
}

// qkv (B, T, 3C) holds [q | k | v]; out (B, T, C); att (B, NH, T, T) causal softmax weights
static void attention_forward(float* out, float* att, const float* qkv, float* scratch, int B, int Tn, int C, int NH) {
    const int hs = C / NH;
    const size_t head = (size_t)B * Tn * C;
    float *q = scratch, *k = q + head, *v = k + head, *y = v + head;  // (B, NH, T, hs) each
    split_heads(q, qkv, 3 * C, B, Tn, NH, hs);
    split_heads(k, qkv + C, 3 * C, B, Tn, NH, hs);
    split_heads(v, qkv + 2 * C, 3 * C, B, Tn, NH, hs);
    const long long sT = (long long)Tn * hs, sA = (long long)Tn * Tn;
    gemm_batched(false, true, Tn, Tn, hs, q, hs, sT, k, hs, sT, 0.0f, att, Tn, sA, B * NH);  // Q K^T
    causal_softmax(att, (size_t)B * NH * Tn, Tn, 1.0f / sqrtf((float)hs));
    gemm_batched(false, false, Tn, hs, Tn, att, Tn, sA, v, hs, sT, 0.0f, y, hs, sT, B * NH);  // A V
    merge_heads(out, C, y, B, Tn, NH, hs, false);
}

// accumulates into dqkv (B, T, 3C); scratch: attention_scratch_size(B, T, C, NH) floats
static void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, float* scratch,
                               int B, int Tn, int C, int NH) {
    const int hs = C / NH;
    const size_t head = (size_t)B * Tn * C;
    float *q = scratch, *k = q + head, *v = k + head, *dy = v + head;
    float *dq = dy + head, *dk = dq + head, *dv = dk + head, *datt = dv + head;
    split_heads(q, qkv, 3 * C, B, Tn, NH, hs);
    split_heads(k, qkv + C, 3 * C, B, Tn, NH, hs);
    split_heads(v, qkv + 2 * C, 3 * C, B, Tn, NH, hs);
    split_heads(dy, dout, C, B, Tn, NH, hs);
    const long long sT = (long long)Tn * hs, sA = (long long)Tn * Tn;
    const int BH = B * NH;
    gemm_batched(false, true, Tn, Tn, hs, dy, hs, sT, v, hs, sT, 0.0f, datt, Tn, sA, BH);   // dA = dY V^T
    gemm_batched(true, false, Tn, hs, Tn, att, Tn, sA, dy, hs, sT, 0.0f, dv, hs, sT, BH);   // dV = A^T dY
    const size_t rows = (size_t)BH * Tn;
    causal_softmax_backward_kernel<<<blocks_for(rows * 32), THREADS>>>(datt, att, rows, Tn, 1.0f / sqrtf((float)hs));
    CUDA_LAUNCH_CHECK();
    gemm_batched(false, false, Tn, hs, Tn, datt, Tn, sA, k, hs, sT, 0.0f, dq, hs, sT, BH);  // dQ = dS K
    gemm_batched(true, false, Tn, hs, Tn, datt, Tn, sA, q, hs, sT, 0.0f, dk, hs, sT, BH);   // dK = dS^T Q
    merge_heads(dqkv, 3 * C, dq, B, Tn, NH, hs, true);
    merge_heads(dqkv + C, 3 * C, dk, B, Tn, NH, hs, true);
    merge_heads(dqkv + 2 * C, 3 * C, dv, B, Tn, NH, hs, true);
}

// ---- GELU (tanh approximation) and residuals: elementwise

__device__ inline float gelu_scalar(float x) {
    const float s = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(s * (x + 0.044715f * x * x * x)));
}
__global__ void gelu_forward_kernel(float* out, const float* inp, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < N) out[i] = gelu_scalar(inp[i]);
}
__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= N) return;
    const float s = 0.7978845608028654f, x = inp[i];
    const float th = tanhf(s * (x + 0.044715f * x * x * x));
    const float local = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * s * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] += local * dout[i];
}
static void gelu_forward(float* out, const float* inp, size_t N) {
    gelu_forward_kernel<<<blocks_for(N), THREADS>>>(out, inp, N);
    CUDA_LAUNCH_CHECK();
}
static void gelu_backward(float* dinp, const float* inp, const float* dout, size_t N) {
    gelu_backward_kernel<<<blocks_for(N), THREADS>>>(dinp, inp, dout, N);
    CUDA_LAUNCH_CHECK();
}

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < N) out[i] = a[i] + b[i];
}
__global__ void residual_backward_kernel(float* da, float* db, const float* dout, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < N) { da[i] += dout[i]; db[i] += dout[i]; }
}
static void residual_forward(float* out, const float* a, const float* b, size_t N) {
    residual_forward_kernel<<<blocks_for(N), THREADS>>>(out, a, b, N);
    CUDA_LAUNCH_CHECK();
}
static void residual_backward(float* da, float* db, const float* dout, size_t N) {
    residual_backward_kernel<<<blocks_for(N), THREADS>>>(da, db, dout, N);
    CUDA_LAUNCH_CHECK();
}

// columns V..Vp-1 of every logits row are padding: zero, as on the CPU
__global__ void zero_padding_kernel(float* logits, int V, int Vp, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int pad = Vp - V;
    logits[(i / pad) * Vp + V + i % pad] = 0.0f;
}
static void zero_padding(float* logits, int rows, int V, int Vp) {
    if (Vp == V) return;
    size_t total = (size_t)rows * (Vp - V);
    zero_padding_kernel<<<blocks_for(total), THREADS>>>(logits, V, Vp, total);
    CUDA_LAUNCH_CHECK();
}

// ---- the fused loss: one block per position n of the batch (SPEC section 1)
//
// Reads the student's row (and the teacher's) and overwrites the student's row with the
// gradient of weight[n] * D(P, Q) (+ the policy gradient): pass 1 is the online max/sum of
// every softmax it needs, pass 2 the divergence and sum q g, pass 3 the gradient. Each
// element is written only by the thread that read it, after every read of the row (the
// block reductions between the passes are barriers). Masked positions (target < 0) get zero.
struct LossArgs {
    const float* teacher = nullptr;  // (N, Vpt), null for cross-entropy
    int Vpt = 0;
    float* student = nullptr;        // (N, Vps) logits in, gradient out
    int Vps = 0, V = 0;
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

__global__ void fused_loss_kernel(LossArgs a) {
    const size_t n = blockIdx.x;
    const int target = a.targets[n];
    float* s = a.student + n * a.Vps;
    if (target < 0) {
        for (int i = threadIdx.x; i < a.Vps; i += blockDim.x) s[i] = 0.0f;
        return;  // the whole block leaves together
    }
    const float* t = a.cross_entropy ? nullptr : a.teacher + n * a.Vpt;
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
    for (int i = a.V + threadIdx.x; i < a.Vps; i += blockDim.x) s[i] = 0.0f;
    if (threadIdx.x == 0) {
        a.per_position[n] = D;
        if (pg) a.logp[n] = s_target * a.pg_inv_t - lse_p;
    }
}

// ---- AdamW and the gradient norm

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, float beta1, float beta2, float eps,
                             float grad_scale, float step_size, float bc2_sqrt, float keep) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * keep - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
}

constexpr int NORM_BLOCKS = 512;
// partial[block] = sum of squares over a fixed grid-stride slice, in double
__global__ void sum_squares_kernel(double* partial, const float* x, size_t n) {
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// ---- sampling: greedy or Gumbel-max, one block per row

__device__ inline uint64_t mix64(uint64_t x) {  // splitmix64's finaliser
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
// uniform in (0, 1) from (key, token id): 53 random bits, never 0 or 1
__device__ inline double uniform_open(uint64_t key, uint64_t i) {
    return ((double)(mix64(key ^ mix64(i)) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// tokens[r] = argmax over the V real ids of logits[r] (greedy, temperature 0; the lowest id
// wins ties) or of logits[r] / t + Gumbel noise, which is a draw from softmax(logits / t).
// The noise of row r's d-th draw is a function of (keys[r], d, id) alone.
__global__ void sample_kernel(int* tokens, const float* logits, int V, int Vp, double inv_temperature,
                              const uint64_t* keys, const int* draws) {
    const int r = blockIdx.x;
    const float* x = logits + (size_t)r * Vp;
    const uint64_t key = inv_temperature > 0 ? mix64(keys[r] ^ mix64(0x5A3C0000ull + (uint64_t)draws[r])) : 0;
    double best = -INFINITY;
    int best_id = V;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        double score = inv_temperature > 0 ? (double)x[i] * inv_temperature - log(-log(uniform_open(key, i))) : (double)x[i];
        if (score > best || (score == best && i < best_id)) { best = score; best_id = i; }
    }
    __shared__ double block_best[32];
    __shared__ int block_id[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) {
        double ob = __shfl_xor_sync(FULL_MASK, best, o);
        int oi = __shfl_xor_sync(FULL_MASK, best_id, o);
        if (ob > best || (ob == best && oi < best_id)) { best = ob; best_id = oi; }
    }
    if (lane == 0) { block_best[warp] = best; block_id[warp] = best_id; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < warps; w++)
            if (block_best[w] > best || (block_best[w] == best && block_id[w] < best_id)) { best = block_best[w]; best_id = block_id[w]; }
        tokens[r] = best_id < V ? best_id : 0;  // all NaN: token 0, as the CPU's argmax
    }
}

// ---- inference with a KV cache

// x (Bn, Tn, C) = wte[token] + wpe[start[b] + t], zero in padded slots (t >= n_new[b])
__global__ void encoder_infer_kernel(float* out, const int* tokens, const int* start, const int* n_new, const float* wte,
                                     const float* wpe, int Tn, int C, int V, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / C;
    int c = (int)(i % C), b = (int)(n / Tn), t = (int)(n % Tn), tok = tokens[n];
    out[i] = t < n_new[b] && tok >= 0 && tok < V ? wte[(size_t)tok * C + c] + wpe[(size_t)(start[b] + t) * C + c] : 0.0f;
}
// the keys and values of the new tokens into the cache (L, rows, capacity, C): layer l's slice
__global__ void cache_store_kernel(float* kcache, float* vcache, const float* qkv, const int* cache_row, const int* start,
                                   const int* n_new, int Tn, int C, int capacity, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / C;
    int c = (int)(i % C), b = (int)(n / Tn), t = (int)(n % Tn);
    if (t >= n_new[b]) return;
    size_t slot = ((size_t)cache_row[b] * capacity + start[b] + t) * C + c;
    kcache[slot] = qkv[n * 3 * C + C + c];
    vcache[slot] = qkv[n * 3 * C + 2 * C + c];
}
// One new token per row (decode): block (b, h) attends over the row's cached positions
// 0..start[b]; scores in shared memory (capacity floats), max subtracted.
__global__ void decode_attention_kernel(float* out, const float* qkv, const float* kcache, const float* vcache,
                                        const int* cache_row, const int* start, const int* n_new, int C, int NH,
                                        int capacity) {
    extern __shared__ float scores[];
    const int b = blockIdx.x, h = blockIdx.y, hs = C / NH;
    float* o = out + (size_t)b * C + h * hs;
    if (n_new[b] == 0) {
        for (int i = threadIdx.x; i < hs; i += blockDim.x) o[i] = 0.0f;
        return;
    }
    const int len = start[b] + 1;
    const float* q = qkv + (size_t)b * 3 * C + h * hs;
    const float* K = kcache + (size_t)cache_row[b] * capacity * C + h * hs;
    const float* Vc = vcache + (size_t)cache_row[b] * capacity * C + h * hs;
    const float scale = 1.0f / sqrtf((float)hs);
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const float* k = K + (size_t)j * C;
        float dot = 0;
        for (int i = 0; i < hs; i++) dot += q[i] * k[i];
        scores[j] = dot * scale;
        maxv = fmaxf(maxv, dot * scale);
    }
    __shared__ float reduce[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int off = 16; off > 0; off >>= 1) maxv = fmaxf(maxv, __shfl_xor_sync(FULL_MASK, maxv, off));
    if (lane == 0) reduce[warp] = maxv;
    __syncthreads();
    maxv = reduce[0];
    for (int w = 1; w < warps; w++) maxv = fmaxf(maxv, reduce[w]);
    float sum = 0;
    for (int j = threadIdx.x; j < len; j += blockDim.x) { float e = expf(scores[j] - maxv); scores[j] = e; sum += e; }
    const float inv = 1.0f / block_sum(sum);  // block_sum's barriers also publish `scores`
    for (int i = threadIdx.x; i < hs; i += blockDim.x) {
        float acc = 0;
        for (int j = 0; j < len; j++) acc += scores[j] * Vc[(size_t)j * C + i];
        o[i] = acc * inv;
    }
}
// x_last (Bn, C) = x[b, max(n_new[b] - 1, 0)]: the rows the LM head needs while sampling
__global__ void gather_last_kernel(float* out, const float* x, const int* n_new, int Tn, int C, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    int b = (int)(i / C), c = (int)(i % C), t = max(n_new[b] - 1, 0);
    out[i] = x[((size_t)b * Tn + t) * C + c];
}

}  // namespace gpu

// ----------------------------------------------------------------------------
// a model on the device: parameters always; gradients, AdamW moments and activations for
// the student only (the teacher runs forward, through gpu_infer)

struct GpuModel {
    GPTConfig config;
    size_t param_sizes[NUM_PARAMETER_TENSORS] = {};
    size_t num_parameters = 0;
    DeviceBuffer<float> params_memory;
    ParameterTensors<float> params{};
    // training state
    DeviceBuffer<float> grads_memory, adam_m, adam_v;  // each (num_parameters)
    ParameterTensors<float> grads{};
    int max_B = 0, max_T = 0;
    DeviceBuffer<float> acts_memory, grads_acts_memory;
    ActivationTensors<float> acts{}, grads_acts{};
    DeviceBuffer<float> attention_scratch, column_scratch;
    DeviceBuffer<int> inputs;                 // (B, T) tokens of the last forward
    gpu::TokenGroups token_groups;            // their positions grouped by token, for the embedding gradient
    gpu::DeviceTokenGroups device_token_groups;
    DeviceBuffer<double> norm_partials;       // (NORM_BLOCKS)
    int batch_B = 0, batch_T = 0;
};

// Copies a CPU model's shape and parameters to the device.
static void gpu_upload(GpuModel& g, const GPT<float>& m) {
    g.config = m.config;
    memcpy(g.param_sizes, m.param_sizes, sizeof g.param_sizes);
    g.num_parameters = m.num_parameters;
    g.params_memory.upload(m.params_memory);
    point_parameters(g.params, g.params_memory.ptr, g.param_sizes);
}
static void gpu_download_parameters(const GpuModel& g, GPT<float>& m) {
    download(m.params_memory.data(), g.params_memory.ptr, g.num_parameters);
}

static void gpu_prepare_training(GpuModel& g, int B, int Tn) {
    GKD_ASSERT(Tn <= g.config.max_seq_len, "batch longer than the context");
    if (!g.grads_memory.ptr) {
        g.grads_memory.ensure(g.num_parameters);
        CUDA_CHECK(cudaMemset(g.grads_memory.ptr, 0, g.num_parameters * sizeof(float)));
        point_parameters(g.grads, g.grads_memory.ptr, g.param_sizes);
        g.norm_partials.ensure(gpu::NORM_BLOCKS);
    }
    if (B <= g.max_B && Tn <= g.max_T) return;
    g.max_B = std::max(B, g.max_B);
    g.max_T = std::max(Tn, g.max_T);
    const GPTConfig& c = g.config;
    size_t sizes[NUM_ACTIVATION_TENSORS], total = 0;
    fill_activation_sizes(sizes, c, g.max_B, g.max_T);
    for (size_t s : sizes) total += s;
    g.acts_memory.ensure(total);
    g.grads_acts_memory.ensure(total - sizes[NUM_ACTIVATION_TENSORS - 1]);
    g.attention_scratch.ensure(gpu::attention_scratch_size(g.max_B, g.max_T, c.channels, c.num_heads));
    g.column_scratch.ensure(gpu::column_scratch_size(g.max_B * g.max_T, 4 * c.channels));
    g.inputs.ensure((size_t)g.max_B * g.max_T);
}

// AdamW's moments on the device, from the host's (zeros before the first update).
static void gpu_upload_optimizer(GpuModel& g, const AdamW& opt) {
    g.adam_m.ensure(g.num_parameters);
    g.adam_v.ensure(g.num_parameters);
    if (opt.m.empty()) {
        CUDA_CHECK(cudaMemset(g.adam_m.ptr, 0, g.num_parameters * sizeof(float)));
        CUDA_CHECK(cudaMemset(g.adam_v.ptr, 0, g.num_parameters * sizeof(float)));
    } else {
        g.adam_m.upload(opt.m);
        g.adam_v.upload(opt.v);
    }
}
static void gpu_download_optimizer(const GpuModel& g, AdamW& opt) {
    opt.m.resize(g.num_parameters);
    opt.v.resize(g.num_parameters);
    download(opt.m.data(), g.adam_m.ptr, g.num_parameters);
    download(opt.v.data(), g.adam_v.ptr, g.num_parameters);
}

// tokens (B, T) on the host -> acts.logits (B, T, Vp) on the device, keeping what
// gpu_backward needs. gpt_forward's twin, line for line.
static void gpu_forward(GpuModel& g, const int* tokens, int B, int Tn) {
    const GPTConfig& c = g.config;
    gpu_prepare_training(g, B, Tn);
    point_training_activations(g.acts, g.grads_acts, g.acts_memory.ptr, g.grads_acts_memory.ptr, g.config, B, Tn);
    g.batch_B = B;
    g.batch_T = Tn;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads, N = B * Tn;
    for (int i = 0; i < N; i++) GKD_ASSERT(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id out of range");
    CUDA_CHECK(cudaMemcpy(g.inputs.ptr, tokens, sizeof(int) * N, cudaMemcpyHostToDevice));
    g.token_groups.build(tokens, N);
    g.device_token_groups.upload(g.token_groups);
    ParameterTensors<float>& p = g.params;
    ActivationTensors<float>& a = g.acts;
    float* scratch = g.attention_scratch.ptr;
    gpu::encoder_forward(a.encoded, g.inputs.ptr, p.wte, p.wpe, B, Tn, C);
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * N * C;
        size_t oC = (size_t)l * N * C, oN = (size_t)l * N;
        float* qkv = a.qkv + oC * 3;
        float* fch = a.fch + oC * 4;
        float* fch_gelu = a.fch_gelu + oC * 4;
        gpu::layernorm_forward(a.ln1 + oC, a.ln1_mean + oN, a.ln1_rstd + oN, residual, p.ln1w + l * C, p.ln1b + l * C, N, C);
        gpu::matmul_forward(qkv, a.ln1 + oC, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, N, C, 3 * C, 3 * C);
        gpu::attention_forward(a.atty + oC, a.att + (size_t)l * B * NH * Tn * Tn, qkv, scratch, B, Tn, C, NH);
        gpu::matmul_forward(a.attproj + oC, a.atty + oC, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, N, C, C, C);
        gpu::residual_forward(a.residual2 + oC, residual, a.attproj + oC, (size_t)N * C);
        gpu::layernorm_forward(a.ln2 + oC, a.ln2_mean + oN, a.ln2_rstd + oN, a.residual2 + oC, p.ln2w + l * C,
                               p.ln2b + l * C, N, C);
        gpu::matmul_forward(fch, a.ln2 + oC, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, N, C, 4 * C, 4 * C);
        gpu::gelu_forward(fch_gelu, fch, (size_t)N * 4 * C);
        gpu::matmul_forward(a.fcproj + oC, fch_gelu, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, N, 4 * C, C, C);
        gpu::residual_forward(a.residual3 + oC, a.residual2 + oC, a.fcproj + oC, (size_t)N * C);
    }
    const float* last = a.residual3 + (size_t)(L - 1) * N * C;
    gpu::layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, N, C);
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    gpu::matmul_forward(a.logits, a.lnf, p.wte, nullptr, N, C, V, Vp);
    gpu::zero_padding(a.logits, N, V, Vp);
}

static void gpu_zero_grad(GpuModel& g) {
    CUDA_CHECK(cudaMemsetAsync(g.grads_memory.ptr, 0, g.num_parameters * sizeof(float)));
}

// Accumulates parameter gradients from grads_acts.logits, which the loss wrote over the
// logits. gpt_backward's twin.
static void gpu_backward(GpuModel& g) {
    const GPTConfig& c = g.config;
    const int B = g.batch_B, Tn = g.batch_T, C = c.channels, L = c.num_layers, NH = c.num_heads, N = B * Tn;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    ParameterTensors<float>& p = g.params;
    ParameterTensors<float>& gr = g.grads;
    ActivationTensors<float>& a = g.acts;
    ActivationTensors<float>& d = g.grads_acts;
    float* scratch = g.attention_scratch.ptr;
    float* cols = g.column_scratch.ptr;
    CUDA_CHECK(cudaMemsetAsync(g.grads_acts_memory.ptr, 0, (size_t)(d.lnf_rstd + N - g.grads_acts_memory.ptr) * sizeof(float)));

    gpu::matmul_backward(d.lnf, gr.wte, nullptr, d.logits, a.lnf, p.wte, N, C, V, Vp, cols);
    const float* last = a.residual3 + (size_t)(L - 1) * N * C;
    float* dlast = d.residual3 + (size_t)(L - 1) * N * C;
    gpu::layernorm_backward(dlast, gr.lnfw, gr.lnfb, d.lnf, last, p.lnfw, a.lnf_mean, a.lnf_rstd, N, C, cols);
    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * N * C;
        float* dresidual = l == 0 ? d.encoded : d.residual3 + (size_t)(l - 1) * N * C;
        size_t oC = (size_t)l * N * C, o3 = oC * 3, o4 = oC * 4, oN = (size_t)l * N;
        size_t oAtt = (size_t)l * B * NH * Tn * Tn;
        gpu::residual_backward(d.residual2 + oC, d.fcproj + oC, d.residual3 + oC, (size_t)N * C);
        gpu::matmul_backward(d.fch_gelu + o4, gr.fcprojw + (size_t)l * C * 4 * C, gr.fcprojb + l * C, d.fcproj + oC,
                             a.fch_gelu + o4, p.fcprojw + (size_t)l * C * 4 * C, N, 4 * C, C, C, cols);
        gpu::gelu_backward(d.fch + o4, a.fch + o4, d.fch_gelu + o4, (size_t)N * 4 * C);
        gpu::matmul_backward(d.ln2 + oC, gr.fcw + (size_t)l * 4 * C * C, gr.fcb + l * 4 * C, d.fch + o4, a.ln2 + oC,
                             p.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, 4 * C, cols);
        gpu::layernorm_backward(d.residual2 + oC, gr.ln2w + l * C, gr.ln2b + l * C, d.ln2 + oC, a.residual2 + oC,
                                p.ln2w + l * C, a.ln2_mean + oN, a.ln2_rstd + oN, N, C, cols);
        gpu::residual_backward(dresidual, d.attproj + oC, d.residual2 + oC, (size_t)N * C);
        gpu::matmul_backward(d.atty + oC, gr.attprojw + (size_t)l * C * C, gr.attprojb + l * C, d.attproj + oC,
                             a.atty + oC, p.attprojw + (size_t)l * C * C, N, C, C, C, cols);
        gpu::attention_backward(d.qkv + o3, d.atty + oC, a.qkv + o3, a.att + oAtt, scratch, B, Tn, C, NH);
        gpu::matmul_backward(d.ln1 + oC, gr.qkvw + (size_t)l * 3 * C * C, gr.qkvb + l * 3 * C, d.qkv + o3, a.ln1 + oC,
                             p.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, 3 * C, cols);
        gpu::layernorm_backward(dresidual, gr.ln1w + l * C, gr.ln1b + l * C, d.ln1 + oC, residual, p.ln1w + l * C,
                                a.ln1_mean + oN, a.ln1_rstd + oN, N, C, cols);
    }
    gpu::encoder_backward(gr.wte, gr.wpe, d.encoded, g.device_token_groups, B, Tn, C);
}

// Global L2 norm of the gradient: fixed per-block partial sums, added on the host in order.
static double gpu_grad_norm(GpuModel& g) {
    gpu::sum_squares_kernel<<<gpu::NORM_BLOCKS, gpu::THREADS>>>(g.norm_partials.ptr, g.grads_memory.ptr, g.num_parameters);
    CUDA_LAUNCH_CHECK();
    double partial[gpu::NORM_BLOCKS];
    download(partial, g.norm_partials.ptr, gpu::NORM_BLOCKS);
    double total = 0;
    for (double s : partial) total += s;
    return std::sqrt(total);
}

// adamw_update's twin: the same float arithmetic, one launch per parameter tensor.
static void gpu_adamw_update(GpuModel& g, AdamW& opt, double lr, double grad_scale = 1.0) {
    opt.t++;
    const double bc1 = 1.0 - std::pow(opt.beta1, (double)opt.t), bc2 = 1.0 - std::pow(opt.beta2, (double)opt.t);
    size_t offset = 0;
    for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
        const size_t n = g.param_sizes[k];
        const float keep = (float)(1.0 - lr * (PARAMETER_DECAYS[k] ? opt.weight_decay : 0.0));
        gpu::adamw_kernel<<<gpu::blocks_for(n), gpu::THREADS>>>(
            g.params_memory.ptr + offset, g.grads_memory.ptr + offset, g.adam_m.ptr + offset, g.adam_v.ptr + offset, n,
            (float)opt.beta1, (float)opt.beta2, (float)opt.eps, (float)grad_scale, (float)(lr / bc1),
            (float)std::sqrt(bc2), keep);
        CUDA_LAUNCH_CHECK();
        offset += n;
    }
}

// batch_loss's twin: the fused kernel over every position, then the same fixed-order sums
// on the host. student (B, T, Vps) on the device becomes the gradient.
struct GpuLossBuffers {
    DeviceBuffer<int> targets;
    DeviceBuffer<double> weight, pg_coef, per_position, logp;
};
static double gpu_batch_loss(GpuLossBuffers& buf, const TrainBatch& b, const float* teacher, int Vpt, float* student,
                             int V, int Vps, bool cross_entropy, double beta, double tau, LossNorm norm,
                             double* mean_per_token = nullptr, PolicyGradientTerm* pg = nullptr) {
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
    a.teacher = teacher; a.Vpt = Vpt; a.student = student; a.Vps = Vps; a.V = V;
    a.targets = buf.targets.ptr; a.weight = buf.weight.ptr; a.cross_entropy = cross_entropy;
    a.beta = beta; a.inv_tau = 1.0 / tau; a.per_position = buf.per_position.ptr; a.logp = buf.logp.ptr;
    if (pg) { buf.pg_coef.upload(coef); a.pg_coef = buf.pg_coef.ptr; a.pg_inv_t = 1.0 / pg->temperature; }
    gpu::fused_loss_kernel<<<N, 512>>>(a);
    CUDA_LAUNCH_CHECK();
    std::vector<double> per_position(N), logp(pg ? N : 0);
    download(per_position.data(), buf.per_position.ptr, N);
    if (pg) download(logp.data(), buf.logp.ptr, N);
    return sum_batch_loss(b, per_position, logp, norm, mean_per_token, pg);
}

// ----------------------------------------------------------------------------
// inference on the device: gpt_infer's twin, for the teacher and for sampling

struct GpuKVCache {
    int L = 0, rows = 0, capacity = 0, C = 0;  // positions held per row: what this use needs, not maxT
    DeviceBuffer<float> k, v;                 // (L, rows, capacity, C) each
    void allocate(const GPTConfig& c, int nrows, int positions) {
        if (nrows <= rows && positions <= capacity && L == c.num_layers && C == c.channels) return;
        L = c.num_layers; C = c.channels;
        rows = std::max(rows, nrows);
        capacity = std::max(capacity, positions);
        k.release();  // free before allocating the larger one
        v.release();
        k.ensure((size_t)L * rows * capacity * C);
        v.ensure((size_t)L * rows * capacity * C);
    }
    float* keys(int l) const { return k.ptr + (size_t)l * rows * capacity * C; }
    float* values(int l) const { return v.ptr + (size_t)l * rows * capacity * C; }
};

// Reused across layers: a forward-only pass keeps no per-layer activations.
struct GpuInferScratch {
    DeviceBuffer<float> x, ln, qkv, atty, proj, fch, attention, last;
    DeviceBuffer<int> tokens, cache_row, start, n_new;
};

// Runs Tn new tokens per row (right-padded; row b has n_new[b]) through the model, storing
// their keys and values in the cache when there is one. Two cases, the two that gkd uses:
// a prefill (every start[b] = 0: causal attention over the new tokens, batched GEMMs) and
// a decode step (Tn = 1: attention over each row's cache). logits (device):
// all_positions ? (Bn, Tn, Vp) : (Bn, Vp) at each row's last new token.
static void gpu_infer(const GpuModel& m, GpuKVCache* cache, GpuInferScratch& s, const int* tokens, const int* cache_row,
                      const int* start, const int* n_new, int Bn, int Tn, float* logits, bool all_positions) {
    const GPTConfig& c = m.config;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads;
    const int V = c.vocab_size, Vp = c.padded_vocab_size, N = Bn * Tn;
    const ParameterTensors<float>& p = m.params;
    bool prefill = true;
    for (int b = 0; b < Bn; b++) {
        GKD_ASSERT(start[b] + n_new[b] <= c.max_seq_len, "sequence past the context");
        GKD_ASSERT(!cache || (cache_row[b] < cache->rows && start[b] + n_new[b] <= cache->capacity), "KV cache too small");
        prefill = prefill && start[b] == 0;
    }
    GKD_ASSERT(prefill || (Tn == 1 && cache), "gpu_infer: a decode step is one token per row, with a cache");
    s.tokens.upload(tokens, N);
    s.cache_row.upload(cache_row, Bn);
    s.start.upload(start, Bn);
    s.n_new.upload(n_new, Bn);
    float* x = s.x.ensure((size_t)N * C);
    float* ln = s.ln.ensure((size_t)N * C);
    float* qkv = s.qkv.ensure((size_t)N * 3 * C);
    float* atty = s.atty.ensure((size_t)N * C);
    float* proj = s.proj.ensure((size_t)N * C);
    float* fch = s.fch.ensure((size_t)N * 4 * C);
    // a prefill attends with batched GEMMs (a lone first token through the cache when there is one)
    const bool gemm_attention = prefill && (Tn > 1 || !cache);
    GKD_ASSERT(gemm_attention || (size_t)cache->capacity * sizeof(float) <= 48 * 1024,
               "gpu_infer: decode attention keeps a row's scores in 48 KB of shared memory (context <= 12288)");
    float* scratch = gemm_attention ? s.attention.ensure(4 * (size_t)N * C + (size_t)Bn * NH * Tn * Tn) : nullptr;
    const size_t total = (size_t)N * C;
    gpu::encoder_infer_kernel<<<gpu::blocks_for(total), gpu::THREADS>>>(x, s.tokens.ptr, s.start.ptr, s.n_new.ptr, p.wte,
                                                                       p.wpe, Tn, C, V, total);
    CUDA_LAUNCH_CHECK();
    for (int l = 0; l < L; l++) {
        gpu::layernorm_forward(ln, nullptr, nullptr, x, p.ln1w + l * C, p.ln1b + l * C, N, C);
        gpu::matmul_forward(qkv, ln, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, N, C, 3 * C, 3 * C);
        if (cache) {
            gpu::cache_store_kernel<<<gpu::blocks_for(total), gpu::THREADS>>>(
                cache->keys(l), cache->values(l), qkv, s.cache_row.ptr, s.start.ptr, s.n_new.ptr, Tn, C, cache->capacity, total);
            CUDA_LAUNCH_CHECK();
        }
        if (gemm_attention) {
            // padded slots sit after each row's real tokens: causal attention never lets a real one see them
            float* att = scratch + 4 * (size_t)N * C;
            gpu::attention_forward(atty, att, qkv, scratch, Bn, Tn, C, NH);
        } else {
            gpu::decode_attention_kernel<<<dim3(Bn, NH), 128, sizeof(float) * cache->capacity>>>(
                atty, qkv, cache->keys(l), cache->values(l), s.cache_row.ptr, s.start.ptr, s.n_new.ptr, C, NH, cache->capacity);
            CUDA_LAUNCH_CHECK();
        }
        gpu::matmul_forward(proj, atty, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, N, C, C, C);
        gpu::residual_forward(x, x, proj, total);
        gpu::layernorm_forward(ln, nullptr, nullptr, x, p.ln2w + l * C, p.ln2b + l * C, N, C);
        gpu::matmul_forward(fch, ln, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, N, C, 4 * C, 4 * C);
        gpu::gelu_forward(fch, fch, (size_t)N * 4 * C);
        gpu::matmul_forward(proj, fch, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, N, 4 * C, C, C);
        gpu::residual_forward(x, x, proj, total);
    }
    if (all_positions) {
        gpu::layernorm_forward(ln, nullptr, nullptr, x, p.lnfw, p.lnfb, N, C);
        gpu::matmul_forward(logits, ln, p.wte, nullptr, N, C, V, Vp);
        gpu::zero_padding(logits, N, V, Vp);
    } else {
        float* last = s.last.ensure((size_t)Bn * C);
        gpu::gather_last_kernel<<<gpu::blocks_for((size_t)Bn * C), gpu::THREADS>>>(last, x, s.n_new.ptr, Tn, C, (size_t)Bn * C);
        CUDA_LAUNCH_CHECK();
        gpu::layernorm_forward(ln, nullptr, nullptr, last, p.lnfw, p.lnfb, Bn, C);
        gpu::matmul_forward(logits, ln, p.wte, nullptr, Bn, C, V, Vp);
        gpu::zero_padding(logits, Bn, V, Vp);
    }
}

// Reusable device buffers for batched generation from one model.
struct GpuGenerator {
    GpuKVCache cache;
    GpuInferScratch scratch;
    DeviceBuffer<float> logits;  // (rows, Vp)
    DeviceBuffer<int> next, draws;
    DeviceBuffer<uint64_t> keys;
};

// generate's twin: the same generation_loop, each token drawn on the device. The draws of
// row b depend on (seed, stream, row_ids[b]) and the draw's index only.
static std::vector<std::vector<int>> gpu_generate(const GpuModel& m, GpuGenerator& g,
                                                  const std::vector<const std::vector<int>*>& prompts,
                                                  const std::vector<int>& budgets, double temperature, int eos,
                                                  uint64_t seed, uint64_t stream, const std::vector<uint64_t>& row_ids) {
    const int Bn = (int)prompts.size(), Vp = m.config.padded_vocab_size, V = m.config.vocab_size;
    if (Bn == 0) return {};
    int longest = 0;
    for (int b = 0; b < Bn; b++) longest = std::max(longest, (int)prompts[b]->size() + budgets[b]);
    g.cache.allocate(m.config, Bn, std::min(longest, m.config.max_seq_len));
    float* logits = g.logits.ensure((size_t)Bn * Vp);
    int* next = g.next.ensure(Bn);
    const double inv_t = temperature > 0 ? 1.0 / temperature : 0.0;
    auto run = [&](const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn) {
        gpu_infer(m, &g.cache, g.scratch, tokens, cache_row, start, n_new, n, Tn, logits, false);
    };
    std::vector<uint64_t> row_keys(Bn), keys(Bn);  // each row's key, then gathered by slot
    for (int b = 0; b < Bn; b++) row_keys[b] = derive_seed(seed, stream, row_ids[b]);
    auto pick = [&](const std::vector<int>& active, const std::vector<int>& draws) {
        const int n = (int)active.size();
        for (int i = 0; i < n; i++) keys[i] = row_keys[active[i]];
        g.keys.upload(keys.data(), n);
        g.draws.upload(draws.data(), n);
        gpu::sample_kernel<<<n, gpu::THREADS>>>(next, logits, V, Vp, inv_t, g.keys.ptr, g.draws.ptr);
        CUDA_LAUNCH_CHECK();
        std::vector<int> picked(n);
        download(picked.data(), next, n);  // the only copy back per step: n token ids
        return picked;
    };
    return generation_loop(prompts, budgets, eos, m.config.max_seq_len, run, pick);
}

// What a training run keeps on the device: both models, their generators, the teacher's
// logits and the loss's small per-position arrays.
struct GpuTrainer {
    GpuModel student, teacher;
    GpuGenerator student_gen, teacher_gen;
    GpuInferScratch teacher_scratch;
    DeviceBuffer<float> teacher_logits;  // (B, T, Vp of the teacher)
    GpuLossBuffers loss;
};

// Evaluation on the device: models already there, and the buffers evaluate needs.
struct GpuEval {
    const GpuModel* model = nullptr;
    const GpuModel* teacher = nullptr;
    GpuGenerator gen;
    GpuInferScratch scratch;
    DeviceBuffer<float> logits;
};
#else
// The g++ build: no GPU, and the phases of a step carry no NVTX ranges.
struct NvtxRange {
    explicit NvtxRange(const char*) {}
};
static int gpu_count() { return 0; }
struct GpuTrainer;  // never made in this build
struct GpuEval;
#endif  // __CUDACC__

// ----------------------------------------------------------------------------
// 4. the GKD trainer

enum RngStream : uint64_t { STREAM_COIN = 1, STREAM_SHUFFLE = 2, STREAM_STUDENT_SAMPLES = 3, STREAM_TEACHER_SAMPLES = 4 };

struct TrainOptions {
    bool sft = false;  // cross-entropy on completions instead of a divergence to a teacher
    std::string teacher_path, student_path, data_path, out_dir, eval_data_path, tokenizer;
    double lambda = 0.5, beta = 0.5, temperature = 1.0, loss_temperature = 1.0;
    int max_new_tokens = 64;
    bool seq_kd = false;
    LossNorm loss_norm = LossNorm::Sequence;
    int batch = 8, steps = 0;  // steps 0: one pass over the data
    double lr = 1e-4;
    Schedule schedule = Schedule::Constant;
    int warmup = 0;
    double weight_decay = 0, grad_clip = 1.0, adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
    uint64_t seed = 0;
    bool shuffle = true;
    int eval_every = 0;
    std::string task;  // scores the evaluation's greedy completions
    std::string label;  // names the phase in the progress bar
    bool quiet = false;  // no progress line (tests)
    int checkpoint_every = 0;  // steps between checkpoints of the whole state (0: only on a signal)
    // RL + GKD (the paper's section 5): maximise (1-alpha) E[r(y)] - alpha E[D] over samples
    double alpha = 1.0;         // 1: pure GKD; 0: pure REINFORCE
    std::string reward;         // a name in REWARDS
    int samples_per_prompt = 1; // K > 1: K samples per prompt, and a per-prompt baseline
    // where the steps run: not part of the run's saved configuration, a resumed run may move
    std::string device = "cpu";  // cpu | cuda (resolved from --device)
    bool tf32 = false;           // cuda: matmuls on TF32 tensor cores instead of fp32
};

// The run's configuration, saved in every checkpoint so that --resume needs nothing else.
static json options_to_json(const TrainOptions& o) {
    return {{"sft", o.sft}, {"teacher", o.teacher_path}, {"student", o.student_path}, {"data", o.data_path},
            {"eval_data", o.eval_data_path}, {"tokenizer", o.tokenizer}, {"lambda", o.lambda}, {"beta", o.beta},
            {"temperature", o.temperature}, {"loss_temperature", o.loss_temperature},
            {"max_new_tokens", o.max_new_tokens}, {"seq_kd", o.seq_kd},
            {"loss_norm", o.loss_norm == LossNorm::Token ? "token" : "sequence"}, {"batch", o.batch},
            {"steps", o.steps}, {"lr", o.lr}, {"lr_schedule", o.schedule == Schedule::Cosine ? "cosine" : "constant"},
            {"warmup", o.warmup}, {"weight_decay", o.weight_decay}, {"grad_clip", o.grad_clip},
            {"adam_beta1", o.adam_beta1}, {"adam_beta2", o.adam_beta2}, {"adam_eps", o.adam_eps}, {"seed", o.seed},
            {"shuffle", o.shuffle}, {"eval_every", o.eval_every}, {"task", o.task},
            {"checkpoint_every", o.checkpoint_every}, {"alpha", o.alpha}, {"reward", o.reward},
            {"samples_per_prompt", o.samples_per_prompt}};
}

static TrainOptions options_from_json(const json& j, const std::string& where) {
    TrainOptions o;
    try {
        o.sft = j.at("sft"); o.teacher_path = j.at("teacher"); o.student_path = j.at("student");
        o.data_path = j.at("data"); o.eval_data_path = j.at("eval_data"); o.tokenizer = j.at("tokenizer");
        o.lambda = j.at("lambda"); o.beta = j.at("beta"); o.temperature = j.at("temperature");
        o.loss_temperature = j.at("loss_temperature"); o.max_new_tokens = j.at("max_new_tokens");
        o.seq_kd = j.at("seq_kd");
        o.loss_norm = j.at("loss_norm").get<std::string>() == "token" ? LossNorm::Token : LossNorm::Sequence;
        o.batch = j.at("batch"); o.steps = j.at("steps"); o.lr = j.at("lr");
        o.schedule = j.at("lr_schedule").get<std::string>() == "cosine" ? Schedule::Cosine : Schedule::Constant;
        o.warmup = j.at("warmup"); o.weight_decay = j.at("weight_decay"); o.grad_clip = j.at("grad_clip");
        o.adam_beta1 = j.at("adam_beta1"); o.adam_beta2 = j.at("adam_beta2"); o.adam_eps = j.at("adam_eps");
        o.seed = j.at("seed"); o.shuffle = j.at("shuffle"); o.eval_every = j.at("eval_every");
        o.task = j.at("task"); o.checkpoint_every = j.at("checkpoint_every");
        o.alpha = j.at("alpha"); o.reward = j.at("reward"); o.samples_per_prompt = j.at("samples_per_prompt");
    } catch (const json::exception& e) {
        GKD_FAIL("%s: the saved configuration is incomplete or has a wrong type: %s", where.c_str(),
                 dataset_detail::short_json_error(e).c_str());
    }
    if (o.batch < 1 || o.steps < 1 || o.max_new_tokens < 1 || !(o.lambda >= 0 && o.lambda <= 1) ||
        !(o.alpha >= 0 && o.alpha <= 1) || o.samples_per_prompt < 1 ||
        !(o.beta >= 0 && o.beta <= 1) || !(o.loss_temperature > 0) || !(o.temperature >= 0))
        GKD_FAIL("%s: the saved configuration has a value out of range", where.c_str());
    return o;
}

struct Trainer {
    TrainOptions opt;
    GPT<float> student, teacher;
    bool has_teacher = false;
    std::unique_ptr<Tokenizer> tok;
    Dataset data, eval_data;
    AdamW adam;
    Generator student_gen, teacher_gen;
    KVCache<float> teacher_cache;
    InferScratch<float> teacher_scratch;
    std::vector<float> teacher_logits;  // (B, T, Vp of the teacher)
    std::vector<int> permutation;       // of the current epoch, when shuffling
    long long permutation_epoch = -1;
    // --device cuda: the student, its optimizer state and the teacher live on the GPU; the
    // host copies above are refreshed by host_copy (checkpoints, evaluation, the end)
    std::shared_ptr<GpuTrainer> gpu;
};

struct StepStats {
    double loss = 0, grad_norm = 0, lr = 0, ms = 0, sample_ms = 0;
    double teacher_ms = 0, forward_ms = 0, loss_ms = 0, backward_ms = 0, update_ms = 0;  // the other phases
    double divergence = NAN, reward_mean = NAN, reward_std = NAN, correct = NAN;  // RL + GKD
    bool on_policy = false;
    int tokens = 0, completion_tokens = 0;
};

// The examples of step k: kB..kB+B-1 (mod N) of the file, or of this epoch's shuffle.
static std::vector<const Example*> select_examples(Trainer& tr, int step) {
    const size_t N = tr.data.examples.size(), B = tr.opt.batch;
    std::vector<const Example*> out;
    for (size_t i = 0; i < B; i++) {
        size_t global = (size_t)step * B + i, index = global % N;
        if (tr.opt.shuffle) {
            long long epoch = (long long)(global / N);
            if (epoch != tr.permutation_epoch) {
                tr.permutation.resize(N);
                for (size_t j = 0; j < N; j++) tr.permutation[j] = (int)j;
                Rng rng(derive_seed(tr.opt.seed, STREAM_SHUFFLE, (uint64_t)epoch));
                for (size_t j = N - 1; j > 0; j--) std::swap(tr.permutation[j], tr.permutation[rng.below(j + 1)]);
                tr.permutation_epoch = epoch;
            }
            index = tr.permutation[index];
        }
        out.push_back(&tr.data.examples[index]);
    }
    return out;
}

// The largest context both models can read.
static int shared_context(const Trainer& tr) {
    int T = tr.student.config.max_seq_len;
    return tr.has_teacher ? std::min(T, tr.teacher.config.max_seq_len) : T;
}

// The phases of a step, each on the run's device. On the GPU they end with a device
// synchronisation, so that the step's phase times are the phases' own.

// Completions sampled from the student (or, for SeqKD, the teacher) for the batch's
// prompts, at the sampling temperature.
static std::vector<Sequence> sample_completions(Trainer& tr, bool from_teacher, const std::vector<const Example*>& batch,
                                                int step, uint64_t stream) {
    std::vector<const std::vector<int>*> prompts;
    std::vector<int> budgets;
    std::vector<uint64_t> row_ids;
    for (size_t i = 0; i < batch.size(); i++) {
        prompts.push_back(&batch[i]->prompt);
        budgets.push_back(std::min(tr.opt.max_new_tokens, shared_context(tr) - (int)batch[i]->prompt.size()));
        row_ids.push_back(i);
    }
    std::vector<std::vector<int>> completions;
#ifdef __CUDACC__
    if (tr.gpu)
        completions = gpu_generate(from_teacher ? tr.gpu->teacher : tr.gpu->student,
                                   from_teacher ? tr.gpu->teacher_gen : tr.gpu->student_gen, prompts, budgets,
                                   tr.opt.temperature, tr.tok->eos_id(), derive_seed(tr.opt.seed, stream), (uint64_t)step,
                                   row_ids);
    else
#endif
        completions = generate(from_teacher ? tr.teacher : tr.student, from_teacher ? tr.teacher_gen : tr.student_gen,
                               prompts, budgets, tr.opt.temperature, tr.tok->eos_id(), derive_seed(tr.opt.seed, stream),
                               (uint64_t)step, row_ids);
    std::vector<Sequence> rows(batch.size());
    for (size_t i = 0; i < batch.size(); i++) { rows[i].prompt = prompts[i]; rows[i].completion = std::move(completions[i]); }
    return rows;
}

static std::vector<Sequence> dataset_completions(const std::vector<const Example*>& batch, int eos) {
    std::vector<Sequence> rows(batch.size());
    for (size_t i = 0; i < batch.size(); i++) {
        rows[i].prompt = &batch[i]->prompt;
        rows[i].completion = batch[i]->completion;
        rows[i].completion.push_back(eos);
    }
    return rows;
}

// Teacher logits at every position of the batch: a forward pass with no activations kept
// (and on the GPU no KV cache either: nothing decodes after it).
static void teacher_forward(Trainer& tr, const TrainBatch& b) {
    const GPTConfig& c = tr.teacher.config;
    std::vector<int> rows(b.B), start(b.B, 0), n_new(b.B, b.T);
    for (int i = 0; i < b.B; i++) rows[i] = i;
#ifdef __CUDACC__
    if (tr.gpu) {
        float* logits = tr.gpu->teacher_logits.ensure((size_t)b.B * b.T * c.padded_vocab_size);
        gpu_infer(tr.gpu->teacher, nullptr, tr.gpu->teacher_scratch, b.tokens.data(), rows.data(), start.data(),
                  n_new.data(), b.B, b.T, logits, true);
        CUDA_CHECK(cudaDeviceSynchronize());
        return;
    }
#endif
    tr.teacher_cache.allocate(c, b.B);
    tr.teacher_logits.resize((size_t)b.B * b.T * c.padded_vocab_size);
    gpt_infer(tr.teacher, tr.teacher_cache, tr.teacher_scratch, b.tokens.data(), rows.data(), start.data(),
              n_new.data(), b.B, b.T, tr.teacher_logits.data(), true);
}

static void student_forward(Trainer& tr, const TrainBatch& b) {
#ifdef __CUDACC__
    if (tr.gpu) {
        gpu_forward(tr.gpu->student, b.tokens.data(), b.B, b.T);
        CUDA_CHECK(cudaDeviceSynchronize());
        return;
    }
#endif
    gpt_forward(tr.student, b.tokens.data(), b.B, b.T);
}

// The batch loss; its gradient replaces the student's logits.
static double student_loss(Trainer& tr, const TrainBatch& b, PolicyGradientTerm* pg) {
    const TrainOptions& o = tr.opt;
    const bool distill = !o.sft;
    const int V = tr.student.config.vocab_size, Vps = tr.student.config.padded_vocab_size;
    const int Vpt = distill ? tr.teacher.config.padded_vocab_size : 0;
#ifdef __CUDACC__
    if (tr.gpu) {
        GpuModel& s = tr.gpu->student;
        return gpu_batch_loss(tr.gpu->loss, b, distill ? tr.gpu->teacher_logits.ptr : nullptr, Vpt, s.acts.logits, V, Vps,
                              !distill, o.beta, o.loss_temperature, o.loss_norm, nullptr, pg);
    }
#endif
    return batch_loss(b, distill ? tr.teacher_logits.data() : (const float*)nullptr, Vpt, tr.student.acts.logits,
                      tr.student.grads_acts.logits, V, Vps, !distill, o.beta, o.loss_temperature, o.loss_norm, nullptr, pg);
}

// Backpropagates through the student; returns the global gradient norm.
static double student_backward(Trainer& tr) {
#ifdef __CUDACC__
    if (tr.gpu) {
        gpu_zero_grad(tr.gpu->student);
        gpu_backward(tr.gpu->student);
        return gpu_grad_norm(tr.gpu->student);  // synchronises: the norm comes back to the host
    }
#endif
    gpt_zero_grad(tr.student);
    gpt_backward(tr.student);
    return grad_norm(tr.student);
}

static void student_update(Trainer& tr, double lr, double grad_scale) {
#ifdef __CUDACC__
    if (tr.gpu) {
        gpu_adamw_update(tr.gpu->student, tr.adam, lr, grad_scale);
        CUDA_CHECK(cudaDeviceSynchronize());
        return;
    }
#endif
    adamw_update(tr.student, tr.adam, lr, grad_scale);
}

// The host's copies of the student and AdamW's moments, up to date (on the GPU they lag
// until this is called): before checkpoints, evaluations and the final save.
static void host_copy(Trainer& tr) {
#ifdef __CUDACC__
    if (!tr.gpu) return;
    gpu_download_parameters(tr.gpu->student, tr.student);
    if (tr.adam.t > 0) gpu_download_optimizer(tr.gpu->student, tr.adam);
#endif
}

// --device: the run's models go to the GPU (the student with its optimizer state, so a
// resumed run continues there) or stay on the CPU.
static void place_trainer(Trainer& tr) {
#ifdef __CUDACC__
    if (tr.opt.device != "cuda") return;
    gpu_init(tr.opt.tf32);
    tr.gpu = std::make_shared<GpuTrainer>();
    gpu_upload(tr.gpu->student, tr.student);
    gpu_upload_optimizer(tr.gpu->student, tr.adam);
    if (tr.has_teacher) gpu_upload(tr.gpu->teacher, tr.teacher);
#else
    GKD_ASSERT(tr.opt.device == "cpu", "a CUDA run in a build without CUDA");
#endif
}

// Fault injection for the reliability tests: GKD_FAULT="<what>:<step>" makes that fault
// happen at that step ("kill-in-checkpoint-write", "nan-loss"). Unset, it costs a getenv.
static bool fault_injected(const char* what, int step) {
    const char* fault = getenv("GKD_FAULT");
    return fault && strf("%s:%d", what, step) == fault;
}

// One step of GKD, the paper's Algorithm 1 (and SFT, its supervised special case).
static StepStats gkd_step(Trainer& tr, int step) {
    const TrainOptions& o = tr.opt;
    const int eos = tr.tok->eos_id();
    StepStats st;
    double t0 = now_seconds();
    st.lr = learning_rate(o.lr, o.schedule, o.warmup, o.steps, step);

    // u ~ U(0,1); on-policy when u < lambda
    double u = Rng(derive_seed(o.seed, STREAM_COIN, (uint64_t)step)).uniform();
    st.on_policy = !o.sft && u < o.lambda;

    // the batch: prompts x, and completions y from the student (on-policy), the teacher
    // (seq_kd) or the dataset
    std::vector<const Example*> examples = select_examples(tr, step);
    if (o.samples_per_prompt > 1) {  // each prompt K times: K samples, a per-prompt baseline
        std::vector<const Example*> repeated;
        for (const Example* e : examples) repeated.insert(repeated.end(), o.samples_per_prompt, e);
        examples.swap(repeated);
    }
    std::vector<Sequence> rows;
    {
        NvtxRange range("sample");
        if (st.on_policy) rows = sample_completions(tr, false, examples, step, STREAM_STUDENT_SAMPLES);
        else if (o.seq_kd) rows = sample_completions(tr, true, examples, step, STREAM_TEACHER_SAMPLES);
        else rows = dataset_completions(examples, eos);
    }
    st.sample_ms = (now_seconds() - t0) * 1000;
    TrainBatch b = build_batch(rows, eos);
    st.tokens = b.num_targets;

    // the teacher scores every token of x+y (no gradients); the student runs forward
    const bool distill = !o.sft;
    double t1 = now_seconds();
    if (distill) {
        NvtxRange range("teacher forward");
        teacher_forward(tr, b);
    }
    double t2 = now_seconds();
    {
        NvtxRange range("student forward");
        student_forward(tr, b);
    }
    double t3 = now_seconds();
    st.teacher_ms = (t2 - t1) * 1000;
    st.forward_ms = (t3 - t2) * 1000;

    // with a reward: score the samples; with alpha < 1, RL + GKD on the same samples,
    // alpha D + (1 - alpha) REINFORCE with a baseline
    PolicyGradientTerm pg;
    if (!o.reward.empty()) {
        const Reward& reward = find_reward(o.reward);
        std::vector<double> r(rows.size());
        double sum = 0, sq = 0, correct = 0;
        for (size_t i = 0; i < rows.size(); i++) {
            std::vector<int> ids = rows[i].completion;
            if (!ids.empty() && ids.back() == eos) ids.pop_back();
            r[i] = reward.score(tr.tok->decode(ids), tr.tok->decode(examples[i]->completion));
            sum += r[i];
            sq += r[i] * r[i];
            correct += r[i] >= 1.0;
        }
        st.reward_mean = sum / r.size();
        st.reward_std = std::sqrt(std::max(0.0, sq / r.size() - st.reward_mean * st.reward_mean));
        st.correct = correct / r.size();
        pg.advantage = advantages(r, o.samples_per_prompt);
        pg.scale = (1.0 - o.alpha) / b.B;
        pg.alpha = o.alpha;
        pg.temperature = o.temperature;
    }
    const bool rl = !o.reward.empty() && o.alpha < 1.0;

    // token-level divergence D(p_T || p_S) at every completion position, and its gradient,
    // written over the student's logits
    {
        NvtxRange range("loss");
        st.loss = student_loss(tr, b, rl ? &pg : nullptr);
    }
    if (!o.reward.empty()) st.divergence = st.loss;
    if (rl) st.loss = o.alpha * st.divergence + (1.0 - o.alpha) * pg.surrogate;
    if (fault_injected("nan-loss", step)) st.loss = NAN;
    if (!std::isfinite(st.loss))
        GKD_FAIL("step %d: the loss is not finite (%g); stopping before the update (the last checkpoint is intact)",
                 step, st.loss);

    // backpropagate through the student only, then one AdamW step
    double t4 = now_seconds();
    st.loss_ms = (t4 - t3) * 1000;
    {
        NvtxRange range("backward");
        st.grad_norm = student_backward(tr);
    }
    if (!std::isfinite(st.grad_norm))
        GKD_FAIL("step %d: the gradient norm is not finite; stopping before the update (the last checkpoint is intact)", step);
    double t5 = now_seconds();
    {
        NvtxRange range("update");
        student_update(tr, st.lr, clip_coefficient(st.grad_norm, o.grad_clip));
    }
    double t6 = now_seconds();
    st.backward_ms = (t5 - t4) * 1000;
    st.update_ms = (t6 - t5) * 1000;
    st.ms = (t6 - t0) * 1000;
    return st;
}

// ----------------------------------------------------------------------------
// 5. evaluation

struct EvalOptions {
    double beta = 0.5, tau = 1.0;   // the divergence to the teacher, when there is one
    int batch = 16;
    int max_new_tokens = 64;        // for the generated completions
    std::string task;               // "arithmetic" | "words" | "": how completions are scored
    double sample_temperature = 0;  // > 0: also score one sampled completion per example
    uint64_t seed = 0;
};

struct EvalResult {
    size_t examples = 0, tokens = 0;
    double nll = 0;                // mean over completion tokens (and their EOS)
    double divergence = NAN;       // mean D to the teacher over the same tokens
    double exact_match = 0;        // greedy completion (with its EOS) == the reference's
    double accuracy = NAN;         // with a task: greedy completions scored by the task
    double similarity = NAN;       // with a task: mean character similarity, greedy
    double sample_accuracy = NAN;  // with a task and a sample temperature
    double sample_similarity = NAN;
    json to_json() const {
        json j = {{"examples", examples}, {"tokens", tokens}, {"nll", nll}, {"exact_match", exact_match}};
        auto put = [&](const char* k, double v) { if (!std::isnan(v)) j[k] = v; };
        put("divergence", divergence);
        put("accuracy", accuracy);
        put("similarity", similarity);
        put("sample_accuracy", sample_accuracy);
        put("sample_similarity", sample_similarity);
        return j;
    }
};

// With gpu, the forward passes and the generation run on the device (the models there
// must be `model` and `teacher`); the scoring stays here.
static EvalResult evaluate(const GPT<float>& model, const GPT<float>* teacher, const Dataset& data,
                           const Tokenizer& tok, const EvalOptions& eo, GpuEval* gpu = nullptr) {
    EvalResult r;
    const int eos = tok.eos_id();
    KVCache<float> cache, tcache;
    InferScratch<float> scratch, tscratch;
    Generator gen;
    std::vector<float> logits, tlogits;
    const int V = model.config.vocab_size, Vp = model.config.padded_vocab_size;
    const int Vpt = teacher ? teacher->config.padded_vocab_size : 0;
    double nll_sum = 0, div_sum = 0, correct = 0, similar = 0, sample_correct = 0, sample_similar = 0;
    size_t matches = 0;
    for (size_t first = 0; first < data.examples.size(); first += eo.batch) {
        size_t last = std::min(data.examples.size(), first + eo.batch);
        std::vector<const Example*> ex;
        for (size_t i = first; i < last; i++) ex.push_back(&data.examples[i]);
        // teacher-forced: NLL of the reference completion, and the divergence to the teacher
        TrainBatch b = build_batch(dataset_completions(ex, eos), eos);
        std::vector<int> rows(b.B), start(b.B, 0), n_new(b.B, b.T);
        for (int i = 0; i < b.B; i++) rows[i] = i;
        // logits at every position, into out (B, T, Vp of that model)
        auto forward = [&](const GPT<float>& m, KVCache<float>& c, InferScratch<float>& s, std::vector<float>& out) {
            out.resize((size_t)b.B * b.T * m.config.padded_vocab_size);
#ifdef __CUDACC__
            if (gpu) {
                float* d = gpu->logits.ensure(out.size());
                gpu_infer(&m == &model ? *gpu->model : *gpu->teacher, nullptr, gpu->scratch, b.tokens.data(), rows.data(),
                          start.data(), n_new.data(), b.B, b.T, d, true);
                download(out.data(), d, out.size());
                return;
            }
#endif
            c.allocate(m.config, b.B);
            gpt_infer(m, c, s, b.tokens.data(), rows.data(), start.data(), n_new.data(), b.B, b.T, out.data(), true);
        };
        forward(model, cache, scratch, logits);
        double mean;
        batch_loss(b, (const float*)nullptr, 0, logits.data(), (float*)nullptr, V, Vp, true, 0, 1, LossNorm::Token, &mean);
        nll_sum += mean * b.num_targets;
        if (teacher) {
            forward(*teacher, tcache, tscratch, tlogits);
            batch_loss(b, tlogits.data(), Vpt, logits.data(), (float*)nullptr, V, Vp, false, eo.beta, eo.tau,
                       LossNorm::Token, &mean);
            div_sum += mean * b.num_targets;
        }
        r.tokens += b.num_targets;
        // free-running: greedy (and optionally sampled) completions, scored
        std::vector<const std::vector<int>*> prompts;
        std::vector<int> budgets;
        std::vector<uint64_t> ids;
        for (size_t i = 0; i < ex.size(); i++) {
            prompts.push_back(&ex[i]->prompt);
            budgets.push_back(std::min(eo.max_new_tokens, model.config.max_seq_len - (int)ex[i]->prompt.size()));
            ids.push_back(first + i);
        }
        auto score = [&](const std::vector<std::vector<int>>& outs, double& right, double& sim) {
            for (size_t i = 0; i < ex.size(); i++) {
                std::vector<int> text = outs[i];
                if (!text.empty() && text.back() == eos) text.pop_back();
                TaskScore s = score_completion(eo.task, tok.decode(text), tok.decode(ex[i]->completion));
                right += s.correct;
                sim += s.similarity;
            }
        };
        auto run_generate = [&](double temperature, uint64_t seed) {
#ifdef __CUDACC__
            if (gpu) return gpu_generate(*gpu->model, gpu->gen, prompts, budgets, temperature, eos, seed, 0, ids);
#endif
            return generate(model, gen, prompts, budgets, temperature, eos, seed, 0, ids);
        };
        auto greedy = run_generate(0.0, 0);
        for (size_t i = 0; i < ex.size(); i++) {
            std::vector<int> want = ex[i]->completion;
            want.push_back(eos);
            matches += greedy[i] == want;
        }
        if (!eo.task.empty()) score(greedy, correct, similar);
        if (!eo.task.empty() && eo.sample_temperature > 0)
            score(run_generate(eo.sample_temperature, eo.seed), sample_correct, sample_similar);
    }
    const double n = (double)data.examples.size();
    r.examples = data.examples.size();
    r.nll = nll_sum / r.tokens;
    if (teacher) r.divergence = div_sum / r.tokens;
    r.exact_match = matches / n;
    if (!eo.task.empty()) { r.accuracy = correct / n; r.similarity = similar / n; }
    if (!eo.task.empty() && eo.sample_temperature > 0) { r.sample_accuracy = sample_correct / n; r.sample_similarity = sample_similar / n; }
    return r;
}

// ----------------------------------------------------------------------------
// progress: a bar with ETA on a terminal, a line every 5% otherwise (logs stay short)

struct Progress {
    std::string label;
    int total;
    bool quiet, tty;
    double start = now_seconds();
    int last_line = -1;
    Progress(const std::string& l, int n, bool q) : label(l), total(std::max(n, 1)), quiet(q), tty(!q && isatty(2)) {}
    double elapsed() const { return now_seconds() - start; }
    void update(int done, const std::string& info) {
        if (quiet) return;
        int twentieth = done * 20 / total;
        if (!tty && twentieth == last_line && done != total) return;
        last_line = twentieth;
        double eta = elapsed() / done * (total - done);
        std::string bar(20, '.');
        std::fill(bar.begin(), bar.begin() + twentieth, '#');
        fprintf(stderr, "%s%-16s [%s] %d/%d | %s | ETA %s%s", tty ? "\r" : "", label.c_str(), bar.c_str(), done, total,
                info.c_str(), format_duration(eta).c_str(), tty ? "  " : "\n");
    }
    void finish() {
        if (!quiet)
            fprintf(stderr, "%s%-16s done in %s, peak RSS %.0f MB\n", tty ? "\n" : "", label.c_str(),
                    format_duration(elapsed()).c_str(), peak_rss_mb());
    }
};

// ----------------------------------------------------------------------------
// the training driver: load, loop, log, save

static void make_dirs(const std::string& dir) {
    std::string partial;
    for (size_t i = 0; i <= dir.size(); i++) {
        if (i == dir.size() || dir[i] == '/') {
            if (!partial.empty() && mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
                GKD_FAIL("%s: cannot create the folder: %s", partial.c_str(), strerror(errno));
        }
        if (i < dir.size()) partial += dir[i];
    }
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) GKD_FAIL("%s: not a folder", dir.c_str());
}

static void load_inputs(Trainer& tr);

// A teacher and the model compared with it must share one vocabulary (and so one tokenizer).
static void check_same_vocabulary(const GPT<float>& teacher, const std::string& teacher_path, const GPT<float>& model,
                                  const std::string& model_path, const char* role) {
    if (teacher.config.vocab_size != model.config.vocab_size)
        GKD_FAIL("vocabulary mismatch: teacher %s has V = %d but %s %s has V = %d; they must share one tokenizer",
                 teacher_path.c_str(), teacher.config.vocab_size, role, model_path.c_str(), model.config.vocab_size);
}

static void load_trainer(Trainer& tr, const TrainOptions& opt) {
    tr.opt = opt;
    gpt_load_any(tr.student, opt.student_path);
    load_inputs(tr);
}

// Everything but the student: the teacher, the tokenizer, the data, AdamW's settings.
static void load_inputs(Trainer& tr) {
    const TrainOptions& opt = tr.opt;
    tr.has_teacher = !opt.sft || opt.seq_kd;
    if (tr.has_teacher) {
        gpt_load_any(tr.teacher, opt.teacher_path);
        check_same_vocabulary(tr.teacher, opt.teacher_path, tr.student, opt.student_path, "student");
    }
    std::string tok_source;
    tr.tok = load_tokenizer(opt.tokenizer, tr.student.config.vocab_size, opt.student_path, &tok_source);
    if (tr.has_teacher) check_teacher_tokenizer(*tr.tok, tok_source, opt.teacher_path);
    // completions come from the file unless every step samples them
    bool need_completion = opt.sft ? !opt.seq_kd : ((opt.lambda < 1.0 && !opt.seq_kd) || opt.alpha < 1.0);
    tr.data = load_jsonl(opt.data_path, *tr.tok, shared_context(tr), need_completion);
    if (!opt.eval_data_path.empty())
        tr.eval_data = load_jsonl(opt.eval_data_path, *tr.tok, shared_context(tr), true);
    if (opt.steps == 0) tr.opt.steps = (int)((tr.data.examples.size() + opt.batch - 1) / opt.batch);
    tr.adam.beta1 = opt.adam_beta1;
    tr.adam.beta2 = opt.adam_beta2;
    tr.adam.eps = opt.adam_eps;
    tr.adam.weight_decay = opt.weight_decay;
}

static void write_metrics_line(FILE* f, const std::string& path, const json& j) {
    std::string line = j.dump() + "\n";
    if (fwrite(line.data(), 1, line.size(), f) != line.size() || fflush(f) != 0)
        GKD_FAIL("%s: write failed: %s", path.c_str(), strerror(errno));
}

static json eval_line(Trainer& tr, int step) {
    EvalOptions eo;
    eo.beta = tr.opt.beta;
    eo.tau = tr.opt.loss_temperature;
    eo.batch = std::max(tr.opt.batch, 16);
    eo.max_new_tokens = tr.opt.max_new_tokens;
    eo.task = tr.opt.task;
    EvalResult r;
#ifdef __CUDACC__
    if (tr.gpu) {  // on the device, with the models as they are there now
        GpuEval ge;
        ge.model = &tr.gpu->student;
        ge.teacher = tr.has_teacher ? &tr.gpu->teacher : nullptr;
        r = evaluate(tr.student, tr.has_teacher ? &tr.teacher : nullptr, tr.eval_data, *tr.tok, eo, &ge);
        return json{{"step", step}, {"eval", r.to_json()}};
    }
#endif
    r = evaluate(tr.student, tr.has_teacher ? &tr.teacher : nullptr, tr.eval_data, *tr.tok, eo);
    return json{{"step", step}, {"eval", r.to_json()}};
}

// ----------------------------------------------------------------------------
// checkpoints of the whole training state, and resuming from them
//
// DIR/checkpoint.bin holds everything a run needs to continue exactly: the configuration,
// the next step, the student's weights and AdamW's moments. The RNG and the data cursor
// are functions of (seed, step), so the step is their whole state. The file is replaced
// atomically (written beside, fsynced, renamed), so a crash at any moment leaves either
// the previous checkpoint or the new one.
//
//   "GKDSTATE" (8 bytes), uint32 version = 1, uint32 0, uint64 n_json, the JSON
//   {"options", "next_step", "adam_t", "model": {shape}, "num_parameters"}, then
//   float32 params[n], m[n], v[n].

constexpr uint32_t STATE_VERSION = 1;

static void save_training_state(const Trainer& tr, int next_step, const std::string& path) {
    const GPTConfig& c = tr.student.config;
    json j = {{"options", options_to_json(tr.opt)}, {"next_step", next_step}, {"adam_t", tr.adam.t},
              {"model", {{"max_seq_len", c.max_seq_len}, {"vocab_size", c.vocab_size},
                         {"padded_vocab_size", c.padded_vocab_size}, {"num_layers", c.num_layers},
                         {"num_heads", c.num_heads}, {"channels", c.channels}}},
              {"num_parameters", tr.student.num_parameters}};
    std::string text = j.dump();
    const size_t n = tr.student.num_parameters;
    std::vector<float> zeros;
    const float* m = tr.adam.m.data();
    const float* v = tr.adam.v.data();
    if (tr.adam.m.empty()) { zeros.assign(n, 0.f); m = v = zeros.data(); }  // before the first update
    uint32_t version[2] = {STATE_VERSION, 0};
    uint64_t n_json = text.size();
    AtomicWriter w(path);
    w.write("GKDSTATE", 8);
    w.write(version, sizeof version);
    w.write(&n_json, sizeof n_json);
    w.write(text.data(), text.size());
    w.write(tr.student.params_memory.data(), n * sizeof(float));
    if (fault_injected("kill-in-checkpoint-write", next_step)) { fflush(w.f); raise(SIGKILL); }
    w.write(m, n * sizeof(float));
    w.write(v, n * sizeof(float));
    w.commit();
}

// Restores the student, AdamW and the configuration; returns the step to run next.
static int load_training_state(Trainer& tr, const std::string& path) {
    InputFile in(path);
    char magic[8];
    uint32_t version[2];
    uint64_t n_json;
    if (in.size < 24) GKD_FAIL("%s: not a gkd training checkpoint (%lld bytes)", path.c_str(), in.size);
    in.read_exact(magic, 8, "the magic");
    in.read_exact(version, sizeof version, "the version");
    in.read_exact(&n_json, sizeof n_json, "the header length");
    if (memcmp(magic, "GKDSTATE", 8) != 0) GKD_FAIL("%s: not a gkd training checkpoint (bad magic)", path.c_str());
    if (version[0] != STATE_VERSION)
        GKD_FAIL("%s: training checkpoint version %u, this gkd reads version %u", path.c_str(), version[0], STATE_VERSION);
    if (n_json > (1u << 20) || (long long)n_json > in.size - 24)
        GKD_FAIL("%s: header length %llu does not fit the file", path.c_str(), (unsigned long long)n_json);
    std::string text(n_json, '\0');
    in.read_exact(&text[0], n_json, "the header");
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        GKD_FAIL("%s: the header is malformed JSON: %s", path.c_str(), dataset_detail::short_json_error(e).c_str());
    }
    GPTConfig c;
    int next_step;
    long long adam_t;
    unsigned long long n;
    TrainOptions saved;
    try {
        const json& mj = j.at("model");
        c.max_seq_len = mj.at("max_seq_len"); c.vocab_size = mj.at("vocab_size");
        c.padded_vocab_size = mj.at("padded_vocab_size"); c.num_layers = mj.at("num_layers");
        c.num_heads = mj.at("num_heads"); c.channels = mj.at("channels");
        next_step = j.at("next_step");
        adam_t = j.at("adam_t");
        n = j.at("num_parameters");
        saved = options_from_json(j.at("options"), path);
    } catch (const json::exception& e) {
        GKD_FAIL("%s: the header is missing a field or has a wrong type: %s", path.c_str(),
                 dataset_detail::short_json_error(e).c_str());
    }
    validate_config(c, path);
    size_t sizes[NUM_PARAMETER_TENSORS];
    fill_parameter_sizes(sizes, c);
    unsigned long long expected_n = 0;
    for (size_t s : sizes) expected_n += s;
    if (n != expected_n) GKD_FAIL("%s: %llu parameters do not match the model's shape (%llu)", path.c_str(), n, expected_n);
    if ((unsigned long long)in.size != 24 + n_json + 3 * 4 * n)
        GKD_FAIL("%s: file is %lld bytes, its header needs %llu: truncated or corrupt", path.c_str(), in.size,
                 24 + n_json + 12 * n);
    if (next_step < 0 || next_step > saved.steps || adam_t < 0 || adam_t > next_step)
        GKD_FAIL("%s: step %d is outside the run's %d steps", path.c_str(), next_step, saved.steps);
    gpt_build(tr.student, c);
    in.read_exact(tr.student.params_memory.data(), n * 4, "the parameters");
    tr.adam.m.assign(n, 0.f);
    tr.adam.v.assign(n, 0.f);
    in.read_exact(tr.adam.m.data(), n * 4, "the first moments");
    in.read_exact(tr.adam.v.data(), n * 4, "the second moments");
    tr.adam.t = adam_t;
    saved.out_dir = tr.opt.out_dir;
    saved.quiet = tr.opt.quiet;
    tr.opt = saved;
    return next_step;
}

// Keeps the metrics lines of steps before `next_step`: what a killed run logged after its
// last checkpoint is replaced by the resumed run, not duplicated. A torn last line goes too.
static void truncate_metrics(const std::string& path, int next_step) {
    std::string all = is_file(path) ? read_whole_file(path) : "", kept;
    size_t pos = 0;
    while (pos < all.size()) {
        size_t end = all.find('\n', pos);
        if (end == std::string::npos) break;  // no newline: a write the kill interrupted
        std::string line = all.substr(pos, end - pos);
        pos = end + 1;
        json j = json::parse(line, nullptr, false);
        if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int>() < next_step)
            kept += line + "\n";
    }
    write_file_atomic(path, kept);
}

// SIGINT and SIGTERM ask the loop to stop after the current step.
static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) { stop_signal = sig; }

struct TrainOutcome {
    StepStats last;
    int stopped_by_signal = 0;  // the signal number, or 0 when the run finished
};

// Runs steps start_step .. steps-1, logging each; writes model.bin at the end.
static TrainOutcome train(Trainer& tr, int start_step = 0) {
    const TrainOptions& o = tr.opt;
    make_dirs(o.out_dir);
    std::string metrics_path = o.out_dir + "/metrics.jsonl", state_path = o.out_dir + "/checkpoint.bin";
    if (start_step > 0) truncate_metrics(metrics_path, start_step);
    FILE* metrics = fopen(metrics_path.c_str(), start_step > 0 ? "a" : "w");
    if (!metrics) GKD_FAIL("%s: cannot open for writing: %s", metrics_path.c_str(), strerror(errno));
    std::unique_ptr<FILE, int (*)(FILE*)> closer(metrics, fclose);
    stop_signal = 0;
    struct sigaction sa = {}, old_int, old_term;
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    Progress progress(o.label.empty() ? (o.sft ? "sft" : "distill") : o.label, o.steps - start_step, o.quiet);
    long long tokens_done = 0;
    TrainOutcome out;
    for (int step = start_step; step < o.steps; step++) {
        StepStats st = gkd_step(tr, step);
        out.last = st;
        tokens_done += st.tokens;
        json line = {{"step", step}, {"loss", st.loss}, {"on_policy", st.on_policy}, {"lr", st.lr},
                     {"tokens", st.tokens}, {"grad_norm", st.grad_norm}, {"step_ms", st.ms},
                     {"sample_ms", st.sample_ms}};
        if (!std::isnan(st.reward_mean))
            line.update({{"divergence", st.divergence}, {"reward_mean", st.reward_mean}, {"reward_std", st.reward_std},
                         {"correct", st.correct}});
        write_metrics_line(metrics, metrics_path, line);
        bool evaluate_now = !tr.eval_data.examples.empty() &&
                            ((o.eval_every > 0 && (step + 1) % o.eval_every == 0) || step + 1 == o.steps);
        if (evaluate_now) write_metrics_line(metrics, metrics_path, eval_line(tr, step));
        progress.update(step + 1 - start_step, strf("loss %.4f | %s | %.0f tok/s", st.loss,
                                                    st.on_policy ? "on-policy " : "off-policy",
                                                    tokens_done / std::max(progress.elapsed(), 1e-9)));
        bool last = step + 1 == o.steps;
        if (!last && (stop_signal || (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0))) {
            host_copy(tr);
            save_training_state(tr, step + 1, state_path);
        }
        if (stop_signal && !last) {
            out.stopped_by_signal = stop_signal;
            fprintf(stderr, "\n%s after step %d: the whole training state is in %s; continue with "
                            "gkd %s --resume %s\n", stop_signal == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)",
                    step, state_path.c_str(), o.sft ? "sft" : "distill", o.out_dir.c_str());
            break;
        }
    }
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    if (out.stopped_by_signal) return out;
    progress.finish();
    host_copy(tr);
    gpt_save(tr.student, o.out_dir + "/model.bin");
    if (is_file(state_path)) unlink(state_path.c_str());  // finished: model.bin is the result
    if (!o.quiet) fprintf(stderr, "saved %s/model.bin and %s\n", o.out_dir.c_str(), metrics_path.c_str());
    return out;
}

// ----------------------------------------------------------------------------
// 6. the default experiment: `./gkd` with no arguments
//
// The paper's comparison in miniature, on the built-in arithmetic task: SFT a teacher
// (cached under runs/), warm-start a smaller student with a short SFT, distil it with
// on-policy GKD, and compare held-out accuracy. A control row gives the SFT student the
// same number of extra steps as GKD, but of more SFT, so the table separates "more
// training" from "training on its own samples".

static void write_task_splits(const std::string& task, uint64_t seed, const TaskSizes& sizes, const std::string& dir);

struct ModelShape {
    int layers, channels, heads;
};

struct ExperimentRecipe {
    std::string task = "arithmetic";
    int context = 32, batch = 64, max_new_tokens = 16;
    ModelShape teacher{4, 128, 4}, student{1, 32, 2};
    int teacher_steps = 1000, warmup_steps = 1000, gkd_steps = 500;
    double teacher_lr = 3e-3, student_lr = 3e-3, gkd_lr = 1e-3;
    double lambda = 1.0, beta = 0.5;
    uint64_t seed = 0;
    // what the cached teacher depends on: change any of it and the teacher is retrained
    json teacher_key() const {
        return {{"format", 1}, {"task", task}, {"context", context}, {"batch", batch}, {"seed", seed},
                {"layers", teacher.layers}, {"channels", teacher.channels}, {"heads", teacher.heads},
                {"steps", teacher_steps}, {"lr", teacher_lr}};
    }
};

static void init_model_file(const ModelShape& shape, int context, uint64_t seed, const std::string& path) {
    GPTConfig c;
    c.num_layers = shape.layers; c.channels = shape.channels; c.num_heads = shape.heads;
    c.max_seq_len = context; c.vocab_size = 257; c.padded_vocab_size = pad_vocab(257);
    GPT<float> m;
    gpt_build(m, c);
    gpt_init_random(m, seed);
    gpt_save(m, path);
}

static TrainOptions experiment_train_options(const ExperimentRecipe& r, const std::string& data_dir, int steps,
                                             double lr, const std::string& out, const std::string& label) {
    TrainOptions o;
    o.data_path = data_dir + "/train.jsonl";
    o.eval_data_path = data_dir + "/validation.jsonl";
    o.task = r.task;
    o.out_dir = out;
    o.batch = r.batch;
    o.steps = steps;
    o.lr = lr;
    o.warmup = std::min(50, steps / 10);
    o.schedule = Schedule::Cosine;
    o.max_new_tokens = r.max_new_tokens;
    o.seed = r.seed;
    o.label = label;
    return o;
}

// Thrown to leave the program with a status (after a signal), past the callers.
struct ExitRequest {
    int status;
};

static double run_training_phase(const TrainOptions& o) {
    double t0 = now_seconds();
    Trainer tr;
    load_trainer(tr, o);
    TrainOutcome out = train(tr);
    if (out.stopped_by_signal) throw ExitRequest{128 + out.stopped_by_signal};
    return now_seconds() - t0;
}

struct ExperimentRow {
    std::string name, path;
    size_t params = 0;
    EvalResult eval;
    double train_seconds = 0;
    bool cached = false;
};

static int run_default_experiment(const ExperimentRecipe& r = ExperimentRecipe(), const std::string& root = "runs/default",
                                  const TaskSizes& sizes = TaskSizes()) {
    const double t_start = now_seconds();
    const std::string data_dir = root + "/data/" + r.task;
    fprintf(stderr, "gkd: the default experiment: GKD on the built-in %s task, %d threads (%s)\n", r.task.c_str(),
            omp_get_max_threads(), root.c_str());
    if (!is_file(data_dir + "/test.jsonl")) {
        write_task_splits(r.task, r.seed, sizes, data_dir);
        fprintf(stderr, "data             generated %s/{train,validation,test}.jsonl\n", data_dir.c_str());
    }
    std::vector<ExperimentRow> rows;

    // 1. the teacher: SFT from scratch, or the cached one if it was made by the same recipe
    ExperimentRow teacher{"teacher (SFT)", root + "/teacher/model.bin", 0, {}, 0, false};
    std::string key_path = root + "/teacher/recipe.json", key = r.teacher_key().dump();
    if (is_file(teacher.path) && is_file(key_path) && read_whole_file(key_path) == key) {
        teacher.cached = true;
        fprintf(stderr, "teacher          cached: %s\n", teacher.path.c_str());
    } else {
        make_dirs(root + "/teacher");
        init_model_file(r.teacher, r.context, r.seed + 1, root + "/teacher/init.bin");
        TrainOptions o = experiment_train_options(r, data_dir, r.teacher_steps, r.teacher_lr, root + "/teacher", "teacher sft");
        o.sft = true;
        o.student_path = root + "/teacher/init.bin";
        teacher.train_seconds = run_training_phase(o);
        write_file_atomic(key_path, key);
    }
    rows.push_back(teacher);

    // 2. the student: a short SFT warm start, as the paper does
    ExperimentRow sft{"student (SFT)", root + "/student-sft/model.bin", 0, {}, 0, false};
    make_dirs(root + "/student-sft");
    init_model_file(r.student, r.context, r.seed + 2, root + "/student-sft/init.bin");
    TrainOptions o = experiment_train_options(r, data_dir, r.warmup_steps, r.student_lr, root + "/student-sft", "student sft");
    o.sft = true;
    o.student_path = root + "/student-sft/init.bin";
    sft.train_seconds = run_training_phase(o);
    rows.push_back(sft);

    // 3. on-policy GKD from the SFT student; 4. the control: as many steps of more SFT
    ExperimentRow gkd{"student (SFT + GKD)", root + "/student-gkd/model.bin", 0, {}, 0, false};
    o = experiment_train_options(r, data_dir, r.gkd_steps, r.gkd_lr, root + "/student-gkd", "student gkd");
    o.teacher_path = teacher.path;
    o.student_path = sft.path;
    o.lambda = r.lambda;
    o.beta = r.beta;
    gkd.train_seconds = run_training_phase(o);
    ExperimentRow more{"student (SFT + more SFT)", root + "/student-sft-more/model.bin", 0, {}, 0, false};
    o = experiment_train_options(r, data_dir, r.gkd_steps, r.gkd_lr, root + "/student-sft-more", "student more sft");
    o.sft = true;
    o.student_path = sft.path;
    more.train_seconds = run_training_phase(o);
    rows.push_back(more);
    rows.push_back(gkd);

    // held-out test accuracy, greedy and sampled at temperature 1
    ByteTokenizer tok;
    Dataset test = load_jsonl(data_dir + "/test.jsonl", tok, r.context, true);
    GPT<float> teacher_model;
    gpt_load(teacher_model, teacher.path);
    EvalOptions eo;
    eo.task = r.task;
    eo.sample_temperature = 1.0;
    eo.max_new_tokens = r.max_new_tokens;
    eo.beta = r.beta;
    eo.batch = 100;
    Progress progress("evaluate", (int)rows.size(), false);
    for (size_t i = 0; i < rows.size(); i++) {
        GPT<float> m;
        gpt_load(m, rows[i].path);
        rows[i].params = m.num_parameters;
        rows[i].eval = evaluate(m, i == 0 ? nullptr : &teacher_model, test, tok, eo);
        progress.update((int)i + 1, rows[i].name);
    }
    progress.finish();

    std::string table = strf("| model | parameters | greedy accuracy | sampled accuracy (T=1) | JSD(%.1f) to teacher | training time |\n"
                             "|---|---|---|---|---|---|\n", r.beta);
    for (auto& row : rows)
        table += strf("| %s | %.2fM | %.1f%% | %.1f%% | %s | %s |\n", row.name.c_str(), row.params / 1e6,
                      100 * row.eval.accuracy, 100 * row.eval.sample_accuracy,
                      std::isnan(row.eval.divergence) ? "-" : strf("%.4f", row.eval.divergence).c_str(),
                      row.cached ? "cached" : format_duration(row.train_seconds).c_str());
    std::string summary = strf("Held-out %s test set (%zu examples), exact match of the final answer. Total time %s.\n",
                               r.task.c_str(), test.examples.size(), format_duration(now_seconds() - t_start).c_str());
    write_file_atomic(root + "/results.md", table + "\n" + summary);
    printf("\n%s\n%s(also in %s/results.md)\n", table.c_str(), summary.c_str(), root.c_str());
    return 0;
}

// ----------------------------------------------------------------------------
// the command line

struct FlagSpec {
    const char* name;
    bool takes_value;
    const char* help;
};

// Parses "--name value" and "--switch"; rejects unknown flags, missing values, repeats.
struct Flags {
    std::string command;
    std::map<std::string, std::string> values;
    std::set<std::string> switches;

    Flags(const std::string& cmd, int argc, char** argv, const std::vector<FlagSpec>& specs) : command(cmd) {
        for (int i = 0; i < argc; i++) {
            std::string a = argv[i];
            if (a.rfind("--", 0) != 0 || a.size() == 2)
                GKD_FAIL("gkd %s: unexpected argument '%s' (flags are --name value; see gkd %s --help)", cmd.c_str(),
                         a.c_str(), cmd.c_str());
            std::string name = a.substr(2);
            auto spec = std::find_if(specs.begin(), specs.end(), [&](const FlagSpec& s) { return name == s.name; });
            if (spec == specs.end())
                GKD_FAIL("gkd %s: unknown flag --%s (see gkd %s --help)", cmd.c_str(), name.c_str(), cmd.c_str());
            if (values.count(name) || switches.count(name))
                GKD_FAIL("gkd %s: --%s is given twice", cmd.c_str(), name.c_str());
            if (!spec->takes_value) { switches.insert(name); continue; }
            if (i + 1 >= argc) GKD_FAIL("gkd %s: --%s needs a value", cmd.c_str(), name.c_str());
            values[name] = argv[++i];
        }
    }
    bool has(const std::string& n) const { return values.count(n) > 0; }
    bool on(const std::string& n) const { return switches.count(n) > 0; }
    std::string str(const std::string& n, const std::string& def = "") const {
        auto it = values.find(n);
        return it == values.end() ? def : it->second;
    }
    std::string required(const std::string& n) const {
        if (!has(n)) GKD_FAIL("gkd %s: --%s is required (see gkd %s --help)", command.c_str(), n.c_str(), command.c_str());
        return values.at(n);
    }
    double num(const std::string& n, double def, double lo, double hi) const {
        if (!has(n)) return def;
        const std::string& s = values.at(n);
        char* end = nullptr;
        errno = 0;
        double v = strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
            GKD_FAIL("gkd %s: --%s '%s' is not a number", command.c_str(), n.c_str(), s.c_str());
        if (v < lo || v > hi)
            GKD_FAIL("gkd %s: --%s %s is outside [%g, %g]", command.c_str(), n.c_str(), s.c_str(), lo, hi);
        return v;
    }
    long long integer(const std::string& n, long long def, long long lo, long long hi) const {
        if (!has(n)) return def;
        const std::string& s = values.at(n);
        char* end = nullptr;
        errno = 0;
        long long v = strtoll(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0' || errno == ERANGE)
            GKD_FAIL("gkd %s: --%s '%s' is not an integer", command.c_str(), n.c_str(), s.c_str());
        if (v < lo || v > hi)
            GKD_FAIL("gkd %s: --%s %s is outside [%lld, %lld]", command.c_str(), n.c_str(), s.c_str(), lo, hi);
        return v;
    }
    std::string choice(const std::string& n, const std::string& def, const std::vector<std::string>& allowed) const {
        std::string v = str(n, def);
        if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
            std::string list;
            for (auto& a : allowed) list += (list.empty() ? "" : "|") + a;
            GKD_FAIL("gkd %s: --%s '%s' must be one of %s", command.c_str(), n.c_str(), v.c_str(), list.c_str());
        }
        return v;
    }
};

static bool wants_help(int argc, char** argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
    return false;
}

static void print_help(const std::string& usage, const std::vector<FlagSpec>& specs) {
    printf("%s\n\nflags:\n", usage.c_str());
    for (auto& s : specs) printf("  --%-20s %s\n", (std::string(s.name) + (s.takes_value ? " X" : "")).c_str(), s.help);
}

static std::string task_flag(const Flags& f) {
    std::string t = f.str("task");
    if (!t.empty() && !is_scored_task(t))
        GKD_FAIL("gkd %s: --task '%s' must be arithmetic, words or gsm8k", f.command.c_str(), t.c_str());
    return t;
}

// --device auto | cpu | cuda, resolved to where the work runs: auto is the GPU when this
// build has the CUDA path and a GPU is visible, else the CPU. cuda without one is an error.
static std::string resolve_device(const Flags& f) {
    std::string d = f.choice("device", "auto", {"auto", "cpu", "cuda"});
#ifdef __CUDACC__
    if (d == "cuda" && gpu_count() == 0)
        GKD_FAIL("gkd %s: --device cuda: no CUDA GPU is visible (nvidia-smi lists none); use --device cpu (or auto)",
                 f.command.c_str());
#else
    if (d == "cuda")
        GKD_FAIL("gkd %s: --device cuda: this build has no CUDA path (nvcc was not found by make); use --device cpu "
                 "(or auto)", f.command.c_str());
#endif
    if (d == "auto") d = gpu_count() > 0 ? "cuda" : "cpu";
    if (f.on("tf32") && d != "cuda") GKD_FAIL("gkd %s: --tf32 is a GPU mode: it needs --device cuda", f.command.c_str());
    return d;
}

static const char* TOKENIZER_HELP =
    "byte, tokenizer.json, gpt2_tokenizer.bin, or a folder with vocab.json + merges.txt or encoder.json + vocab.bpe "
    "(default: byte for V = 257, else the tokenizer files beside the model)";

static const std::vector<FlagSpec> TRAIN_FLAGS = {
    {"data", true, "training examples, JSONL (SPEC section 5)"},
    {"out", true, "run folder: metrics.jsonl and model.bin go here"},
    {"lambda", true, "fraction of on-policy (student-sampled) batches, [0,1] (0.5)"},
    {"beta", true, "0 forward KL, 1 reverse KL, between: JSD(beta) (0.5)"},
    {"temperature", true, "sampling temperature for on-policy and seq-kd completions (1.0)"},
    {"loss-temperature", true, "tau: both logit rows are divided by it in the divergence (1.0)"},
    {"max-new-tokens", true, "longest sampled completion (64)"},
    {"seq-kd", false, "off-policy batches use teacher samples instead of dataset completions"},
    {"loss-norm", true, "sequence (mean over sequences of per-token means) | token (sequence)"},
    {"batch", true, "sequences per step (8)"},
    {"steps", true, "optimizer steps (default: one pass over the data)"},
    {"lr", true, "peak learning rate (1e-4)"},
    {"lr-schedule", true, "constant | cosine (constant)"},
    {"warmup", true, "linear warmup steps (0)"},
    {"weight-decay", true, "AdamW decoupled weight decay on matrices and embeddings (0)"},
    {"grad-clip", true, "clip the global gradient norm to this; 0 = off (1.0)"},
    {"adam-beta1", true, "(0.9)"},
    {"adam-beta2", true, "(0.999)"},
    {"adam-eps", true, "(1e-8)"},
    {"seed", true, "seeds the lambda coin, the shuffle and the sampling (0)"},
    {"shuffle", true, "1: reshuffle each epoch; 0: step k takes examples kB..kB+B-1 mod N (1)"},
    {"device", true, "auto | cpu | cuda (auto: the GPU when there is one)"},
    {"tf32", false, "cuda: matmuls on TF32 tensor cores (faster; the default fp32 is the parity mode)"},
    {"eval-data", true, "held-out JSONL, evaluated every --eval-every steps and at the end"},
    {"eval-every", true, "steps between evaluations (0: only at the end)"},
    {"task", true, "arithmetic | words | gsm8k: score evaluation completions by the task"},
    {"tokenizer", true, TOKENIZER_HELP},
    {"quiet", false, "no progress line"},
    {"checkpoint-every", true, "save the whole training state every N steps to DIR/checkpoint.bin (0: only on SIGINT/SIGTERM)"},
    {"resume", true, "continue the run in this folder from its checkpoint (no other flags)"},
    {"overwrite", false, "replace the run in an existing, non-empty --out folder"},
    {"alpha", true, "RL + GKD: maximise (1-alpha) E[reward] - alpha E[D] on student samples; 1 = pure GKD (1)"},
    {"reward", true, "score each sample (logged; the RL term when --alpha < 1): arithmetic | similarity | exact-match"},
    {"samples-per-prompt", true, "K samples per prompt (per-prompt reward baseline when K > 1) (1)"},
};

static TrainOptions parse_train_options(const Flags& f, bool sft) {
    TrainOptions o;
    o.sft = sft;
    o.data_path = f.required("data");
    o.out_dir = f.required("out");
    o.lambda = f.num("lambda", 0.5, 0, 1);
    o.beta = f.num("beta", 0.5, 0, 1);
    o.temperature = f.num("temperature", 1.0, 0, 1e6);
    o.loss_temperature = f.num("loss-temperature", 1.0, 1e-6, 1e6);
    o.max_new_tokens = (int)f.integer("max-new-tokens", 64, 1, 1 << 20);
    o.seq_kd = f.on("seq-kd");
    o.loss_norm = f.choice("loss-norm", "sequence", {"sequence", "token"}) == "token" ? LossNorm::Token : LossNorm::Sequence;
    o.batch = (int)f.integer("batch", 8, 1, 1 << 16);
    o.steps = (int)f.integer("steps", 0, 1, 1 << 30);
    o.lr = f.num("lr", 1e-4, 0, 10);
    o.schedule = f.choice("lr-schedule", "constant", {"constant", "cosine"}) == "cosine" ? Schedule::Cosine : Schedule::Constant;
    o.warmup = (int)f.integer("warmup", 0, 0, 1 << 30);
    o.weight_decay = f.num("weight-decay", 0, 0, 1e3);
    o.grad_clip = f.num("grad-clip", 1.0, 0, 1e12);
    o.adam_beta1 = f.num("adam-beta1", 0.9, 0, 0.999999);
    o.adam_beta2 = f.num("adam-beta2", 0.999, 0, 0.999999999);
    o.adam_eps = f.num("adam-eps", 1e-8, 0, 1);
    o.seed = (uint64_t)f.integer("seed", 0, 0, (1LL << 62));
    o.shuffle = f.integer("shuffle", 1, 0, 1) == 1;
    o.eval_data_path = f.str("eval-data");
    o.eval_every = (int)f.integer("eval-every", 0, 0, 1 << 30);
    o.task = task_flag(f);
    o.tokenizer = f.str("tokenizer");
    o.quiet = f.on("quiet");
    o.checkpoint_every = (int)f.integer("checkpoint-every", 0, 0, 1 << 30);
    o.alpha = f.num("alpha", 1.0, 0, 1);
    o.reward = f.str("reward");
    o.samples_per_prompt = (int)f.integer("samples-per-prompt", 1, 1, 1 << 16);
    if (sft && (f.has("alpha") || f.has("reward") || f.has("samples-per-prompt")))
        GKD_FAIL("gkd sft: --alpha, --reward and --samples-per-prompt belong to gkd distill");
    if (o.alpha < 1.0 && o.reward.empty())
        GKD_FAIL("gkd distill: --alpha %g mixes in a reward: give --reward NAME", o.alpha);
    if (!o.reward.empty()) {
        find_reward(o.reward);
        if (o.lambda != 1.0 || o.seq_kd)
            GKD_FAIL("gkd distill: rewards score the student's own samples: use --lambda 1, without --seq-kd");
        if (o.temperature == 0)
            GKD_FAIL("gkd distill: RL needs a sampling --temperature above 0");
    }
    o.device = resolve_device(f);
    o.tf32 = f.on("tf32");
    if (sft) {
        o.student_path = f.required("model");
        if (o.seq_kd) o.teacher_path = f.required("teacher");
        else if (f.has("teacher")) GKD_FAIL("gkd sft: --teacher is only used with --seq-kd (SFT on teacher samples)");
    } else {
        o.teacher_path = f.required("teacher");
        o.student_path = f.required("student");
    }
    return o;
}

static void refuse_existing_run(const std::string& dir, bool overwrite);

static int cmd_train(int argc, char** argv, bool sft) {
    std::vector<FlagSpec> specs = TRAIN_FLAGS;
    if (sft) {
        specs.push_back({"model", true, "the model to fine-tune (llm.c checkpoint)"});
        specs.push_back({"teacher", true, "with --seq-kd: SeqKD, SFT on this teacher's samples"});
    } else {
        specs.push_back({"teacher", true, "frozen teacher checkpoint"});
        specs.push_back({"student", true, "student checkpoint to start from"});
    }
    const char* cmd = sft ? "sft" : "distill";
    if (wants_help(argc, argv)) {
        print_help(sft ? "gkd sft --model F --data F.jsonl --out DIR [flags]: cross-entropy on completions"
                       : "gkd distill --teacher F --student F --data F.jsonl --out DIR [flags]: GKD", specs);
        return 0;
    }
    Flags f(cmd, argc, argv, specs);
    Trainer tr;
    int start_step = 0;
    if (f.has("resume")) {
        // the saved configuration is the run's; only the display may change
        for (auto& [name, value] : f.values)
            if (name != "resume" && name != "device")
                GKD_FAIL("gkd %s: --resume continues the saved run as it was; --%s cannot be given with it", cmd, name.c_str());
        for (auto& name : f.switches)
            if (name != "quiet" && name != "tf32") GKD_FAIL("gkd %s: --resume continues the saved run as it was; --%s cannot be given with it", cmd, name.c_str());
        std::string dir = f.str("resume"), path = dir + "/checkpoint.bin";
        if (!is_file(path))
            GKD_FAIL("%s: no checkpoint to resume from (a run saves one with --checkpoint-every N, or when interrupted)", path.c_str());
        tr.opt.out_dir = dir;
        tr.opt.quiet = f.on("quiet");
        start_step = load_training_state(tr, path);
        tr.opt.device = resolve_device(f);
        tr.opt.tf32 = f.on("tf32");
        if (tr.opt.sft != sft)
            GKD_FAIL("%s: this is a %s run; resume it with gkd %s --resume %s", path.c_str(), tr.opt.sft ? "sft" : "distill",
                     tr.opt.sft ? "sft" : "distill", dir.c_str());
        load_inputs(tr);
        if (!tr.opt.quiet) fprintf(stderr, "gkd %s: resuming %s at step %d of %d\n", cmd, dir.c_str(), start_step, tr.opt.steps);
    } else {
        TrainOptions o = parse_train_options(f, sft);
        refuse_existing_run(o.out_dir, f.on("overwrite"));
        load_trainer(tr, o);
        if (!o.quiet)
            fprintf(stderr, "gkd %s: student %s (%zu parameters), %zu examples, %d steps of %d, on %s\n", cmd,
                    o.student_path.c_str(), tr.student.num_parameters, tr.data.examples.size(), tr.opt.steps, o.batch,
                    o.device == "cuda" ? (o.tf32 ? "the GPU (TF32 matmuls)" : "the GPU (fp32)")
                                       : strf("the CPU, %d threads", omp_get_max_threads()).c_str());
    }
    place_trainer(tr);
    TrainOutcome out = train(tr, start_step);
    return out.stopped_by_signal ? 128 + out.stopped_by_signal : 0;
}

// No run silently replaces another: a non-empty --out needs --overwrite (or --resume).
static void refuse_existing_run(const std::string& dir, bool overwrite) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;  // absent: it will be created
    bool empty = true;
    while (dirent* e = readdir(d))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { empty = false; break; }
    closedir(d);
    if (empty) return;
    if (!overwrite)
        GKD_FAIL("%s: the folder exists and is not empty; give --overwrite to replace its run, or --resume %s to "
                 "continue it", dir.c_str(), dir.c_str());
    // a stale checkpoint must not be resumed into the new run
    for (const char* name : {"checkpoint.bin", "metrics.jsonl", "model.bin"}) unlink((dir + "/" + name).c_str());
}

static int cmd_init(int argc, char** argv) {
    std::vector<FlagSpec> specs = {
        {"layers", true, "L"}, {"channels", true, "C"}, {"heads", true, "NH (divides C)"},
        {"context", true, "maxT, the longest sequence"}, {"vocab", true, "byte (V = 257) or a number"},
        {"seed", true, "(0)"}, {"out", true, "checkpoint to write"}};
    if (wants_help(argc, argv)) { print_help("gkd init: write a randomly initialised GPT-2 checkpoint", specs); return 0; }
    Flags f("init", argc, argv, specs);
    GPTConfig c;
    c.num_layers = (int)f.integer("layers", 0, 1, 1024);
    if (!f.has("layers")) f.required("layers");
    c.channels = (int)f.integer("channels", 0, 1, 65536);
    if (!f.has("channels")) f.required("channels");
    c.num_heads = (int)f.integer("heads", 0, 1, 65536);
    if (!f.has("heads")) f.required("heads");
    c.max_seq_len = (int)f.integer("context", 0, 1, 1 << 20);
    if (!f.has("context")) f.required("context");
    std::string vocab = f.str("vocab", "byte");
    c.vocab_size = vocab == "byte" ? 257 : (int)f.integer("vocab", 0, 2, 1 << 24);
    c.padded_vocab_size = pad_vocab(c.vocab_size);
    if (c.channels % c.num_heads != 0)
        GKD_FAIL("gkd init: --heads %d does not divide --channels %d", c.num_heads, c.channels);
    validate_config(c, "gkd init");
    std::string out = f.required("out");
    GPT<float> m;
    gpt_build(m, c);
    gpt_init_random(m, (uint64_t)f.integer("seed", 0, 0, 1LL << 62));
    gpt_save(m, out);
    fprintf(stderr, "wrote %s: L=%d C=%d NH=%d maxT=%d V=%d Vp=%d, %zu parameters\n", out.c_str(), c.num_layers,
            c.channels, c.num_heads, c.max_seq_len, c.vocab_size, c.padded_vocab_size, m.num_parameters);
    return 0;
}

// gkd convert IN OUT [--bf16]: any checkpoint gkd reads -> llm.c's .bin.
static int cmd_convert(int argc, char** argv) {
    const char* help =
        "gkd convert IN OUT [--bf16]: write a checkpoint in llm.c's format\n"
        "  IN     a Hugging Face GPT-2 model.safetensors (config.json beside it is read), a folder holding\n"
        "         one, or an llm.c .bin (v3 fp32 or v5 bf16)\n"
        "  OUT    the .bin to write: version 3 (fp32), or version 5 with --bf16; or OUT.safetensors: a Hugging\n"
        "         Face GPT-2 checkpoint (F32) with config.json written beside it\n"
        "  --bf16 store the parameters as bf16 (round to nearest even), as llm.c's *_bf16.bin files\n";
    std::vector<std::string> positional;
    bool bf16 = false;
    for (int i = 0; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") { fputs(help, stdout); return 0; }
        if (a == "--bf16") bf16 = true;
        else if (a.rfind("--", 0) == 0) GKD_FAIL("gkd convert: unknown flag %s (see gkd convert --help)", a.c_str());
        else positional.push_back(a);
    }
    if (positional.size() != 2)
        GKD_FAIL("gkd convert: needs exactly two arguments, IN and OUT (see gkd convert --help)");
    GPT<float> m;
    gpt_load_any(m, positional[0]);
    const GPTConfig& c = m.config;
    bool to_safetensors = ends_with(positional[1], ".safetensors");
    if (to_safetensors && bf16) GKD_FAIL("gkd convert: --bf16 is for llm.c .bin files; safetensors are written as F32");
    if (to_safetensors) {
        gpt_save_safetensors(m, positional[1]);
        fprintf(stderr, "wrote %s and config.json beside it (Hugging Face GPT-2, F32): L=%d C=%d NH=%d maxT=%d V=%d, "
                "%zu parameters\n", positional[1].c_str(), c.num_layers, c.channels, c.num_heads, c.max_seq_len,
                c.vocab_size, m.num_parameters);
        return 0;
    }
    gpt_save(m, positional[1], bf16);
    fprintf(stderr, "wrote %s (llm.c version %d, %s): L=%d C=%d NH=%d maxT=%d V=%d Vp=%d, %zu parameters\n",
            positional[1].c_str(), bf16 ? 5 : 3, bf16 ? "bf16" : "fp32", c.num_layers, c.channels, c.num_heads,
            c.max_seq_len, c.vocab_size, c.padded_vocab_size, m.num_parameters);
    return 0;
}

// Text for JSON output: invalid UTF-8 (a byte-level model can emit any byte) becomes U+FFFD.
static std::string json_dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

static int cmd_sample(int argc, char** argv) {
    std::vector<FlagSpec> specs = {
        {"model", true, "checkpoint"}, {"prompt", true, "prompt text"}, {"data", true, "or: prompts from JSONL"},
        {"num-samples", true, "samples per prompt (1)"}, {"max-new-tokens", true, "(64)"},
        {"temperature", true, "0 = greedy (1.0)"}, {"seed", true, "(0)"}, {"batch", true, "rows decoded together (16)"},
        {"tokenizer", true, TOKENIZER_HELP}, {"device", true, "auto | cpu | cuda"}};
    if (wants_help(argc, argv)) { print_help("gkd sample: one JSON object per sample on stdout", specs); return 0; }
    Flags f("sample", argc, argv, specs);
    std::string model_path = f.required("model");
    int num_samples = (int)f.integer("num-samples", 1, 1, 1 << 20);
    int max_new = (int)f.integer("max-new-tokens", 64, 1, 1 << 20);
    double temperature = f.num("temperature", 1.0, 0, 1e6);
    uint64_t seed = (uint64_t)f.integer("seed", 0, 0, 1LL << 62);
    int batch = (int)f.integer("batch", 16, 1, 1 << 16);
    const std::string device = resolve_device(f);
    if (f.has("prompt") == f.has("data")) GKD_FAIL("gkd sample: give exactly one of --prompt TEXT or --data F.jsonl");
    GPT<float> m;
    gpt_load_any(m, model_path);
    auto tok = load_tokenizer(f.str("tokenizer"), m.config.vocab_size, model_path);
    Dataset d;
    if (f.has("prompt")) {
        d.examples.push_back(parse_example(json({{"prompt", f.str("prompt")}}).dump(), *tok, m.config.max_seq_len,
                                           false, "--prompt"));
    } else {
        d = load_jsonl(f.str("data"), *tok, m.config.max_seq_len, false);
    }
    std::vector<std::pair<size_t, int>> rows;  // (example, sample)
    for (size_t e = 0; e < d.examples.size(); e++)
        for (int s = 0; s < num_samples; s++) rows.push_back({e, s});
    Generator gen;
#ifdef __CUDACC__
    std::unique_ptr<GpuModel> gm;
    GpuGenerator gg;
    if (device == "cuda") {
        gpu_init(false);
        gm = std::make_unique<GpuModel>();
        gpu_upload(*gm, m);
    }
#endif
    for (size_t first = 0; first < rows.size(); first += batch) {
        size_t last = std::min(rows.size(), first + batch);
        std::vector<const std::vector<int>*> prompts;
        std::vector<int> budgets;
        std::vector<uint64_t> ids;
        for (size_t r = first; r < last; r++) {
            const Example& ex = d.examples[rows[r].first];
            prompts.push_back(&ex.prompt);
            budgets.push_back(std::min(max_new, m.config.max_seq_len - (int)ex.prompt.size()));
            ids.push_back(r);
        }
        std::vector<std::vector<int>> outs;
#ifdef __CUDACC__
        if (gm) outs = gpu_generate(*gm, gg, prompts, budgets, temperature, tok->eos_id(), seed, 0, ids);
        else
#endif
            outs = generate(m, gen, prompts, budgets, temperature, tok->eos_id(), seed, 0, ids);
        for (size_t i = 0; i < outs.size(); i++) {
            std::vector<int> text_ids = outs[i];
            if (!text_ids.empty() && text_ids.back() == tok->eos_id()) text_ids.pop_back();
            json j = {{"prompt", tok->decode(*prompts[i])}, {"completion", tok->decode(text_ids)}, {"ids", outs[i]}};
            printf("%s\n", json_dump(j).c_str());
        }
        fflush(stdout);
    }
    return 0;
}

static int cmd_eval(int argc, char** argv) {
    std::vector<FlagSpec> specs = {
        {"model", true, "checkpoint to evaluate"}, {"data", true, "JSONL with completions"},
        {"teacher", true, "also report the mean divergence to this teacher"},
        {"beta", true, "divergence: 0 forward KL, 1 reverse KL, else JSD(beta) (0.5)"},
        {"loss-temperature", true, "tau of the divergence (1.0)"}, {"batch", true, "(16)"},
        {"max-new-tokens", true, "longest generated completion (64)"},
        {"task", true, "arithmetic | words | gsm8k: also score completions by the task (accuracy, similarity)"},
        {"sample-temperature", true, "with --task: also score one sample per example at this temperature"},
        {"seed", true, "for the sampled completions (0)"},
        {"tokenizer", true, TOKENIZER_HELP}, {"device", true, "auto | cpu | cuda"}};
    if (wants_help(argc, argv)) {
        print_help("gkd eval: mean token NLL, mean divergence to a teacher, greedy exact match; one JSON object", specs);
        return 0;
    }
    Flags f("eval", argc, argv, specs);
    std::string model_path = f.required("model"), data_path = f.required("data");
    EvalOptions eo;
    eo.beta = f.num("beta", 0.5, 0, 1);
    eo.tau = f.num("loss-temperature", 1.0, 1e-6, 1e6);
    eo.batch = (int)f.integer("batch", 16, 1, 1 << 16);
    eo.max_new_tokens = (int)f.integer("max-new-tokens", 64, 1, 1 << 20);
    eo.task = task_flag(f);
    eo.sample_temperature = f.num("sample-temperature", 0, 0, 1e6);
    eo.seed = (uint64_t)f.integer("seed", 0, 0, 1LL << 62);
    if (eo.sample_temperature > 0 && eo.task.empty())
        GKD_FAIL("gkd eval: --sample-temperature scores samples by a task: give --task too");
    const std::string device = resolve_device(f);
    GPT<float> m, t;
    gpt_load_any(m, model_path);
    int context = m.config.max_seq_len;
    if (f.has("teacher")) {
        gpt_load_any(t, f.str("teacher"));
        check_same_vocabulary(t, f.str("teacher"), m, model_path, "model");
        context = std::min(context, t.config.max_seq_len);
    }
    std::string tok_source;
    auto tok = load_tokenizer(f.str("tokenizer"), m.config.vocab_size, model_path, &tok_source);
    if (f.has("teacher")) check_teacher_tokenizer(*tok, tok_source, f.str("teacher"));
    Dataset d = load_jsonl(data_path, *tok, context, true);
    EvalResult r;
#ifdef __CUDACC__
    if (device == "cuda") {
        gpu_init(false);
        GpuModel gm, gt;
        gpu_upload(gm, m);
        if (f.has("teacher")) gpu_upload(gt, t);
        GpuEval ge;
        ge.model = &gm;
        ge.teacher = f.has("teacher") ? &gt : nullptr;
        r = evaluate(m, f.has("teacher") ? &t : nullptr, d, *tok, eo, &ge);
    } else
#endif
        r = evaluate(m, f.has("teacher") ? &t : nullptr, d, *tok, eo);
    printf("%s\n", r.to_json().dump().c_str());
    return 0;
}

// A JSON array of token ids, each in [0, vocab).
static std::vector<int> parse_id_array(const std::string& text, int vocab, const std::string& where) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        GKD_FAIL("%s: malformed JSON: %s", where.c_str(), dataset_detail::short_json_error(e).c_str());
    }
    return dataset_detail::read_ids(j, "ids", vocab, where);
}

static int cmd_tokenize(int argc, char** argv) {
    std::vector<FlagSpec> specs = {
        {"tokenizer", true, "byte (default), tokenizer.json, gpt2_tokenizer.bin, or a folder with vocab.json + "
                            "merges.txt or encoder.json + vocab.bpe"},
        {"special", true, "1: \"<|endoftext|>\" in the text is the EOS token; 0: it is plain text "
                          "(default: 1 for GPT-2 BPE, as Hugging Face; 0 for byte)"},
        {"decode", false, "read a JSON array of ids, print the text"}};
    if (wants_help(argc, argv)) { print_help("gkd tokenize: text on stdin -> JSON array of ids on stdout", specs); return 0; }
    Flags f("tokenize", argc, argv, specs);
    auto tok = load_tokenizer(f.str("tokenizer", "byte"), 0);
    bool special = f.integer("special", tok->special_by_default() ? 1 : 0, 0, 1) == 1;
    if (f.on("decode") && f.has("special")) GKD_FAIL("gkd tokenize: --special applies to encoding, not --decode");
    std::string input;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) input.append(buf, n);
    if (!f.on("decode")) {
        printf("%s\n", json(tok->encode(input, special)).dump().c_str());
        return 0;
    }
    std::vector<int> ids = parse_id_array(input, tok->vocab_size(), "<stdin>");
    std::string text = tok->decode(ids);
    fwrite(text.data(), 1, text.size(), stdout);
    return 0;
}

// Writes a task's splits as JSONL: DIR/train.jsonl, DIR/validation.jsonl, DIR/test.jsonl.
static void write_task_splits(const std::string& task, uint64_t seed, const TaskSizes& sizes, const std::string& dir) {
    TaskSplits s = generate_task(task, seed, sizes);
    make_dirs(dir);
    auto write = [&](const std::vector<TaskExample>& v, const char* name) {
        std::string text;
        for (auto& e : v) text += nlohmann::ordered_json({{"prompt", e.prompt}, {"completion", e.completion}}).dump() + "\n";
        write_file_atomic(dir + "/" + name + ".jsonl", text);
    };
    write(s.train, "train");
    write(s.validation, "validation");
    write(s.test, "test");
}

static int cmd_data(int argc, char** argv) {
    std::vector<FlagSpec> specs = {
        {"task", true, "arithmetic | words: generate this built-in task's splits into the folder --out"},
        {"seed", true, "(0)"}, {"out", true, "--task: folder for the three splits; --convert: the JSONL to write"},
        {"train", true, "training examples (20000; words: at most 10000 in all)"},
        {"validation", true, "(200)"}, {"test", true, "(500)"},
        {"convert", true, "gsm8k | instruction: convert the JSONL --in (GSM8K question/answer; Alpaca or Dolly "
                          "instruction/input/output) to prompt/completion lines"},
        {"in", true, "with --convert: the dataset's JSONL"}};
    if (wants_help(argc, argv)) {
        print_help("gkd data: generate a built-in task's train/validation/test JSONL (disjoint splits), or convert a "
                   "public dataset to gkd's JSONL", specs);
        return 0;
    }
    Flags f("data", argc, argv, specs);
    if (f.has("task") == f.has("convert")) GKD_FAIL("gkd data: give exactly one of --task NAME or --convert FORMAT");
    if (f.has("convert")) {
        for (const char* unused : {"seed", "train", "validation", "test"})
            if (f.has(unused)) GKD_FAIL("gkd data: --%s is for --task, not --convert", unused);
        std::string format = f.choice("convert", "", {"gsm8k", "instruction"});
        std::string in = f.required("in"), out = f.required("out");
        size_t n = 0;
        std::string text = convert_dataset(format, in, &n);
        write_file_atomic(out, text);
        fprintf(stderr, "wrote %s: %zu %s examples from %s\n", out.c_str(), n, format.c_str(), in.c_str());
        return 0;
    }
    if (f.has("in")) GKD_FAIL("gkd data: --in is for --convert");
    std::string task = f.str("task");
    if (!is_task(task)) GKD_FAIL("gkd data: --task '%s' must be arithmetic or words (built-in tasks)", task.c_str());
    TaskSizes sizes;
    sizes.train = (int)f.integer("train", task == "words" ? 9000 : 20000, 1, 1 << 24);
    sizes.validation = (int)f.integer("validation", 200, 1, 1 << 24);
    sizes.test = (int)f.integer("test", 500, 1, 1 << 24);
    std::string out = f.required("out");
    write_task_splits(task, (uint64_t)f.integer("seed", 0, 0, 1LL << 62), sizes, out);
    fprintf(stderr, "wrote %s/{train,validation,test}.jsonl: %d + %d + %d %s examples\n", out.c_str(), sizes.train,
            sizes.validation, sizes.test, task.c_str());
    return 0;
}

// ----------------------------------------------------------------------------
// gkd bench: one training step, phase by phase, on random models of a given shape

// A tokenizer that only knows its size and EOS (V - 1): what a benchmark step needs.
struct SizeOnlyTokenizer : Tokenizer {
    int V;
    explicit SizeOnlyTokenizer(int v) : V(v) {}
    std::string name() const override { return "size-only"; }
    int vocab_size() const override { return V; }
    int eos_id() const override { return V - 1; }
    bool special_by_default() const override { return false; }
    using Tokenizer::encode;
    std::vector<int> encode(const std::string&, bool) const override { GKD_FAIL("bench: no text tokenizer"); }
    std::string decode(const std::vector<int>&) const override { GKD_FAIL("bench: no text tokenizer"); }
};

// Floating-point operations of a forward pass over `tokens` positions that attend to
// `attended` earlier positions in all (sum over positions of their position + 1), with
// `head_rows` rows through the LM head: the matmuls (2 per multiply-add) and attention's
// two (t+1)-long products per head dimension. A backward pass is twice this.
static double forward_flops(const GPTConfig& c, double tokens, double attended, double head_rows) {
    double C = c.channels, L = c.num_layers;
    return 2.0 * tokens * 12 * L * C * C + 2.0 * head_rows * C * c.vocab_size + 4.0 * L * C * attended;
}

static GPT<float> bench_model(const std::string& shape, int V, int context, uint64_t seed, const char* flag) {
    int L = 0, C = 0, NH = 0;
    char extra;
    if (sscanf(shape.c_str(), "%d,%d,%d%c", &L, &C, &NH, &extra) != 3)
        GKD_FAIL("gkd bench: --%s '%s' must be LAYERS,CHANNELS,HEADS (e.g. 2,128,4)", flag, shape.c_str());
    GPTConfig c;
    c.num_layers = L; c.channels = C; c.num_heads = NH; c.max_seq_len = context; c.vocab_size = V;
    c.padded_vocab_size = pad_vocab(V);
    validate_config(c, strf("gkd bench --%s", flag));
    GPT<float> m;
    gpt_build(m, c);
    gpt_init_random(m, seed);
    return m;
}

// A trainer of random models on B random prompts of P tokens (and, for SFT, completions
// of K tokens), with no EOS in them: on-policy GKD (lambda 1) or SFT, lr 1e-4, file order.
static void benchmark_trainer(Trainer& tr, GPT<float> student, GPT<float> teacher, bool sft, int B, int P, int K,
                              double beta, int steps) {
    const int V = student.config.vocab_size;
    tr.student = std::move(student);
    tr.has_teacher = !sft;
    if (!sft) tr.teacher = std::move(teacher);
    tr.tok = std::make_unique<SizeOnlyTokenizer>(V);
    TrainOptions& o = tr.opt;
    o.sft = sft;
    o.lambda = 1;
    o.beta = beta;
    o.batch = B;
    o.max_new_tokens = K;
    o.steps = steps;
    o.lr = 1e-4;
    o.shuffle = 0;
    Rng rng(7);
    for (int i = 0; i < B; i++) {
        Example e;
        for (int t = 0; t < P; t++) e.prompt.push_back((int)rng.below(V - 1));
        if (sft) for (int t = 0; t < K; t++) e.completion.push_back((int)rng.below(V - 1));
        e.has_completion = sft;
        tr.data.examples.push_back(e);
    }
}

// sgemm at (M, K) x (K, N), through the matmul the model uses: the machine's ceiling.
static double matmul_gflops(int M, int K, int N) {
    std::vector<float> a((size_t)M * K), w((size_t)N * K), out((size_t)M * N);
    Rng rng(1);
    for (auto& x : a) x = (float)rng.normal();
    for (auto& x : w) x = (float)rng.normal();
    matmul_forward(out.data(), a.data(), w.data(), (const float*)nullptr, M, K, N, N);  // warm-up
    double best = 0;
    for (int window = 0; window < 3; window++) {  // the best of three ~0.1 s windows: a ceiling
        int reps = 0;
        double t = now_seconds(), elapsed = 0;
        do {
            matmul_forward(out.data(), a.data(), w.data(), (const float*)nullptr, M, K, N, N);
            elapsed = now_seconds() - t;
        } while (++reps < 2 || elapsed < 0.1);
        best = std::max(best, 2.0 * M * K * N * reps / elapsed / 1e9);
    }
    return best;
}

// One line of the bench table: a phase, its median time, and the work it did.
struct BenchRow {
    const char* name;
    const char* key;
    double ms, tokens, flops;
};

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? NAN : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

#ifdef __CUDACC__
// cuBLAS SGEMM (M, K) x (K, N) in the run's precision mode, timed with CUDA events: the
// card's matmul ceiling as this build sees it, in TFLOP/s (the best of three windows).
static double gpu_matmul_tflops(int M, int K, int N) {
    DeviceBuffer<float> a, w, out;
    std::vector<float> host((size_t)std::max(M, N) * K);
    Rng rng(1);
    for (auto& x : host) x = (float)rng.normal();
    a.upload(host.data(), (size_t)M * K);
    w.upload(host.data(), (size_t)N * K);
    out.ensure((size_t)M * N);
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    gpu::matmul_forward(out.ptr, a.ptr, w.ptr, nullptr, M, K, N, N);  // warm-up
    double best = 0;
    for (int window = 0; window < 3; window++) {
        const int reps = 20;
        CUDA_CHECK(cudaEventRecord(start));
        for (int r = 0; r < reps; r++) gpu::matmul_forward(out.ptr, a.ptr, w.ptr, nullptr, M, K, N, N);
        CUDA_CHECK(cudaEventRecord(stop));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        best = std::max(best, 2.0 * M * K * N * reps / (ms * 1e-3) / 1e12);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return best;
}

// gkd bench --device cuda: per phase ms, tokens/s, TFLOP/s and MFU against the card's
// peak (fp32 CUDA cores, or TF32 tensor cores with --tf32), and the step's device memory.
static int print_gpu_bench(bool as_json, bool sft, const Trainer& tr, const std::vector<BenchRow>& rows,
                           double step_flops, double step_ms, int B, int P, int K, int V, int steps, int warmup, int T) {
    const GpuContext& g = gpu_context();
    const double peak = gpu_peak_flops(g.tf32);
    const GPTConfig& sc = tr.student.config;
    const GPTConfig& tc = sft ? sc : tr.teacher.config;
    // the steps' memory, read before the ceiling measurements allocate their own
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const double peak_mb = g.bytes_peak / 1048576.0, used_mb = (total_bytes - free_bytes) / 1048576.0;
    const double at_shape = gpu_matmul_tflops(B * T, tc.channels, 4 * tc.channels);
    const double big = gpu_matmul_tflops(4096, 4096, 4096);
    const char* precision = g.tf32 ? "TF32 tensor cores" : "fp32 (TF32 off)";
    if (as_json) {
        json j = {{"mode", sft ? "sft" : "on-policy gkd"}, {"device", g.prop.name}, {"precision", precision},
                  {"batch", B}, {"prompt_tokens", P}, {"new_tokens", K}, {"vocab", V},
                  {"student_parameters", tr.student.num_parameters},
                  {"teacher_parameters", sft ? 0 : tr.teacher.num_parameters}, {"peak_tflops", peak / 1e12},
                  {"sgemm_tflops_4096", big}, {"sgemm_tflops_step_shape", at_shape},
                  {"peak_device_memory_mb", peak_mb}, {"device_memory_in_use_mb", used_mb}};
        for (auto& r : rows) {
            j[std::string(r.key) + "_ms"] = r.ms;
            if (r.flops > 0) {
                j[std::string(r.key) + "_tflops"] = r.flops / (r.ms * 1e9);
                j[std::string(r.key) + "_mfu"] = r.flops / (r.ms * 1e-3) / peak;
            }
        }
        printf("%s\n", j.dump().c_str());
        return 0;
    }
    printf("gkd bench: %s step on %s, %s; student L=%d C=%d NH=%d (%.2fM parameters)",
           sft ? "SFT" : "on-policy GKD (lambda 1)", g.prop.name, precision, sc.num_layers, sc.channels, sc.num_heads,
           tr.student.num_parameters / 1e6);
    if (!sft)
        printf(", teacher L=%d C=%d NH=%d (%.2fM)", tc.num_layers, tc.channels, tc.num_heads, tr.teacher.num_parameters / 1e6);
    printf("\n  V=%d, B=%d, %d prompt + %d %s tokens; median of %d steps after %d warm-up\n\n", V, B, P, K,
           sft ? "completion" : "new", steps, warmup);
    printf("| phase | ms | tokens/s | TFLOP/s | MFU |\n|---|---:|---:|---:|---:|\n");
    for (auto& r : rows)
        printf("| %s | %.2f | %s | %s | %s |\n", r.name, r.ms,
               r.tokens > 0 ? strf("%.0f", r.tokens / r.ms * 1000).c_str() : "-",
               r.flops > 0 ? strf("%.2f", r.flops / (r.ms * 1e9)).c_str() : "-",
               r.flops > 0 ? strf("%.1f%%", 100 * r.flops / (r.ms * 1e-3) / peak).c_str() : "-");
    printf("\npeak device memory %.0f MB allocated by gkd (%.0f MB in use on the device with the CUDA context and "
           "cuBLAS); card peak %.1f TFLOP/s (%s, %d SMs at %.2f GHz); cuBLAS SGEMM measured %.1f TFLOP/s at 4096^3, "
           "%.1f at the step's shape (%d x %d x %d); the step reaches %.1f%% of the peak\n",
           peak_mb, used_mb, peak / 1e12, precision, g.prop.multiProcessorCount, g.clock_hz / 1e9, big, at_shape,
           B * T, tc.channels, 4 * tc.channels, 100 * step_flops / (step_ms * 1e-3) / peak);
    return 0;
}
#endif

static int cmd_bench(int argc, char** argv) {
    std::vector<FlagSpec> specs = {
        {"student", true, "LAYERS,CHANNELS,HEADS of the student (2,128,4)"},
        {"teacher", true, "LAYERS,CHANNELS,HEADS of the teacher (4,256,4)"},
        {"vocab", true, "byte (V = 257) or a number, e.g. 50257 (byte)"},
        {"context", true, "maxT of both models (128)"},
        {"batch", true, "B (32)"}, {"prompt-tokens", true, "tokens per prompt (32)"},
        {"new-tokens", true, "sampled tokens per row; with --sft, completion tokens (64)"},
        {"beta", true, "the divergence (0.5)"},
        {"sft", false, "time an SFT step of the student instead (no teacher, no sampling)"},
        {"steps", true, "timed steps; the table gives medians (5)"}, {"warmup", true, "untimed steps first (1)"},
        {"json", false, "print one JSON object instead of the table"},
        {"device", true, "auto | cpu | cuda"},
        {"tf32", false, "cuda: matmuls on TF32 tensor cores (MFU then against the TF32 peak)"}};
    if (wants_help(argc, argv)) {
        print_help("gkd bench: time one training step by phase on random models (defaults: the CPU reference "
                   "configuration); prints ms, tokens/s, GFLOP/s, peak RSS and the machine's sgemm ceiling", specs);
        return 0;
    }
    Flags f("bench", argc, argv, specs);
    const std::string device = resolve_device(f);
    std::string vocab = f.str("vocab", "byte");
    int V = vocab == "byte" ? 257 : (int)f.integer("vocab", 0, 2, 1 << 24);
    int context = (int)f.integer("context", 128, 2, 1 << 20);
    int B = (int)f.integer("batch", 32, 1, 1 << 16);
    int P = (int)f.integer("prompt-tokens", 32, 1, 1 << 20);
    int K = (int)f.integer("new-tokens", 64, 1, 1 << 20);
    int steps = (int)f.integer("steps", 5, 1, 100000), warmup = (int)f.integer("warmup", 1, 0, 100000);
    bool sft = f.on("sft");
    if (P + K > context) GKD_FAIL("gkd bench: --prompt-tokens %d + --new-tokens %d exceed --context %d", P, K, context);

    Trainer tr;
    GPT<float> student = bench_model(f.str("student", "2,128,4"), V, context, 1, "student"), teacher;
    if (!sft) teacher = bench_model(f.str("teacher", "4,256,4"), V, context, 2, "teacher");
    benchmark_trainer(tr, std::move(student), std::move(teacher), sft, B, P, K, f.num("beta", 0.5, 0, 1), warmup + steps);
    tr.opt.device = device;
    tr.opt.tf32 = f.on("tf32");
    place_trainer(tr);
    std::vector<StepStats> stats;
    for (int step = 0; step < warmup + steps; step++) {
        StepStats st = gkd_step(tr, step);
        if (step >= warmup) stats.push_back(st);
    }
    double rss = peak_rss_mb();
    auto med = [&](double StepStats::*field) {
        std::vector<double> v;
        for (auto& s : stats) v.push_back(s.*field);
        return median(v);
    };
    // work per phase; a row is P + K tokens long (sampling with random weights may stop a
    // row early at EOS: the targets count what was generated)
    const GPTConfig& sc = tr.student.config;
    double targets = 0;
    for (auto& s : stats) targets += s.tokens;
    targets /= stats.size();                           // completion tokens (incl. EOS) per step
    double T = P + (sft ? K + 1 : targets / B) - 1;    // mean input length of a row
    double rows_tokens = B * T, attended = B * T * (T + 1) / 2;
    double fwd = forward_flops(sc, rows_tokens, attended, rows_tokens);
    double sample_flops = 0, teacher_flops = 0;
    if (!sft) {
        double gen = targets / B;  // generated tokens per row
        sample_flops = forward_flops(sc, B * (P + gen), B * (P + gen) * (P + gen + 1) / 2, B * (gen + 1));
        teacher_flops = forward_flops(tr.teacher.config, rows_tokens, attended, rows_tokens);
    }
    std::vector<BenchRow> rows;
    if (!sft) {
        rows.push_back({"sample (student, KV cache)", "sample", med(&StepStats::sample_ms), targets, sample_flops});
        rows.push_back({"teacher forward", "teacher", med(&StepStats::teacher_ms), rows_tokens, teacher_flops});
    }
    rows.push_back({"student forward", "forward", med(&StepStats::forward_ms), rows_tokens, fwd});
    rows.push_back({sft ? "loss (cross-entropy)" : "loss (divergence)", "loss", med(&StepStats::loss_ms), targets, 0});
    rows.push_back({"student backward + grad norm", "backward", med(&StepStats::backward_ms), rows_tokens, 2 * fwd});
    rows.push_back({"AdamW (+ clipping)", "update", med(&StepStats::update_ms), 0, 0});
    double step_flops = sample_flops + teacher_flops + 3 * fwd;
    rows.push_back({"step", "step", med(&StepStats::ms), targets, step_flops});
    int threads = omp_get_max_threads();
    const GPTConfig& tc = sft ? sc : tr.teacher.config;
#ifdef __CUDACC__
    if (tr.gpu) return print_gpu_bench(f.on("json"), sft, tr, rows, step_flops, med(&StepStats::ms), B, P, K, V, steps,
                                       warmup, (int)T);
#endif
    double at_shape = matmul_gflops(B * (int)T, tc.channels, 4 * tc.channels);
    double ceiling = std::max(matmul_gflops(1024, 1024, 1024), at_shape);
#ifdef GKD_BLAS
    const char* matmuls = "OpenBLAS";
#else
    const char* matmuls = "gkd's OpenMP loops (no BLAS)";
#endif
    if (f.on("json")) {
        json j = {{"mode", sft ? "sft" : "on-policy gkd"}, {"threads", threads}, {"batch", B}, {"prompt_tokens", P},
                  {"new_tokens", K}, {"vocab", V}, {"student_parameters", tr.student.num_parameters},
                  {"teacher_parameters", sft ? 0 : tr.teacher.num_parameters}, {"peak_rss_mb", rss},
                  {"sgemm_gflops", ceiling}, {"sgemm_at_step_shape_gflops", at_shape}, {"matmuls", matmuls},
                  {"target_tokens", targets}};
        for (auto& r : rows) {
            j[std::string(r.key) + "_ms"] = r.ms;
            if (r.flops > 0) j[std::string(r.key) + "_gflops"] = r.flops / (r.ms * 1e6);
        }
        printf("%s\n", j.dump().c_str());
        return 0;
    }
    printf("gkd bench: %s step; student L=%d C=%d NH=%d (%.2fM parameters)", sft ? "SFT" : "on-policy GKD (lambda 1)",
           sc.num_layers, sc.channels, sc.num_heads, tr.student.num_parameters / 1e6);
    if (!sft)
        printf(", teacher L=%d C=%d NH=%d (%.2fM)", tc.num_layers, tc.channels, tc.num_heads,
               tr.teacher.num_parameters / 1e6);
    printf("\n  V=%d, B=%d, %d prompt + %d %s tokens, %d threads, matmuls: %s; median of %d steps after %d warm-up\n\n",
           V, B, P, K, sft ? "completion" : "new", threads, matmuls, steps, warmup);
    printf("| phase | ms | tokens/s | GFLOP/s |\n|---|---:|---:|---:|\n");
    for (auto& r : rows)
        printf("| %s | %.1f | %s | %s |\n", r.name, r.ms, r.tokens > 0 ? strf("%.0f", r.tokens / r.ms * 1000).c_str() : "-",
               r.flops > 0 ? strf("%.1f", r.flops / (r.ms * 1e6)).c_str() : "-");
    printf("\npeak RSS %.0f MB; sgemm ceiling %.1f GFLOP/s (the best of 1024^3 and the step's shape), %.1f at the "
           "step's shape (%d x %d x %d); "
           "the step reaches %.0f%% of the ceiling\n",
           rss, ceiling, at_shape, B * (int)T, tc.channels, 4 * tc.channels,
           100 * step_flops / (med(&StepStats::ms) * 1e6) / ceiling);
    return 0;
}

#ifdef __CUDACC__
#define GKD_BUILD_PATHS "this build: CPU and CUDA (--device auto|cpu|cuda)"
#else
#define GKD_BUILD_PATHS "this build: CPU only (make found no nvcc)"
#endif
static const char* USAGE =
    "gkd: Generalized Knowledge Distillation for GPT-2 (" GKD_BUILD_PATHS ")\n"
    "\n"
    "  gkd init      --layers L --channels C --heads NH --context T --vocab byte --out F\n"
    "  gkd distill   --teacher F --student F --data F.jsonl --out DIR [--lambda --beta ...]\n"
    "  gkd sft       --model F --data F.jsonl --out DIR\n"
    "  gkd sample    --model F --prompt TEXT [--temperature t --num-samples N]\n"
    "  gkd eval      --model F --data F.jsonl [--teacher F]\n"
    "  gkd tokenize  [--tokenizer byte|PATH] [--decode] < input\n"
    "  gkd convert   IN OUT [--bf16]   (model.safetensors or .bin -> llm.c .bin)\n"
    "  gkd bench     [--student L,C,NH --teacher L,C,NH --batch B ... --device cuda]   (time a step by phase)\n"
    "  gkd data      --task arithmetic|words --out DIR   (built-in task splits)\n"
    "  gkd data      --convert gsm8k|instruction --in F --out F.jsonl   (GSM8K, Alpaca/Dolly)\n"
    "\n"
    "  gkd           (no arguments) the default experiment: teacher, SFT student, GKD student\n"
    "\n"
    "Each command takes --help. Data and formats: SPEC.md; a tour: README.md.\n";

static int run_command(int argc, char** argv) {
    if (argc < 2) return run_default_experiment();
    std::string cmd = argv[1];
    if (cmd == "--help" || cmd == "-h" || cmd == "help") { fputs(USAGE, stdout); return 0; }
    if (cmd == "init") return cmd_init(argc - 2, argv + 2);
    if (cmd == "convert") return cmd_convert(argc - 2, argv + 2);
    if (cmd == "bench") return cmd_bench(argc - 2, argv + 2);
    if (cmd == "distill") return cmd_train(argc - 2, argv + 2, false);
    if (cmd == "sft") return cmd_train(argc - 2, argv + 2, true);
    if (cmd == "sample") return cmd_sample(argc - 2, argv + 2);
    if (cmd == "eval") return cmd_eval(argc - 2, argv + 2);
    if (cmd == "tokenize") return cmd_tokenize(argc - 2, argv + 2);
    if (cmd == "data") return cmd_data(argc - 2, argv + 2);
    GKD_FAIL("gkd: unknown command '%s' (one of init, distill, sft, sample, eval, tokenize, data; see gkd --help)", cmd.c_str());
}

#ifndef GKD_NO_MAIN
int main(int argc, char** argv) {
    try {
        return run_command(argc, argv);
    } catch (const ExitRequest& e) {
        return e.status;
    } catch (const GkdError& e) {
        fprintf(stderr, "gkd: error: %s\n", e.what());
    } catch (const std::bad_alloc&) {
        fprintf(stderr, "gkd: error: out of memory\n");
    } catch (const std::exception& e) {
        fprintf(stderr, "gkd: error: %s\n", e.what());
    }
    return 1;
}
#endif

#endif  // GKD_CU
