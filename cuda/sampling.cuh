// cuda/sampling.cuh — inference and sampling on the device: gpt_infer's, generate's and
// speculative_generate's twins, with a KV cache.
//
// gpu_infer runs new tokens through a model, storing their keys and values: a prefill
// (all prompts at once, causal attention through batched GEMMs) or a decode step (one
// token per row, attention over that row's cache). gpu_generate is generation_loop's
// (sampling.h) device-resident twin: after the prefill, every decode step runs on
// the device with no copy between host and device.
//
// Tricks worth knowing:
// - The KV cache holds exactly the positions this use needs (prompt + budget), not maxT.
// - Attention through the cache: one block per (new token, head), scores in shared
//   memory, max subtracted; each token attends over its own row's causal length only.
// - Sampling is a Gumbel-max draw, argmax(logits / t + G), whose noise is a hash of (row
//   seed, draw index, token id): counter-based, so a run is reproducible and a row's
//   samples do not depend on the batch. Greedy (t = 0) is the plain argmax, lowest id on
//   ties, as on the CPU. Sampled tokens differ from the CPU's (another generator, the
//   same distribution); greedy ones do not.
// - Decoding keeps one fixed shape: every row stays in its slot, and a finished row has
//   n_new = 0, which every inference kernel already treats as "nothing new here" (zero
//   input, no cache write, zero attention output). Token ids, positions, lengths and the
//   completions live on the device (advance_rows_kernel is generation_loop's bookkeeping);
//   the host reads one int, the number of rows still going, every FINISHED_CHECK_EVERY
//   steps, and the completions once at the end. The same kernels and cuBLAS calls on the
//   same pointers each step: with GKD_CUDA_GRAPHS=1 a decode step is captured once per
//   generation and replayed as one CUDA graph launch (off by default until run on a GPU).
// - With a GpuRecord (cuda/model.cuh), the prefill and each decode step also write their
//   activations where the training forward keeps them: an on-policy step's forward is
//   then packed down from sampling's, not run again.
// - A teacher's pass for a loss (head_at) runs its last layer's projection and MLP and
//   its LM head at the loss's positions alone, gathered.
// - Everything here is a template over T, the model's storage type (cuda/precision.cuh):
//   in bf16 the KV cache, the scratch and the recorded activations are bf16, the logits
//   that sampling draws from are fp32 (the LM head's GEMM writes them so).
// - Speculative sampling keeps both models' logits on the device: the shared host loop
//   gets draft tokens, three numbers a judged draft and the drawn tokens, and draws every
//   uniform from the row's generator in the CPU's order.
#pragma once
#include "common.cuh"
#include "layers.cuh"
#include "model.cuh"

namespace gpu {

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
// The noise of row r's d-th draw is a function of (keys[r], d, id) alone. Rows with
// going[r] == 0 are skipped (going may be null: every row draws).
__global__ void sample_kernel(int* tokens, const float* logits, int V, int Vp, double inv_temperature,
                              const uint64_t* keys, const int* draws, const int* going) {
    const int r = blockIdx.x;
    if (going && going[r] == 0) return;  // the whole block leaves together
    const float* x = logits + (size_t)r * Vp;
    const uint64_t key = inv_temperature > 0 ? mix64(keys[r] ^ mix64(0x5A3C0000ull + (uint64_t)draws[r])) : 0;
    double best = -INFINITY;
    int best_id = V;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        double score = inv_temperature > 0 ? (double)x[i] * inv_temperature - log(-log(uniform_open(key, i))) : (double)x[i];
        if (ranks_before(score, i, best, best_id)) { best = score; best_id = i; }
    }
    block_best(best, best_id);
    if (threadIdx.x == 0) tokens[r] = best_id < V ? best_id : 0;  // all NaN: token 0, as the CPU's argmax
}

// ---- inference with a KV cache

// Which row b and new position t position n of a pass is: rows padded to Tn (row0 null),
// or packed end to end, row b's new positions from row0[b] (Bn + 1, device).
__device__ inline void locate(size_t n, const int* row0, int Bn, int Tn, int& b, int& t) {
    if (row0) {
        b = row_containing(row0, Bn, n);
        t = (int)(n - row0[b]);
    } else {
        b = (int)(n / Tn);
        t = (int)(n % Tn);
    }
}

// x (N, C) = wte[token] + wpe[start[b] + t], zero in padded slots (t >= n_new[b])
template <typename T>
__global__ void encoder_infer_kernel(T* out, const int* tokens, const int* start, const int* n_new, const T* wte,
                                     const T* wpe, int Tn, int C, int V, size_t total, const int* row0, int Bn) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / C;
    int c = (int)(i % C), b, t, tok = tokens[n];
    locate(n, row0, Bn, Tn, b, t);
    out[i] = from_float<T>(t < n_new[b] && tok >= 0 && tok < V
                               ? to_float(wte[(size_t)tok * C + c]) + to_float(wpe[(size_t)(start[b] + t) * C + c])
                               : 0.0f);
}
// the keys and values of the new tokens into the cache (L, rows, capacity, C): layer l's slice
template <typename T>
__global__ void cache_store_kernel(T* kcache, T* vcache, const T* qkv, const int* cache_row, const int* start,
                                   const int* n_new, int Tn, int C, int capacity, size_t total, const int* row0, int Bn) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t n = i / C;
    int c = (int)(i % C), b, t;
    locate(n, row0, Bn, Tn, b, t);
    if (t >= n_new[b]) return;
    size_t slot = ((size_t)cache_row[b] * capacity + start[b] + t) * C + c;
    kcache[slot] = qkv[n * 3 * C + C + c];
    vcache[slot] = qkv[n * 3 * C + 2 * C + c];
}
// New tokens attending through the cache (a decode step, Tn = 1, or a speculative
// verification, Tn = K + 1): block (b * Tn + t, h) attends over the row's cached positions
// 0..start[b] + t, causal; scores in shared memory (capacity floats), max subtracted.
// With record_att (layer l's (B, NH, maxT, maxT) slab of a GpuRecord), each token's
// attention weights are also written where the training forward keeps them.
template <typename T>
__global__ void cached_attention_kernel(T* out, const T* qkv, const T* kcache, const T* vcache, const int* cache_row,
                                        const int* start, const int* n_new, int Tn, int C, int NH, int capacity,
                                        T* record_att, int record_maxT) {
    extern __shared__ float scores[];
    const int n = blockIdx.x, b = n / Tn, t = n % Tn, h = blockIdx.y, hs = C / NH;
    T* o = out + (size_t)n * C + h * hs;
    if (t >= n_new[b]) {
        for (int i = threadIdx.x; i < hs; i += blockDim.x) o[i] = from_float<T>(0.0f);
        return;
    }
    const int len = start[b] + t + 1;
    const T* q = qkv + (size_t)n * 3 * C + h * hs;
    const T* K = kcache + (size_t)cache_row[b] * capacity * C + h * hs;
    const T* Vc = vcache + (size_t)cache_row[b] * capacity * C + h * hs;
    const float scale = 1.0f / sqrtf((float)hs);
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const T* k = K + (size_t)j * C;
        float dot = 0;
        for (int i = 0; i < hs; i++) dot += to_float(q[i]) * to_float(k[i]);
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
    if (record_att) {
        T* row = record_att + (((size_t)cache_row[b] * NH + h) * record_maxT + (len - 1)) * record_maxT;
        for (int j = threadIdx.x; j < len; j += blockDim.x) row[j] = from_float<T>(scores[j] * inv);
    }
    for (int i = threadIdx.x; i < hs; i += blockDim.x) {
        float acc = 0;
        for (int j = 0; j < len; j++) acc += scores[j] * to_float(Vc[(size_t)j * C + i]);
        o[i] = from_float<T>(acc * inv);
    }
}
// out (count, C) = x[at[j]]: the positions (of the Bn * Tn) where a loss reads the logits
template <typename T>
__global__ void gather_rows_kernel(T* out, const T* x, const int* at, int C, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const size_t j = i / C;
    out[i] = x[(size_t)at[j] * C + i % C];
}
// ---- sampling's record: what a decode or prefill computes, where the training forward keeps it

