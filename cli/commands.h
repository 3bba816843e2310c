// cli/commands.h — gkd's command line: each command's table of flags and its cmd_*
// function, the usage text, and run_command, which main (gkd.cu) calls.
//
//   init, distill, sft, sample, eval, tokenize, convert, data: here
//   bench: cli/bench.h;  the default experiment (no arguments): cli/experiment.h
//   flag parsing and generated help: cli/flags.h
//
// A command reads its flags into the trainer's TrainOptions (or evaluation's
// EvalOptions) and hands over: no algorithm lives here.
//
// Part of gkd.cu's single translation unit.
#pragma once
#include <set>
#include <string>
#include <vector>

#include "flags.h"
#include "experiment.h"
#include "bench.h"

// gkd distill's and gkd sft's tables: their entries of train_options() (train_options.h).
static const std::vector<FlagSpec> DISTILL_FLAGS = train_flag_table(DISTILL), SFT_FLAGS = train_flag_table(SFT);

// What gkd distill asks of the teacher's signal beyond its entries: the sampled reverse KL
// is a policy gradient on the student's own samples, and a teacher cache serves the
// off-policy steps alone (docs/cli.md).
static void check_teacher_signal(const Flags& f, TrainOptions& o) {
    if (o.objective == Objective::SampledReverseKl) {
        if (o.lambda != 1.0 || o.seq_kd)
            GKD_FAIL("gkd distill: --objective sampled-reverse-kl is a policy gradient on the student's own samples: "
                     "give --lambda 1, without --seq-kd");
        if (o.temperature == 0) GKD_FAIL("gkd distill: --objective sampled-reverse-kl needs a sampling --temperature above 0");
    }
    if (!o.teacher_cache.empty()) {
        if (o.seq_kd)
            GKD_FAIL("gkd distill: --teacher-cache holds the teacher's scores of the dataset's completions; --seq-kd "
                     "samples others");
        if (o.lambda > 0 && !f.has("teacher"))
            GKD_FAIL("gkd distill: --teacher-cache serves the off-policy steps only; with --lambda %g the on-policy "
                     "steps score the student's samples with the live teacher: give --teacher too, or --lambda 0",
                     o.lambda);
    } else {
        f.required("teacher");
    }
}

// A new run's options (not --resume): read_train_flags, then what each command asks of
// their combination.
static TrainOptions parse_train_options(const Flags& f, bool sft) {
    TrainOptions o = read_train_flags(f, sft ? SFT : DISTILL);
    if (o.alpha < 1.0 && o.reward.empty())
        GKD_FAIL("gkd distill: --alpha %g mixes in a reward: give --reward NAME", o.alpha);
    if (!o.reward.empty()) {
        find_reward(o.reward);
        if (o.lambda != 1.0 || o.seq_kd)
            GKD_FAIL("gkd distill: rewards score the student's own samples: use --lambda 1, without --seq-kd");
        if (o.temperature == 0)
            GKD_FAIL("gkd distill: RL needs a sampling --temperature above 0");
    }
    o.device = resolve_device(f);
    if (sft) {
        if (o.seq_kd) f.required("teacher");
        if (!o.seq_kd && f.has("temperature"))
            GKD_FAIL("gkd sft: --temperature is the teacher's sampling temperature with --seq-kd; without it nothing "
                     "is sampled");
    } else {
        check_teacher_signal(f, o);
    }
    return o;
}

static void refuse_existing_run(const std::string& dir, bool overwrite);

// A run folder held by this process: created when absent, locked (DIR/.lock, FileLock)
// so that a second gkd on the same folder, to resume it, overwrite it or write beside it,
// is refused naming this one's pid. The kernel drops the lock when the process ends, kill
// -9 included. A folder this process created is removed again if the run fails before it
// starts (keep() not called): a refused run leaves nothing behind.
struct RunFolder {
    std::string dir;
    FileLock lock;
    bool created = false, kept = false;
    void hold(const std::string& d) {
        dir = d;
        created = !is_directory(d);
        make_dirs(d);
        lock = FileLock(d + "/.lock", strf("the run folder %s", d.c_str()));
    }
    void keep() { kept = true; }
    ~RunFolder() {
        if (!created || kept) return;
        unlink((dir + "/.lock").c_str());
        rmdir(dir.c_str());  // only if empty: nothing else is removed
    }
};

static void check_data_parallel(const TrainOptions& o);

