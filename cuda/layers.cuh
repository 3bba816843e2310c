// cuda/layers.cuh — the GPU twins of model.h's layers, forward and backward side by side,
// in model.h's order: encoder, layernorm, matmul, attention, GELU, residual.
//
// Each gpu:: function takes the arguments of its CPU op in model.h (device pointers, the
// same shapes) and computes the same thing, so tests/test_gpu.cu compares them one by one.
// Shapes: B rows of Tn positions, N = B * Tn, C channels, NH heads of hs = C / NH; the
// encoder and attention also come for packed batches (rows of any lengths end to end,
// model.h's RowLayout), which the training passes run.
// Each is a template over T, the storage type of activations and working weights (float,
// or bf16 under --precision bf16; cuda/precision.cuh): arithmetic is fp32 in registers,
// each stored value rounded once. LayerNorm's statistics and every weight gradient are
// float in both.
//
// Tricks worth knowing:
// - No atomics anywhere, so a run is reproducible on a given GPU: bias and LayerNorm
//   parameter gradients sum fixed chunks of rows, then the chunks in order
//   (column_sums); the token-embedding gradient sums each token's positions in order,
//   grouped on the host (TokenGroups).
// - Matmuls are cuBLAS SGEMMs (fp32, or TF32 tensor cores with --tf32) or, in bf16,
//   GemmEx calls with fp32 accumulation; everything else is a kernel written here.
// - Attention is llm.c's: q, k, v permuted to (B, NH, T, hs), scores and output as
//   batched GEMMs, a causal softmax (max subtracted) between them.
// - LayerNorm and the causal softmax use one warp per row: rows are at most a few
//   thousand wide, and a warp needs no shared memory or block barrier.
#pragma once
#include "common.cuh"

