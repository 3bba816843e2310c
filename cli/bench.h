// cli/bench.h — `gkd bench`: one training step timed phase by phase, on random models of
// a given shape, on the CPU or the GPU.
//
// It runs the real gkd_step (nothing is stubbed: sampling with a KV cache, the teacher,
// the loss, backward, AdamW) and reports, per phase, the median time, tokens/s and the
// FLOP rate; on the CPU against the machine's measured sgemm ceiling and the peak RSS, on
// the GPU against the card's peak (MFU), cuBLAS's measured SGEMM rate and the device
// memory. A benchmark is a program, never a timed unit test.
//
// Part of gkd.cu's single translation unit.
#pragma once
#include "gpu_memory.h"

#include <fstream>
#include <string>
#include <sys/wait.h>
#include <vector>

extern char** environ;

// A tokenizer that only knows its size and EOS (V - 1): what a benchmark step needs.
struct SizeOnlyTokenizer : Tokenizer {
    int V;
    explicit SizeOnlyTokenizer(int v) : V(v) {}
    std::string name() const override { return "size-only"; }
    int vocab_size() const override { return V; }
    int eos_id() const override { return V - 1; }
    bool special_by_default() const override { return false; }
    using Tokenizer::encode;
    std::vector<int> encode(const std::string&, bool) const override { GKD_FAIL("bench: no text tokenizer"); }
    std::string decode(const std::vector<int>&) const override { GKD_FAIL("bench: no text tokenizer"); }
};

// Floating-point operations of a forward pass over `tokens` positions that attend to
// `attended` earlier positions in all (sum over positions of their position + 1), with
// `head_rows` rows through the LM head: the matmuls (2 per multiply-add) and attention's
// two (t+1)-long products per head dimension. A backward pass is twice this.
static double forward_flops(const GPTConfig& c, double tokens, double attended, double head_rows) {
    double C = c.channels, L = c.num_layers;
    return 2.0 * tokens * 12 * L * C * C + 2.0 * head_rows * C * c.vocab_size + 4.0 * L * C * attended;
}

// --student / --teacher L,C,NH as a configuration, checked
static GPTConfig bench_config(const std::string& shape, int V, int context, const char* flag) {
    int L = 0, C = 0, NH = 0;
    char extra;
    if (sscanf(shape.c_str(), "%d,%d,%d%c", &L, &C, &NH, &extra) != 3)
        GKD_FAIL("gkd bench: --%s '%s' must be LAYERS,CHANNELS,HEADS (e.g. 2,128,4)", flag, shape.c_str());
    GPTConfig c;
    c.num_layers = L; c.channels = C; c.num_heads = NH; c.max_seq_len = context; c.vocab_size = V;
    c.padded_vocab_size = pad_vocab(V);
    validate_config(c, strf("gkd bench --%s", flag));
    return c;
}
static GPT<float> bench_model(const std::string& shape, int V, int context, uint64_t seed, const char* flag) {
    GPT<float> m;
    gpt_build(m, bench_config(shape, V, context, flag));
    gpt_init_random(m, seed);
    return m;
}

// A trainer of random models on B random prompts of P tokens (and, for SFT, completions
// of K tokens), with no EOS in them: on-policy GKD (lambda 1) or SFT, lr 1e-4, file order.
static void benchmark_trainer(Trainer& tr, GPT<float> student, GPT<float> teacher, bool sft, int B, int P, int K,
                              double beta, int steps) {
    const int V = student.config.vocab_size;
    tr.student = std::move(student);
    tr.has_teacher = !sft;
    if (!sft) tr.teacher = std::move(teacher);
    tr.tok = std::make_unique<SizeOnlyTokenizer>(V);
    TrainOptions& o = tr.opt;
    o.sft = sft;
    o.lambda = 1;
    o.beta = beta;
    o.batch = B;
    o.max_new_tokens = K;
    o.steps = steps;
    o.lr = 1e-4;
    o.shuffle = 0;
    Rng rng(7);
    for (int i = 0; i < B; i++) {
        Example e;
        for (int t = 0; t < P; t++) e.prompt.push_back((int)rng.below(V - 1));
        if (sft) for (int t = 0; t < K; t++) e.completion.push_back((int)rng.below(V - 1));
        e.has_completion = sft;
        tr.data.examples.push_back(e);
    }
}

// sgemm at (M, K) x (K, N), through the matmul the model uses: the machine's ceiling.
static double matmul_gflops(int M, int K, int N) {
    std::vector<float> a((size_t)M * K), w((size_t)N * K), out((size_t)M * N);
    Rng rng(1);
    for (auto& x : a) x = (float)rng.normal();
    for (auto& x : w) x = (float)rng.normal();
    matmul_forward(out.data(), a.data(), w.data(), (const float*)nullptr, M, K, N, N);  // warm-up
    double best = 0;
    for (int window = 0; window < 3; window++) {  // the best of three ~0.1 s windows: a ceiling
        int reps = 0;
        double t = now_seconds(), elapsed = 0;
        do {
            matmul_forward(out.data(), a.data(), w.data(), (const float*)nullptr, M, K, N, N);
            elapsed = now_seconds() - t;
        } while (++reps < 2 || elapsed < 0.1);
        best = std::max(best, 2.0 * M * K * N * reps / elapsed / 1e9);
    }
    return best;
}

