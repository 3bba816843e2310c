// cuda/sampling.cuh — inference and sampling on the device: gpt_infer's and generate's
// twins, with a KV cache.
//
// gpu_infer runs new tokens through a model, storing their keys and values: a prefill
// (all prompts at once, causal attention through batched GEMMs) or a decode step (one
// token per row, attention over that row's cache). gpu_generate drives it through the same
// generation_loop as the CPU's generate (gkd.cu section 2), so the bookkeeping of which
// rows are still going is written once.
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
// - Only the B new token ids come back per decode step; no logits are copied to the host.
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
// New tokens attending through the cache (a decode step, Tn = 1, or a speculative
// verification, Tn = K + 1): block (b * Tn + t, h) attends over the row's cached positions
// 0..start[b] + t, causal; scores in shared memory (capacity floats), max subtracted.
__global__ void cached_attention_kernel(float* out, const float* qkv, const float* kcache, const float* vcache,
                                        const int* cache_row, const int* start, const int* n_new, int Tn, int C,
                                        int NH, int capacity) {
    extern __shared__ float scores[];
    const int n = blockIdx.x, b = n / Tn, t = n % Tn, h = blockIdx.y, hs = C / NH;
    float* o = out + (size_t)n * C + h * hs;
    if (t >= n_new[b]) {
        for (int i = threadIdx.x; i < hs; i += blockDim.x) o[i] = 0.0f;
        return;
    }
    const int len = start[b] + t + 1;
    const float* q = qkv + (size_t)n * 3 * C + h * hs;
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
// their keys and values in the cache when there is one. Two cases: a prefill (every
// start[b] = 0: causal attention over the new tokens, batched GEMMs) and an extension of
// cached rows (a decode step, Tn = 1, or a speculative verification: attention over each
// row's cache, which already holds the new keys). logits (device):
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
    GKD_ASSERT(prefill || cache, "gpu_infer: tokens after position 0 attend through a KV cache");
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
               "gpu_infer: cached attention keeps a row's scores in 48 KB of shared memory (context <= 12288)");
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
            gpu::cached_attention_kernel<<<dim3(N, NH), 128, sizeof(float) * cache->capacity>>>(
                atty, qkv, cache->keys(l), cache->values(l), s.cache_row.ptr, s.start.ptr, s.n_new.ptr, Tn, C, NH,
                cache->capacity);
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

// speculative_generate's twin (speculative.h): the same speculative_loop, the forward passes
// on the device and their logits brought to the host, where the judging and every draw
// happen. So greedy outputs match the CPU's; sampled ones come from the same generators,
// and differ only where the two devices' logits round differently.
static std::vector<std::vector<int>> gpu_speculative_generate(const GpuModel& draft, GpuGenerator& dg,
                                                              const GpuModel& target, GpuGenerator& tg,
                                                              const std::vector<const std::vector<int>*>& prompts,
                                                              const std::vector<int>& budgets, int K,
                                                              double temperature, int eos, uint64_t seed,
                                                              uint64_t stream, const std::vector<uint64_t>& row_ids,
                                                              SpeculativeStats& stats) {
    const int Bn = (int)prompts.size(), Vpd = draft.config.padded_vocab_size, Vpt = target.config.padded_vocab_size;
    if (Bn == 0) return {};
    GKD_ASSERT(draft.config.vocab_size == target.config.vocab_size, "speculative sampling: vocabularies differ");
    int longest = 0;
    for (int b = 0; b < Bn; b++) longest = std::max(longest, (int)prompts[b]->size() + budgets[b]);
    dg.cache.allocate(draft.config, Bn, std::min(longest, draft.config.max_seq_len));
    tg.cache.allocate(target.config, Bn, std::min(longest, target.config.max_seq_len));
    std::vector<Rng> rngs = row_generators(seed, stream, row_ids);
    std::vector<float> draft_host, target_host;
    auto run_draft = [&](const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn) {
        float* logits = dg.logits.ensure((size_t)n * Vpd);
        gpu_infer(draft, &dg.cache, dg.scratch, tokens, cache_row, start, n_new, n, Tn, logits, false);
        draft_host.resize((size_t)n * Vpd);
        download(draft_host.data(), logits, draft_host.size());
        return (const float*)draft_host.data();
    };
    auto run_target = [&](const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn,
                          bool all_positions) {
        const size_t count = (size_t)n * (all_positions ? Tn : 1) * Vpt;
        float* logits = tg.logits.ensure(count);
        gpu_infer(target, &tg.cache, tg.scratch, tokens, cache_row, start, n_new, n, Tn, logits, all_positions);
        target_host.resize(count);
        download(target_host.data(), logits, count);
        return (const float*)target_host.data();
    };
    return speculative_loop(prompts, budgets, K, temperature, eos, draft.config.vocab_size, Vpd, Vpt, rngs, run_draft,
                            run_target, stats);
}
