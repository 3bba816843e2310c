// gkd.cu — Generalized Knowledge Distillation (Agarwal et al., ICLR 2024) for GPT-2: the
// program. It holds the trainer and reads top to bottom:
//   1. the GKD step, gkd_step: the paper's Algorithm 1, each phase one call on the run's
//      Device (device.h), the CPU or the GPU;
//   2. evaluation: the teacher-forced NLL and divergence, greedy and sampled completions
//      scored by a task, the on-policy gap, the student as a speculative draft;
//   3. the training loop: load, step, log, evaluate, checkpoint, save; and the checkpoints
//      of the whole training state that --resume continues from;
//   4. the command line (cli/) and main.
// The files below are the rest of the program, in the order a reader meets them; each opens
// with what it is and the tricks it plays.
//
// gkd is one translation unit, in llm.c's spirit: this file includes the others. It
// compiles as C++ (g++ -x c++) on machines without nvcc: then cuda/ is left out (device.h)
// and --device cuda is refused.
#ifndef GKD_CU  // the tests and fuzzers include this file
#define GKD_CU

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>
using nlohmann::json;

#include "utils.h"               // defines: GKD_FAIL, GKD_ASSERT, strf, InputFile, AtomicWriter, FileLock, Rng, derive_seed
#include "model.h"               // defines: GPT, gpt_forward, gpt_backward, gpt_infer, KVCache, gpt_load, gpt_save (on cpu/)
#include "safetensors.h"         // defines: gpt_load_any, gpt_save_safetensors (Hugging Face checkpoints)
#include "tokenizer.h"           // defines: Tokenizer, ByteTokenizer, BpeTokenizer, load_tokenizer
#include "data/dataset.h"        // defines: Example, Dataset, parse_example, load_jsonl
#include "data/tasks.h"          // defines: the built-in tasks, score_completion, TaskScore, REWARDS
#include "data/convert.h"        // defines: convert_dataset (GSM8K, Alpaca, Dolly)
#include "loss.h"                // defines: TrainBatch, build_batch, divergence_row, LossSpec, full_row_loss
#include "sampling.h"            // defines: RngStream, pick_token, Generator, generation_loop, generate
#include "adamw.h"               // defines: AdamW, adamw_update, grad_norm, clip_coefficient, learning_rate
#include "speculative.h"         // defines: SpeculativeStats, speculative_loop, speculative_generate
#include "distributed.h"         // defines: world, sum_across_ranks, on_every_rank, fail_on_every_rank
#include "data/teacher_cache.h"  // defines: TeacherCache, TeacherCacheWriter
#include "device.h"              // defines: Device, CpuDevice, training_device (and cuda/'s GpuDevice)
#include "cli/flags.h"           // defines: Flags, FlagSpec, command_flags, resolve_device
#include "train_options.h"       // defines: TrainOptions, train_options, options_to_json, read_train_flags

// ----------------------------------------------------------------------------
// 1. the GKD step

struct Trainer {
    TrainOptions opt;
    GPT<float> student, teacher;  // on the host (with --device cuda, copy_student_to_host refreshes the student)
    bool has_teacher = false;
    std::unique_ptr<Tokenizer> tok;
    Dataset data, eval_data;
    AdamW adam;
    std::vector<int> permutation;       // of the current epoch, when shuffling
    long long permutation_epoch = -1;
    std::vector<long long> batch_begin; // --batch-tokens: where step k's examples begin in the stream (batch_span)
    // where the phases of a step run (device.h): made by create_training_device
    std::unique_ptr<Device> device;
    // --teacher-cache: the teacher's top-K of every example, for the off-policy steps
    std::unique_ptr<TeacherCache> cache;
    // gkd bench's baseline: each batch padded to its longest row (pad_batch), so that the
    // student's forward and backward run the rectangle a padding trainer runs (the teacher's
    // pass and sampling lay their rows end to end whatever the batch); gkd itself never pads
    bool pad_batches = false;
};

// The loss of the run's steps, from its options (docs/algorithm.md §1).
static LossSpec loss_spec(const TrainOptions& o) {
    LossSpec spec;
    spec.cross_entropy = o.sft;
    spec.objective = o.objective;
    spec.beta = o.beta;
    spec.tau = o.loss_temperature;
    spec.norm = o.loss_norm;
    spec.top_k = o.teacher_top_k;
    spec.kl_discount = o.kl_discount;
    return spec;
}

struct StepStats {
    double loss = 0, grad_norm = 0, lr = 0, ms = 0;
    double sample_ms = 0, teacher_ms = 0, forward_ms = 0, loss_ms = 0, backward_ms = 0, update_ms = 0;  // by phase
    double divergence = NAN, reward_mean = NAN, reward_std = NAN, correct = NAN;  // with a reward
    bool on_policy = false;
    bool forward_reused = false;  // the student's forward was completed from sampling's record
    int tokens = 0;               // target tokens of the whole batch
};

// The run's stream of examples: position g is example g mod N of the file, or of epoch
// g / N's shuffle.
static const Example* example_at(Trainer& tr, long long g) {
    const size_t N = tr.data.examples.size();
    size_t index = (size_t)(g % (long long)N);
    if (tr.opt.shuffle) {
        const long long epoch = g / (long long)N;
        if (epoch != tr.permutation_epoch) {
            tr.permutation.resize(N);
            for (size_t j = 0; j < N; j++) tr.permutation[j] = (int)j;
            Rng rng(derive_seed(tr.opt.seed, STREAM_SHUFFLE, (uint64_t)epoch));
            for (size_t j = N - 1; j > 0; j--) std::swap(tr.permutation[j], tr.permutation[rng.below(j + 1)]);
            tr.permutation_epoch = epoch;
        }
        index = tr.permutation[index];
    }
    return &tr.data.examples[index];
}

// --batch-tokens: the positions an example's row is expected to take, with each of its
// --samples-per-prompt rows: its prompt and its dataset completion with the EOS (without a
// completion, the sampling budget). A sampled row's length is known only once sampled:
// the dataset's is the estimate.
static long long row_tokens(const Trainer& tr, const Example& e) {
    const long long completion = e.has_completion ? (long long)e.completion.size() + 1 : tr.opt.max_new_tokens;
    return ((long long)e.prompt.size() + completion) * tr.opt.samples_per_prompt;
}