static int cmd_train(int argc, char** argv, bool sft) {
    const std::vector<FlagSpec>& specs = sft ? SFT_FLAGS : DISTILL_FLAGS;
    const char* cmd = sft ? "sft" : "distill";
    std::optional<Flags> parsed = command_flags(
        cmd, specs, argc, argv,
        sft ? "gkd sft --model F --data F.jsonl --out DIR [flags]: cross-entropy on completions"
        : "gkd distill --teacher F --student F --data F.jsonl --out DIR [flags]: GKD");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    Trainer tr;
    int start_step = 0;
    const bool root = world().root();
    RunFolder folder;  // the root's hold on --out (or --resume): one process writes a run at a time
    on_every_rank([&] {  // every rank reads the same flags and files; the root alone owns --out
        if (f.has("resume")) {
            // the saved configuration is the run's; only the display may change
            for (const std::string& name : f.given_names())
                if (!allowed_with_resume(name))
                    GKD_FAIL("gkd %s: --resume continues the saved run as it was; --%s cannot be given with it", cmd,
                             name.c_str());
            std::string dir = f.str("resume"), path = dir + "/checkpoint.bin";
            if (root && is_directory(dir)) folder.hold(dir);
            if (!is_file(path))
                GKD_FAIL("%s: no checkpoint to resume from (a run saves one with --checkpoint-every N, or when "
                         "interrupted)", path.c_str());
            tr.opt.out_dir = dir;
            tr.opt.quiet = f.on("quiet");
            start_step = load_training_state(tr, path);
            tr.opt.device = resolve_device(f);
            tr.opt.tf32 = f.on("tf32");
            tr.opt.precision = precision_flag(f, tr.opt.device);
            if (tr.opt.sft != sft)
                GKD_FAIL("%s: this is a %s run; resume it with gkd %s --resume %s", path.c_str(),
                         tr.opt.sft ? "sft" : "distill", tr.opt.sft ? "sft" : "distill", dir.c_str());
            load_inputs(tr);
            if (!tr.opt.quiet && root)
                fprintf(stderr, "gkd %s: resuming %s at step %d of %d\n", cmd, dir.c_str(), start_step, tr.opt.steps);
        } else {
            TrainOptions o = parse_train_options(f, sft);
            if (root) {
                folder.hold(o.out_dir);  // before anything in it is looked at or removed
                refuse_existing_run(o.out_dir, f.on("overwrite"));
            }
            load_trainer(tr, o);
            if (!o.quiet && root)
                fprintf(stderr, "gkd %s: student %s (%zu parameters), %zu examples, %d steps of %s, on %s%s\n", cmd,
                        o.student_path.c_str(), tr.student.num_parameters, tr.data.examples.size(), tr.opt.steps,
                        o.batch_tokens ? strf("up to %d tokens", o.batch_tokens).c_str() : strf("%d", o.batch).c_str(),
                        o.device == "cuda" ? (o.tf32 ? "the GPU (fp32, TF32 matmuls)"
                                              : o.precision == "auto" ? "the GPU (bf16 from compute capability 8.0, else fp32)"
                                              : o.precision == "bf16" ? "the GPU (bf16)" : "the GPU (fp32)")
                                           : strf("the CPU, %d threads", omp_get_max_threads()).c_str(),
                        world().size > 1 ? strf(", on each of %d ranks", world().size).c_str() : "");
        }
        check_data_parallel(tr.opt);
        create_training_device(tr);
    });
    folder.keep();
    TrainOutcome out = train(tr, start_step);
    return out.stopped_by_signal ? 128 + out.stopped_by_signal : 0;
}

// What several ranks cannot do, refused before anything runs.
static void check_data_parallel(const TrainOptions& o) {
    const int ranks = world().size;
    if (ranks == 1) return;
    if (o.batch_tokens == 0 && o.batch < ranks)  // rows are shared out in whole prompts (a prompt's K samples stay together)
        GKD_FAIL("gkd %s: --batch %d gives fewer prompts than the %d ranks: each rank needs at least one",
                 o.sft ? "sft" : "distill", o.batch, ranks);
}

// No run silently replaces another: a non-empty --out needs --overwrite (or --resume).
static void refuse_existing_run(const std::string& dir, bool overwrite) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;  // absent: it will be created
    bool empty = true;
    while (dirent* e = readdir(d))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, ".lock")) { empty = false; break; }
    closedir(d);
    if (empty) return;
    if (!overwrite)
        GKD_FAIL("%s: the folder exists and is not empty; give --overwrite to replace its run, or --resume %s to "
                 "continue it", dir.c_str(), dir.c_str());
    // a stale checkpoint must not be resumed into the new run
    for (const char* name : {"checkpoint.bin", "metrics.jsonl", "model.bin"}) unlink((dir + "/" + name).c_str());
}

static const std::vector<FlagSpec> INIT_FLAGS = {
    {"layers", true, "L"}, {"channels", true, "C"}, {"heads", true, "NH (divides C)"},
    {"context", true, "maxT, the longest sequence"}, {"vocab", true, "byte (V = 257) or a number"},
    {"seed", true, "(0)"}, {"out", true, "checkpoint to write"}};

