// cli/experiment.h — the default experiment: `./gkd` with no arguments.
//
// The paper's comparison in miniature, on the built-in arithmetic task: SFT a teacher
// (cached under runs/), warm-start a smaller student with a short SFT, distil it with
// on-policy GKD, and compare held-out accuracy. A control row gives the SFT student the
// same number of extra steps as GKD, but of more SFT, so the table separates "more
// training" from "training on its own samples".
//
// Part of gkd.cu's single translation unit: it drives the trainer (train, evaluate) the way
// a user would, through TrainOptions.
#pragma once
#include <string>
#include <vector>

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
}

struct ModelShape {
    int layers, channels, heads;
};

struct ExperimentRecipe {
    std::string task = "arithmetic";
    int context = 32, batch = 64, max_new_tokens = 16;
    ModelShape teacher{4, 128, 4}, student{1, 32, 2};
    int teacher_steps = 1000, warmup_steps = 1000, gkd_steps = 500;
    double teacher_lr = 3e-3, student_lr = 3e-3, gkd_lr = 1e-3;
    double lambda = 1.0, beta = 0.5;
    uint64_t seed = 0;
    // what the cached teacher depends on: change any of it and the teacher is retrained
    json teacher_key() const {
        return {{"format", 1}, {"task", task}, {"context", context}, {"batch", batch}, {"seed", seed},
                {"layers", teacher.layers}, {"channels", teacher.channels}, {"heads", teacher.heads},
                {"steps", teacher_steps}, {"lr", teacher_lr}};
    }
};

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
                                             double lr, const std::string& out, const std::string& label) {
    TrainOptions o;
    o.data_path = data_dir + "/train.jsonl";
    o.eval_data_path = data_dir + "/validation.jsonl";
    o.task = r.task;
    o.out_dir = out;
    o.batch = r.batch;
    o.steps = steps;
    o.lr = lr;
    o.warmup = std::min(50, steps / 10);
    o.schedule = Schedule::Cosine;
    o.max_new_tokens = r.max_new_tokens;
    o.seed = r.seed;
    o.label = label;
    return o;
}

// Thrown to leave the program with a status (after a signal), past the callers.
struct ExitRequest {
    int status;
};

static double run_training_phase(const TrainOptions& o) {
    double t0 = now_seconds();
    Trainer tr;
    load_trainer(tr, o);
    TrainOutcome out = train(tr);
    if (out.stopped_by_signal) throw ExitRequest{128 + out.stopped_by_signal};
    return now_seconds() - t0;
}

// SFT of a model of `shape`, freshly initialised from `seed`, in the folder dir (init.bin,
// then the run); returns its training time in seconds.
static double sft_from_random_init(const ExperimentRecipe& r, const std::string& data_dir, const ModelShape& shape,
                                   uint64_t seed, const std::string& dir, int steps, double lr, const std::string& label) {
    make_dirs(dir);
    init_model_file(shape, r.context, seed, dir + "/init.bin");
    TrainOptions o = experiment_train_options(r, data_dir, steps, lr, dir, label);
    o.sft = true;
    o.student_path = dir + "/init.bin";
    return run_training_phase(o);
}

struct ExperimentRow {
    std::string name, path;
    size_t params = 0;
    EvalResult eval;
    double train_seconds = 0;
    bool cached = false;
};

