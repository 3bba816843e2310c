// train_options.h — every option of a training run (gkd distill, gkd sft), declared once.
//
// train_options() holds one entry per option: its flag, its field in TrainOptions, its
// default, its range or its choices, the commands and the objectives it belongs to, the
// flag it needs beside it, whether a checkpoint saves it, and its help. Everything else is
// made from that list: TrainOptions's defaults, the flag tables and help of gkd distill
// and gkd sft (and so which flags one refuses as the other's), reading and range-checking
// the flags, the run's configuration in every checkpoint (docs/formats.md §3), and its
// range checks when a run resumes. Adding an option is its field, its entry, and the code
// that uses it; a unit test saves and resumes every saved option at a value not its default.
//
// Tricks worth knowing:
// - Each entry reaches its field through closures that the entry's maker (number, count,
//   choice, ...) writes for the field's type, so the table needs no per-type code and a
//   field of the wrong type does not compile.
// - A saved value is accepted when it is in its flag's range or is the default: a
//   default may stand for "not given" outside the range (--steps 0: one pass over the data).
// - A key missing from a saved configuration takes its default: a checkpoint written before
//   an option existed resumes as it ran.
//
// Part of gkd.cu's single translation unit, after loss.h and adamw.h (the options' enums)
// and cli/flags.h (Flags).
#pragma once

#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

// A training run's configuration. Every field without a default here has an entry in
// train_options() below, which gives its flag, its default and its range.
struct TrainOptions {
    bool sft = false;   // gkd sft: cross-entropy on completions instead of a divergence to a teacher
    std::string label;  // names the phase in the progress bar (the default experiment's phases)
    // where the run reads and writes
    std::string data_path, out_dir, eval_data_path, tokenizer, task;
    std::string student_path, teacher_path;
    // what each step does (docs/algorithm.md)
    double lambda, beta, temperature, loss_temperature;
    int max_new_tokens;
    bool seq_kd;
    LossNorm loss_norm;
    int batch, steps;  // steps 0: one pass over the data
    int batch_tokens;  // > 0: each batch whole examples up to this many tokens, instead of `batch` of them
    double lr;
    Schedule schedule;
    int warmup;
    double weight_decay, grad_clip, adam_beta1, adam_beta2, adam_eps;
    uint64_t seed;
    bool shuffle;
    int eval_every, checkpoint_every;
    // RL + GKD (the paper's section 5): maximise (1 - alpha) E[r(y)] - alpha E[D] over samples
    double alpha;
    std::string reward;      // a name in REWARDS (data/tasks.h)
    int samples_per_prompt;  // K > 1: K samples per prompt, and a per-prompt baseline
    // the teacher's signal and what is minimised (docs/algorithm.md §1.4-1.6)
    Objective objective;
    int teacher_top_k;          // > 0: the divergence over the teacher's top-K tokens and the tail
    std::string teacher_cache;  // the off-policy steps read the teacher from this file
    double kl_discount;         // the sampled reverse KL's gamma
    // where this process runs the steps, and how it shows them: not saved (a resumed run may move)
    std::string device = "cpu";  // cpu | cuda: --device auto | cpu | cuda as resolve_device resolves it
    bool tf32;           // cuda: matmuls on TF32 tensor cores instead of fp32
    std::string precision = "auto";  // cuda: auto | bf16 | fp32 (cuda/precision.cuh)
    bool quiet;          // no progress line
    TrainOptions();      // every option at its entry's default
};

// --precision's values and help (also sample's, eval's and bench's flag)
inline const std::vector<std::string> PRECISIONS = {"auto", "bf16", "fp32"};
inline const char* const PRECISION_HELP =
    "cuda: bf16 stores weights, activations and the KV cache in bf16, keeping fp32 master weights, moments, statistics and logits; fp32 is the parity mode. auto: bf16 from compute capability 8.0, else fp32";

