// cuda/device.cuh — GpuDevice: CpuDevice's twin (device.h), each phase of a training step
// and of evaluation on the GPU.
//
// It holds the student (with gradients and AdamW's moments when it trains) and the
// teacher on the device, their generators, the teacher's logits at the loss's targets (or
// its top-K or target signal, computed there or uploaded from a cache) and the loss's
// small per-position arrays. The host's copies lag until copy_to_host: checkpoints, the final
// save and nothing else need them, so a step moves only token ids and a few scalars
// across PCIe.
//
// Tricks worth knowing:
// - Every phase ends with a device synchronisation (or a download that implies one), so
//   the step's phase times, taken on the host, are the phases' own.
// - Evaluation during training uses the models as they are on the device now: nothing is
//   uploaded again.
// - GpuDeviceOf<T> runs in T's precision (cuda/precision.cuh); make_gpu_device picks T
//   from --precision. Only the trained student keeps fp32 master weights on the device.
#pragma once
#include "adamw.cuh"
#include "common.cuh"
#include "loss.cuh"
#include "model.cuh"
#include "sampling.cuh"

template <typename T>
struct GpuDeviceOf : Device {
    GpuModelOf<T> student, teacher;
    bool has_teacher = false;
    GPT<float>* host_student = nullptr;  // training: where copy_to_host writes
    GpuGeneratorOf<T> student_gen, teacher_gen;
    GpuInferScratchOf<T> scratch;        // forward passes with no activations kept
    DeviceBuffer<float> teacher_logits;  // (targets, Vp of the teacher): its logits where the loss reads them
    DeviceBuffer<int> teacher_row;       // (N) position n's row of teacher_logits, -1 off the targets
    DeviceBuffer<int> signal_at;         // (targets of a chunk) their batch positions
    GpuTeacherSignal teacher_signal;     // else (N, K + 1) and (N, K), or (N)
    DeviceBuffer<float> eval_logits;     // (N, Vp) before they go to the host
    GpuLossBuffers loss;
    TeacherSignal cached_signal;         // a batch's signal from --teacher-cache, on its way to the device
    GpuRecordOf<T> sampled;              // the last on-policy sampling's activations, for the student's forward

    // inference only: sampling and evaluation
    GpuDeviceOf(const GPT<float>& model, const GPT<float>* teacher, bool tf32 = false) {
        upload(model, teacher, tf32, false);
    }
    // training: the student with its master weights and AdamW's state (zeros before the first update)
    GpuDeviceOf(GPT<float>& student_on_host, const AdamW& opt, const GPT<float>* teacher, bool tf32) {
        upload(student_on_host, teacher, tf32, true);
        host_student = &student_on_host;
        gpu_upload_optimizer(student, opt);
    }
    void upload(const GPT<float>& model, const GPT<float>* teacher, bool tf32, bool trains) {
        gpu_init(tf32);
        gpu_upload(student, model, trains);
        if (teacher) { gpu_upload(this->teacher, *teacher, false); has_teacher = true; }
    }
    Precision precision() const { return is_fp32<T>() ? Precision::fp32 : Precision::bf16; }

    bool on_gpu() const override { return true; }
    const GpuModelOf<T>& of(Role who) const {
        GKD_ASSERT(who == Role::Student || has_teacher, "a teacher phase without a teacher");
        return who == Role::Student ? student : teacher;
    }
    GpuModelOf<T>& trained() {
        GKD_ASSERT(host_student, "a training phase on an inference-only device");
        return student;
    }

