// cuda/model.cuh — a GPT on the device: gpt_forward's, gpt_forward_from_record's and
// gpt_backward's twins.
//
// A GpuModel mirrors model.h's GPT: parameters always; gradients, AdamW's moments and
// activations for the student only (the teacher runs forward through gpu_infer, in
// cuda/sampling.cuh, and keeps nothing per layer).
//
// Tricks worth knowing:
// - Parameters, gradients, moments and activations are each one cudaMalloc carved into
//   model.h's named tensors (ParameterTensors, ActivationTensors) in the CPU's layout: a
//   model goes to the device and back in one copy, and tests compare any tensor with its
//   CPU twin element for element.
// - gpu_forward reads line for line like gpt_forward_rows, over every row at once, and
//   gpu_backward like gpt_backward: its two sweeps, gpu_backward_activations beside
//   gpt_backward_rows (the activations' gradients, the backward's input halves) and
//   gpu_parameter_gradients beside gpt_parameter_gradients (the parameters', the weight
//   halves), call for call. Where the CPU overwrites on a tensor's first write, the GPU
//   zeroes the activations' gradients once and accumulates.
// - An on-policy step's forward is sampling's (GpuRecord, gpu_forward_from_record): the
//   prefill and the decode steps wrote their activations in the training layout.
// - GpuModelOf<T> stores its working weights and activations in T (cuda/precision.cuh).
//   In fp32 the working weights are the master weights; in bf16 they are a copy, refreshed
//   by AdamW's kernel as it writes each master weight, and the activations are carved from
//   two allocations: the bf16 tensors from one, LayerNorm's statistics (fp32) from another.
//   The logits (fp32 in both) are an allocation of their own, shared with sampling's record
//   (below). A model used only forward (a teacher, sampling) keeps no master.
// - Batches are packed (model.h's RowLayout): N positions, rows end to end, no padding;
//   attention runs one rectangular call per run of equal-length rows (gpu::attention_forward).
// - Sampling's record writes its logits straight into the student's logits, laid out
//   (B, maxT, Vp); gpu_forward_from_record moves each row down to its place in the batch's
//   (N, Vp) in place (gpu_pack_logits_in_place), so an on-policy step holds one fp32
//   logits buffer, not two.
// - The loss writes the logits' gradient over the fp32 logits; the LM head's backward
//   rounds it to bf16 in place (gpu::narrow_logits_gradient): no second (N, Vp) buffer.
// - The token-embedding gradient needs each token's positions grouped: the host builds
//   the groups (a stable sort of N ids) while the device runs the forward pass.
#pragma once
#include "common.cuh"
#include "layers.cuh"

template <typename T>
struct GpuModelOf {
    GPTConfig config;
    size_t param_sizes[NUM_PARAMETER_TENSORS] = {};
    size_t num_parameters = 0;
    DeviceBuffer<float> params_memory;        // (num_parameters) the fp32 master weights (fp32: also the working ones)
    DeviceBuffer<T> working_memory;           // bf16: (num_parameters) the working weights every pass reads
    ParameterTensors<T> params{};             // the working weights
    // training state
    DeviceBuffer<float> grads_memory, adam_m, adam_v;  // each (num_parameters), fp32
    ParameterTensors<float> grads{};
    int max_N = 0, max_T = 0;                 // the allocation's positions and longest row
    size_t max_att = 0;                       // ... and attention weights per layer
    DeviceBuffer<T> acts_memory, grads_acts_memory;
    DeviceBuffer<float> stats_memory;         // bf16: LayerNorm's statistics, fp32
    DeviceBuffer<float> logits_memory;        // (max_N, Vp) the logits, fp32; sampling's record's too
    ActivationTensors<T, float> acts{}, grads_acts{};
    DeviceBuffer<T> attention_scratch;
    DeviceBuffer<float> column_scratch;
    DeviceBuffer<int> inputs;                 // (N) tokens of the last forward
    DeviceBuffer<int> positions;              // (N) each one's position in its row
    DeviceBuffer<int> row_start;              // (B + 1) where each row begins
    gpu::TokenGroups token_groups;            // their positions grouped by token, for the embedding gradient
    gpu::DeviceTokenGroups device_token_groups;
    DeviceBuffer<double> norm_partials;       // (NORM_BLOCKS)
    RowLayout batch;                          // the rows of the last forward (on the host)
};
using GpuModel = GpuModelOf<float>;