// The commands an option belongs to.
constexpr unsigned DISTILL = 1, SFT = 2, DISTILL_AND_SFT = DISTILL | SFT;

// What becomes of an option's value: saved with the run (its checkpoint holds it; --resume
// restores it and refuses the flag), set for this process only (--resume may give it
// again), or the command's own (where a run goes, how it starts).
enum class OptionScope { Run, Process, Command };

struct TrainOption {
    const char* flag;         // --flag
    std::string key;          // its key in a checkpoint's configuration (scope Run)
    unsigned commands;        // DISTILL, SFT or both
    OptionScope scope = OptionScope::Run;
    bool takes_value = true;  // else a switch: given or not
    std::string help;         // --help's line, its default included
    bool required = false;    // a run without --resume must give it
    std::vector<Objective> objectives;  // distill: the --objective values it applies to (empty: all)
    const char* needs = nullptr;        // a flag it applies with only...
    const char* needs_why = nullptr;    // ... and what for
    double lo = 0, hi = 0;              // a number's range
    std::vector<std::string> choices;   // a choice's names
    // the field, reached by closures that the makers below write for its type
    std::function<void(TrainOptions&)> set_default;
    std::function<void(TrainOptions&, const Flags&)> read_flag;  // when the flag is given
    std::function<nlohmann::json(const TrainOptions&)> to_json;
    std::function<bool(TrainOptions&, const nlohmann::json&)> from_json;  // false: out of range

    TrainOption& must_be_given() { required = true; return *this; }
    TrainOption& only_for(std::initializer_list<Objective> o) { objectives = o; return *this; }
    TrainOption& only_with(const char* flag, const char* why) { needs = flag; needs_why = why; return *this; }
    TrainOption& saved_as(const char* k) { key = k; return *this; }
    TrainOption& for_this_process() { scope = OptionScope::Process; return *this; }
    TrainOption& for_the_command() { scope = OptionScope::Command; return *this; }
};