// dst: layer l's slab of a (B, maxT, width) tensor of the record; row b's new positions
// t < n_new[b] of src (N, width) go to batch row cache_row[b], position start[b] + t
template <typename E>
__global__ void record_rows_kernel(E* dst, const E* src, int width, const int* cache_row, const int* start,
                                   const int* n_new, int Tn, int maxT, size_t total, const int* row0, int Bn) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const size_t n = i / width;
    const int c = (int)(i % width);
    int b, t;
    locate(n, row0, Bn, Tn, b, t);
    if (t >= n_new[b]) return;
    dst[((size_t)cache_row[b] * maxT + start[b] + t) * width + c] = src[i];
}
// the same for src (Bn, width) at each row's last new position (the LM head's rows)
template <typename E>
__global__ void record_last_kernel(E* dst, const E* src, int width, const int* cache_row, const int* start,
                                   const int* n_new, int maxT, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int b = (int)(i / width), c = (int)(i % width);
    if (n_new[b] == 0) return;
    dst[((size_t)cache_row[b] * maxT + start[b] + n_new[b] - 1) * width + c] = src[i];
}
// a prefill's attention weights, src (Bn, NH, Tn, Tn), into layer l's (B, NH, maxT, maxT) slab
// (every start is 0 in a prefill); the weights past a query's position stay the slab's zeros.
// (record_packed_attention_kernel: the same from a packed prefill's weights)
template <typename T>
__global__ void record_attention_kernel(T* dst, const T* src, const int* cache_row, const int* n_new, int NH,
                                        int Tn, int maxT, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int j = (int)(i % Tn), t = (int)(i / Tn % Tn), h = (int)(i / ((size_t)Tn * Tn) % NH);
    const int b = (int)(i / ((size_t)Tn * Tn * NH));
    if (t >= n_new[b] || j > t) return;
    dst[(((size_t)cache_row[b] * NH + h) * maxT + t) * maxT + j] = src[i];
}
template <typename T>
__global__ void record_packed_attention_kernel(T* dst, const T* src, const size_t* att_start, const int* cache_row,
                                               const int* n_new, int Bn, int NH, int maxT, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int b = row_containing(att_start, Bn, i), len = n_new[b];
    const size_t r = i - att_start[b], square = (size_t)len * len;
    const int h = (int)(r / square), t = (int)(r % square / len), j = (int)(r % len);
    if (j > t) return;
    dst[(((size_t)cache_row[b] * NH + h) * maxT + t) * maxT + j] = src[i];
}
// x_last (Bn, C) = x at row b's last new position (zeros for a row with none): the rows
// the LM head needs while sampling; x padded (Bn, Tn, C), or packed from row0 (device)
template <typename T>
__global__ void gather_last_kernel(T* out, const T* x, const int* n_new, int Tn, int C, size_t total,
                                   const int* row0) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    int b = (int)(i / C), c = (int)(i % C), t = max(n_new[b] - 1, 0);
    if (row0 && n_new[b] == 0) { out[i] = from_float<T>(0.0f); return; }
    out[i] = x[((row0 ? (size_t)row0[b] : (size_t)b * Tn) + t) * C + c];
}

// generation_loop's bookkeeping after a draw, one block over the Bn rows: row b, if still
// going (n_new[b] == 1), appends picked[b] to its completion (Bn, max_budget), and stays
// going unless it drew EOS or spent its budget. Its next decode input is that token at
// position prompt_length[b] + tokens before it. *going_count = the rows still going.
__global__ void advance_rows_kernel(int* completions, int* length, int* last_token, int* start, int* n_new,
                                    int* going_count, const int* picked, const int* prompt_length, const int* budget,
                                    int Bn, int max_budget, int eos) {
    int going = 0;
    for (int b = threadIdx.x; b < Bn; b += blockDim.x) {
        if (n_new[b] == 0) continue;
        const int token = picked[b], before = length[b];
        completions[(size_t)b * max_budget + before] = token;
        length[b] = before + 1;
        last_token[b] = token;
        start[b] = prompt_length[b] + before;
        const int on = token != eos && before + 1 < budget[b];
        n_new[b] = on;
        going += on;
    }
    going = block_sum(going);
    if (threadIdx.x == 0) *going_count = going;
}
}  // namespace gpu

// ----------------------------------------------------------------------------
// inference on the device: gpt_infer's twin, for the teacher and for sampling

template <typename T>
struct GpuKVCacheOf {
    int L = 0, rows = 0, capacity = 0, C = 0;  // positions held per row: what this use needs, not maxT
    DeviceBuffer<T> k, v;                     // (L, rows, capacity, C) each
    // Cached attention keeps a row's scores (capacity floats) in dynamic shared memory,
    // beside the kernel's static arrays: 48 KB in all, checked once here, not per step.
    void allocate(const GPTConfig& c, int nrows, int positions) {
        if (nrows <= rows && positions <= capacity && L == c.num_layers && C == c.channels) return;
        L = c.num_layers; C = c.channels;
        rows = std::max(rows, nrows);
        capacity = std::max(capacity, positions);
        cudaFuncAttributes attr;
        CUDA_CHECK(cudaFuncGetAttributes(&attr, (const void*)gpu::cached_attention_kernel<T>));
        GKD_ASSERT(attr.sharedSizeBytes + (size_t)capacity * sizeof(float) <= 48 * 1024,
                   "gpu_infer: cached attention keeps a row's scores in shared memory, 48 KB with its static arrays "
                   "(a context of at most about 12200)");
        k.release();  // free before allocating the larger one
        v.release();
        k.ensure((size_t)L * rows * capacity * C);
        v.ensure((size_t)L * rows * capacity * C);
    }
    T* keys(int l) const { return k.ptr + (size_t)l * rows * capacity * C; }
    T* values(int l) const { return v.ptr + (size_t)l * rows * capacity * C; }
};
using GpuKVCache = GpuKVCacheOf<float>;