    std::vector<std::vector<int>> generate(Role who, const Prompts& prompts, const std::vector<int>& budgets,
                                           double temperature, int eos, uint64_t seed, uint64_t stream,
                                           const std::vector<uint64_t>& row_ids) override {
        return gpu_generate(of(who), who == Role::Student ? student_gen : teacher_gen, prompts, budgets, temperature,
                            eos, seed, stream, row_ids);
    }
    std::vector<std::vector<int>> speculative_generate(const Prompts& prompts, const std::vector<int>& budgets,
                                                       int draft_tokens, double temperature, int eos, uint64_t seed,
                                                       uint64_t stream, const std::vector<uint64_t>& row_ids,
                                                       SpeculativeStats& stats) override {
        return gpu_speculative_generate(student, student_gen, of(Role::Teacher), teacher_gen, prompts, budgets,
                                        draft_tokens, temperature, eos, seed, stream, row_ids, stats);
    }
    // logits (device) at every position of b, packed: no KV cache, nothing decodes after it
    void forward_all_positions(Role who, const TrainBatch& b, float* logits) {
        gpu_infer_packed(of(who), scratch, b.tokens.data(), b.row_start.data(), b.B, logits);
    }
    void logits(Role who, const TrainBatch& b, std::vector<float>& out) override {
        out.resize((size_t)b.N * of(who).config.padded_vocab_size);
        float* d = eval_logits.ensure(out.size());
        forward_all_positions(who, b, d);
        download(out.data(), d, out.size());
    }