namespace option_maker {

inline TrainOption entry(const char* flag, unsigned commands, const std::string& help) {
    TrainOption o;
    o.flag = flag;
    o.key = flag;
    for (char& c : o.key) c = c == '-' ? '_' : c;
    o.commands = commands;
    o.help = help;
    return o;
}
// The field's value as JSON, as it is (a number, a truth value, a string).
template <typename F>
std::function<nlohmann::json(const TrainOptions&)> json_as_is(F TrainOptions::*field) {
    return [=](const TrainOptions& t) { return nlohmann::json(t.*field); };
}
// The field read back from that JSON, with no range to check.
template <typename F>
std::function<bool(TrainOptions&, const nlohmann::json&)> read_as_is(F TrainOptions::*field) {
    return [=](TrainOptions& t, const nlohmann::json& j) { t.*field = j.get<F>(); return true; };
}
// "help (default)", or "help (default: what it means)"
inline std::string with_default(const char* help, const std::string& value, const char* means) {
    return strf("%s (%s%s%s)", help, value.c_str(), means ? ": " : "", means ? means : "");
}

// A real number in [lo, hi]; its default as it is written ("1e-4").
inline TrainOption number(const char* flag, double TrainOptions::*field, const char* def, double lo, double hi,
                          unsigned commands, const char* help, const char* default_means = nullptr) {
    TrainOption o = entry(flag, commands, with_default(help, def, default_means));
    o.lo = lo;
    o.hi = hi;
    const double d = std::strtod(def, nullptr);
    o.set_default = [=](TrainOptions& t) { t.*field = d; };
    o.read_flag = [=](TrainOptions& t, const Flags& f) { t.*field = f.num(flag, d, lo, hi); };
    o.to_json = json_as_is(field);
    o.from_json = [=](TrainOptions& t, const nlohmann::json& j) {
        t.*field = j.get<double>();
        return (t.*field >= lo && t.*field <= hi) || t.*field == d;
    };
    return o;
}

// An integer in [lo, hi] (an int, or the uint64 seed).
template <typename I>
inline TrainOption count(const char* flag, I TrainOptions::*field, long long def, long long lo, long long hi,
                         unsigned commands, const char* help, const char* default_means = nullptr) {
    // a default outside the range is no value a flag can give: only its meaning is shown
    const bool given_as_flag = def >= lo && def <= hi;
    TrainOption o = entry(flag, commands, with_default(help, given_as_flag ? std::to_string(def) : "default",
                                                       default_means));
    o.lo = (double)lo;
    o.hi = (double)hi;
    o.set_default = [=](TrainOptions& t) { t.*field = (I)def; };
    o.read_flag = [=](TrainOptions& t, const Flags& f) { t.*field = (I)f.integer(flag, def, lo, hi); };
    o.to_json = json_as_is(field);
    o.from_json = [=](TrainOptions& t, const nlohmann::json& j) {
        t.*field = j.get<I>();
        const long long v = (long long)(t.*field);
        return (v >= lo && v <= hi) || v == def;
    };
    return o;
}

// A flag without a value: on when given.
inline TrainOption switch_flag(const char* flag, bool TrainOptions::*field, unsigned commands, const char* help) {
    TrainOption o = entry(flag, commands, help);
    o.takes_value = false;
    o.set_default = [=](TrainOptions& t) { t.*field = false; };
    o.read_flag = [=](TrainOptions& t, const Flags& f) { t.*field = f.on(flag); };
    o.to_json = json_as_is(field);
    o.from_json = read_as_is(field);
    return o;
}

// A yes or no written 1 or 0 (saved as true or false).
inline TrainOption one_or_zero(const char* flag, bool TrainOptions::*field, bool def, unsigned commands,
                               const char* help) {
    TrainOption o = entry(flag, commands, with_default(help, def ? "1" : "0", nullptr));
    o.set_default = [=](TrainOptions& t) { t.*field = def; };
    o.read_flag = [=](TrainOptions& t, const Flags& f) { t.*field = f.integer(flag, def, 0, 1) == 1; };
    o.to_json = json_as_is(field);
    o.from_json = read_as_is(field);
    return o;
}

// A path or a name, empty when not given.
inline TrainOption text(const char* flag, std::string TrainOptions::*field, unsigned commands, const char* help) {
    TrainOption o = entry(flag, commands, help);
    o.set_default = [=](TrainOptions& t) { (t.*field).clear(); };
    o.read_flag = [=](TrainOptions& t, const Flags& f) { t.*field = f.str(flag); };
    o.to_json = json_as_is(field);
    o.from_json = read_as_is(field);
    return o;
}

// One of `names`: an enum, whose values are the names' positions, or a string (then the
// default may be "", not given, which --help does not show).
template <typename E>
inline TrainOption choice(const char* flag, E TrainOptions::*field, const std::vector<std::string>& names,
                          const std::string& def, unsigned commands, const char* help,
                          const char* default_means = nullptr) {
    TrainOption o = entry(flag, commands, def.empty() ? std::string(help) : with_default(help, def, default_means));
    o.choices = names;
    auto value_of = [=](const std::string& name, E& out) {
        const auto at = std::find(names.begin(), names.end(), name);
        if constexpr (std::is_enum_v<E>) {
            if (at == names.end()) return false;
            out = (E)(at - names.begin());
        } else {
            if (at == names.end() && name != def) return false;
            out = name;
        }
        return true;
    };
    auto name_of = [=](E value) {
        if constexpr (std::is_enum_v<E>) return names[(size_t)value];
        else return value;
    };
    o.set_default = [=](TrainOptions& t) { value_of(def, t.*field); };
    o.read_flag = [=](TrainOptions& t, const Flags& f) { value_of(f.choice(flag, def, names), t.*field); };
    o.to_json = [=](const TrainOptions& t) { return nlohmann::json(name_of(t.*field)); };
    o.from_json = [=](TrainOptions& t, const nlohmann::json& j) { return value_of(j.get<std::string>(), t.*field); };
    return o;
}

// A flag of the command alone, with no field (--resume, --overwrite): read where it is used.
inline TrainOption command_flag(const char* flag, bool takes_value, unsigned commands, const char* help) {
    TrainOption o = entry(flag, commands, help);
    o.takes_value = takes_value;
    o.scope = OptionScope::Command;
    return o;
}

}  // namespace option_maker