static int cmd_init(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "init", INIT_FLAGS, argc, argv,
        "gkd init: write a randomly initialised GPT-2 checkpoint");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    GPTConfig c;
    c.num_layers = (int)f.integer("layers", 0, 1, 1024);
    if (!f.has("layers")) f.required("layers");
    c.channels = (int)f.integer("channels", 0, 1, 65536);
    if (!f.has("channels")) f.required("channels");
    c.num_heads = (int)f.integer("heads", 0, 1, 65536);
    if (!f.has("heads")) f.required("heads");
    c.max_seq_len = (int)f.integer("context", 0, 1, 1 << 20);
    if (!f.has("context")) f.required("context");
    std::string vocab = f.str("vocab", "byte");
    c.vocab_size = vocab == "byte" ? 257 : (int)f.integer("vocab", 0, 2, 1 << 24);
    c.padded_vocab_size = pad_vocab(c.vocab_size);
    if (c.channels % c.num_heads != 0)
        GKD_FAIL("gkd init: --heads %d does not divide --channels %d", c.num_heads, c.channels);
    validate_config(c, "gkd init");
    std::string out = f.required("out");
    GPT<float> m;
    gpt_build(m, c);
    gpt_init_random(m, (uint64_t)f.integer("seed", 0, 0, 1LL << 62));
    gpt_save(m, out);
    fprintf(stderr, "wrote %s: L=%d C=%d NH=%d maxT=%d V=%d Vp=%d, %zu parameters\n", out.c_str(), c.num_layers,
            c.channels, c.num_heads, c.max_seq_len, c.vocab_size, c.padded_vocab_size, m.num_parameters);
    return 0;
}

// gkd convert IN OUT [--bf16]: any checkpoint gkd reads -> llm.c's .bin.

static int cmd_convert(int argc, char** argv) {
    const char* help =
        "gkd convert IN OUT [--bf16]: write a checkpoint in llm.c's format\n"
        "  IN     a Hugging Face GPT-2 model.safetensors (config.json beside it is read), a folder holding\n"
        "         one, or an llm.c .bin (v3 fp32 or v5 bf16)\n"
        "  OUT    the .bin to write: version 3 (fp32), or version 5 with --bf16; or OUT.safetensors: a Hugging\n"
        "         Face GPT-2 checkpoint (F32) with config.json written beside it\n"
        "  --bf16 store the parameters as bf16 (round to nearest even), as llm.c's *_bf16.bin files\n";
    std::vector<std::string> positional;
    bool bf16 = false;
    for (int i = 0; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") { fputs(help, stdout); return 0; }
        if (a == "--bf16") bf16 = true;
        else if (a.rfind("--", 0) == 0) GKD_FAIL("gkd convert: unknown flag %s (see gkd convert --help)", a.c_str());
        else positional.push_back(a);
    }
    if (positional.size() != 2)
        GKD_FAIL("gkd convert: needs exactly two arguments, IN and OUT (see gkd convert --help)");
    GPT<float> m;
    gpt_load_any(m, positional[0]);
    const GPTConfig& c = m.config;
    bool to_safetensors = ends_with(positional[1], ".safetensors");
    if (to_safetensors && bf16) GKD_FAIL("gkd convert: --bf16 is for llm.c .bin files; safetensors are written as F32");
    if (to_safetensors) {
        gpt_save_safetensors(m, positional[1]);
        fprintf(stderr, "wrote %s and config.json beside it (Hugging Face GPT-2, F32): L=%d C=%d NH=%d maxT=%d V=%d, "
                "%zu parameters\n", positional[1].c_str(), c.num_layers, c.channels, c.num_heads, c.max_seq_len,
                c.vocab_size, m.num_parameters);
        return 0;
    }
    gpt_save(m, positional[1], bf16);
    fprintf(stderr, "wrote %s (llm.c version %d, %s): L=%d C=%d NH=%d maxT=%d V=%d Vp=%d, %zu parameters\n",
            positional[1].c_str(), bf16 ? 5 : 3, bf16 ? "bf16" : "fp32", c.num_layers, c.channels, c.num_heads,
            c.max_seq_len, c.vocab_size, c.padded_vocab_size, m.num_parameters);
    return 0;
}

// Text for JSON output: invalid UTF-8 (a byte-level model can emit any byte) becomes U+FFFD.
static std::string json_dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

static const std::vector<FlagSpec> SAMPLE_FLAGS = {
    {"model", true, "checkpoint (with --draft: the target, whose distribution the samples follow)"},
    {"prompt", true, "prompt text"}, {"data", true, "or: prompts from JSONL"},
    {"num-samples", true, "samples per prompt (1)"}, {"max-new-tokens", true, "(64)"},
    {"temperature", true, "0 = greedy (1.0)"}, {"seed", true, "(0)"}, {"batch", true, "rows decoded together (16)"},
    {"draft", true, "speculative sampling: this (smaller) model drafts, --model verifies; same vocabulary"},
    {"draft-tokens", true, "with --draft: tokens drafted per verification, K (4)"},
    {"baseline", true, "with --draft: 1 also times plain sampling from --model on the same prompts, 0 skips it (1)"},
    {"tokenizer", true, TOKENIZER_HELP}, {"device", true, "auto | cpu | cuda"}, {"precision", true, PRECISION_HELP}};

// A speculative round reads K + 1 positions: K must fit the shorter model's context.
static void check_draft_tokens(const char* cmd, int K, int context) {
    if (K >= context)
        GKD_FAIL("gkd %s: --draft-tokens %d is beyond the context: a round reads K + 1 positions, and the shorter "
                 "model's context is %d tokens (K <= %d)", cmd, K, context, context - 1);
}

// One batch of rows per call: the prompts, each row's budget and its randomness id.
struct SampleBatch {
    Prompts prompts;
    std::vector<int> budgets;
    std::vector<uint64_t> ids;
};

