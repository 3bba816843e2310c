// device.h — where a run's work happens: on the CPU (model.h, loss.h, sampling.h, adamw.h)
// or on the GPU (cuda/). The one place outside cuda/ that knows whether this build has a
// CUDA path.
//
// A Device holds a run's models, on the host or on the GPU, and the buffers of each
// phase. It has one function per phase of a training step (sample, teacher forward,
// student forward, loss, backward, the sum over ranks, update) and the three that
// inference needs (logits at every position, generation, speculative generation). The
// trainer (gkd_step in gkd.cu) and evaluate() call them and never ask where they run, so
// they carry no #ifdef.
//
// CpuDevice is below: each phase is a call into model.h, loss.h, sampling.h or adamw.h.
// GpuDevice, its twin phase for phase, is in cuda/device.cuh (nvcc and emulated builds).
//
// Part of gkd.cu's single translation unit: included after the headers both devices use.
#pragma once
#include <memory>
#include <string>
#include <vector>

// The CUDA path is compiled by nvcc, or by g++ against the SIMT emulator (emulator/: the
// same kernels run on the CPU, for the tests); plain g++ builds leave it out.
#if defined(__CUDACC__) || defined(GKD_CUDA_EMULATOR)
#define GKD_CUDA_PATH 1
#endif

#ifdef GKD_CUDA_PATH
#include "cuda/common.cuh"
#include "cuda/layers.cuh"
#include "cuda/loss.cuh"
#include "cuda/model.cuh"
#include "cuda/adamw.cuh"
#include "cuda/sampling.cuh"
constexpr bool BUILD_HAS_CUDA = true;
#ifdef GKD_CUDA_EMULATOR
constexpr bool CUDA_EMULATED = true;  // the CUDA path runs on the CPU (emulator/)
#define GKD_BUILD_PATHS "this build: CPU and CUDA, the CUDA kernels run by the SIMT emulator on the CPU (--device cuda)"
#else
constexpr bool CUDA_EMULATED = false;
#define GKD_BUILD_PATHS "this build: CPU and CUDA (--device auto|cpu|cuda)"
#endif
#else
constexpr bool BUILD_HAS_CUDA = false;
#define GKD_BUILD_PATHS "this build: CPU only (make found no nvcc)"
// The g++ build: no GPU, and the phases of a step carry no NVTX ranges.
struct NvtxRange {
    explicit NvtxRange(const char*) {}
};
static int gpu_count() { return 0; }
#endif

enum class Role { Student, Teacher };
using Prompts = std::vector<const std::vector<int>*>;

struct Device {
    virtual ~Device() = default;
    virtual bool on_gpu() const = 0;

    // inference, for training and evaluation alike
    // A completion per prompt from the student or the teacher (generation_loop); row b's
    // randomness comes from (seed, stream, row_ids[b]) alone.
    virtual std::vector<std::vector<int>> generate(Role who, const Prompts& prompts, const std::vector<int>& budgets,
                                                   double temperature, int eos, uint64_t seed, uint64_t stream,
                                                   const std::vector<uint64_t>& row_ids) = 0;
    // Speculative sampling (speculative.h): the student drafts up to draft_tokens per
    // round, the teacher verifies; the output is distributed as the teacher's samples.
    virtual std::vector<std::vector<int>> speculative_generate(const Prompts& prompts, const std::vector<int>& budgets,
                                                               int draft_tokens, double temperature, int eos,
                                                               uint64_t seed, uint64_t stream,
                                                               const std::vector<uint64_t>& row_ids,
                                                               SpeculativeStats& stats) = 0;
    // out (N, Vp of that model): its logits at every position of b, on the host
    virtual void logits(Role who, const TrainBatch& b, std::vector<float>& out) = 0;