namespace gpu {
// dst (n) = src (n) rounded to T: the working weights from the master
template <typename T>
__global__ void narrow_kernel(T* dst, const float* src, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) dst[i] = from_float<T>(src[i]);
}
GKD_WALKS_WHOLE_ALLOCATIONS(narrow_bf16, narrow_kernel<bf16>)
}  // namespace gpu

// Copies a CPU model's shape and parameters to the device. keep_master: a model that
// trains keeps its fp32 master weights; in bf16 one that only runs forward keeps the
// working copy alone.
template <typename T>
static void gpu_upload(GpuModelOf<T>& g, const GPT<float>& m, bool keep_master = true) {
    g.config = m.config;
    memcpy(g.param_sizes, m.param_sizes, sizeof g.param_sizes);
    g.num_parameters = m.num_parameters;
    g.params_memory.upload(m.params_memory);
    if constexpr (is_fp32<T>()) {
        point_parameters(g.params, g.params_memory.ptr, g.param_sizes);
    } else {
        g.working_memory.ensure(g.num_parameters);
        GPU_LAUNCH(gpu::narrow_kernel<T>, gpu::blocks_for(g.num_parameters), gpu::THREADS, 0, gpu::stream(),
                   g.working_memory.ptr, (const float*)g.params_memory.ptr, g.num_parameters);
        if (!keep_master) g.params_memory.release();
        point_parameters(g.params, g.working_memory.ptr, g.param_sizes);
        if (keep_master)
            name_carved_tensors("master parameters", g.params_memory.ptr, g.param_sizes, PARAMETER_NAMES,
                                NUM_PARAMETER_TENSORS);
    }
    name_carved_tensors("parameters", g.params.wte, g.param_sizes, PARAMETER_NAMES, NUM_PARAMETER_TENSORS);
}
template <typename T>
static void gpu_download_parameters(const GpuModelOf<T>& g, GPT<float>& m) {
    GKD_ASSERT(g.params_memory.ptr, "a model without its master weights on the device");
    download(m.params_memory.data(), g.params_memory.ptr, g.num_parameters);
}

template <typename T>
static void gpu_prepare_training(GpuModelOf<T>& g, const RowLayout& rows) {
    GKD_ASSERT(rows.T <= g.config.max_seq_len, "batch longer than the context");
    if (!g.grads_memory.ptr) {
        g.grads_memory.ensure(g.num_parameters);
        CUDA_CHECK(cudaMemset(g.grads_memory.ptr, 0, g.num_parameters * sizeof(float)));
        point_parameters(g.grads, g.grads_memory.ptr, g.param_sizes);
        name_carved_tensors("gradients", g.grads_memory.ptr, g.param_sizes, PARAMETER_NAMES, NUM_PARAMETER_TENSORS);
        g.norm_partials.ensure(gpu::NORM_BLOCKS);
    }
    if (rows.N <= g.max_N && rows.att() <= g.max_att && rows.T <= g.max_T) return;
    g.max_N = std::max(rows.N, g.max_N);
    g.max_T = std::max(rows.T, g.max_T);
    g.max_att = std::max(rows.att(), g.max_att);
    const GPTConfig& c = g.config;
    size_t sizes[NUM_ACTIVATION_TENSORS];
    fill_packed_activation_sizes(sizes, c, g.max_N, g.max_att);
    size_t total = 0, stats = 0;  // elements of T and, in bf16, of the fp32 carving: all but the logits
    for (int i = 0; i < NUM_ACTIVATION_TENSORS - 1; i++) (is_fp32<T>() || !activation_is_statistic(i) ? total : stats) += sizes[i];
    g.acts_memory.ensure(total);
    if (stats) g.stats_memory.ensure(stats);
    g.logits_memory.ensure(sizes[NUM_ACTIVATION_TENSORS - 1]);
    g.grads_acts_memory.ensure(total);
    // (any run of equal rows of a batch needs at most this: gpu::attention_forward)
    g.attention_scratch.ensure(gpu::attention_scratch_size(g.max_N, 1, c.channels, c.num_heads) + g.max_att);
    g.column_scratch.ensure(gpu::column_scratch_size(g.max_N, 4 * c.channels));
    g.inputs.ensure((size_t)g.max_N);
    g.positions.ensure((size_t)g.max_N);
}
template <typename T>
static void gpu_prepare_training(GpuModelOf<T>& g, int B, int Tn) {
    gpu_prepare_training(g, RowLayout::rectangle(B, Tn, g.config.num_heads));
}