namespace gpu {

// ---- encoder

template <typename T>
__global__ void encoder_forward_kernel(T* out, const int* inp, const T* wte, const T* wpe, int Tn, int C, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / C;
    int c = (int)(i % C), t = (int)(n % Tn);
    out[i] = from_float<T>(to_float(wte[(size_t)inp[n] * C + c]) + to_float(wpe[(size_t)t * C + c]));
}
// out (B, T, C) = wte[token] + wpe[position]
template <typename T>
static void encoder_forward(T* out, const int* inp, const T* wte, const T* wpe, int B, int Tn, int C) {
    size_t total = (size_t)B * Tn * C;
    GPU_LAUNCH(encoder_forward_kernel<T>, blocks_for(total), THREADS, 0, gpu::stream(), out, inp, wte, wpe, Tn, C, total);
}

// The same over a packed batch: out (N, C), position n at pos[n] of its row (device)
template <typename T>
__global__ void encoder_forward_packed_kernel(T* out, const int* inp, const int* pos, const T* wte, const T* wpe, int C,
                                              size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / C;
    int c = (int)(i % C);
    out[i] = from_float<T>(to_float(wte[(size_t)inp[n] * C + c]) + to_float(wpe[(size_t)pos[n] * C + c]));
}
template <typename T>
static void encoder_forward(T* out, const int* inp, const int* pos, const T* wte, const T* wpe, int N, int C) {
    size_t total = (size_t)N * C;
    GPU_LAUNCH(encoder_forward_packed_kernel<T>, blocks_for(total), THREADS, 0, gpu::stream(), out, inp, pos, wte, wpe,
               C, total);
}

// dwpe: one thread per (t, c), summing over the rows b in order
template <typename T>
__global__ void position_grad_kernel(float* dwpe, const T* dout, int B, int Tn, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= Tn * C) return;
    float s = 0;
    for (int b = 0; b < B; b++) s += to_float(dout[(size_t)b * Tn * C + i]);
    dwpe[i] += s;
}
// ... over a packed batch: row b begins at row_start[b] (device, B + 1), rows shorter
// than t + 1 have no position t
template <typename T>
__global__ void position_grad_packed_kernel(float* dwpe, const T* dout, const int* row_start, int B, int Tn, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= Tn * C) return;
    const int t = i / C, c = i % C;
    float s = 0;
    for (int b = 0; b < B; b++)
        if (row_start[b] + t < row_start[b + 1]) s += to_float(dout[(size_t)(row_start[b] + t) * C + c]);
    dwpe[i] += s;
}
// dwte: one block per distinct token, its positions (in order) listed by the host
template <typename T>
__global__ void token_grad_kernel(float* dwte, const T* dout, const int* token_ids, const int* first,
                                  const int* positions, int C) {
    const int u = blockIdx.x, tok = token_ids[u];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0;
        for (int k = first[u]; k < first[u + 1]; k++) s += to_float(dout[(size_t)positions[k] * C + c]);
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
template <typename T>
static void encoder_backward(float* dwte, float* dwpe, const T* dout, const DeviceTokenGroups& groups, int B, int Tn,
                             int C) {
    GPU_LAUNCH(position_grad_kernel<T>, blocks_for((size_t)Tn * C), THREADS, 0, gpu::stream(), dwpe, dout, B, Tn, C);
    if (groups.count == 0) return;
    GPU_LAUNCH(token_grad_kernel<T>, groups.count, 128, 0, gpu::stream(),
        dwte, dout, groups.token_ids.ptr, groups.first.ptr, groups.positions.ptr, C);
}

// ... over a packed batch: B rows from row_start (device, B + 1), the longest Tn
template <typename T>
static void encoder_backward(float* dwte, float* dwpe, const T* dout, const DeviceTokenGroups& groups,
                             const int* row_start, int B, int Tn, int C) {
    GPU_LAUNCH(position_grad_packed_kernel<T>, blocks_for((size_t)Tn * C), THREADS, 0, gpu::stream(), dwpe, dout,
               row_start, B, Tn, C);
    if (groups.count == 0) return;
    GPU_LAUNCH(token_grad_kernel<T>, groups.count, 128, 0, gpu::stream(),
        dwte, dout, groups.token_ids.ptr, groups.first.ptr, groups.positions.ptr, C);
}

// ---- per-column sums over rows (bias and LayerNorm parameter gradients), in two fixed-order
// passes: chunks of COLUMN_CHUNK rows, then the chunks in order

constexpr int COLUMN_CHUNK = 32;
inline size_t column_scratch_size(int N, int C) { return 2 * (size_t)((N + COLUMN_CHUNK - 1) / COLUMN_CHUNK) * C; }

// partial_b[chunk][c] = sum of dout over the chunk's rows; with inp, also
// partial_w[chunk][c] = sum of dout * (inp - mean) * rstd (LayerNorm's weight gradient)
template <typename T>
__global__ void column_partials_kernel(float* partial_w, float* partial_b, const T* dout, int ld, const T* inp,
                                       const float* mean, const float* rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    float sw = 0, sb = 0;
    for (int n = chunk * COLUMN_CHUNK; n < min(N, (chunk + 1) * COLUMN_CHUNK); n++) {
        float d = to_float(dout[(size_t)n * ld + c]);
        sb += d;
        if (inp) sw += d * (to_float(inp[(size_t)n * C + c]) - mean[n]) * rstd[n];
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
template <typename T>
static void column_sums(float* dw, float* db, const T* dout, int ld, const T* inp, const float* mean,
                        const float* rstd, int N, int C, float* scratch) {
    const int chunks = (N + COLUMN_CHUNK - 1) / COLUMN_CHUNK;
    float* partial_b = scratch;
    float* partial_w = scratch + (size_t)chunks * C;
    GPU_LAUNCH(column_partials_kernel<T>, dim3(blocks_for(C, 128), chunks), 128, 0, gpu::stream(),
        partial_w, partial_b, dout, ld, inp, mean, rstd, N, C);
    GPU_LAUNCH(column_totals_kernel, blocks_for(C, 128), 128, 0, gpu::stream(), dw, db, partial_w, partial_b, chunks, C);
}

// ---- layernorm: one warp per row

template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* inp, const T* weight, const T* bias,
                                         int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* x = inp + (size_t)row * C;
    float s = 0;
    for (int i = lane; i < C; i += 32) s += to_float(x[i]);
    const float m = warp_sum(s) / C;
    float v = 0;
    for (int i = lane; i < C; i += 32) { float d = to_float(x[i]) - m; v += d * d; }
    const float r = 1.0f / sqrtf(warp_sum(v) / C + 1e-5f);
    T* o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32)
        o[i] = from_float<T>((to_float(x[i]) - m) * r * to_float(weight[i]) + to_float(bias[i]));
    if (mean && lane == 0) { mean[row] = m; rstd[row] = r; }
}
// out (N, C), mean/rstd (N, fp32) or null: normalise each row, biased variance, eps 1e-5
template <typename T>
static void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight, const T* bias, int N,
                              int C) {
    GPU_LAUNCH(layernorm_forward_kernel<T>, blocks_for((size_t)N * 32), THREADS, 0, gpu::stream(),
        out, mean, rstd, inp, weight, bias, N, C);
}

