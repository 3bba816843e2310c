// tests/test_gpu.cu — the CUDA path against the CPU path: `make test-gpu`.
//
// Like tests/test_gkd.cpp it includes gkd.cu whole, here compiled by nvcc, so each gpu::
// op can be run beside its CPU twin from model.h on the same inputs. What is checked:
// - every kernel (and cuBLAS call) of the step, forward and backward, on fresh random
//   inputs: outputs poisoned with NaN first (an unwritten element fails), accumulating
//   outputs started from random values (a += that became = fails);
// - the fused divergence kernel for forward KL, reverse KL, JSD(beta), tau != 1, SFT's
//   cross-entropy and the RL term, with masked positions and padded columns;
// - AdamW, the gradient norm, the teacher's forward pass (gpu_infer against gpt_infer);
// - a full GKD step (loss and every parameter gradient) and a 20-step trajectory;
// - greedy sampling token for token, and the Gumbel-max draw against softmax(logits / t);
// - a cached extension of several tokens per row, and speculative sampling against the CPU's;
// - gpu_generate's device-side bookkeeping: rows stopping at EOS at different steps, sampled
//   rows independent of the batch; decode steps replayed as a CUDA graph, the same tokens;
// - GPT-2's widths (C 768, head size 64, V 50257): attention at T = 70, the fused loss,
//   the sampler's frequencies, greedy decoding past 128 positions, and a whole GKD step
//   of about 130 positions a row (tests/test_gkd.cpp checks the CPU side of that shape
//   against finite differences and fp64).
// The measure is the relative error ||gpu - cpu|| / ||cpu||: fp32 kernels
// land near 1e-7, so the thresholds below (1e-5 for one op, 1e-4 through a whole model)
// separate rounding from a wrong index, which gives O(1).
//
// The same file runs on the CPU by gkd's SIMT emulator (make test-gpu-emulated, docs/cuda.md):
// there its device is the emulated one, and every test runs, in race mode.
// On a machine without a GPU it says so and exits 0 without checking anything: it never
// reports a pass it did not run. With GKD_REQUIRE_GPU=1 (dev/gpu_check.sh) no usable GPU is
// a failure, exit 1, so that a broken driver or image cannot read as a pass. Each test runs
// on its own (run_test): an error fails that test by name and the next one still runs,
// and the device is synchronised after each, so that an asynchronous fault is blamed on the
// test that caused it (CUDA_LAUNCH_BLOCKING=1 pins it to the launch). Each run draws new
// inputs; the seed is printed.
#define GKD_NO_MAIN
#include "../gkd.cu"

#include <random>

// The emulated build (make test-gpu-emulated) runs every test, some at smaller sizes
// where the CPU's time, not the coverage, is what a size buys: the GPT-2-width sampler
// draws fewer times (its statistical test scales with the count), greedy decoding to 160
// positions runs one row, and the GPT-2-width step one row of ~130 positions.
#ifdef GKD_CUDA_EMULATOR
constexpr bool EMULATED = true;
#else
constexpr bool EMULATED = false;
#endif

static int passed = 0, failed = 0;
static uint64_t run_seed = 0, draws = 0;

static void check(bool ok, const std::string& what) {
    (ok ? passed : failed)++;
    printf("%s  %s\n", ok ? "ok  " : "FAIL", what.c_str());
    fflush(stdout);
}

// The larger of an error so far and a new one, a NaN counting as infinitely large:
// std::max(worst, NaN) keeps worst, and a NaN result would pass "worst < tolerance".
static double worse(double worst, double d) { return std::isnan(d) ? INFINITY : std::max(worst, d); }

// ||a - b|| / ||b|| in double; any NaN or inf in a gives infinity
static double rel_error(const float* a, const float* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!std::isfinite(a[i])) return INFINITY;
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
static double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() ? rel_error(a.data(), b.data(), a.size()) : INFINITY;
}
static void check_close(const std::string& what, const std::vector<float>& gpu_out, const std::vector<float>& cpu_out,
                        double tol) {
    double e = rel_error(gpu_out, cpu_out);
    check(e <= tol, strf("%-52s rel error %.2e (limit %.0e)", what.c_str(), e, tol));
}

static std::vector<float> random_floats(size_t n, double std = 1.0) {
    Rng rng(derive_seed(run_seed, ++draws));
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(rng.normal() * std);
    return v;
}

// a device copy of a host vector, or a poisoned (all NaN) buffer of n floats
struct Dev {
    DeviceBuffer<float> b;
    explicit Dev(const std::vector<float>& v) { b.upload(v); }
    explicit Dev(size_t n) {
        b.ensure(n);
        CUDA_CHECK(cudaMemset(b.ptr, 0xFF, n * sizeof(float)));
    }
    float* p() { return b.ptr; }
    std::vector<float> get() {
        std::vector<float> v(b.count);
        CUDA_CHECK(cudaDeviceSynchronize());
        download(v.data(), b.ptr, b.count);
        return v;
    }
};
struct DevInt {
    DeviceBuffer<int> b;
    explicit DevInt(const std::vector<int>& v) { b.upload(v); }
};

// ----------------------------------------------------------------------------
// layer kernels

static void test_encoder() {
    const int B = 3, T = 7, C = 48, V = 20, maxT = 9;
    auto wte = random_floats((size_t)V * C), wpe = random_floats((size_t)maxT * C), dout = random_floats((size_t)B * T * C);
    std::vector<int> tokens(B * T);
    Rng rng(derive_seed(run_seed, ++draws));
    for (auto& t : tokens) t = (int)rng.below(5);  // few ids: many positions share a token
    std::vector<float> out(B * T * C);
    encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    Dev d_out((size_t)B * T * C), d_wte(wte), d_wpe(wpe);
    DevInt d_tok(tokens);
    gpu::encoder_forward(d_out.p(), d_tok.b.ptr, d_wte.p(), d_wpe.p(), B, T, C);
    check_close("encoder forward", d_out.get(), out, 1e-6);

    auto dwte = random_floats(wte.size()), dwpe = random_floats(wpe.size());
    Dev d_dwte(dwte), d_dwpe(dwpe), d_dout(dout);
    encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    gpu::TokenGroups groups;
    groups.build(tokens.data(), B * T);
    gpu::DeviceTokenGroups dgroups;
    dgroups.upload(groups);
    gpu::encoder_backward(d_dwte.p(), d_dwpe.p(), d_dout.p(), dgroups, B, T, C);
    check_close("encoder backward: dwte", d_dwte.get(), dwte, 1e-6);
    check_close("encoder backward: dwpe", d_dwpe.get(), dwpe, 1e-6);
}

static void test_layernorm() {
    const int N = 37, C = 80;
    auto x = random_floats((size_t)N * C, 3.0), w = random_floats(C), b = random_floats(C), dout = random_floats((size_t)N * C);
    for (auto& v : x) v += 2.0f;  // a non-zero mean
    std::vector<float> out(N * C), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    Dev d_out((size_t)N * C), d_mean((size_t)N), d_rstd((size_t)N), d_x(x), d_w(w), d_b(b);
    gpu::layernorm_forward(d_out.p(), d_mean.p(), d_rstd.p(), d_x.p(), d_w.p(), d_b.p(), N, C);
    check_close("layernorm forward", d_out.get(), out, 1e-5);
    check_close("layernorm forward: mean", d_mean.get(), mean, 1e-5);
    check_close("layernorm forward: rstd", d_rstd.get(), rstd, 1e-5);

    auto dx = random_floats(x.size()), dw = random_floats(C), db = random_floats(C);
    Dev d_dx(dx), d_dw(dw), d_db(db), d_dout(dout), scratch(gpu::column_scratch_size(N, C));
    layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
    gpu::layernorm_backward(d_dx.p(), d_dw.p(), d_db.p(), d_dout.p(), d_x.p(), d_w.p(), d_mean.p(), d_rstd.p(), N, C,
                            scratch.p());
    check_close("layernorm backward: dinp", d_dx.get(), dx, 1e-5);
    check_close("layernorm backward: dweight", d_dw.get(), dw, 1e-5);
    check_close("layernorm backward: dbias", d_db.get(), db, 1e-5);
}

static void test_matmul(bool with_bias, int ld_pad) {
    const int N = 45, C = 72, OC = 100, ld = OC + ld_pad;
    auto inp = random_floats((size_t)N * C), w = random_floats((size_t)OC * C), bias = random_floats(OC);
    auto dout = random_floats((size_t)N * ld);
    std::vector<float> out((size_t)N * ld, 0.0f);
    matmul_forward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N, C, OC, ld);
    Dev d_out(out), d_inp(inp), d_w(w), d_bias(bias);  // the padded columns are not the matmul's to write
    gpu::matmul_forward(d_out.p(), d_inp.p(), d_w.p(), with_bias ? d_bias.p() : nullptr, N, C, OC, ld);
    std::string tag = strf("matmul (%s, ld_out %d)", with_bias ? "bias" : "no bias", ld);
    check_close(tag + " forward", d_out.get(), out, 1e-5);

    auto dinp = random_floats(inp.size()), dw = random_floats(w.size()), db = random_floats(OC);
    Dev d_dinp(dinp), d_dw(dw), d_db(db), d_dout(dout), scratch(gpu::column_scratch_size(N, OC));
    matmul_backward(dinp.data(), dw.data(), with_bias ? db.data() : nullptr, dout.data(), inp.data(), w.data(), N, C, OC, ld);
    gpu::matmul_backward(d_dinp.p(), d_dw.p(), with_bias ? d_db.p() : nullptr, d_dout.p(), d_inp.p(), d_w.p(), N, C, OC,
                         ld, scratch.p());
    check_close(tag + " backward: dinp", d_dinp.get(), dinp, 1e-5);
    check_close(tag + " backward: dweight", d_dw.get(), dw, 1e-5);
    if (with_bias) check_close(tag + " backward: dbias", d_db.get(), db, 1e-5);
}

static void test_attention(int B, int T, int C, int NH) {
    auto qkv = random_floats((size_t)B * T * 3 * C), dout = random_floats((size_t)B * T * C);
    std::vector<float> out((size_t)B * T * C), att((size_t)B * NH * T * T);
    std::vector<float> cpu_scratch((size_t)omp_get_max_threads() * attention_scratch_per_thread<float>(T, C / NH));
    attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH);
    Dev d_out(out.size()), d_att(att.size()), d_qkv(qkv), scratch(gpu::attention_scratch_size(B, T, C, NH));
    gpu::attention_forward(d_out.p(), d_att.p(), d_qkv.p(), scratch.p(), B, T, C, NH);
    const std::string tag = strf("attention (T %d, head size %d)", T, C / NH);
    check_close(tag + " forward: out", d_out.get(), out, 1e-5);
    check_close(tag + " forward: softmax weights (B, NH, T, T)", d_att.get(), att, 1e-5);

    auto dqkv = random_floats(qkv.size());
    Dev d_dqkv(dqkv), d_dout(dout);
    attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), cpu_scratch.data(), B, T, C, NH);
    gpu::attention_backward(d_dqkv.p(), d_dout.p(), d_qkv.p(), d_att.p(), scratch.p(), B, T, C, NH);
    check_close(tag + " backward: dqkv", d_dqkv.get(), dqkv, 1e-5);
}