// Points a's tensors for N positions (A attention weights a layer): in fp32 all but the logits in `memory`, in the CPU's
// order; in bf16 the tensors of T in `memory` and the statistics in `stats` (either may be
// null: those tensors stay null). The logits, an allocation of their own, at `logits`.
// Names the carved tensors for the emulator's guard zones.
template <typename T>
static void gpu_point_activations(ActivationTensors<T, float>& a, T* memory, float* stats, float* logits,
                                  const GPTConfig& c, size_t N, size_t A, const char* group) {
    size_t sizes[NUM_ACTIVATION_TENSORS];
    fill_packed_activation_sizes(sizes, c, N, A);
    sizes[NUM_ACTIVATION_TENSORS - 1] = 0;
    size_t in_memory[NUM_ACTIVATION_TENSORS], in_stats[NUM_ACTIVATION_TENSORS];
    void** ptrs = a.pointers();
    char* next[2] = {(char*)memory, (char*)stats};
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        const bool stat = !is_fp32<T>() && activation_is_statistic(i);
        in_memory[i] = stat ? 0 : sizes[i];
        in_stats[i] = stat ? sizes[i] : 0;
        const size_t bytes = stat ? sizes[i] * sizeof(float) : sizes[i] * sizeof(T);
        ptrs[i] = next[stat] && sizes[i] ? next[stat] : nullptr;
        if (next[stat]) next[stat] += bytes;
    }
    a.logits = logits;
    if (memory) name_carved_tensors(group, memory, in_memory, ACTIVATION_NAMES, NUM_ACTIVATION_TENSORS - 1);
    if (stats) name_carved_tensors(group, stats, in_stats, ACTIVATION_NAMES, NUM_ACTIVATION_TENSORS - 1);
}