// Where step k's examples lie in the stream, [begin, end): kB .. kB + B with --batch; with
// --batch-tokens, whole examples in order while their rows' tokens fit the budget (at least
// one a rank). The spans are found in order from the first step and kept: a function of the
// data, the seed and k alone, so a resumed run takes the same batches.
static std::pair<long long, long long> batch_span(Trainer& tr, int step) {
    if (tr.opt.batch_tokens == 0) return {(long long)step * tr.opt.batch, (long long)(step + 1) * tr.opt.batch};
    if (tr.batch_begin.empty()) tr.batch_begin.push_back(0);
    while ((int)tr.batch_begin.size() <= step + 1) {
        long long g = tr.batch_begin.back(), tokens = 0;
        for (int rows = 0;; rows++, g++) {
            const long long t = row_tokens(tr, *example_at(tr, g));
            if (rows >= world().size && tokens + t > tr.opt.batch_tokens) break;
            tokens += t;
        }
        tr.batch_begin.push_back(g);
    }
    return {tr.batch_begin[step], tr.batch_begin[step + 1]};
}

// The steps of one pass over the data (--steps 0).
static int steps_for_one_pass(Trainer& tr) {
    const long long N = (long long)tr.data.examples.size();
    int steps = 0;
    while (batch_span(tr, steps).first < N) steps++;
    return steps;
}

// The examples of step k (batch_span).
static std::vector<const Example*> select_examples(Trainer& tr, int step) {
    const auto [begin, end] = batch_span(tr, step);
    std::vector<const Example*> out;
    for (long long g = begin; g < end; g++) out.push_back(example_at(tr, g));
    return out;
}

// Step k's rows on this rank: the batch's prompts, each K times with --samples-per-prompt K,
// and of those this rank's share (distributed.h), in whole prompts, so that a prompt's K
// samples and their baseline stay on one rank: equal numbers of prompts, or with
// --batch-tokens contiguous shares of about equal tokens (at least one prompt each). In one
// process: all of them.
struct RankRows {
    std::vector<const Example*> examples;  // this rank's rows
    int first_row = 0;                     // the first one's place in the whole batch: its randomness
    int batch_rows = 0;                    // the whole batch's rows, every rank's
};
static RankRows this_ranks_rows(Trainer& tr, int step) {
    const int K = tr.opt.samples_per_prompt;
    const std::vector<const Example*> prompts = select_examples(tr, step);
    const int P = (int)prompts.size(), R = world().size, r = world().rank;
    int first = world().first_of(P), last = first + world().share_of(P);
    if (tr.opt.batch_tokens > 0 && R > 1) {
        std::vector<long long> before(P + 1, 0);  // tokens of the prompts before each
        for (int i = 0; i < P; i++) before[i + 1] = before[i] + row_tokens(tr, *prompts[i]);
        // rank q's share begins at the first prompt with at least q/R of the tokens before it
        auto share_start = [&](int q) {
            const long long goal = before[P] * q / R;
            const int at = (int)(std::lower_bound(before.begin(), before.end() - 1, goal) - before.begin());
            return std::min(std::max(at, q), P - (R - q));
        };
        first = share_start(r);
        last = r + 1 == R ? P : std::max(share_start(r + 1), first + 1);
    }
    RankRows rows;
    rows.batch_rows = P * K;
    rows.first_row = first * K;
    for (int i = first; i < last; i++) rows.examples.insert(rows.examples.end(), K, prompts[i]);
    return rows;
}

// The largest context both models can read.
static int shared_context(const Trainer& tr) {
    int T = tr.student.config.max_seq_len;
    return tr.has_teacher ? std::min(T, tr.teacher.config.max_seq_len) : T;
}

// --device: the Device that runs the trainer's steps, holding its models on the GPU (the
// student with its optimizer state, so a resumed run continues there) or on the CPU. A
// trainer without one gets it at its first step.
static Device& create_training_device(Trainer& tr) {
    tr.device = training_device(tr.opt.device, tr.opt.tf32, tr.opt.precision, tr.student, tr.adam, tr.has_teacher ? &tr.teacher : nullptr);
    return *tr.device;
}

// The host's student and AdamW's moments brought up to date from the device (a GPU's lag
// until this call): before a checkpoint and the final save. (Evaluation during training
// runs on the device, with the models as they are there.)
static void copy_student_to_host(Trainer& tr) {
    if (tr.device) tr.device->copy_to_host(tr.adam);
}

// Completions sampled from the student (on-policy) or the teacher (SeqKD) for these rows'
// prompts, at the sampling temperature.
static std::vector<Sequence> sample_completions(Trainer& tr, Role who, const RankRows& rows, int step, uint64_t stream) {
    Prompts prompts;
    std::vector<int> budgets;
    std::vector<uint64_t> row_ids;
    for (size_t i = 0; i < rows.examples.size(); i++) {
        prompts.push_back(&rows.examples[i]->prompt);
        budgets.push_back(std::min(tr.opt.max_new_tokens, shared_context(tr) - (int)rows.examples[i]->prompt.size()));
        row_ids.push_back(rows.first_row + i);  // the row's place in the whole batch: its randomness
    }
    const uint64_t seed = derive_seed(tr.opt.seed, stream);
    const double t = tr.opt.temperature;
    const int eos = tr.tok->eos_id();
    std::vector<std::vector<int>> completions =
        who == Role::Student ? tr.device->sample_student_rows(prompts, budgets, t, eos, seed, (uint64_t)step, row_ids)
                             : tr.device->generate(who, prompts, budgets, t, eos, seed, (uint64_t)step, row_ids);
    std::vector<Sequence> seqs(rows.examples.size());
    for (size_t i = 0; i < seqs.size(); i++) {
        seqs[i].prompt = prompts[i];
        seqs[i].completion = std::move(completions[i]);
    }
    return seqs;
}

// The dataset's completions of these examples, each ended by EOS.
static std::vector<Sequence> dataset_completions(const std::vector<const Example*>& batch, int eos) {
    std::vector<Sequence> rows(batch.size());
    for (size_t i = 0; i < batch.size(); i++) {
        rows[i].prompt = &batch[i]->prompt;
        rows[i].completion = batch[i]->completion;
        rows[i].completion.push_back(eos);
    }
    return rows;
}

// This rank's rows laid out as a batch, its loss normalised over the whole batch: every
// rank's rows and target tokens (in one process, its own).
static TrainBatch build_rank_batch(const std::vector<Sequence>& seqs, const RankRows& rows, int eos) {
    TrainBatch b = build_batch(seqs, eos);
    double batch_targets = b.num_targets;
    sum_across_ranks(&batch_targets, 1);
    b.norm_rows = rows.batch_rows;
    b.norm_targets = (long long)batch_targets;
    return b;
}

// Each row's example, by its index in the training data: where the teacher cache keeps it.
static std::vector<size_t> example_indices(const Trainer& tr, const RankRows& rows) {
    std::vector<size_t> ids;
    for (const Example* e : rows.examples) ids.push_back((size_t)(e - tr.data.examples.data()));
    return ids;
}