// Reused across layers: a forward-only pass keeps no per-layer activations.
template <typename T>
struct GpuInferScratchOf {
    DeviceBuffer<T> x, ln, qkv, atty, proj, fch, attention, last;
    DeviceBuffer<float> mean, rstd;  // (Bn * Tn) a LayerNorm's statistics, when a record keeps them
    DeviceBuffer<T> head_atty;       // (head rows, C) the trimmed last layer's attention output
    DeviceBuffer<int> tokens, cache_row, start, n_new, head_at;
    DeviceBuffer<int> positions;     // (N) a packed pass's positions within their rows
    // x, ln, qkv, atty, proj, fch for N positions: (N, C | C | 3C | C | C | 4C)
    void ensure_rows(size_t N, int C) {
        x.ensure(N * C); ln.ensure(N * C); qkv.ensure(N * 3 * C); atty.ensure(N * C); proj.ensure(N * C);
        fch.ensure(N * 4 * C);
    }
    DeviceBuffer<int> row0;          // (Bn + 1) a packed prefill's rows: where each begins
    DeviceBuffer<size_t> att_start;  // (Bn + 1) ... and where its attention weights begin
};
using GpuInferScratch = GpuInferScratchOf<float>;

// Runs Tn new tokens per row (right-padded; row b has n_new[b]) through the model, storing
// their keys and values in the cache when there is one. Two cases: a prefill (every
// start[b] = 0: causal attention over the new tokens, batched GEMMs) and an extension of
// cached rows (a decode step, Tn = 1, or a speculative verification: attention over each
// row's cache, which already holds the new keys). logits (device):
// all_positions ? (Bn, Tn, Vp) : (Bn, Vp) at each row's last new token; with head_at
// (head_count positions of the Bn * Tn, on the device), (head_count, Vp) at those alone:
// the LM head runs where a loss reads it and nowhere else (gpt_infer's head_from).
// This one takes the per-row arrays on the device (tokens (Bn, Tn), cache_row, start,
// n_new (Bn)): no copy between host and device and nothing read back, so a decode step
// is enqueued (or captured) without waiting. The caller vouches for gpu_infer's checks:
// positions within the context and the cache; prefill iff every start is 0.
// packed (a prefill, with s.row0 and s.att_start uploaded for it): the rows' new tokens
// lie end to end, tokens (packed->N), and every layer runs on those positions alone.
template <typename T>
static void gpu_infer_on_device(const GpuModelOf<T>& m, not_deduced<GpuKVCacheOf<T>>* cache, GpuInferScratchOf<T>& s,
                                const int* tokens, const int* cache_row, const int* start, const int* n_new, int Bn,
                                int Tn, bool prefill, float* logits, bool all_positions, const int* head_at = nullptr,
                                int head_count = 0, not_deduced<GpuRecordOf<T>>* rec = nullptr,
                                const RowLayout* packed = nullptr) {
    const GPTConfig& c = m.config;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads;
    const int V = c.vocab_size, Vp = c.padded_vocab_size, N = packed ? packed->N : Bn * Tn;
    const int* row0 = packed ? s.row0.ptr : nullptr;
    GKD_ASSERT(!packed || (prefill && !all_positions && !head_at), "a packed pass of gpu_infer is a prefill");
    const ParameterTensors<T>& p = m.params;
    s.ensure_rows((size_t)N, C);
    T *x = s.x.ptr, *ln = s.ln.ptr, *qkv = s.qkv.ptr, *atty = s.atty.ptr, *proj = s.proj.ptr, *fch = s.fch.ptr;
    // a prefill attends with batched GEMMs (a lone first token through the cache when there is one)
    const bool gemm_attention = prefill && (Tn > 1 || !cache);
    const size_t att_size = packed ? packed->att() : (size_t)Bn * NH * Tn * Tn;
    T* scratch = gemm_attention ? s.attention.ensure(4 * (size_t)N * C + att_size) : nullptr;
    const size_t total = (size_t)N * C;
    GKD_ASSERT(!rec || (!head_at && !all_positions && rec->B >= Bn), "a record is kept by sampling's passes only");
    float* mean = rec ? s.mean.ensure(N) : nullptr;
    float* rstd = rec ? s.rstd.ensure(N) : nullptr;
    // with a record, its (B, maxT, width) tensor, at layer l's slab, gets these new
    // positions of src (N, width)
    using Acts = ActivationTensors<T, float>;
    // tensor: a member of Acts (of T, or a float statistic); src of its element type
    auto keep = [&](auto Acts::*tensor, int l, const auto* src, int width) {
        if (!rec) return;
        auto* slab = rec->acts.*tensor + (size_t)l * rec->B * rec->maxT * width;
        using E = std::remove_pointer_t<decltype(slab)>;
        const size_t n = (size_t)N * width;
        GPU_LAUNCH(gpu::record_rows_kernel<E>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), slab, (const E*)src,
            width, cache_row, start, n_new, Tn, rec->maxT, n, row0, Bn);
    };
    GPU_LAUNCH(gpu::encoder_infer_kernel<T>, gpu::blocks_for(total), gpu::THREADS, 0, gpu::stream(),
        x, tokens, start, n_new, p.wte, p.wpe, Tn, C, V, total, row0, Bn);
    keep(&Acts::encoded, 0, x, C);
    for (int l = 0; l < L; l++) {
        gpu::layernorm_forward(ln, mean, rstd, x, p.ln1w + l * C, p.ln1b + l * C, N, C);
        gpu::matmul_forward(qkv, ln, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, N, C, 3 * C, 3 * C);
        keep(&Acts::ln1, l, ln, C);
        keep(&Acts::ln1_mean, l, mean, 1);
        keep(&Acts::ln1_rstd, l, rstd, 1);
        keep(&Acts::qkv, l, qkv, 3 * C);
        T* record_att = rec ? rec->acts.att + (size_t)l * rec->B * NH * rec->maxT * rec->maxT : nullptr;
        if (cache) {
            GPU_LAUNCH(gpu::cache_store_kernel<T>, gpu::blocks_for(total), gpu::THREADS, 0, gpu::stream(),
                cache->keys(l), cache->values(l), qkv, cache_row, start, n_new, Tn, C, cache->capacity, total, row0, Bn);
        }
        if (gemm_attention) {
            // padded slots sit after each row's real tokens: causal attention never lets a real one see them
            T* att = scratch + 4 * (size_t)N * C;
            if (packed) {
                gpu::attention_forward(atty, att, qkv, scratch, *packed, C, NH);
                if (rec)
                    GPU_LAUNCH(gpu::record_packed_attention_kernel<T>, gpu::blocks_for(att_size), gpu::THREADS, 0,
                        gpu::stream(), record_att, att, s.att_start.ptr, cache_row, n_new, Bn, NH, rec->maxT, att_size);
            } else {
                gpu::attention_forward(atty, att, qkv, scratch, Bn, Tn, C, NH);
            }
            if (rec && !packed) {
                const size_t n = (size_t)Bn * NH * Tn * Tn;
                GPU_LAUNCH(gpu::record_attention_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), record_att,
                    att, cache_row, n_new, NH, Tn, rec->maxT, n);
            }
        } else {
            GPU_LAUNCH(gpu::cached_attention_kernel<T>, dim3(N, NH), 128, sizeof(float) * cache->capacity, gpu::stream(),
                atty, qkv, cache->keys(l), cache->values(l), cache_row, start, n_new, Tn, C, NH,
                cache->capacity, record_att, rec ? rec->maxT : 0);
        }
        keep(&Acts::atty, l, atty, C);
        // the last layer of a pass whose logits are wanted at head_at alone runs its
        // projection and MLP on those rows only (gpt_infer's trimmed last layer)
        int rows = N;
        if (head_at && l == L - 1) {
            if (head_count == 0) return;
            const size_t n = (size_t)head_count * C;
            T* atty_rows = s.head_atty.ensure(n);
            T* x_rows = s.last.ensure(n);
            GPU_LAUNCH(gpu::gather_rows_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), atty_rows,
                (const T*)atty, head_at, C, n);
            GPU_LAUNCH(gpu::gather_rows_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), x_rows,
                (const T*)x, head_at, C, n);
            atty = atty_rows;  // the rest of the layer, and the head, on those rows
            x = x_rows;
            rows = head_count;
        }
        const size_t part = (size_t)rows * C;
        gpu::matmul_forward(proj, atty, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, rows, C, C, C);
        gpu::residual_forward(x, x, proj, part);
        gpu::layernorm_forward(ln, mean, rstd, x, p.ln2w + l * C, p.ln2b + l * C, rows, C);
        gpu::matmul_forward(fch, ln, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, rows, C, 4 * C, 4 * C);
        keep(&Acts::residual2, l, x, C);
        keep(&Acts::ln2, l, ln, C);
        keep(&Acts::ln2_mean, l, mean, 1);
        keep(&Acts::ln2_rstd, l, rstd, 1);
        keep(&Acts::fch, l, fch, 4 * C);
        gpu::gelu_forward(fch, fch, part * 4);
        keep(&Acts::fch_gelu, l, fch, 4 * C);
        gpu::matmul_forward(proj, fch, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, rows, 4 * C, C, C);
        gpu::residual_forward(x, x, proj, part);
        keep(&Acts::residual3, l, x, C);
    }
    if (head_at) {  // x holds the head's rows already (the trimmed last layer)
        gpu::layernorm_forward(ln, nullptr, nullptr, x, p.lnfw, p.lnfb, head_count, C);
        gpu::matmul_forward(logits, ln, p.wte, (const T*)nullptr, head_count, C, V, Vp);
        gpu::zero_padding(logits, head_count, V, Vp);
    } else if (all_positions) {
        gpu::layernorm_forward(ln, nullptr, nullptr, x, p.lnfw, p.lnfb, N, C);
        gpu::matmul_forward(logits, ln, p.wte, (const T*)nullptr, N, C, V, Vp);
        gpu::zero_padding(logits, N, V, Vp);
    } else {
        T* last = s.last.ensure((size_t)Bn * C);
        GPU_LAUNCH(gpu::gather_last_kernel<T>, gpu::blocks_for((size_t)Bn * C), gpu::THREADS, 0, gpu::stream(),
            last, (const T*)x, n_new, Tn, C, (size_t)Bn * C, row0);
        gpu::layernorm_forward(ln, mean, rstd, (const T*)last, p.lnfw, p.lnfb, Bn, C);
        gpu::matmul_forward(logits, (const T*)ln, p.wte, (const T*)nullptr, Bn, C, V, Vp);
        gpu::zero_padding(logits, Bn, V, Vp);
        if (rec) {  // the LM head ran at each row's last new position
            auto keep_last = [&](auto* tensor, const auto* src, int width) {
                using E = std::remove_pointer_t<decltype(tensor)>;
                const size_t n = (size_t)Bn * width;
                GPU_LAUNCH(gpu::record_last_kernel<E>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), tensor,
                    (const E*)src, width, cache_row, start, n_new, rec->maxT, n);
            };
            keep_last(rec->acts.lnf, ln, C);
            keep_last(rec->acts.lnf_mean, mean, 1);
            keep_last(rec->acts.lnf_rstd, rstd, 1);
            keep_last(rec->acts.logits, logits, Vp);
        }
    }
}