// AdamW's moments on the device, from the host's (zeros before the first update).
template <typename T>
static void gpu_upload_optimizer(GpuModelOf<T>& g, const AdamW& opt) {
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
template <typename T>
static void gpu_download_optimizer(const GpuModelOf<T>& g, AdamW& opt) {
    opt.m.resize(g.num_parameters);
    opt.v.resize(g.num_parameters);
    download(opt.m.data(), g.adam_m.ptr, g.num_parameters);
    download(opt.v.data(), g.adam_v.ptr, g.num_parameters);
}

// The activations shaped for a packed batch (tokens (N) on the host, B rows from
// row_start (B + 1)), and what the passes need of it on the device: the tokens, each
// position's place in its row, the rows' starts, and the tokens grouped for the
// embedding's gradient.
template <typename T>
static void gpu_shape_batch(GpuModelOf<T>& g, const int* tokens, const int* row_start, int B) {
    RowLayout rows = RowLayout::packed(row_start, B, g.config.num_heads);
    gpu_prepare_training(g, rows);
    gpu_point_activations(g.acts, g.acts_memory.ptr, g.stats_memory.ptr, g.logits_memory.ptr, g.config, rows.N,
                          rows.att(), "activations");
    // no logits of their own: the loss writes over the logits; in bf16 no statistics either
    gpu_point_activations(g.grads_acts, g.grads_acts_memory.ptr, (float*)nullptr, g.logits_memory.ptr, g.config,
                          rows.N, rows.att(), "activation gradients");
    const int N = rows.N;
    for (int i = 0; i < N; i++) GKD_ASSERT(tokens[i] >= 0 && tokens[i] < g.config.vocab_size, "token id out of range");
    CUDA_CHECK(cudaMemcpy(g.inputs.ptr, tokens, sizeof(int) * N, cudaMemcpyHostToDevice));
    const std::vector<int> pos = rows.positions();
    CUDA_CHECK(cudaMemcpy(g.positions.ptr, pos.data(), sizeof(int) * N, cudaMemcpyHostToDevice));
    g.row_start.upload(rows.start);
    g.token_groups.build(tokens, N);
    g.device_token_groups.upload(g.token_groups);
    g.batch = std::move(rows);
}

// tokens (N) on the host, B rows from row_start (B + 1) -> acts.logits (N, Vp) on the
// device, keeping what gpu_backward needs. gpt_forward's twin, line for line.
template <typename T>
static void gpu_forward(GpuModelOf<T>& g, const int* tokens, const int* row_start, int B) {
    const GPTConfig& c = g.config;
    gpu_shape_batch(g, tokens, row_start, B);
    const RowLayout& rows = g.batch;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads, N = rows.N;
    const ParameterTensors<T>& p = g.params;
    ActivationTensors<T, float>& a = g.acts;
    T* scratch = g.attention_scratch.ptr;
    gpu::encoder_forward(a.encoded, g.inputs.ptr, g.positions.ptr, p.wte, p.wpe, N, C);
    for (int l = 0; l < L; l++) {
        const T* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * N * C;
        // where layer l starts in its slabs: (N, C), the (N) layernorm statistics, the (A) attention weights
        const size_t at_C = (size_t)l * N * C, at_stat = (size_t)l * N;
        T* qkv = a.qkv + at_C * 3;
        T* fch = a.fch + at_C * 4;
        T* fch_gelu = a.fch_gelu + at_C * 4;
        gpu::layernorm_forward(a.ln1 + at_C, a.ln1_mean + at_stat, a.ln1_rstd + at_stat, residual, p.ln1w + l * C,
                               p.ln1b + l * C, N, C);
        gpu::matmul_forward(qkv, a.ln1 + at_C, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, N, C, 3 * C, 3 * C);
        gpu::attention_forward(a.atty + at_C, a.att + (size_t)l * rows.att(), qkv, scratch, rows, C, NH);
        gpu::matmul_forward(a.attproj + at_C, a.atty + at_C, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, N,
                            C, C, C);
        gpu::residual_forward(a.residual2 + at_C, residual, a.attproj + at_C, (size_t)N * C);
        gpu::layernorm_forward(a.ln2 + at_C, a.ln2_mean + at_stat, a.ln2_rstd + at_stat, a.residual2 + at_C,
                               p.ln2w + l * C, p.ln2b + l * C, N, C);
        gpu::matmul_forward(fch, a.ln2 + at_C, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, N, C, 4 * C, 4 * C);
        gpu::gelu_forward(fch_gelu, fch, (size_t)N * 4 * C);
        gpu::matmul_forward(a.fcproj + at_C, fch_gelu, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, N,
                            4 * C, C, C);
        gpu::residual_forward(a.residual3 + at_C, a.residual2 + at_C, a.fcproj + at_C, (size_t)N * C);
    }
    const T* last = a.residual3 + (size_t)(L - 1) * N * C;
    gpu::layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, N, C);
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    gpu::matmul_forward(a.logits, a.lnf, p.wte, (const T*)nullptr, N, C, V, Vp);  // bf16 in, fp32 logits out
    gpu::zero_padding(a.logits, N, V, Vp);
}
// ... a rectangular batch: tokens (B, T)
template <typename T>
static void gpu_forward(GpuModelOf<T>& g, const int* tokens, int B, int Tn) {
    const RowLayout r = RowLayout::rectangle(B, Tn, g.config.num_heads);
    gpu_forward(g, tokens, r.start.data(), B);
}