// dinp (N, C) = base + the input's gradient, or += it without a base
template <typename T>
__global__ void layernorm_backward_kernel(T* dinp, const T* dout, const T* inp, const T* weight, const float* mean,
                                          const float* rstd, const T* base, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* d = dout + (size_t)row * C;
    const T* x = inp + (size_t)row * C;
    const float m = mean[row], s = rstd[row];
    float dnorm_mean = 0, dnorm_norm_mean = 0;
    for (int i = lane; i < C; i += 32) {
        float norm = (to_float(x[i]) - m) * s, dnorm = to_float(weight[i]) * to_float(d[i]);
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean = warp_sum(dnorm_mean) / C;
    dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
    T* dx = dinp + (size_t)row * C;
    const T* from = base ? base + (size_t)row * C : dx;
    for (int i = lane; i < C; i += 32) {
        float norm = (to_float(x[i]) - m) * s, dnorm = to_float(weight[i]) * to_float(d[i]);
        dx[i] = from_float<T>(to_float(from[i]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
    }
}
// The backward in halves, as model.h's: dinp (N, C) = base + the input's gradient (a
// residual's gradient passing through), or += it with no base ...
template <typename T>
static void layernorm_backward_input(T* dinp, const T* dout, const T* inp, const T* weight, const float* mean,
                                     const float* rstd, int N, int C, const T* base = nullptr) {
    GPU_LAUNCH(layernorm_backward_kernel<T>, blocks_for((size_t)N * 32), THREADS, 0, gpu::stream(),
        dinp, dout, inp, weight, mean, rstd, base, N, C);
}
// ... and dweight, dbias (C) += the parameters'; scratch: column_scratch_size(N, C) floats
template <typename T>
static void layernorm_backward_params(float* dweight, float* dbias, const T* dout, const T* inp, const float* mean,
                                      const float* rstd, int N, int C, float* scratch) {
    column_sums(dweight, dbias, dout, C, inp, mean, rstd, N, C, scratch);
}
// both halves (the tests' unit)
template <typename T>
static void layernorm_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp, const T* weight,
                               const float* mean, const float* rstd, int N, int C, float* scratch) {
    gpu::layernorm_backward_input(dinp, dout, inp, weight, mean, rstd, N, C);
    gpu::layernorm_backward_params(dweight, dbias, dout, inp, mean, rstd, N, C, scratch);
}

// ---- matmul: out (N, OC) = inp (N, C) weight^T (OC, C) + bias; out's rows are ld_out apart.
// out is of type O: T, or fp32 for the LM head's logits (bf16 operands, fp32 out).

template <typename O, typename T>
__global__ void add_bias_kernel(O* out, const T* bias, int OC, int ld_out, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / OC;
    int o = (int)(i % OC);
    out[n * ld_out + o] = from_float<O>(to_float(out[n * ld_out + o]) + to_float(bias[o]));
}
template <typename O, typename T>
static void matmul_forward(O* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC, int ld_out) {
    gemm(false, true, N, OC, C, inp, C, weight, C, 0.0f, out, ld_out);
    if (!bias) return;
    size_t total = (size_t)N * OC;
    GPU_LAUNCH((add_bias_kernel<O, T>), blocks_for(total), THREADS, 0, gpu::stream(), out, bias, OC, ld_out, total);
}
// The backward in halves, as model.h's: dinp (N, C) += dout weight ...
template <typename T>
static void matmul_backward_input(T* dinp, const T* dout, const T* weight, int N, int C, int OC, int ld_out) {
    gemm(false, false, N, C, OC, dout, ld_out, weight, C, 1.0f, dinp, C);
}
// ... and dweight (OC, C, fp32) += dout^T inp, dbias (OC, fp32) += column sums of dout
template <typename T>
static void matmul_backward_weight(float* dweight, float* dbias, const T* dout, const T* inp, int N, int C, int OC,
                                   int ld_out, float* scratch) {
    gemm(true, false, OC, C, N, dout, ld_out, inp, C, 1.0f, dweight, C);
    if (dbias) column_sums<T>(nullptr, dbias, dout, ld_out, nullptr, nullptr, nullptr, N, OC, scratch);
}
// both halves (the tests' unit)
template <typename T>
static void matmul_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp, const T* weight, int N,
                            int C, int OC, int ld_out, float* scratch) {
    gpu::matmul_backward_input(dinp, dout, weight, N, C, OC, ld_out);
    gpu::matmul_backward_weight(dweight, dbias, dout, inp, N, C, OC, ld_out, scratch);
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
template <typename T>
__global__ void split_heads_kernel(T* dst, const T* src, int ld, int Tn, int NH, int hs, size_t total) {
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx < total) dst[idx] = src[interleaved_offset(idx, Tn, NH, hs, ld)];
}
// the inverse, written or added: dst (B, T, ld) <- src (B, NH, T, hs)
template <typename T>
__global__ void merge_heads_kernel(T* dst, int ld, const T* src, int Tn, int NH, int hs, bool accumulate, size_t total) {
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= total) return;
    T* d = dst + interleaved_offset(idx, Tn, NH, hs, ld);
    *d = accumulate ? from_float<T>(to_float(*d) + to_float(src[idx])) : src[idx];
}
template <typename T>
static void split_heads(T* dst, const T* src, int ld, int B, int Tn, int NH, int hs) {
    size_t total = (size_t)B * NH * Tn * hs;
    GPU_LAUNCH(split_heads_kernel<T>, blocks_for(total), THREADS, 0, gpu::stream(), dst, src, ld, Tn, NH, hs, total);
}
template <typename T>
static void merge_heads(T* dst, int ld, const T* src, int B, int Tn, int NH, int hs, bool accumulate) {
    size_t total = (size_t)B * NH * Tn * hs;
    GPU_LAUNCH(merge_heads_kernel<T>, blocks_for(total), THREADS, 0, gpu::stream(), dst, ld, src, Tn, NH, hs, accumulate, total);
}