// Every option of gkd distill and gkd sft, in the order --help lists them.
inline const std::vector<TrainOption>& train_options() {
    using namespace option_maker;
    using O = TrainOptions;
    static const std::vector<TrainOption> options = {
        text("data", &O::data_path, DISTILL_AND_SFT, "training examples, JSONL (docs/formats.md §4)").must_be_given(),
        text("out", &O::out_dir, DISTILL_AND_SFT, "run folder: metrics.jsonl and model.bin go here")
            .must_be_given().for_the_command(),
        number("lambda", &O::lambda, "0.5", 0, 1, DISTILL, "fraction of on-policy (student-sampled) batches, [0,1]"),
        number("beta", &O::beta, "0.5", 0, 1, DISTILL, "0 forward KL, 1 reverse KL, between: JSD(beta)")
            .only_for({Objective::Jsd}),
        number("temperature", &O::temperature, "1.0", 0, 1e6, DISTILL_AND_SFT,
               "sampling temperature for on-policy and seq-kd completions"),
        number("loss-temperature", &O::loss_temperature, "1.0", 1e-6, 1e6, DISTILL,
               "tau: both logit rows are divided by it in the divergence"),
        count("max-new-tokens", &O::max_new_tokens, 64, 1, 1 << 20, DISTILL_AND_SFT, "longest sampled completion"),
        switch_flag("seq-kd", &O::seq_kd, DISTILL_AND_SFT,
                    "off-policy batches use teacher samples instead of dataset completions"),
        choice("loss-norm", &O::loss_norm, LOSS_NORM_NAMES, "sequence", DISTILL_AND_SFT,
               "sequence (mean over sequences of per-token means) | token"),
        count("batch", &O::batch, 8, 1, 1 << 16, DISTILL_AND_SFT, "sequences per step"),
        count("batch-tokens", &O::batch_tokens, 0, 1, 1 << 30, DISTILL_AND_SFT,
              "fill each step with whole examples while their tokens (prompt + dataset completion + EOS, each "
              "sample of it) fit N, instead of --batch examples; with MPI, ranks get shares of equal tokens",
              "off: --batch examples"),
        count("steps", &O::steps, 0, 1, 1 << 30, DISTILL_AND_SFT, "optimizer steps", "one pass over the data"),
        number("lr", &O::lr, "1e-4", 0, 10, DISTILL_AND_SFT, "peak learning rate"),
        choice("lr-schedule", &O::schedule, SCHEDULE_NAMES, "constant", DISTILL_AND_SFT, "constant | cosine"),
        count("warmup", &O::warmup, 0, 0, 1 << 30, DISTILL_AND_SFT, "linear warmup steps"),
        number("weight-decay", &O::weight_decay, "0", 0, 1e3, DISTILL_AND_SFT,
               "AdamW decoupled weight decay on matrices and embeddings"),
        number("grad-clip", &O::grad_clip, "1.0", 0, 1e12, DISTILL_AND_SFT,
               "clip the global gradient norm to this; 0 = off"),
        number("adam-beta1", &O::adam_beta1, "0.9", 0, 0.999999, DISTILL_AND_SFT, "AdamW's beta1"),
        number("adam-beta2", &O::adam_beta2, "0.999", 0, 0.999999999, DISTILL_AND_SFT, "AdamW's beta2"),
        number("adam-eps", &O::adam_eps, "1e-8", 0, 1, DISTILL_AND_SFT, "AdamW's epsilon"),
        count("seed", &O::seed, 0, 0, 1LL << 62, DISTILL_AND_SFT, "seeds the lambda coin, the shuffle and the sampling"),
        one_or_zero("shuffle", &O::shuffle, true, DISTILL_AND_SFT,
                    "1: reshuffle each epoch; 0: step k takes examples kB..kB+B-1 mod N"),
        command_flag("device", true, DISTILL_AND_SFT, "auto | cpu | cuda (auto: the GPU when there is one)")
            .for_this_process(),
        switch_flag("tf32", &O::tf32, DISTILL_AND_SFT,
                    "cuda, fp32: matmuls on TF32 tensor cores (alone, it means --precision fp32)")
            .for_this_process(),
        choice("precision", &O::precision, PRECISIONS, "auto", DISTILL_AND_SFT, PRECISION_HELP).for_this_process(),
        text("eval-data", &O::eval_data_path, DISTILL_AND_SFT,
             "held-out JSONL, evaluated every --eval-every steps and at the end"),
        count("eval-every", &O::eval_every, 0, 0, 1 << 30, DISTILL_AND_SFT, "steps between evaluations",
              "only at the end")
            .only_with("eval-data", "the evaluation of held-out data"),
        choice("task", &O::task, SCORED_TASKS, "", DISTILL_AND_SFT,
               "arithmetic | words | walks | repair | gsm8k: score evaluation completions by the task")
            .only_with("eval-data", "the evaluation of held-out data"),
        text("tokenizer", &O::tokenizer, DISTILL_AND_SFT, TOKENIZER_HELP),
        switch_flag("quiet", &O::quiet, DISTILL_AND_SFT, "no progress line").for_this_process(),
        count("checkpoint-every", &O::checkpoint_every, 0, 0, 1 << 30, DISTILL_AND_SFT,
              "save the whole training state every N steps to DIR/checkpoint.bin", "only on SIGINT/SIGTERM"),
        command_flag("resume", true, DISTILL_AND_SFT, "continue the run in this folder from its checkpoint (no other flags)"),
        command_flag("overwrite", false, DISTILL_AND_SFT, "replace the run in an existing, non-empty --out folder"),
        number("alpha", &O::alpha, "1", 0, 1, DISTILL,
               "RL + GKD: maximise (1-alpha) E[reward] - alpha E[D] on student samples; 1 = pure GKD"),
        text("reward", &O::reward, DISTILL,
             "score each sample (logged; the RL term when --alpha < 1): arithmetic | similarity | exact-match")
            .only_for({Objective::Jsd, Objective::TotalVariation}),
        count("samples-per-prompt", &O::samples_per_prompt, 1, 1, 1 << 16, DISTILL,
              "K samples per prompt (per-prompt reward baseline when K > 1)"),
        choice("objective", &O::objective, OBJECTIVE_NAMES, "jsd", DISTILL,
               "jsd (the --beta family) | tv (total variation: a draft's acceptance) | sampled-reverse-kl (policy "
               "gradient on the sampled tokens' log-ratio; needs --lambda 1)"),
        count("teacher-top-k", &O::teacher_top_k, 0, 1, 1 << 30, DISTILL,
              "the divergence over the teacher's top-K tokens plus one tail bucket", "all V")
            .only_for({Objective::Jsd, Objective::TotalVariation}),
        text("teacher-cache", &O::teacher_cache, DISTILL,
             "off-policy steps read the teacher's top-K from this file (gkd teacher-cache); --teacher only for "
             "--lambda > 0")
            .only_for({Objective::Jsd, Objective::TotalVariation}),
        number("kl-discount", &O::kl_discount, "0", 0, 1, DISTILL,
               "sampled-reverse-kl: gamma, each token's advantage sums later rewards times gamma^d")
            .only_for({Objective::SampledReverseKl}),
        // the models each command starts from
        text("model", &O::student_path, SFT, "the model to fine-tune (llm.c checkpoint)").must_be_given()
            .saved_as("student"),
        text("teacher", &O::teacher_path, SFT, "with --seq-kd: SeqKD, SFT on this teacher's samples")
            .only_with("seq-kd", "SeqKD, SFT on the teacher's samples"),
        text("teacher", &O::teacher_path, DISTILL, "frozen teacher checkpoint (with --teacher-cache and --lambda 0: "
                                                   "optional)"),
        text("student", &O::student_path, DISTILL, "student checkpoint to start from").must_be_given(),
    };
    return options;
}