namespace gpu {
// The row of position n (or of attention weight n) of a packed batch: the last b with
// first[b] <= n, by bisection over first (B + 1).
template <typename I>
__device__ inline int row_containing(const I* first, int B, size_t n) {
    int lo = 0, hi = B - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if ((size_t)first[mid] <= n) lo = mid; else hi = mid - 1;
    }
    return lo;
}
// dst (layers, N, width) = a record's (layers, B, maxT, width) at each row's first
// len_b positions: the record packed down to a batch's rows (row_start (B + 1), device)
template <typename E>
__global__ void pack_rows_kernel(E* dst, const E* src, const int* row_start, int B, int N, int maxT, int width,
                                 size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const size_t l = i / ((size_t)N * width), n = i / width % N;
    const int c = (int)(i % width), b = row_containing(row_start, B, n), t = (int)(n - row_start[b]);
    dst[i] = src[((l * B + b) * maxT + t) * width + c];
}
// dst (layers, A) = a record's attention weights (layers, B, NH, maxT, maxT) at each row's
// (NH, len_b, len_b) (att_start (B + 1), device)
template <typename E>
__global__ void pack_attention_kernel(E* dst, const E* src, const size_t* att_start, const int* row_start, int B,
                                      size_t A, int NH, int maxT, size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const size_t l = i / A, a = i % A;
    const int b = row_containing(att_start, B, a), len = row_start[b + 1] - row_start[b];
    const size_t r = a - att_start[b], square = (size_t)len * len;
    const size_t h = r / square, t = r % square / len, k = r % len;
    dst[i] = src[(((l * B + b) * NH + h) * maxT + t) * maxT + k];
}

}  // namespace gpu

// Sampling's activations in the training layout: ForwardRecord's twin (cpu/inference.h).
// An on-policy step's student forward over prompt + completion would recompute what
// sampling already did at every one of those positions (the same weights, tokens and
// causal context). With a record, the prefill and every decode step also write each
// position they run where gpu_forward would put it ((B, maxT): batch row cache_row[b],
// position start[b] + t); gpu_forward_from_record then packs that down to the batch's
// rows (RowLayout) instead of running the forward. Positions never run (padding after a row's end,
// the LM head at prompt positions, which are no targets) stay zero: zero gradient. Unlike
// the CPU's, the record is an allocation of its own (a device cannot pack in place in one
// ascending pass), except its logits, the biggest tensor: they are the student's own,
// packed in place in chunks (gpu_pack_logits_in_place). attproj and fcproj are not kept
// (gpu_backward never reads them).
template <typename T>
struct GpuRecordOf {
    int B = 0, maxT = 0;
    DeviceBuffer<T> memory;
    DeviceBuffer<float> stats;                // bf16: the statistics, fp32
    ActivationTensors<T, float> acts{};       // (B, maxT) in memory (and stats); logits: the student's
    DeviceBuffer<size_t> att_start;           // (B + 1) the packed batch's, for gpu_forward_from_record
    std::vector<std::vector<int>> rows;       // (B) what each row ran: its prompt, then its completion
    bool ready = false;                       // holds a sampling pass not yet used by a forward
};
using GpuRecord = GpuRecordOf<float>;
// An empty record of B rows of at most maxT positions of g's, zeros. Its logits are g's:
// g's activations are made ready for (B, maxT), and the record's (B, maxT, Vp) logits are
// g's logits buffer, which the training forward then reads in place.
template <typename T>
static void gpu_begin_record(GpuRecordOf<T>& r, GpuModelOf<T>& g, int B, int maxT) {
    const GPTConfig& c = g.config;
    gpu_prepare_training(g, B, maxT);  // no later batch of these rows (T <= maxT) reallocates the logits
    size_t sizes[NUM_ACTIVATION_TENSORS], total = 0, stats = 0;
    fill_activation_sizes(sizes, c, B, maxT);
    for (int i = 0; i < NUM_ACTIVATION_TENSORS - 1; i++) (is_fp32<T>() || !activation_is_statistic(i) ? total : stats) += sizes[i];
    CUDA_CHECK(cudaMemset(g.logits_memory.ptr, 0, sizes[NUM_ACTIVATION_TENSORS - 1] * sizeof(float)));
    r.memory.ensure(total);
    CUDA_CHECK(cudaMemset(r.memory.ptr, 0, total * sizeof(T)));
    if (stats) {
        r.stats.ensure(stats);
        CUDA_CHECK(cudaMemset(r.stats.ptr, 0, stats * sizeof(float)));
    }
    gpu_point_activations(r.acts, r.memory.ptr, r.stats.ptr, g.logits_memory.ptr, c, (size_t)B * maxT,
                          (size_t)B * c.num_heads * maxT * maxT, "sampling record");
    r.B = B;
    r.maxT = maxT;
    r.rows.clear();
    r.ready = false;
}