// RL + GKD (the paper's section 5): each sampled completion's reward; the whole batch's mean,
// sd and share scored right into st; and the policy-gradient term over these rows, REINFORCE
// with a baseline (advantages), which the loss adds with weight 1 - alpha.
static PolicyGradientTerm score_samples(const Trainer& tr, const std::vector<Sequence>& seqs, const RankRows& rows,
                                        StepStats& st) {
    const Reward& reward = find_reward(tr.opt.reward);
    const int eos = tr.tok->eos_id();
    std::vector<double> r(seqs.size());
    double sums[3] = {0, 0, 0};  // of r, r^2, and r >= 1: over the whole batch's rows
    for (size_t i = 0; i < seqs.size(); i++) {
        std::vector<int> ids = seqs[i].completion;
        if (!ids.empty() && ids.back() == eos) ids.pop_back();
        r[i] = reward.score(tr.tok->decode(ids), tr.tok->decode(rows.examples[i]->completion));
        sums[0] += r[i];
        sums[1] += r[i] * r[i];
        sums[2] += r[i] >= 1.0;
    }
    sum_across_ranks(sums, 3);
    st.reward_mean = sums[0] / rows.batch_rows;
    st.reward_std = std::sqrt(std::max(0.0, sums[1] / rows.batch_rows - st.reward_mean * st.reward_mean));
    st.correct = sums[2] / rows.batch_rows;
    PolicyGradientTerm pg;
    pg.advantage = advantages(r, tr.opt.samples_per_prompt, st.reward_mean);
    pg.scale = (1.0 - tr.opt.alpha) / rows.batch_rows;
    pg.alpha = tr.opt.alpha;
    pg.temperature = tr.opt.temperature;
    return pg;
}

// Fault injection for the reliability tests: GKD_FAULT="<what>:<step>" makes that fault
// happen at that step ("kill-in-checkpoint-write", "nan-loss", "rank-dies"). Unset, it
// costs a getenv.
static bool fault_injected(const char* what, int step) {
    const char* fault = getenv("GKD_FAULT");
    return fault && strf("%s:%d", what, step) == fault;
}

// A non-finite loss or gradient norm stops the run on every rank before the update, so the
// last checkpoint stays intact (GKD_FAULT="nan-loss:<step>" makes the loss NaN there).
static void stop_unless_finite(double loss, double grad_norm, int step) {
    if (fault_injected("nan-loss", step)) loss = NAN;
    if (!std::isfinite(loss))
        fail_on_every_rank(strf("step %d: the loss is not finite (%g); stopping before the update (the last "
                                "checkpoint is intact)", step, loss));
    if (!std::isfinite(grad_norm))
        fail_on_every_rank(strf("step %d: the gradient norm is not finite; stopping before the update (the last "
                                "checkpoint is intact)", step));
}

// The phases of a step, one after another: phase(name, ms) ends the running phase, writing
// its wall time (ms) into its field, and begins the next, each inside an NVTX range for
// Nsight Systems; stop() ends the last and returns the time since the clock was made.
struct PhaseClock {
    double made = now_seconds(), begun = 0;
    double* ms = nullptr;  // the running phase's field
    std::optional<NvtxRange> range;
    void phase(const char* name, double& field) {
        end_phase();
        range.emplace(name);
        ms = &field;
        begun = now_seconds();
    }
    double stop() {
        end_phase();
        return (now_seconds() - made) * 1000;
    }
    void end_phase() {
        if (ms) *ms = (now_seconds() - begun) * 1000;
        ms = nullptr;
        range.reset();
    }
};

// One step of GKD, the paper's Algorithm 1 (and SFT, its supervised special case). Every
// phase is one call on the run's Device (device.h): the CPU or the GPU.
static StepStats gkd_step(Trainer& tr, int step) {
    Device& device = tr.device ? *tr.device : create_training_device(tr);
    const TrainOptions& o = tr.opt;
    const LossSpec spec = loss_spec(o);
    StepStats st;
    PhaseClock clock;
    st.lr = learning_rate(o.lr, o.schedule, o.warmup, o.steps, step);

    // u ~ U(0, 1): the step is on-policy when u < lambda
    st.on_policy = !o.sft && Rng(derive_seed(o.seed, STREAM_COIN, (uint64_t)step)).uniform() < o.lambda;

    // a batch of prompts x (this rank's rows of it), and their completions y: the student's
    // samples (on-policy), the teacher's (SeqKD) or the dataset's
    const RankRows rows = this_ranks_rows(tr, step);
    clock.phase("sample", st.sample_ms);
    std::vector<Sequence> seqs;
    if (st.on_policy) seqs = sample_completions(tr, Role::Student, rows, step, STREAM_STUDENT_SAMPLES);
    else if (o.seq_kd) seqs = sample_completions(tr, Role::Teacher, rows, step, STREAM_TEACHER_SAMPLES);
    else seqs = dataset_completions(rows.examples, tr.tok->eos_id());
    TrainBatch b = build_rank_batch(seqs, rows, tr.tok->eos_id());
    if (tr.pad_batches) b = pad_batch(b, tr.tok->eos_id());
    st.tokens = (int)b.norm_targets;

    // the teacher's view of every token of y, with no gradient: its forward pass over x + y,
    // or, off-policy with a teacher cache, its scores of the dataset's completions, read
    if (!o.sft) {
        const bool cached = tr.cache && !st.on_policy;
        clock.phase(cached ? "teacher cache" : "teacher forward", st.teacher_ms);
        if (cached) device.teacher_signal_from_cache(*tr.cache, b, example_indices(tr, rows));
        else device.teacher_forward(b, spec);
    }

    // the student's logits over x + y, keeping what the backward needs: on-policy, the CPU
    // completes the activations its sampling recorded instead of running the pass again
    clock.phase("student forward", st.forward_ms);
    st.forward_reused = st.on_policy && device.student_forward_from_samples(b);
    if (!st.forward_reused) device.student_forward(b);

    // the token-level divergence D(p_T || p_S) at every target (SFT: the cross-entropy), its
    // gradient written over the student's logits; with a reward and alpha < 1, RL + GKD:
    // alpha D + (1 - alpha) REINFORCE on the same samples
    clock.phase("loss", st.loss_ms);
    PolicyGradientTerm pg;
    if (!o.reward.empty()) pg = score_samples(tr, seqs, rows, st);
    const bool rl = !o.reward.empty() && o.alpha < 1.0;
    double divergence = device.student_loss(b, spec, rl ? &pg : nullptr);
    sum_across_ranks(&divergence, 1);  // each rank's share of the whole batch's loss
    if (rl) sum_across_ranks(&pg.surrogate, 1);
    if (!o.reward.empty()) st.divergence = divergence;
    st.loss = rl ? o.alpha * divergence + (1.0 - o.alpha) * pg.surrogate : divergence;

    // backpropagate through the student only (the whole batch's gradient on every rank),
    // then one AdamW step, the gradient clipped to --grad-clip
    clock.phase("backward", st.backward_ms);
    device.student_backward();
    device.sum_gradients_across_ranks();
    st.grad_norm = device.gradient_norm();
    stop_unless_finite(st.loss, st.grad_norm, step);
    clock.phase("update", st.update_ms);
    device.student_update(tr.adam, st.lr, clip_coefficient(st.grad_norm, o.grad_clip));
    st.ms = clock.stop();
    return st;
}

