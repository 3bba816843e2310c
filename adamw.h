// adamw.h — the optimizer and the learning-rate schedule on the CPU: AdamW (PyTorch's, with
// decoupled weight decay), the global gradient norm and its clipping factor, warmup and
// cosine decay.
//
// GPU twin: cuda/adamw.cuh (the same float update and a fixed-order norm).
//
// Tricks worth knowing:
// - Clipping costs no pass of its own: the clip factor is AdamW's grad_scale.
// - The norm sums fixed chunks in a fixed order: the same value run after run.
//
// Part of gkd.cu's single translation unit, after model.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "model.h"

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
inline const std::vector<std::string> SCHEDULE_NAMES = {"constant", "cosine"};  // --lr-schedule, in the enum's order

// Linear warmup over `warmup` steps (step k gets (k+1)/warmup of the rate), then constant
// or a cosine decay to zero at the last step.
static double learning_rate(double lr, Schedule schedule, int warmup, int steps, int step) {
    if (step < warmup) return lr * (step + 1) / warmup;
    if (schedule == Schedule::Constant) return lr;
    double progress = (double)(step - warmup) / std::max(1, steps - warmup);
    return lr * 0.5 * (1.0 + std::cos(M_PI * progress));
}