    // the phases of a training step, in order
    // on-policy rows: generate(Role::Student, ...) for the batch's prompts (row b is batch
    // row b). A device may record sampling's activations, so that the batch built from
    // these rows needs no forward pass (student_forward_from_samples; the CPU does).
    virtual std::vector<std::vector<int>> sample_student_rows(const Prompts& prompts, const std::vector<int>& budgets,
                                                              double temperature, int eos, uint64_t seed,
                                                              uint64_t stream, const std::vector<uint64_t>& row_ids) {
        return generate(Role::Student, prompts, budgets, temperature, eos, seed, stream, row_ids);
    }
    // what the teacher hands spec's loss at every target position of b (its logit rows, or
    // the smaller TeacherSignal), kept where student_loss reads it
    virtual void teacher_forward(const TrainBatch& b, const LossSpec& spec) = 0;
    // the same, read from an offline teacher cache (data/teacher_cache.h) instead of a pass:
    // batch row i is the dataset completion of example examples[i]
    virtual void teacher_signal_from_cache(const TeacherCache& cache, const TrainBatch& b,
                                           const std::vector<size_t>& examples) = 0;
    // the student's logits over b and the activations its backward pass needs, completed
    // from what sample_student_rows recorded instead of a pass; false when the device keeps
    // no record or the record does not hold b: then run student_forward
    virtual bool student_forward_from_samples(const TrainBatch& b) { return false; }
    // the student's logits over b, and the activations its backward pass needs: a pass
    virtual void student_forward(const TrainBatch& b) = 0;
    // the batch loss; its gradient replaces the student's logits
    virtual double student_loss(const TrainBatch& b, const LossSpec& spec, PolicyGradientTerm* pg) = 0;
    // backpropagates through the student
    virtual void student_backward() = 0;
    // data parallel: the gradient summed over the ranks, on every rank (distributed.h);
    // nothing to do in one process
    virtual void sum_gradients_across_ranks() = 0;
    // the global L2 norm of the gradient
    virtual double gradient_norm() = 0;
    virtual void student_update(AdamW& opt, double lr, double grad_scale) = 0;
    // the host's student and AdamW's moments, up to date (a GPU's lag until this call):
    // before checkpoints and the final save
    virtual void copy_to_host(AdamW& opt) = 0;
};

// What of each row of b the teacher's pass must run for the loss (both devices): row i
// up to its last target, n_new[i] positions (at least 1), and its logits from head_from[i]
// (its first target) on.
static void loss_extent(const TrainBatch& b, std::vector<int>& n_new, std::vector<int>& head_from) {
    n_new.assign(b.B, 1);
    head_from.assign(b.B, 1);
    for (int i = 0; i < b.B; i++) {
        const int* targets = b.targets.data() + b.row_start[i];
        int first = b.length(i), last = -1;
        for (int t = 0; t < b.length(i); t++)
            if (targets[t] >= 0) { first = std::min(first, t); last = t; }
        n_new[i] = std::max(last + 1, 1);
        head_from[i] = std::min(first, n_new[i]);
    }
}

// The rows of b from r0 on whose positions fit `positions`, at least one: where a chunk
// of a teacher pass that reduces its logits as it goes ends (both devices).
static int rows_within(const TrainBatch& b, int r0, int positions) {
    int r1 = r0 + 1;
    while (r1 < b.B && b.row_start[r1 + 1] - b.row_start[r0] <= positions) r1++;
    return r1;
}

struct CpuDevice : Device {
    const GPT<float>* model;                // the student, or the model being evaluated
    GPT<float>* trainee = nullptr;          // the same model, when this device trains it
    const GPT<float>* teacher;              // or null
    Generator student_gen, teacher_gen;
    InferScratch<float> student_scratch, teacher_scratch;
    std::vector<float> teacher_logits;      // (N, Vp of the teacher), when the loss reads whole rows
    TeacherSignal teacher_signal;           // else (N, K + 1) and (N, K), or (N)
    std::vector<float> teacher_chunk;       // (positions of one chunk's rows, Vp): the logits a top-K pass reduces
    ForwardRecord<float> sampled;           // the last on-policy sampling's activations, for student_forward

    // inference only: sampling and evaluation
    CpuDevice(const GPT<float>& model, const GPT<float>* teacher) : model(&model), teacher(teacher) {}
    // training: the student is updated in place
    CpuDevice(GPT<float>& student, const GPT<float>* teacher) : model(&student), trainee(&student), teacher(teacher) {}

    bool on_gpu() const override { return false; }
    const GPT<float>& of(Role who) const {
        GKD_ASSERT(who == Role::Student || teacher, "a teacher phase without a teacher");
        return who == Role::Student ? *model : *teacher;
    }
    GPT<float>& trained() {
        GKD_ASSERT(trainee, "a training phase on an inference-only device");
        return *trainee;
    }