// ----------------------------------------------------------------------------
// 2. evaluation

struct EvalOptions {
    double beta = 0.5, tau = 1.0;   // the divergence to the teacher, when there is one
    int batch = 16;
    int max_new_tokens = 64;        // for the generated completions
    std::string task;               // "arithmetic" | "words" | "walks" | "": how completions are scored
    double sample_temperature = 0;  // > 0: also sample completions, scored and measured
    int samples_per_example = 1;    // samples drawn per example (>= 2: their diversity too)
    uint64_t seed = 0;
    int draft_tokens = 0;           // > 0 (with a teacher): the model as a speculative draft of K tokens
    double draft_temperature = 1.0; // ... sampling the teacher at this temperature (0 = greedy)
};

struct EvalResult {
    size_t examples = 0, tokens = 0;
    double nll = 0;                // mean over completion tokens (and their EOS)
    double divergence = NAN;       // mean D to the teacher over the same tokens
    double exact_match = 0;        // greedy completion (with its EOS) == the reference's
    double accuracy = NAN;         // with a task: greedy completions scored by the task
    double similarity = NAN;       // with a task: mean character similarity, greedy
    // with a sample temperature: over the student's own samples (means over all of them)
    double sample_accuracy = NAN;  // with a task
    double sample_similarity = NAN;
    double sample_teacher_nll = NAN;  // with a teacher: its mean NLL per sampled token
    double sample_forward_kl = NAN;   // with a teacher: KL(teacher || student) per sampled token
    double sample_reverse_kl = NAN;   // with a teacher: KL(student || teacher) per sampled token
    double sample_diversity = NAN;    // with 2+ samples per example: distinct ones / samples
    // the on-policy gap, with a teacher: the per-token divergences on the data's
    // completions and on the student's samples, the latter split at each sample's first
    // invalid step where the task can tell (TaskScore::first_slip in data/tasks.h): "before"
    // holds the tokens whose prefix is still valid, "after" those that follow a slip
    double data_forward_kl = NAN, data_reverse_kl = NAN;
    double sample_forward_kl_before_slip = NAN, sample_reverse_kl_before_slip = NAN;
    double sample_forward_kl_after_slip = NAN, sample_reverse_kl_after_slip = NAN;
    double sample_slip_rate = NAN;         // samples with an invalid step / samples
    double sample_recovered = NAN;         // samples with an invalid step that still score correct / those
    double sample_tokens_after_slip = NAN; // sampled tokens after a slip / sampled tokens
    // with draft tokens and a teacher: the model drafting for the teacher (speculative.h)
    double draft_acceptance_rate = NAN;      // drafts kept / drafts judged, counted
    double draft_expected_acceptance = NAN;  // the mean of sum_x min(p, q) over the same positions
    double draft_tokens_per_target_forward = NAN;
    json to_json() const {
        json j = {{"examples", examples}, {"tokens", tokens}, {"nll", nll}, {"exact_match", exact_match}};
        auto put = [&](const char* k, double v) { if (!std::isnan(v)) j[k] = v; };
        put("divergence", divergence);
        put("accuracy", accuracy);
        put("similarity", similarity);
        put("sample_accuracy", sample_accuracy);
        put("sample_similarity", sample_similarity);
        put("sample_teacher_nll", sample_teacher_nll);
        put("sample_forward_kl", sample_forward_kl);
        put("sample_reverse_kl", sample_reverse_kl);
        put("sample_diversity", sample_diversity);
        put("data_forward_kl", data_forward_kl);
        put("data_reverse_kl", data_reverse_kl);
        put("sample_forward_kl_before_slip", sample_forward_kl_before_slip);
        put("sample_reverse_kl_before_slip", sample_reverse_kl_before_slip);
        put("sample_forward_kl_after_slip", sample_forward_kl_after_slip);
        put("sample_reverse_kl_after_slip", sample_reverse_kl_after_slip);
        put("sample_slip_rate", sample_slip_rate);
        put("sample_recovered", sample_recovered);
        put("sample_tokens_after_slip", sample_tokens_after_slip);
        put("draft_acceptance_rate", draft_acceptance_rate);
        put("draft_expected_acceptance", draft_expected_acceptance);
        put("draft_tokens_per_target_forward", draft_tokens_per_target_forward);
        return j;
    }
};

// Both KLs at every target of b, in fp64, row by row in order: (targets) pairs of
// KL(teacher || student) and KL(student || teacher), from logits (N, Vp of each model).
static std::vector<std::pair<double, double>> token_kls(const TrainBatch& b, const std::vector<float>& teacher_logits,
                                                        int Vp_teacher, const std::vector<float>& student_logits, int Vp_student,
                                                        int V) {
    std::vector<std::pair<double, double>> out;
    std::vector<double> lp(V), lq(V);
    auto log_softmax = [V](const float* x, std::vector<double>& out) {
        double m = x[0], z = 0;
        for (int v = 1; v < V; v++) m = std::max(m, (double)x[v]);
        for (int v = 0; v < V; v++) z += std::exp((double)x[v] - m);
        const double lz = m + std::log(z);
        for (int v = 0; v < V; v++) out[v] = (double)x[v] - lz;
    };
    for (size_t n = 0; n < b.targets.size(); n++) {
        if (b.targets[n] < 0) continue;
        log_softmax(teacher_logits.data() + n * Vp_teacher, lp);
        log_softmax(student_logits.data() + n * Vp_student, lq);
        double forward = 0, reverse = 0;
        for (int v = 0; v < V; v++) {
            forward += std::exp(lp[v]) * (lp[v] - lq[v]);
            reverse += std::exp(lq[v]) * (lq[v] - lp[v]);
        }
        out.push_back({forward, reverse});
    }
    return out;
}

// Running sums of the on-policy gap's divergences, over tokens.
struct KlSums {
    double forward = 0, reverse = 0, tokens = 0;
    void add(const std::pair<double, double>& kl) { forward += kl.first; reverse += kl.second; tokens++; }
    double mean_forward() const { return tokens ? forward / tokens : NAN; }
    double mean_reverse() const { return tokens ? reverse / tokens : NAN; }
};