static void test_elementwise() {
    const size_t N = 10007;
    auto x = random_floats(N, 2.0), y = random_floats(N), dout = random_floats(N);
    std::vector<float> out(N);
    gelu_forward(out.data(), x.data(), N);
    Dev d_out(N), d_x(x), d_y(y), d_dout(dout);
    gpu::gelu_forward(d_out.p(), d_x.p(), N);
    check_close("gelu forward", d_out.get(), out, 1e-5);
    auto dx = random_floats(N);
    Dev d_dx(dx);
    gelu_backward(dx.data(), x.data(), dout.data(), N);
    gpu::gelu_backward(d_dx.p(), d_x.p(), d_dout.p(), N);
    check_close("gelu backward", d_dx.get(), dx, 1e-5);

    residual_forward(out.data(), x.data(), y.data(), N);
    Dev d_res(N);
    gpu::residual_forward(d_res.p(), d_x.p(), d_y.p(), N);
    check_close("residual forward", d_res.get(), out, 1e-6);
    auto da = random_floats(N), db = random_floats(N);
    Dev d_da(da), d_db(db);
    residual_backward(da.data(), db.data(), dout.data(), N);
    gpu::residual_backward(d_da.p(), d_db.p(), d_dout.p(), N);
    check_close("residual backward: da", d_da.get(), da, 1e-6);
    check_close("residual backward: db", d_db.get(), db, 1e-6);
}

// ----------------------------------------------------------------------------
// the fused loss

// A packed batch of B rows of T - 2 to T positions with targets on the completion part,
// targets spread over the real vocabulary.
static TrainBatch random_batch(int B, int T, int V) {
    Rng rng(derive_seed(run_seed, ++draws));
    TrainBatch b;
    b.B = B;
    b.row_start.assign(B + 1, 0);
    for (int r = 0; r < B; r++) b.row_start[r + 1] = b.row_start[r] + T - (int)rng.below(3);
    b.index_rows();
    b.tokens.assign(b.N, 0);
    b.targets.assign(b.N, -1);
    b.target_count.assign(B, 0);
    for (int r = 0; r < B; r++) {
        const int prompt = 1 + (int)rng.below(3);
        for (int t = prompt - 1; t < b.length(r); t++) {
            b.targets[b.row_start[r] + t] = (int)rng.below(V);
            b.target_count[r]++;
            b.num_targets++;
        }
    }
    return b;
}

// RL + GKD's term for the loss tests' three rows: advantages of both signs, alpha 0.6,
// sampled at temperature 0.8
static PolicyGradientTerm rl_term(int B) {
    PolicyGradientTerm pg;
    pg.advantage = {0.5, -1.0, 0.25};
    pg.scale = 0.4 / B;
    pg.alpha = 0.6;
    pg.temperature = 0.8;
    return pg;
}

// A GPU loss against its CPU twin: the value and the mean per token within 1e-9 (the same
// per-position values, summed by the same host code), RL's surrogate likewise (pg_gpu not
// null), and the gradient written over the logits within 1e-6 (masked rows and padded
// columns must be zero).
static void check_loss(const std::string& name, double loss_gpu, double loss_cpu, double mean_gpu, double mean_cpu,
                       const PolicyGradientTerm* pg_gpu, const PolicyGradientTerm& pg_cpu,
                       const std::vector<float>& grad_gpu, const std::vector<float>& grad_cpu) {
    double e = std::fabs(loss_gpu - loss_cpu) / std::max(std::fabs(loss_cpu), 1e-12);
    check(e < 1e-9 && std::fabs(mean_gpu - mean_cpu) <= 1e-9 * std::max(1.0, std::fabs(mean_cpu)),
          strf("%-52s loss %.10g vs %.10g", (name + ": value").c_str(), loss_gpu, loss_cpu));
    if (pg_gpu)
        check(std::fabs(pg_gpu->surrogate - pg_cpu.surrogate) <= 1e-9 * std::max(1.0, std::fabs(pg_cpu.surrogate)),
              strf("%s: REINFORCE surrogate %.10g vs %.10g", name.c_str(), pg_gpu->surrogate, pg_cpu.surrogate));
    check_close(name + ": gradient over the logits", grad_gpu, grad_cpu, 1e-6);
}

// At V = 300 each of the kernel's 256 threads holds one or two entries of a row; at
// GPT-2's V = 50257 each folds ~196 into its running max and sum (the online rescaling).
static void test_loss(const char* name, bool cross_entropy, double beta, double tau, LossNorm norm, bool rl,
                      int V = 300, int Vp_student = 384, int Vp_teacher = 320) {
    const int B = 3, T = 6;
    TrainBatch b = random_batch(B, T, V);
    auto student = random_floats((size_t)b.N * Vp_student, 3.0), teacher = random_floats((size_t)b.N * Vp_teacher, 3.0);
    PolicyGradientTerm pg_cpu = rl_term(B), pg_gpu = pg_cpu;
    std::vector<float> grad(student.size());
    double mean_cpu = 0, mean_gpu = 0;
    double loss_cpu = full_row_loss(b, teacher.data(), Vp_teacher, student.data(), grad.data(), V, Vp_student,
                                    cross_entropy, beta, tau, norm, &mean_cpu, rl ? &pg_cpu : nullptr);
    Dev d_student(student), d_teacher(teacher);
    GpuLossBuffers buf;
    double loss_gpu = gpu_full_row_loss(buf, b, cross_entropy ? nullptr : d_teacher.p(), Vp_teacher, d_student.p(), V,
                                        Vp_student, cross_entropy, beta, tau, norm, &mean_gpu, rl ? &pg_gpu : nullptr);
    check_loss(strf("fused loss %s", name), loss_gpu, loss_cpu, mean_gpu, mean_cpu, rl ? &pg_gpu : nullptr, pg_cpu,
               d_student.get(), grad);
}

// batch_loss against gpu_batch_loss for one LossSpec: total variation, the teacher's top-K
// with the tail, the sampled reverse KL. The GPU's teacher signal is computed on the device
// from the same teacher logits (teacher_top_k_kernel, target_log_prob_kernel) and checked
// against the CPU's (teacher_top_k_row, token_log_prob) first: the same ids, log-probs
// within 1e-6. Full-row losses read the teacher's rows at the targets alone, compacted,
// through the teacher_row map, as GpuDevice::teacher_forward leaves them.
static void test_spec_loss(const char* name, LossSpec spec, bool rl, int V = 300, int Vp_student = 384,
                           int Vp_teacher = 320) {
    const int B = 3, T = 6, K = spec.top_k;
    TrainBatch b = random_batch(B, T, V);
    const int N = b.N;
    auto student = random_floats((size_t)N * Vp_student, 3.0), teacher = random_floats((size_t)N * Vp_teacher, 3.0);
    PolicyGradientTerm pg_cpu = rl_term(B), pg_gpu = pg_cpu;
    std::vector<int> at, row_of(N, -1);
    std::vector<float> target_rows;
    for (int n = 0; n < N; n++)
        if (b.targets[n] >= 0) {
            row_of[n] = (int)at.size();
            at.push_back(n);
            target_rows.insert(target_rows.end(), teacher.begin() + (size_t)n * Vp_teacher,
                               teacher.begin() + (size_t)(n + 1) * Vp_teacher);
        }
    Dev d_rows(target_rows);
    DevInt d_at(at), d_row_of(row_of);
    TeacherSignal signal;
    GpuTeacherSignal d_signal;
    GpuLossBuffers buf;
    if (!spec.needs_teacher_rows()) {
        signal.reset(N, K);
        for (int n : at) {
            const float* row = teacher.data() + (size_t)n * Vp_teacher;
            if (K) teacher_top_k_row(row, V, K, spec.tau, signal.logp.data() + (size_t)n * (K + 1),
                                     signal.ids.data() + (size_t)n * K);
            else signal.target_logp[n] = (float)token_log_prob(row, b.targets[n], V, spec.tau);
        }
        d_signal.upload(signal);  // the sizes; the kernels overwrite the target positions
        std::vector<float> poison(K ? signal.logp.size() : signal.target_logp.size(), NAN);
        (K ? d_signal.logp : d_signal.target_logp).upload(poison);
        buf.targets.upload(b.targets);
        gpu_teacher_signal(d_signal, d_rows.p(), Vp_teacher, d_at.b.ptr, buf.targets.ptr, (int)at.size(), V, K, spec.tau);
        std::vector<float> lp_cpu, lp_gpu;
        std::vector<int> ids_gpu(signal.ids.size());
        if (K) download(ids_gpu.data(), d_signal.ids.ptr, ids_gpu.size());
        for (int n : at) {
            const int w = K ? K + 1 : 1;
            const float* c = K ? signal.logp.data() + (size_t)n * w : &signal.target_logp[n];
            std::vector<float> g(w);
            download(g.data(), (K ? d_signal.logp.ptr : d_signal.target_logp.ptr) + (size_t)n * w, w);
            lp_cpu.insert(lp_cpu.end(), c, c + w);
            lp_gpu.insert(lp_gpu.end(), g.begin(), g.end());
        }
        bool same_ids = true;
        for (int n : at)
            for (int j = 0; j < K; j++) same_ids = same_ids && ids_gpu[(size_t)n * K + j] == signal.ids[(size_t)n * K + j];
        if (K) check(same_ids, strf("%s: the teacher's top-%d ids, selected on the device", name, K));
        check_close(strf("%s: the teacher's signal (log-probs)", name), lp_gpu, lp_cpu, 1e-6);
    }
    std::vector<float> grad(student.size());
    double mean_cpu = 0, mean_gpu = 0;
    double loss_cpu = batch_loss(b, teacher.data(), Vp_teacher, signal, student.data(), grad.data(), V, Vp_student, spec,
                                 &mean_cpu, rl ? &pg_cpu : nullptr);
    Dev d_student(student);
    double loss_gpu = gpu_batch_loss(buf, b, d_rows.p(), Vp_teacher, d_row_of.b.ptr, d_signal, d_student.p(), V,
                                     Vp_student, spec, &mean_gpu, rl ? &pg_gpu : nullptr);
    check_loss(name, loss_gpu, loss_cpu, mean_gpu, mean_cpu, rl ? &pg_gpu : nullptr, pg_cpu, d_student.get(), grad);
}
static LossSpec spec_of(Objective objective, double beta, double tau, int top_k, double discount = 0,
                        LossNorm norm = LossNorm::Sequence) {
    LossSpec s;
    s.objective = objective;
    s.beta = beta;
    s.tau = tau;
    s.top_k = top_k;
    s.kl_discount = discount;
    s.norm = norm;
    return s;
}

// ----------------------------------------------------------------------------
// optimizer and norm

static GPT<float> random_model(const char* shape, int V, int context, double wte_scale = 1.0) {
    GPT<float> m = bench_model(shape, V, context, derive_seed(run_seed, ++draws), "test");
    for (size_t i = 0; i < m.param_sizes[0]; i++) m.params.wte[i] *= (float)wte_scale;
    return m;
}