// In place over att (rows, T): row r is query t = r % T; softmax(scale * x) over columns
// 0..t (the max subtracted), zero after. One warp per row. The max, the exponentials and
// their sum are fp32 whatever T is, and each probability is stored (rounded) once: the
// last pass computes its exponential again rather than read back one stored rounded.
template <typename T>
__global__ void causal_softmax_kernel(T* att, size_t rows, int Tn, float scale) {
    size_t row = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int t = (int)(row % Tn);
    T* a = att + row * Tn;
    float maxv = -INFINITY;
    for (int j = lane; j <= t; j += 32) maxv = fmaxf(maxv, to_float(a[j]) * scale);
    for (int o = 16; o > 0; o >>= 1) maxv = fmaxf(maxv, __shfl_xor_sync(FULL_MASK, maxv, o));
    float sum = 0;
    for (int j = lane; j <= t; j += 32) sum += expf(to_float(a[j]) * scale - maxv);
    const float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < Tn; j += 32) a[j] = from_float<T>(j <= t ? expf(to_float(a[j]) * scale - maxv) * inv : 0.0f);
}
// Through the softmax, in place over dA (rows, T): dS = A (dA - rowsum(A dA)) scale, causal.
template <typename T>
__global__ void causal_softmax_backward_kernel(T* datt, const T* att, size_t rows, int Tn, float scale) {
    size_t row = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int t = (int)(row % Tn);
    const T* a = att + row * Tn;
    T* g = datt + row * Tn;
    float dot = 0;
    for (int j = lane; j <= t; j += 32) dot += to_float(a[j]) * to_float(g[j]);
    dot = warp_sum(dot);
    for (int j = lane; j < Tn; j += 32)
        g[j] = from_float<T>(j <= t ? to_float(a[j]) * (to_float(g[j]) - dot) * scale : 0.0f);
}
template <typename T>
static void causal_softmax(T* att, size_t rows, int Tn, float scale) {
    GPU_LAUNCH(causal_softmax_kernel<T>, blocks_for(rows * 32), THREADS, 0, gpu::stream(), att, rows, Tn, scale);
}

// Elements (of T) of scratch that attention needs for (B, T): q, k, v, and their
// gradients, the output (or its gradient) per head, each (B, NH, T, hs); dA (B, NH, T, T).
inline size_t attention_scratch_size(int B, int Tn, int C, int NH) {
    return 7 * (size_t)B * Tn * C + (size_t)B * NH * Tn * Tn;
}