// The forward passes and the generation run on `device` (the models there must be
// `model` and `teacher`), else on the CPU; the scoring stays here.
static EvalResult evaluate(const GPT<float>& model, const GPT<float>* teacher, const Dataset& data,
                           const Tokenizer& tok, const EvalOptions& eo, Device* device = nullptr) {
    CpuDevice cpu(model, teacher);  // used when no device is given
    Device& dev = device ? *device : cpu;
    EvalResult r;
    const int eos = tok.eos_id();
    std::vector<float> logits, tlogits;
    const int V = model.config.vocab_size, Vp = model.config.padded_vocab_size;
    const int Vp_teacher = teacher ? teacher->config.padded_vocab_size : 0;
    double nll_sum = 0, div_sum = 0, correct = 0, similar = 0, sample_correct = 0, sample_similar = 0;
    double sample_nll = 0, sample_fkl = 0, sample_rkl = 0, sample_tokens = 0, sample_distinct = 0;
    KlSums on_data, before_slip, after_slip;
    double slipped_samples = 0, recovered_samples = 0;
    bool slips_told = false;  // the task tells where a sample's first invalid step is
    // a loss summed over b's target tokens (the per-token mean times their count): `scored`
    // (rows Vp_scored apart) against the teacher's logits (rows Vp_teacher apart), or its own
    // cross-entropy without them
    auto token_sum = [&](const TrainBatch& b, const float* teacher_logits, int Vp_teacher, const std::vector<float>& scored,
                         int Vp_scored, bool cross_entropy, double beta, double tau) {
        double mean;
        full_row_loss(b, teacher_logits, Vp_teacher, scored.data(), (float*)nullptr, V, Vp_scored, cross_entropy, beta, tau,
                      LossNorm::Token, &mean);
        return mean * b.num_targets;
    };
    size_t matches = 0;
    SpeculativeStats drafting;
    for (size_t first = 0; first < data.examples.size(); first += eo.batch) {
        size_t last = std::min(data.examples.size(), first + eo.batch);
        std::vector<const Example*> ex;
        for (size_t i = first; i < last; i++) ex.push_back(&data.examples[i]);
        // teacher-forced: NLL of the reference completion, and the divergence to the teacher
        TrainBatch b = build_batch(dataset_completions(ex, eos), eos);
        dev.logits(Role::Student, b, logits);
        nll_sum += token_sum(b, nullptr, 0, logits, Vp, true, 0, 1);
        if (teacher) {
            dev.logits(Role::Teacher, b, tlogits);
            div_sum += token_sum(b, tlogits.data(), Vp_teacher, logits, Vp, false, eo.beta, eo.tau);
            for (auto& kl : token_kls(b, tlogits, Vp_teacher, logits, Vp, V)) on_data.add(kl);
        }
        r.tokens += b.num_targets;
        // free-running: greedy (and optionally sampled) completions, scored
        Prompts prompts;
        std::vector<int> budgets;
        std::vector<uint64_t> ids;
        for (size_t i = 0; i < ex.size(); i++) {
            prompts.push_back(&ex[i]->prompt);
            budgets.push_back(std::min(eo.max_new_tokens, model.config.max_seq_len - (int)ex[i]->prompt.size()));
            ids.push_back(first + i);
        }
        // each completion scored by the task (without one: nothing counted, no slip told)
        auto score = [&](const std::vector<std::vector<int>>& outs, double& right, double& sim) {
            std::vector<TaskScore> scores(ex.size());
            if (eo.task.empty()) return scores;
            for (size_t i = 0; i < ex.size(); i++) {
                std::vector<int> text = outs[i];
                if (!text.empty() && text.back() == eos) text.pop_back();
                scores[i] = score_completion(eo.task, tok.decode(ex[i]->prompt), tok.decode(text),
                                             tok.decode(ex[i]->completion));
                right += scores[i].correct;
                sim += scores[i].similarity;
            }
            return scores;
        };
        auto run_generate = [&](double temperature, uint64_t seed, uint64_t stream) {
            return dev.generate(Role::Student, prompts, budgets, temperature, eos, seed, stream, ids);
        };
        auto greedy = run_generate(0.0, 0, 0);
        for (size_t i = 0; i < ex.size(); i++) {
            std::vector<int> want = ex[i]->completion;
            want.push_back(eos);
            matches += greedy[i] == want;
        }
        score(greedy, correct, similar);
        if (teacher && eo.draft_tokens > 0) {  // the model as the teacher's draft, on the same prompts
            std::vector<int> both(budgets);
            for (size_t i = 0; i < ex.size(); i++)
                both[i] = std::min(both[i], teacher->config.max_seq_len - (int)ex[i]->prompt.size());
            dev.speculative_generate(prompts, both, eo.draft_tokens, eo.draft_temperature, eos, eo.seed,
                                     STREAM_SPECULATIVE, ids, drafting);
        }
        if (eo.sample_temperature <= 0) continue;
        // the student's own samples: the k-th of each example from (seed, stream k)
        std::vector<std::set<std::vector<int>>> distinct(ex.size());
        for (int k = 0; k < eo.samples_per_example; k++) {
            std::vector<std::vector<int>> samples = run_generate(eo.sample_temperature, eo.seed, (uint64_t)k);
            const std::vector<TaskScore> scores = score(samples, sample_correct, sample_similar);
            for (size_t i = 0; i < ex.size(); i++) distinct[i].insert(samples[i]);
            if (!teacher) continue;
            // how the teacher sees them: its NLL of each sampled token, and both KLs there
            std::vector<Sequence> rows(ex.size());
            for (size_t i = 0; i < ex.size(); i++) { rows[i].prompt = prompts[i]; rows[i].completion = samples[i]; }
            TrainBatch sb = build_batch(rows, eos);
            dev.logits(Role::Student, sb, logits);
            dev.logits(Role::Teacher, sb, tlogits);
            sample_nll += token_sum(sb, nullptr, 0, tlogits, Vp_teacher, true, 0, 1);
            sample_fkl += token_sum(sb, tlogits.data(), Vp_teacher, logits, Vp, false, 0.0, 1);
            sample_rkl += token_sum(sb, tlogits.data(), Vp_teacher, logits, Vp, false, 1.0, 1);
            sample_tokens += sb.num_targets;
            // the gap: each token before or after its sample's first invalid step
            std::vector<std::pair<double, double>> kls = token_kls(sb, tlogits, Vp_teacher, logits, Vp, V);
            size_t n = 0;
            for (size_t i = 0; i < ex.size(); i++) {
                const int slip = scores[i].first_slip;
                slips_told = slips_told || slip != -2;
                slipped_samples += slip >= 0;
                if (slip >= 0) recovered_samples += scores[i].correct;
                for (int j = 0; j < sb.target_count[i]; j++, n++)  // target j predicts completion token j
                    (slip >= 0 && j > slip ? after_slip : before_slip).add(kls[n]);
            }
        }
        for (auto& d : distinct) sample_distinct += (double)d.size() / eo.samples_per_example;
    }
    const double n = (double)data.examples.size();
    r.examples = data.examples.size();
    r.nll = nll_sum / r.tokens;
    if (teacher) r.divergence = div_sum / r.tokens;
    r.exact_match = matches / n;
    if (!eo.task.empty()) { r.accuracy = correct / n; r.similarity = similar / n; }
    if (teacher && eo.draft_tokens > 0) {
        r.draft_acceptance_rate = drafting.acceptance_rate();
        r.draft_expected_acceptance = drafting.expected_acceptance();
        r.draft_tokens_per_target_forward = drafting.tokens_per_verification();
    }
    if (eo.sample_temperature > 0) {
        const double samples = n * eo.samples_per_example;
        if (!eo.task.empty()) { r.sample_accuracy = sample_correct / samples; r.sample_similarity = sample_similar / samples; }
        if (teacher) {
            r.sample_teacher_nll = sample_nll / sample_tokens;
            r.sample_forward_kl = sample_fkl / sample_tokens;
            r.sample_reverse_kl = sample_rkl / sample_tokens;
        }
        if (eo.samples_per_example >= 2) r.sample_diversity = sample_distinct / n;
        if (teacher && slips_told) {
            r.sample_forward_kl_before_slip = before_slip.mean_forward();
            r.sample_reverse_kl_before_slip = before_slip.mean_reverse();
            r.sample_forward_kl_after_slip = after_slip.mean_forward();
            r.sample_reverse_kl_after_slip = after_slip.mean_reverse();
            r.sample_slip_rate = slipped_samples / samples;
            if (slipped_samples > 0) r.sample_recovered = recovered_samples / slipped_samples;
            r.sample_tokens_after_slip = after_slip.tokens / (before_slip.tokens + after_slip.tokens);
        }
    }
    if (teacher) { r.data_forward_kl = on_data.mean_forward(); r.data_reverse_kl = on_data.mean_reverse(); }
    return r;
}

