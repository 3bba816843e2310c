// gkd.cu — Generalized Knowledge Distillation (Agarwal et al., ICLR 2024) for GPT-2.
//
// This file holds the algorithm and the program around it:
//   1. the divergences D(P, Q) of SPEC section 1 (forward KL, reverse KL, JSD(beta)) and
//      cross-entropy, each computing value and gradient in one call per row of logits;
//   2. batched sampling with a KV cache (prefill the prompts, then one token per step);
//   3. the GKD training step, written to read like the paper's Algorithm 1 (gkd_step);
//   4. evaluation, and the command line: init, distill, sft, sample, eval, tokenize,
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
// - The file compiles as C++ (g++ -x c++) on machines without a GPU; the CUDA path will
//   live here too, behind __CUDACC__.
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
    double loss = 0, total = 0;
    if (pg) pg->surrogate = 0;
    for (int n = 0; n < N; n++)
        if (b.targets[n] >= 0) {
            loss += per_position[n] * position_weight(b, n / b.T, norm);
            total += per_position[n];
            if (pg) pg->surrogate -= pg->advantage[n / b.T] * logp[n] / b.B;
        }
    if (mean_per_token) *mean_per_token = total / b.num_targets;
    return loss;
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
    std::vector<int> tokens, cache_row, start, n_new;
};