static int run_default_experiment(const ExperimentRecipe& r = ExperimentRecipe(), const std::string& root = "runs/default",
                                  const TaskSizes& sizes = TaskSizes()) {
    const double t_start = now_seconds();
    const std::string data_dir = root + "/data/" + r.task;
    fprintf(stderr, "gkd: the default experiment: GKD on the built-in %s task, %d threads (%s)\n", r.task.c_str(),
            omp_get_max_threads(), root.c_str());
    if (!is_file(data_dir + "/test.jsonl")) {
        write_task_splits(r.task, r.seed, sizes, data_dir);
        fprintf(stderr, "data             generated %s/{train,validation,test}.jsonl\n", data_dir.c_str());
    }
    std::vector<ExperimentRow> rows;

    // 1. the teacher: SFT from scratch, or the cached one if it was made by the same recipe
    ExperimentRow teacher{"teacher (SFT)", root + "/teacher/model.bin", 0, {}, 0, false};
    std::string key_path = root + "/teacher/recipe.json", key = r.teacher_key().dump();
    if (is_file(teacher.path) && is_file(key_path) && read_whole_file(key_path) == key) {
        teacher.cached = true;
        fprintf(stderr, "teacher          cached: %s\n", teacher.path.c_str());
    } else {
        teacher.train_seconds = sft_from_random_init(r, data_dir, r.teacher, r.seed + 1, root + "/teacher",
                                                     r.teacher_steps, r.teacher_lr, "teacher sft");
        write_file_atomic(key_path, key);
    }
    rows.push_back(teacher);

    // 2. the student: a short SFT warm start, as the paper does
    ExperimentRow sft{"student (SFT)", root + "/student-sft/model.bin", 0, {}, 0, false};
    sft.train_seconds = sft_from_random_init(r, data_dir, r.student, r.seed + 2, root + "/student-sft", r.warmup_steps,
                                             r.student_lr, "student sft");
    rows.push_back(sft);

    // 3. on-policy GKD from the SFT student; 4. the control: as many steps of more SFT
    ExperimentRow gkd{"student (SFT + GKD)", root + "/student-gkd/model.bin", 0, {}, 0, false};
    TrainOptions o = experiment_train_options(r, data_dir, r.gkd_steps, r.gkd_lr, root + "/student-gkd", "student gkd");
    o.teacher_path = teacher.path;
    o.student_path = sft.path;
    o.lambda = r.lambda;
    o.beta = r.beta;
    gkd.train_seconds = run_training_phase(o);
    ExperimentRow more{"student (SFT + more SFT)", root + "/student-sft-more/model.bin", 0, {}, 0, false};
    o = experiment_train_options(r, data_dir, r.gkd_steps, r.gkd_lr, root + "/student-sft-more", "student more sft");
    o.sft = true;
    o.student_path = sft.path;
    more.train_seconds = run_training_phase(o);
    rows.push_back(more);
    rows.push_back(gkd);

    // held-out test accuracy, greedy and sampled at temperature 1
    ByteTokenizer tok;
    Dataset test = load_jsonl(data_dir + "/test.jsonl", tok, r.context, true);
    GPT<float> teacher_model;
    gpt_load(teacher_model, teacher.path);
    EvalOptions eo;
    eo.task = r.task;
    eo.sample_temperature = 1.0;
    eo.max_new_tokens = r.max_new_tokens;
    eo.beta = r.beta;
    eo.batch = 100;
    Progress progress("evaluate", (int)rows.size(), false);
    for (size_t i = 0; i < rows.size(); i++) {
        GPT<float> m;
        gpt_load(m, rows[i].path);
        rows[i].params = m.num_parameters;
        rows[i].eval = evaluate(m, i == 0 ? nullptr : &teacher_model, test, tok, eo);
        progress.update((int)i + 1, rows[i].name);
    }
    progress.finish();

    std::string table = strf("| model | parameters | greedy accuracy | sampled accuracy (T=1) | JSD(%.1f) to teacher | training time |\n"
                             "|---|---|---|---|---|---|\n", r.beta);
    for (auto& row : rows)
        table += strf("| %s | %.2fM | %.1f%% | %.1f%% | %s | %s |\n", row.name.c_str(), row.params / 1e6,
                      100 * row.eval.accuracy, 100 * row.eval.sample_accuracy,
                      std::isnan(row.eval.divergence) ? "-" : strf("%.4f", row.eval.divergence).c_str(),
                      row.cached ? "cached" : format_duration(row.train_seconds).c_str());
    std::string summary = strf("Held-out %s test set (%zu examples), exact match of the final answer. Total time %s.\n",
                               r.task.c_str(), test.examples.size(), format_duration(now_seconds() - t_start).c_str());
    write_file_atomic(root + "/results.md", table + "\n" + summary);
    printf("\n%s\n%s(also in %s/results.md)\n", table.c_str(), summary.c_str(), root.c_str());
    return 0;
}