// ----------------------------------------------------------------------------
// 3. the training loop. Progress: a bar with ETA on a terminal, a line every 5% otherwise
// (logs stay short)

struct Progress {
    std::string label;
    int total;
    bool quiet, tty;
    double start = now_seconds();
    int last_line = -1;
    Progress(const std::string& l, int n, bool q) : label(l), total(std::max(n, 1)), quiet(q), tty(!q && isatty(2)) {}
    double elapsed() const { return now_seconds() - start; }
    void update(int done, const std::string& info) {
        if (quiet) return;
        int twentieth = done * 20 / total;
        if (!tty && twentieth == last_line && done != total) return;
        last_line = twentieth;
        double eta = elapsed() / done * (total - done);
        std::string bar(20, '.');
        std::fill(bar.begin(), bar.begin() + twentieth, '#');
        fprintf(stderr, "%s%-16s [%s] %d/%d | %s | ETA %s%s", tty ? "\r" : "", label.c_str(), bar.c_str(), done, total,
                info.c_str(), format_duration(eta).c_str(), tty ? "  " : "\n");
    }
    void finish() {
        if (!quiet)
            fprintf(stderr, "%s%-16s done in %s, peak RSS %.0f MB\n", tty ? "\n" : "", label.c_str(),
                    format_duration(elapsed()).c_str(), peak_rss_mb());
    }
};

// ----------------------------------------------------------------------------
// the training driver: load, loop, log, save

static void make_dirs(const std::string& dir) {
    std::string partial;
    for (size_t i = 0; i <= dir.size(); i++) {
        if (i == dir.size() || dir[i] == '/') {
            if (!partial.empty() && mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
                GKD_FAIL("%s: cannot create the folder: %s", partial.c_str(), strerror(errno));
        }
        if (i < dir.size()) partial += dir[i];
    }
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) GKD_FAIL("%s: not a folder", dir.c_str());
}

static void load_inputs(Trainer& tr);

// A teacher and the model compared with it must share one vocabulary (and so one tokenizer).
static void check_same_vocabulary(const GPT<float>& teacher, const std::string& teacher_path, const GPT<float>& model,
                                  const std::string& model_path, const char* role, const char* teacher_role = "teacher") {
    if (teacher.config.vocab_size != model.config.vocab_size)
        GKD_FAIL("vocabulary mismatch: %s %s has V = %d but %s %s has V = %d; they must share one tokenizer",
                 teacher_role, teacher_path.c_str(), teacher.config.vocab_size, role, model_path.c_str(),
                 model.config.vocab_size);
}

static void load_trainer(Trainer& tr, const TrainOptions& opt) {
    tr.opt = opt;
    gpt_load_any(tr.student, opt.student_path);
    load_inputs(tr);
}

// Everything but the student: the teacher, the tokenizer, the data, AdamW's settings.
static void load_inputs(Trainer& tr) {
    TrainOptions& opt = tr.opt;
    // a cache stands in for the teacher on the off-policy steps: with lambda 0 it is not loaded
    tr.has_teacher = (!opt.sft && (opt.teacher_cache.empty() || opt.lambda > 0)) || opt.seq_kd;
    if (tr.has_teacher) {
        gpt_load_any(tr.teacher, opt.teacher_path);
        check_same_vocabulary(tr.teacher, opt.teacher_path, tr.student, opt.student_path, "student");
    }
    std::string tok_source;
    tr.tok = load_tokenizer(opt.tokenizer, tr.student.config.vocab_size, opt.student_path, &tok_source);
    if (tr.has_teacher) check_shared_tokenizer(*tr.tok, tok_source, opt.teacher_path);
    // completions come from the file unless every step samples them
    bool need_completion = opt.sft ? !opt.seq_kd : ((opt.lambda < 1.0 && !opt.seq_kd) || opt.alpha < 1.0);
    tr.data = load_jsonl(opt.data_path, *tr.tok, shared_context(tr), need_completion);
    const int V = tr.student.config.vocab_size;
    if (opt.teacher_top_k > V)
        GKD_FAIL("gkd distill: --teacher-top-k %d is above the vocabulary's %d tokens", opt.teacher_top_k, V);
    if (!opt.teacher_cache.empty()) {
        tr.cache = std::make_unique<TeacherCache>(opt.teacher_cache);
        tr.cache->check_matches(tr.data, opt.data_path, *tr.tok, V, opt.loss_temperature,
                                tr.has_teacher ? opt.teacher_path : "");
        if (opt.teacher_top_k && opt.teacher_top_k != tr.cache->header.top_k)
            GKD_FAIL("gkd distill: --teacher-top-k %d, but %s holds the top %d (the on-policy steps use the cache's K: "
                     "leave --teacher-top-k out)", opt.teacher_top_k, opt.teacher_cache.c_str(), tr.cache->header.top_k);
        opt.teacher_top_k = tr.cache->header.top_k;  // every step's divergence is over the same buckets
    }
    if (!opt.eval_data_path.empty())
        tr.eval_data = load_jsonl(opt.eval_data_path, *tr.tok, shared_context(tr), true);
    if (opt.steps == 0) tr.opt.steps = steps_for_one_pass(tr);
    tr.adam.beta1 = opt.adam_beta1;
    tr.adam.beta2 = opt.adam_beta2;
    tr.adam.eps = opt.adam_eps;
    tr.adam.weight_decay = opt.weight_decay;
}

