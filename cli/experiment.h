// cli/experiment.h — the default experiment: `./gkd` with no arguments (`./gkd --task walks`
// and `./gkd --task arithmetic` for the controls).
//
// The paper's comparison in miniature: SFT a teacher (cached under runs/default/TASK/),
// then, for each seed, warm-start a much smaller student with a short SFT and continue it
// from that same warm start, for the same number of steps:
//   - more SFT: the control, which separates "more training" from "distillation";
//   - supervised KD (lambda 0): the teacher's token distributions on the dataset's
//     completions;
//   - on-policy GKD (lambda 1): the teacher's token distributions on the student's own
//     samples;
//   - on repair, supervised KD on injected slips (lambda 0 on train-slips.jsonl): the same
//     error states covered offline, which separates "the student visits its error states"
//     from "the student samples its own data".
// The divergence of each distillation method (forward KL, JSD(beta), reverse KL) is
// chosen on the validation split, from the first seed's runs; the tables report the test
// split, mean ± std over the seeds, greedy and sampled at temperature 1, with what
// distillation transfers (the teacher's NLL of the student's samples, both KLs on them,
// their diversity) and the on-policy gap (both sides of each sample's first slip). Each
// verdict line is the mean of the per-seed differences with its 95% t interval, and the
// word that interval gives (cli/verdicts.h); a paragraph says what the headline's spread
// lets these seeds resolve. Five seeds at 300 steps a method keep the whole experiment,
// build included, near 5 minutes on 2 cores (docs/study.md).
//
// Why the repair task (data/tasks.h) is the default: it is built to the four conditions
// under which theory lets on-policy data help (docs/study.md, "The task was designed to
// the four conditions"); walks and arithmetic fail them, and stay as the controls.
//
// Part of gkd.cu's single translation unit: it drives the trainer (train, evaluate) the way
// a user would, through TrainOptions.
#pragma once
#include <string>
#include <vector>

#include "verdicts.h"  // defines: mean_of, sd_of, compare_paired, verdict_line (the t interval and its word)

// Writes a task's splits as JSONL: DIR/train.jsonl, DIR/validation.jsonl, DIR/test.jsonl.
static void write_task_splits(const std::string& task, uint64_t seed, const TaskSizes& sizes, const std::string& dir) {
    TaskSplits s = generate_task(task, seed, sizes);
    make_dirs(dir);
    auto write = [&](const std::vector<TaskExample>& v, const char* name) {
        std::string text;
        for (auto& e : v) text += nlohmann::ordered_json({{"prompt", e.prompt}, {"completion", e.completion}}).dump() + "\n";
        write_file_atomic(dir + "/" + name + ".jsonl", text);
    };
    write(s.train, "train");
    write(s.validation, "validation");
    write(s.test, "test");
    if (task == "repair") {
        // the teacher's data: the clean split and as many recovery rows, mixed in a
        // seeded order; and the control's: the clean split with slips injected by hand
        std::vector<TaskExample> teacher = s.train, rows = repair_teacher_rows(s.train, s.train.size(), seed);
        teacher.insert(teacher.end(), rows.begin(), rows.end());
        Rng rng(derive_seed(seed, 0x7eac4e3));
        seeded_shuffle(teacher, rng);
        write(teacher, "teacher");
        write(repair_with_slips(s.train, seed), "train-slips");
    }
}

struct ModelShape {
    int layers, channels, heads;
};