// gpu_infer_on_device with the per-row arrays on the host: checked, then uploaded.
template <typename T>
static void gpu_infer(const GpuModelOf<T>& m, not_deduced<GpuKVCacheOf<T>>* cache, GpuInferScratchOf<T>& s,
                      const int* tokens, const int* cache_row, const int* start, const int* n_new, int Bn, int Tn,
                      float* logits, bool all_positions, const std::vector<int>* head_at = nullptr,
                      not_deduced<GpuRecordOf<T>>* rec = nullptr) {
    const GPTConfig& c = m.config;
    bool prefill = true;
    for (int b = 0; b < Bn; b++) {
        GKD_ASSERT(start[b] + n_new[b] <= c.max_seq_len, "sequence past the context");
        GKD_ASSERT(!cache || (cache_row[b] < cache->rows && start[b] + n_new[b] <= cache->capacity), "KV cache too small");
        prefill = prefill && start[b] == 0;
    }
    GKD_ASSERT(prefill || cache, "gpu_infer: tokens after position 0 attend through a KV cache");
    s.cache_row.upload(cache_row, Bn);
    s.start.upload(start, Bn);
    s.n_new.upload(n_new, Bn);
    // a prefill of several tokens a row that wants the last logits only (sampling's, the
    // drafts') runs packed: the rows' tokens end to end, no position spent on padding
    if (prefill && Tn > 1 && !all_positions && !head_at) {
        std::vector<int> packed_tokens, row0(1, 0);
        for (int b = 0; b < Bn; b++) {
            packed_tokens.insert(packed_tokens.end(), tokens + (size_t)b * Tn, tokens + (size_t)b * Tn + n_new[b]);
            row0.push_back((int)packed_tokens.size());
        }
        const RowLayout rows = RowLayout::packed(row0.data(), Bn, c.num_heads);
        if (rows.N == 0) return;
        s.tokens.upload(packed_tokens);
        s.row0.upload(row0);
        s.att_start.upload(rows.att_start);
        gpu_infer_on_device(m, cache, s, s.tokens.ptr, s.cache_row.ptr, s.start.ptr, s.n_new.ptr, Bn, Tn, prefill,
                            logits, false, nullptr, 0, rec, &rows);
        return;
    }
    s.tokens.upload(tokens, (size_t)Bn * Tn);
    if (head_at && head_at->empty() && !cache) return;  // no logits wanted, nothing kept: nothing to run
    if (head_at) {
        for (int at : *head_at) GKD_ASSERT(at >= 0 && at < Bn * Tn && at % Tn < n_new[at / Tn], "a head position off the rows");
        s.head_at.upload(*head_at);
    }
    gpu_infer_on_device(m, cache, s, s.tokens.ptr, s.cache_row.ptr, s.start.ptr, s.n_new.ptr, Bn, Tn, prefill, logits,
                        all_positions, head_at ? s.head_at.ptr : nullptr, head_at ? (int)head_at->size() : 0, rec);
}