static void test_adamw_and_norm() {
    GPT<float> m = random_model("2,64,4", 97, 16);
    gpt_prepare_training(m, 1, 1);
    auto g = random_floats(m.num_parameters, 1e-2);
    std::copy(g.begin(), g.end(), m.grads_memory.begin());
    GpuModel gm;
    gpu_upload(gm, m);
    gpu_prepare_training(gm, 1, 1);
    CUDA_CHECK(cudaMemcpy(gm.grads_memory.ptr, g.data(), g.size() * sizeof(float), cudaMemcpyHostToDevice));
    double n_cpu = grad_norm(m), n_gpu = gpu_grad_norm(gm);
    check(std::fabs(n_gpu - n_cpu) <= 1e-9 * n_cpu, strf("gradient norm: %.12g vs %.12g", n_gpu, n_cpu));
    AdamW a_cpu, a_gpu;
    a_cpu.weight_decay = a_gpu.weight_decay = 0.1;
    gpu_upload_optimizer(gm, a_gpu);
    for (int step = 0; step < 3; step++) {  // three steps: the moments and the bias correction matter
        adamw_update(m, a_cpu, 1e-3, 0.7);
        gpu_adamw_update(gm, a_gpu, 1e-3, 0.7);
    }
    GPT<float> back = m;
    gpu_download_parameters(gm, back);
    check_close("AdamW, 3 steps, decay and clipping: parameters", back.params_memory, m.params_memory, 1e-6);
    AdamW moments;
    gpu_download_optimizer(gm, moments);
    check_close("AdamW, 3 steps: second moments", moments.v, a_cpu.v, 1e-5);
}

// ----------------------------------------------------------------------------
// whole-model paths

// logits (B, T, Vp) of right-padded rows, compared at each row's n_real[r] real positions
// only: padded slots are junk on both devices
static void check_real_positions(const std::string& what, const std::vector<float>& gpu_logits,
                                 const std::vector<float>& cpu_logits, const std::vector<int>& n_real, int T, int Vp) {
    std::vector<float> a, b;
    for (size_t r = 0; r < n_real.size(); r++)
        for (int t = 0; t < n_real[r]; t++) {
            const size_t at = ((size_t)r * T + t) * Vp;
            a.insert(a.end(), gpu_logits.begin() + at, gpu_logits.begin() + at + Vp);
            b.insert(b.end(), cpu_logits.begin() + at, cpu_logits.begin() + at + Vp);
        }
    check_close(what, a, b, 1e-4);
}

// B random prompts of 1-12 tokens below `vocab`, and row b's budget first_budget + b * budget_step
struct RandomPrompts {
    std::vector<std::vector<int>> store;
    std::vector<const std::vector<int>*> prompts;
    std::vector<int> budgets;
    std::vector<uint64_t> ids;
    RandomPrompts(int B, int first_budget, int budget_step, int vocab = 256) : store(B) {
        Rng rng(derive_seed(run_seed, ++draws));
        for (int b = 0; b < B; b++) {
            int len = 1 + (int)rng.below(12);
            for (int t = 0; t < len; t++) store[b].push_back((int)rng.below(vocab));
            prompts.push_back(&store[b]);
            budgets.push_back(first_budget + budget_step * b);
            ids.push_back(b);
        }
    }
};

// gpu_infer's prefill (the teacher's pass) against gpt_infer: all positions, right-padded rows
static void test_infer() {
    GPT<float> m = random_model("3,96,4", 211, 40);
    const int B = 4, T = 17;
    Rng rng(derive_seed(run_seed, ++draws));
    std::vector<int> tokens((size_t)B * T), rows(B), start(B, 0), n_new(B);
    for (auto& t : tokens) t = (int)rng.below(211);
    for (int b = 0; b < B; b++) { rows[b] = b; n_new[b] = T - 3 * b; }
    KVCache<float> cache;
    cache.allocate(m.config, B);
    InferScratch<float> s;
    const int Vp = m.config.padded_vocab_size;
    std::vector<float> logits((size_t)B * T * Vp);
    gpt_infer(m, cache, s, tokens.data(), rows.data(), start.data(), n_new.data(), B, T, logits.data(), true);
    GpuModel gm;
    gpu_upload(gm, m);
    GpuInferScratch gs;
    Dev d_logits(logits.size());
    gpu_infer(gm, nullptr, gs, tokens.data(), rows.data(), start.data(), n_new.data(), B, T, d_logits.p(), true);
    check_real_positions("teacher forward (gpu_infer, all positions, ragged rows)", d_logits.get(), logits, n_new, T, Vp);
}

// greedy decoding with the KV cache: the same tokens as the CPU, row for row
static void test_greedy() {
    // larger embeddings make the logits decisive: an argmax then never hinges on rounding
    GPT<float> m = random_model("2,64,4", 257, 64, 30.0);
    const int B = 6, eos = 256;
    RandomPrompts r(B, 10, 8);
    const auto& prompts = r.prompts;
    const auto& budgets = r.budgets;
    const auto& ids = r.ids;
    Generator gen;
    auto cpu = generate(m, gen, prompts, budgets, 0.0, eos, 1, 2, ids);
    GpuModel gm;
    gpu_upload(gm, m);
    GpuGenerator gg;
    auto gpu = gpu_generate(gm, gg, prompts, budgets, 0.0, eos, 1, 2, ids);
    int same = 0, tokens = 0;
    for (int b = 0; b < B; b++) { same += cpu[b] == gpu[b]; tokens += (int)cpu[b].size(); }
    check(same == B, strf("greedy sampling, KV cache: %d of %d rows token for token (%d tokens)", same, B, tokens));
    // and run twice: the same tokens (no state leaks between calls through the cache)
    auto again = gpu_generate(gm, gg, prompts, budgets, 0.0, eos, 1, 2, ids);
    check(again == gpu, "greedy sampling: a second call gives the same tokens");
}

// gpu_infer extending cached rows by several tokens each (speculative verification):
// a prefill, then 1..4 new tokens per row at different offsets, all positions, against gpt_infer
static void test_cached_extension() {
    GPT<float> m = random_model("2,64,4", 113, 48);
    const int B = 4, P = 9, T = 4;
    Rng rng(derive_seed(run_seed, ++draws));
    std::vector<int> prefill((size_t)B * P), rows(B), start(B, 0), n_prefill(B), ext((size_t)B * T), n_ext(B), at(B);
    for (auto& t : prefill) t = (int)rng.below(113);
    for (auto& t : ext) t = (int)rng.below(113);
    for (int b = 0; b < B; b++) { rows[b] = B - 1 - b; n_prefill[b] = P - 2 * b; n_ext[b] = 1 + b; at[b] = n_prefill[b]; }
    const int Vp = m.config.padded_vocab_size;
    KVCache<float> cache;
    cache.allocate(m.config, B);
    InferScratch<float> s;
    std::vector<float> last((size_t)B * Vp), cpu((size_t)B * T * Vp);
    gpt_infer(m, cache, s, prefill.data(), rows.data(), start.data(), n_prefill.data(), B, P, last.data(), false);
    gpt_infer(m, cache, s, ext.data(), rows.data(), at.data(), n_ext.data(), B, T, cpu.data(), true);
    GpuModel gm;
    gpu_upload(gm, m);
    GpuKVCache gc;
    gc.allocate(m.config, B, P + T);
    GpuInferScratch gs;
    Dev d_last(last.size()), d_logits(cpu.size());
    gpu_infer(gm, &gc, gs, prefill.data(), rows.data(), start.data(), n_prefill.data(), B, P, d_last.p(), false);
    gpu_infer(gm, &gc, gs, ext.data(), rows.data(), at.data(), n_ext.data(), B, T, d_logits.p(), true);
    check_real_positions("cached extension (gpu_infer, 1-4 tokens per row)", d_logits.get(), cpu, n_ext, T, Vp);
}

// speculative sampling on the device against the CPU's: greedy token for token (and equal
// to plain greedy decoding), sampled from the same host generators
static void test_speculative() {
    GPT<float> target = random_model("2,64,4", 257, 64, 30.0), draft = random_model("1,32,2", 257, 48, 30.0);
    const int B = 6, eos = 256;
    RandomPrompts r(B, 10, 4);
    const auto& prompts = r.prompts;
    const auto& budgets = r.budgets;
    const auto& ids = r.ids;
    GpuModel gt, gd;
    gpu_upload(gt, target);
    gpu_upload(gd, draft);
    for (int K : {1, 4}) {
        for (double t : {0.0, 1.0}) {
            Generator cd, ct, plain;
            GpuGenerator dd, dt;
            SpeculativeStats cs, gs;
            auto cpu = speculative_generate(draft, cd, target, ct, prompts, budgets, K, t, eos, 3, 0, ids, cs);
#ifdef GKD_CUDA_EMULATOR
            emu::bytes_to_host() = 0;
#endif
            auto gpu = gpu_speculative_generate(gd, dd, gt, dt, prompts, budgets, K, t, eos, 3, 0, ids, gs);
            int same = 0;
            for (int b = 0; b < B; b++) same += cpu[b] == gpu[b];
#ifdef GKD_CUDA_EMULATOR
            // what came back: ids and a few numbers a verification, never a logit row (V floats)
            const double per_verification = (double)emu::bytes_to_host() / gs.verifications;
            check(per_verification < 257 * sizeof(float),
                  strf("speculative, K = %d, t = %.0f: %.0f bytes from the device a verification (less than one logit "
                       "row, %zu)", K, t, per_verification, 257 * sizeof(float)));
#endif
            if (t == 0.0) {
                auto greedy = generate(target, plain, prompts, budgets, 0.0, eos, 0, 0, ids);
                check(same == B && cpu == greedy,
                      strf("speculative greedy, K = %d: %d of %d rows as the CPU's, which equals plain greedy: %s", K,
                           same, B, cpu == greedy ? "yes" : "no"));
            } else {
                // the same host draws: rows differ only where rounding moves a draw's boundary
                check(same >= B - 1, strf("speculative sampling t = 1, K = %d: %d of %d rows as the CPU's (limit %d); "
                                          "acceptance %.3f vs CPU %.3f", K, same, B, B - 1, gs.acceptance_rate(),
                                          cs.acceptance_rate()));
            }
        }
    }
}

// R Gumbel-max draws from one row of V logits at temperature t: row stride 0, so every
// block of sample_kernel reads the same row; draw r has key derive_seed(run_seed,
// key_stream, r) and draw index `draw`. Returns the ids drawn.
static std::vector<int> draws_from_row(const std::vector<float>& row, int V, double t, int R, uint64_t key_stream,
                                       int draw) {
    std::vector<uint64_t> keys(R);
    for (int r = 0; r < R; r++) keys[r] = derive_seed(run_seed, key_stream, r);
    Dev d_row(row);
    DeviceBuffer<uint64_t> d_keys;
    d_keys.upload(keys);
    DevInt d_draws(std::vector<int>(R, draw));
    DeviceBuffer<int> d_out;
    d_out.ensure(R);
    GPU_LAUNCH(gpu::sample_kernel, R, gpu::THREADS, 0, 0, d_out.ptr, d_row.p(), V, 0, t > 0 ? 1.0 / t : 0.0, d_keys.ptr,
        d_draws.b.ptr, nullptr);
    std::vector<int> out(R);
    download(out.data(), d_out.ptr, R);
    return out;
}

// softmax(row / t) over the first V entries, max subtracted, in double
static std::vector<double> softmax_of(const std::vector<float>& row, int V, double t) {
    const double mx = *std::max_element(row.begin(), row.begin() + V);
    std::vector<double> p(V);
    double z = 0;
    for (int i = 0; i < V; i++) z += p[i] = std::exp((row[i] - mx) / t);
    for (double& x : p) x /= z;
    return p;
}