inline TrainOptions::TrainOptions() {
    for (const TrainOption& o : train_options())
        if (o.set_default) o.set_default(*this);
}

// gkd distill's or gkd sft's flag table, for the parser and --help.
inline std::vector<FlagSpec> train_flag_table(unsigned command) {
    std::vector<FlagSpec> specs;
    for (const TrainOption& o : train_options())
        if (o.commands & command) specs.push_back({o.flag, o.takes_value, o.help.c_str()});
    return specs;
}

// The run's configuration, saved in every checkpoint so that --resume needs nothing else:
// whether it is SFT and every option of scope Run, by key.
inline nlohmann::json options_to_json(const TrainOptions& t) {
    nlohmann::json j = {{"sft", t.sft}};
    for (const TrainOption& o : train_options())
        if (o.scope == OptionScope::Run && !j.contains(o.key)) j[o.key] = o.to_json(t);
    return j;
}

// A saved configuration read back (`where` names the file). Keys it lacks take their
// defaults; a value of the wrong type, or out of its option's range, is refused.
inline TrainOptions options_from_json(const nlohmann::json& j, const std::string& where) {
    TrainOptions t;
    try {
        t.sft = j.at("sft");
        for (const TrainOption& o : train_options())
            if (o.scope == OptionScope::Run && j.contains(o.key) && !o.from_json(t, j.at(o.key)))
                GKD_FAIL("%s: the saved configuration's %s is out of range: %s", where.c_str(), o.key.c_str(),
                         j.at(o.key).dump().c_str());
    } catch (const nlohmann::json::exception& e) {
        GKD_FAIL("%s: the saved configuration is incomplete or has a wrong type: %s", where.c_str(),
                 dataset_detail::short_json_error(e).c_str());
    }
    return t;
}