static int cmd_sample(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "sample", SAMPLE_FLAGS, argc, argv,
        "gkd sample: one JSON object per sample on stdout; with --draft, speculative sampling and a report on stderr");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    std::string model_path = f.required("model");
    int num_samples = (int)f.integer("num-samples", 1, 1, 1 << 20);
    int max_new = (int)f.integer("max-new-tokens", 64, 1, 1 << 20);
    double temperature = f.num("temperature", 1.0, 0, 1e6);
    uint64_t seed = (uint64_t)f.integer("seed", 0, 0, 1LL << 62);
    int batch = (int)f.integer("batch", 16, 1, 1 << 16);
    const bool speculative = f.has("draft");
    for (const char* flag : {"draft-tokens", "baseline"})
        if (f.has(flag) && !speculative)
            GKD_FAIL("gkd sample: --%s applies to speculative sampling: give --draft F too", flag);
    const int draft_tokens = (int)f.integer("draft-tokens", 4, 1, 1 << 20);
    const bool baseline = f.integer("baseline", 1, 0, 1) == 1;
    const std::string device = resolve_device(f);
    if (f.has("prompt") == f.has("data")) GKD_FAIL("gkd sample: give exactly one of --prompt TEXT or --data F.jsonl");
    GPT<float> m, draft;
    gpt_load_any(m, model_path);
    int context = m.config.max_seq_len;
    std::string tok_source;
    auto tok = load_tokenizer(f.str("tokenizer"), m.config.vocab_size, model_path, &tok_source);
    if (speculative) {
        const std::string draft_path = f.str("draft");
        gpt_load_any(draft, draft_path);
        check_same_vocabulary(m, model_path, draft, draft_path, "the draft", "the model");
        check_shared_tokenizer(*tok, tok_source, draft_path, "draft");
        context = std::min(context, draft.config.max_seq_len);
        check_draft_tokens("sample", draft_tokens, context);
    }
    Dataset d;
    if (f.has("prompt")) {
        const std::string line = json({{"prompt", f.str("prompt")}}).dump();
        d.examples.push_back(parse_example(line, *tok, context, false, "--prompt"));
    } else {
        d = load_jsonl(f.str("data"), *tok, context, false);
    }
    std::vector<SampleBatch> batches;
    for (size_t r = 0; r < d.examples.size() * num_samples; r++) {
        if (r % batch == 0) batches.emplace_back();
        const Example& ex = d.examples[r / num_samples];
        batches.back().prompts.push_back(&ex.prompt);
        batches.back().budgets.push_back(std::min(max_new, context - (int)ex.prompt.size()));
        batches.back().ids.push_back(r);
    }
    // with --draft, the device's student is the draft and its teacher the target
    std::unique_ptr<Device> runner =
        speculative ? inference_device(device, precision_flag(f, device), draft, &m)
                    : inference_device(device, precision_flag(f, device), m, nullptr);
    const int eos = tok->eos_id();
    auto print = [&](const SampleBatch& sb, const std::vector<std::vector<int>>& outs) {
        for (size_t i = 0; i < outs.size(); i++) {
            std::vector<int> text_ids = outs[i];
            if (!text_ids.empty() && text_ids.back() == eos) text_ids.pop_back();
            json j = {{"prompt", tok->decode(*sb.prompts[i])}, {"completion", tok->decode(text_ids)}, {"ids", outs[i]}};
            printf("%s\n", json_dump(j).c_str());
        }
        fflush(stdout);
    };
    if (!speculative) {
        for (const SampleBatch& sb : batches)
            print(sb, runner->generate(Role::Student, sb.prompts, sb.budgets, temperature, eos, seed, 0, sb.ids));
        return 0;
    }
    // Speculative: first a one-token pass of each kind, so that neither timing below pays
    // for allocating its caches; then, batch by batch, the speculative run and plain
    // sampling from the target on the same rows, so that both see the same machine.
    if (!batches.empty()) {
        std::vector<int> one(batches[0].budgets.size(), 1);
        SpeculativeStats ignored;
        runner->speculative_generate(batches[0].prompts, one, draft_tokens, temperature, eos, seed, 0, batches[0].ids,
                                     ignored);
        if (baseline)
            runner->generate(Role::Teacher, batches[0].prompts, one, temperature, eos, seed, 0, batches[0].ids);
    }
    SpeculativeStats stats;
    double speculative_seconds = 0, plain_seconds = 0;
    long long plain_tokens = 0;
    for (const SampleBatch& sb : batches) {
        double t0 = now_seconds();
        auto outs =
            runner->speculative_generate(sb.prompts, sb.budgets, draft_tokens, temperature, eos, seed, 0, sb.ids, stats);
        speculative_seconds += now_seconds() - t0;
        print(sb, outs);
        if (!baseline) continue;
        t0 = now_seconds();
        auto plain = runner->generate(Role::Teacher, sb.prompts, sb.budgets, temperature, eos, seed, 0, sb.ids);
        plain_seconds += now_seconds() - t0;
        for (auto& o : plain) plain_tokens += (long long)o.size();
    }
    json report = {{"draft_tokens", draft_tokens}, {"temperature", temperature},
                   {"acceptance_rate", stats.acceptance_rate()}, {"expected_acceptance", stats.expected_acceptance()},
                   {"tokens_per_target_forward", stats.tokens_per_verification()}, {"tokens", stats.emitted},
                   {"seconds", speculative_seconds}, {"tokens_per_second", stats.emitted / speculative_seconds}};
    if (baseline) {
        report["plain_tokens"] = plain_tokens;
        report["plain_seconds"] = plain_seconds;
        report["plain_tokens_per_second"] = plain_tokens / plain_seconds;
        // per token: at T > 0 the two runs draw different samples, of different lengths
        report["speedup"] = (stats.emitted / speculative_seconds) / (plain_tokens / plain_seconds);
    }
    fprintf(stderr, "%s\n", json_dump(json{{"speculative", report}}).c_str());
    return 0;
}