    std::vector<std::vector<int>> generate(Role who, const Prompts& prompts, const std::vector<int>& budgets,
                                           double temperature, int eos, uint64_t seed, uint64_t stream,
                                           const std::vector<uint64_t>& row_ids) override {
        return ::generate(of(who), who == Role::Student ? student_gen : teacher_gen, prompts, budgets, temperature, eos,
                          seed, stream, row_ids);
    }
    std::vector<std::vector<int>> speculative_generate(const Prompts& prompts, const std::vector<int>& budgets,
                                                       int draft_tokens, double temperature, int eos, uint64_t seed,
                                                       uint64_t stream, const std::vector<uint64_t>& row_ids,
                                                       SpeculativeStats& stats) override {
        return ::speculative_generate(*model, student_gen, of(Role::Teacher), teacher_gen, prompts, budgets,
                                      draft_tokens, temperature, eos, seed, stream, row_ids, stats);
    }
    // a forward pass over b's rows [first, first + count) (all of them by default), packed,
    // with no activations kept and no KV cache (nothing follows it): n_new and head_from are
    // b's whole rows'; row i runs its first n_new[i] positions; with head_from, only
    // [head_from[i], n_new[i]) get logits (gpt_infer), the others zeros. out: (positions of
    // those rows, Vp), as b lays them out
    void logits_pass(Role who, const TrainBatch& b, std::vector<float>& out, const std::vector<int>& n_new,
                     const int* head_from, int first = 0, int count = -1) {
        if (count < 0) count = b.B;
        const GPT<float>& m = of(who);
        KVCache<float> no_cache;
        const int n0 = b.row_start[first];
        std::vector<int> rows(count), start(count, 0), io(count);
        for (int i = 0; i < count; i++) { rows[i] = i; io[i] = b.row_start[first + i] - n0; }
        out.resize((size_t)(b.row_start[first + count] - n0) * m.config.padded_vocab_size);
        gpt_infer(m, no_cache, who == Role::Student ? student_scratch : teacher_scratch, b.tokens.data() + n0,
                  io.data(), rows.data(), start.data(), n_new.data() + first, count, b.T, out.data(), true,
                  (ForwardRecord<float>*)nullptr, head_from ? head_from + first : nullptr);
    }
    void logits(Role who, const TrainBatch& b, std::vector<float>& out) override {
        std::vector<int> n_new(b.B);
        for (int i = 0; i < b.B; i++) n_new[i] = b.length(i);
        logits_pass(who, b, out, n_new, nullptr);
    }

