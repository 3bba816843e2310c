// dev/kernel_libraries.cpp — gkd's own register tiles (AVX2 and AVX-512) against kept
// libraries on the products of gkd's reference step, in one run: OpenBLAS's sgemm, oneDNN's
// dnnl_sgemm (its JIT'ed GEMM) and libxsmm's JIT'ed small-matrix kernels.
//
// Built and run by dev/kernel_libraries.sh (which also runs it with OpenBLAS's own kernel
// choice). Each case does the same work on the same data with every method, checks each
// result against gkd's tile (relative error printed; rounding only), and times the median
// of repeated runs on all threads. Shapes, from `gkd bench` defaults (student L=2 C=128
// NH=4, teacher C=256 NH=4, B=32, 32 + 64 tokens) and a GPT-2 124M decode:
//   decode: a decode step's matmuls (few rows against every weight, weights laid out once
//     per generation in each method's own layout);
//   attention forward/backward per (row, head), T=96: Q K^T, softmax, A V (and the four
//     backward products), heads shared between threads;
//   the backward's input and weight gradients over N=3072 positions: dinp = dout W (rows
//     shared between threads) and dW = dout^T x (output channels shared), as gpt_backward
//     shares them.
// GFLOP/s count the algorithm's work: attention's causal half, whatever a method computes.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../cpu/attention.h"
#include "../cpu/decode_weights.h"
#include "../cpu/threads.h"

#ifdef HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif
#ifdef HAVE_XSMM
#include <libxsmm.h>
#endif

static std::vector<float> random_floats(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

// median ms of `f` over rounds of enough repetitions to last about 20 ms each
static double time_ms(const std::function<void()>& f) {
    using clock = std::chrono::steady_clock;
    f();
    int reps = 1;
    for (;;) {
        auto t0 = clock::now();
        for (int i = 0; i < reps; i++) f();
        double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
        if (ms > 20 || reps > (1 << 20)) break;
        reps *= 2;
    }
    std::vector<double> rounds;
    for (int r = 0; r < 9; r++) {
        auto t0 = clock::now();
        for (int i = 0; i < reps; i++) f();
        rounds.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count() / reps);
    }
    std::sort(rounds.begin(), rounds.end());
    return rounds[rounds.size() / 2];
}

static double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < want.size(); i++) {
        worst = std::max(worst, (double)std::fabs(got[i] - want[i]));
        scale = std::max(scale, (double)std::fabs(want[i]));
    }
    return worst / std::max(scale, 1e-30);
}