// What a CPU figure depends on: the processor, its widest vector ISA, what gkd's own code
// runs on it (its tiles and decode attention: the variant cpu_kernels() picked, AVX-512
// where the CPU has it unless GKD_CPU_KERNELS says otherwise; the loops GCC vectorizes
// follow -march), and the BLAS as OpenBLAS reports itself, with the OPENBLAS_CORETYPE
// that forces its kernel choice when the environment sets one.
struct CpuDescription {
    std::string model = "unknown CPU", isa = "unknown", kernels, blas;
};
static CpuDescription describe_cpu() {
    CpuDescription d;
    std::ifstream in("/proc/cpuinfo");
    std::string line, flags;
    while (std::getline(in, line)) {
        auto value = [&] { size_t c = line.find(':'); return c == std::string::npos ? std::string() : line.substr(c + 2); };
        if (line.rfind("model name", 0) == 0 && d.model == "unknown CPU") d.model = value();
        if (line.rfind("flags", 0) == 0 && flags.empty()) flags = " " + value() + " ";
    }
    auto has = [&](const char* f) { return flags.find(std::string(" ") + f + " ") != std::string::npos; };
    if (!flags.empty())
        d.isa = has("avx512f") ? "AVX-512 (avx512f)" : has("avx2") && has("fma") ? "AVX2 + FMA, no AVX-512"
              : has("avx") ? "AVX, no AVX2" : "SSE only";
#if defined(__AVX512F__)
    const char* loops = "AVX-512";
#elif defined(__AVX2__)
    const char* loops = "AVX2";
#else
    const char* loops = "SSE2";
#endif
    const char* chosen = getenv("GKD_CPU_KERNELS");
    d.kernels = strf("gkd's kernels %s%s, its compiled loops up to %s", packed_tile_isa(),
                     chosen && *chosen ? strf(" (GKD_CPU_KERNELS=%s)", chosen).c_str() : "", loops);
#ifdef GKD_BLAS
    const char* forced = getenv("OPENBLAS_CORETYPE");
    d.blas = strf("OpenBLAS (%s; kernels for %s%s)", openblas_get_config(), openblas_get_corename(),
                  forced && *forced ? strf(", forced by OPENBLAS_CORETYPE=%s", forced).c_str() : "");
#else
    d.blas = "gkd's OpenMP loops (no BLAS)";
#endif
    return d;
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? NAN : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// ----------------------------------------------------------------------------
// the step under each choice of CPU kernels

// One choice: OpenBLAS's kernels (the environment's, or its own for this CPU: the child
// runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE) and gkd's own (GKD_CPU_KERNELS).
struct KernelChoice {
    bool blas_own;
    CpuKernels tiles;
};
// The choices that differ on this machine: OpenBLAS's own only where the environment
// forces its kernels (and this build calls OpenBLAS), AVX-512 only where the CPU has it.
static std::vector<KernelChoice> kernel_choices() {
    auto set = [](const char* v) { const char* e = getenv(v); return e && *e; };
    const bool forced = HAVE_BLAS && (set("OPENBLAS_CORETYPE") || set("OPENBLAS_L2_SIZE"));
    std::vector<KernelChoice> out;
    for (bool own : {false, true}) {
        if (own && !forced) continue;
        for (CpuKernels k : {CpuKernels::avx2, CpuKernels::avx512})
            if (k <= cpu_kernels_widest()) out.push_back({own, k});
    }
    return out;
}

// OpenBLAS's name for the kernels it runs (its own pick, or OPENBLAS_CORETYPE's)
static std::string blas_kernels_name() {
#ifdef GKD_BLAS
    return openblas_get_corename();
#else
    return "none";  // gkd's OpenMP loops
#endif
}

// Runs this program (gkd bench with `args`) under a choice; its one JSON line.
static json bench_under(const std::vector<std::string>& args, const KernelChoice& c) {
    std::vector<std::string> env;
    for (char** e = environ; *e; e++) {
        std::string v = *e;
        if (v.rfind("GKD_CPU_KERNELS=", 0) == 0) continue;
        if (c.blas_own && (v.rfind("OPENBLAS_CORETYPE=", 0) == 0 || v.rfind("OPENBLAS_L2_SIZE=", 0) == 0)) continue;
        env.push_back(v);
    }
    env.push_back(std::string("GKD_CPU_KERNELS=") + cpu_kernels_name(c.tiles));
    std::vector<char*> argv_c, env_c;
    for (const std::string& a : args) argv_c.push_back(const_cast<char*>(a.c_str()));
    argv_c.push_back(nullptr);
    for (std::string& e : env) env_c.push_back(const_cast<char*>(e.c_str()));
    env_c.push_back(nullptr);
    int out[2];
    if (pipe(out) != 0) GKD_FAIL("gkd bench: pipe: %s", strerror(errno));
    fflush(stdout);
    const pid_t pid = fork();
    if (pid < 0) GKD_FAIL("gkd bench: fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        close(out[0]);
        close(out[1]);
        execve("/proc/self/exe", argv_c.data(), env_c.data());
        _exit(127);
    }
    close(out[1]);
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) text.append(buf, n);
    close(out[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    json j = json::parse(text, nullptr, false);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || j.is_discarded())
        GKD_FAIL("gkd bench: the run with OpenBLAS's %s kernels and gkd's %s failed (exit %d)",
                 c.blas_own ? "own" : "environment's", cpu_kernels_name(c.tiles), WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return j;
}

// The step under every choice, `rounds` times in turn (so that all see the same machine
// state), each a fresh process; a table of each choice's medians over the rounds.
static void print_kernel_choices(const Flags& f, int rounds) {
    std::vector<std::string> args = {"gkd", "bench"};
    for (const auto& [name, value] : f.values)
        if (name != "kernel-choices" && name != "rounds") { args.push_back("--" + name); args.push_back(value); }
    for (const std::string& name : f.switches) args.push_back("--" + name);
    args.push_back("--json");
    args.push_back("--kernel-choices");
    args.push_back("this");
    const std::vector<KernelChoice> choices = kernel_choices();
    std::vector<std::vector<json>> runs(choices.size());
    for (int r = 0; r < rounds; r++)
        for (size_t i = 0; i < choices.size(); i++) runs[i].push_back(bench_under(args, choices[i]));
    auto med = [&](size_t i, const char* key) {
        std::vector<double> v;
        for (const json& j : runs[i]) v.push_back(j.value(key, 0.0));
        return median(v);
    };
    printf("\nthe step under each choice of CPU kernels (each a process of its own, %d round%s in turn, medians; "
           "OpenBLAS's own: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for that run alone):\n\n",
           rounds, rounds == 1 ? "" : "s");
    printf("| OpenBLAS kernels | gkd's kernels | sample ms (GFLOP/s) | teacher ms (GFLOP/s) | backward ms "
           "(GFLOP/s, of the ceiling) | step ms | sgemm ceiling GFLOP/s | step: share of the ceiling "
           "(algorithm's work / what ran) |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < choices.size(); i++) {
        const json& j = runs[i].back();
        const double ceiling = med(i, "sgemm_gflops"), step_ms = med(i, "step_ms");
        printf("| %s%s | %s | %.1f (%.0f) | %.1f (%.0f) | %.1f (%.0f, %.0f%%) | %.1f | %.0f | %.0f%% / %.0f%% |\n",
               j.value("blas_kernels", std::string("?")).c_str(), choices[i].blas_own ? " (its own choice)" : " (the environment's)",
               cpu_kernels_name(choices[i].tiles), med(i, "sample_ms"), med(i, "sample_gflops"), med(i, "teacher_ms"),
               med(i, "teacher_gflops"), med(i, "backward_ms"), med(i, "backward_gflops"),
               100 * med(i, "backward_gflops") / ceiling, step_ms, ceiling, 100 * med(i, "step_gflops") / ceiling,
               100 * med(i, "step_run_gflops") / ceiling);
    }
}

// One line of the bench table: a phase, its median time, and the work it did.
struct BenchRow {
    const char* name;
    const char* key;
    double ms, tokens, flops;
};

#ifdef GKD_CUDA_PATH
// cuBLAS SGEMM (M, K) x (K, N) in the run's precision mode, timed with CUDA events: the
// card's matmul ceiling as this build sees it, in TFLOP/s (the best of three windows).
static double gpu_matmul_tflops(int M, int K, int N) {
    DeviceBuffer<float> a, w, out;
    std::vector<float> host((size_t)std::max(M, N) * K);
    Rng rng(1);
    for (auto& x : host) x = (float)rng.normal();
    a.upload(host.data(), (size_t)M * K);
    w.upload(host.data(), (size_t)N * K);
    out.ensure((size_t)M * N);
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    gpu::matmul_forward(out.ptr, a.ptr, w.ptr, (const float*)nullptr, M, K, N, N);  // warm-up
    double best = 0;
    for (int window = 0; window < 3; window++) {
        const int reps = 20;
        CUDA_CHECK(cudaEventRecord(start));
        for (int r = 0; r < reps; r++) gpu::matmul_forward(out.ptr, a.ptr, w.ptr, (const float*)nullptr, M, K, N, N);
        CUDA_CHECK(cudaEventRecord(stop));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        best = std::max(best, 2.0 * M * K * N * reps / (ms * 1e-3) / 1e12);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return best;
}

// gkd bench --device cuda: per phase ms, tokens/s, TFLOP/s and MFU against the card's
// peak (fp32 CUDA cores, or TF32 tensor cores with --tf32), and the step's device memory.
static int print_gpu_bench(bool as_json, bool sft, const Trainer& tr, const std::vector<BenchRow>& rows,
                           double step_flops, double step_ms, int B, int P, int K, int V, int steps, int warmup, int T,
                           const std::vector<MemoryClass>& memory) {
    const GpuContext& g = gpu_context();
    const bool bf16_run = dynamic_cast<const GpuDeviceOf<bf16>*>(tr.device.get()) != nullptr;
    const Precision run_precision = bf16_run ? Precision::bf16 : Precision::fp32;
    const double peak = gpu_peak_flops(g.tf32, run_precision);
    const GPTConfig& sc = tr.student.config;
    const GPTConfig& tc = sft ? sc : tr.teacher.config;
    // the steps' memory, read before the ceiling measurements allocate their own
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const double peak_mb = g.bytes_peak / 1048576.0, used_mb = (total_bytes - free_bytes) / 1048576.0;
    const double at_shape = gpu_matmul_tflops(B * T, tc.channels, 4 * tc.channels);
    // the emulator's "GPU" is this CPU: a 4096^3 ceiling would take minutes there
    const int ceiling_n = CUDA_EMULATED ? 256 : 4096;
    const double big = gpu_matmul_tflops(ceiling_n, ceiling_n, ceiling_n);
    const char* precision = bf16_run ? "bf16 (fp32 accumulation, tensor cores)"
                            : g.tf32 ? "fp32, TF32 tensor cores" : "fp32 (TF32 off)";
    if (as_json) {
        json j = {{"mode", sft ? "sft" : "on-policy gkd"}, {"device", g.prop.name}, {"precision", precision},
                  {"batch", B}, {"prompt_tokens", P}, {"new_tokens", K}, {"vocab", V},
                  {"student_parameters", tr.student.num_parameters},
                  {"teacher_parameters", sft ? 0 : tr.teacher.num_parameters}, {"peak_tflops", peak / 1e12},
                  {"sgemm_tflops_4096", big}, {"sgemm_tflops_step_shape", at_shape},
                  {"peak_device_memory_mb", peak_mb}, {"device_memory_in_use_mb", used_mb},
                  {"table_fp32_mb", memory_total(memory, 0) / 1e6}, {"table_bf16_mb", memory_total(memory, 1) / 1e6}};
        for (auto& r : rows) {
            j[std::string(r.key) + "_ms"] = r.ms;
            if (r.flops > 0) {
                j[std::string(r.key) + "_tflops"] = r.flops / (r.ms * 1e9);
                j[std::string(r.key) + "_mfu"] = r.flops / (r.ms * 1e-3) / peak;
            }
        }
        printf("%s\n", j.dump().c_str());
        return 0;
    }
    printf("gkd bench: %s step on %s, %s; student L=%d C=%d NH=%d (%.2fM parameters)",
           sft ? "SFT" : "on-policy GKD (lambda 1)", g.prop.name, precision, sc.num_layers, sc.channels, sc.num_heads,
           tr.student.num_parameters / 1e6);
    if (!sft)
        printf(", teacher L=%d C=%d NH=%d (%.2fM)", tc.num_layers, tc.channels, tc.num_heads, tr.teacher.num_parameters / 1e6);
    printf("\n  V=%d, B=%d, %d prompt + %d %s tokens; median of %d steps after %d warm-up\n\n", V, B, P, K,
           sft ? "completion" : "new", steps, warmup);
    printf("| phase | ms | tokens/s | TFLOP/s | MFU |\n|---|---:|---:|---:|---:|\n");
    for (auto& r : rows)
        printf("| %s | %.2f | %s | %s | %s |\n", r.name, r.ms,
               r.tokens > 0 ? strf("%.0f", r.tokens / r.ms * 1000).c_str() : "-",
               r.flops > 0 ? strf("%.2f", r.flops / (r.ms * 1e9)).c_str() : "-",
               r.flops > 0 ? strf("%.1f%%", 100 * r.flops / (r.ms * 1e-3) / peak).c_str() : "-");
    printf("\npeak device memory %.0f MB allocated by gkd (%.0f MB in use on the device with the CUDA context and "
           "cuBLAS); card peak %.1f TFLOP/s (%s, %d SMs at %.2f GHz); cuBLAS SGEMM measured %.1f TFLOP/s at %d^3, "
           "%.1f at the step's shape (%d x %d x %d); the step reaches %.1f%% of the peak\n",
           peak_mb, used_mb, peak / 1e12, precision, g.prop.multiProcessorCount, g.clock_hz / 1e9, big, ceiling_n, at_shape,
           B * T, tc.channels, 4 * tc.channels, 100 * step_flops / (step_ms * 1e-3) / peak);
    print_memory_table(memory, strf("B = %d, %d + %d tokens", B, P, K));
    printf("this run (%s) allocated %.1f MB at its peak; the table's %s column says %.1f MB\n", precision_name(run_precision),
           peak_mb * 1048576 / 1e6, precision_name(run_precision), memory_total(memory, bf16_run) / 1e6);
    return 0;
}
#endif

// The memory the teacher hands the loss: what this run's device kept (whole rows, or the
// top-K with the chunk its pass reduced), and the same arithmetic at GPT-2's vocabulary.
struct TeacherMemory {
    double kept_mb = 0, chunk_mb = 0, gpt2_rows_mb = 0, gpt2_top64_mb = 0, gpt2_top8_mb = 0, gpt2_chunk_mb = 0;
};
static TeacherMemory teacher_memory(const Trainer& tr, int B, int T) {
    TeacherMemory m;
    if (auto* cpu = dynamic_cast<const CpuDevice*>(tr.device.get())) {
        m.kept_mb = (cpu->teacher_logits.capacity() * 4.0 + cpu->teacher_signal.bytes()) / 1e6;
        m.chunk_mb = cpu->teacher_chunk.capacity() * 4.0 / 1e6;
    }
    const double positions = (double)B * T, Vp = 50304;
    m.gpt2_rows_mb = positions * Vp * 4 / 1e6;
    m.gpt2_top64_mb = positions * (2 * 64 + 1) * 4 / 1e6;  // (K + 1) floats and K int32 ids
    m.gpt2_top8_mb = positions * (2 * 8 + 1) * 4 / 1e6;
    m.gpt2_chunk_mb = std::max(1, CpuDevice::teacher_chunk_positions((int)Vp) / T) * (double)T * Vp * 4 / 1e6;
    return m;
}

// ----------------------------------------------------------------------------
// the ragged workload: a supervised distillation step (lambda 0: the dataset's completions,
// whose lengths the workload sets) on rows of very different lengths, padded against packed

// Row lengths of instruction data, as gkd bench --ragged draws them: prompts and answers
// long-tailed, log-normal, prompts of median 24 tokens (sigma 0.9), answers of median 48
// (sigma 1.0), each cut to fit the context. The parameters are chosen to have the shape of
// instruction-tuning data (a dozen to hundreds of prompt tokens, answers ending anywhere up
// to the budget); they are stated here, not measured from a dataset: --lengths FILE runs
// the lengths of real data instead.
struct RaggedRow { int prompt, completion; };
static std::vector<RaggedRow> instruction_like_lengths(int B, int context, uint64_t seed) {
    Rng rng(seed);
    std::vector<RaggedRow> rows(B);
    for (RaggedRow& r : rows) {
        const double p = std::exp(std::log(24.0) + 0.9 * rng.normal()), c = std::exp(std::log(48.0) + 1.0 * rng.normal());
        r.prompt = std::min(std::max(1, (int)std::lround(p)), context / 2);
        r.completion = std::min(std::max(1, (int)std::lround(c)), context - r.prompt - 1);
    }
    return rows;
}
// --lengths FILE: one JSON object a line, {"prompt": tokens, "completion": tokens}
static std::vector<RaggedRow> lengths_from_file(const std::string& path, int context) {
    std::ifstream in(path);
    if (!in) GKD_FAIL("gkd bench --lengths: %s: cannot open for reading", path.c_str());
    std::vector<RaggedRow> rows;
    std::string line;
    for (int n = 1; std::getline(in, line); n++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json j = json::parse(line, nullptr, false);
        if (!j.is_object() || !j.contains("prompt") || !j.contains("completion") || !j["prompt"].is_number_integer() ||
            !j["completion"].is_number_integer())
            GKD_FAIL("%s:%d: expected {\"prompt\": tokens, \"completion\": tokens}", path.c_str(), n);
        RaggedRow r{j["prompt"].get<int>(), j["completion"].get<int>()};
        if (r.prompt < 1 || r.completion < 1 || r.prompt + r.completion + 1 > context)
            GKD_FAIL("%s:%d: prompt %d and completion %d tokens: each at least 1, together within the context %d "
                     "less the EOS", path.c_str(), n, r.prompt, r.completion, context);
        rows.push_back(r);
    }
    if (rows.empty()) GKD_FAIL("gkd bench --lengths: %s has no rows", path.c_str());
    return rows;
}

// Times the same supervised distillation step padded (each batch padded to its longest
// row, as a trainer that pads runs it) and packed (gkd), step for step in turn, and prints
// both by phase with the real and the padded tokens.
static int bench_ragged(const Flags& f, const std::string& device, int V, int context, int steps, int warmup) {
    const int B = (int)f.integer("batch", 16, 1, 1 << 16);
    const std::vector<RaggedRow> lengths = f.has("lengths") ? lengths_from_file(f.str("lengths", ""), context)
                                                            : instruction_like_lengths(B, context, 11);
    const int rows = (int)lengths.size();
    Trainer tr[2];  // 0: padded, 1: packed
    for (int k = 0; k < 2; k++) {
        GPT<float> student = bench_model(f.str("student", "2,768,12"), V, context, 1, "student");
        GPT<float> teacher = bench_model(f.str("teacher", "4,768,12"), V, context, 2, "teacher");
        benchmark_trainer(tr[k], std::move(student), std::move(teacher), false, 0, 1, 1, f.num("beta", 0.5, 0, 1),
                          warmup + steps);
        Trainer& t = tr[k];
        t.opt.lambda = 0;  // the dataset's completions: the workload's lengths
        t.opt.batch = rows;
        t.opt.teacher_top_k = (int)f.integer("teacher-top-k", 0, 0, V);
        t.data.examples.clear();
        Rng rng(7);
        for (const RaggedRow& r : lengths) {
            Example e;
            for (int i = 0; i < r.prompt; i++) e.prompt.push_back((int)rng.below(V - 1));
            for (int i = 0; i < r.completion; i++) e.completion.push_back((int)rng.below(V - 1));
            e.has_completion = true;
            t.data.examples.push_back(e);
        }
        t.pad_batches = k == 0;
        t.opt.device = device;
        t.opt.tf32 = f.on("tf32");
        t.opt.precision = precision_flag(f, device);
        create_training_device(t);
    }
    std::vector<StepStats> stats[2];
    for (int step = 0; step < warmup + steps; step++)
        for (int k = 0; k < 2; k++) {
            StepStats st = gkd_step(tr[k], step);
            if (step >= warmup) stats[k].push_back(st);
        }
    long long real = 0, longest = 0, targets = 0;
    for (const RaggedRow& r : lengths) {
        real += r.prompt + r.completion;  // inputs: every token but the EOS
        longest = std::max<long long>(longest, r.prompt + r.completion);
        targets += r.completion + 1;
    }
    const long long padded = longest * rows;
    auto med = [&](int k, double StepStats::*field) {
        std::vector<double> v;
        for (auto& s : stats[k]) v.push_back(s.*field);
        return median(v);
    };
    struct Phase { const char* name; const char* key; double StepStats::*field; };
    const Phase phases[] = {{"teacher forward", "teacher", &StepStats::teacher_ms},
                            {"student forward", "forward", &StepStats::forward_ms},
                            {"loss", "loss", &StepStats::loss_ms},
                            {"student backward + grad norm", "backward", &StepStats::backward_ms},
                            {"AdamW", "update", &StepStats::update_ms},
                            {"step", "step", &StepStats::ms}};
    const CpuDescription cpu = describe_cpu();
    const GPTConfig &sc = tr[1].student.config, &tc = tr[1].teacher.config;
    if (f.on("json")) {
        json j = {{"workload", f.has("lengths") ? f.str("lengths", "") : "instruction-like"}, {"rows", rows},
                  {"real_tokens", real}, {"padded_tokens", padded}, {"target_tokens", targets},
                  {"device", tr[1].device->on_gpu() ? "cuda" : "cpu"}, {"threads", omp_get_max_threads()},
                  {"cpu", cpu.model}, {"matmuls", cpu.blas}};
        for (const Phase& p : phases) {
            j[std::string("padded_") + p.key + "_ms"] = med(0, p.field);
            j[std::string("packed_") + p.key + "_ms"] = med(1, p.field);
        }
        printf("%s\n", j.dump().c_str());
        return 0;
    }
    printf("gkd bench --ragged: supervised distillation step (lambda 0) on %d rows of %s; student L=%d C=%d NH=%d, "
           "teacher L=%d C=%d NH=%d, V=%d\n", rows,
           f.has("lengths") ? strf("the lengths in %s", f.str("lengths", "").c_str()).c_str()
                            : "instruction-like lengths (log-normal prompts of median 24, answers of median 48)",
           sc.num_layers, sc.channels, sc.num_heads, tc.num_layers, tc.channels, tc.num_heads, V);
    printf("  tokens: %lld real, %lld padded to the longest row (%lld x %d rows: %.0f%% padding); %lld targets\n",
           real, padded, longest, rows, 100.0 * (padded - real) / padded, targets);
    printf("  median of %d steps after %d warm-up, padded and packed in turn; %s\n\n", steps, warmup,
           tr[1].device->on_gpu() ? "on the GPU"
                                   : strf("%s, %d threads; matmuls: %s", cpu.model.c_str(), omp_get_max_threads(),
                                          cpu.blas.c_str()).c_str());
    printf("| phase | padded ms | packed ms | packed speed-up | padded target tok/s | packed target tok/s |\n"
           "|---|---:|---:|---:|---:|---:|\n");
    for (const Phase& p : phases) {
        const double a = med(0, p.field), b = med(1, p.field);
        printf("| %s | %.1f | %.1f | %.2fx | %.0f | %.0f |\n", p.name, a, b, a / b, targets / a * 1000, targets / b * 1000);
    }
    return 0;
}

static const std::vector<FlagSpec> BENCH_FLAGS = {
    {"student", true, "LAYERS,CHANNELS,HEADS of the student (2,128,4)"},
    {"teacher", true, "LAYERS,CHANNELS,HEADS of the teacher (4,256,4)"},
    {"vocab", true, "byte (V = 257) or a number, e.g. 50257 (byte)"},
    {"context", true, "maxT of both models (128)"},
    {"batch", true, "B (32)"}, {"prompt-tokens", true, "tokens per prompt (32)"},
    {"new-tokens", true, "sampled tokens per row; with --sft, completion tokens (64)"},
    {"beta", true, "the divergence (0.5)"},
    {"teacher-top-k", true, "the divergence over the teacher's top-K + tail: the teacher keeps (rows, K) (0: all V)"},
    {"sft", false, "time an SFT step of the student instead (no teacher, no sampling)"},
    {"steps", true, "timed steps; the table gives medians (5)"}, {"warmup", true, "untimed steps first (1)"},
    {"json", false, "print one JSON object instead of the table"},
    {"memory-only", false, "print the CUDA path's device memory by tensor class, fp32 against bf16, and stop (no step runs)"},
    {"ragged", false, "time a supervised distillation step on rows of instruction-like lengths, padded against packed "
                      "(defaults then: --student 2,768,12 --teacher 4,768,12 --batch 16 --context 256 --steps 3)"},
    {"lengths", true, "with --ragged: the rows' lengths from FILE, JSONL {\"prompt\": tokens, \"completion\": tokens}"},
    {"kernel-choices", true, "cpu: all (the table's default: after this run, the step again under each choice of "
                              "OpenBLAS's kernels (the environment's; its own, where the environment forces them) and "
                              "of gkd's (avx2, avx512 where the CPU has it), each in a process of its own) or this "
                              "(this process's alone; the default with --json and --memory-only)"},
    {"rounds", true, "with --kernel-choices all: runs of each choice, in turn; the table gives medians (1)"},
    {"device", true, "auto | cpu | cuda"},
    {"precision", true, PRECISION_HELP},
    {"tf32", false, "cuda: matmuls on TF32 tensor cores (MFU then against the TF32 peak)"}};

static int cmd_bench(int argc, char** argv) {
    std::optional<Flags> parsed = command_flags(
        "bench", BENCH_FLAGS, argc, argv,
        "gkd bench: time one training step by phase on random models (defaults: the CPU reference "
        "configuration); prints ms, tokens/s, GFLOP/s, peak RSS and the machine's sgemm ceiling");
    if (!parsed) return 0;  // --help
    const Flags& f = *parsed;
    const std::string device = resolve_device(f);
    std::string vocab = f.str("vocab", "byte");
    int V = vocab == "byte" ? 257 : (int)f.integer("vocab", 0, 2, 1 << 24);
    if (f.has("lengths") && !f.on("ragged")) GKD_FAIL("gkd bench: --lengths gives the rows of --ragged: add --ragged");
    if (f.on("ragged") && (f.has("kernel-choices") || f.has("rounds")))
        GKD_FAIL("gkd bench: --%s applies to the step's bench, not --ragged", f.has("rounds") ? "rounds" : "kernel-choices");
    if (f.on("ragged"))
        return bench_ragged(f, device, V, (int)f.integer("context", 256, 2, 1 << 20),
                            (int)f.integer("steps", 3, 1, 100000), (int)f.integer("warmup", 1, 0, 100000));
    int context = (int)f.integer("context", 128, 2, 1 << 20);
    int B = (int)f.integer("batch", 32, 1, 1 << 16);
    int P = (int)f.integer("prompt-tokens", 32, 1, 1 << 20);
    int K = (int)f.integer("new-tokens", 64, 1, 1 << 20);
    int steps = (int)f.integer("steps", 5, 1, 100000), warmup = (int)f.integer("warmup", 1, 0, 100000);
    bool sft = f.on("sft");
    const std::string choices =
        f.str("kernel-choices", f.on("json") || f.on("memory-only") || device != "cpu" ? "this" : "all");
    if (choices != "all" && choices != "this")
        GKD_FAIL("gkd bench: --kernel-choices '%s' must be all or this", choices.c_str());
    if (choices == "all" && (device != "cpu" || f.on("json") || f.on("memory-only")))
        GKD_FAIL("gkd bench: --kernel-choices all times the CPU's kernels in the table: not with %s",
                 device != "cpu" ? "--device cuda" : f.on("json") ? "--json" : "--memory-only");
    if (f.has("rounds") && choices != "all") GKD_FAIL("gkd bench: --rounds counts the runs of --kernel-choices all");
    const bool kernel_choices_all = choices == "all";
    if (P + K > context) GKD_FAIL("gkd bench: --prompt-tokens %d + --new-tokens %d exceed --context %d", P, K, context);

    if (f.on("memory-only")) {  // the shapes alone: no model is made, no step runs
        GPTConfig sc = bench_config(f.str("student", "2,128,4"), V, context, "student");
        GPTConfig tc = bench_config(f.str("teacher", "4,256,4"), V, context, "teacher");
        const int top_k = (int)f.integer("teacher-top-k", 0, 0, V);
        const auto rows = gpu_step_memory(sc, sft ? nullptr : &tc, B, P, K, top_k);
        if (f.on("json")) {
            json j = {{"fp32_mb", memory_total(rows, 0) / 1e6}, {"bf16_mb", memory_total(rows, 1) / 1e6}};
            for (const MemoryClass& r : rows) j["classes"].push_back({{"name", r.name}, {"fp32_mb", r.bytes[0] / 1e6},
                                                                       {"bf16_mb", r.bytes[1] / 1e6}});
            printf("%s\n", j.dump().c_str());
        } else {
            printf("gkd bench --memory-only: %s step; student L=%d C=%d NH=%d", sft ? "SFT" : "on-policy GKD",
                   sc.num_layers, sc.channels, sc.num_heads);
            if (!sft) printf(", teacher L=%d C=%d NH=%d", tc.num_layers, tc.channels, tc.num_heads);
            printf("; V=%d, context %d\n", V, context);
            print_memory_table(rows, strf("B = %d, %d + %d tokens%s", B, P, K,
                                          top_k ? strf(", teacher top-%d", top_k).c_str() : ""));
        }
        return 0;
    }
    Trainer tr;
    GPT<float> student = bench_model(f.str("student", "2,128,4"), V, context, 1, "student"), teacher;
    if (!sft) teacher = bench_model(f.str("teacher", "4,256,4"), V, context, 2, "teacher");
    benchmark_trainer(tr, std::move(student), std::move(teacher), sft, B, P, K, f.num("beta", 0.5, 0, 1), warmup + steps);
    tr.opt.teacher_top_k = (int)f.integer("teacher-top-k", 0, 0, V);
    if (tr.opt.teacher_top_k && sft) GKD_FAIL("gkd bench: --teacher-top-k times a distillation step: not with --sft");
    tr.opt.device = device;
    tr.opt.tf32 = f.on("tf32");
    tr.opt.precision = precision_flag(f, device);
    create_training_device(tr);
    std::vector<StepStats> stats;
    for (int step = 0; step < warmup + steps; step++) {
        StepStats st = gkd_step(tr, step);
        if (step >= warmup) stats.push_back(st);
    }
    double rss = peak_rss_mb();
    auto med = [&](double StepStats::*field) {
        std::vector<double> v;
        for (auto& s : stats) v.push_back(s.*field);
        return median(v);
    };
    // work per phase; a row is P + K tokens long (sampling with random weights may stop a
    // row early at EOS: the targets count what was generated)
    const GPTConfig& sc = tr.student.config;
    double targets = 0;
    for (auto& s : stats) targets += s.tokens;
    targets /= stats.size();                           // completion tokens (incl. EOS) per step
    double T = P + (sft ? K + 1 : targets / B) - 1;    // mean input length of a row
    double rows_tokens = B * T, attended = B * T * (T + 1) / 2;
    double fwd = forward_flops(sc, rows_tokens, attended, rows_tokens);
    double sample_flops = 0, teacher_flops = 0, teacher_skipped = 0;
    if (!sft) {
        double gen = targets / B;  // generated tokens per row
        sample_flops = forward_flops(sc, B * (P + gen), B * (P + gen) * (P + gen + 1) / 2, B * (gen + 1));
        teacher_flops = forward_flops(tr.teacher.config, rows_tokens, attended, rows_tokens);
        // the teacher's last layer runs only keys and values at the P - 1 positions before a
        // row's first target (gpt_infer's head_from; on the GPU, head_at): not its
        // projections, MLP or LM head there; on the CPU not those queries' attention either
        const GPTConfig& tc = tr.teacher.config;
        const double C = tc.channels;
        teacher_skipped = B * (P - 1) * (2.0 * 18 * C * C + 2.0 * C * tc.vocab_size) +
                          (tr.device->on_gpu() ? 0.0 : 4.0 * C * B * (P - 1) * P / 2);
    }
    // on the CPU an on-policy step takes the student's forward from sampling's record
    // (ForwardRecord): the step's work is still counted as the algorithm's (and PyTorch's),
    // a forward included; what gkd ran is that less the forward
    bool reused = true;
    for (auto& s : stats) reused = reused && s.forward_reused;
    std::vector<BenchRow> rows;
    if (!sft) {
        rows.push_back({"sample (student, KV cache)", "sample", med(&StepStats::sample_ms), targets, sample_flops});
        rows.push_back({teacher_skipped > 0 ? "teacher forward (last layer at the targets)" : "teacher forward",
                        "teacher", med(&StepStats::teacher_ms), rows_tokens, teacher_flops});
    }
    rows.push_back({reused ? "student forward (sampling's activations, reused)" : "student forward", "forward",
                    med(&StepStats::forward_ms), rows_tokens, reused ? 0 : fwd});
    rows.push_back({sft ? "loss (cross-entropy)" : "loss (divergence)", "loss", med(&StepStats::loss_ms), targets, 0});
    rows.push_back({"student backward + grad norm", "backward", med(&StepStats::backward_ms), rows_tokens, 2 * fwd});
    rows.push_back({"AdamW (+ clipping)", "update", med(&StepStats::update_ms), 0, 0});
    double step_flops = sample_flops + teacher_flops + 3 * fwd;
    double run_flops = step_flops - (reused ? fwd : 0) - teacher_skipped;
    rows.push_back({"step", "step", med(&StepStats::ms), targets, step_flops});
    int threads = omp_get_max_threads();
    const GPTConfig& tc = sft ? sc : tr.teacher.config;
    const std::vector<MemoryClass> device_memory =
        gpu_step_memory(sc, sft ? nullptr : &tr.teacher.config, B, P, K, tr.opt.teacher_top_k);
#ifdef GKD_CUDA_PATH
    if (tr.device->on_gpu()) return print_gpu_bench(f.on("json"), sft, tr, rows, step_flops, med(&StepStats::ms), B, P, K, V, steps,
                                       warmup, (int)T, device_memory);
#endif
    double at_shape = matmul_gflops(B * (int)T, tc.channels, 4 * tc.channels);
    double ceiling = std::max(matmul_gflops(1024, 1024, 1024), at_shape);
    const CpuDescription cpu = describe_cpu();
    // what the teacher's pass kept for the loss in this run, and the same at GPT-2's sizes
    const TeacherMemory memory = teacher_memory(tr, B, P + K);
    if (f.on("json")) {
        json j = {{"mode", sft ? "sft" : "on-policy gkd"}, {"threads", threads}, {"batch", B}, {"prompt_tokens", P},
                  {"new_tokens", K}, {"vocab", V}, {"student_parameters", tr.student.num_parameters},
                  {"teacher_parameters", sft ? 0 : tr.teacher.num_parameters}, {"peak_rss_mb", rss},
                  {"sgemm_gflops", ceiling}, {"sgemm_at_step_shape_gflops", at_shape}, {"matmuls", cpu.blas},
                  {"cpu", cpu.model}, {"vector_isa", cpu.isa}, {"gkd_kernels", cpu.kernels},
                  {"gkd_kernel_variant", cpu_kernels_name(cpu_kernels())}, {"blas_kernels", blas_kernels_name()},
                  {"target_tokens", targets}, {"forward_reused", reused}, {"teacher_trimmed", teacher_skipped > 0},
                  {"step_run_gflops", run_flops / (med(&StepStats::ms) * 1e6)},
                  {"teacher_top_k", tr.opt.teacher_top_k}, {"teacher_kept_mb", memory.kept_mb},
                  {"teacher_chunk_mb", memory.chunk_mb}, {"gpt2_teacher_rows_mb", memory.gpt2_rows_mb},
                  {"gpt2_teacher_top64_mb", memory.gpt2_top64_mb}, {"gpt2_teacher_top8_mb", memory.gpt2_top8_mb},
                  {"gpt2_teacher_chunk_mb", memory.gpt2_chunk_mb},
                  {"cuda_table_fp32_mb", memory_total(device_memory, 0) / 1e6},
                  {"cuda_table_bf16_mb", memory_total(device_memory, 1) / 1e6}};
        for (auto& r : rows) {
            j[std::string(r.key) + "_ms"] = r.ms;
            if (r.flops > 0) j[std::string(r.key) + "_gflops"] = r.flops / (r.ms * 1e6);
        }
        printf("%s\n", j.dump().c_str());
        return 0;
    }
    printf("gkd bench: %s step; student L=%d C=%d NH=%d (%.2fM parameters)", sft ? "SFT" : "on-policy GKD (lambda 1)",
           sc.num_layers, sc.channels, sc.num_heads, tr.student.num_parameters / 1e6);
    if (!sft)
        printf(", teacher L=%d C=%d NH=%d (%.2fM)", tc.num_layers, tc.channels, tc.num_heads,
               tr.teacher.num_parameters / 1e6);
    printf("\n  V=%d, B=%d, %d prompt + %d %s tokens; median of %d steps after %d warm-up\n", V, B, P, K,
           sft ? "completion" : "new", steps, warmup);
    printf("  %s, %s, %d threads; %s; matmuls: %s\n\n", cpu.model.c_str(), cpu.isa.c_str(), threads,
           cpu.kernels.c_str(), cpu.blas.c_str());
    printf("| phase | ms | tokens/s | GFLOP/s |\n|---|---:|---:|---:|\n");
    for (auto& r : rows)
        printf("| %s | %.1f | %s | %s |\n", r.name, r.ms, r.tokens > 0 ? strf("%.0f", r.tokens / r.ms * 1000).c_str() : "-",
               r.flops > 0 ? strf("%.1f", r.flops / (r.ms * 1e6)).c_str() : "-");
    printf("\npeak RSS %.0f MB; sgemm ceiling %.1f GFLOP/s (the best of 1024^3 and the step's shape), %.1f at the "
           "step's shape (%d x %d x %d); "
           "the step reaches %.0f%% of the ceiling",
           rss, ceiling, at_shape, B * (int)T, tc.channels, 4 * tc.channels,
           100 * step_flops / (med(&StepStats::ms) * 1e6) / ceiling);
    if (run_flops < step_flops)
        printf(" (its work counted as the algorithm's: a student forward and a whole teacher forward; %.0f%% counting "
               "only what ran)",
               100 * run_flops / (med(&StepStats::ms) * 1e6) / ceiling);
    printf("\n");
    if (kernel_choices_all) print_kernel_choices(f, (int)f.integer("rounds", 1, 1, 1000));
    if (!sft) {
        printf("\nthe teacher's signal for the loss: %.1f MB kept by this run (%s)%s\n", memory.kept_mb,
               tr.opt.teacher_top_k ? strf("top-%d + tail", tr.opt.teacher_top_k).c_str() : "whole logit rows",
               memory.chunk_mb > 0 ? strf(", plus %.1f MB for one chunk's logits while it runs", memory.chunk_mb).c_str() : "");
        printf("at GPT-2's vocabulary (V = 50257, Vp = 50304) and this batch (B = %d, T = %d): whole rows %.0f MB; "
               "top-64 + tail %.1f MB, top-8 %.1f MB, plus %.0f MB for one chunk; a cached position %d bytes (top-64, "
               "fp16) against %d for a float row\n", B, P + K, memory.gpt2_rows_mb, memory.gpt2_top64_mb,
               memory.gpt2_top8_mb, memory.gpt2_chunk_mb, 65 * 2 + 64 * 2, 50304 * 4);
    }
    print_memory_table(device_memory, strf("B = %d, %d + %d tokens", B, P, K));
    return 0;
}