// gpt_forward_from_record's twin (cpu/inference.h): gpu_forward(g, tokens, row_start, B)
// from sampling's record instead of a pass. When every row of the batch is what its record
// row ran (the same tokens at every input position) and B is the record's, the record's
// (B, maxT) layout is packed down to the batch's rows and it returns true: nothing is
// computed again. Otherwise (a batch that is not the one sampled) it returns false and
// the caller runs gpu_forward. Every position with a target was run by sampling (the
// prefill's last prompt position, then each decode step), so its logits are the record's.
// logits (B, maxT, Vp) -> (N, Vp) in the same memory: row b's len rows move from b maxT
// down to row_start[b], shift = b maxT - row_start[b] rows lower (shifts grow with b), in
// increasing order and in chunks of at most `shift` rows, so no copy reads a row an
// earlier one overwrote, and no copy's source and destination overlap.
static void gpu_pack_logits_in_place(float* logits, int B, int maxT, const int* row_start, int Vp) {
    const size_t row = (size_t)Vp * sizeof(float);
    for (int b = 1; b < B; b++) {
        const int shift = b * maxT - row_start[b], len = row_start[b + 1] - row_start[b];
        for (int t0 = 0; shift > 0 && t0 < len; t0 += shift) {
            const int n = std::min(shift, len - t0);
            CUDA_CHECK(cudaMemcpyAsync(logits + ((size_t)row_start[b] + t0) * Vp, logits + ((size_t)b * maxT + t0) * Vp,
                                       n * row, cudaMemcpyDeviceToDevice, gpu::stream()));
        }
    }
}

template <typename T>
static bool gpu_forward_from_record(GpuModelOf<T>& g, GpuRecordOf<T>& r, const int* tokens, const int* targets,
                                    const int* row_start, int B) {
    if (!r.ready || r.B != B) return false;
    r.ready = false;  // a record serves one forward
    for (int b = 0; b < B; b++) {
        const int n0 = row_start[b], len = row_start[b + 1] - n0;
        if (len > r.maxT) return false;
        int inputs = 0;  // the row's real positions: up to its last target
        for (int t = 0; t < len; t++)
            if (targets[n0 + t] >= 0) inputs = t + 1;
        const std::vector<int>& ran = r.rows[b];
        if ((int)ran.size() != inputs + 1 || inputs != len) return false;
        for (int t = 0; t < inputs; t++)
            if (tokens[n0 + t] != ran[t]) return false;
    }
    gpu_shape_batch(g, tokens, row_start, B);
    const RowLayout& rows = g.batch;
    const GPTConfig& c = g.config;
    r.att_start.upload(rows.att_start);
    void** to = g.acts.pointers();
    void** from = r.acts.pointers();
    gpu_pack_logits_in_place(g.acts.logits, B, r.maxT, rows.start.data(), c.padded_vocab_size);
    size_t sizes[NUM_ACTIVATION_TENSORS];
    fill_packed_activation_sizes(sizes, c, rows.N, rows.att());
    for (int i = 0; i < NUM_ACTIVATION_TENSORS - 1; i++) {
        const bool att = activation_is_attention(i), f32 = is_fp32<T>() || activation_is_statistic(i);
        const size_t layers = activation_per_layer(i) ? (size_t)c.num_layers : 1;
        const size_t n = sizes[i];
        if (att) {
            GPU_LAUNCH(gpu::pack_attention_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), (T*)to[i],
                       (const T*)from[i], r.att_start.ptr, g.row_start.ptr, B, rows.att(), c.num_heads, r.maxT, n);
            continue;
        }
        const int width = (int)(n / (layers * rows.N));
        if (f32)
            GPU_LAUNCH(gpu::pack_rows_kernel<float>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), (float*)to[i],
                       (const float*)from[i], g.row_start.ptr, B, rows.N, r.maxT, width, n);
        else
            GPU_LAUNCH(gpu::pack_rows_kernel<T>, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), (T*)to[i],
                       (const T*)from[i], g.row_start.ptr, B, rows.N, r.maxT, width, n);
    }
    return true;
}