// A forward pass with no KV cache over a packed batch (a teacher's pass for the loss, or
// evaluation's logits): tokens (N) on the host, B rows from row_start (B + 1), no
// padding anywhere; gpt_infer's packed pass (model.h) on the device. logits (device): (N, Vp)
// at every position, or with head_at (positions of the N, on the host) (head_at.size(),
// Vp) at those alone, the last layer's projection, MLP and LM head run on those rows only.
template <typename T>
static void gpu_infer_packed(const GpuModelOf<T>& m, GpuInferScratchOf<T>& s, const int* tokens, const int* row_start,
                             int B, float* logits, const std::vector<int>* head_at = nullptr) {
    const GPTConfig& c = m.config;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    const RowLayout rows = RowLayout::packed(row_start, B, NH);
    const int N = rows.N;
    GKD_ASSERT(rows.T <= c.max_seq_len, "sequence past the context");
    if (head_at && head_at->empty()) return;
    s.tokens.upload(tokens, N);
    s.positions.upload(rows.positions());
    if (head_at) {
        for (int at : *head_at) GKD_ASSERT(at >= 0 && at < N, "a head position off the rows");
        s.head_at.upload(*head_at);
    }
    const ParameterTensors<T>& p = m.params;
    s.ensure_rows((size_t)N, C);
    T *x = s.x.ptr, *ln = s.ln.ptr, *qkv = s.qkv.ptr, *atty = s.atty.ptr, *proj = s.proj.ptr, *fch = s.fch.ptr;
    T* scratch = s.attention.ensure(gpu::attention_scratch_size(N, 1, C, NH) + rows.att());
    T* att = scratch + gpu::attention_scratch_size(N, 1, C, NH);  // (A) a layer's weights, overwritten by the next
    gpu::encoder_forward(x, s.tokens.ptr, s.positions.ptr, p.wte, p.wpe, N, C);
    for (int l = 0; l < L; l++) {
        gpu::layernorm_forward(ln, (float*)nullptr, (float*)nullptr, x, p.ln1w + l * C, p.ln1b + l * C, N, C);
        gpu::matmul_forward(qkv, ln, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, N, C, 3 * C, 3 * C);
        gpu::attention_forward(atty, att, qkv, scratch, rows, C, NH);
        // the last layer of a pass whose logits are wanted at head_at alone runs its
        // projection and MLP on those rows only (gpt_infer's trimmed last layer)
        int n_rows = N;
        if (head_at && l == L - 1) {
            n_rows = (int)head_at->size();
            const size_t n = (size_t)n_rows * C;
            T* atty_rows = s.head_atty.ensure(n);
            T* x_rows = s.last.ensure(n);
            GPU_LAUNCH(gpu::gather_rows_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), atty_rows,
                (const T*)atty, s.head_at.ptr, C, n);
            GPU_LAUNCH(gpu::gather_rows_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), x_rows,
                (const T*)x, s.head_at.ptr, C, n);
            atty = atty_rows;
            x = x_rows;
        }
        const size_t part = (size_t)n_rows * C;
        gpu::matmul_forward(proj, atty, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, n_rows, C, C, C);
        gpu::residual_forward(x, x, proj, part);
        gpu::layernorm_forward(ln, (float*)nullptr, (float*)nullptr, x, p.ln2w + l * C, p.ln2b + l * C, n_rows, C);
        gpu::matmul_forward(fch, ln, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, n_rows, C, 4 * C, 4 * C);
        gpu::gelu_forward(fch, fch, part * 4);
        gpu::matmul_forward(proj, fch, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, n_rows, 4 * C, C, C);
        gpu::residual_forward(x, x, proj, part);
    }
    const int head_rows = head_at ? (int)head_at->size() : N;
    gpu::layernorm_forward(ln, (float*)nullptr, (float*)nullptr, x, p.lnfw, p.lnfb, head_rows, C);
    gpu::matmul_forward(logits, ln, p.wte, (const T*)nullptr, head_rows, C, V, Vp);
    gpu::zero_padding(logits, head_rows, V, Vp);
}

// Reusable device buffers for batched generation from one model.
template <typename T>
struct GpuGeneratorOf {
    GpuKVCacheOf<T> cache;
    GpuInferScratchOf<T> scratch;
    DeviceBuffer<float> logits;                          // (Bn, Vp) each row's next-token logits
    // the decode state (gpu_generate), one slot per row for the whole generation
    DeviceBuffer<int> picked;                            // (Bn) the tokens just drawn
    DeviceBuffer<int> last_token, cache_row, start, n_new;  // (Bn) the next decode step's input
    DeviceBuffer<int> length, prompt_length, budget;     // (Bn) tokens generated so far, and the limits
    DeviceBuffer<int> completions;                       // (Bn, max budget)
    DeviceBuffer<int> going;                             // (1) rows still going
    DeviceBuffer<uint64_t> keys;                         // (Bn) each row's noise key
    // Decode steps as one CUDA graph (GKD_CUDA_GRAPHS=1; off by default until a GPU has run
    // it): captured at each generation's first decode step, replayed for the others.
    bool use_graph = getenv("GKD_CUDA_GRAPHS") && std::string(getenv("GKD_CUDA_GRAPHS")) == "1";
    bool graph_failed = false;           // a capture failed: plain launches from then on (one warning)
    cudaStream_t graph_stream = nullptr;
    GpuGeneratorOf() = default;
    GpuGeneratorOf(const GpuGeneratorOf&) = delete;
    GpuGeneratorOf& operator=(const GpuGeneratorOf&) = delete;
    ~GpuGeneratorOf() {
        if (graph_stream) cudaStreamDestroy(graph_stream);
    }
};
using GpuGenerator = GpuGeneratorOf<float>;

// How many decode steps run between two looks at the number of rows still going: each
// look waits for the device. A look every 8 steps runs up to 7 steps of finished rows
// (masked, so harmless) at the end of a generation.
constexpr int FINISHED_CHECK_EVERY = 8;

