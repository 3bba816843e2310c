// cuda/model.cuh — a GPT on the device: gpt_forward's and gpt_backward's twins.
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
// - gpu_forward reads line for line like gpt_forward_rows, over every row at once.
//   gpu_backward is llm.c's backward, not gpt_backward's two sweeps: it zeroes the
//   activations' gradients, then runs each layer's whole backward (the input's gradient
//   and the parameters' in one call, model.h's layernorm_backward, matmul_backward and
//   residual_backward) from the last layer down. Both compute the same sums.
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

static void gpu_zero_grad(GpuModel& g) {
    CUDA_CHECK(cudaMemsetAsync(g.grads_memory.ptr, 0, g.num_parameters * sizeof(float), gpu::stream()));
}

// Accumulates parameter gradients from grads_acts.logits, which the loss wrote over the
// logits: gpt_backward's twin in what it computes, layer by layer (the file's header).
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
    CUDA_CHECK(cudaMemsetAsync(g.grads_acts_memory.ptr, 0,
               (size_t)(d.lnf_rstd + N - g.grads_acts_memory.ptr) * sizeof(float),
                               gpu::stream()));

    gpu::matmul_backward(d.lnf, gr.wte, nullptr, d.logits, a.lnf, p.wte, N, C, V, Vp, cols);
    const float* last = a.residual3 + (size_t)(L - 1) * N * C;
    float* dlast = d.residual3 + (size_t)(L - 1) * N * C;
    gpu::layernorm_backward(dlast, gr.lnfw, gr.lnfb, d.lnf, last, p.lnfw, a.lnf_mean, a.lnf_rstd, N, C, cols);
    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * N * C;
        float* dresidual = l == 0 ? d.encoded : d.residual3 + (size_t)(l - 1) * N * C;
        // where layer l starts in its slabs: (B, T, C), (B, T, 3C), (B, T, 4C), (B, T), (B, NH, T, T)
        const size_t at_C = (size_t)l * N * C, at_3C = at_C * 3, at_4C = at_C * 4, at_stat = (size_t)l * N;
        const size_t at_att = (size_t)l * B * NH * Tn * Tn;
        gpu::residual_backward(d.residual2 + at_C, d.fcproj + at_C, d.residual3 + at_C, (size_t)N * C);
        gpu::matmul_backward(d.fch_gelu + at_4C, gr.fcprojw + (size_t)l * C * 4 * C, gr.fcprojb + l * C, d.fcproj + at_C,
                             a.fch_gelu + at_4C, p.fcprojw + (size_t)l * C * 4 * C, N, 4 * C, C, C, cols);
        gpu::gelu_backward(d.fch + at_4C, a.fch + at_4C, d.fch_gelu + at_4C, (size_t)N * 4 * C);
        gpu::matmul_backward(d.ln2 + at_C, gr.fcw + (size_t)l * 4 * C * C, gr.fcb + l * 4 * C, d.fch + at_4C,
                             a.ln2 + at_C, p.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, 4 * C, cols);
        gpu::layernorm_backward(d.residual2 + at_C, gr.ln2w + l * C, gr.ln2b + l * C, d.ln2 + at_C, a.residual2 + at_C,
                                p.ln2w + l * C, a.ln2_mean + at_stat, a.ln2_rstd + at_stat, N, C, cols);
        gpu::residual_backward(dresidual, d.attproj + at_C, d.residual2 + at_C, (size_t)N * C);
        gpu::matmul_backward(d.atty + at_C, gr.attprojw + (size_t)l * C * C, gr.attprojb + l * C, d.attproj + at_C,
                             a.atty + at_C, p.attprojw + (size_t)l * C * C, N, C, C, C, cols);
        gpu::attention_backward(d.qkv + at_3C, d.atty + at_C, a.qkv + at_3C, a.att + at_att, scratch, B, Tn, C, NH);
        gpu::matmul_backward(d.ln1 + at_C, gr.qkvw + (size_t)l * 3 * C * C, gr.qkvb + l * 3 * C, d.qkv + at_3C,
                             a.ln1 + at_C, p.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, 3 * C, cols);
        gpu::layernorm_backward(dresidual, gr.ln1w + l * C, gr.ln1b + l * C, d.ln1 + at_C, residual, p.ln1w + l * C,
                                a.ln1_mean + at_stat, a.ln1_rstd + at_stat, N, C, cols);
    }
    gpu::encoder_backward(gr.wte, gr.wpe, d.encoded, g.device_token_groups, B, Tn, C);
}