static const std::vector<FlagSpec> EVAL_FLAGS = {
    {"model", true, "checkpoint to evaluate"}, {"data", true, "JSONL with completions"},
    {"teacher", true, "also report the mean divergence to this teacher, and the on-policy gap: both KLs per token on "
                      "the data's completions and on the model's own samples (at --sample-temperature, 1 by "
                      "default here), before and after each sample's first invalid step where --task tells"},
    {"beta", true, "divergence: 0 forward KL, 1 reverse KL, else JSD(beta) (0.5)"},
    {"loss-temperature", true, "tau of the divergence (1.0)"}, {"batch", true, "(16)"},
    {"max-new-tokens", true, "longest generated completion (64)"},
    {"task", true, "arithmetic | words | walks | repair | gsm8k: also score completions by the task (accuracy, "
                   "similarity)"},
    {"sample-temperature", true, "also sample completions at this temperature: scored by --task; with --teacher, the "
                                 "teacher's NLL of them and both KLs on them (0 without --teacher, 1 with it; 0: "
                                 "no samples)"},
    {"samples-per-example", true, "samples drawn per example with --sample-temperature; 2 or more: their diversity "
                                  "(distinct / drawn) too (1)"},
    {"seed", true, "for the sampled completions (0)"},
    {"draft-tokens", true, "with --teacher: also the model as the teacher's speculative draft of K tokens: its "
                           "acceptance rate, counted and expected, and tokens per teacher forward"},
    {"draft-temperature", true, "with --draft-tokens: the temperature of the teacher's samples, 0 = greedy (1.0)"},
    {"tokenizer", true, TOKENIZER_HELP}, {"device", true, "auto | cpu | cuda"}, {"precision", true, PRECISION_HELP}};

// The on-policy gap in one line: does the model's own data hold anything the teacher has
// not already taught it on the dataset's?
static std::string on_policy_gap_line(const EvalResult& r) {
    std::string line = strf("on-policy gap: KL(teacher||model) per token %.4f on the data's completions, %.4f on the "
                            "model's samples", r.data_forward_kl, r.sample_forward_kl);
    if (r.data_forward_kl > 0) line += strf(" (%.2fx)", r.sample_forward_kl / r.data_forward_kl);
    if (!std::isnan(r.sample_slip_rate))
        line += strf(": %.4f before their first invalid step, %s after it (%.1f%% of samples slip; %.1f%% of sampled "
                     "tokens follow a slip)", r.sample_forward_kl_before_slip,
                     std::isnan(r.sample_forward_kl_after_slip) ? "none"
                                                                : strf("%.4f", r.sample_forward_kl_after_slip).c_str(),
                     100 * r.sample_slip_rate, 100 * r.sample_tokens_after_slip);
    return line;
}