// generate's twin, with the same results (greedy: the CPU's tokens; sampled: the draws of
// row b depend on (seed, stream, row_ids[b]) and the draw's index only). generation_loop's
// bookkeeping runs on the device (advance_rows_kernel): one upload of the prompts and
// the decode state, then per step a decode, a draw and the bookkeeping with no copy, and
// the completions downloaded at the end. With g.use_graph, that step is a CUDA graph:
// its Bn, pointers and shapes are the same at every step of one generation, so it is
// captured once per call (a cache or scratch buffer may have grown since the last), after
// one plain step on the graph's stream (the warm-up), and replayed with one launch per
// step; a capture that fails leaves a warning and plain launches.
template <typename T>
static std::vector<std::vector<int>> gpu_generate(const GpuModelOf<T>& m, GpuGeneratorOf<T>& g,
                                                  const std::vector<const std::vector<int>*>& prompts,
                                                  const std::vector<int>& budgets, double temperature, int eos,
                                                  uint64_t seed, uint64_t stream, const std::vector<uint64_t>& row_ids,
                                                  not_deduced<GpuRecordOf<T>>* rec = nullptr) {
    const int Bn = (int)prompts.size(), Vp = m.config.padded_vocab_size, V = m.config.vocab_size;
    if (Bn == 0) return {};
    int Pmax = 0, longest = 0, max_budget = 0;
    for (int b = 0; b < Bn; b++) {
        const int P = (int)prompts[b]->size();
        GKD_ASSERT(budgets[b] >= 1 && P + budgets[b] <= m.config.max_seq_len, "budget past the context");
        Pmax = std::max(Pmax, P);
        longest = std::max(longest, P + budgets[b]);
        max_budget = std::max(max_budget, budgets[b]);
    }
    // the prefill: every prompt at once, right-padded, through gpu_infer (its one upload)
    std::vector<int> tokens((size_t)Bn * Pmax, eos), rows(Bn), zeros(Bn, 0), prompt_length(Bn), ones(Bn, 1);
    std::vector<uint64_t> keys(Bn);
    for (int b = 0; b < Bn; b++) {
        std::copy(prompts[b]->begin(), prompts[b]->end(), tokens.begin() + (size_t)b * Pmax);
        rows[b] = b;
        prompt_length[b] = (int)prompts[b]->size();
        keys[b] = derive_seed(seed, stream, row_ids[b]);
    }
    g.cache.allocate(m.config, Bn, longest);
    float* logits = g.logits.ensure((size_t)Bn * Vp);
    GKD_ASSERT(!rec || (rec->B == Bn && rec->maxT >= longest - 1), "a record shaped for another generation");
    gpu_infer(m, &g.cache, g.scratch, tokens.data(), rows.data(), zeros.data(), prompt_length.data(), Bn, Pmax, logits,
              false, nullptr, rec);
    // the decode state, uploaded once: every row going, nothing generated yet
    g.cache_row.upload(rows);
    g.start.upload(zeros);
    g.n_new.upload(ones);
    g.length.upload(zeros);
    g.prompt_length.upload(prompt_length);
    g.budget.upload(budgets);
    g.keys.upload(keys);
    int* picked = g.picked.ensure(Bn);
    int* last_token = g.last_token.ensure(Bn);
    int* completions = g.completions.ensure((size_t)Bn * max_budget);
    int* going = g.going.ensure(1);
    const double inv_t = temperature > 0 ? 1.0 / temperature : 0.0;
    auto draw = [&] {  // each going row's next token, then the bookkeeping
        GPU_LAUNCH(gpu::sample_kernel, Bn, gpu::THREADS, 0, gpu::stream(), picked, logits, V, Vp, inv_t, g.keys.ptr,
            g.length.ptr, g.n_new.ptr);
        GPU_LAUNCH(gpu::advance_rows_kernel, 1, gpu::THREADS, 0, gpu::stream(), completions, g.length.ptr, last_token,
            g.start.ptr, g.n_new.ptr, going, picked,
            g.prompt_length.ptr, g.budget.ptr, Bn,
            max_budget, eos);
    };
    auto decode_and_draw = [&] {  // one token per going row at its position; finished rows masked (n_new = 0)
        gpu_infer_on_device(m, &g.cache, g.scratch, last_token, g.cache_row.ptr, g.start.ptr, g.n_new.ptr, Bn, 1, false,
                            logits, false, nullptr, 0, rec);
        draw();
    };
    cudaGraphExec_t graph = nullptr;
    bool warmed_up = false;
    if (g.use_graph && !g.graph_stream) CUDA_CHECK(cudaStreamCreate(&g.graph_stream));
    try {
        draw();  // the first token, from the prefill's logits
        for (int step = 1; step < max_budget; step++) {
            if (step % FINISHED_CHECK_EVERY == 0) {
                int still_going = 0;
                download(&still_going, going, 1);  // waits for the device: the only look per FINISHED_CHECK_EVERY steps
                if (still_going == 0) break;
            }
            if (!g.use_graph || g.graph_failed) {
                decode_and_draw();
                continue;
            }
            if (!graph && !warmed_up) {  // the first step runs plainly, on the graph's stream
                gpu::StreamScope on(g.graph_stream);
                decode_and_draw();
                warmed_up = true;
                continue;
            }
            if (!graph) {
                try {
                    graph = gpu::capture_graph(g.graph_stream, decode_and_draw);
                } catch (const GkdError& e) {
                    cudaGetLastError();  // the failed capture's error is not the next call's
                    fprintf(stderr, "gkd: warning: decode steps could not be captured as a CUDA graph (%s); "
                                    "running them as plain launches\n", e.what());
                    g.graph_failed = true;
                    decode_and_draw();
                    continue;
                }
            }
            CUDA_CHECK(cudaGraphLaunch(graph, g.graph_stream));
        }
    } catch (...) {
        if (graph) cudaGraphExecDestroy(graph);
        throw;
    }
    if (graph) CUDA_CHECK(cudaGraphExecDestroy(graph));
    std::vector<int> length(Bn), flat((size_t)Bn * max_budget);
    download(length.data(), g.length.ptr, Bn);
    download(flat.data(), completions, flat.size());
    std::vector<std::vector<int>> out(Bn);
    for (int b = 0; b < Bn; b++)
        out[b].assign(flat.begin() + (size_t)b * max_budget, flat.begin() + (size_t)b * max_budget + length[b]);
    if (rec) {
        rec->rows.resize(Bn);
        for (int b = 0; b < Bn; b++) {
            rec->rows[b] = *prompts[b];
            rec->rows[b].insert(rec->rows[b].end(), out[b].begin(), out[b].end());
        }
        rec->ready = true;
    }
    return out;
}

namespace gpu {

// ---- speculative sampling's judging on the device (speculative.h's judge_drafts)

// draw_from's and pick_token's walk: the first id (in id order) at which the running sum of
// w passes `target`, or `fallback` when rounding leaves none. Each thread sums a contiguous
// chunk of the ids, thread 0 takes the chunks' prefix in order, each thread walks its own
// chunk from its prefix, and the first chunk that crossed wins: the CPU's sum, in chunks.
template <typename Weight>
__device__ int block_inverse_cdf(Weight w, int V, double target, int fallback) {
    __shared__ double prefix[THREADS];
    __shared__ int crossed[THREADS];
    __shared__ int result[1];
    const int per = (V + blockDim.x - 1) / blockDim.x;
    const int lo = min(V, (int)threadIdx.x * per), hi = min(V, lo + per);
    double sum = 0;
    for (int i = lo; i < hi; i++) sum += w(i);
    prefix[threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double running = 0;
        for (int t = 0; t < (int)blockDim.x; t++) { const double x = prefix[t]; prefix[t] = running; running += x; }
    }
    __syncthreads();
    double cum = prefix[threadIdx.x];
    int at = V;
    for (int i = lo; i < hi && at == V; i++) {
        cum += w(i);
        if (cum > target) at = i;
    }
    crossed[threadIdx.x] = at;
    __syncthreads();
    if (threadIdx.x == 0) {
        result[0] = fallback;
        for (int t = 0; t < (int)blockDim.x; t++)
            if (crossed[t] < V) { result[0] = crossed[t]; break; }
    }
    __syncthreads();
    return result[0];
}
// the first largest of x[0..V) (the lowest id on ties, as the CPU's argmax), to every thread
__device__ inline int block_argmax(const float* x, int V) {
    float v = -INFINITY;
    int id = V;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (x[i] > v || (x[i] == v && i < id)) { v = x[i]; id = i; }
    block_best(v, id);
    return id < V ? id : 0;
}
// sum_i exp((x_i - x_best) / t): token_distribution's normaliser
__device__ inline double block_softmax_total(const float* x, int V, int best, double t) {
    double z = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) z += exp(((double)x[i] - x[best]) / t);
    return block_sum(z);
}

