// cuda/device.cuh — GpuDevice: CpuDevice's twin (device.h), each phase of a training step
// and of evaluation on the GPU.
//
// It holds the student (with gradients and AdamW's moments when it trains) and the
// teacher on the device, their generators, the teacher's logits and the loss's small
// per-position arrays. The host's copies lag until copy_to_host: checkpoints, the final
// save and nothing else need them, so a step moves only token ids and a few scalars
// across PCIe.
//
// Tricks worth knowing:
// - Every phase ends with a device synchronisation (or a download that implies one), so
//   the step's phase times, taken on the host, are the phases' own.
// - Evaluation during training uses the models as they are on the device now: nothing is
//   uploaded again.
#pragma once
#include "adamw.cuh"
#include "common.cuh"
#include "loss.cuh"
#include "model.cuh"
#include "sampling.cuh"

struct GpuDevice : Device {
    GpuModel student, teacher;
    bool has_teacher = false;
    GPT<float>* host_student = nullptr;  // training: where copy_to_host writes
    GpuGenerator student_gen, teacher_gen;
    GpuInferScratch scratch;             // forward passes with no activations kept
    DeviceBuffer<float> teacher_logits;  // (B, T, Vp of the teacher)
    DeviceBuffer<float> eval_logits;     // (B, T, Vp) before they go to the host
    GpuLossBuffers loss;

    // inference only: sampling and evaluation, in fp32
    GpuDevice(const GPT<float>& model, const GPT<float>* teacher, bool tf32 = false) {
        gpu_init(tf32);
        gpu_upload(student, model);
        if (teacher) { gpu_upload(this->teacher, *teacher); has_teacher = true; }
    }
    // training: the student with AdamW's state (zeros before the first update)
    GpuDevice(GPT<float>& student_on_host, const AdamW& opt, const GPT<float>* teacher, bool tf32)
        : GpuDevice(student_on_host, teacher, tf32) {
        host_student = &student_on_host;
        gpu_upload_optimizer(student, opt);
    }

    bool on_gpu() const override { return true; }
    const GpuModel& of(Role who) const {
        GKD_ASSERT(who == Role::Student || has_teacher, "a teacher phase without a teacher");
        return who == Role::Student ? student : teacher;
    }
    GpuModel& trained() {
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
    // logits (device) at every position of b: no KV cache, nothing decodes after it
    void forward_all_positions(Role who, const TrainBatch& b, float* logits) {
        std::vector<int> rows(b.B), start(b.B, 0), n_new(b.B, b.T);
        for (int i = 0; i < b.B; i++) rows[i] = i;
        gpu_infer(of(who), nullptr, scratch, b.tokens.data(), rows.data(), start.data(), n_new.data(), b.B, b.T, logits,
                  true);
    }
    void logits(Role who, const TrainBatch& b, std::vector<float>& out) override {
        out.resize((size_t)b.B * b.T * of(who).config.padded_vocab_size);
        float* d = eval_logits.ensure(out.size());
        forward_all_positions(who, b, d);
        download(out.data(), d, out.size());
    }

    // the GPU keeps the teacher's whole logit rows: the top-K, total variation and sampled
    // reverse KL losses are the CPU's alone (the command line refuses them with --device cuda)
    void teacher_forward(const TrainBatch& b, const LossSpec& spec) override {
        GKD_ASSERT(spec.cross_entropy || (spec.needs_teacher_rows() && spec.objective == Objective::Jsd),
                   "a loss the CUDA path does not implement reached it (the command line refuses it)");
        float* logits = teacher_logits.ensure((size_t)b.B * b.T * of(Role::Teacher).config.padded_vocab_size);
        forward_all_positions(Role::Teacher, b, logits);
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    void teacher_signal_from_cache(const TeacherCache&, const TrainBatch&, const std::vector<size_t>&) override {
        GKD_FAIL("--teacher-cache: the CUDA path reads no teacher cache; use --device cpu");
    }
    // (no student_forward_from_samples: the GPU's sampling keeps no record)
    void student_forward(const TrainBatch& b) override {
        gpu_forward(trained(), b.tokens.data(), b.B, b.T);
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    double student_loss(const TrainBatch& b, const LossSpec& spec, PolicyGradientTerm* pg) override {
        GpuModel& s = trained();
        const int V = s.config.vocab_size, Vp_student = s.config.padded_vocab_size;
        const int Vp_teacher = spec.cross_entropy ? 0 : teacher.config.padded_vocab_size;
        return gpu_full_row_loss(loss, b, spec.cross_entropy ? nullptr : teacher_logits.ptr, Vp_teacher, s.acts.logits,
                                 V, Vp_student, spec.cross_entropy, spec.beta, spec.tau, spec.norm, nullptr, pg);
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