static int cmd_eval(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "eval", EVAL_FLAGS, argc, argv,
        "gkd eval: mean token NLL, mean divergence to a teacher, greedy exact match; one JSON object");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    std::string model_path = f.required("model"), data_path = f.required("data");
    EvalOptions eo;
    eo.beta = f.num("beta", 0.5, 0, 1);
    eo.tau = f.num("loss-temperature", 1.0, 1e-6, 1e6);
    eo.batch = (int)f.integer("batch", 16, 1, 1 << 16);
    eo.max_new_tokens = (int)f.integer("max-new-tokens", 64, 1, 1 << 20);
    eo.task = task_flag(f);
    eo.sample_temperature = f.num("sample-temperature", f.has("teacher") ? 1.0 : 0.0, 0, 1e6);
    eo.samples_per_example = (int)f.integer("samples-per-example", 1, 1, 1 << 16);
    eo.seed = (uint64_t)f.integer("seed", 0, 0, 1LL << 62);
    if (eo.sample_temperature > 0 && eo.task.empty() && !f.has("teacher"))
        GKD_FAIL("gkd eval: --sample-temperature scores samples by a task or against a teacher: give --task or --teacher");
    if (f.has("samples-per-example") && !(eo.sample_temperature > 0))
        GKD_FAIL("gkd eval: --samples-per-example draws samples: give --sample-temperature T > 0 too");
    eo.draft_tokens = (int)f.integer("draft-tokens", 0, 1, 1 << 20);
    eo.draft_temperature = f.num("draft-temperature", 1.0, 0, 1e6);
    if (f.has("draft-tokens") && !f.has("teacher"))
        GKD_FAIL("gkd eval: --draft-tokens measures the model as a draft for a teacher: give --teacher F too");
    if (f.has("draft-temperature") && !f.has("draft-tokens"))
        GKD_FAIL("gkd eval: --draft-temperature applies to --draft-tokens: give --draft-tokens K too");
    const std::string device = resolve_device(f);
    GPT<float> m, t;
    gpt_load_any(m, model_path);
    int context = m.config.max_seq_len;
    if (f.has("teacher")) {
        gpt_load_any(t, f.str("teacher"));
        check_same_vocabulary(t, f.str("teacher"), m, model_path, "model");
        context = std::min(context, t.config.max_seq_len);
        check_draft_tokens("eval", eo.draft_tokens, context);
    }
    std::string tok_source;
    auto tok = load_tokenizer(f.str("tokenizer"), m.config.vocab_size, model_path, &tok_source);
    if (f.has("teacher")) check_shared_tokenizer(*tok, tok_source, f.str("teacher"));
    Dataset d = load_jsonl(data_path, *tok, context, true);
    const GPT<float>* teacher = f.has("teacher") ? &t : nullptr;
    std::unique_ptr<Device> runner = inference_device(device, precision_flag(f, device), m, teacher);
    EvalResult r = evaluate(m, teacher, d, *tok, eo, runner.get());
    if (teacher && !std::isnan(r.sample_forward_kl)) fprintf(stderr, "%s\n", on_policy_gap_line(r).c_str());
    printf("%s\n", r.to_json().dump().c_str());
    return 0;
}

// A JSON array of token ids, each in [0, vocab).
static std::vector<int> parse_id_array(const std::string& text, int vocab, const std::string& where) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        GKD_FAIL("%s: malformed JSON: %s", where.c_str(), dataset_detail::short_json_error(e).c_str());
    }
    return dataset_detail::read_ids(j, "ids", vocab, where);
}

static const std::vector<FlagSpec> TOKENIZE_FLAGS = {
    {"tokenizer", true, "byte (default), tokenizer.json, gpt2_tokenizer.bin, or a folder with vocab.json + "
                        "merges.txt or encoder.json + vocab.bpe"},
    {"special", true, "1: \"<|endoftext|>\" in the text is the EOS token; 0: it is plain text "
                      "(default: 1 for GPT-2 BPE, as Hugging Face; 0 for byte)"},
    {"decode", false, "read a JSON array of ids, print the text"}};

static int cmd_tokenize(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "tokenize", TOKENIZE_FLAGS, argc, argv,
        "gkd tokenize: text on stdin -> JSON array of ids on stdout");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    auto tok = load_tokenizer(f.str("tokenizer", "byte"), 0);
    bool special = f.integer("special", tok->special_by_default() ? 1 : 0, 0, 1) == 1;
    if (f.on("decode") && f.has("special")) GKD_FAIL("gkd tokenize: --special applies to encoding, not --decode");
    std::string input;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) input.append(buf, n);
    if (!f.on("decode")) {
        printf("%s\n", json(tok->encode(input, special)).dump().c_str());
        return 0;
    }
    std::vector<int> ids = parse_id_array(input, tok->vocab_size(), "<stdin>");
    std::string text = tok->decode(ids);
    fwrite(text.data(), 1, text.size(), stdout);
    return 0;
}

static const std::vector<FlagSpec> DATA_FLAGS = {
    {"task", true, "arithmetic | words | walks | repair: generate this built-in task's splits into the folder --out"},
    {"seed", true, "(0)"}, {"out", true, "--task: folder for the three splits; --convert: the JSONL to write"},
    {"train", true, "training examples (20000; words: at most 10000 in all)"},
    {"validation", true, "(200)"}, {"test", true, "(500)"},
    {"convert", true, "gsm8k | instruction: convert the JSONL --in (GSM8K question/answer; Alpaca or Dolly "
                      "instruction/input/output) to prompt/completion lines"},
    {"in", true, "with --convert: the dataset's JSONL"}};

static int cmd_data(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "data", DATA_FLAGS, argc, argv,
        "gkd data: generate a built-in task's train/validation/test JSONL (disjoint splits), or convert a "
        "public dataset to gkd's JSONL");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    if (f.has("task") == f.has("convert")) GKD_FAIL("gkd data: give exactly one of --task NAME or --convert FORMAT");
    if (f.has("convert")) {
        for (const char* unused : {"seed", "train", "validation", "test"})
            if (f.has(unused)) GKD_FAIL("gkd data: --%s is for --task, not --convert", unused);
        std::string format = f.choice("convert", "", {"gsm8k", "instruction"});
        std::string in = f.required("in"), out = f.required("out");
        size_t n = 0;
        std::string text = convert_dataset(format, in, &n);
        write_file_atomic(out, text);
        fprintf(stderr, "wrote %s: %zu %s examples from %s\n", out.c_str(), n, format.c_str(), in.c_str());
        return 0;
    }
    if (f.has("in")) GKD_FAIL("gkd data: --in is for --convert");
    std::string task = f.str("task");
    if (!is_task(task))
        GKD_FAIL("gkd data: --task '%s' must be arithmetic, words, walks or repair (built-in tasks)", task.c_str());
    TaskSizes sizes;
    sizes.train = (int)f.integer("train", task == "words" ? 9000 : 20000, 1, 1 << 24);
    sizes.validation = (int)f.integer("validation", 200, 1, 1 << 24);
    sizes.test = (int)f.integer("test", 500, 1, 1 << 24);
    std::string out = f.required("out");
    write_task_splits(task, (uint64_t)f.integer("seed", 0, 0, 1LL << 62), sizes, out);
    fprintf(stderr, "wrote %s/{train,validation,test}.jsonl: %d + %d + %d %s examples\n", out.c_str(), sizes.train,
            sizes.validation, sizes.test, task.c_str());
    return 0;
}


