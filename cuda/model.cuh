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
// - The token-embedding gradient needs each token's positions grouped: the host builds
//   the groups (a stable sort of B * T ids) while the device runs the forward pass.
#pragma once
#include "common.cuh"
#include "layers.cuh"

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
    name_carved_tensors("parameters", g.params_memory.ptr, g.param_sizes, PARAMETER_NAMES, NUM_PARAMETER_TENSORS);
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
        name_carved_tensors("gradients", g.grads_memory.ptr, g.param_sizes, PARAMETER_NAMES, NUM_PARAMETER_TENSORS);
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

// The activations shaped for a batch of tokens (B, T) (on the host), and what the backward
// needs of the tokens: on the device, and grouped by token for the embedding's gradient.
static void gpu_shape_batch(GpuModel& g, const int* tokens, int B, int Tn) {
    gpu_prepare_training(g, B, Tn);
    point_training_activations(g.acts, g.grads_acts, g.acts_memory.ptr, g.grads_acts_memory.ptr, g.config, B, Tn);
    size_t sizes[NUM_ACTIVATION_TENSORS];
    fill_activation_sizes(sizes, g.config, B, Tn);
    name_carved_tensors("activations", g.acts_memory.ptr, sizes, ACTIVATION_NAMES, NUM_ACTIVATION_TENSORS);
    name_carved_tensors("activation gradients", g.grads_acts_memory.ptr, sizes, ACTIVATION_NAMES,
                        NUM_ACTIVATION_TENSORS - 1);  // no logits of their own: the loss writes over the logits
    g.batch_B = B;
    g.batch_T = Tn;
    const int N = B * Tn;
    for (int i = 0; i < N; i++) GKD_ASSERT(tokens[i] >= 0 && tokens[i] < g.config.vocab_size, "token id out of range");
    CUDA_CHECK(cudaMemcpy(g.inputs.ptr, tokens, sizeof(int) * N, cudaMemcpyHostToDevice));
    g.token_groups.build(tokens, N);
    g.device_token_groups.upload(g.token_groups);
}

// tokens (B, T) on the host -> acts.logits (B, T, Vp) on the device, keeping what
// gpu_backward needs. gpt_forward's twin, line for line.
static void gpu_forward(GpuModel& g, const int* tokens, int B, int Tn) {
    const GPTConfig& c = g.config;
    gpu_shape_batch(g, tokens, B, Tn);
    const int C = c.channels, L = c.num_layers, NH = c.num_heads, N = B * Tn;
    ParameterTensors<float>& p = g.params;
    ActivationTensors<float>& a = g.acts;
    float* scratch = g.attention_scratch.ptr;
    gpu::encoder_forward(a.encoded, g.inputs.ptr, p.wte, p.wpe, B, Tn, C);
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * N * C;
        // where layer l starts in its slabs: (B, T, C), and the (B, T) layernorm statistics
        const size_t at_C = (size_t)l * N * C, at_stat = (size_t)l * N;
        float* qkv = a.qkv + at_C * 3;
        float* fch = a.fch + at_C * 4;
        float* fch_gelu = a.fch_gelu + at_C * 4;
        gpu::layernorm_forward(a.ln1 + at_C, a.ln1_mean + at_stat, a.ln1_rstd + at_stat, residual, p.ln1w + l * C,
                               p.ln1b + l * C, N, C);
        gpu::matmul_forward(qkv, a.ln1 + at_C, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, N, C, 3 * C, 3 * C);
        gpu::attention_forward(a.atty + at_C, a.att + (size_t)l * B * NH * Tn * Tn, qkv, scratch, B, Tn, C, NH);
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
    const float* last = a.residual3 + (size_t)(L - 1) * N * C;
    gpu::layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, N, C);
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    gpu::matmul_forward(a.logits, a.lnf, p.wte, nullptr, N, C, V, Vp);
    gpu::zero_padding(a.logits, N, V, Vp);
}

namespace gpu {
// dst (outer, rows_dst, cols_dst) = the leading part of src (outer, rows_src, cols_src): a
// record's (B, maxT) layout packed down to a batch's (B, T)
__global__ void pack_down_kernel(float* dst, const float* src, int rows_src, int cols_src, int rows_dst, int cols_dst,
                                 size_t total) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int c = (int)(i % cols_dst);
    const size_t r = i / cols_dst % rows_dst, o = i / ((size_t)cols_dst * rows_dst);
    dst[i] = src[(o * rows_src + r) * cols_src + c];
}

}  // namespace gpu