// qkv (B, T, 3C) holds [q | k | v]; out (B, T, C); att (B, NH, T, T) causal softmax weights
template <typename T>
static void attention_forward(T* out, T* att, const T* qkv, T* scratch, int B, int Tn, int C, int NH) {
    const int hs = C / NH;
    const size_t head = (size_t)B * Tn * C;
    T *q = scratch, *k = q + head, *v = k + head, *y = v + head;  // (B, NH, T, hs) each
    split_heads(q, qkv, 3 * C, B, Tn, NH, hs);
    split_heads(k, qkv + C, 3 * C, B, Tn, NH, hs);
    split_heads(v, qkv + 2 * C, 3 * C, B, Tn, NH, hs);
    const long long sT = (long long)Tn * hs, sA = (long long)Tn * Tn;
    gemm_batched(false, true, Tn, Tn, hs, q, hs, sT, k, hs, sT, 0.0f, att, Tn, sA, B * NH);  // Q K^T
    causal_softmax(att, (size_t)B * NH * Tn, Tn, 1.0f / sqrtf((float)hs));
    gemm_batched(false, false, Tn, hs, Tn, att, Tn, sA, v, hs, sT, 0.0f, y, hs, sT, B * NH);  // A V
    merge_heads(out, C, y, B, Tn, NH, hs, false);
}

// accumulates into dqkv (B, T, 3C); scratch: attention_scratch_size(B, T, C, NH) elements
template <typename T>
static void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, T* scratch, int B, int Tn, int C,
                               int NH) {
    const int hs = C / NH;
    const size_t head = (size_t)B * Tn * C;
    T *q = scratch, *k = q + head, *v = k + head, *dy = v + head;
    T *dq = dy + head, *dk = dq + head, *dv = dk + head, *datt = dv + head;
    split_heads(q, qkv, 3 * C, B, Tn, NH, hs);
    split_heads(k, qkv + C, 3 * C, B, Tn, NH, hs);
    split_heads(v, qkv + 2 * C, 3 * C, B, Tn, NH, hs);
    split_heads(dy, dout, C, B, Tn, NH, hs);
    const long long sT = (long long)Tn * hs, sA = (long long)Tn * Tn;
    const int BH = B * NH;
    gemm_batched(false, true, Tn, Tn, hs, dy, hs, sT, v, hs, sT, 0.0f, datt, Tn, sA, BH);   // dA = dY V^T
    gemm_batched(true, false, Tn, hs, Tn, att, Tn, sA, dy, hs, sT, 0.0f, dv, hs, sT, BH);   // dV = A^T dY
    const size_t rows = (size_t)BH * Tn;
    GPU_LAUNCH(causal_softmax_backward_kernel<T>, blocks_for(rows * 32), THREADS, 0, gpu::stream(),
        datt, att, rows, Tn, 1.0f / sqrtf((float)hs));
    gemm_batched(false, false, Tn, hs, Tn, datt, Tn, sA, k, hs, sT, 0.0f, dq, hs, sT, BH);  // dQ = dS K
    gemm_batched(true, false, Tn, hs, Tn, datt, Tn, sA, q, hs, sT, 0.0f, dk, hs, sT, BH);   // dK = dS^T Q
    merge_heads(dqkv, 3 * C, dq, B, Tn, NH, hs, true);
    merge_heads(dqkv + C, 3 * C, dk, B, Tn, NH, hs, true);
    merge_heads(dqkv + 2 * C, 3 * C, dv, B, Tn, NH, hs, true);
}

// Attention over a packed batch (RowLayout, model.h): each run of consecutive rows of one
// length is one rectangular call above (rows of one length lie end to end, and so do their
// weights), so a batch of equal rows is one call per layer, as before packing, and
// ragged rows cost a call per distinct run. att (A): row b's (NH, len, len) at
// rows.att_start[b]. scratch: attention_scratch_size(N, 1, C, NH) + A elements cover any run.
template <typename F>
static void for_each_length_run(const RowLayout& rows, F f) {
    for (int b0 = 0, b1; b0 < rows.B; b0 = b1) {
        for (b1 = b0 + 1; b1 < rows.B && rows.length(b1) == rows.length(b0); b1++) {}
        if (rows.length(b0) > 0) f(b0, b1, rows.length(b0));
    }
}
template <typename T>
static void attention_forward(T* out, T* att, const T* qkv, T* scratch, const RowLayout& rows, int C, int NH) {
    for_each_length_run(rows, [&](int b0, int b1, int len) {
        const size_t at = rows.start[b0];
        gpu::attention_forward(out + at * C, att + rows.att_start[b0], qkv + at * 3 * C, scratch, b1 - b0, len, C, NH);
    });
}
template <typename T>
static void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, T* scratch, const RowLayout& rows,
                               int C, int NH) {
    for_each_length_run(rows, [&](int b0, int b1, int len) {
        const size_t at = rows.start[b0];
        gpu::attention_backward(dqkv + at * 3 * C, dout + at * C, qkv + at * 3 * C, att + rows.att_start[b0], scratch,
                                b1 - b0, len, C, NH);
    });
}