static void write_metrics_line(FILE* f, const std::string& path, const json& j) {
    std::string line = j.dump() + "\n";
    if (fwrite(line.data(), 1, line.size(), f) != line.size() || fflush(f) != 0)
        GKD_FAIL("%s: write failed: %s", path.c_str(), strerror(errno));
}

static json eval_line(Trainer& tr, int step) {
    EvalOptions eo;
    eo.beta = tr.opt.beta;
    eo.tau = tr.opt.loss_temperature;
    eo.batch = std::max(tr.opt.batch, 16);
    eo.max_new_tokens = tr.opt.max_new_tokens;
    eo.task = tr.opt.task;
    // on the run's device, with the models as they are there now
    EvalResult r = evaluate(tr.student, tr.has_teacher ? &tr.teacher : nullptr, tr.eval_data, *tr.tok, eo,
                            tr.device.get());
    return json{{"step", step}, {"eval", r.to_json()}};
}

// ----------------------------------------------------------------------------
// checkpoints of the whole training state, and resuming from them
//
// DIR/checkpoint.bin holds everything a run needs to continue exactly: the configuration,
// the next step, the student's weights and AdamW's moments. The RNG and the data cursor
// are functions of (seed, step), so the step is their whole state. The file is replaced
// atomically (written beside, fsynced, renamed), so a crash at any moment leaves either
// the previous checkpoint or the new one.
//
//   "GKDSTATE" (8 bytes), uint32 version = 1, uint32 0, uint64 n_json, the JSON
//   {"options", "next_step", "adam_t", "model": {shape}, "num_parameters"}, then
//   float32 params[n], m[n], v[n].

constexpr uint32_t STATE_VERSION = 1;

static void save_training_state(const Trainer& tr, int next_step, const std::string& path) {
    const GPTConfig& c = tr.student.config;
    json j = {{"options", options_to_json(tr.opt)}, {"next_step", next_step}, {"adam_t", tr.adam.t},
              {"model", {{"max_seq_len", c.max_seq_len}, {"vocab_size", c.vocab_size},
                         {"padded_vocab_size", c.padded_vocab_size}, {"num_layers", c.num_layers},
                         {"num_heads", c.num_heads}, {"channels", c.channels}}},
              {"num_parameters", tr.student.num_parameters}};
    std::string text = j.dump();
    const size_t n = tr.student.num_parameters;
    std::vector<float> zeros;
    const float* m = tr.adam.m.data();
    const float* v = tr.adam.v.data();
    if (tr.adam.m.empty()) { zeros.assign(n, 0.f); m = v = zeros.data(); }  // before the first update
    uint32_t version[2] = {STATE_VERSION, 0};
    uint64_t n_json = text.size();
    AtomicWriter w(path);
    w.write("GKDSTATE", 8);
    w.write(version, sizeof version);
    w.write(&n_json, sizeof n_json);
    w.write(text.data(), text.size());
    w.write(tr.student.params_memory.data(), n * sizeof(float));
    if (fault_injected("kill-in-checkpoint-write", next_step)) { fflush(w.f); raise(SIGKILL); }
    w.write(m, n * sizeof(float));
    w.write(v, n * sizeof(float));
    w.commit();
}

// Restores the student, AdamW and the configuration; returns the step to run next.
static int load_training_state(Trainer& tr, const std::string& path) {
    InputFile in(path);
    char magic[8];
    uint32_t version[2];
    uint64_t n_json;
    if (in.size < 24) GKD_FAIL("%s: not a gkd training checkpoint (%lld bytes)", path.c_str(), in.size);
    in.read_exact(magic, 8, "the magic");
    in.read_exact(version, sizeof version, "the version");
    in.read_exact(&n_json, sizeof n_json, "the header length");
    if (memcmp(magic, "GKDSTATE", 8) != 0) GKD_FAIL("%s: not a gkd training checkpoint (bad magic)", path.c_str());
    if (version[0] != STATE_VERSION)
        GKD_FAIL("%s: training checkpoint version %u, this gkd reads version %u", path.c_str(), version[0], STATE_VERSION);
    if (n_json > (1u << 20) || (long long)n_json > in.size - 24)
        GKD_FAIL("%s: header length %llu does not fit the file", path.c_str(), (unsigned long long)n_json);
    std::string text(n_json, '\0');
    in.read_exact(&text[0], n_json, "the header");
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        GKD_FAIL("%s: the header is malformed JSON: %s", path.c_str(), dataset_detail::short_json_error(e).c_str());
    }
    GPTConfig c;
    int next_step;
    long long adam_t;
    unsigned long long n;
    TrainOptions saved;
    try {
        const json& mj = j.at("model");
        c.max_seq_len = mj.at("max_seq_len"); c.vocab_size = mj.at("vocab_size");
        c.padded_vocab_size = mj.at("padded_vocab_size"); c.num_layers = mj.at("num_layers");
        c.num_heads = mj.at("num_heads"); c.channels = mj.at("channels");
        next_step = j.at("next_step");
        adam_t = j.at("adam_t");
        n = j.at("num_parameters");
        saved = options_from_json(j.at("options"), path);
    } catch (const json::exception& e) {
        GKD_FAIL("%s: the header is missing a field or has a wrong type: %s", path.c_str(),
                 dataset_detail::short_json_error(e).c_str());
    }
    validate_config(c, path);
    size_t sizes[NUM_PARAMETER_TENSORS];
    fill_parameter_sizes(sizes, c);
    unsigned long long expected_n = 0;
    for (size_t s : sizes) expected_n += s;
    if (n != expected_n) GKD_FAIL("%s: %llu parameters do not match the model's shape (%llu)", path.c_str(), n, expected_n);
    if ((unsigned long long)in.size != 24 + n_json + 3 * 4 * n)
        GKD_FAIL("%s: file is %lld bytes, its header needs %llu: truncated or corrupt", path.c_str(), in.size,
                 24 + n_json + 12 * n);
    if (next_step < 0 || next_step > saved.steps || adam_t < 0 || adam_t > next_step)
        GKD_FAIL("%s: step %d is outside the run's %d steps", path.c_str(), next_step, saved.steps);
    gpt_build(tr.student, c);
    in.read_exact(tr.student.params_memory.data(), n * 4, "the parameters");
    tr.adam.m.assign(n, 0.f);
    tr.adam.v.assign(n, 0.f);
    in.read_exact(tr.adam.m.data(), n * 4, "the first moments");
    in.read_exact(tr.adam.v.data(), n * 4, "the second moments");
    tr.adam.t = adam_t;
    saved.out_dir = tr.opt.out_dir;
    saved.quiet = tr.opt.quiet;
    tr.opt = saved;
    return next_step;
}