// Sampling's activations in the training layout: ForwardRecord's twin (cpu/inference.h).
// An on-policy step's student forward over prompt + completion would recompute what
// sampling already did at every one of those positions (the same weights, tokens and
// causal context). With a record, the prefill and every decode step also write each
// position they run where gpu_forward would put it ((B, maxT): batch row cache_row[b],
// position start[b] + t); gpu_forward_from_record then packs that down to the batch's
// (B, T) instead of running the forward. Positions never run (padding after a row's end,
// the LM head at prompt positions, which are no targets) stay zero: zero gradient. Unlike
// the CPU's, the record is an allocation of its own (a device cannot pack in place in one
// ascending pass), and attproj and fcproj are not kept (gpu_backward never reads them).
struct GpuRecord {
    int B = 0, maxT = 0;
    DeviceBuffer<float> memory;
    ActivationTensors<float> acts{};          // (B, maxT) in memory
    std::vector<std::vector<int>> rows;       // (B) what each row ran: its prompt, then its completion
    bool ready = false;                       // holds a sampling pass not yet used by a forward
};
// An empty record of B rows of at most maxT positions, zeros, for `m`'s shapes.
static void gpu_begin_record(GpuRecord& r, const GPTConfig& c, int B, int maxT) {
    size_t sizes[NUM_ACTIVATION_TENSORS], total = 0;
    fill_activation_sizes(sizes, c, B, maxT);
    for (size_t s : sizes) total += s;
    r.memory.ensure(total);
    CUDA_CHECK(cudaMemset(r.memory.ptr, 0, total * sizeof(float)));
    point_activations(r.acts, r.memory.ptr, sizes);
    name_carved_tensors("sampling record", r.memory.ptr, sizes, ACTIVATION_NAMES, NUM_ACTIVATION_TENSORS);
    r.B = B;
    r.maxT = maxT;
    r.rows.clear();
    r.ready = false;
}

// gpt_forward_from_record's twin (cpu/inference.h): gpu_forward(g, tokens, B, T) from
// sampling's record instead of a pass. When every row of the batch is what its record row
// ran (the same tokens at every input position) and B is the record's, the record's
// (B, maxT) layout is packed down to the batch's (B, T) and it returns true: nothing is
// computed again. Otherwise (a batch that is not the one sampled) it returns false and
// the caller runs gpu_forward. Every position with a target was run by sampling (the
// prefill's last prompt position, then each decode step), so its logits are the record's.
static bool gpu_forward_from_record(GpuModel& g, GpuRecord& r, const int* tokens, const int* targets, int B, int Tn) {
    if (!r.ready || r.B != B || Tn > r.maxT) return false;
    r.ready = false;  // a record serves one forward
    for (int b = 0; b < B; b++) {
        int inputs = 0;  // the row's real positions: up to its last target
        for (int t = 0; t < Tn; t++)
            if (targets[(size_t)b * Tn + t] >= 0) inputs = t + 1;
        const std::vector<int>& ran = r.rows[b];
        if ((int)ran.size() != inputs + 1) return false;
        for (int t = 0; t < inputs; t++)
            if (tokens[(size_t)b * Tn + t] != ran[t]) return false;
    }
    gpu_shape_batch(g, tokens, B, Tn);
    const GPTConfig& c = g.config;
    size_t rec_sizes[NUM_ACTIVATION_TENSORS];
    fill_activation_sizes(rec_sizes, c, B, r.maxT);
    float** to = g.acts.array();
    float** from = r.acts.array();
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        // each tensor as (groups, maxT, width) -> (groups, T, width), groups the layers and rows
        // before the position; attention's (L B NH, maxT, maxT) -> (L B NH, T, T)
        const bool att = activation_is_attention(i);
        const size_t groups = (activation_per_layer(i) ? (size_t)c.num_layers : 1) * B * (att ? c.num_heads : 1);
        const int width = (int)(rec_sizes[i] / (groups * r.maxT));
        const int cols_dst = att ? Tn : width;
        const size_t n = groups * Tn * cols_dst;
        GPU_LAUNCH(gpu::pack_down_kernel, gpu::blocks_for(n), gpu::THREADS, 0, gpu::stream(), to[i], (const float*)from[i],
            r.maxT, width, Tn, cols_dst, n);
    }
    return true;
}

static void gpu_zero_grad(GpuModel& g) {
    CUDA_CHECK(cudaMemsetAsync(g.grads_memory.ptr, 0, g.num_parameters * sizeof(float), gpu::stream()));
}