// the Gumbel-max draw: frequencies against softmax(logits / t); greedy ties to the lowest id
static void test_sampling_distribution() {
    const int V = 12, R = 40000;
    const double t = 0.7;
    std::vector<float> row(V);
    Rng rng(derive_seed(run_seed, ++draws));
    for (int i = 0; i < V; i++) row[i] = (float)(rng.normal() * 1.0);
    std::vector<double> freq(V, 0.0), p = softmax_of(row, V, t);
    bool in_range = true;
    for (int x : draws_from_row(row, V, t, R, 77, 3)) {
        if (x < 0 || x >= V) in_range = false;
        else freq[x] += 1.0 / R;
    }
    double worst = 0;
    for (int i = 0; i < V; i++) worst = worse(worst, std::fabs(freq[i] - p[i]) / std::sqrt(p[i] / R + 1e-12));
    // |f - p| / sd(f): 5 standard deviations of a binomial frequency
    check(in_range && worst < 5.0, strf("Gumbel-max sampling at t = %.1f: %d draws, worst deviation %.2f sd (limit 5)", t, R, worst));

    std::vector<float> ties(V, 0.0f);
    ties[3] = ties[7] = 2.0f;
    const int pick = draws_from_row(ties, V, 0.0, 1, 77, 3)[0];
    check(pick == 3, strf("greedy: a tie goes to the lowest id (picked %d, want 3)", pick));
}

// A trainer on random models and random data, off-policy (dataset completions), so that
// the CPU and the GPU see the same batches: what the full-step tests compare.
// The dataset comes from data_seed: the CPU's and the GPU's trainers of one comparison
// must be given the same one (drawn once), or they train on different examples.
static void make_trainer(Trainer& tr, uint64_t data_seed, const GPT<float>& student, const GPT<float>& teacher,
                         double beta, bool sft, int batch = 4, int completion_min = 3, int completion_spread = 10) {
    tr.student = student;
    tr.has_teacher = !sft;
    if (!sft) tr.teacher = teacher;
    const int V = student.config.vocab_size;
    tr.tok = std::make_unique<SizeOnlyTokenizer>(V);
    TrainOptions& o = tr.opt;
    o.sft = sft;
    o.lambda = 0;
    o.beta = beta;
    o.batch = batch;
    o.steps = 20;
    o.lr = 3e-3;
    o.weight_decay = 0.01;
    o.grad_clip = 1.0;
    o.shuffle = false;
    o.precision = "fp32";  // the parity mode; the bf16 tests ask for bf16
    tr.adam.weight_decay = o.weight_decay;
    Rng rng(data_seed);
    for (int i = 0; i < 8; i++) {
        Example e;
        int P = 2 + (int)rng.below(6), K = completion_min + (int)rng.below(completion_spread);
        for (int t = 0; t < P; t++) e.prompt.push_back((int)rng.below(V - 1));
        for (int t = 0; t < K; t++) e.completion.push_back((int)rng.below(V - 1));
        e.has_completion = true;
        tr.data.examples.push_back(e);
    }
}

// One step on the CPU and on the GPU from the same models and batches (off-policy: both
// read the dataset's completions): the loss, the gradient norm, every parameter tensor's
// gradient, and the parameters after AdamW.
static void compare_step(const std::string& what, const GPT<float>& student, const GPT<float>& teacher, bool sft,
                         bool tf32, int batch = 4, int completion_min = 3, int completion_spread = 10,
                         const std::function<void(TrainOptions&)>& options = nullptr) {
    Trainer cpu, gpu;
    const uint64_t data_seed = derive_seed(run_seed, ++draws);
    make_trainer(cpu, data_seed, student, teacher, 0.5, sft, batch, completion_min, completion_spread);
    make_trainer(gpu, data_seed, student, teacher, 0.5, sft, batch, completion_min, completion_spread);
    if (options) { options(cpu.opt); options(gpu.opt); }
    gpu.opt.device = "cuda";
    gpu.opt.tf32 = tf32;
    create_training_device(gpu);
    StepStats a = gkd_step(cpu, 0), b = gkd_step(gpu, 0);
    const double tol = tf32 ? 3e-2 : 1e-4;
    if (a.on_policy)
        check(b.on_policy && a.forward_reused && b.forward_reused,
              strf("%s: on-policy, both devices' student forward completed from sampling's record", what.c_str()));
    check(std::fabs(a.loss - b.loss) <= tol * std::fabs(a.loss),
          strf("%s: loss %.8g vs CPU %.8g (%d tokens)", what.c_str(), b.loss, a.loss, a.tokens));
    check(std::fabs(a.grad_norm - b.grad_norm) <= tol * a.grad_norm,
          strf("%s: gradient norm %.8g vs CPU %.8g", what.c_str(), b.grad_norm, a.grad_norm));
    std::vector<float> grads(gpu.student.num_parameters);
    download(grads.data(), static_cast<GpuDevice&>(*gpu.device).student.grads_memory.ptr, grads.size());
    size_t offset = 0;
    for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
        size_t n = student.param_sizes[k];
        std::vector<float> g(grads.begin() + offset, grads.begin() + offset + n),
            c(cpu.student.grads_memory.begin() + offset, cpu.student.grads_memory.begin() + offset + n);
        check_close(strf("%s: gradient of %s", what.c_str(), PARAMETER_NAMES[k]), g, c, tol);
        offset += n;
    }
    copy_student_to_host(gpu);
    check_close(strf("%s: parameters after AdamW", what.c_str()), gpu.student.params_memory, cpu.student.params_memory, tol);
}

static void test_full_step(bool sft, bool tf32) {
    GPT<float> student = random_model("2,64,4", 257, 32), teacher = random_model("3,96,4", 257, 32);
    compare_step(sft ? "SFT step" : tf32 ? "GKD step, TF32" : "GKD step, JSD(0.5)", student, teacher, sft, tf32);
}

// A full step for each objective and teacher signal beyond JSD(beta)'s full rows. The
// sampled reverse KL is on-policy: greedy samples (temperature 0), the CPU's tokens on both
// devices, so that both score the same rows.
static void test_full_step_objective(const char* what, Objective objective, int top_k, bool on_policy) {
    GPT<float> student = random_model("2,64,4", 257, 32), teacher = random_model("3,96,4", 257, 32);
    compare_step(what, student, teacher, false, false, 4, 3, 10, [&](TrainOptions& o) {
        o.objective = objective;
        o.teacher_top_k = top_k;
        o.loss_temperature = 1.5;
        o.kl_discount = 0.9;
        if (on_policy) { o.lambda = 1; o.temperature = 0; o.max_new_tokens = 6; }
    });
}

// An on-policy step's matmul work on each device, in FLOPs: the CPU's matmuls with a weight
// (cpu/blas.h's count_matmul: the linear layers and the LM head, forward and backward)
// against the emulated cuBLAS's cublasSgemm_v2 calls, which are the GPU's matmuls with a
// weight (attention's batched products are counted apart, on both sides left out). The
// student's final LayerNorm is set to give the same logits at every position, EOS the
// least likely token: greedy rows then never end before their budget, where the GPU's
// fixed-shape decode keeps computing a finished row (docs/cuda.md).
static void test_on_policy_flops() {
#ifdef GKD_CUDA_EMULATOR
    const int V = 257, C = 64, eos = V - 1;  // SizeOnlyTokenizer's EOS
    GPT<float> student = random_model("2,64,4", V, 48), teacher = random_model("3,96,4", V, 48);
    for (int c = 0; c < C; c++) {
        student.params.lnfw[c] = 0;
        student.params.lnfb[c] = 1;
        student.params.wte[(size_t)eos * C + c] = -10;
    }
    Trainer cpu, gpu;
    const uint64_t data_seed = derive_seed(run_seed, ++draws);
    make_trainer(cpu, data_seed, student, teacher, 0.5, false);
    make_trainer(gpu, data_seed, student, teacher, 0.5, false);
    for (Trainer* t : {&cpu, &gpu}) {
        t->opt.lambda = 1;
        t->opt.temperature = 0;
        t->opt.max_new_tokens = 8;
    }
    gpu.opt.device = "cuda";
    create_training_device(gpu);
    matmul_flops_counted() = 0;
    const StepStats a = gkd_step(cpu, 0);
    const double cpu_flops = (double)matmul_flops_counted();
    emu::matmul_flops() = 0;
    const StepStats b = gkd_step(gpu, 0);
    const double gpu_flops = emu::matmul_flops();
    check(a.on_policy && b.on_policy && a.forward_reused && b.forward_reused,
          "on-policy step: both devices complete the student's forward from sampling's record");
    check(gpu_flops > 0 && gpu_flops <= cpu_flops,
          strf("on-policy step: the GPU's matmul FLOPs %.6g, the CPU's %.6g (GPU/CPU %.4f, at most 1)", gpu_flops,
               cpu_flops, gpu_flops / cpu_flops));
#else
    printf("    (the matmul FLOPs are counted by the emulated cuBLAS: not on a GPU)\n");
#endif
}

// A supervised distillation step on ragged rows (1 to 30 completion tokens): the emulated
// GPU issues exactly the CPU's matmul FLOPs, which are the packed batch's; the same batch
// padded to its longest row (Trainer::pad_batches, the bench's baseline) costs both more.
static void test_packed_flops() {
#ifdef GKD_CUDA_EMULATOR
    GPT<float> student = random_model("2,64,4", 257, 48), teacher = random_model("3,96,4", 257, 48);
    const uint64_t data_seed = derive_seed(run_seed, ++draws);
    double flops[2][2];  // [padded][0: CPU, 1: GPU]
    for (int padded = 0; padded < 2; padded++) {
        Trainer cpu, gpu;
        make_trainer(cpu, data_seed, student, teacher, 0.5, false, 8, 1, 30);
        make_trainer(gpu, data_seed, student, teacher, 0.5, false, 8, 1, 30);
        cpu.pad_batches = gpu.pad_batches = padded;
        gpu.opt.device = "cuda";
        create_training_device(gpu);
        matmul_flops_counted() = 0;
        gkd_step(cpu, 0);
        flops[padded][0] = (double)matmul_flops_counted();
        emu::matmul_flops() = 0;
        gkd_step(gpu, 0);
        flops[padded][1] = emu::matmul_flops();
    }
    check(flops[0][1] == flops[0][0] && flops[1][1] == flops[1][0],
          strf("supervised step on ragged rows: the GPU's matmul FLOPs equal the CPU's, packed (%.6g, %.6g) and padded "
               "(%.6g, %.6g)", flops[0][1], flops[0][0], flops[1][1], flops[1][0]));
    check(flops[0][1] < flops[1][1],
          strf("... packed, %.2f of the padded batch's: the work follows the real tokens", flops[0][1] / flops[1][1]));
#else
    printf("    (the matmul FLOPs are counted by the emulated cuBLAS: not on a GPU)\n");
#endif
}

static void test_trajectory() {
    GPT<float> student = random_model("2,64,4", 257, 32), teacher = random_model("3,96,4", 257, 32);
    Trainer cpu, gpu;
    const uint64_t data_seed = derive_seed(run_seed, ++draws);
    make_trainer(cpu, data_seed, student, teacher, 0.5, false);
    make_trainer(gpu, data_seed, student, teacher, 0.5, false);
    gpu.opt.device = "cuda";
    create_training_device(gpu);
    double worst = 0;
    std::string losses;
    for (int step = 0; step < 20; step++) {
        StepStats a = gkd_step(cpu, step), b = gkd_step(gpu, step);
        worst = worse(worst, std::fabs(a.loss - b.loss) / std::fabs(a.loss));
        if (step % 5 == 4) losses += strf(" %d: %.5f/%.5f", step, b.loss, a.loss);
    }
    check(worst < 1e-3, strf("20-step GKD trajectory: worst loss difference %.2e (limit 1e-3); gpu/cpu%s", worst, losses.c_str()));
    copy_student_to_host(gpu);
    check_close("20-step GKD trajectory: final parameters", gpu.student.params_memory, cpu.student.params_memory, 1e-3);
}

