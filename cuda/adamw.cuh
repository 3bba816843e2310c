// cuda/adamw.cuh — AdamW and the global gradient norm on the device: adamw_update's and
// grad_norm's twins (adamw.h).
//
// Tricks worth knowing:
// - The update is the CPU's float formula, element for element (PyTorch's AdamW); the
//   clipping factor comes in as its grad scale, so clipping costs no pass of its own.
// - The norm sums squares in double over a fixed grid of NORM_BLOCKS blocks; the host adds
//   the partials in order: no atomics, the same result run after run.
// - In bf16 the update refreshes the working copy in the same pass: each new fp32 master
//   weight is also written rounded to bf16 (cuda/precision.cuh), so the weights are read
//   once and no second pass runs.
#pragma once
#include "common.cuh"
#include "model.cuh"

namespace gpu {

// ---- AdamW and the gradient norm

// p: the fp32 master weights; working: null, or their bf16 copy, refreshed
template <typename W>
__global__ void adamw_kernel(float* p, W* working, const float* g, float* m, float* v, size_t n, float beta1,
                             float beta2, float eps, float grad_scale, float step_size, float bc2_sqrt, float keep) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i] * keep - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    p[i] = pi;
    if (working) working[i] = from_float<W>(pi);
}

// partial[block] = sum of squares over a fixed grid-stride slice, in double
__global__ void sum_squares_kernel(double* partial, const float* x, size_t n) {
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
// both walk a model's whole parameters or gradients, every carved tensor at once
GKD_WALKS_WHOLE_ALLOCATIONS(adamw_fp32, adamw_kernel<float>)
GKD_WALKS_WHOLE_ALLOCATIONS(adamw_bf16, adamw_kernel<bf16>)
GKD_WALKS_WHOLE_ALLOCATIONS(sum_squares, sum_squares_kernel)
}  // namespace gpu

// Global L2 norm of the gradient: fixed per-block partial sums, added on the host in order.
template <typename T>
static double gpu_grad_norm(GpuModelOf<T>& g) {
    GPU_LAUNCH(gpu::sum_squares_kernel, gpu::NORM_BLOCKS, gpu::THREADS, 0, gpu::stream(),
        g.norm_partials.ptr, g.grads_memory.ptr, g.num_parameters);
    double partial[gpu::NORM_BLOCKS];
    download(partial, g.norm_partials.ptr, gpu::NORM_BLOCKS);
    double total = 0;
    for (double s : partial) total += s;
    return std::sqrt(total);
}

// adamw_update's twin: the same float arithmetic, one launch per parameter tensor; in
// bf16 each launch also refreshes that tensor's working copy.
template <typename T>
static void gpu_adamw_update(GpuModelOf<T>& g, AdamW& opt, double lr, double grad_scale = 1.0) {
    opt.t++;
    const double bc1 = 1.0 - std::pow(opt.beta1, (double)opt.t), bc2 = 1.0 - std::pow(opt.beta2, (double)opt.t);
    size_t offset = 0;
    for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
        const size_t n = g.param_sizes[k];
        const float keep = (float)(1.0 - lr * (PARAMETER_DECAYS[k] ? opt.weight_decay : 0.0));
        T* working = is_fp32<T>() ? nullptr : g.working_memory.ptr + offset;
        GPU_LAUNCH(gpu::adamw_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(),
            g.params_memory.ptr + offset, working, g.grads_memory.ptr + offset, g.adam_m.ptr + offset, g.adam_v.ptr + offset, n,
            (float)opt.beta1, (float)opt.beta2, (float)opt.eps, (float)grad_scale, (float)(lr / bc1),
            (float)std::sqrt(bc2), keep);
        offset += n;
    }
}