// The options of a new run of gkd distill or gkd sft (not --resume) from their flags: the
// required ones first, then every given one, range-checked, then what the entries say of
// each other (the objectives an option applies to, the flag it needs). What else a command
// asks of its flags is in cli/commands.h.
inline TrainOptions read_train_flags(const Flags& f, unsigned command) {
    TrainOptions t;
    t.sft = command == SFT;
    const char* cmd = f.command.c_str();
    for (const TrainOption& o : train_options())
        if ((o.commands & command) && o.required) f.required(o.flag);
    for (const TrainOption& o : train_options())
        if ((o.commands & command) && o.read_flag && f.given(o.flag)) o.read_flag(t, f);
    for (const TrainOption& o : train_options()) {
        if (!(o.commands & command) || !f.given(o.flag)) continue;
        if (!o.objectives.empty() &&
            std::find(o.objectives.begin(), o.objectives.end(), t.objective) == o.objectives.end()) {
            std::string names;
            for (Objective obj : o.objectives) names += (names.empty() ? "" : "|") + OBJECTIVE_NAMES[(int)obj];
            GKD_FAIL("gkd %s: --%s applies to --objective %s, not %s", cmd, o.flag, names.c_str(),
                     objective_name(t.objective));
        }
        if (o.needs && !f.given(o.needs))
            GKD_FAIL("gkd %s: --%s applies to %s: give --%s too", cmd, o.flag, o.needs_why, o.needs);
    }
    return t;
}

// The flags that may come with --resume: this process's settings alone.
inline bool allowed_with_resume(const std::string& flag) {
    if (flag == "resume") return true;
    for (const TrainOption& o : train_options())
        if (flag == o.flag) return o.scope == OptionScope::Process;
    return false;
}