// The first half of gpu_backward: gpt_backward_rows' twin, over every row at once. The
// activations' gradients, from the logits' (which the loss wrote over the logits) down to
// the embeddings'. As on the CPU, the projections' output gradients are the residual
// stream's (d.residual3 and d.residual2 serve as d.fcproj and d.attproj, which stay
// unused), and a residual's gradient passes through layernorm's backward as its base.
// The GPU's matmuls and attention accumulate, so the tensors are zeroed first.
static void gpu_backward_activations(GpuModel& g) {
    const GPTConfig& c = g.config;
    const int B = g.batch_B, Tn = g.batch_T, C = c.channels, L = c.num_layers, NH = c.num_heads, N = B * Tn;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    const ParameterTensors<float>& p = g.params;
    const ActivationTensors<float>& a = g.acts;
    ActivationTensors<float>& d = g.grads_acts;
    CUDA_CHECK(cudaMemsetAsync(g.grads_acts_memory.ptr, 0,
                               (size_t)(d.lnf_rstd + N - g.grads_acts_memory.ptr) * sizeof(float), gpu::stream()));
    gpu::matmul_backward_input(d.lnf, d.logits, p.wte, N, C, V, Vp);
    const size_t at_last_C = (size_t)(L - 1) * N * C;
    gpu::layernorm_backward_input(d.residual3 + at_last_C, d.lnf, a.residual3 + at_last_C, p.lnfw, a.lnf_mean,
                                  a.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        // where layer l starts in its slabs: (B, T, C), (B, T, 3C), (B, T, 4C), (B, T), (B, NH, T, T)
        const size_t at_C = (size_t)l * N * C, at_3C = 3 * at_C, at_4C = 4 * at_C, at_stat = (size_t)l * N;
        const size_t at_att = (size_t)l * B * NH * Tn * Tn;
        const float* residual = l == 0 ? a.encoded : a.residual3 + at_C - (size_t)N * C;
        float* dresidual = l == 0 ? d.encoded : d.residual3 + at_C - (size_t)N * C;
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        gpu::matmul_backward_input(d.fch_gelu + at_4C, d.residual3 + at_C, p.fcprojw + (size_t)l * C * 4 * C, N, 4 * C,
                                   C, C);
        gpu::gelu_backward(d.fch + at_4C, a.fch + at_4C, d.fch_gelu + at_4C, (size_t)N * 4 * C);
        gpu::matmul_backward_input(d.ln2 + at_C, d.fch + at_4C, p.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, 4 * C);
        gpu::layernorm_backward_input(d.residual2 + at_C, d.ln2 + at_C, a.residual2 + at_C, p.ln2w + l * C,
                                      a.ln2_mean + at_stat, a.ln2_rstd + at_stat, N, C, d.residual3 + at_C);
        // attention: residual2 = residual + attproj(attention(qkv(ln1(residual))))
        gpu::matmul_backward_input(d.atty + at_C, d.residual2 + at_C, p.attprojw + (size_t)l * C * C, N, C, C, C);
        gpu::attention_backward(d.qkv + at_3C, d.atty + at_C, a.qkv + at_3C, a.att + at_att, g.attention_scratch.ptr, B,
                                Tn, C, NH);
        gpu::matmul_backward_input(d.ln1 + at_C, d.qkv + at_3C, p.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, 3 * C);
        gpu::layernorm_backward_input(dresidual, d.ln1 + at_C, residual, p.ln1w + l * C, a.ln1_mean + at_stat,
                                      a.ln1_rstd + at_stat, N, C, d.residual2 + at_C);
    }
}

// The second half: gpt_parameter_gradients' twin, every parameter's gradient, a sum over
// all B*T rows of the activations and their gradients, in the CPU's order.
static void gpu_parameter_gradients(GpuModel& g) {
    const GPTConfig& c = g.config;
    const int B = g.batch_B, Tn = g.batch_T, C = c.channels, L = c.num_layers, N = B * Tn;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    ParameterTensors<float>& gr = g.grads;
    const ActivationTensors<float>& a = g.acts;
    const ActivationTensors<float>& d = g.grads_acts;
    float* cols = g.column_scratch.ptr;
    // the LM head and the embedding share wte
    gpu::matmul_backward_weight(gr.wte, nullptr, d.logits, a.lnf, N, C, V, Vp, cols);
    gpu::layernorm_backward_params(gr.lnfw, gr.lnfb, d.lnf, a.residual3 + (size_t)(L - 1) * N * C, a.lnf_mean,
                                   a.lnf_rstd, N, C, cols);
    for (int l = L - 1; l >= 0; l--) {
        // where layer l starts in its slabs: (B, T, C), (B, T, 3C), (B, T, 4C), (B, T)
        const size_t at_C = (size_t)l * N * C, at_3C = 3 * at_C, at_4C = 4 * at_C, at_stat = (size_t)l * N;
        const float* residual = l == 0 ? a.encoded : a.residual3 + at_C - (size_t)N * C;
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
    gpu::encoder_backward(gr.wte, gr.wpe, d.encoded, g.device_token_groups, B, Tn, C);
}

// Accumulates parameter gradients from grads_acts.logits (B, T, Vp), which the loss wrote
// over the logits: gpt_backward's twin, its two sweeps in its order (on the GPU each
// covers every row and channel at once, where the CPU shares rows, then channels, among
// its threads).
static void gpu_backward(GpuModel& g) {
    gpu_backward_activations(g);
    gpu_parameter_gradients(g);
}