struct ExperimentRecipe {
    std::string task = "walks";
    int context = 32, batch = 64, max_new_tokens = 12;
    ModelShape teacher{4, 128, 4}, student{1, 16, 2};
    int teacher_steps = 1000, warmup_steps = 600, method_steps = 300;
    double teacher_lr = 3e-3, student_lr = 3e-3, method_lr = 1e-3;
    std::vector<uint64_t> seeds = {0, 1, 2, 3, 4};
    std::vector<double> betas = {0.0, 0.5, 0.9, 1.0};  // the divergences tried; the first seed chooses
    int samples_per_example = 4;                       // samples at T = 1 per test example
    uint64_t data_seed = 0;
    std::string teacher_data = "train";  // the teacher's split (repair: the clean one and recovery rows)
    bool slips_control = false;          // the control row: supervised KD on train-slips (slips injected by hand)
    // what the cached teacher depends on: change any of it and the teacher is retrained
    json teacher_key() const {
        json key = {{"format", 2}, {"task", task}, {"context", context}, {"batch", batch}, {"seed", data_seed},
                    {"layers", teacher.layers}, {"channels", teacher.channels}, {"heads", teacher.heads},
                    {"steps", teacher_steps}, {"lr", teacher_lr}};
        if (teacher_data != "train") key["data"] = teacher_data;
        return key;
    }
};

// The default task, built to on-policy distillation's four conditions (data/tasks.h,
// README "The repair task"): a student that slips at T = 1 and could repair its slips,
// a teacher shown how to; the control row covers the same error states offline.
static ExperimentRecipe repair_recipe() {
    ExperimentRecipe r;
    r.task = "repair";
    r.max_new_tokens = 16;  // 8 letters and room for 4 repairs
    r.student = {2, 32, 2};
    r.teacher_data = "teacher";
    r.slips_control = true;
    return r;
}

// The arithmetic control: one correct output per prompt, so theory predicts no on-policy
// gain; the student of the first version of this experiment, one seed, JSD(0.5).
static ExperimentRecipe arithmetic_recipe() {
    ExperimentRecipe r;
    r.task = "arithmetic";
    r.max_new_tokens = 16;
    r.student = {1, 32, 2};
    r.warmup_steps = 1000;
    r.seeds = {0};
    r.betas = {0.5};
    return r;
}

static void init_model_file(const ModelShape& shape, int context, uint64_t seed, const std::string& path) {
    GPTConfig c;
    c.num_layers = shape.layers; c.channels = shape.channels; c.num_heads = shape.heads;
    c.max_seq_len = context; c.vocab_size = 257; c.padded_vocab_size = pad_vocab(257);
    GPT<float> m;
    gpt_build(m, c);
    gpt_init_random(m, seed);
    gpt_save(m, path);
}

static TrainOptions experiment_train_options(const ExperimentRecipe& r, const std::string& data_dir, int steps,
                                             double lr, const std::string& out, const std::string& label,
                                             const std::string& split = "train") {
    TrainOptions o;
    o.data_path = data_dir + "/" + split + ".jsonl";
    o.eval_data_path = data_dir + "/validation.jsonl";
    o.task = r.task;
    o.out_dir = out;
    o.batch = r.batch;
    o.steps = steps;
    o.lr = lr;
    o.warmup = std::min(50, steps / 10);
    o.schedule = Schedule::Cosine;
    o.max_new_tokens = r.max_new_tokens;
    o.label = label;
    return o;
}

static double run_training_phase(const TrainOptions& o) {
    double t0 = now_seconds();
    Trainer tr;
    load_trainer(tr, o);
    TrainOutcome out = train(tr);
    if (out.stopped_by_signal) throw ExitRequest{128 + out.stopped_by_signal};
    return now_seconds() - t0;
}

// SFT of a model of `shape`, freshly initialised from `init_seed`, in the folder dir
// (init.bin, then the run); returns its training time in seconds.
static double sft_from_random_init(const ExperimentRecipe& r, const std::string& data_dir, const ModelShape& shape,
                                   uint64_t init_seed, uint64_t seed, const std::string& dir, int steps, double lr,
                                   const std::string& label, const std::string& split = "train") {
    make_dirs(dir);
    init_model_file(shape, r.context, init_seed, dir + "/init.bin");
    TrainOptions o = experiment_train_options(r, data_dir, steps, lr, dir, label, split);
    o.sft = true;
    o.seed = seed;
    o.student_path = dir + "/init.bin";
    return run_training_phase(o);
}