// ----------------------------------------------------------------------------
// gpu_generate's bookkeeping on the device, and GPT-2's widths

// Greedy rows from the GPU against the CPU's. Two random models' argmaxes can hinge on
// rounding: where a row first differs, the GPU's token must be a near tie on the CPU
// (its CPU logit within 1e-4 * max(1, |top|) of the top one), or the row fails.
static void check_greedy_rows(const std::string& what, const GPT<float>& m, const RandomPrompts& r,
                              const std::vector<std::vector<int>>& cpu, const std::vector<std::vector<int>>& gpu) {
    int same = 0, ties = 0, tokens = 0;
    std::string why;
    for (size_t b = 0; b < cpu.size(); b++) {
        tokens += (int)cpu[b].size();
        if (b < gpu.size() && cpu[b] == gpu[b]) { same++; continue; }
        if (b >= gpu.size()) { why += strf(" row %zu missing;", b); continue; }
        size_t k = 0;
        while (k < cpu[b].size() && k < gpu[b].size() && cpu[b][k] == gpu[b][k]) k++;
        if (k == cpu[b].size() || k == gpu[b].size()) {  // one stopped where the other did not, on the same tokens
            why += strf(" row %zu: lengths %zu vs %zu;", b, gpu[b].size(), cpu[b].size());
            continue;
        }
        // the CPU's logits after prompt + the k shared tokens
        std::vector<int> row(*r.prompts[b]);
        row.insert(row.end(), cpu[b].begin(), cpu[b].begin() + k);
        const int T = (int)row.size(), Vp = m.config.padded_vocab_size, cache_row = 0, start = 0;
        KVCache<float> cache;
        cache.allocate(m.config, 1);
        InferScratch<float> scratch;
        std::vector<float> logits(Vp);
        gpt_infer(m, cache, scratch, row.data(), &cache_row, &start, &T, 1, T, logits.data(), false);
        const float top = logits[cpu[b][k]], theirs = logits[gpu[b][k]];
        if (top - theirs <= 1e-4 * std::max(1.0f, std::fabs(top))) {
            ties++;
        } else {
            why += strf(" row %zu token %zu: %d (logit %.6g) vs CPU %d (%.6g);", b, k, gpu[b][k], theirs, cpu[b][k], top);
        }
    }
    check(why.empty(), strf("%s: %d of %zu rows token for token, %d first differ at a near tie (%d tokens)%s", what.c_str(),
                            same, cpu.size(), ties, tokens, why.c_str()));
}

// gpu_generate keeps every row in its slot and its bookkeeping on the device: rows that
// stop at EOS at different steps, budgets below and above FINISHED_CHECK_EVERY; sampled
// rows the same whatever batch they are drawn in, and from one call to the next.
static void test_generate_bookkeeping() {
    GPT<float> m = random_model("2,64,4", 257, 64, 30.0);
    const int B = 6;
    RandomPrompts r(B, 3, 5);  // budgets 3, 8, ..., 28
    Generator gen;
    GpuModel gm;
    gpu_upload(gm, m);
    GpuGenerator gg;
    // an EOS that the rows meet: the second token of row 0's greedy completion
    auto first = generate(m, gen, r.prompts, r.budgets, 0.0, 256, 1, 2, r.ids);
    const int eos = first[0].size() > 1 ? first[0][1] : first[0][0];
    auto cpu = generate(m, gen, r.prompts, r.budgets, 0.0, eos, 1, 2, r.ids);
    auto gpu = gpu_generate(gm, gg, r.prompts, r.budgets, 0.0, eos, 1, 2, r.ids);
    int stopped = 0;
    for (int b = 0; b < B; b++) stopped += (int)cpu[b].size() < r.budgets[b];
    check_greedy_rows(strf("greedy with EOS %d (%d of %d rows stop at it)", eos, stopped, B), m, r, cpu, gpu);
    check(stopped >= 1, strf("the EOS test stops a row early: %d rows", stopped));

    auto sampled = gpu_generate(gm, gg, r.prompts, r.budgets, 1.0, eos, 5, 3, r.ids);
    auto again = gpu_generate(gm, gg, r.prompts, r.budgets, 1.0, eos, 5, 3, r.ids);
    check(again == sampled, "sampling t = 1: a second call draws the same tokens");
    // rows 4 and 1 alone, in that order, with their ids: their draws do not depend on the batch
    std::vector<const std::vector<int>*> two = {r.prompts[4], r.prompts[1]};
    std::vector<int> two_budgets = {r.budgets[4], r.budgets[1]};
    std::vector<uint64_t> two_ids = {r.ids[4], r.ids[1]};
    auto alone = gpu_generate(gm, gg, two, two_budgets, 1.0, eos, 5, 3, two_ids);
    check(alone.size() == 2 && alone[0] == sampled[4] && alone[1] == sampled[1],
          strf("sampling t = 1: rows 4 and 1 drawn alone equal their rows in the batch of %d (%zu and %zu tokens)", B,
               sampled[4].size(), sampled[1].size()));
    size_t within = 0;
    for (int b = 0; b < B; b++) within += sampled[b].size() >= 1 && (int)sampled[b].size() <= r.budgets[b];
    check(within == (size_t)B, strf("sampling t = 1: every row has 1..budget tokens (%zu of %d)", within, B));
}

// decode steps captured as a CUDA graph (GKD_CUDA_GRAPHS=1) against the same steps launched
// one by one: the same kernels in the same order, so the same tokens, greedy and sampled;
// a second call captures anew (its buffers may have moved)
static void test_decode_graph() {
    GPT<float> m = random_model("2,64,4", 257, 64, 30.0);
    RandomPrompts r(6, 10, 5);  // budgets 10..35: several checks of the rows still going
    GpuModel gm;
    gpu_upload(gm, m);
    for (double t : {0.0, 1.0}) {
        GpuGenerator direct, graphed;
        direct.use_graph = false;
        graphed.use_graph = true;
        auto a = gpu_generate(gm, direct, r.prompts, r.budgets, t, 256, 7, 1, r.ids);
        auto b = gpu_generate(gm, graphed, r.prompts, r.budgets, t, 256, 7, 1, r.ids);
        auto c = gpu_generate(gm, graphed, r.prompts, r.budgets, t, 256, 7, 1, r.ids);
        size_t tokens = 0;
        for (auto& row : a) tokens += row.size();
        check(a == b && b == c, strf("decode steps as a CUDA graph, t = %.0f: the tokens of one-by-one launches (%zu "
                                     "tokens), twice", t, tokens));
        check(!graphed.graph_failed, strf("decode steps as a CUDA graph, t = %.0f: captured (no fallback to plain "
                                          "launches)", t));
    }
}

// C = 768, NH = 12 (head size 64), V = 50257: greedy decoding past 128 positions (the
// cached attention's block of 128 threads loops), against the CPU
static void test_gpt2_greedy() {
    GPT<float> m = random_model("2,768,12", 50257, 160, 30.0);
    RandomPrompts r(EMULATED ? 1 : 3, 140, 4, 50257);  // budgets 140, 144, 148 after prompts of <= 12 tokens
    Generator gen;
    auto cpu = generate(m, gen, r.prompts, r.budgets, 0.0, 50256, 1, 2, r.ids);
    GpuModel gm;
    gpu_upload(gm, m);
    GpuGenerator gg;
    auto gpu = gpu_generate(gm, gg, r.prompts, r.budgets, 0.0, 50256, 1, 2, r.ids);
    check_greedy_rows("GPT-2 width (2,768,12, V 50257): greedy decoding to 160 positions", m, r, cpu, gpu);
}

// one GKD step at GPT-2's widths, about 130 positions a row (the causal softmax's rows run
// past 32 lanes), fp32: loss, every parameter tensor's gradient, AdamW
static void test_gpt2_step() {
    GPT<float> student = random_model("2,768,12", 50257, 160), teacher = random_model("1,768,12", 50257, 160);
    compare_step(EMULATED ? "GPT-2 width GKD step (B 1, ~130 positions)" : "GPT-2 width GKD step (B 2, ~130 positions)",
                 student, teacher, false, false, EMULATED ? 1 : 2, 118, 8);
}

// the Gumbel-max draw at V = 50257: each thread strides through ~196 ids. One row of
// logits (row stride 0: every block reads it), six ids boosted across the vocabulary;
// frequencies of those six and of the rest by quarter of the ids, against softmax(logits / t)
static void test_sampling_distribution_gpt2() {
    const int V = 50257, R = EMULATED ? 6000 : 200000;
    const double t = 0.9;
    std::vector<float> row(V);
    Rng rng(derive_seed(run_seed, ++draws));
    for (auto& x : row) x = (float)rng.normal();
    const int boosted[] = {0, 31, 4097, 25000, 50000, 50256};
    for (int id : boosted) row[id] += 8.0f;
    auto bucket = [&](int id) {
        for (int k = 0; k < 6; k++)
            if (boosted[k] == id) return k;
        return 6 + (int)((int64_t)id * 4 / V);
    };
    std::vector<double> freq(10, 0.0), p(10, 0.0);
    bool in_range = true;
    for (int x : draws_from_row(row, V, t, R, 78, 0)) {
        if (x < 0 || x >= V) in_range = false;
        else freq[bucket(x)] += 1.0 / R;
    }
    const std::vector<double> q = softmax_of(row, V, t);
    for (int i = 0; i < V; i++) p[bucket(i)] += q[i];
    double worst = 0;
    for (int k = 0; k < 10; k++) worst = worse(worst, std::fabs(freq[k] - p[k]) / std::sqrt(p[k] * (1 - p[k]) / R));
    check(in_range && worst < 5.0, strf("Gumbel-max sampling at V = %d, t = %.1f: %d draws, 10 buckets, worst deviation "
                                        "%.2f sd (limit 5)", V, t, R, worst));
}

// One test: an error (a CUDA fault, a refusal) fails it by name; the next test still runs.
// GKD_GPU_TEST_SKIP=TEXT leaves out the tests whose names contain TEXT (gpu_check.sh's
// memcheck stage skips "GPT-2 width", too slow under the sanitizer); GKD_GPU_TEST_ONLY=TEXT
// runs only those (a kernel under development, on the emulator); the summary counts the rest.
// ----------------------------------------------------------------------------
// bf16 (--precision bf16): the conversions bit for bit, then each kernel, a step, a
// trajectory and greedy decoding against fp32. Every limit is explained in docs/testing.md.