static const std::vector<FlagSpec> TEACHER_CACHE_FLAGS = {
    {"teacher", true, "the teacher checkpoint"},
    {"data", true, "training examples, JSONL: the cache covers every completion position of every example"},
    {"top-k", true, "K: log-probs kept per position, plus the tail's (64)"},
    {"out", true, "the cache file to write (docs/formats.md §9)"},
    {"loss-temperature", true, "tau of the log-probs; gkd distill --teacher-cache must use the same (1.0)"},
    {"batch", true, "examples per teacher pass (16)"},
    {"tokenizer", true, TOKENIZER_HELP},
    {"quiet", false, "no progress line"}};

// gkd teacher-cache: the teacher's top-K log-probs (and the tail's) at every completion
// position of --data, computed once, written atomically under a lock (data/teacher_cache.h).
static int cmd_teacher_cache(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "teacher-cache", TEACHER_CACHE_FLAGS, argc, argv,
        "gkd teacher-cache --teacher F --data F.jsonl --out F [--top-k K]: the teacher's top-K log-probs on the "
        "data, for gkd distill --teacher-cache");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    const std::string teacher_path = f.required("teacher"), data_path = f.required("data"), out = f.required("out");
    const int K = (int)f.integer("top-k", 64, 1, 1 << 30), batch = (int)f.integer("batch", 16, 1, 1 << 16);
    const double tau = f.num("loss-temperature", 1.0, 1e-6, 1e6);
    GPT<float> teacher;
    gpt_load_any(teacher, teacher_path);
    const int V = teacher.config.vocab_size;
    if (K > V) GKD_FAIL("gkd teacher-cache: --top-k %d is above the teacher's vocabulary of %d tokens", K, V);
    std::string tok_source;
    auto tok = load_tokenizer(f.str("tokenizer"), V, teacher_path, &tok_source);
    Dataset data = load_jsonl(data_path, *tok, teacher.config.max_seq_len, true);
    TeacherCacheHeader h;
    h.vocab_size = V;
    h.top_k = K;
    h.id_bytes = V <= 65536 ? 2 : 4;
    h.temperature = tau;
    h.teacher = teacher_path;
    h.teacher_hash = file_content_hash(teacher_path);
    h.data = data_path;
    h.data_hash = file_content_hash(data_path);
    h.tokenizer = tok->name();
    h.tokenizer_hash = tokenizer_hash(*tok);
    h.tokens_hash = tokens_hash(data);
    TeacherCacheWriter writer(out, h);
    CpuDevice device(teacher, &teacher);
    LossSpec spec;
    spec.top_k = K;
    spec.tau = tau;
    const int eos = tok->eos_id();
    const size_t N = data.examples.size();
    Progress progress("teacher-cache", (int)((N + batch - 1) / batch), f.on("quiet"));
    std::vector<float> logp;
    std::vector<int32_t> ids;
    for (size_t first = 0; first < N; first += batch) {
        std::vector<const Example*> ex;
        for (size_t i = first; i < std::min(N, first + batch); i++) ex.push_back(&data.examples[i]);
        TrainBatch b = build_batch(dataset_completions(ex, eos), eos);
        device.teacher_forward(b, spec);
        const TeacherSignal& sig = device.teacher_signal;
        for (int i = 0; i < b.B; i++) {  // row i's targets, in order, become example first + i's block
            logp.clear();
            ids.clear();
            int positions = 0;
            for (int t = 0; t < b.length(i); t++) {
                const size_t n = (size_t)b.row_start[i] + t;
                if (b.targets[n] < 0) continue;
                logp.insert(logp.end(), sig.logp.begin() + n * (K + 1), sig.logp.begin() + (n + 1) * (K + 1));
                ids.insert(ids.end(), sig.ids.begin() + n * K, sig.ids.begin() + (n + 1) * K);
                positions++;
            }
            writer.add_example(logp.data(), ids.data(), positions);
        }
        progress.update((int)(first / batch) + 1, strf("%zu of %zu examples", std::min(N, first + batch), N));
    }
    writer.commit();
    progress.finish();
    fprintf(stderr, "wrote %s: the top %d of V = %d at %zu positions of %zu examples, %.1f MB (%zu bytes a position)\n",
            out.c_str(), K, V, writer.header.positions, N, writer.offset / 1e6, writer.header.record_bytes());
    return 0;
}