// Samples a completion for every prompt: prefill all prompts at once, then decode one
// token per step for the rows still going. Row b stops at its first EOS (kept) or after
// budgets[b] tokens. Its randomness comes from (seed, stream, row_ids[b]) alone.
static std::vector<std::vector<int>> generate(const GPT<float>& m, Generator& g,
                                              const std::vector<const std::vector<int>*>& prompts,
                                              const std::vector<int>& budgets, double temperature, int eos,
                                              uint64_t seed, uint64_t stream, const std::vector<uint64_t>& row_ids) {
    const int Bn = (int)prompts.size(), Vp = m.config.padded_vocab_size, V = m.config.vocab_size;
    std::vector<std::vector<int>> out(Bn);
    if (Bn == 0) return out;
    std::vector<Rng> rngs;
    for (int b = 0; b < Bn; b++) rngs.emplace_back(derive_seed(seed, stream, row_ids[b]));
    int Pmax = 0;
    for (auto* p : prompts) Pmax = std::max(Pmax, (int)p->size());
    g.cache.allocate(m.config, Bn);
    g.logits.resize((size_t)Bn * Vp);
    g.tokens.assign((size_t)Bn * Pmax, eos);
    g.cache_row.resize(Bn);
    g.start.assign(Bn, 0);
    g.n_new.resize(Bn);
    for (int b = 0; b < Bn; b++) {
        const std::vector<int>& p = *prompts[b];
        GKD_ASSERT(budgets[b] >= 1 && (int)p.size() + budgets[b] <= m.config.max_seq_len, "budget past the context");
        std::copy(p.begin(), p.end(), g.tokens.begin() + (size_t)b * Pmax);
        g.cache_row[b] = b;
        g.n_new[b] = (int)p.size();
    }
    gpt_infer(m, g.cache, g.scratch, g.tokens.data(), g.cache_row.data(), g.start.data(), g.n_new.data(), Bn, Pmax,
              g.logits.data(), false);
    std::vector<int> active(Bn);  // active[i] = the batch row whose logits are in slot i
    for (int b = 0; b < Bn; b++) active[b] = b;
    while (!active.empty()) {
        std::vector<int> still;
        for (size_t i = 0; i < active.size(); i++) {
            int b = active[i];
            int tok = pick_token(g.logits.data() + i * Vp, V, temperature, rngs[b]);
            out[b].push_back(tok);
            if (tok != eos && (int)out[b].size() < budgets[b]) still.push_back(b);
        }
        active.swap(still);
        if (active.empty()) break;
        int n = (int)active.size();
        for (int i = 0; i < n; i++) {
            int b = active[i];
            g.tokens[i] = out[b].back();
            g.cache_row[i] = b;
            g.start[i] = (int)(prompts[b]->size() + out[b].size()) - 1;
            g.n_new[i] = 1;
        }
        gpt_infer(m, g.cache, g.scratch, g.tokens.data(), g.cache_row.data(), g.start.data(), g.n_new.data(), n, 1,
                  g.logits.data(), false);
    }
    return out;
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
// 3. the GKD trainer

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

// Completions sampled from `model` for the batch's prompts, at the sampling temperature.
static std::vector<Sequence> sample_completions(Trainer& tr, const GPT<float>& model, Generator& gen,
                                                const std::vector<const Example*>& batch, int step, uint64_t stream) {
    std::vector<const std::vector<int>*> prompts;
    std::vector<int> budgets;
    std::vector<uint64_t> row_ids;
    for (size_t i = 0; i < batch.size(); i++) {
        prompts.push_back(&batch[i]->prompt);
        budgets.push_back(std::min(tr.opt.max_new_tokens, shared_context(tr) - (int)batch[i]->prompt.size()));
        row_ids.push_back(i);
    }
    auto completions = generate(model, gen, prompts, budgets, tr.opt.temperature, tr.tok->eos_id(),
                                derive_seed(tr.opt.seed, stream), (uint64_t)step, row_ids);
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

// Teacher logits at every position of the batch: a forward pass with no activations kept.
static void teacher_forward(Trainer& tr, const TrainBatch& b) {
    const GPTConfig& c = tr.teacher.config;
    tr.teacher_cache.allocate(c, b.B);
    tr.teacher_logits.resize((size_t)b.B * b.T * c.padded_vocab_size);
    std::vector<int> rows(b.B), start(b.B, 0), n_new(b.B, b.T);
    for (int i = 0; i < b.B; i++) rows[i] = i;
    gpt_infer(tr.teacher, tr.teacher_cache, tr.teacher_scratch, b.tokens.data(), rows.data(), start.data(),
              n_new.data(), b.B, b.T, tr.teacher_logits.data(), true);
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
    if (st.on_policy) rows = sample_completions(tr, tr.student, tr.student_gen, examples, step, STREAM_STUDENT_SAMPLES);
    else if (o.seq_kd) rows = sample_completions(tr, tr.teacher, tr.teacher_gen, examples, step, STREAM_TEACHER_SAMPLES);
    else rows = dataset_completions(examples, eos);
    st.sample_ms = (now_seconds() - t0) * 1000;
    TrainBatch b = build_batch(rows, eos);
    st.tokens = b.num_targets;

    // the teacher scores every token of x+y (no gradients); the student runs forward
    const bool distill = !o.sft;
    double t1 = now_seconds();
    if (distill) teacher_forward(tr, b);
    double t2 = now_seconds();
    gpt_forward(tr.student, b.tokens.data(), b.B, b.T);
    double t3 = now_seconds();
    st.teacher_ms = (t2 - t1) * 1000;
    st.forward_ms = (t3 - t2) * 1000;

    // with a reward: score the samples; with alpha < 1, RL + GKD on the same samples,
    // alpha D + (1 - alpha) REINFORCE with a baseline
    const int V = tr.student.config.vocab_size, Vps = tr.student.config.padded_vocab_size;
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
    st.loss = batch_loss(b, distill ? tr.teacher_logits.data() : (const float*)nullptr,
                         distill ? tr.teacher.config.padded_vocab_size : 0, tr.student.acts.logits,
                         tr.student.grads_acts.logits, V, Vps, !distill, o.beta, o.loss_temperature, o.loss_norm,
                         nullptr, rl ? &pg : nullptr);
    if (!o.reward.empty()) st.divergence = st.loss;
    if (rl) st.loss = o.alpha * st.divergence + (1.0 - o.alpha) * pg.surrogate;
    if (fault_injected("nan-loss", step)) st.loss = NAN;
    if (!std::isfinite(st.loss))
        GKD_FAIL("step %d: the loss is not finite (%g); stopping before the update (the last checkpoint is intact)",
                 step, st.loss);

    // backpropagate through the student only, then one AdamW step
    double t4 = now_seconds();
    st.loss_ms = (t4 - t3) * 1000;
    gpt_zero_grad(tr.student);
    gpt_backward(tr.student);
    st.grad_norm = grad_norm(tr.student);
    if (!std::isfinite(st.grad_norm))
        GKD_FAIL("step %d: the gradient norm is not finite; stopping before the update (the last checkpoint is intact)", step);
    double t5 = now_seconds();
    adamw_update(tr.student, tr.adam, st.lr, clip_coefficient(st.grad_norm, o.grad_clip));
    double t6 = now_seconds();
    st.backward_ms = (t5 - t4) * 1000;
    st.update_ms = (t6 - t5) * 1000;
    st.ms = (t6 - t0) * 1000;
    return st;
}

// ----------------------------------------------------------------------------
// 4. evaluation

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

static EvalResult evaluate(const GPT<float>& model, const GPT<float>* teacher, const Dataset& data,
                           const Tokenizer& tok, const EvalOptions& eo) {
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
        cache.allocate(model.config, b.B);
        logits.resize((size_t)b.B * b.T * Vp);
        gpt_infer(model, cache, scratch, b.tokens.data(), rows.data(), start.data(), n_new.data(), b.B, b.T,
                  logits.data(), true);
        double mean;
        batch_loss(b, (const float*)nullptr, 0, logits.data(), (float*)nullptr, V, Vp, true, 0, 1, LossNorm::Token, &mean);
        nll_sum += mean * b.num_targets;
        if (teacher) {
            tcache.allocate(teacher->config, b.B);
            tlogits.resize((size_t)b.B * b.T * Vpt);
            gpt_infer(*teacher, tcache, tscratch, b.tokens.data(), rows.data(), start.data(), n_new.data(), b.B, b.T,
                      tlogits.data(), true);
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
        auto greedy = generate(model, gen, prompts, budgets, 0.0, eos, 0, 0, ids);
        for (size_t i = 0; i < ex.size(); i++) {
            std::vector<int> want = ex[i]->completion;
            want.push_back(eos);
            matches += greedy[i] == want;
        }
        if (!eo.task.empty()) score(greedy, correct, similar);
        if (!eo.task.empty() && eo.sample_temperature > 0)
            score(generate(model, gen, prompts, budgets, eo.sample_temperature, eos, eo.seed, 0, ids), sample_correct,
                  sample_similar);
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
    EvalResult r = evaluate(tr.student, tr.has_teacher ? &tr.teacher : nullptr, tr.eval_data, *tr.tok, eo);
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
        if (!last && (stop_signal || (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0)))
            save_training_state(tr, step + 1, state_path);
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
    gpt_save(tr.student, o.out_dir + "/model.bin");
    if (is_file(state_path)) unlink(state_path.c_str());  // finished: model.bin is the result
    if (!o.quiet) fprintf(stderr, "saved %s/model.bin and %s\n", o.out_dir.c_str(), metrics_path.c_str());
    return out;
}

// ----------------------------------------------------------------------------
// 5. the default experiment: `./gkd` with no arguments
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

// --device: the CPU path is the only one in this build.
static void check_device(const Flags& f) {
    std::string d = f.choice("device", "auto", {"auto", "cpu", "cuda"});
    if (d == "cuda")
        GKD_FAIL("gkd %s: --device cuda: this build has no CUDA path; use --device cpu (or auto)", f.command.c_str());
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
    {"device", true, "auto | cpu | cuda (auto)"},
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
    check_device(f);
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
            if (name != "resume") GKD_FAIL("gkd %s: --resume continues the saved run as it was; --%s cannot be given with it", cmd, name.c_str());
        for (auto& name : f.switches)
            if (name != "quiet") GKD_FAIL("gkd %s: --resume continues the saved run as it was; --%s cannot be given with it", cmd, name.c_str());
        std::string dir = f.str("resume"), path = dir + "/checkpoint.bin";
        if (!is_file(path))
            GKD_FAIL("%s: no checkpoint to resume from (a run saves one with --checkpoint-every N, or when interrupted)", path.c_str());
        tr.opt.out_dir = dir;
        tr.opt.quiet = f.on("quiet");
        start_step = load_training_state(tr, path);
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
            fprintf(stderr, "gkd %s: student %s (%zu parameters), %zu examples, %d steps of %d, %d threads\n", cmd,
                    o.student_path.c_str(), tr.student.num_parameters, tr.data.examples.size(), tr.opt.steps, o.batch,
                    omp_get_max_threads());
    }
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
    check_device(f);
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
        auto outs = generate(m, gen, prompts, budgets, temperature, tok->eos_id(), seed, 0, ids);
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
    check_device(f);
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
    EvalResult r = evaluate(m, f.has("teacher") ? &t : nullptr, d, *tok, eo);
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

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? NAN : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

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
        {"device", true, "auto | cpu | cuda"}};
    if (wants_help(argc, argv)) {
        print_help("gkd bench: time one training step by phase on random models (defaults: the CPU reference "
                   "configuration); prints ms, tokens/s, GFLOP/s, peak RSS and the machine's sgemm ceiling", specs);
        return 0;
    }
    Flags f("bench", argc, argv, specs);
    check_device(f);
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
    struct Row { const char* name; const char* key; double ms, tokens, flops; };
    std::vector<Row> rows;
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

static const char* USAGE =
    "gkd: Generalized Knowledge Distillation for GPT-2 (CPU reference path)\n"
    "\n"
    "  gkd init      --layers L --channels C --heads NH --context T --vocab byte --out F\n"
    "  gkd distill   --teacher F --student F --data F.jsonl --out DIR [--lambda --beta ...]\n"
    "  gkd sft       --model F --data F.jsonl --out DIR\n"
    "  gkd sample    --model F --prompt TEXT [--temperature t --num-samples N]\n"
    "  gkd eval      --model F --data F.jsonl [--teacher F]\n"
    "  gkd tokenize  [--tokenizer byte|PATH] [--decode] < input\n"
    "  gkd convert   IN OUT [--bf16]   (model.safetensors or .bin -> llm.c .bin)\n"
    "  gkd bench     [--student L,C,NH --teacher L,C,NH --batch B ...]   (time a step by phase)\n"
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