static uint16_t bits_of(bf16 h) {
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
// The nearest bf16 to x, found independently of the bit trick: the two bf16 values around
// x (its bits truncated toward zero, and the next magnitude up, infinity past the largest
// finite one, counted as 2^128) compared in exact double arithmetic, a tie to the even
// one. NaN: the canonical quiet NaN 0x7FFF, as the hardware's conversion gives.
static uint16_t reference_bf16(float x) {
    if (std::isnan(x)) return 0x7FFF;
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t lo = u & 0xFFFF0000u;
    if (lo == u) return (uint16_t)(lo >> 16);
    const uint32_t hi = lo + 0x10000u;
    auto magnitude = [](uint32_t b) {
        b &= 0x7FFFFFFFu;
        if (b == 0x7F800000u) return std::ldexp(1.0, 128);
        float f;
        memcpy(&f, &b, 4);
        return (double)f;
    };
    const double ax = std::fabs((double)x), below = ax - magnitude(lo), above = magnitude(hi) - ax;
    const uint32_t pick = below < above ? lo : above < below ? hi : (lo & 0x10000u) ? hi : lo;
    return (uint16_t)(pick >> 16);
}
// bf16 bits widened by their definition: sign, 8-bit exponent, 7-bit mantissa
static double reference_widen(uint16_t h) {
    const int sign = h >> 15, e = (h >> 7) & 0xFF, m = h & 0x7F;
    double v = e == 0 ? std::ldexp((double)m, -133) : e == 255 ? (m ? NAN : INFINITY) : std::ldexp(1.0 + m / 128.0, e - 127);
    return sign ? -v : v;
}

static void test_bf16_conversion() {
    // the sweep: every float whose low 16 bits are a rounding boundary or next to one (ties,
    // just below and above, all 65536 high halves: every exponent, subnormals, infinities,
    // NaNs), and every 4099th float besides
    std::vector<float> xs;
    for (uint32_t high = 0; high < 65536; high++)
        for (uint32_t low : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
            const uint32_t u = high << 16 | low;
            float f;
            memcpy(&f, &u, 4);
            xs.push_back(f);
        }
    for (uint64_t u = 0; u < (1ull << 32); u += 4099) {
        const uint32_t v = (uint32_t)u;
        float f;
        memcpy(&f, &v, 4);
        xs.push_back(f);
    }
    size_t host_wrong = 0, nans = 0, infs = 0, subnormals = 0;
    std::string first;
    for (float x : xs) {
        const uint16_t got = bits_of(__float2bfloat16(x)), want = reference_bf16(x);
        if (got != want && host_wrong++ == 0) first = strf(" (first: %a -> 0x%04x, want 0x%04x)", x, got, want);
        nans += std::isnan(x);
        infs += std::isinf(x) || ((want & 0x7FFF) == 0x7F80 && !std::isinf(x));
        subnormals += std::fpclassify(x) == FP_SUBNORMAL;
    }
    check(host_wrong == 0, strf("bf16 rounding (host): %zu floats (%zu NaN, %zu subnormal, %zu infinite or rounding "
                                "to infinity), %zu differ from the reference%s", xs.size(), nans, subnormals, infs,
                                host_wrong, first.c_str()));
    // the same floats through a device kernel (the working-copy refresh's conversion)
    DeviceBuffer<float> d_in;
    DeviceBuffer<bf16> d_out;
    d_in.upload(xs);
    d_out.ensure(xs.size());
    GPU_LAUNCH(gpu::narrow_kernel<bf16>, gpu::blocks_for(xs.size()), gpu::THREADS, 0, gpu::stream(), d_out.ptr,
               (const float*)d_in.ptr, xs.size());
    std::vector<bf16> out(xs.size());
    download(out.data(), d_out.ptr, out.size());
    size_t device_wrong = 0;
    for (size_t i = 0; i < xs.size(); i++) device_wrong += bits_of(out[i]) != reference_bf16(xs[i]);
    check(device_wrong == 0, strf("bf16 rounding (device kernel): %zu floats, %zu differ from the reference",
                                  xs.size(), device_wrong));
    size_t widen_wrong = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        bf16 b;
        const uint16_t h16 = (uint16_t)h;
        memcpy(&b, &h16, 2);
        const double want = reference_widen(h16), got = __bfloat162float(b);
        widen_wrong += std::isnan(want) ? !std::isnan(got) : got != want;
    }
    check(widen_wrong == 0, strf("bf16 widening: all 65536 bf16 values exact (%zu differ)", widen_wrong));
}

// host floats as bf16 on the device, or n poisoned (NaN) values; get() widens them back
struct DevBf16 {
    DeviceBuffer<bf16> b;
    explicit DevBf16(const std::vector<float>& v) {
        std::vector<bf16> h(v.size());
        for (size_t i = 0; i < v.size(); i++) h[i] = __float2bfloat16(v[i]);
        b.upload(h);
    }
    explicit DevBf16(size_t n) {
        b.ensure(n);
        CUDA_CHECK(cudaMemset(b.ptr, 0xFF, n * sizeof(bf16)));
    }
    bf16* p() { return b.ptr; }
    std::vector<float> get() {
        std::vector<bf16> h(b.count);
        CUDA_CHECK(cudaDeviceSynchronize());
        download(h.data(), b.ptr, b.count);
        std::vector<float> v(h.size());
        for (size_t i = 0; i < h.size(); i++) v[i] = __bfloat162float(h[i]);
        return v;
    }
};
// floats that are bf16 values: both precisions' kernels then start from the same inputs
static std::vector<float> bf16_values(size_t n, double std = 1.0) {
    std::vector<float> v = random_floats(n, std);
    for (auto& x : v) x = __bfloat162float(__float2bfloat16(x));
    return v;
}
// The limits (docs/testing.md): a value stored once in bf16 is within 2^-9 of itself
// relatively, so an output rounded once is within 2^-9 ~ 2.0e-3 in norm; ONE_ROUNDING
// allows 2^-8. A kernel that stores an intermediate in bf16 and computes on from it (the
// attention's scores and probabilities, a gradient accumulated onto a bf16 value) gets
// SEVERAL_ROUNDINGS, 2^-6. An fp32 output from bf16 inputs that both kernels see alike
// (the LM head's logits, the weight gradients) differs by summation order only: 1e-5.
constexpr double ONE_ROUNDING = 1.0 / 256, SEVERAL_ROUNDINGS = 1.0 / 64, SAME_INPUTS = 1e-5;

static void test_bf16_kernels() {
    const int B = 2, T = 13, C = 64, NH = 4, N = B * T, V = 40, OC = 3 * C;
    auto close = [](const std::string& what, const std::vector<float>& b16, const std::vector<float>& f32, double tol) {
        check_close("bf16 " + what, b16, f32, tol);
    };
    {  // encoder
        auto wte = bf16_values((size_t)V * C), wpe = bf16_values((size_t)T * C);
        std::vector<int> tokens(N);
        Rng rng(derive_seed(run_seed, ++draws));
        for (auto& t : tokens) t = (int)rng.below(V);
        DevInt d_tok(tokens);
        Dev f_out((size_t)N * C), f_wte(wte), f_wpe(wpe);
        DevBf16 h_out((size_t)N * C), h_wte(wte), h_wpe(wpe);
        gpu::encoder_forward(f_out.p(), d_tok.b.ptr, f_wte.p(), f_wpe.p(), B, T, C);
        gpu::encoder_forward(h_out.p(), d_tok.b.ptr, h_wte.p(), h_wpe.p(), B, T, C);
        close("encoder forward", h_out.get(), f_out.get(), ONE_ROUNDING);
    }
    auto x = bf16_values((size_t)N * C, 3.0), w = bf16_values(C), bias = bf16_values(C), dout = bf16_values((size_t)N * C);
    {  // layernorm
        Dev f_out((size_t)N * C), f_mean((size_t)N), f_rstd((size_t)N), f_x(x), f_w(w), f_b(bias);
        DevBf16 h_out((size_t)N * C), h_x(x), h_w(w), h_b(bias);
        Dev h_mean((size_t)N), h_rstd((size_t)N);
        gpu::layernorm_forward(f_out.p(), f_mean.p(), f_rstd.p(), f_x.p(), f_w.p(), f_b.p(), N, C);
        gpu::layernorm_forward(h_out.p(), h_mean.p(), h_rstd.p(), h_x.p(), h_w.p(), h_b.p(), N, C);
        close("layernorm forward", h_out.get(), f_out.get(), ONE_ROUNDING);
        close("layernorm forward: mean (fp32)", h_mean.get(), f_mean.get(), SAME_INPUTS);
        close("layernorm forward: rstd (fp32)", h_rstd.get(), f_rstd.get(), SAME_INPUTS);
        auto dx = bf16_values((size_t)N * C);
        Dev f_dx(dx), f_dw((size_t)C), f_db((size_t)C), f_dout(dout), fs(gpu::column_scratch_size(N, C));
        DevBf16 h_dx(dx), h_dout(dout);
        Dev h_dw((size_t)C), h_db((size_t)C), hs(gpu::column_scratch_size(N, C));
        CUDA_CHECK(cudaMemset(f_dw.p(), 0, C * 4)); CUDA_CHECK(cudaMemset(f_db.p(), 0, C * 4));
        CUDA_CHECK(cudaMemset(h_dw.p(), 0, C * 4)); CUDA_CHECK(cudaMemset(h_db.p(), 0, C * 4));
        gpu::layernorm_backward(f_dx.p(), f_dw.p(), f_db.p(), f_dout.p(), f_x.p(), f_w.p(), f_mean.p(), f_rstd.p(), N, C, fs.p());
        gpu::layernorm_backward(h_dx.p(), h_dw.p(), h_db.p(), h_dout.p(), h_x.p(), h_w.p(), h_mean.p(), h_rstd.p(), N, C, hs.p());
        close("layernorm backward: dinp (added to a bf16 gradient)", h_dx.get(), f_dx.get(), ONE_ROUNDING);
        close("layernorm backward: dweight (fp32)", h_dw.get(), f_dw.get(), SAME_INPUTS);
        close("layernorm backward: dbias (fp32)", h_db.get(), f_db.get(), SAME_INPUTS);
    }
    {  // matmul, and the LM head's fp32 logits
        auto wm = bf16_values((size_t)OC * C), bm = bf16_values(OC), dy = bf16_values((size_t)N * OC);
        Dev f_out((size_t)N * OC), f_x(x), f_w(wm), f_b(bm);
        DevBf16 h_out((size_t)N * OC), h_x(x), h_w(wm), h_b(bm);
        gpu::matmul_forward(f_out.p(), f_x.p(), f_w.p(), f_b.p(), N, C, OC, OC);
        gpu::matmul_forward(h_out.p(), h_x.p(), h_w.p(), h_b.p(), N, C, OC, OC);
        close("matmul forward (bias: rounded twice)", h_out.get(), f_out.get(), SEVERAL_ROUNDINGS);
        Dev f_logits((size_t)N * OC), h_logits((size_t)N * OC);
        gpu::matmul_forward(f_logits.p(), f_x.p(), f_w.p(), (const float*)nullptr, N, C, OC, OC);
        gpu::matmul_forward(h_logits.p(), h_x.p(), h_w.p(), (const bf16*)nullptr, N, C, OC, OC);
        close("LM head: bf16 operands, fp32 logits", h_logits.get(), f_logits.get(), SAME_INPUTS);
        auto dx = bf16_values((size_t)N * C);
        Dev f_dx(dx), f_dw((size_t)OC * C), f_db((size_t)OC), f_dy(dy), fs(gpu::column_scratch_size(N, OC));
        DevBf16 h_dx(dx), h_dy(dy);
        Dev h_dw((size_t)OC * C), h_db((size_t)OC), hs(gpu::column_scratch_size(N, OC));
        for (Dev* d : {&f_dw, &f_db, &h_dw, &h_db}) CUDA_CHECK(cudaMemset(d->p(), 0, d->b.count * 4));
        gpu::matmul_backward(f_dx.p(), f_dw.p(), f_db.p(), f_dy.p(), f_x.p(), f_w.p(), N, C, OC, OC, fs.p());
        gpu::matmul_backward(h_dx.p(), h_dw.p(), h_db.p(), h_dy.p(), h_x.p(), h_w.p(), N, C, OC, OC, hs.p());
        close("matmul backward: dinp (added to a bf16 gradient)", h_dx.get(), f_dx.get(), ONE_ROUNDING);
        close("matmul backward: dweight (fp32)", h_dw.get(), f_dw.get(), SAME_INPUTS);
        close("matmul backward: dbias (fp32)", h_db.get(), f_db.get(), SAME_INPUTS);
    }
    {  // attention
        auto qkv = bf16_values((size_t)N * 3 * C);
        Dev f_out((size_t)N * C), f_att((size_t)B * NH * T * T), f_qkv(qkv), fs(gpu::attention_scratch_size(B, T, C, NH));
        DevBf16 h_out((size_t)N * C), h_att((size_t)B * NH * T * T), h_qkv(qkv), hs(gpu::attention_scratch_size(B, T, C, NH));
        gpu::attention_forward(f_out.p(), f_att.p(), f_qkv.p(), fs.p(), B, T, C, NH);
        gpu::attention_forward(h_out.p(), h_att.p(), h_qkv.p(), hs.p(), B, T, C, NH);
        close("attention forward: softmax weights", h_att.get(), f_att.get(), SEVERAL_ROUNDINGS);
        close("attention forward: out", h_out.get(), f_out.get(), SEVERAL_ROUNDINGS);
        auto dq = bf16_values(qkv.size());
        Dev f_dqkv(dq), f_dout(dout);
        DevBf16 h_dqkv(dq), h_dout(dout);
        gpu::attention_backward(f_dqkv.p(), f_dout.p(), f_qkv.p(), f_att.p(), fs.p(), B, T, C, NH);
        gpu::attention_backward(h_dqkv.p(), h_dout.p(), h_qkv.p(), h_att.p(), hs.p(), B, T, C, NH);
        close("attention backward: dqkv", h_dqkv.get(), f_dqkv.get(), SEVERAL_ROUNDINGS);
    }
    {  // GELU and the residual
        auto a = bf16_values((size_t)N * C, 2.0), b = bf16_values((size_t)N * C), da = bf16_values((size_t)N * C);
        Dev f_y((size_t)N * C), f_a(a), f_b(b), f_da(da), f_dy(dout);
        DevBf16 h_y((size_t)N * C), h_a(a), h_b(b), h_da(da), h_dy(dout);
        gpu::gelu_forward(f_y.p(), f_a.p(), (size_t)N * C);
        gpu::gelu_forward(h_y.p(), h_a.p(), (size_t)N * C);
        close("GELU forward", h_y.get(), f_y.get(), ONE_ROUNDING);
        gpu::gelu_backward(f_da.p(), f_a.p(), f_dy.p(), (size_t)N * C);
        gpu::gelu_backward(h_da.p(), h_a.p(), h_dy.p(), (size_t)N * C);
        close("GELU backward (added to a bf16 gradient)", h_da.get(), f_da.get(), ONE_ROUNDING);
        gpu::residual_forward(f_y.p(), f_a.p(), f_b.p(), (size_t)N * C);
        gpu::residual_forward(h_y.p(), h_a.p(), h_b.p(), (size_t)N * C);
        close("residual forward", h_y.get(), f_y.get(), ONE_ROUNDING);
    }
    {  // the logits' gradient narrowed in place: each value rounded as __float2bfloat16 rounds it
        const int rows = 5, Vp = 300;
        auto g = random_floats((size_t)rows * Vp);
        Dev d(g);
        const bf16* narrowed;
        int ld = 0;
        narrowed = gpu::narrow_logits_gradient<bf16>(d.p(), rows, Vp, &ld);
        std::vector<bf16> back((size_t)rows * ld);
        CUDA_CHECK(cudaDeviceSynchronize());
        download(back.data(), narrowed, back.size());
        size_t wrong = 0;
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < Vp; i++) wrong += bits_of(back[(size_t)r * ld + i]) != reference_bf16(g[(size_t)r * Vp + i]);
        check(ld == 2 * Vp && wrong == 0, strf("bf16 logits' gradient narrowed in place: row stride %d (want %d), %zu of "
                                               "%d values differ from the reference rounding", ld, 2 * Vp, wrong, rows * Vp));
    }
}