// ---- GELU (tanh approximation) and residuals: elementwise

__device__ inline float gelu_scalar(float x) {
    const float s = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(s * (x + 0.044715f * x * x * x)));
}
template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < N) out[i] = from_float<T>(gelu_scalar(to_float(inp[i])));
}
template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= N) return;
    const float s = 0.7978845608028654f, x = to_float(inp[i]);
    const float th = tanhf(s * (x + 0.044715f * x * x * x));
    const float local = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * s * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = from_float<T>(to_float(dinp[i]) + local * to_float(dout[i]));
}
template <typename T>
static void gelu_forward(T* out, const T* inp, size_t N) {
    GPU_LAUNCH(gelu_forward_kernel<T>, blocks_for(N), THREADS, 0, gpu::stream(), out, inp, N);
}
template <typename T>
static void gelu_backward(T* dinp, const T* inp, const T* dout, size_t N) {
    GPU_LAUNCH(gelu_backward_kernel<T>, blocks_for(N), THREADS, 0, gpu::stream(), dinp, inp, dout, N);
}

template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < N) out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}
template <typename T>
__global__ void residual_backward_kernel(T* da, T* db, const T* dout, size_t N) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= N) return;
    da[i] = from_float<T>(to_float(da[i]) + to_float(dout[i]));
    db[i] = from_float<T>(to_float(db[i]) + to_float(dout[i]));
}
template <typename T>
static void residual_forward(T* out, const T* a, const T* b, size_t N) {
    GPU_LAUNCH(residual_forward_kernel<T>, blocks_for(N), THREADS, 0, gpu::stream(), out, a, b, N);
}
template <typename T>
static void residual_backward(T* da, T* db, const T* dout, size_t N) {
    GPU_LAUNCH(residual_backward_kernel<T>, blocks_for(N), THREADS, 0, gpu::stream(), da, db, dout, N);
}

// columns V..Vp-1 of every logits row (fp32 in both precisions) are padding: zero, as on the CPU
__global__ void zero_padding_kernel(float* logits, int V, int Vp, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int pad = Vp - V;
    logits[(i / pad) * Vp + V + i % pad] = 0.0f;
}
static void zero_padding(float* logits, int rows, int V, int Vp) {
    if (Vp == V) return;
    size_t total = (size_t)rows * (Vp - V);
    GPU_LAUNCH(zero_padding_kernel, blocks_for(total), THREADS, 0, gpu::stream(), logits, V, Vp, total);
}

// The loss writes the logits' gradient over the fp32 logits (rows, Vp). The LM head's
// backward reads it as a GEMM operand of T: in bf16 it is rounded in place, each row into
// the first half of its own row's bytes (so the bf16 view has a row stride of 2 Vp). One
// block per row, a chunk of blockDim values at a time: every thread reads its value, the
// block waits, then every thread writes; a chunk's writes land at or before bytes its
// own reads already took, and never in another row.
template <typename T>
__global__ void narrow_rows_in_place_kernel(float* rows, int Vp) {
    float* x = rows + (size_t)blockIdx.x * Vp;
    T* y = reinterpret_cast<T*>(x);
    for (int base = 0; base < Vp; base += blockDim.x) {
        const int i = base + threadIdx.x;
        const float v = i < Vp ? x[i] : 0.0f;
        __syncthreads();
        if (i < Vp) y[i] = from_float<T>(v);
        __syncthreads();
    }
}
// dlogits (rows, Vp) fp32 -> the same memory as T, row stride *ld (Vp, or 2 Vp in bf16)
template <typename T>
static const T* narrow_logits_gradient(float* dlogits, int rows, int Vp, int* ld) {
    *ld = Vp * (int)(sizeof(float) / sizeof(T));
    if constexpr (is_fp32<T>()) return dlogits;
    else {
        if (rows) GPU_LAUNCH(narrow_rows_in_place_kernel<T>, rows, THREADS, 0, gpu::stream(), dlogits, Vp);
        return reinterpret_cast<const T*>(dlogits);
    }
}

}  // namespace gpu