// A draft step's rows: row r's logits kept in store (slot[r] of (Bn K, Vp)) for the judging,
// and its next draft token drawn as pick_token draws it, from u[r] (the row's generator's
// uniform, drawn on the host; unused at temperature 0).
__global__ void draft_pick_kernel(const float* logits, int Vp, int V, double temperature, const double* u,
                                  const int* slot, float* store, int* picked) {
    const float* x = logits + (size_t)blockIdx.x * Vp;
    float* kept = store + (size_t)slot[blockIdx.x] * Vp;
    for (int i = threadIdx.x; i < Vp; i += blockDim.x) kept[i] = x[i];
    const int best = block_argmax(x, V);
    if (temperature == 0.0) {
        if (threadIdx.x == 0) picked[blockIdx.x] = best;
        return;  // the whole block leaves together
    }
    auto w = [&](int i) { return exp(((double)x[i] - x[best]) / temperature); };
    const double total = block_softmax_total(x, V, best, temperature);
    const int token = block_inverse_cdf(w, V, u[blockIdx.x] * total, best);
    if (threadIdx.x == 0) picked[blockIdx.x] = token;
}

// What the judging of one draft reads (judge_drafts): the target's p and the draft's q at
// temperature t (one-hot at the argmax when t = 0) at draft position i of row r, and
// out (3) = p(d), q(d), sum_x min(p(x), q(x)). One block per judged position.
struct JudgeArgs {
    const float* target = nullptr;  // (n, Tn, Vp_target) the verification's logits
    const float* store = nullptr;   // (Bn K, Vp_draft) the draft's, slot b K + i
    int Tn = 0, Vp_target = 0, Vp_draft = 0, K = 0, V = 0;
    double temperature = 0;
    const int* r = nullptr;         // (positions) the verification row
    const int* b = nullptr;         // (positions) its batch row
    const int* i = nullptr;         // (positions) the draft position
    const int* token = nullptr;     // (positions) the draft token d, or (draws) -1 for a bonus draw
    const double* u = nullptr;      // (draws) the row's uniform for the draw
};
__global__ void judge_kernel(JudgeArgs a, double* out) {
    const int j = blockIdx.x, d = a.token[j];
    const float* p = a.target + ((size_t)a.r[j] * a.Tn + a.i[j]) * a.Vp_target;
    const float* q = a.store + ((size_t)a.b[j] * a.K + a.i[j]) * a.Vp_draft;
    const int bp = block_argmax(p, a.V), bq = block_argmax(q, a.V);
    if (a.temperature == 0.0) {
        if (threadIdx.x == 0) {
            out[3 * j] = d == bp;
            out[3 * j + 1] = d == bq;
            out[3 * j + 2] = bp == bq;
        }
        return;
    }
    const double t = a.temperature;
    const double zp = block_softmax_total(p, a.V, bp, t), zq = block_softmax_total(q, a.V, bq, t);
    double overlap = 0;
    for (int x = threadIdx.x; x < a.V; x += blockDim.x)
        overlap += fmin(exp(((double)p[x] - p[bp]) / t) / zp, exp(((double)q[x] - q[bq]) / t) / zq);
    overlap = block_sum(overlap);
    if (threadIdx.x == 0) {
        out[3 * j] = exp(((double)p[d] - p[bp]) / t) / zp;
        out[3 * j + 1] = exp(((double)q[d] - q[bq]) / t) / zq;
        out[3 * j + 2] = overlap;
    }
}
// The token after a row's judged drafts: a draw from the residual max(0, p - q) at the first
// refused one, or (token -1) the bonus draw from p after the last, as draw_from draws with
// the row's uniform u. One block per row that draws.
__global__ void residual_draw_kernel(JudgeArgs a, int* drawn) {
    const int j = blockIdx.x;
    const bool bonus = a.token[j] < 0;
    const float* p = a.target + ((size_t)a.r[j] * a.Tn + a.i[j]) * a.Vp_target;
    const float* q = bonus ? p : a.store + ((size_t)a.b[j] * a.K + a.i[j]) * a.Vp_draft;
    const int bp = block_argmax(p, a.V), bq = block_argmax(q, a.V);
    if (a.temperature == 0.0) {  // one-hots: the residual, and the bonus, is p's argmax
        if (threadIdx.x == 0) drawn[j] = bp;
        return;
    }
    const double t = a.temperature;
    const double zp = block_softmax_total(p, a.V, bp, t), zq = bonus ? 1.0 : block_softmax_total(q, a.V, bq, t);
    auto w = [&](int x) {
        const double px = exp(((double)p[x] - p[bp]) / t) / zp;
        return bonus ? px : fmax(0.0, px - exp(((double)q[x] - q[bq]) / t) / zq);
    };
    double total = 0;
    for (int x = threadIdx.x; x < a.V; x += blockDim.x) total += w(x);
    total = block_sum(total);
    const int token = block_inverse_cdf(w, a.V, a.u[j] * total, 0);
    if (threadIdx.x == 0) drawn[j] = token;
}
}  // namespace gpu

// The GPU's models for speculative_loop (CpuSpeculativeModels' twin): both models' passes on
// the device, their logits kept there. A draft step brings back one token a row; the
// judging brings back three numbers a judged draft (p(d), q(d), the overlap), walks them on
// the host with each row's generator in judge_drafts' order, and brings back one drawn
// token a row. So a round moves ids and a few doubles across PCIe, never a logit row.
template <typename T>
struct GpuSpeculativeModels {
    const GpuModelOf<T>& draft_model;
    GpuGeneratorOf<T>& dg;
    const GpuModelOf<T>& target_model;
    GpuGeneratorOf<T>& tg;
    double temperature;
    int V, K, Vp_draft, Vp_target, Tn_target = 0;
    DeviceBuffer<float> store;      // (Bn K, Vp_draft) the logits behind each row's drafts
    DeviceBuffer<double> uniforms, judged;
    DeviceBuffer<int> slots, picked, pos_r, pos_b, pos_i, pos_token, drawn;
    GpuSpeculativeModels(const GpuModelOf<T>& d, GpuGeneratorOf<T>& dgen, const GpuModelOf<T>& t,
                         GpuGeneratorOf<T>& tgen, double temp, int Bn, int drafts)
        : draft_model(d), dg(dgen), target_model(t), tg(tgen), temperature(temp), V(d.config.vocab_size),
          K(std::max(drafts, 1)), Vp_draft(d.config.padded_vocab_size), Vp_target(t.config.padded_vocab_size) {
        store.ensure((size_t)Bn * K * Vp_draft);
    }