// cosine similarity and norm ratio of two gradients
static void gradient_agreement(const float* a, const float* b, size_t n, double& cosine, double& ratio) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
    cosine = aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
    ratio = bb > 0 ? std::sqrt(aa / bb) : (aa == 0 ? 1.0 : INFINITY);
    if (!std::isfinite(cosine)) cosine = -1;
}

// One step in bf16 on the GPU against the CPU's fp32, from the same models and batches: the
// loss, and each parameter tensor's gradient by cosine similarity and relative norm.
constexpr double BF16_LOSS = 2e-3, BF16_COSINE = 0.99, BF16_NORM = 5e-2;
static void compare_step_bf16(const std::string& what, bool sft, const std::function<void(TrainOptions&)>& options) {
    GPT<float> student = random_model("2,64,4", 257, 32), teacher = random_model("3,96,4", 257, 32, 4.0);
    Trainer cpu, gpu;
    const uint64_t data_seed = derive_seed(run_seed, ++draws);
    make_trainer(cpu, data_seed, student, teacher, 0.5, sft);
    make_trainer(gpu, data_seed, student, teacher, 0.5, sft);
    if (options) { options(cpu.opt); options(gpu.opt); }
    gpu.opt.device = "cuda";
    gpu.opt.precision = "bf16";
    create_training_device(gpu);
    auto* dev = dynamic_cast<GpuDeviceOf<bf16>*>(gpu.device.get());
    check(dev != nullptr, what + ": --precision bf16 makes a bf16 device");
    if (!dev) return;
    StepStats a = gkd_step(cpu, 0), b = gkd_step(gpu, 0);
    check(a.tokens == b.tokens, strf("%s: the same rows (%d target tokens, CPU %d)", what.c_str(), b.tokens, a.tokens));
    const double loss_diff = std::fabs(a.loss - b.loss) / std::max(std::fabs(a.loss), 1e-30);
    check(loss_diff <= BF16_LOSS, strf("%s: loss %.6g vs CPU fp32 %.6g: rel %.2e (limit %.0e)", what.c_str(), b.loss,
                                       a.loss, loss_diff, BF16_LOSS));
    std::vector<float> grads(gpu.student.num_parameters);
    download(grads.data(), dev->student.grads_memory.ptr, grads.size());
    double worst_cos = 2, worst_norm = 0;
    std::string cos_at, norm_at;
    size_t offset = 0;
    for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
        const size_t n = student.param_sizes[k];
        double cosine, ratio;
        gradient_agreement(grads.data() + offset, cpu.student.grads_memory.data() + offset, n, cosine, ratio);
        if (cosine < worst_cos) { worst_cos = cosine; cos_at = PARAMETER_NAMES[k]; }
        if (worse(worst_norm, std::fabs(ratio - 1)) > worst_norm) { worst_norm = worse(worst_norm, std::fabs(ratio - 1)); norm_at = PARAMETER_NAMES[k]; }
        offset += n;
    }
    check(worst_cos >= BF16_COSINE, strf("%s: every tensor's gradient, cosine with the CPU's >= %.2f: worst %.5f (%s)",
                                         what.c_str(), BF16_COSINE, worst_cos, cos_at.c_str()));
    check(worst_norm <= BF16_NORM, strf("%s: every tensor's gradient norm within %.0f%% of the CPU's: worst %.2f%% (%s)",
                                        what.c_str(), 100 * BF16_NORM, 100 * worst_norm, norm_at.c_str()));
}

static void test_bf16_steps() {
    auto objective = [](Objective o, double beta, int top_k, bool on_policy) {
        return [=](TrainOptions& t) {
            t.objective = o;
            t.beta = beta;
            t.teacher_top_k = top_k;
            t.kl_discount = 0.9;
            if (on_policy) { t.lambda = 1; t.temperature = 0; t.max_new_tokens = 6; }
        };
    };
    compare_step_bf16("bf16 SFT step", true, nullptr);
    compare_step_bf16("bf16 supervised step, JSD(0.5)", false, objective(Objective::Jsd, 0.5, 0, false));
    compare_step_bf16("bf16 supervised step, forward KL", false, objective(Objective::Jsd, 0.0, 0, false));
    compare_step_bf16("bf16 supervised step, reverse KL", false, objective(Objective::Jsd, 1.0, 0, false));
    compare_step_bf16("bf16 supervised step, TV", false, objective(Objective::TotalVariation, 0, 0, false));
    compare_step_bf16("bf16 supervised step, top-8 JSD(0.5)", false, objective(Objective::Jsd, 0.5, 8, false));
    compare_step_bf16("bf16 on-policy step, JSD(0.5)", false, objective(Objective::Jsd, 0.5, 0, true));
    compare_step_bf16("bf16 on-policy step, TV", false, objective(Objective::TotalVariation, 0, 0, true));
    compare_step_bf16("bf16 on-policy step, sampled reverse KL", false, objective(Objective::SampledReverseKl, 0, 0, true));
}

// A few hundred supervised GKD steps in bf16 (GPU) and fp32 (CPU) from the same models and
// batches: the loss curves, averaged over windows of 20 steps, stay within BF16_BAND of each
// other, both fall, and every loss is finite. Then greedy decoding from the trained model:
// bf16 against fp32 on the GPU, position by position.
constexpr int BF16_STEPS = 200, BF16_WINDOW = 20;
constexpr double BF16_BAND = 5e-2, BF16_GREEDY = 0.75;
static void test_bf16_trajectory() {
    GPT<float> student = random_model("1,32,2", 257, 32), teacher = random_model("1,64,4", 257, 32, 4.0);
    Trainer cpu, gpu;
    const uint64_t data_seed = derive_seed(run_seed, ++draws);
    make_trainer(cpu, data_seed, student, teacher, 0.5, false);
    make_trainer(gpu, data_seed, student, teacher, 0.5, false);
    for (Trainer* t : {&cpu, &gpu}) t->opt.steps = BF16_STEPS;
    gpu.opt.device = "cuda";
    gpu.opt.precision = "bf16";
    create_training_device(gpu);
    std::vector<double> lc, lg;
    bool finite = true;
    for (int step = 0; step < BF16_STEPS; step++) {
        lc.push_back(gkd_step(cpu, step).loss);
        lg.push_back(gkd_step(gpu, step).loss);
        finite = finite && std::isfinite(lc.back()) && std::isfinite(lg.back());
    }
    double worst = 0;
    std::string curve;
    std::vector<double> wc, wg;
    for (int w = 0; w + BF16_WINDOW <= BF16_STEPS; w += BF16_WINDOW) {
        double c = 0, g = 0;
        for (int i = w; i < w + BF16_WINDOW; i++) { c += lc[i] / BF16_WINDOW; g += lg[i] / BF16_WINDOW; }
        wc.push_back(c);
        wg.push_back(g);
        worst = worse(worst, std::fabs(g - c) / c);
        if (w % (BF16_WINDOW * 3) == 0) curve += strf(" %d-%d: %.4f/%.4f", w, w + BF16_WINDOW - 1, g, c);
    }
    check(finite && worst <= BF16_BAND,
          strf("bf16 %d-step supervised GKD: mean loss per %d steps within %.0f%% of fp32's: worst %.2f%%; bf16/fp32%s",
               BF16_STEPS, BF16_WINDOW, 100 * BF16_BAND, 100 * worst, curve.c_str()));
    check(finite && wc.back() < 0.8 * wc.front() && wg.back() < 0.8 * wg.front(),
          strf("bf16 %d-step supervised GKD: neither diverges, both learn: last window's mean loss %.4f (bf16), %.4f "
               "(fp32), first %.4f, %.4f", BF16_STEPS, wg.back(), wc.back(), wg.front(), wc.front()));
    // greedy decoding from the fp32-trained model, in each precision on the GPU
    RandomPrompts r(16, 16, 0, 256);
    std::vector<std::vector<int>> rows[2];
    for (int k = 0; k < 2; k++) {
        std::unique_ptr<Device> d = k ? std::unique_ptr<Device>(new GpuDeviceOf<bf16>(cpu.student, nullptr))
                                      : std::unique_ptr<Device>(new GpuDeviceOf<float>(cpu.student, nullptr));
        rows[k] = d->generate(Role::Student, r.prompts, r.budgets, 0.0, 256, 1, 0, r.ids);
    }
    int same = 0, total = 0, whole = 0;
    for (size_t b = 0; b < rows[0].size(); b++) {
        whole += rows[0][b] == rows[1][b];
        for (size_t t = 0; t < rows[0][b].size(); t++, total++) same += t < rows[1][b].size() && rows[1][b][t] == rows[0][b][t];
    }
    check(total > 0 && same >= BF16_GREEDY * total,
          strf("bf16 greedy decoding of the trained model: %d of %d positions as fp32's (%.1f%%, limit %.0f%%), %d of "
               "%zu rows whole", same, total, 100.0 * same / std::max(total, 1), 100 * BF16_GREEDY, whole, rows[0].size()));
}