static std::string beta_name(double beta) {
    return beta == 0 ? "forward KL" : beta == 1 ? "reverse KL" : strf("JSD(%g)", beta);
}

// One trained model of the experiment, evaluated.
struct ExperimentRun {
    std::string path;
    EvalResult eval;
    double train_seconds = 0;
};

// A row of the table: one method, a run per seed (the teacher: one run).
struct ExperimentRow {
    std::string name;
    size_t params = 0;
    std::vector<ExperimentRun> runs;
    bool cached = false;
};

// "mean ± sd" of one metric over a row's runs, times `scale`, with `decimals`
static std::string mean_sd(const ExperimentRow& row, double EvalResult::*field, double scale, int decimals) {
    std::vector<double> v;
    for (auto& run : row.runs) v.push_back(run.eval.*field * scale);
    if (v.empty() || std::isnan(v[0])) return "-";
    if (v.size() == 1) return strf("%.*f", decimals, v[0]);
    return strf("%.*f ± %.*f", decimals, mean_of(v), decimals, sd_of(v));
}

// The per-seed differences a - b of a metric, in points (the runs of a seed share its warm start).
static std::vector<double> paired_differences(const ExperimentRow& a, const ExperimentRow& b,
                                              double EvalResult::*field) {
    std::vector<double> d;
    for (size_t s = 0; s < a.runs.size() && s < b.runs.size(); s++)
        d.push_back(100 * (a.runs[s].eval.*field - b.runs[s].eval.*field));
    return d;
}

// A row's name as a verdict reads it: without the table's "+ " (what continues the warm start).
static std::string verdict_name(const ExperimentRow& row) {
    return row.name.rfind("+ ", 0) == 0 ? row.name.substr(2) : row.name;
}

// The verdict on `a` against `b` (cli/verdicts.h): the mean of the per-seed differences,
// its 95% t interval, and the word the interval gives.
static std::string verdict(const ExperimentRow& a, const ExperimentRow& b, double EvalResult::*field,
                           const char* what) {
    return verdict_line(verdict_name(a), verdict_name(b), compare_paired(paired_differences(a, b, field)),
                        std::string("points ") + what);
}

// What the seeds can resolve, from the spread of the headline's per-seed differences: the
// interval's half-width at this many seeds, and the seeds a 1-point difference needs.
static std::string seeds_paragraph(const ExperimentRow& a, const ExperimentRow& b) {
    PairedComparison c = compare_paired(paired_differences(a, b, &EvalResult::sample_accuracy));
    if (c.n < 2 || !(c.sd > 0)) return "";  // one seed, or the same difference on every seed: no spread to read
    const double half = c.hi - c.mean;
    return strf("What %zu seeds resolve: %s minus %s, sampled at T=1, varies from seed to seed with a standard "
                "deviation of %.2f points, so the 95%% interval's half-width here is %.2f points: the smallest "
                "difference this experiment can call. At that spread a true 1-point difference needs %zu seeds to "
                "be called when observed at its size, and %zu seeds to be called with 80%% probability.\n\n",
                c.n, verdict_name(a).c_str(), verdict_name(b).c_str(), c.sd, half, seeds_needed(1.0, c.sd, 0.5),
                seeds_needed(1.0, c.sd, 0.8));
}