    std::vector<int> draft(const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn,
                           const std::vector<int>& rows, int i, std::vector<Rng>& rngs) {
        float* logits = dg.logits.ensure((size_t)n * Vp_draft);
        gpu_infer(draft_model, &dg.cache, dg.scratch, tokens, cache_row, start, n_new, n, Tn, logits, false);
        if (rows.empty()) return {};
        std::vector<double> u(n, 0.0);
        std::vector<int> slot(n), out(n);
        for (int r = 0; r < n; r++) {
            if (temperature > 0) u[r] = rngs[rows[r]].uniform();  // pick_token's one uniform, in its order
            slot[r] = rows[r] * K + i;
        }
        uniforms.upload(u);
        slots.upload(slot);
        GPU_LAUNCH(gpu::draft_pick_kernel, n, gpu::THREADS, 0, gpu::stream(), (const float*)logits, Vp_draft, V,
                   temperature, uniforms.ptr, slots.ptr, store.ptr, picked.ensure(n));
        download(out.data(), picked.ptr, n);
        return out;
    }
    void target(const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn,
                bool all_positions) {
        float* logits = tg.logits.ensure((size_t)n * (all_positions ? Tn : 1) * Vp_target);
        gpu_infer(target_model, &tg.cache, tg.scratch, tokens, cache_row, start, n_new, n, Tn, logits, all_positions);
        Tn_target = Tn;
    }
    gpu::JudgeArgs args() const {
        gpu::JudgeArgs a;
        a.target = tg.logits.ptr; a.store = store.ptr; a.Tn = Tn_target; a.Vp_target = Vp_target;
        a.Vp_draft = Vp_draft; a.K = K; a.V = V; a.temperature = temperature;
        return a;
    }
    // judge_drafts for every row: its per-position numbers from the device, the keep-or-refuse
    // walk on the host (the row's uniforms in judge_drafts' order), then the draws
    std::vector<int> judge(const std::vector<int>& active, const std::vector<std::vector<int>>& drafts,
                           std::vector<Rng>& rngs, std::vector<std::vector<int>>& kept, SpeculativeStats& stats) {
        const int n = (int)active.size();
        std::vector<int> r_of, b_of, i_of, token;
        auto add = [&](int r, int i, int t) {
            r_of.push_back(r); b_of.push_back(active[r]); i_of.push_back(i); token.push_back(t);
        };
        for (int r = 0; r < n; r++)
            for (int i = 0; i < (int)drafts[active[r]].size(); i++) add(r, i, drafts[active[r]][i]);
        const int positions = (int)r_of.size();
        std::vector<double> numbers(3 * (size_t)positions);
        if (positions) {
            pos_r.upload(r_of); pos_b.upload(b_of); pos_i.upload(i_of); pos_token.upload(token);
            gpu::JudgeArgs a = args();
            a.r = pos_r.ptr; a.b = pos_b.ptr; a.i = pos_i.ptr; a.token = pos_token.ptr;
            GPU_LAUNCH(gpu::judge_kernel, positions, gpu::THREADS, 0, gpu::stream(), a,
                       judged.ensure(numbers.size()));
            download(numbers.data(), judged.ptr, numbers.size());
        }
        std::vector<int> accepted(n);
        std::vector<double> u;
        kept.assign(n, {});
        r_of.clear(); b_of.clear(); i_of.clear(); token.clear();
        for (int r = 0, j = 0; r < n; r++) {
            const int b = active[r], k = (int)drafts[b].size();
            int i = 0;
            for (; i < k; i++, j++) {
                const double p = numbers[3 * (size_t)j], q = numbers[3 * (size_t)j + 1];
                stats.judged++;
                stats.expected_sum += numbers[3 * (size_t)j + 2];
                const double ui = rngs[b].uniform();  // one a judged draft, as judge_drafts
                if (!(p >= q || ui * q < p)) break;
                stats.accepted++;
                kept[r].push_back(drafts[b][i]);
            }
            accepted[r] = i;
            add(r, i, i < k ? drafts[b][i] : -1);  // the residual at the refused one, or the bonus
            u.push_back(rngs[b].uniform());       // draw_from's uniform
            j += i < k ? k - i : 0;               // the positions after a refusal are not judged
        }
        pos_r.upload(r_of); pos_b.upload(b_of); pos_i.upload(i_of); pos_token.upload(token);
        uniforms.upload(u);
        gpu::JudgeArgs a = args();
        a.r = pos_r.ptr; a.b = pos_b.ptr; a.i = pos_i.ptr; a.token = pos_token.ptr; a.u = uniforms.ptr;
        std::vector<int> tokens(n);
        GPU_LAUNCH(gpu::residual_draw_kernel, n, gpu::THREADS, 0, gpu::stream(), a, drawn.ensure(n));
        download(tokens.data(), drawn.ptr, n);
        for (int r = 0; r < n; r++) kept[r].push_back(tokens[r]);
        return accepted;
    }
};

// speculative_generate's twin (speculative.h): the same speculative_loop, on GpuSpeculativeModels.
// Greedy outputs match the CPU's; sampled ones come from the same generators, in the same
// order, and differ only where the two devices' logits or sums round differently.
template <typename T>
static std::vector<std::vector<int>> gpu_speculative_generate(const GpuModelOf<T>& draft, GpuGeneratorOf<T>& dg,
                                                              const GpuModelOf<T>& target, GpuGeneratorOf<T>& tg,
                                                              const std::vector<const std::vector<int>*>& prompts,
                                                              const std::vector<int>& budgets, int K,
                                                              double temperature, int eos, uint64_t seed,
                                                              uint64_t stream, const std::vector<uint64_t>& row_ids,
                                                              SpeculativeStats& stats) {
    const int Bn = (int)prompts.size();
    if (Bn == 0) return {};
    GKD_ASSERT(draft.config.vocab_size == target.config.vocab_size, "speculative sampling: vocabularies differ");
    int longest = 0;
    for (int b = 0; b < Bn; b++) longest = std::max(longest, (int)prompts[b]->size() + budgets[b]);
    dg.cache.allocate(draft.config, Bn, std::min(longest, draft.config.max_seq_len));
    tg.cache.allocate(target.config, Bn, std::min(longest, target.config.max_seq_len));
    std::vector<Rng> rngs = row_generators(seed, stream, row_ids);
    GpuSpeculativeModels<T> models(draft, dg, target, tg, temperature, Bn, K);
    return speculative_loop(prompts, budgets, K, eos, rngs, models, stats);
}