// bench's memory table (cli/gpu_memory.h), computed from the shapes, against what a
// bench step really allocated on the device (DeviceBuffer's tally, the cuBLAS workspace
// apart), in each precision: the table may leave out only the small per-position arrays
// (tokens, targets, the loss's buffers), BF16_TABLE_SLACK of the total.
constexpr double BF16_TABLE_SLACK = 0.01;
static void test_memory_table() {
    const int B = 3, P = 6, K = 5;
    for (const char* precision : {"fp32", "bf16"}) {
        Trainer tr;
        GPT<float> student = bench_model("2,64,4", 257, 32, derive_seed(run_seed, ++draws), "student");
        GPT<float> teacher = bench_model("2,96,4", 257, 32, derive_seed(run_seed, ++draws), "teacher");
        // EOS never sampled: every row runs to its budget, the table's shapes
        for (int c = 0; c < 64; c++) student.params.wte[(size_t)256 * 64 + c] = -10;
        benchmark_trainer(tr, std::move(student), std::move(teacher), false, B, P, K, 0.5, 2);
        tr.opt.device = "cuda";
        tr.opt.precision = precision;
        GpuContext& g = gpu_context();
        const size_t before = g.bytes_now;
        g.bytes_peak = before;
        create_training_device(tr);
        for (int step = 0; step < 2; step++) gkd_step(tr, step);
        const double measured = (double)(g.bytes_peak - before);
        const bool bf16_run = std::string(precision) == "bf16";
        const double table = memory_total(gpu_step_memory(tr.student.config, &tr.teacher.config, B, P, K, 0), bf16_run);
        check(measured >= table && measured <= table * (1 + BF16_TABLE_SLACK),
              strf("memory table, %s: a step allocated %.0f bytes, the table says %.0f (%.2f%% more allocated; limit "
                   "0 to %.0f%%)", precision, measured, table, 100 * (measured / table - 1), 100 * BF16_TABLE_SLACK));
        tr.device.reset();
    }
}

static int skipped = 0;
template <typename F>
static void run_test(const char* name, F test) {
    const char* skip = getenv("GKD_GPU_TEST_SKIP");
    const char* only = getenv("GKD_GPU_TEST_ONLY");
    if ((skip && *skip && strstr(name, skip)) || (only && *only && !strstr(name, only))) {
        printf("--- %s: skipped (GKD_GPU_TEST_SKIP or _ONLY)\n", name);
        skipped++;
        return;
    }
    printf("--- %s\n", name);
    fflush(stdout);
    const double t0 = now_seconds();
    try {
        // each test starts clean: no error left by the last one, fp32 matmuls (not TF32)
        cudaGetLastError();
        gpu_init(false);
        test();
        CUDA_CHECK(cudaDeviceSynchronize());  // an asynchronous fault belongs to this test
    } catch (const GkdError& err) {
        check(false, strf("%s: error: %s", name, err.what()));
    }
    printf("    (%.2f s, CPU reference included)\n", now_seconds() - t0);  // what each test costs of a short GPU lease
}

int main() {
    const char* require = getenv("GKD_REQUIRE_GPU");
    const bool required = require && std::string(require) == "1";
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        printf("test-gpu: no CUDA GPU visible (%s): nothing was checked\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "no device");
        if (required) {
            printf("test-gpu: GKD_REQUIRE_GPU=1 and no usable GPU: failing\n0 passed, 1 failed\n");
            return 1;
        }
        return 0;
    }
    run_seed = std::random_device()();
    try {
        gpu_init(false);
    } catch (const GkdError& err) {
        check(false, strf("the GPU could not be set up: %s", err.what()));
        printf("%d passed, %d failed\n", passed, failed);
        return 1;
    }
    const double started = now_seconds();
    printf("test-gpu on %s (sm_%d%d), inputs from seed %llu\n", gpu_context().prop.name, gpu_context().prop.major,
           gpu_context().prop.minor, (unsigned long long)run_seed);
    run_test("encoder", [] { test_encoder(); });
    run_test("layernorm", [] { test_layernorm(); });
    run_test("matmul (bias, dense output)", [] { test_matmul(true, 0); });
    run_test("matmul (no bias, strided output)", [] { test_matmul(false, 28); });
    run_test("attention", [] { test_attention(2, 11, 48, 3); });
    run_test("GPT-2 width: attention, T = 70, head size 64", [] { test_attention(2, 70, 768, 12); });
    run_test("GELU and residual", [] { test_elementwise(); });
    run_test("loss: forward KL", [] { test_loss("forward KL", false, 0.0, 1.0, LossNorm::Sequence, false); });
    run_test("loss: reverse KL", [] { test_loss("reverse KL", false, 1.0, 1.0, LossNorm::Sequence, false); });
    run_test("loss: JSD(0.3), tau 2", [] { test_loss("JSD(0.3), tau 2", false, 0.3, 2.0, LossNorm::Token, false); });
    run_test("loss: cross-entropy", [] { test_loss("cross-entropy", true, 0.0, 1.0, LossNorm::Sequence, false); });
    run_test("loss: JSD(0.5) + REINFORCE", [] { test_loss("JSD(0.5) + REINFORCE", false, 0.5, 1.0, LossNorm::Sequence, true); });
    run_test("GPT-2 width: loss at V = 50257, JSD(0.5), tau 2", [] {
        test_loss("JSD(0.5), tau 2, V 50257", false, 0.5, 2.0, LossNorm::Token, false, 50257, 50304, 50304);
    });
    run_test("GPT-2 width: loss at V = 50257, reverse KL + REINFORCE", [] {
        test_loss("reverse KL + REINFORCE, V 50257", false, 1.0, 1.0, LossNorm::Sequence, true, 50257, 50304, 50304);
    });
    run_test("loss: total variation", [] { test_spec_loss("TV, tau 2", spec_of(Objective::TotalVariation, 0, 2.0, 0), false); });
    run_test("loss: total variation + REINFORCE", [] {
        test_spec_loss("TV + REINFORCE", spec_of(Objective::TotalVariation, 0, 1.0, 0, 0, LossNorm::Token), true);
    });
    run_test("loss: top-8, JSD(0.5), tau 2", [] { test_spec_loss("top-8 JSD(0.5), tau 2", spec_of(Objective::Jsd, 0.5, 2.0, 8), false); });
    run_test("loss: top-8, forward KL", [] { test_spec_loss("top-8 forward KL", spec_of(Objective::Jsd, 0.0, 1.0, 8), false); });
    run_test("loss: top-5, reverse KL + REINFORCE", [] {
        test_spec_loss("top-5 reverse KL + REINFORCE", spec_of(Objective::Jsd, 1.0, 1.0, 5, 0, LossNorm::Token), true);
    });
    run_test("loss: top-299 of 300 (a one-token tail), JSD(0.3)", [] {
        test_spec_loss("top-299 JSD(0.3)", spec_of(Objective::Jsd, 0.3, 1.0, 299), false);
    });
    run_test("loss: top-8, TV", [] { test_spec_loss("top-8 TV", spec_of(Objective::TotalVariation, 0, 1.0, 8), false); });
    run_test("loss: sampled reverse KL", [] {
        test_spec_loss("sampled reverse KL, gamma 0.9, tau 1.5", spec_of(Objective::SampledReverseKl, 0, 1.5, 0, 0.9), false);
    });
    run_test("GPT-2 width: loss at V = 50257, top-20 JSD(0.5)", [] {
        test_spec_loss("top-20 JSD(0.5), V 50257", spec_of(Objective::Jsd, 0.5, 1.0, 20), false, 50257, 50304, 50304);
    });
    run_test("AdamW and the gradient norm", [] { test_adamw_and_norm(); });
    run_test("cached inference", [] { test_infer(); });
    run_test("greedy sampling", [] { test_greedy(); });
    run_test("cached extension", [] { test_cached_extension(); });
    run_test("speculative sampling", [] { test_speculative(); });
    run_test("sampling distribution", [] { test_sampling_distribution(); });
    run_test("full step (GKD)", [] { test_full_step(false, false); });
    run_test("full step (SFT)", [] { test_full_step(true, false); });
    run_test("full step (TV)", [] { test_full_step_objective("GKD step, TV", Objective::TotalVariation, 0, false); });
    run_test("full step (top-8, JSD(0.5))", [] { test_full_step_objective("GKD step, top-8", Objective::Jsd, 8, false); });
    run_test("full step (top-8, TV)", [] { test_full_step_objective("GKD step, top-8 TV", Objective::TotalVariation, 8, false); });
    run_test("full step (sampled reverse KL)", [] {
        test_full_step_objective("GKD step, sampled reverse KL", Objective::SampledReverseKl, 0, true);
    });
    run_test("on-policy step: matmul FLOPs against the CPU's", [] { test_on_policy_flops(); });
    run_test("packed against padded: matmul FLOPs", [] { test_packed_flops(); });
    run_test("trajectory", [] { test_trajectory(); });
    run_test("full step (TF32)", [] { test_full_step(false, true); });
    run_test("device-resident generation", [] { test_generate_bookkeeping(); });
    run_test("decode steps as a CUDA graph", [] { test_decode_graph(); });
    run_test("GPT-2 width: sampling distribution", [] { test_sampling_distribution_gpt2(); });
    run_test("GPT-2 width: greedy decoding", [] { test_gpt2_greedy(); });
    run_test("GPT-2 width: one GKD step", [] { test_gpt2_step(); });
    run_test("bench's memory table against a step's allocations", [] { test_memory_table(); });
    run_test("bf16: conversions, bit for bit", [] { test_bf16_conversion(); });
    run_test("bf16: each kernel against its fp32 twin", [] { test_bf16_kernels(); });
    run_test("bf16: one step per objective against the CPU's fp32", [] { test_bf16_steps(); });
    run_test("bf16: a trajectory and greedy decoding against fp32", [] { test_bf16_trajectory(); });
    if (skipped) printf("%d tests skipped (GKD_GPU_TEST_SKIP or _ONLY)\n", skipped);
    printf("test-gpu: %.1f s in all\n", now_seconds() - started);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