static const std::vector<FlagSpec> EXPERIMENT_FLAGS = {
    {"task", true, "repair (the default, built for on-policy's gain) | walks | arithmetic (the controls, where theory "
                   "predicts none)"}};

// gkd experiment [--task walks|arithmetic], also `./gkd` and `./gkd --task arithmetic`
static int cmd_experiment(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "experiment", EXPERIMENT_FLAGS, argc, argv,
        "gkd experiment (or gkd with no command): the default experiment, a teacher, an SFT student, then "
        "more SFT, supervised KD and on-policy GKD from it, over five seeds; tables and verdicts with 95% intervals");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    std::string task = f.choice("task", "repair", {"repair", "walks", "arithmetic"});
    return run_default_experiment(task == "repair" ? repair_recipe()
                                  : task == "walks" ? ExperimentRecipe()
                                                    : arithmetic_recipe());
}

// Every command's table, for the refusal of a flag given to the wrong command.
static const std::vector<std::pair<const char*, const std::vector<FlagSpec>*>> FLAG_TABLES = {
    {"init", &INIT_FLAGS}, {"distill", &DISTILL_FLAGS}, {"sft", &SFT_FLAGS}, {"sample", &SAMPLE_FLAGS},
    {"eval", &EVAL_FLAGS}, {"tokenize", &TOKENIZE_FLAGS}, {"data", &DATA_FLAGS}, {"bench", &BENCH_FLAGS},
    {"experiment", &EXPERIMENT_FLAGS}, {"teacher-cache", &TEACHER_CACHE_FLAGS}};

static std::string commands_with_flag(const std::string& name) {
    std::string owners;
    for (auto& [command, table] : FLAG_TABLES)
        for (const FlagSpec& s : *table)
            if (name == s.name) owners += (owners.empty() ? "" : ", ") + std::string(command);
    return owners;
}

static const char* USAGE =
    "gkd: Generalized Knowledge Distillation for GPT-2 (" GKD_BUILD_PATHS ")\n"
    "\n"
    "  gkd init      --layers L --channels C --heads NH --context T --vocab byte --out F\n"
    "  gkd distill   --teacher F --student F --data F.jsonl --out DIR [--lambda --beta ...]\n"
    "  gkd sft       --model F --data F.jsonl --out DIR\n"
    "  gkd sample    --model F --prompt TEXT [--temperature t --num-samples N]\n"
    "  gkd eval      --model F --data F.jsonl [--teacher F]\n"
    "  gkd teacher-cache --teacher F --data F.jsonl --top-k K --out F   (the teacher's top-K, once)\n"
    "  gkd tokenize  [--tokenizer byte|PATH] [--decode] < input\n"
    "  gkd convert   IN OUT [--bf16]   (model.safetensors or .bin -> llm.c .bin)\n"
    "  gkd bench     [--student L,C,NH --teacher L,C,NH --batch B ... --device cuda]   (time a step by phase)\n"
    "  gkd data      --task arithmetic|words|walks|repair --out DIR   (built-in task splits)\n"
    "  gkd data      --convert gsm8k|instruction --in F --out F.jsonl   (GSM8K, Alpaca/Dolly)\n"
    "\n"
    "  gkd           (no arguments) the default experiment on the repair task: teacher, SFT student, then more\n"
    "                SFT, supervised KD, on-policy GKD and KD on injected slips, 5 seeds\n"
    "                (--task walks, --task arithmetic: the controls)\n"
    "\n"
    "Each command takes --help. Formats: docs/formats.md; every flag: docs/cli.md; a tour: README.md.\n";

static int run_command(int argc, char** argv) {
    if (argc < 2) return run_default_experiment(repair_recipe());
    std::string cmd = argv[1];
    if (cmd == "--help" || cmd == "-h" || cmd == "help") { fputs(USAGE, stdout); return 0; }
    if (cmd.rfind("--", 0) == 0) return cmd_experiment(argc - 1, argv + 1);  // ./gkd --task arithmetic
    if (cmd == "experiment") return cmd_experiment(argc - 2, argv + 2);
    if (cmd == "init") return cmd_init(argc - 2, argv + 2);
    if (cmd == "convert") return cmd_convert(argc - 2, argv + 2);
    if (cmd == "bench") return cmd_bench(argc - 2, argv + 2);
    if (cmd == "distill") return cmd_train(argc - 2, argv + 2, false);
    if (cmd == "sft") return cmd_train(argc - 2, argv + 2, true);
    if (cmd == "sample") return cmd_sample(argc - 2, argv + 2);
    if (cmd == "eval") return cmd_eval(argc - 2, argv + 2);
    if (cmd == "tokenize") return cmd_tokenize(argc - 2, argv + 2);
    if (cmd == "data") return cmd_data(argc - 2, argv + 2);
    if (cmd == "teacher-cache") return cmd_teacher_cache(argc - 2, argv + 2);
    GKD_FAIL("gkd: unknown command '%s' (one of init, distill, sft, sample, eval, tokenize, convert, data, bench, "
             "experiment, teacher-cache; see gkd --help)", cmd.c_str());
}