    // the loss reads the teacher's logits at targets only: each row runs up to its last
    // target, and the last layer skips the positions before its first (gpt_infer's head_from).
    // When the loss needs less than the rows (top-K, the sampled reverse KL), the rows run
    // a chunk at a time and each chunk's logits are reduced at once: what is kept is
    // (N, K + 1) values and (N, K) ids, and the chunk's (positions, Vp) is the peak.
    void teacher_forward(const TrainBatch& b, const LossSpec& spec) override {
        std::vector<int> n_new, head_from;
        loss_extent(b, n_new, head_from);
        if (spec.needs_teacher_rows()) {
            logits_pass(Role::Teacher, b, teacher_logits, n_new, head_from.data());
            return;
        }
        const GPT<float>& t = of(Role::Teacher);
        const int V = t.config.vocab_size, Vp = t.config.padded_vocab_size, K = spec.top_k;
        GKD_ASSERT(K <= V, "--teacher-top-k above the vocabulary");
        teacher_logits.clear();
        teacher_logits.shrink_to_fit();
        teacher_signal.reset((size_t)b.N, K);
        const int chunk = teacher_chunk_positions(Vp);
        for (int r0 = 0, r1; r0 < b.B; r0 = r1) {
            r1 = rows_within(b, r0, chunk);
            logits_pass(Role::Teacher, b, teacher_chunk, n_new, head_from.data(), r0, r1 - r0);
            const int n0 = b.row_start[r0], positions = b.row_start[r1] - n0;
            #pragma omp parallel for schedule(dynamic, 4)
            for (int j = 0; j < positions; j++) {
                const size_t n = (size_t)n0 + j;
                const int y = b.targets[n];
                if (y < 0) continue;
                const float* row = teacher_chunk.data() + (size_t)j * Vp;
                if (K) teacher_top_k_row(row, V, K, spec.tau, teacher_signal.logp.data() + n * (K + 1),
                                         teacher_signal.ids.data() + n * K);
                else teacher_signal.target_logp[n] = (float)token_log_prob(row, y, V, spec.tau);
            }
        }
    }
    // positions per chunk of a reduced teacher pass: its logits within 16 MB (whole rows,
    // at least one: at GPT-2's vocabulary 96 positions are 19 MB)
    static int teacher_chunk_positions(int Vp) {
        return std::max(1, (int)((16ull << 20) / ((size_t)Vp * sizeof(float))));
    }
    void teacher_signal_from_cache(const TeacherCache& cache, const TrainBatch& b,
                                   const std::vector<size_t>& examples) override {
        cache.fill(teacher_signal, b, examples);  // into the buffers of the last step: no allocation
    }
    std::vector<std::vector<int>> sample_student_rows(const Prompts& prompts, const std::vector<int>& budgets,
                                                      double temperature, int eos, uint64_t seed, uint64_t stream,
                                                      const std::vector<uint64_t>& row_ids) override {
        int longest = 0;  // the longest input a row can have: prompt + budget - 1 (the last token is no input)
        for (size_t i = 0; i < prompts.size(); i++) longest = std::max(longest, (int)prompts[i]->size() + budgets[i] - 1);
        gpt_begin_record(trained(), sampled, (int)prompts.size(), longest);
        return ::generate(*model, student_gen, prompts, budgets, temperature, eos, seed, stream, row_ids, &sampled);
    }
    // the sampled batch's forward is already in the record (cpu/inference.h): it is
    // completed, not rerun
    bool student_forward_from_samples(const TrainBatch& b) override {
        auto has_target = [&](int n) { return b.targets[n] >= 0; };
        return gpt_forward_from_record(trained(), sampled, b.tokens.data(), b.row_start.data(), b.B, has_target);
    }
    void student_forward(const TrainBatch& b) override {
        gpt_forward(trained(), b.tokens.data(), b.row_start.data(), b.B);
    }
    double student_loss(const TrainBatch& b, const LossSpec& spec, PolicyGradientTerm* pg) override {
        GPT<float>& s = trained();
        const int Vp_teacher = spec.needs_teacher_rows() ? teacher->config.padded_vocab_size : 0;
        return batch_loss(b, teacher_logits.data(), Vp_teacher, teacher_signal, s.acts.logits, s.grads_acts.logits,
                          s.config.vocab_size, s.config.padded_vocab_size, spec, nullptr, pg);
    }
    void student_backward() override {
        gpt_zero_grad(trained());
        gpt_backward(trained());
    }
    void sum_gradients_across_ranks() override {
        sum_across_ranks(trained().grads_memory.data(), trained().num_parameters);
    }
    double gradient_norm() override { return grad_norm(trained()); }
    void student_update(AdamW& opt, double lr, double grad_scale) override {
        adamw_update(trained(), opt, lr, grad_scale);
    }
    void copy_to_host(AdamW&) override {}  // it is the host
};

#ifdef GKD_CUDA_PATH
#include "cuda/device.cuh"
#endif

// --device resolved (cpu | cuda): a device that trains `student` in place (with AdamW's
// state, zeros before the first update), the teacher beside it. precision (cuda): fp32,
// bf16 or auto (cuda/device.cuh's make_gpu_device); the CPU is fp32.
static std::unique_ptr<Device> training_device(const std::string& where, bool tf32, const std::string& precision,
                                               GPT<float>& student, const AdamW& opt, const GPT<float>* teacher) {
#ifdef GKD_CUDA_PATH
    if (where == "cuda") return make_gpu_device(precision, tf32, student, opt, teacher, tf32);
#endif
    GKD_ASSERT(where == "cpu", "a CUDA run in a build without CUDA");
    return std::make_unique<CpuDevice>(student, teacher);
}

// A device that runs `model` (and `teacher`) forward only: sampling and evaluation.
static std::unique_ptr<Device> inference_device(const std::string& where, const std::string& precision,
                                                const GPT<float>& model, const GPT<float>* teacher) {
#ifdef GKD_CUDA_PATH
    if (where == "cuda") return make_gpu_device(precision, false, model, teacher);
#endif
    GKD_ASSERT(where == "cpu", "a CUDA run in a build without CUDA");
    return std::make_unique<CpuDevice>(model, teacher);
}