// Keeps the metrics lines of steps before `next_step`: what a killed run logged after its
// last checkpoint is replaced by the resumed run, not duplicated. A torn last line goes too.
static void truncate_metrics(const std::string& path, int next_step) {
    std::string all = is_file(path) ? read_whole_file(path) : "", kept;
    size_t pos = 0;
    while (pos < all.size()) {
        size_t end = all.find('\n', pos);
        if (end == std::string::npos) break;  // no newline: a write the kill interrupted
        std::string line = all.substr(pos, end - pos);
        pos = end + 1;
        json j = json::parse(line, nullptr, false);
        if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int>() < next_step)
            kept += line + "\n";
    }
    write_file_atomic(path, kept);
}

// SIGINT and SIGTERM ask the loop to stop after the current step.
static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) { stop_signal = sig; }

struct TrainOutcome {
    StepStats last;
    int stopped_by_signal = 0;  // the signal number, or 0 when the run finished
};

// Runs steps start_step .. steps-1, logging each; writes model.bin at the end. With
// several ranks, the root alone writes (metrics, checkpoints, model.bin), evaluates and
// shows progress; all of them step.
static TrainOutcome train(Trainer& tr, int start_step = 0) {
    const TrainOptions& o = tr.opt;
    const bool root = world().root();
    std::string metrics_path = o.out_dir + "/metrics.jsonl", state_path = o.out_dir + "/checkpoint.bin";
    FILE* metrics = nullptr;
    on_every_rank([&] {
        if (!root) return;
        make_dirs(o.out_dir);
        if (start_step > 0) truncate_metrics(metrics_path, start_step);
        metrics = fopen(metrics_path.c_str(), start_step > 0 ? "a" : "w");
        if (!metrics) GKD_FAIL("%s: cannot open for writing: %s", metrics_path.c_str(), strerror(errno));
    });
    std::unique_ptr<FILE, int (*)(FILE*)> closer(metrics, [](FILE* f) { return f ? fclose(f) : 0; });
    stop_signal = 0;
    struct sigaction sa = {}, old_int, old_term;
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    Progress progress(o.label.empty() ? (o.sft ? "sft" : "distill") : o.label, o.steps - start_step, o.quiet || !root);
    long long tokens_done = 0;
    TrainOutcome out;
    for (int step = start_step; step < o.steps; step++) {
        StepStats st = gkd_step(tr, step);
        out.last = st;
        tokens_done += st.tokens;
        json line = {{"step", step}, {"loss", st.loss}, {"on_policy", st.on_policy}, {"lr", st.lr},
                     {"tokens", st.tokens}, {"grad_norm", st.grad_norm}, {"step_ms", st.ms},
                     {"sample_ms", st.sample_ms}};
        if (!std::isnan(st.reward_mean))
            line.update({{"divergence", st.divergence}, {"reward_mean", st.reward_mean}, {"reward_std", st.reward_std},
                         {"correct", st.correct}});
        if (root) write_metrics_line(metrics, metrics_path, line);
        bool evaluate_now = !tr.eval_data.examples.empty() &&
                            ((o.eval_every > 0 && (step + 1) % o.eval_every == 0) || step + 1 == o.steps);
        if (evaluate_now && root) write_metrics_line(metrics, metrics_path, eval_line(tr, step));
        progress.update(step + 1 - start_step, strf("loss %.4f | %s | %.0f tok/s", st.loss,
                                                    st.on_policy ? "on-policy " : "off-policy",
                                                    tokens_done / std::max(progress.elapsed(), 1e-9)));
        bool last = step + 1 == o.steps;
        const int stop = max_across_ranks(stop_signal);  // every rank stops after the same step
        if (!last && root && (stop || (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0))) {
            copy_student_to_host(tr);
            save_training_state(tr, step + 1, state_path);
        }
        if (fault_injected("rank-dies", step) && world().size > 1 && world().rank == world().size - 1) raise(SIGKILL);
        if (stop && !last) {
            out.stopped_by_signal = stop;
            if (root)
                fprintf(stderr, "\n%s after step %d: the whole training state is in %s; continue with "
                                "gkd %s --resume %s\n", stop == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)",
                        step, state_path.c_str(), o.sft ? "sft" : "distill", o.out_dir.c_str());
            break;
        }
    }
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    if (out.stopped_by_signal) return out;
    progress.finish();
    if (!root) return out;
    copy_student_to_host(tr);
    gpt_save(tr.student, o.out_dir + "/model.bin");
    if (is_file(state_path)) unlink(state_path.c_str());  // finished: model.bin is the result
    if (!o.quiet) fprintf(stderr, "saved %s/model.bin and %s\n", o.out_dir.c_str(), metrics_path.c_str());
    return out;
}

// ----------------------------------------------------------------------------
// 4. the command line (cli/): its commands call the trainer and evaluation above, so it
// comes last in the one translation unit

#include "cli/commands.h"

#ifndef GKD_NO_MAIN
int main(int argc, char** argv) {
    // With several ranks, an error that reaches here happened on this rank alone: it is
    // reported naming the rank, and the job ends, so that no rank waits in a collective.
    auto fail = [](const char* what) {
        fprintf(stderr, "gkd: error%s: %s\n", world().tag().c_str(), what);
        if (world().size > 1) abort_all_ranks(1);
        ranks_finalize();
        return 1;
    };
    int status = 1;
    try {
        ranks_init(&argc, &argv);
        // which variant of gkd's own CPU kernels runs (cpu/packed_tile.h): the CPU's
        // widest, unless GKD_CPU_KERNELS names a narrower one
        const std::string kernels = select_cpu_kernels(getenv("GKD_CPU_KERNELS"));
        if (!kernels.empty()) throw GkdError(kernels);
        status = run_command(argc, argv);
    } catch (const ExitRequest& e) {
        status = e.status;
    } catch (const GkdError& e) {
        return fail(e.what());
    } catch (const std::bad_alloc&) {
        return fail("out of memory");
    } catch (const std::exception& e) {
        return fail(e.what());
    }
    ranks_finalize();
    return status;
}
#endif

#endif  // GKD_CU