static int run_default_experiment(const ExperimentRecipe& r = ExperimentRecipe(), const std::string& root_dir = "",
                                  const TaskSizes& sizes = TaskSizes()) {
    const double t_start = now_seconds();
    const std::string root = root_dir.empty() ? "runs/default/" + r.task : root_dir, data_dir = root + "/data";
    fprintf(stderr, "gkd: the default experiment: GKD on the built-in %s task, %zu seed%s, %d threads (%s)\n",
            r.task.c_str(), r.seeds.size(), r.seeds.size() == 1 ? "" : "s", omp_get_max_threads(), root.c_str());
    if (!is_file(data_dir + "/test.jsonl")) {
        write_task_splits(r.task, r.data_seed, sizes, data_dir);
        fprintf(stderr, "data             generated %s/{train,validation,test}.jsonl\n", data_dir.c_str());
    }
    ByteTokenizer tok;
    Dataset validation = load_jsonl(data_dir + "/validation.jsonl", tok, r.context, true);
    Dataset test = load_jsonl(data_dir + "/test.jsonl", tok, r.context, true);
    EvalOptions eo;
    eo.task = r.task;
    eo.sample_temperature = 1.0;
    eo.samples_per_example = r.samples_per_example;
    eo.max_new_tokens = r.max_new_tokens;
    eo.batch = 100;
    GPT<float> teacher_model;
    auto evaluate_file = [&](const std::string& path, const Dataset& d) {
        GPT<float> m;
        gpt_load(m, path);
        return evaluate(m, &teacher_model, d, tok, eo);
    };

    // 1. the teacher: SFT from scratch, or the cached one if it was made by the same recipe
    ExperimentRow teacher{"teacher (SFT)", 0, {{root + "/teacher/model.bin", {}, 0}}, false};
    std::string key_path = root + "/teacher/recipe.json", key = r.teacher_key().dump();
    if (is_file(teacher.runs[0].path) && is_file(key_path) && read_whole_file(key_path) == key) {
        teacher.cached = true;
        fprintf(stderr, "teacher          cached: %s\n", teacher.runs[0].path.c_str());
    } else {
        teacher.runs[0].train_seconds = sft_from_random_init(r, data_dir, r.teacher, r.data_seed + 1, r.data_seed,
                                                             root + "/teacher", r.teacher_steps, r.teacher_lr,
                                                             "teacher sft", r.teacher_data);
        write_file_atomic(key_path, key);
    }
    gpt_load(teacher_model, teacher.runs[0].path);

    // 2. per seed: the SFT warm start, then three ways on from it (four with the control).
    // The first seed tries every divergence of each distillation method and keeps the
    // best on validation (sampled accuracy at T = 1); the other seeds run the chosen ones.
    struct Method {
        ExperimentRow row;
        double lambda;      // 0: supervised, 1: on-policy
        std::string split;  // the examples it trains on
        std::string tag;    // its runs' folder names: TAG-betaB
        double beta = NAN;  // the divergence chosen on validation
    };
    std::vector<Method> methods = {{{"+ supervised KD", 0, {}, false}, 0.0, "train", "kd"},
                                   {{"+ on-policy GKD", 0, {}, false}, 1.0, "train", "gkd"}};
    if (r.slips_control)  // offline coverage of error states: someone must know how the student errs
        methods.push_back({{"+ supervised KD on injected slips (control)", 0, {}, false}, 0.0, "train-slips", "kd-slips"});
    ExperimentRow sft{"student (SFT)", 0, {}, false}, more{"+ more SFT (control)", 0, {}, false};
    std::string selection = "| method | divergence | validation sampled accuracy (T=1) | validation greedy accuracy |\n"
                            "|---|---|---|---|\n";
    for (size_t si = 0; si < r.seeds.size(); si++) {
        const uint64_t seed = r.seeds[si];
        const std::string dir = root + strf("/seed%llu", (unsigned long long)seed);
        ExperimentRun warm{dir + "/sft/model.bin", {}, 0};
        warm.train_seconds = sft_from_random_init(r, data_dir, r.student, 1000 + seed, seed, dir + "/sft",
                                                  r.warmup_steps, r.student_lr, strf("seed %llu sft", (unsigned long long)seed));
        auto continue_from_warm = [&](const std::string& name, bool distill, double lambda, double beta,
                                      const std::string& split) {
            TrainOptions o = experiment_train_options(r, data_dir, r.method_steps, r.method_lr, dir + "/" + name,
                                                      strf("seed %llu %s", (unsigned long long)seed, name.c_str()),
                                                      split);
            o.sft = !distill;
            o.seed = seed;
            o.student_path = warm.path;
            if (distill) { o.teacher_path = teacher.runs[0].path; o.lambda = lambda; o.beta = beta; }
            return ExperimentRun{dir + "/" + name + "/model.bin", {}, run_training_phase(o)};
        };
        auto distill_run = [&](const Method& m, double beta) {
            return continue_from_warm(strf("%s-beta%g", m.tag.c_str(), beta), true, m.lambda, beta, m.split);
        };
        ExperimentRun control = continue_from_warm("more-sft", false, 0, 0, "train");
        for (Method& m : methods) {
            if (si > 0) { m.row.runs.push_back(distill_run(m, m.beta)); continue; }
            double best = -1;
            for (double beta : r.betas) {
                ExperimentRun run = distill_run(m, beta);
                EvalResult v = evaluate_file(run.path, validation);
                std::string plain = m.row.name.substr(2);
                selection += strf("| %s | %s | %.1f%% | %.1f%% |\n", plain.c_str(), beta_name(beta).c_str(),
                                  100 * v.sample_accuracy, 100 * v.accuracy);
                if (v.sample_accuracy > best) {
                    best = v.sample_accuracy;
                    m.beta = beta;
                    m.row.runs.assign(1, run);
                }
            }
        }
        sft.runs.push_back(warm);
        more.runs.push_back(control);
    }
    for (Method& m : methods) {
        const std::string divergence = " (" + beta_name(m.beta) + ")";
        const size_t control = m.row.name.find(" (control)");
        m.row.name = control == std::string::npos ? m.row.name + divergence
                                                  : m.row.name.substr(0, control) + divergence + " (control)";
    }
    ExperimentRow &kd = methods[0].row, &gkd = methods[1].row;

    // 3. the test split: every model, greedy and sampled at T = 1
    std::vector<ExperimentRow*> rows = {&teacher, &sft, &more, &kd, &gkd};
    if (r.slips_control) rows.push_back(&methods[2].row);
    int total = 0, done = 0;
    for (auto* row : rows) total += (int)row->runs.size();
    Progress progress("evaluate", total, false);
    for (auto* row : rows)
        for (auto& run : row->runs) {
            GPT<float> m;
            gpt_load(m, run.path);
            row->params = m.num_parameters;
            // the teacher against itself: no divergence, but its own slips and repairs (condition 3)
            run.eval = evaluate(m, &teacher_model, test, tok, eo);
            progress.update(++done, row->name);
        }
    progress.finish();

    const bool walks = r.task == "walks" || r.task == "repair";  // scored by a checker: valid steps
    std::string table = strf("| model | parameters | greedy accuracy | sampled accuracy (T=1) | %s (T=1) | teacher NLL "
                             "of samples | KL(teacher‖student) on samples | KL(student‖teacher) on samples | distinct "
                             "samples | training time |\n|---|---|---|---|---|---|---|---|---|---|\n",
                             walks ? "valid steps" : "similarity");
    for (auto* row : rows) {
        std::vector<double> seconds;
        for (auto& run : row->runs) seconds.push_back(run.train_seconds);
        table += strf("| %s | %.3fM | %s%% | %s%% | %s%% | %s | %s | %s | %s%% | %s |\n", row->name.c_str(),
                      row->params / 1e6, mean_sd(*row, &EvalResult::accuracy, 100, 1).c_str(),
                      mean_sd(*row, &EvalResult::sample_accuracy, 100, 1).c_str(),
                      mean_sd(*row, &EvalResult::sample_similarity, 100, 1).c_str(),
                      row == &teacher ? "-" : mean_sd(*row, &EvalResult::sample_teacher_nll, 1, 3).c_str(),
                      row == &teacher ? "-" : mean_sd(*row, &EvalResult::sample_forward_kl, 1, 3).c_str(),
                      row == &teacher ? "-" : mean_sd(*row, &EvalResult::sample_reverse_kl, 1, 3).c_str(),
                      mean_sd(*row, &EvalResult::sample_diversity, 100, 0).c_str(),
                      row->cached ? "cached" : format_duration(mean_of(seconds)).c_str());
    }
    // the on-policy gap of each student (gkd eval --teacher): where the teacher disagrees with it
    std::string gap = "| model | KL(teacher‖student) per token on the data's completions | on its samples, before "
                      "their first invalid step | after it | samples with an invalid step | of those, still valid "
                      "(repaired) |\n|---|---|---|---|---|---|\n";
    for (auto* row : rows) {
        const bool self = row == &teacher;  // its own samples: no divergence to itself to show
        gap += strf("| %s | %s | %s | %s | %s%% | %s%% |\n", row->name.c_str(),
                    self ? "-" : mean_sd(*row, &EvalResult::data_forward_kl, 1, 3).c_str(),
                    self ? "-" : mean_sd(*row, &EvalResult::sample_forward_kl_before_slip, 1, 3).c_str(),
                    self ? "-" : mean_sd(*row, &EvalResult::sample_forward_kl_after_slip, 1, 3).c_str(),
                    mean_sd(*row, &EvalResult::sample_slip_rate, 100, 1).c_str(),
                    mean_sd(*row, &EvalResult::sample_recovered, 100, 1).c_str());
    }
    std::string verdicts = "- " + verdict(gkd, more, &EvalResult::sample_accuracy, "sampled at T=1") + "\n" +
                           "- " + verdict(gkd, kd, &EvalResult::sample_accuracy, "sampled at T=1") + "\n" +
                           "- " + verdict(gkd, kd, &EvalResult::accuracy, "greedy") + "\n" +
                           "- " + verdict(kd, more, &EvalResult::sample_accuracy, "sampled at T=1") + "\n";
    if (r.slips_control) {
        const ExperimentRow& slips = methods[2].row;
        verdicts += "- " + verdict(gkd, slips, &EvalResult::sample_accuracy, "sampled at T=1") + "\n" +
                    "- " + verdict(slips, kd, &EvalResult::sample_accuracy, "sampled at T=1") + "\n";
    }
    std::string summary = strf(
        "Held-out %s test set (%zu examples; %d samples each at T=1), mean ± std over %zu seed%s (%s); the "
        "divergences were chosen on the validation split with seed %llu. Total time %s.\n",
        r.task.c_str(), test.examples.size(), r.samples_per_example, r.seeds.size(), r.seeds.size() == 1 ? "" : "s",
        r.task == "repair" ? "accuracy: the whole chain valid, its undos applied"
        : walks            ? "accuracy: the whole walk valid"
                           : "accuracy: the final answer right",
        (unsigned long long)r.seeds[0], format_duration(now_seconds() - t_start).c_str());
    std::string report = table + "\n" + summary + "\nVerdicts (paired by seed: the mean of the per-seed differences "
                         "and its 95% confidence interval, Student's t with n - 1 degrees of freedom; \"beats\" or "
                         "\"loses to\" only when the interval excludes zero). It covers what the training seed "
                         "changes (the student's initialisation, the order of its data, its samples), not the data "
                         "split or the teacher:\n\n" + verdicts + "\n" + seeds_paragraph(gkd, kd) +
                         "The on-policy gap (test, T=1): the teacher's "
                         "disagreement with each student on the data and on the student's own samples, split at each "
                         "sample's first invalid step:\n\n" + gap + "\nThe divergence of each method, chosen on "
                         "validation (seed " + std::to_string(r.seeds[0]) + "):\n\n" + selection;
    write_file_atomic(root + "/results.md", report);
    printf("\n%s\n(also in %s/results.md)\n", report.c_str(), root.c_str());
    return 0;
}
