// cli/gpu_memory.h — what the CUDA path allocates for one training step, by tensor class,
// in each precision: `gkd bench`'s memory table, computed from the shapes alone, so that a
// CPU-only machine prints it too (for GPT-2 sizes it needs no GPU and no step).
//
// Each line mirrors an allocation of cuda/ (named beside it): change one, change both.
// tests/test_gpu.cu holds the sum to what an emulated bench step really allocated
// (DeviceBuffer's tally), so the two cannot drift apart unnoticed.
//
// Part of gkd.cu's single translation unit.
#pragma once
#include <string>
#include <vector>

// One tensor class: its bytes in fp32 ([0]) and in bf16 ([1]).
struct MemoryClass {
    const char* name;
    const char* bf16_keeps;  // what --precision bf16 stores it as
    double bytes[2];
};

// An on-policy step (sft: a supervised one, no teacher, no sampling) of B rows of P prompt
// and K new tokens, as `gkd bench` runs it; top_k: the teacher's top-K signal (0: whole rows).
static std::vector<MemoryClass> gpu_step_memory(const GPTConfig& s, const GPTConfig* teacher, int B, int P, int K,
                                                int top_k) {
    const bool sft = teacher == nullptr;
    const double T = P + K - 1;  // a training row's input positions
    auto parameters = [](const GPTConfig& c) {
        size_t sizes[NUM_PARAMETER_TENSORS], n = 0;
        fill_parameter_sizes(sizes, c);
        for (size_t x : sizes) n += x;
        return (double)n;
    };
    // elements of an ActivationTensors for (rows, Tn): stored (T) and statistics + logits (fp32)
    auto activations = [](const GPTConfig& c, double rows, double Tn, double& stored, double& stats, double& logits) {
        size_t sizes[NUM_ACTIVATION_TENSORS];
        fill_activation_sizes(sizes, c, (size_t)rows, (size_t)Tn);
        stored = stats = 0;
        for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) (activation_is_statistic(i) ? stats : stored) += sizes[i];
        logits = sizes[NUM_ACTIVATION_TENSORS - 1];
        stats -= logits;
    };
    // GpuInferScratchOf: x, ln, qkv, atty, proj, fch (11 C a position) and attention's
    // scratch (q, k, v, y and the weights) for a prefill of rows x Tn
    auto infer_scratch = [](const GPTConfig& c, double rows, double Tn) {
        const double N = rows * Tn, C = c.channels;
        return 11 * N * C + 4 * N * C + rows * c.num_heads * Tn * Tn;
    };
    std::vector<MemoryClass> out;
    for (int p = 0; p < 2; p++) {  // p = 0: fp32, 1: bf16
        const double E = p ? 2 : 4;
        const double Ps = parameters(s), C = s.channels, Vp = s.padded_vocab_size;
        double stored, stats, logits;
        activations(s, B, T, stored, stats, logits);
        // GpuModelOf: acts_memory (+ stats_memory), grads_acts_memory (fp32: all but the
        // logits; bf16: the stored tensors), attention_scratch, column_scratch
        const double acts = stored * E + stats * 4 + (p ? stored * 2 : (stored + stats) * 4) +
                            (7 * B * T * C + B * s.num_heads * T * T) * E +      // gpu::attention_scratch_size
                            2 * std::ceil(B * T / 32) * 4 * C * 4;               // gpu::column_scratch_size (N, 4C)
        double record = 0, sampling = 0;
        if (!sft) {  // GpuRecordOf (B, P + K - 1; its logits are the student's), GpuKVCacheOf (L, B, P + K, C)
                     // x2, the generator's scratch
            double r_stored, r_stats, r_logits;
            activations(s, B, P + K - 1, r_stored, r_stats, r_logits);
            record = r_stored * E + r_stats * 4;
            sampling = 2.0 * s.num_layers * B * (P + K) * C * E + (infer_scratch(s, B, P) + B * C) * E +
                       2.0 * B * P * 4 + B * Vp * 4;  // + `last`, the record's statistics, the draws' logits
        }
        double teacher_weights = 0, teacher_pass = 0, teacher_logits = 0;
        if (!sft) {
            const double Vt = teacher->padded_vocab_size, targets = (double)B * K, Ct = teacher->channels;
            teacher_weights = parameters(*teacher) * E;  // GpuDeviceOf keeps no teacher master
            teacher_pass = (infer_scratch(*teacher, B, T) + 2 * targets * Ct) * E;  // + head_atty, last
            if (top_k) {  // a chunk's rows at a time (GpuDeviceOf::teacher_forward), then (B T, K + 1) + (B T, K)
                const double chunk = std::min<double>(B, std::max(1.0, std::floor((256.0 * 1048576) / (T * Vt * 4))));
                teacher_logits = chunk * K * Vt * 4 + B * T * (2.0 * top_k + 1) * 4;
            } else {
                teacher_logits = targets * Vt * 4;
            }
        }
        const double values[] = {p ? 2 * Ps : 4 * Ps, p ? 4 * Ps : 0, 4 * Ps, 8 * Ps, acts,
                                 record + sampling, teacher_weights + teacher_pass,
                                 logits * 4 + teacher_logits};
        if (p == 0) {
            const char* names[] = {"student weights (working copy)", "student master weights", "weight gradients",
                                   "AdamW moments (m, v)", "activations + their gradients",
                                   "sampling: KV cache, record, scratch", "teacher: weights + its pass",
                                   "logits (student, teacher)"};
            const char* keeps[] = {"bf16", "fp32 (fp32 mode: the working copy)", "fp32", "fp32",
                                   "bf16, LayerNorm statistics fp32", "bf16 (the record's statistics fp32)",
                                   "bf16", "fp32"};
            for (int i = 0; i < 8; i++) out.push_back({names[i], keeps[i], {values[i], 0}});
        } else {
            for (int i = 0; i < 8; i++) out[i].bytes[1] = values[i];
        }
    }
    return out;
}

static double memory_total(const std::vector<MemoryClass>& rows, int precision) {
    double t = 0;
    for (const MemoryClass& r : rows) t += r.bytes[precision];
    return t;
}

// The table, in MB (10^6 bytes), and the bf16 / fp32 ratio.
static void print_memory_table(const std::vector<MemoryClass>& rows, const std::string& shape) {
    printf("\ndevice memory of one step on the CUDA path, by tensor class (%s; computed from the shapes, the cuBLAS "
           "workspace and the CUDA context apart)\n\n", shape.c_str());
    printf("| tensor class | fp32 MB | bf16 MB | --precision bf16 stores it in |\n|---|---:|---:|---|\n");
    for (const MemoryClass& r : rows)
        printf("| %s | %.1f | %.1f | %s |\n", r.name, r.bytes[0] / 1e6, r.bytes[1] / 1e6, r.bf16_keeps);
    const double f = memory_total(rows, 0), h = memory_total(rows, 1);
    printf("| total | %.1f | %.1f | bf16 / fp32 = %.3f |\n", f / 1e6, h / 1e6, h / f);
}