template <typename T>
static void gpu_zero_grad(GpuModelOf<T>& g) {
    CUDA_CHECK(cudaMemsetAsync(g.grads_memory.ptr, 0, g.num_parameters * sizeof(float), gpu::stream()));
}

// The first half of gpu_backward: gpt_backward_rows' twin, over every row at once. The
// activations' gradients, from the logits' (which the loss wrote over the logits) down to
// the embeddings'. As on the CPU, the projections' output gradients are the residual
// stream's (d.residual3 and d.residual2 serve as d.fcproj and d.attproj, which stay
// unused), and a residual's gradient passes through layernorm's backward as its base.
// The GPU's matmuls and attention accumulate, so the tensors are zeroed first.
template <typename T>
static void gpu_backward_activations(GpuModelOf<T>& g) {
    const GPTConfig& c = g.config;
    const RowLayout& rows = g.batch;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads, N = rows.N;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    const ParameterTensors<T>& p = g.params;
    const ActivationTensors<T, float>& a = g.acts;
    ActivationTensors<T, float>& d = g.grads_acts;
    // every gradient tensor of T for this batch: the allocation up to the end of d.lnf (in
    // fp32 the statistics' gradients after it too, unused)
    const T* end = is_fp32<T>() ? (const T*)(void*)d.lnf_rstd + N : d.lnf + (size_t)N * C;
    CUDA_CHECK(cudaMemsetAsync(g.grads_acts_memory.ptr, 0, (size_t)(end - g.grads_acts_memory.ptr) * sizeof(T),
                               gpu::stream()));
    int ld_dlogits = 0;  // the logits' gradient as T (in place in bf16: row stride 2 Vp)
    const T* dlogits = gpu::narrow_logits_gradient<T>(d.logits, N, Vp, &ld_dlogits);
    gpu::matmul_backward_input(d.lnf, dlogits, p.wte, N, C, V, ld_dlogits);
    const size_t at_last_C = (size_t)(L - 1) * N * C;
    gpu::layernorm_backward_input(d.residual3 + at_last_C, d.lnf, a.residual3 + at_last_C, p.lnfw, a.lnf_mean,
                                  a.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        // where layer l starts in its slabs: (N, C), (N, 3C), (N, 4C), (N), (A)
        const size_t at_C = (size_t)l * N * C, at_3C = 3 * at_C, at_4C = 4 * at_C, at_stat = (size_t)l * N;
        const size_t at_att = (size_t)l * rows.att();
        const T* residual = l == 0 ? a.encoded : a.residual3 + at_C - (size_t)N * C;
        T* dresidual = l == 0 ? d.encoded : d.residual3 + at_C - (size_t)N * C;
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        gpu::matmul_backward_input(d.fch_gelu + at_4C, d.residual3 + at_C, p.fcprojw + (size_t)l * C * 4 * C, N, 4 * C,
                                   C, C);
        gpu::gelu_backward(d.fch + at_4C, a.fch + at_4C, d.fch_gelu + at_4C, (size_t)N * 4 * C);
        gpu::matmul_backward_input(d.ln2 + at_C, d.fch + at_4C, p.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, 4 * C);
        gpu::layernorm_backward_input(d.residual2 + at_C, d.ln2 + at_C, a.residual2 + at_C, p.ln2w + l * C,
                                      a.ln2_mean + at_stat, a.ln2_rstd + at_stat, N, C, (const T*)d.residual3 + at_C);
        // attention: residual2 = residual + attproj(attention(qkv(ln1(residual))))
        gpu::matmul_backward_input(d.atty + at_C, d.residual2 + at_C, p.attprojw + (size_t)l * C * C, N, C, C, C);
        gpu::attention_backward(d.qkv + at_3C, d.atty + at_C, a.qkv + at_3C, a.att + at_att, g.attention_scratch.ptr,
                                rows, C, NH);
        gpu::matmul_backward_input(d.ln1 + at_C, d.qkv + at_3C, p.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, 3 * C);
        gpu::layernorm_backward_input(dresidual, d.ln1 + at_C, residual, p.ln1w + l * C, a.ln1_mean + at_stat,
                                      a.ln1_rstd + at_stat, N, C, (const T*)d.residual2 + at_C);
    }
}