// row-major sgemm for the libraries that have one: C (M, N) = alpha op(A) op(B) + beta C
using Sgemm = void (*)(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                       float beta, float* C, int ldc);
static void openblas_sgemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                           float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda,
                B, ldb, beta, C, ldc);
}
#ifdef HAVE_DNNL
static void onednn_sgemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                         float beta, float* C, int ldc) {
    dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
#endif

struct Method {
    std::string name;
    double ms = NAN, error = NAN;
};
struct Case {
    std::string name;
    double flops;
    std::vector<Method> methods;
};
static std::vector<Case> results;

static void record(Case& c, const std::string& name, const std::function<void()>& run, const std::vector<float>& out,
                   const std::vector<float>& reference) {
    Method m;
    m.name = name;
    run();
    m.error = relative_error(out, reference);
    m.ms = time_ms(run);
    c.methods.push_back(m);
    fprintf(stderr, "  %-44s %-22s %9.3f ms  error %.1e\n", c.name.c_str(), name.c_str(), m.ms, m.error);
}

// gkd's tile in each variant this CPU runs
static std::vector<CpuKernels> tile_variants() {
    std::vector<CpuKernels> v = {CpuKernels::avx2, CpuKernels::avx512};
    v.erase(std::remove_if(v.begin(), v.end(), [](CpuKernels k) { return k > cpu_kernels_widest(); }), v.end());
    return v;
}
static std::string tile_name(CpuKernels k) { return std::string("gkd tile ") + cpu_kernels_name(k); }

// ----------------------------------------------------------------------------
// decode: rows x (K -> OC) for each weight of a layer

static void decode_case(const char* name, int rows, const std::vector<std::pair<int, int>>& weights) {
    Case c{name, 0, {}};
    struct W {
        int K, OC;
        std::vector<float> w, wt, panels, bias, x, out;
    };
    std::vector<W> ws;
    for (auto [K, OC] : weights) {
        W w{K, OC, random_floats((size_t)OC * K, K + OC), {}, {}, random_floats(OC, 7), random_floats((size_t)rows * K, 3), {}};
        w.wt.resize((size_t)K * OC);  // (K, OC): column-major (OC, K) for libxsmm
        for (int o = 0; o < OC; o++)
            for (int k = 0; k < K; k++) w.wt[(size_t)k * OC + o] = w.w[(size_t)o * K + k];
        w.panels.resize(packed_weight_size(OC, K));
        pack_weight_panels(w.panels.data(), w.w.data(), OC, K);
        w.out.assign((size_t)rows * OC, 0.0f);
        c.flops += 2.0 * rows * K * OC;
        ws.push_back(std::move(w));
    }
    std::vector<float> all_out, all_ref;
    auto gather = [&] {
        all_out.clear();
        for (W& w : ws) all_out.insert(all_out.end(), w.out.begin(), w.out.end());
    };
    // the reference: gkd's tile, first variant
    g_cpu_kernels = CpuKernels::avx2;
    for (W& w : ws) matmul_forward_packed(w.out.data(), w.x.data(), w.panels.data(), w.bias.data(), rows, w.K, w.OC, w.OC);
    gather();
    all_ref = all_out;
    for (CpuKernels k : tile_variants()) {
        g_cpu_kernels = k;
        record(c, tile_name(k), [&] {
            for (W& w : ws) matmul_forward_packed(w.out.data(), w.x.data(), w.panels.data(), w.bias.data(), rows, w.K, w.OC, w.OC);
            gather();
        }, all_out, all_ref);
    }
    g_cpu_kernels = cpu_kernels_widest();
    auto with_sgemm = [&](Sgemm gemm) {
        return [&, gemm] {
            for (W& w : ws) {
                for (int n = 0; n < rows; n++) std::copy(w.bias.begin(), w.bias.end(), w.out.begin() + (size_t)n * w.OC);
                gemm(false, true, rows, w.OC, w.K, w.x.data(), w.K, w.w.data(), w.K, 1.0f, w.out.data(), w.OC);
            }
            gather();
        };
    };
    record(c, "OpenBLAS sgemm", with_sgemm(openblas_sgemm), all_out, all_ref);
#ifdef HAVE_DNNL
    record(c, "oneDNN sgemm", with_sgemm(onednn_sgemm), all_out, all_ref);
#endif
#ifdef HAVE_XSMM
    {
        // out^T (OC, rows) = W (OC, K) x^T (K, rows), column-major, in blocks of 64 output
        // channels shared between threads; the bias first, then beta = 1
        const int block = 64;
        struct Kernel { libxsmm_smmfunction full, tail; };
        std::vector<Kernel> kernels;
        for (W& w : ws) {
            const int lda = w.OC, ldb = w.K, ldc = w.OC, tail = w.OC % block;
            const float alpha = 1, beta = 1;
            Kernel k{libxsmm_smmdispatch(block, rows, w.K, &lda, &ldb, &ldc, &alpha, &beta, nullptr, nullptr),
                     tail ? libxsmm_smmdispatch(tail, rows, w.K, &lda, &ldb, &ldc, &alpha, &beta, nullptr, nullptr) : nullptr};
            if (!k.full || (tail && !k.tail)) { fprintf(stderr, "libxsmm: no kernel for %s\n", name); kernels.clear(); break; }
            kernels.push_back(k);
        }
        if (!kernels.empty())
            record(c, "libxsmm", [&] {
                for (size_t i = 0; i < ws.size(); i++) {
                    W& w = ws[i];
                    const int nb = (w.OC + block - 1) / block;
                    #pragma omp parallel for schedule(static)
                    for (int b = 0; b < nb; b++) {
                        const int o0 = b * block;
                        for (int n = 0; n < rows; n++)
                            std::copy(w.bias.begin() + o0, w.bias.begin() + std::min(w.OC, o0 + block),
                                      w.out.begin() + (size_t)n * w.OC + o0);
                        (o0 + block <= w.OC ? kernels[i].full : kernels[i].tail)(w.wt.data() + o0, w.x.data(), w.out.data() + o0);
                    }
                }
                gather();
            }, all_out, all_ref);
    }
#endif
    results.push_back(c);
}

// ----------------------------------------------------------------------------
// attention per (row, head): heads (B * NH) of T positions, hs channels, laid out as
// gkd's qkv (T, 3C) rows per batch row

struct Heads {
    int B, NH, T, hs, C;
    std::vector<float> qkv, out, att, dout, dqkv;
    Heads(int B_, int NH_, int T_, int hs_) : B(B_), NH(NH_), T(T_), hs(hs_), C(NH_ * hs_) {
        qkv = random_floats((size_t)B * T * 3 * C, 11);
        dout = random_floats((size_t)B * T * C, 12);
        out.assign((size_t)B * T * C, 0.0f);
        att.assign((size_t)B * NH * T * T, 0.0f);
        dqkv.assign((size_t)B * T * 3 * C, 0.0f);
    }
    const float* q(int b, int h) const { return qkv.data() + (size_t)b * T * 3 * C + h * hs; }
    const float* k(int b, int h) const { return q(b, h) + C; }
    const float* v(int b, int h) const { return q(b, h) + 2 * C; }
    float* o(int b, int h) { return out.data() + (size_t)b * T * C + h * hs; }
    float* a(int b, int h) { return att.data() + ((size_t)b * NH + h) * T * T; }
    const float* dO(int b, int h) const { return dout.data() + (size_t)b * T * C + h * hs; }
    float* dq(int b, int h) { return dqkv.data() + (size_t)b * T * 3 * C + h * hs; }
    // every (row, head), shared between threads, each with its scratch
    void each(size_t scratch_floats, const std::function<void(int, int, float*)>& f) {
        #pragma omp parallel
        {
            std::vector<float> scratch(scratch_floats);
            #pragma omp for schedule(static)
            for (int bh = 0; bh < B * NH; bh++) f(bh / NH, bh % NH, scratch.data());
        }
    }
    double causal_flops(int products) const { return products * 2.0 * B * NH * hs * (T * (T + 1) / 2.0); }
};

// scale, causal softmax and zeros above the diagonal of S (T, T), row by row (gkd's)
static void causal_softmax(float* S, int T, float scale) {
    for (int t = 0; t < T; t++) {
        float* row = S + (size_t)t * T;
        float maxv = -INFINITY, sum = 0;
        for (int j = 0; j <= t; j++) maxv = std::max(maxv, row[j] * scale);
        for (int j = 0; j <= t; j++) { row[j] = exp_fast(row[j] * scale - maxv); sum += row[j]; }
        for (int j = 0; j <= t; j++) row[j] /= sum;
        std::fill(row + t + 1, row + T, 0.0f);
    }
}

static void attention_forward_case(const char* name, int B, int NH, int T, int hs) {
    Heads H(B, NH, T, hs);
    Case c{name, H.causal_flops(2), {}};
    const float scale = 1.0f / std::sqrt((float)hs);
    const size_t ld = 3 * H.C;
    auto gkd = [&] {
        H.each(attention_head_scratch(T, hs), [&](int b, int h, float* sc) {
            attention_head_forward(H.o(b, h), H.C, H.a(b, h), T, H.q(b, h), ld, H.k(b, h), H.v(b, h), ld, 0, T, 0, hs,
                                   scale, sc);
        });
    };
    g_cpu_kernels = CpuKernels::avx2;
    gkd();
    const std::vector<float> ref = H.out;
    for (CpuKernels k : tile_variants()) {
        g_cpu_kernels = k;
        record(c, tile_name(k), gkd, H.out, ref);
    }
    g_cpu_kernels = cpu_kernels_widest();
    auto with_sgemm = [&](Sgemm gemm) {
        return [&, gemm] {
            H.each(0, [&](int b, int h, float*) {
                float* S = H.a(b, h);
                gemm(false, true, T, T, hs, H.q(b, h), ld, H.k(b, h), ld, 0.0f, S, T);
                causal_softmax(S, T, scale);
                gemm(false, false, T, hs, T, S, T, H.v(b, h), ld, 0.0f, H.o(b, h), H.C);
            });
        };
    };
    record(c, "OpenBLAS sgemm", with_sgemm(openblas_sgemm), H.out, ref);
#ifdef HAVE_DNNL
    record(c, "oneDNN sgemm", with_sgemm(onednn_sgemm), H.out, ref);
#endif
#ifdef HAVE_XSMM
    {
        // S^T (keys, queries) = K (keys, hs; packed column-major) Q^T; O^T = V^T A^T
        const int ldT = T, ldqkv = (int)ld, ldo = H.C;
        const float one = 1, zero = 0;
        libxsmm_smmfunction scores = libxsmm_smmdispatch(T, T, hs, &ldT, &ldqkv, &ldT, &one, &zero, nullptr, nullptr);
        libxsmm_smmfunction values = libxsmm_smmdispatch(hs, T, T, &ldqkv, &ldT, &ldo, &one, &zero, nullptr, nullptr);
        if (scores && values)
            record(c, "libxsmm", [&] {
                H.each((size_t)T * hs, [&](int b, int h, float* kcol) {
                    const float* k = H.k(b, h);
                    for (int j = 0; j < T; j++)
                        for (int i = 0; i < hs; i++) kcol[j + (size_t)i * T] = k[(size_t)j * ld + i];
                    float* S = H.a(b, h);
                    scores(kcol, H.q(b, h), S);
                    causal_softmax(S, T, scale);
                    values(H.v(b, h), S, H.o(b, h));
                });
            }, H.out, ref);
        else
            fprintf(stderr, "libxsmm: no kernel for %s\n", name);
    }
#endif
    results.push_back(c);
}

static void attention_backward_case(const char* name, int B, int NH, int T, int hs) {
    Heads H(B, NH, T, hs);
    Case c{name, H.causal_flops(4), {}};
    const float scale = 1.0f / std::sqrt((float)hs);
    const size_t ld = 3 * H.C;
    // the weights, from a forward
    H.each(attention_head_scratch(T, hs), [&](int b, int h, float* sc) {
        attention_head_forward(H.o(b, h), H.C, H.a(b, h), T, H.q(b, h), ld, H.k(b, h), H.v(b, h), ld, 0, T, 0, hs,
                               scale, sc);
    });
    auto gkd = [&] {
        H.each(attention_head_scratch(T, hs), [&](int b, int h, float* sc) {
            float* dq = H.dq(b, h);
            attention_head_backward<false>(dq, dq + H.C, dq + 2 * H.C, ld, H.dO(b, h), H.C, H.q(b, h), H.k(b, h),
                                           H.v(b, h), ld, H.a(b, h), T, hs, scale, sc);
        });
    };
    g_cpu_kernels = CpuKernels::avx2;
    gkd();
    const std::vector<float> ref = H.dqkv;
    for (CpuKernels k : tile_variants()) {
        g_cpu_kernels = k;
        record(c, tile_name(k), gkd, H.dqkv, ref);
    }
    g_cpu_kernels = cpu_kernels_widest();
    auto with_sgemm = [&](Sgemm gemm) {
        return [&, gemm] {
            H.each((size_t)T * T, [&](int b, int h, float* g) {
                float* dq = H.dq(b, h);
                const float* A = H.a(b, h);
                gemm(false, true, T, T, hs, H.dO(b, h), H.C, H.v(b, h), ld, 0.0f, g, T);   // dA = dO V^T
                causal_softmax_backward(g, A, T, scale);                                    // dS
                gemm(false, false, T, hs, T, g, T, H.k(b, h), ld, 0.0f, dq, ld);            // dQ = dS K
                gemm(true, false, T, hs, T, g, T, H.q(b, h), ld, 0.0f, dq + H.C, ld);       // dK = dS^T Q
                gemm(true, false, T, hs, T, A, T, H.dO(b, h), H.C, 0.0f, dq + 2 * H.C, ld);  // dV = A^T dO
            });
        };
    };
    record(c, "OpenBLAS sgemm", with_sgemm(openblas_sgemm), H.dqkv, ref);
#ifdef HAVE_DNNL
    record(c, "oneDNN sgemm", with_sgemm(onednn_sgemm), H.dqkv, ref);
#endif
    results.push_back(c);
}

// ----------------------------------------------------------------------------
// the backward's products of a student layer over N positions, each thread its share as
// gpt_backward shares them (share_begin):
//   input gradients:  dinp (N, C) = dout (N, OC) @ W (OC, C), the rows shared;
//   weight gradients: dW (OC, C) = dout (N, OC)^T x (N, C), the output channels shared

struct GradientProduct {
    int C, OC;
    std::vector<float> operand, dout, out;  // operand: W (OC, C) or x (N, C)
};

// weight_gradient: dW, else dinp; seed: each case its own data
static void gradient_case(const char* name, int N, const std::vector<std::pair<int, int>>& weights, bool weight_gradient,
                          int seed) {
    Case c{name, 0, {}};
    std::vector<GradientProduct> ws;
    for (auto [C, OC] : weights) {
        ws.push_back({C, OC, random_floats((size_t)(weight_gradient ? N : OC) * C, C + seed),
                      random_floats((size_t)N * OC, OC + 2 * seed),
                      std::vector<float>((size_t)(weight_gradient ? OC : N) * C)});
        c.flops += 2.0 * N * C * OC;
    }
    std::vector<float> all, ref;
    // every thread runs share(w, lo, hi) of each product: output rows [lo, hi) (rows of dinp
    // or of dW), then the outputs are gathered for the check
    auto on_shares = [&](std::function<void(GradientProduct&, int, int)> share) {
        return [&, share] {
            #pragma omp parallel
            {
                const int t = omp_get_thread_num(), nt = omp_get_num_threads();
                for (GradientProduct& w : ws) {
                    const int rows = weight_gradient ? w.OC : N;
                    share(w, share_begin(rows, t, nt), share_begin(rows, t + 1, nt));
                }
            }
            all.clear();
            for (GradientProduct& w : ws) all.insert(all.end(), w.out.begin(), w.out.end());
        };
    };
    auto with_sgemm = [&](Sgemm gemm) {
        return on_shares([&, gemm](GradientProduct& w, int lo, int hi) {
            if (hi <= lo) return;
            if (weight_gradient)
                gemm(true, false, hi - lo, w.C, N, w.dout.data() + lo, w.OC, w.operand.data(), w.C, 0.0f,
                     w.out.data() + (size_t)lo * w.C, w.C);
            else
                gemm(false, false, hi - lo, w.C, w.OC, w.dout.data() + (size_t)lo * w.OC, w.OC, w.operand.data(), w.C,
                     0.0f, w.out.data() + (size_t)lo * w.C, w.C);
        });
    };
    with_sgemm(openblas_sgemm)();
    ref = all;
    record(c, "OpenBLAS sgemm", with_sgemm(openblas_sgemm), all, ref);
#ifdef HAVE_DNNL
    record(c, "oneDNN sgemm", with_sgemm(onednn_sgemm), all, ref);
#endif
    // gkd's tile: the operand's channels read in place as panels (C a multiple of 16); dout
    // read by rows (input gradients) or down its columns (dout^T, weight gradients)
    for (CpuKernels k : tile_variants()) {
        g_cpu_kernels = k;
        record(c, tile_name(k), on_shares([&](GradientProduct& w, int lo, int hi) {
            const size_t ldx = weight_gradient ? 1 : w.OC, ldk = weight_gradient ? w.OC : 1;
            const int K = weight_gradient ? N : w.OC;
            for (int r = lo; r < hi; r += tile_rows())
                packed_tiles(std::min(tile_rows(), hi - r), w.out.data() + (size_t)r * w.C, w.C,
                             w.dout.data() + r * ldx, ldx, ldk, K, w.operand.data(), w.C, DECODE_PANEL, nullptr, w.C);
        }), all, ref);
    }
    g_cpu_kernels = cpu_kernels_widest();
    results.push_back(c);
}

int main(int argc, char** argv) {
    // an argument: run only the cases whose name contains it
    auto wanted = [&](const char* name) { return argc < 2 || strstr(name, argv[1]); };
#ifdef HAVE_XSMM
    libxsmm_init();
#endif
    const int threads = omp_get_max_threads();
    const char* forced = getenv("OPENBLAS_CORETYPE");
    printf("gkd's tiles against kept libraries: %d threads; OpenBLAS kernels for %s%s; gkd tile variants up to %s\n",
           threads, openblas_get_corename(), forced && *forced ? " (forced by OPENBLAS_CORETYPE)" : " (its own choice)",
           cpu_kernels_name(cpu_kernels_widest()));
#ifdef HAVE_DNNL
    const dnnl_version_t* v = dnnl_version();
    printf("oneDNN %d.%d.%d (dnnl_sgemm; ISA chosen at run time)", v->major, v->minor, v->patch);
#endif
#ifdef HAVE_XSMM
    printf("; libxsmm %s, JIT for %s", LIBXSMM_VERSION, libxsmm_get_target_arch());
#endif
    printf("\n\n");

    // the reference step's student decode (32 rows, C=128: qkv, attproj, fc, fcproj, then
    // the LM head at V=257) and GPT-2 124M's decode layer (8 rows, C=768)
    if (wanted("decode, student layer + LM head, 32 rows")) decode_case("decode, student layer + LM head, 32 rows", 32, {{128, 384}, {128, 128}, {128, 512}, {512, 128}, {128, 257}});
    if (wanted("decode, GPT-2 124M layer, 8 rows")) decode_case("decode, GPT-2 124M layer, 8 rows", 8, {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}});
    if (wanted("attention forward, T=96 hs=32 (student)")) attention_forward_case("attention forward, T=96 hs=32 (student)", 32, 4, 96, 32);
    if (wanted("attention forward, T=96 hs=64 (teacher)")) attention_forward_case("attention forward, T=96 hs=64 (teacher)", 32, 4, 96, 64);
    if (wanted("attention backward, T=96 hs=32 (student)")) attention_backward_case("attention backward, T=96 hs=32 (student)", 32, 4, 96, 32);
    if (wanted("input gradients, student layer, N=3072"))
        gradient_case("input gradients, student layer, N=3072", 3072, {{128, 384}, {128, 128}, {128, 512}, {512, 128}}, false, 1);
    if (wanted("weight gradients, student layer, N=3072"))
        gradient_case("weight gradients, student layer, N=3072", 3072, {{128, 384}, {128, 128}, {128, 512}, {512, 128}}, true, 0);

    std::vector<std::string> names;
    for (const Case& c : results)
        for (const Method& m : c.methods)
            if (std::find(names.begin(), names.end(), m.name) == names.end()) names.push_back(m.name);
    printf("GFLOP/s (ms), median of 9; the algorithm's work (attention: the causal half)\n\n| case |");
    for (auto& n : names) printf(" %s |", n.c_str());
    printf("\n|---|");
    for (size_t i = 0; i < names.size(); i++) printf("---:|");
    printf("\n");
    for (const Case& c : results) {
        printf("| %s |", c.name.c_str());
        for (auto& n : names) {
            auto m = std::find_if(c.methods.begin(), c.methods.end(), [&](const Method& x) { return x.name == n; });
            if (m == c.methods.end()) printf(" - |");
            else printf(" %.0f (%.3f) |", c.flops / m->ms / 1e6, m->ms);
        }
        printf("\n");
    }
    double worst = 0;
    for (const Case& c : results)
        for (const Method& m : c.methods) worst = std::max(worst, m.error);
    printf("\nevery method's result against gkd's AVX2 tile: worst relative error %.1e\n", worst);
    return worst < 1e-4 ? 0 : 1;
}