    // The teacher's pass for the loss over rows [r0, r0 + count) of b, packed, as the CPU's:
    // each row up to its last target (loss_extent), the LM head at the targets alone
    // (gpu_infer_packed's head_at). logits (device) gets (targets of these rows, Vp) in
    // batch order; at, the batch position of each.
    void teacher_pass(const TrainBatch& b, const std::vector<int>& n_new, int r0, int count, std::vector<int>& at,
                      DeviceBuffer<float>& logits) {
        std::vector<int> tokens, row_start(1, 0), head;
        at.clear();
        for (int i = r0; i < r0 + count; i++) {
            const int n0 = b.row_start[i];
            for (int t = 0; t < n_new[i]; t++) {
                if (b.targets[n0 + t] >= 0) { head.push_back((int)tokens.size()); at.push_back(n0 + t); }
                tokens.push_back(b.tokens[n0 + t]);
            }
            row_start.push_back((int)tokens.size());
        }
        const GpuModelOf<T>& t = of(Role::Teacher);
        float* out = logits.ensure(std::max<size_t>(1, head.size()) * t.config.padded_vocab_size);
        gpu_infer_packed(t, scratch, tokens.data(), row_start.data(), count, out, &head);
    }
    // what the loss reads of the teacher at every target position of b: its logit rows
    // (teacher_row maps a position to its row), or, when the loss needs less (top-K, the
    // sampled reverse KL), the signal reduced on the device a chunk of rows at a time, the
    // chunk's logits within 256 MB (the CPU's teacher_forward, chunk for chunk)
    void teacher_forward(const TrainBatch& b, const LossSpec& spec) override {
        std::vector<int> n_new, head_from, at;
        loss_extent(b, n_new, head_from);
        const int N = b.N, V = of(Role::Teacher).config.vocab_size;
        const int Vp = of(Role::Teacher).config.padded_vocab_size, K = spec.top_k;
        if (spec.needs_teacher_rows()) {
            teacher_pass(b, n_new, 0, b.B, at, teacher_logits);
            std::vector<int> row_of(N, -1);
            for (size_t j = 0; j < at.size(); j++) row_of[at[j]] = (int)j;
            teacher_row.upload(row_of);
            CUDA_CHECK(cudaDeviceSynchronize());
            return;
        }
        GKD_ASSERT(K <= V, "--teacher-top-k above the vocabulary");
        teacher_signal.K = K;
        if (K) {
            teacher_signal.logp.ensure((size_t)N * (K + 1));
            teacher_signal.ids.ensure((size_t)N * K);
        } else {
            teacher_signal.target_logp.ensure(N);
        }
        loss.targets.upload(b.targets.data(), N);
        const int chunk = std::max(1, (int)((256ull << 20) / ((size_t)Vp * sizeof(float))));  // positions
        for (int r0 = 0, r1; r0 < b.B; r0 = r1) {
            r1 = rows_within(b, r0, chunk);
            teacher_pass(b, n_new, r0, r1 - r0, at, teacher_logits);
            if (at.empty()) continue;
            signal_at.upload(at);
            gpu_teacher_signal(teacher_signal, teacher_logits.ptr, Vp, signal_at.ptr, loss.targets.ptr, (int)at.size(),
                               V, K, spec.tau);
        }
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    // the cache's signal (data/teacher_cache.h) into the host's TeacherSignal, then to the
    // device: (N, K + 1) floats and (N, K) ids a batch
    void teacher_signal_from_cache(const TeacherCache& cache, const TrainBatch& b,
                                   const std::vector<size_t>& examples) override {
        cache.fill(cached_signal, b, examples);
        teacher_signal.upload(cached_signal);
    }
    // on-policy rows, sampling's activations recorded in the training layout (GpuRecord), so
    // that the batch built from these rows needs no forward pass (CpuDevice's twin)
    std::vector<std::vector<int>> sample_student_rows(const Prompts& prompts, const std::vector<int>& budgets,
                                                      double temperature, int eos, uint64_t seed, uint64_t stream,
                                                      const std::vector<uint64_t>& row_ids) override {
        int longest = 0;  // the longest input a row can have: prompt + budget - 1 (the last token is no input)
        for (size_t i = 0; i < prompts.size(); i++) longest = std::max(longest, (int)prompts[i]->size() + budgets[i] - 1);
        gpu_begin_record(sampled, trained(), (int)prompts.size(), longest);
        return gpu_generate(student, student_gen, prompts, budgets, temperature, eos, seed, stream, row_ids, &sampled);
    }
    // the sampled batch's forward is already in the record: it is packed down, not rerun
    bool student_forward_from_samples(const TrainBatch& b) override {
        const bool reused =
            gpu_forward_from_record(trained(), sampled, b.tokens.data(), b.targets.data(), b.row_start.data(), b.B);
        if (reused) CUDA_CHECK(cudaDeviceSynchronize());
        return reused;
    }
    void student_forward(const TrainBatch& b) override {
        gpu_forward(trained(), b.tokens.data(), b.row_start.data(), b.B);
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    double student_loss(const TrainBatch& b, const LossSpec& spec, PolicyGradientTerm* pg) override {
        GpuModelOf<T>& s = trained();
        const int Vp_teacher = spec.needs_teacher_rows() ? teacher.config.padded_vocab_size : 0;
        return gpu_batch_loss(loss, b, teacher_logits.ptr, Vp_teacher, teacher_row.ptr, teacher_signal, s.acts.logits,
                              s.config.vocab_size, s.config.padded_vocab_size, spec, nullptr, pg);
    }
    void student_backward() override {
        gpu_zero_grad(trained());
        gpu_backward(trained());
    }
    void sum_gradients_across_ranks() override {
        gpu_sum_across_ranks(trained().grads_memory.ptr, trained().num_parameters);  // NCCL, between the ranks' GPUs
    }
    double gradient_norm() override {
        return gpu_grad_norm(trained());  // synchronises: the norm comes back to the host
    }
    void student_update(AdamW& opt, double lr, double grad_scale) override {
        gpu_adamw_update(trained(), opt, lr, grad_scale);
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    void copy_to_host(AdamW& opt) override {
        gpu_download_parameters(trained(), *host_student);
        if (opt.t > 0) gpu_download_optimizer(student, opt);
    }
};
using GpuDevice = GpuDeviceOf<float>;

// The device for --device cuda in the run's precision: --precision fp32 or bf16, or (auto)
// bf16 where the GPU's tensor cores take it (default_precision). tf32 applies to fp32.
static Precision resolve_precision(const std::string& precision, bool tf32) {
    gpu_init(tf32);
    if (precision == "fp32") return Precision::fp32;
    if (precision == "bf16") return Precision::bf16;
    return tf32 ? Precision::fp32 : default_precision();
}
template <typename... Args>
static std::unique_ptr<Device> make_gpu_device(const std::string& precision, bool tf32, Args&&... args) {
    if (resolve_precision(precision, tf32) == Precision::bf16)
        return std::make_unique<GpuDeviceOf<bf16>>(std::forward<Args>(args)...);
    return std::make_unique<GpuDeviceOf<float>>(std::forward<Args>(args)...);
}