// The second half: gpt_parameter_gradients' twin, every parameter's gradient, a sum over
// all N positions of the activations and their gradients, in the CPU's order.
template <typename T>
static void gpu_parameter_gradients(GpuModelOf<T>& g) {
    const GPTConfig& c = g.config;
    const int C = c.channels, L = c.num_layers, N = g.batch.N;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    ParameterTensors<float>& gr = g.grads;
    const ActivationTensors<T, float>& a = g.acts;
    const ActivationTensors<T, float>& d = g.grads_acts;
    float* cols = g.column_scratch.ptr;
    // the LM head and the embedding share wte; the logits' gradient as T (gpu_backward_activations narrowed it)
    const int ld_dlogits = Vp * (int)(sizeof(float) / sizeof(T));
    gpu::matmul_backward_weight(gr.wte, nullptr, (const T*)(const void*)d.logits, a.lnf, N, C, V, ld_dlogits, cols);
    gpu::layernorm_backward_params(gr.lnfw, gr.lnfb, d.lnf, a.residual3 + (size_t)(L - 1) * N * C, a.lnf_mean,
                                   a.lnf_rstd, N, C, cols);
    for (int l = L - 1; l >= 0; l--) {
        // where layer l starts in its slabs: (N, C), (N, 3C), (N, 4C), (N)
        const size_t at_C = (size_t)l * N * C, at_3C = 3 * at_C, at_4C = 4 * at_C, at_stat = (size_t)l * N;
        const T* residual = l == 0 ? a.encoded : a.residual3 + at_C - (size_t)N * C;
        // (the projections' output gradients are the residual stream's: gpu_backward_activations)
        gpu::matmul_backward_weight(gr.fcprojw + (size_t)l * C * 4 * C, gr.fcprojb + l * C, d.residual3 + at_C,
                                    a.fch_gelu + at_4C, N, 4 * C, C, C, cols);
        gpu::matmul_backward_weight(gr.fcw + (size_t)l * 4 * C * C, gr.fcb + l * 4 * C, d.fch + at_4C, a.ln2 + at_C, N,
                                    C, 4 * C, 4 * C, cols);
        gpu::layernorm_backward_params(gr.ln2w + l * C, gr.ln2b + l * C, d.ln2 + at_C, a.residual2 + at_C,
                                       a.ln2_mean + at_stat, a.ln2_rstd + at_stat, N, C, cols);
        gpu::matmul_backward_weight(gr.attprojw + (size_t)l * C * C, gr.attprojb + l * C, d.residual2 + at_C,
                                    a.atty + at_C, N, C, C, C, cols);
        gpu::matmul_backward_weight(gr.qkvw + (size_t)l * 3 * C * C, gr.qkvb + l * 3 * C, d.qkv + at_3C, a.ln1 + at_C,
                                    N, C, 3 * C, 3 * C, cols);
        gpu::layernorm_backward_params(gr.ln1w + l * C, gr.ln1b + l * C, d.ln1 + at_C, residual, a.ln1_mean + at_stat,
                                       a.ln1_rstd + at_stat, N, C, cols);
    }
    gpu::encoder_backward(gr.wte, gr.wpe, d.encoded, g.device_token_groups, g.row_start.ptr, g.batch.B, g.batch.T, C);
}

// Accumulates parameter gradients from grads_acts.logits (N, Vp), which the loss wrote
// over the logits: gpt_backward's twin, its two sweeps in its order (on the GPU each
// covers every row and channel at once, where the CPU shares rows, then channels, among
// its threads).
template <typename T>
static void gpu_backward(GpuModelOf<T>& g) {
    gpu_backward_activations(g);
    gpu_parameter_gradients(g);
}

