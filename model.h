// model.h — GPT-2 on the CPU: parameters, every layer's forward and backward, a
// KV-cached inference path for sampling and for the teacher, checkpoint I/O (llm.c's
// format) and GPT-2 initialisation.
//
// Reading guide and non-obvious tricks:
// - Everything is templated on the scalar type T. Training uses float; the gradient
//   tests instantiate double so that central finite differences are accurate to ~1e-8.
// - As in llm.c, the parameters are one allocation carved into 16 named tensors, and the
//   activations are one allocation carved into named tensors laid out (L, B, T, ...) for
//   the (B, T) of the current batch: allocate for the largest batch once, then any
//   smaller (B, T) fits in the same memory.
// - The LM head only computes the V real vocabulary columns; the padded columns
//   (V..Vp-1) of the logits stay zero and never receive gradient.
// - Softmaxes subtract the row max (attention here, the losses in gkd.cu).
// - Two forward paths: gpt_forward keeps every activation for gpt_backward (the
//   student); gpt_infer keeps only a KV cache and reusable scratch (sampling, and the
//   teacher, which never needs a backward). Tests check they agree. On-policy sampling
//   can also record what it computes in gpt_forward's layout (ForwardRecord), so that the
//   student's forward over its own samples is not run twice.
// - Matmuls use a tuned BLAS (OpenBLAS) when the build finds one, else OpenMP loops;
//   a generation's decode steps (a few rows each) multiply weights it packed once
//   (DecodeWeights) with a register-tiled kernel, each output one fma chain in order.
// - Float attention over many positions (the teacher, prefill, training) runs per (row,
//   head) on the same register tile (attention_head_forward/backward): operands in
//   panels of 16, the blocks above the causal diagonal skipped; per-(row, head) sgemm
//   calls spent more on each call than on its arithmetic. fp64 keeps the generic code.
// - The teacher's pass for a loss trims its last layer to the positions with targets
//   (gpt_infer's head_from): elsewhere that layer only computes keys and values.
// - Rows are shared out among threads (row_split_threads): with enough rows, each thread
//   runs its own rows through the whole model with single-threaded BLAS calls and no
//   barrier per layer (gpt_forward, gpt_infer, the first sweep of gpt_backward); the
//   parameters' gradients, sums over all rows, are then shared out by output channel.
// - gpt_backward writes each activation gradient before reading it, the first write
//   overwriting (nothing zeroes ~60 MB of them first at the reference step); the
//   projections' output gradients are the residual stream's, used where they lie.
// - Every reduction is done in a fixed order, so results are identical run after run
//   for a fixed thread count.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "utils.h"

#ifdef GKD_BLAS
#include <cblas.h>
constexpr bool HAVE_BLAS = true;
#else
constexpr bool HAVE_BLAS = false;
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#ifdef __CUDACC__
// nvcc's front end does not know GCC's unroll pragma (packed_tile); it hands it on to the
// host compiler, which unrolls as asked, so its warning is only noise
#pragma nv_diag_suppress 1675
#endif

// ----------------------------------------------------------------------------
// configuration and parameters

struct GPTConfig {
    int max_seq_len = 0;        // maxT, learned positions
    int vocab_size = 0;         // V, real tokens
    int padded_vocab_size = 0;  // Vp >= V, llm.c pads to a multiple of 128
    int num_layers = 0;         // L
    int num_heads = 0;          // NH
    int channels = 0;           // C
};

inline int pad_vocab(int V) { return (V + 127) / 128 * 128; }

constexpr int NUM_PARAMETER_TENSORS = 16;
inline const char* const PARAMETER_NAMES[NUM_PARAMETER_TENSORS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"};
// Tensors that get weight decay: the matmul weights and the embeddings, as in GPT-2
// practice; biases and LayerNorm parameters do not.
inline const bool PARAMETER_DECAYS[NUM_PARAMETER_TENSORS] = {
    true, true, false, false, true, false, true, false,
    false, false, true, false, true, false, false, false};

inline void fill_parameter_sizes(size_t sizes[NUM_PARAMETER_TENSORS], const GPTConfig& c) {
    size_t Vp = c.padded_vocab_size, C = c.channels, L = c.num_layers, maxT = c.max_seq_len;
    sizes[0] = Vp * C;          // wte
    sizes[1] = maxT * C;        // wpe
    sizes[2] = L * C;           // ln1w
    sizes[3] = L * C;           // ln1b
    sizes[4] = L * 3 * C * C;   // qkvw
    sizes[5] = L * 3 * C;       // qkvb
    sizes[6] = L * C * C;       // attprojw
    sizes[7] = L * C;           // attprojb
    sizes[8] = L * C;           // ln2w
    sizes[9] = L * C;           // ln2b
    sizes[10] = L * 4 * C * C;  // fcw
    sizes[11] = L * 4 * C;      // fcb
    sizes[12] = L * C * 4 * C;  // fcprojw
    sizes[13] = L * C;          // fcprojb
    sizes[14] = C;              // lnfw
    sizes[15] = C;              // lnfb
}

template <typename T>
struct ParameterTensors {
    T* wte;       // (Vp, C)
    T* wpe;       // (maxT, C)
    T* ln1w;      // (L, C)
    T* ln1b;      // (L, C)
    T* qkvw;      // (L, 3C, C)
    T* qkvb;      // (L, 3C)
    T* attprojw;  // (L, C, C)
    T* attprojb;  // (L, C)
    T* ln2w;      // (L, C)
    T* ln2b;      // (L, C)
    T* fcw;       // (L, 4C, C)
    T* fcb;       // (L, 4C)
    T* fcprojw;   // (L, C, 4C)
    T* fcprojb;   // (L, C)
    T* lnfw;      // (C)
    T* lnfb;      // (C)
    T** array() { return &wte; }
};

template <typename T>
void point_parameters(ParameterTensors<T>& p, T* memory, const size_t sizes[NUM_PARAMETER_TENSORS]) {
    T** ptrs = p.array();
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) { ptrs[i] = memory; memory += sizes[i]; }
}

constexpr int NUM_ACTIVATION_TENSORS = 20;

template <typename T>
struct ActivationTensors {
    T* encoded;    // (B, T, C)
    T* ln1;        // (L, B, T, C)
    T* ln1_mean;   // (L, B, T)
    T* ln1_rstd;   // (L, B, T)
    T* qkv;        // (L, B, T, 3C)
    T* atty;       // (L, B, T, C)
    T* att;        // (L, B, NH, T, T) softmaxed attention weights
    T* attproj;    // (L, B, T, C)
    T* residual2;  // (L, B, T, C)
    T* ln2;        // (L, B, T, C)
    T* ln2_mean;   // (L, B, T)
    T* ln2_rstd;   // (L, B, T)
    T* fch;        // (L, B, T, 4C)
    T* fch_gelu;   // (L, B, T, 4C)
    T* fcproj;     // (L, B, T, C)
    T* residual3;  // (L, B, T, C)
    T* lnf;        // (B, T, C)
    T* lnf_mean;   // (B, T)
    T* lnf_rstd;   // (B, T)
    T* logits;     // (B, T, Vp) last; the loss overwrites it with its own gradient, so the
                   // activation gradients have no logits tensor of their own (see gpt_prepare_training)
    T** array() { return &encoded; }
};

// What each tensor of ActivationTensors::array() is laid out as (by index, as the sizes
// below): ln1 .. residual3 are one (B, T, ...) slab per layer; att is (L, B, NH, T, T);
// lnf .. logits are the LM head's.
inline bool activation_per_layer(int i) { return i >= 1 && i <= 15; }
inline bool activation_is_attention(int i) { return i == 6; }
inline bool activation_of_head(int i) { return i >= 16; }

inline void fill_activation_sizes(size_t s[NUM_ACTIVATION_TENSORS], const GPTConfig& c, size_t B, size_t T) {
    size_t C = c.channels, L = c.num_layers, NH = c.num_heads, Vp = c.padded_vocab_size;
    size_t sz[NUM_ACTIVATION_TENSORS] = {
        B * T * C, L * B * T * C, L * B * T, L * B * T, L * B * T * 3 * C, L * B * T * C,
        L * B * NH * T * T, L * B * T * C, L * B * T * C, L * B * T * C, L * B * T, L * B * T,
        L * B * T * 4 * C, L * B * T * 4 * C, L * B * T * C, L * B * T * C, B * T * C, B * T,
        B * T, B * T * Vp};
    memcpy(s, sz, sizeof sz);
}

template <typename T>
void point_activations(ActivationTensors<T>& a, T* memory, const size_t sizes[NUM_ACTIVATION_TENSORS]) {
    T** ptrs = a.array();
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) { ptrs[i] = memory; memory += sizes[i]; }
}

template <typename T>
struct GPT {
    GPTConfig config;
    size_t param_sizes[NUM_PARAMETER_TENSORS] = {};
    size_t num_parameters = 0;
    std::vector<T> params_memory;
    ParameterTensors<T> params{};
    // Training state, allocated only by gpt_prepare_training (never for a teacher).
    std::vector<T> grads_memory;
    ParameterTensors<T> grads{};
    int max_B = 0, max_T = 0;
    std::vector<T> acts_memory, grads_acts_memory;
    ActivationTensors<T> acts{}, grads_acts{};
    std::vector<T> attention_scratch;  // (threads, attention_scratch_per_thread) for attention backward
    std::vector<int> inputs;           // (B, T) tokens of the last gpt_forward
    int batch_B = 0, batch_T = 0;      // shape of the last gpt_forward
};

inline void validate_config(const GPTConfig& c, const std::string& where) {
    auto bad = [&](const char* what) { GKD_FAIL("%s: invalid model shape: %s", where.c_str(), what); };
    if (c.max_seq_len < 1 || c.max_seq_len > (1 << 20)) bad("context (maxT) must be in [1, 1048576]");
    if (c.vocab_size < 2 || c.vocab_size > (1 << 24)) bad("vocabulary V must be in [2, 16777216]");
    if (c.padded_vocab_size < c.vocab_size || c.padded_vocab_size > c.vocab_size + (1 << 16))
        bad("padded vocabulary Vp must be in [V, V + 65536]");
    if (c.num_layers < 1 || c.num_layers > 1024) bad("layers L must be in [1, 1024]");
    if (c.channels < 1 || c.channels > (1 << 16)) bad("channels C must be in [1, 65536]");
    if (c.num_heads < 1 || c.num_heads > c.channels || c.channels % c.num_heads != 0)
        bad("heads NH must divide channels C");
}

// Sets the shape and allocates zeroed parameters. The config must be validated.
template <typename T>
void gpt_build(GPT<T>& m, const GPTConfig& c) {
    m = GPT<T>();
    m.config = c;
    fill_parameter_sizes(m.param_sizes, c);
    m.num_parameters = 0;
    for (size_t s : m.param_sizes) m.num_parameters += s;
    m.params_memory.assign(m.num_parameters, T(0));
    point_parameters(m.params, m.params_memory.data(), m.param_sizes);
}

// Where part `part` of `parts` begins in [0, total): contiguous shares that differ by at
// most one item (rows among threads, output channels, prompts among MPI ranks).
inline int share_begin(int total, int part, int parts) { return (int)((long long)total * part / parts); }

// ----------------------------------------------------------------------------
// layers: forward and backward side by side. Backward functions accumulate (+=); those
// gpt_backward writes a tensor with first can overwrite instead (accumulate = false), so
// that no pass zeroes the activations' gradients beforehand.

template <typename T>
void encoder_forward(T* out, const int* inp, const T* wte, const T* wpe, int B, int Tn, int C) {
    // out (B,T,C) = wte[token] + wpe[position]; each row's positions start at 0
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++) {
            T* o = out + ((size_t)b * Tn + t) * C;
            const T* e = wte + (size_t)inp[b * Tn + t] * C;
            const T* p = wpe + (size_t)t * C;
            for (int i = 0; i < C; i++) o[i] = e[i] + p[i];
        }
}

// Part `part` of `parts` (gpt_parameter_gradients splits the work this way): the wte rows
// of tokens in the part's share of [0, V) and the wpe rows of its share of positions.
template <typename T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int* inp, int B, int Tn, int C, int V = INT_MAX,
                      int part = 0, int parts = 1) {
    // serial over (b,t) within a part: two positions may share a token, and a fixed order keeps it exact
    const int v0 = share_begin(V, part, parts), v1 = share_begin(V, part + 1, parts);
    const int t0 = share_begin(Tn, part, parts), t1 = share_begin(Tn, part + 1, parts);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++) {
            const T* d = dout + ((size_t)b * Tn + t) * C;
            const int token = inp[b * Tn + t];
            if (token >= v0 && token < v1) {
                T* de = dwte + (size_t)token * C;
                for (int i = 0; i < C; i++) de[i] += d[i];
            }
            if (t >= t0 && t < t1) {
                T* dp = dwpe + (size_t)t * C;
                for (int i = 0; i < C; i++) dp[i] += d[i];
            }
        }
}

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, int N, int C) {
    // out (N,C), mean/rstd (N): normalise each row, biased variance, eps 1e-5
    // (the sums are `omp simd` reductions: without -ffast-math the compiler may not
    // reorder a float sum by itself; the scalar loops were 2.7% of a step in perf)
    const T eps = T(1e-5);
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const T* x = inp + (size_t)n * C;
        T m = 0;
        #pragma omp simd reduction(+ : m)
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        T v = 0;
        #pragma omp simd reduction(+ : v)
        for (int i = 0; i < C; i++) { T d = x[i] - m; v += d * d; }
        v /= C;
        T s = T(1) / std::sqrt(v + eps);
        T* o = out + (size_t)n * C;
        #pragma omp simd
        for (int i = 0; i < C; i++) o[i] = (x[i] - m) * s * weight[i] + bias[i];
        if (mean) { mean[n] = m; rstd[n] = s; }
    }
}

// The backward in two halves: the input's gradient (row by row) and the parameters'
// (a sum over rows per channel: channels [i0, i1) of it), so that a training backward can
// share out rows for the first and channels for the second (gpt_backward).
// dinp = base + the gradient through the norm: base = dinp accumulates (the default), another
// tensor passes a residual's gradient through (gpt_backward), null overwrites.
template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* inp, const T* weight, const T* mean, const T* rstd,
                              int N, int C, const T* base) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const T* d = dout + (size_t)n * C;
        const T* x = inp + (size_t)n * C;
        T m = mean[n], s = rstd[n];
        T dnorm_mean = 0, dnorm_norm_mean = 0;
        #pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
        for (int i = 0; i < C; i++) {
            T norm = (x[i] - m) * s, dnorm = weight[i] * d[i];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        T* dx = dinp + (size_t)n * C;
        auto grad = [&](int i) {
            T norm = (x[i] - m) * s, dnorm = weight[i] * d[i];
            return (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        };
        if (base) {
            const T* b = base + (size_t)n * C;
            #pragma omp simd
            for (int i = 0; i < C; i++) dx[i] = b[i] + grad(i);
        } else {
            #pragma omp simd
            for (int i = 0; i < C; i++) dx[i] = grad(i);
        }
    }
}

template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* inp, const T* weight, const T* mean, const T* rstd,
                              int N, int C) {
    layernorm_backward_input(dinp, dout, inp, weight, mean, rstd, N, C, (const T*)dinp);
}

template <typename T>
void layernorm_backward_params(T* dweight, T* dbias, const T* dout, const T* inp, const T* mean, const T* rstd, int N,
                               int C, int i0, int i1) {
    // blocks of 64 channels, each one thread's; rows in order within it (each channel's
    // sum in a fixed order), the channels of a row side by side so that the loop vectorizes
    #pragma omp parallel for schedule(static)
    for (int j0 = i0; j0 < i1; j0 += 64) {
        const int j1 = std::min(i1, j0 + 64);
        T dw[64] = {}, db[64] = {};
        for (int n = 0; n < N; n++) {
            const T* d = dout + (size_t)n * C;
            const T* x = inp + (size_t)n * C;
            const T m = mean[n], s = rstd[n];
            #pragma omp simd
            for (int i = j0; i < j1; i++) {
                dw[i - j0] += d[i] * (x[i] - m) * s;
                db[i - j0] += d[i];
            }
        }
        for (int i = j0; i < j1; i++) { dweight[i] += dw[i - j0]; dbias[i] += db[i - j0]; }
    }
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                        const T* mean, const T* rstd, int N, int C) {
    layernorm_backward_input(dinp, dout, inp, weight, mean, rstd, N, C);
    layernorm_backward_params(dweight, dbias, dout, inp, mean, rstd, N, C, 0, C);
}

// exp and tanh in float precision, written so that the loops calling them vectorize (libm's
// expf and tanhf are scalar calls, and GELU's tanh alone was a third of a step's time).
// exp: x = k ln2 + r with |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial
// (relative error below 2e-7, about 2 ulp), times 2^k built from its exponent bits.
// The double versions, used by the finite-difference tests, stay libm's.
inline float exp_fast(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    // k = round(x / ln2); truncating a positive number floors it, and (unlike std::floor
    // without -ffast-math) vectorizes
    int32_t ki = (int32_t)(x * 1.44269504088896341f + 128.5f) - 128;
    float k = (float)ki;
    float r = x - k * 0.693145751953125f - k * 1.42860682030941723e-6f;  // ln2 in two parts
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    int32_t bits = (ki + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}
inline double exp_fast(double x) { return std::exp(x); }
// tanh from exp: absolute error about 1e-7, which is what GELU's 1 + tanh needs.
inline float tanh_fast(float x) {
    x = std::min(std::max(x, -9.0f), 9.0f);
    float e = exp_fast(2.0f * x);
    return (e - 1.0f) / (e + 1.0f);
}
inline double tanh_fast(double x) { return std::tanh(x); }

#ifdef GKD_BLAS
// The matmuls go through a tuned BLAS (OpenBLAS, OpenMP build: it shares our thread pool)
// when the Makefile finds one; cblas_sgemm for training, cblas_dgemm for the double-
// precision gradient tests. Each output element is one dot product in a fixed order, so
// results are identical run after run for a fixed thread count.
inline void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                 float beta, float* Cm, int ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                1.0f, A, lda, B, ldb, beta, Cm, ldc);
}
inline void gemm(bool trans_a, bool trans_b, int M, int N, int K, const double* A, int lda, const double* B, int ldb,
                 double beta, double* Cm, int ldc) {
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                1.0, A, lda, B, ldb, beta, Cm, ldc);
}

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC, int ld_out) {
    // out (N, ld_out)[:, :OC] = inp (N,C) @ weight (OC,C)^T + bias (OC)
    if (bias) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) std::copy(bias, bias + OC, out + (size_t)n * ld_out);
    }
    gemm(false, true, N, OC, C, inp, C, weight, C, bias ? T(1) : T(0), out, ld_out);
}

// The backward in two halves, as layernorm's: the input's gradient, and the weight's and
// bias's for output channels [o0, o1) (a sum over all N rows).
// accumulate = false overwrites dinp instead (gpt_backward's first write of a tensor).
template <typename T>
void matmul_backward_input(T* dinp, const T* dout, const T* weight, int N, int C, int OC, int ld_dout,
                           bool accumulate = true) {
    // dinp (N,C) (+)= dout (N,OC) @ weight (OC,C)
    gemm(false, false, N, C, OC, dout, ld_dout, weight, C, T(accumulate ? 1 : 0), dinp, C);
}

template <typename T>
void matmul_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, int N, int C, int ld_dout, int o0,
                            int o1) {
    if (o1 <= o0) return;
    // dweight[o0:o1] (o1-o0, C) += dout[:, o0:o1]^T @ inp (N, C)
    gemm(true, false, o1 - o0, C, N, dout + o0, ld_dout, inp, C, T(1), dweight + (size_t)o0 * C, C);
    if (dbias) {                                                               // dbias[o0:o1] += column sums of dout
        // 64 channels at a time, their sums held in a local block (in memory, dbias could
        // alias dout: each add was a load and a store), rows in order
        #pragma omp parallel for schedule(static)
        for (int b0 = o0; b0 < o1; b0 += 64) {
            const int b1 = std::min(o1, b0 + 64);
            T sum[64];
            std::copy(dbias + b0, dbias + b1, sum);
            for (int n = 0; n < N; n++) {
                const T* d = dout + (size_t)n * ld_dout + b0;
                #pragma omp simd
                for (int o = 0; o < b1 - b0; o++) sum[o] += d[o];
            }
            std::copy(sum, sum + (b1 - b0), dbias + b0);
        }
    }
}
#else
// No BLAS found: plain OpenMP loops, correct but several times slower.
template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC, int ld_out) {
    // out (N, ld_out)[:, :OC] = inp (N,C) @ weight (OC,C)^T + bias (OC)
    // Four input rows share each weight row load; each output element is one thread's.
    const int RB = 4;
    int nblocks = (N + RB - 1) / RB;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int nb = 0; nb < nblocks; nb++)
        for (int o = 0; o < OC; o++) {
            int n0 = nb * RB;
            const T* w = weight + (size_t)o * C;
            T init = bias ? bias[o] : T(0);
            if (n0 + RB <= N) {
                const T *x0 = inp + (size_t)n0 * C, *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;
                T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                #pragma omp simd reduction(+ : s0, s1, s2, s3)
                for (int i = 0; i < C; i++) {
                    s0 += x0[i] * w[i]; s1 += x1[i] * w[i]; s2 += x2[i] * w[i]; s3 += x3[i] * w[i];
                }
                out[(size_t)(n0 + 0) * ld_out + o] = init + s0;
                out[(size_t)(n0 + 1) * ld_out + o] = init + s1;
                out[(size_t)(n0 + 2) * ld_out + o] = init + s2;
                out[(size_t)(n0 + 3) * ld_out + o] = init + s3;
            } else {
                for (int n = n0; n < N; n++) {
                    const T* x = inp + (size_t)n * C;
                    T s = 0;
                    #pragma omp simd reduction(+ : s)
                    for (int i = 0; i < C; i++) s += x[i] * w[i];
                    out[(size_t)n * ld_out + o] = init + s;
                }
            }
        }
}

template <typename T>
void matmul_backward_input(T* dinp, const T* dout, const T* weight, int N, int C, int OC, int ld_dout,
                           bool accumulate = true) {
    // dinp (N,C) (+)= dout (N,OC) @ weight (OC,C)
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const T* d = dout + (size_t)n * ld_dout;
        T* dx = dinp + (size_t)n * C;
        if (!accumulate) std::fill(dx, dx + C, T(0));
        for (int o = 0; o < OC; o++) {
            T g = d[o];
            if (g == T(0)) continue;  // masked positions: exact zeros, skip the work
            const T* w = weight + (size_t)o * C;
            #pragma omp simd
            for (int i = 0; i < C; i++) dx[i] += g * w[i];
        }
    }
}

template <typename T>
void matmul_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, int N, int C, int ld_dout, int o0,
                            int o1) {
    // dweight[o0:o1] += dout[:, o0:o1]^T @ inp; dbias[o0:o1] += column sums of dout
    #pragma omp parallel for
    for (int o = o0; o < o1; o++) {
        T* dw = dweight + (size_t)o * C;
        T db = 0;
        for (int n = 0; n < N; n++) {
            T g = dout[(size_t)n * ld_dout + o];
            if (g == T(0)) continue;
            db += g;
            const T* x = inp + (size_t)n * C;
            #pragma omp simd
            for (int i = 0; i < C; i++) dw[i] += g * x[i];
        }
        if (dbias) dbias[o] += db;
    }
}

#endif  // GKD_BLAS

template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int C, int OC, int ld_dout) {
    matmul_backward_input(dinp, dout, weight, N, C, OC, ld_dout);
    matmul_backward_weight(dweight, dbias, dout, inp, N, C, ld_dout, 0, OC);
}

// ----------------------------------------------------------------------------
// decode's matmuls: a few rows against weights packed once per generation

// A decode step runs one new token per row: matmuls of a few rows (16 per thread at the
// reference step, 1-2 per thread for the GPT-2 pair) against every weight. Through sgemm
// each call first repacks the whole weight into its own panel layout (a seventh of
// sampling's time in perf at the reference step), and with two rows per thread each
// thread reads every weight from memory. So a generation packs the weights once
// (DecodeWeights) in panels of DECODE_PANEL output channels, (ceil(OC / 16), K, 16) with
// zeros past OC, and its decode steps multiply with matmul_forward_packed:
// - a register tile of up to 6 rows x 16 channels (12 AVX accumulators): per k, two loads
//   of the panel and one broadcast per row;
// - each output is one fma chain over k in order, then + bias: its rounding does not
//   depend on the rows around it, on the tile it lands in or on the thread split, so a
//   row's sample still does not depend on its batch; the scalar fallback (no AVX2/FMA)
//   rounds the same (std::fma), and a unit test holds both to that chain exactly;
// - panels are taken in groups that fit in L2, each group against every row tile; with
//   few rows and all threads on one call, threads take groups (each weight read once).
constexpr int DECODE_PANEL = 16;
constexpr int DECODE_TILE_ROWS = 6;

inline int panel_count(int OC) { return (OC + DECODE_PANEL - 1) / DECODE_PANEL; }
inline size_t packed_weight_size(int OC, int K) { return (size_t)panel_count(OC) * K * DECODE_PANEL; }

// One weight (OC, K) in panels: panels[(p * K + k) * 16 + j] = weight[p * 16 + j][k].
inline void pack_weight_panels(float* panels, const float* weight, int OC, int K) {
    const int np = panel_count(OC);
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++)
        for (int k = 0; k < K; k++)
            for (int j = 0; j < DECODE_PANEL; j++) {
                const int o = p * DECODE_PANEL + j;
                panels[((size_t)p * K + k) * DECODE_PANEL + j] = o < OC ? weight[(size_t)o * K + k] : 0.0f;
            }
}

// out rows [0, R) x channels [0, cols) of one panel: out[i][j] = chain_k(x[i][k] * w[k][j]) + bias[j]
// (ACCUMULATE: out[i][j] += the chain, no bias)
//   x (R, K): x[i][k] at x + i * ldx + k * ldk (ldk 1: rows; ldx 1: a transpose, read in place)
//   panel (K, 16), row stride ldp (16: packed; wider: 16 columns of a matrix, read in place);
//   out row stride ld_out; bias (cols) or null
template <int R, bool ACCUMULATE = false>
inline void packed_tile(float* out, size_t ld_out, const float* x, size_t ldx, size_t ldk, int K, const float* panel,
                        size_t ldp, const float* bias, int cols) {
#if defined(__AVX2__) && defined(__FMA__)
    __m256 lo[R], hi[R];
    #pragma GCC unroll 6
    for (int i = 0; i < R; i++) { lo[i] = _mm256_setzero_ps(); hi[i] = _mm256_setzero_ps(); }
    for (int k = 0; k < K; k++) {
        const __m256 w_lo = _mm256_loadu_ps(panel + (size_t)k * ldp);
        const __m256 w_hi = _mm256_loadu_ps(panel + (size_t)k * ldp + 8);
        const float* xk = x + (size_t)k * ldk;
        #pragma GCC unroll 6
        for (int i = 0; i < R; i++) {
            const __m256 xi = _mm256_broadcast_ss(xk + (size_t)i * ldx);
            lo[i] = _mm256_fmadd_ps(xi, w_lo, lo[i]);
            hi[i] = _mm256_fmadd_ps(xi, w_hi, hi[i]);
        }
    }
    #pragma GCC unroll 6
    for (int i = 0; i < R; i++) {
        float* o = out + (size_t)i * ld_out;
        if (cols == DECODE_PANEL) {
            // what the chain is added to: out itself, the bias, or nothing
            const float* base = ACCUMULATE ? o : bias;
            const __m256 b_lo = base ? _mm256_loadu_ps(base) : _mm256_setzero_ps();
            const __m256 b_hi = base ? _mm256_loadu_ps(base + 8) : _mm256_setzero_ps();
            _mm256_storeu_ps(o, _mm256_add_ps(b_lo, lo[i]));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(b_hi, hi[i]));
        } else {
            float acc[DECODE_PANEL];
            _mm256_storeu_ps(acc, lo[i]);
            _mm256_storeu_ps(acc + 8, hi[i]);
            for (int j = 0; j < cols; j++) o[j] = (ACCUMULATE ? o[j] : bias ? bias[j] : 0.0f) + acc[j];
        }
    }
#else
    for (int i = 0; i < R; i++)
        for (int j = 0; j < cols; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc = std::fma(x[(size_t)i * ldx + (size_t)k * ldk], panel[(size_t)k * ldp + j], acc);
            float* o = out + (size_t)i * ld_out + j;
            *o = (ACCUMULATE ? *o : bias ? bias[j] : 0.0f) + acc;
        }
#endif
}

// packed_tile for R = rows in [1, DECODE_TILE_ROWS], chosen at run time
template <bool ACCUMULATE = false>
inline void packed_tile_rows(int rows, float* out, size_t ld_out, const float* x, size_t ldx, size_t ldk, int K,
                             const float* panel, size_t ldp, const float* bias, int cols) {
    switch (rows) {
        case 1: return packed_tile<1, ACCUMULATE>(out, ld_out, x, ldx, ldk, K, panel, ldp, bias, cols);
        case 2: return packed_tile<2, ACCUMULATE>(out, ld_out, x, ldx, ldk, K, panel, ldp, bias, cols);
        case 3: return packed_tile<3, ACCUMULATE>(out, ld_out, x, ldx, ldk, K, panel, ldp, bias, cols);
        case 4: return packed_tile<4, ACCUMULATE>(out, ld_out, x, ldx, ldk, K, panel, ldp, bias, cols);
        case 5: return packed_tile<5, ACCUMULATE>(out, ld_out, x, ldx, ldk, K, panel, ldp, bias, cols);
        default: return packed_tile<6, ACCUMULATE>(out, ld_out, x, ldx, ldk, K, panel, ldp, bias, cols);
    }
}

// out (N, ld_out)[:, :OC] = inp (N, K) @ weight (OC, K)^T + bias (OC), weight as packed
// by pack_weight_panels. Runs on all threads, or on the caller's alone inside a parallel region.
inline void matmul_forward_packed(float* out, const float* inp, const float* panels, const float* bias, int N, int K,
                                  int OC, int ld_out) {
    const int np = panel_count(OC);
    const size_t panel_size = (size_t)K * DECODE_PANEL;
    int group = std::max(1, (int)((256 << 10) / (panel_size * sizeof(float))));  // panels per 256 KB
    if (!omp_in_parallel()) group = std::min(group, (np + omp_get_max_threads() - 1) / omp_get_max_threads());
    const int ngroups = (np + group - 1) / group;
    #pragma omp parallel for schedule(static)
    for (int g = 0; g < ngroups; g++)
        for (int n = 0; n < N; n += DECODE_TILE_ROWS)
            for (int p = g * group; p < std::min(np, (g + 1) * group); p++)
                packed_tile_rows(std::min(DECODE_TILE_ROWS, N - n), out + (size_t)n * ld_out + (size_t)p * DECODE_PANEL,
                                 ld_out, inp + (size_t)n * K, K, 1, K, panels + p * panel_size, DECODE_PANEL,
                                 bias ? bias + (size_t)p * DECODE_PANEL : nullptr,
                                 std::min(DECODE_PANEL, OC - p * DECODE_PANEL));
}

// ----------------------------------------------------------------------------
// causal attention of one (row, head) on the packed tile (float)
//
// Attention at T <= a few hundred is many small products per (row, head): (T, hs) x (hs, T)
// and back. As sgemm calls (a 95 x 95 x 32 product took 12 us, 48 GFLOP/s, and the
// backward makes four per (row, head)) their per-call cost ruled: attention was about a
// tenth of the teacher's forward and of the student's backward at the reference step.
// Here each (row, head) packs its operands into panels of 16 (keys or channels; a copy of
// O(T hs) values against O(T^2 hs) work) and runs packed_tile over them, skipping the
// blocks above the causal diagonal. Each output is one fma chain in order, so a row's
// values do not depend on the batch. The zeros of the masked part, where a chain runs
// over them, add exactly nothing.

// Panel sizes: T rounded up to 16 for key panels, hs rounded up for channel panels.
inline int panel_round(int n) { return panel_count(n) * DECODE_PANEL; }

// src rows [0, n) (row stride ld), channels [0, width) -> panels of 16 rows, one per 16
// rows: out[(p * width + c) * 16 + r] = src[(p * 16 + r) * ld + c] (zeros past n). A
// (n, width) matrix's transpose as "weight" panels: x @ src^T on packed_tile.
inline void pack_rows_as_panels(float* out, const float* src, size_t ld, int n, int width) {
    for (int p = 0; p < panel_count(n); p++) {
        float* panel = out + (size_t)p * width * DECODE_PANEL;
        for (int r = 0; r < DECODE_PANEL; r++) {
            const int row = p * DECODE_PANEL + r;
            const float* s = src + (size_t)row * ld;
            if (row < n)
                for (int c = 0; c < width; c++) panel[(size_t)c * DECODE_PANEL + r] = s[c];
            else
                for (int c = 0; c < width; c++) panel[(size_t)c * DECODE_PANEL + r] = 0.0f;
        }
    }
}

// src rows [0, n) (row stride ld), channels [0, width) -> panels of 16 channels:
// out[(p * n + r) * 16 + j] = src[r * ld + p * 16 + j] (zeros past width): x @ src on packed_tile.
inline void pack_columns_as_panels(float* out, const float* src, size_t ld, int n, int width) {
    for (int p = 0; p < panel_count(width); p++) {
        const int cols = std::min(DECODE_PANEL, width - p * DECODE_PANEL);
        for (int r = 0; r < n; r++) {
            float* o = out + ((size_t)p * n + r) * DECODE_PANEL;
            const float* s = src + (size_t)r * ld + p * DECODE_PANEL;
            for (int j = 0; j < cols; j++) o[j] = s[j];
            for (int j = cols; j < DECODE_PANEL; j++) o[j] = 0.0f;
        }
    }
}

// Scratch (floats) one (row, head) of the kernels below needs, for up to T positions.
inline size_t attention_head_scratch(int T, int hs) {
    return (size_t)T * T + (size_t)panel_round(T) * panel_round(hs) * 2;
}

// A matrix's channels [0, width) as panels of 16 for packed_tile: read in place (row
// stride ld) when width is a multiple of 16, else copied into `room` with zeros past width
// (a panel must not read past a row). Returns the first panel; panel p starts p * 16
// columns on (in place) or p * n rows on (copied); *ldp gets the panels' row stride.
inline const float* columns_as_panels(const float* src, size_t ld, int n, int width, float* room, size_t* ldp,
                                      size_t* panel_step) {
    if (width % DECODE_PANEL == 0) {
        *ldp = ld;
        *panel_step = DECODE_PANEL;
        return src;
    }
    pack_columns_as_panels(room, src, ld, n, width);
    *ldp = DECODE_PANEL;
    *panel_step = (size_t)n * DECODE_PANEL;
    return room;
}

// Through a causal softmax, row by row: g (T, T) holds dA and becomes
// dS = A (dA - rowsum(A dA)) scale, zeros above the diagonal (att: A, (T, T)).
template <typename T>
void causal_softmax_backward(T* g, const T* att, int Tn, T scale) {
    for (int t = 0; t < Tn; t++) {
        const T* ar = att + (size_t)t * Tn;
        T* gr = g + (size_t)t * Tn;
        T dot = 0;
        #pragma omp simd reduction(+ : dot)
        for (int j = 0; j <= t; j++) dot += ar[j] * gr[j];
        for (int j = 0; j <= t; j++) gr[j] = ar[j] * (gr[j] - dot) * scale;
        std::fill(gr + t + 1, gr + Tn, T(0));
    }
}

// Queries t in [q0, q1), at positions kbase + t, attend causally to keys [0, kbase + t]:
//   q (rows t, stride ldq), k and v (rows j, stride ldkv), out (rows t, stride ldo) =
//   softmax(q k^T scale) v. Query t's weights are left in att row t - q0 (stride ld_att,
//   at least kbase + q1 wide): [0, kbase + t] then zeros up to kbase + q1.
inline void attention_head_forward(float* out, size_t ldo, float* att, size_t ld_att, const float* q, size_t ldq,
                                   const float* k, const float* v, size_t ldkv, int q0, int q1, int kbase, int hs,
                                   float scale, float* scratch) {
    const int nk = kbase + q1;  // keys any query here needs
    float* key_panels = scratch;  // (keys / 16, hs, 16): K^T, packed
    pack_rows_as_panels(key_panels, k, ldkv, nk, hs);
    size_t ldv, v_step;
    const float* value_panels = columns_as_panels(v, ldkv, nk, hs, key_panels + (size_t)panel_round(nk) * hs, &ldv,
                                                  &v_step);
    for (int t0 = q0; t0 < q1; t0 += DECODE_TILE_ROWS) {
        const int R = std::min(DECODE_TILE_ROWS, q1 - t0), kc = kbase + t0 + R;  // the tile's keys
        float* S = att + (size_t)(t0 - q0) * ld_att;                               // (R, kc)
        for (int p = 0; p < panel_count(kc); p++)
            packed_tile_rows(R, S + p * DECODE_PANEL, ld_att, q + (size_t)t0 * ldq, ldq, 1, hs,
                             key_panels + (size_t)p * hs * DECODE_PANEL, DECODE_PANEL, nullptr,
                             std::min(DECODE_PANEL, kc - p * DECODE_PANEL));
        for (int r = 0; r < R; r++) {
            float* row = S + (size_t)r * ld_att;
            const int valid = kbase + t0 + r + 1;
            float maxv = -INFINITY, sum = 0;
            #pragma omp simd reduction(max : maxv)
            for (int j = 0; j < valid; j++) maxv = std::max(maxv, row[j] * scale);
            #pragma omp simd reduction(+ : sum)
            for (int j = 0; j < valid; j++) { row[j] = exp_fast(row[j] * scale - maxv); sum += row[j]; }
            const float inv = 1.0f / sum;
            for (int j = 0; j < valid; j++) row[j] *= inv;
            std::fill(row + valid, row + nk, 0.0f);  // (the tile below reads up to kc)
        }
        for (int p = 0; p < panel_count(hs); p++)
            packed_tile_rows(R, out + (size_t)t0 * ldo + p * DECODE_PANEL, ldo, S, ld_att, 1, kc,
                             value_panels + p * v_step, ldv, nullptr, std::min(DECODE_PANEL, hs - p * DECODE_PANEL));
    }
}

// The backward of attention_head_forward over positions [0, T) (kbase 0): given the
// weights att (T, T) and dout (rows t, stride ldo), dq, dk and dv (rows, stride ld_d) get
// (ACCUMULATE: +=) the gradients of q, k and v (rows, stride ldqkv). dS^T and A^T are
// read in place, down their columns (packed_tile's ldk), and so are K, Q and dO's channels.
template <bool ACCUMULATE>
void attention_head_backward(float* dq, float* dk, float* dv, size_t ld_d, const float* dout, size_t ldo,
                             const float* q, const float* k, const float* v, size_t ldqkv, const float* att, int T,
                             int hs, float scale, float* scratch) {
    const size_t P = (size_t)panel_round(T) * panel_round(hs);
    float* g = scratch;                 // (T, T) dA, then dS
    float* room = g + (size_t)T * T;    // (2, P): panels that must be copied
    // dA = dO V^T (row t: keys [0, t] of its tile), then through the softmax:
    // dS = A (dA - rowsum(A dA)) scale, zeros above the diagonal
    pack_rows_as_panels(room, v, ldqkv, T, hs);
    for (int t0 = 0; t0 < T; t0 += DECODE_TILE_ROWS) {
        const int R = std::min(DECODE_TILE_ROWS, T - t0), kc = t0 + R;
        for (int p = 0; p < panel_count(kc); p++)
            packed_tile_rows(R, g + (size_t)t0 * T + p * DECODE_PANEL, T, dout + (size_t)t0 * ldo, ldo, 1, hs,
                             room + (size_t)p * hs * DECODE_PANEL, DECODE_PANEL, nullptr,
                             std::min(DECODE_PANEL, kc - p * DECODE_PANEL));
    }
    causal_softmax_backward(g, att, T, scale);
    // dQ = dS K: query t sums over keys [0, t] (its tile's keys: zeros past t)
    // dK = dS^T Q and dV = A^T dO: key j sums over queries [j, T) (from its tile's first key:
    // zeros before j), reading dS and A down their columns
    size_t ldk_, k_step, ldq_, q_step, ldo_, o_step;
    const float* kp = columns_as_panels(k, ldqkv, T, hs, room, &ldk_, &k_step);
    const float* qp = columns_as_panels(q, ldqkv, T, hs, room + P, &ldq_, &q_step);
    for (int t0 = 0; t0 < T; t0 += DECODE_TILE_ROWS) {
        const int R = std::min(DECODE_TILE_ROWS, T - t0);
        for (int p = 0; p < panel_count(hs); p++) {
            const int cols = std::min(DECODE_PANEL, hs - p * DECODE_PANEL);
            packed_tile_rows<ACCUMULATE>(R, dq + (size_t)t0 * ld_d + p * DECODE_PANEL, ld_d, g + (size_t)t0 * T, T, 1,
                                         t0 + R, kp + p * k_step, ldk_, nullptr, cols);
            packed_tile_rows<ACCUMULATE>(R, dk + (size_t)t0 * ld_d + p * DECODE_PANEL, ld_d, g + (size_t)t0 * T + t0,
                                         1, T, T - t0, qp + p * q_step + (size_t)t0 * ldq_, ldq_, nullptr, cols);
        }
    }
    const float* op = columns_as_panels(dout, ldo, T, hs, room, &ldo_, &o_step);
    for (int t0 = 0; t0 < T; t0 += DECODE_TILE_ROWS) {
        const int R = std::min(DECODE_TILE_ROWS, T - t0);
        for (int p = 0; p < panel_count(hs); p++)
            packed_tile_rows<ACCUMULATE>(R, dv + (size_t)t0 * ld_d + p * DECODE_PANEL, ld_d, att + (size_t)t0 * T + t0,
                                         1, T, T - t0, op + p * o_step + (size_t)t0 * ldo_, ldo_, nullptr,
                                         std::min(DECODE_PANEL, hs - p * DECODE_PANEL));
    }
}

// Every weight of a model in panels, for the decode steps of one generation: packed at
// its start (the weights change between generations: training steps), unused after.
struct DecodeWeights {
    std::vector<float> panels;
    std::vector<size_t> offset;     // (L, 4): qkv, attproj, fc, fcproj; then the LM head (wte)
    const float* source = nullptr;  // the parameters packed, while ready
    bool ready = false;
    const float* layer(int l, int which) const { return panels.data() + offset[(size_t)l * 4 + which]; }
    const float* lm_head() const { return panels.data() + offset.back(); }
};

inline void pack_decode_weights(DecodeWeights& d, const GPT<float>& m) {
    const GPTConfig& c = m.config;
    const ParameterTensors<float>& p = m.params;
    const int C = c.channels, L = c.num_layers;
    const struct { const float* w; int OC, K; size_t stride; } kinds[4] = {
        {p.qkvw, 3 * C, C, (size_t)3 * C * C}, {p.attprojw, C, C, (size_t)C * C},
        {p.fcw, 4 * C, C, (size_t)4 * C * C}, {p.fcprojw, C, 4 * C, (size_t)4 * C * C}};
    d.offset.clear();
    size_t total = 0;
    for (int l = 0; l < L; l++)
        for (const auto& k : kinds) { d.offset.push_back(total); total += packed_weight_size(k.OC, k.K); }
    d.offset.push_back(total);
    total += packed_weight_size(c.vocab_size, C);
    if (d.panels.size() < total) d.panels.assign(total, 0.0f);
    for (int l = 0; l < L; l++)
        for (int w = 0; w < 4; w++)
            pack_weight_panels(d.panels.data() + d.offset[(size_t)l * 4 + w], kinds[w].w + l * kinds[w].stride,
                               kinds[w].OC, kinds[w].K);
    pack_weight_panels(d.panels.data() + d.offset.back(), p.wte, c.vocab_size, C);
    d.source = m.params_memory.data();
    d.ready = true;
}

#ifdef GKD_BLAS
// Queries per block in the GEMM attention of many new tokens (gpt_infer in fp64; float
// runs attention_head_forward): block [q0, q1) multiplies keys [0, q1) only. When float
// used it too, the teacher forward at T = 96 took 157-174 ms with 32, 160-176 with 48
// and 170-192 with whole squares on the reference machine: 32 kept.
constexpr int ATTENTION_QUERY_BLOCK = 32;

// attention_forward/backward_any: any T (the fp64 tests' reference; float runs the packed
// tile, attention_head_forward/backward, below). With a BLAS, per (row, head) as GEMMs
// over the whole (T, T) score matrix (the masked upper triangle computed and zeroed), one
// (row, head) per thread; without one, the loops after them.
template <typename T>
void attention_forward_any(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH) {
    // qkv (B,T,3C) holds [q | k | v]; out (B,T,C); att (B,NH,T,T) causal softmax weights
    const int hs = C / NH;
    const T scale = T(1) / std::sqrt(T(hs));
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const T* q = qkv + (size_t)b * Tn * 3 * C + h * hs;  // (T, hs), row stride 3C
            T* a = att + ((size_t)b * NH + h) * Tn * Tn;         // (T, T)
            gemm(false, true, Tn, Tn, hs, q, 3 * C, q + C, 3 * C, T(0), a, Tn);  // Q K^T
            for (int t = 0; t < Tn; t++) {
                T* row = a + (size_t)t * Tn;
                T maxv = -INFINITY, sum = 0;
                #pragma omp simd reduction(max : maxv)
                for (int t2 = 0; t2 <= t; t2++) maxv = std::max(maxv, row[t2] * scale);
                #pragma omp simd reduction(+ : sum)
                for (int t2 = 0; t2 <= t; t2++) { row[t2] = exp_fast(row[t2] * scale - maxv); sum += row[t2]; }
                const T inv = T(1) / sum;
                for (int t2 = 0; t2 <= t; t2++) row[t2] *= inv;
                std::fill(row + t + 1, row + Tn, T(0));
            }
            gemm(false, false, Tn, hs, Tn, a, Tn, q + 2 * C, 3 * C, T(0), out + (size_t)b * Tn * C + h * hs, C);  // A V
        }
}

// scratch: at least (omp_get_max_threads(), Tn, Tn) values
template <typename T>
void attention_backward_any(T* dqkv, const T* dout, const T* qkv, const T* att, T* scratch,
                            int B, int Tn, int C, int NH, bool accumulate) {
    const int hs = C / NH;
    const T scale = T(1) / std::sqrt(T(hs));
    const T beta = accumulate ? T(1) : T(0);  // each GEMM below writes its (row, head) slice once
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const T* q = qkv + (size_t)b * Tn * 3 * C + h * hs;   // Q, then K at +C, V at +2C
            T* dq = dqkv + (size_t)b * Tn * 3 * C + h * hs;
            const T* d = dout + (size_t)b * Tn * C + h * hs;      // (T, hs), row stride C
            const T* a = att + ((size_t)b * NH + h) * Tn * Tn;
            T* g = scratch + (size_t)omp_get_thread_num() * Tn * Tn;  // dA, then dS
            gemm(false, true, Tn, Tn, hs, d, C, q + 2 * C, 3 * C, T(0), g, Tn);          // dA = dO V^T
            gemm(true, false, Tn, hs, Tn, a, Tn, d, C, beta, dq + 2 * C, 3 * C);          // dV += A^T dO
            causal_softmax_backward(g, a, Tn, scale);
            gemm(false, false, Tn, hs, Tn, g, Tn, q + C, 3 * C, beta, dq, 3 * C);         // dQ += dS K
            gemm(true, false, Tn, hs, Tn, g, Tn, q, 3 * C, beta, dq + C, 3 * C);          // dK += dS^T Q
        }
}
#else
template <typename T>
void attention_forward_any(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH) {
    // qkv (B,T,3C) holds [q | k | v]; out (B,T,C); att (B,NH,T,T) causal softmax weights
    int hs = C / NH;
    T scale = T(1) / std::sqrt(T(hs));
    #pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++)
            for (int h = 0; h < NH; h++) {
                const T* q = qkv + ((size_t)b * Tn + t) * 3 * C + h * hs;
                T* a = att + (((size_t)b * NH + h) * Tn + t) * Tn;
                T maxv = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const T* k = qkv + ((size_t)b * Tn + t2) * 3 * C + C + h * hs;
                    T s = 0;
                    #pragma omp simd reduction(+ : s)
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    s *= scale;
                    a[t2] = s;
                    maxv = std::max(maxv, s);
                }
                T sum = 0;
                for (int t2 = 0; t2 <= t; t2++) { a[t2] = exp_fast(a[t2] - maxv); sum += a[t2]; }
                T inv = T(1) / sum;
                for (int t2 = 0; t2 < Tn; t2++) a[t2] = t2 <= t ? a[t2] * inv : T(0);
                T* o = out + ((size_t)b * Tn + t) * C + h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const T* v = qkv + ((size_t)b * Tn + t2) * 3 * C + 2 * C + h * hs;
                    for (int i = 0; i < hs; i++) o[i] += a[t2] * v[i];
                }
            }
}

// scratch: at least (omp_get_max_threads(), Tn) values
template <typename T>
void attention_backward_any(T* dqkv, const T* dout, const T* qkv, const T* att, T* scratch,
                            int B, int Tn, int C, int NH, bool accumulate) {
    int hs = C / NH;
    T scale = T(1) / std::sqrt(T(hs));
    // one (b, h) per task: every write below stays inside that row's head slice
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            T* datt = scratch + (size_t)omp_get_thread_num() * Tn;
            for (int t = 0; t < Tn && !accumulate; t++)
                for (int part = 0; part < 3; part++) {
                    T* slice = dqkv + ((size_t)b * Tn + t) * 3 * C + part * C + h * hs;
                    std::fill(slice, slice + hs, T(0));
                }
            for (int t = 0; t < Tn; t++) {
                const T* a = att + (((size_t)b * NH + h) * Tn + t) * Tn;
                const T* d = dout + ((size_t)b * Tn + t) * C + h * hs;
                const T* q = qkv + ((size_t)b * Tn + t) * 3 * C + h * hs;
                T* dq = dqkv + ((size_t)b * Tn + t) * 3 * C + h * hs;
                // through out = sum a v
                T dot_ad = 0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const T* v = qkv + ((size_t)b * Tn + t2) * 3 * C + 2 * C + h * hs;
                    T* dv = dqkv + ((size_t)b * Tn + t2) * 3 * C + 2 * C + h * hs;
                    T s = 0;
                    #pragma omp simd reduction(+ : s)
                    for (int i = 0; i < hs; i++) { s += d[i] * v[i]; dv[i] += a[t2] * d[i]; }
                    datt[t2] = s;
                    dot_ad += a[t2] * s;
                }
                // through the softmax, then the scaled dot products
                for (int t2 = 0; t2 <= t; t2++) {
                    T dpre = a[t2] * (datt[t2] - dot_ad) * scale;
                    const T* k = qkv + ((size_t)b * Tn + t2) * 3 * C + C + h * hs;
                    T* dk = dqkv + ((size_t)b * Tn + t2) * 3 * C + C + h * hs;
                    for (int i = 0; i < hs; i++) { dq[i] += dpre * k[i]; dk[i] += dpre * q[i]; }
                }
            }
        }
}
#endif  // GKD_BLAS

// f(b, h, hs, scale) for every (row, head), one per task (float attention's loop)
template <typename F>
void for_each_row_head(int B, int NH, int C, F f) {
    const int hs = C / NH;
    const float scale = 1.0f / std::sqrt((float)hs);
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) f(b, h, hs, scale);
}

// qkv (B,T,3C) holds [q | k | v]; out (B,T,C); att (B,NH,T,T) causal softmax weights.
// One (row, head) per task.
template <typename T>
void attention_forward(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH) {
    if constexpr (!std::is_same_v<T, float>) {
        attention_forward_any(out, att, qkv, B, Tn, C, NH);
    } else {
        for_each_row_head(B, NH, C, [&](int b, int h, int hs, float scale) {
            static thread_local std::vector<float> scratch;  // grows once, reused
            if (scratch.size() < attention_head_scratch(Tn, hs)) scratch.resize(attention_head_scratch(Tn, hs));
            const float* q = qkv + (size_t)b * Tn * 3 * C + h * hs;
            attention_head_forward(out + (size_t)b * Tn * C + h * hs, C, att + ((size_t)b * NH + h) * Tn * Tn, Tn, q,
                                   3 * C, q + C, q + 2 * C, 3 * C, 0, Tn, 0, hs, scale, scratch.data());
        });
    }
}

// dqkv (B,T,3C) (+)= the gradient of qkv, from dout (B,T,C) and the forward's att.
// scratch: (omp_get_max_threads(), attention_scratch_per_thread(Tn, hs)) values
template <typename T>
size_t attention_scratch_per_thread(int Tn, int hs) {
    if constexpr (std::is_same_v<T, float>) return attention_head_scratch(Tn, hs);  // which holds a (T, T) first
    return (size_t)Tn * Tn;
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, T* scratch,
                        int B, int Tn, int C, int NH, bool accumulate = true) {
    if constexpr (!std::is_same_v<T, float>) {
        attention_backward_any(dqkv, dout, qkv, att, scratch, B, Tn, C, NH, accumulate);
    } else {
        for_each_row_head(B, NH, C, [&](int b, int h, int hs, float scale) {
            float* sc = scratch + (size_t)omp_get_thread_num() * attention_scratch_per_thread<float>(Tn, hs);
            const float* q = qkv + (size_t)b * Tn * 3 * C + h * hs;
            float* dq = dqkv + (size_t)b * Tn * 3 * C + h * hs;
            const float* d = dout + (size_t)b * Tn * C + h * hs;
            const float* a = att + ((size_t)b * NH + h) * Tn * Tn;
            auto run = accumulate ? attention_head_backward<true> : attention_head_backward<false>;
            run(dq, dq + C, dq + 2 * C, 3 * C, d, C, q, q + C, q + 2 * C, 3 * C, a, Tn, hs, scale, sc);
        });
    }
}


template <typename T>
inline T gelu_scalar(T x) {
    const T s = T(0.7978845608028654);  // sqrt(2/pi)
    return T(0.5) * x * (T(1) + tanh_fast(s * (x + T(0.044715) * x * x * x)));
}

template <typename T>
void gelu_forward(T* out, const T* inp, size_t N) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) out[i] = gelu_scalar(inp[i]);
}

template <typename T>
inline T gelu_derivative(T x) {
    const T s = T(0.7978845608028654);
    T u = s * (x + T(0.044715) * x * x * x);
    T th = tanh_fast(u);
    T sech2 = T(1) - th * th;
    return T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * s * (T(1) + T(3 * 0.044715) * x * x);
}

// accumulate = false overwrites dinp instead (gpt_backward's first write of it)
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t N, bool accumulate = true) {
    if (accumulate) {
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < N; i++) dinp[i] += gelu_derivative(inp[i]) * dout[i];
    } else {
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < N; i++) dinp[i] = gelu_derivative(inp[i]) * dout[i];
    }
}

template <typename T>
void residual_forward(T* out, const T* a, const T* b, size_t N) {
    #pragma omp parallel for
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

template <typename T>
void residual_backward(T* da, T* db, const T* dout, size_t N) {
    #pragma omp parallel for
    for (size_t i = 0; i < N; i++) { da[i] += dout[i]; db[i] += dout[i]; }
}

// ----------------------------------------------------------------------------
// the training forward and backward

// Points the activations and their gradients for (B, T) into their two allocations (host
// or device memory alike). The logits' gradient is the logits buffer itself: one (B, T, Vp)
// buffer per model.
template <typename T>
void point_training_activations(ActivationTensors<T>& acts, ActivationTensors<T>& grads, T* acts_memory,
                                T* grads_memory, const GPTConfig& c, int B, int Tn) {
    size_t sizes[NUM_ACTIVATION_TENSORS];
    fill_activation_sizes(sizes, c, B, Tn);
    point_activations(acts, acts_memory, sizes);
    sizes[NUM_ACTIVATION_TENSORS - 1] = 0;
    point_activations(grads, grads_memory, sizes);
    grads.logits = acts.logits;
}

// Re-points the activation tensors for the current (B, T) inside the allocation.
template <typename T>
void gpt_shape_activations(GPT<T>& m, int B, int Tn) {
    point_training_activations(m.acts, m.grads_acts, m.acts_memory.data(), m.grads_acts_memory.data(), m.config, B, Tn);
}

template <typename T>
void gpt_prepare_training(GPT<T>& m, int B, int Tn) {
    GKD_ASSERT(Tn <= m.config.max_seq_len, "batch longer than the context");
    if (m.grads_memory.empty()) {
        m.grads_memory.assign(m.num_parameters, T(0));
        point_parameters(m.grads, m.grads_memory.data(), m.param_sizes);
    }
    if (B <= m.max_B && Tn <= m.max_T) return;
    m.max_B = std::max(B, m.max_B);
    m.max_T = std::max(Tn, m.max_T);
    size_t sizes[NUM_ACTIVATION_TENSORS], total = 0;
    fill_activation_sizes(sizes, m.config, m.max_B, m.max_T);
    for (size_t s : sizes) total += s;
    m.acts_memory.assign(total, T(0));
    m.grads_acts_memory.assign(total - sizes[NUM_ACTIVATION_TENSORS - 1], T(0));  // all but the logits
    gpt_shape_activations(m, m.max_B, m.max_T);
    m.inputs.assign((size_t)m.max_B * m.max_T, 0);
}


// How many threads share out a pass over B independent rows (the training forward and
// backward, gpt_infer): each thread then runs its contiguous rows through the whole model
// alone, its BLAS calls single-threaded, with no barrier per layer. On a 2-core machine a
// (3072 x 128) x (128 x 384) sgemm ran at 93 GFLOP/s as one threaded call and 146 as two
// halves side by side. Few rows (a single prompt, a tiny test batch): 1, and the threads
// work together on each layer instead. Rows never interact, so the split does not change
// a row's values.
inline int row_split_threads(int B) {
    const int n = omp_get_max_threads();
    return n > 1 && B >= 2 * n && !omp_in_parallel() ? n : 1;
}

// gpt_forward on rows [b0, b1) of the batch (the activations' rows of those batch rows).
template <typename T>
void gpt_forward_rows(GPT<T>& m, int b0, int b1) {
    const GPTConfig& c = m.config;
    const int B = m.batch_B, Tn = m.batch_T, C = c.channels, L = c.num_layers, NH = c.num_heads, N = B * Tn;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    const int nb = b1 - b0, n = nb * Tn;  // this share: nb rows, n positions
    const size_t r0 = (size_t)b0 * Tn;    // its first position
    ParameterTensors<T>& p = m.params;
    ActivationTensors<T>& a = m.acts;
    encoder_forward(a.encoded + r0 * C, m.inputs.data() + r0, p.wte, p.wpe, nb, Tn, C);
    for (int l = 0; l < L; l++) {
        // offsets of the share in layer l's (B, T, X) slabs
        const size_t oC = ((size_t)l * N + r0) * C, o3 = 3 * oC, o4 = 4 * oC, oN = (size_t)l * N + r0;
        const size_t oAtt = ((size_t)l * B + b0) * NH * Tn * Tn;
        const T* residual = l == 0 ? a.encoded + r0 * C : a.residual3 + oC - (size_t)N * C;
        layernorm_forward(a.ln1 + oC, a.ln1_mean + oN, a.ln1_rstd + oN, residual, p.ln1w + l * C, p.ln1b + l * C, n, C);
        matmul_forward(a.qkv + o3, a.ln1 + oC, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, n, C, 3 * C, 3 * C);
        attention_forward(a.atty + oC, a.att + oAtt, a.qkv + o3, nb, Tn, C, NH);
        matmul_forward(a.attproj + oC, a.atty + oC, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, n, C, C, C);
        residual_forward(a.residual2 + oC, residual, a.attproj + oC, (size_t)n * C);
        layernorm_forward(a.ln2 + oC, a.ln2_mean + oN, a.ln2_rstd + oN, a.residual2 + oC, p.ln2w + l * C,
                          p.ln2b + l * C, n, C);
        matmul_forward(a.fch + o4, a.ln2 + oC, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, n, C, 4 * C, 4 * C);
        gelu_forward(a.fch_gelu + o4, a.fch + o4, (size_t)n * 4 * C);
        matmul_forward(a.fcproj + oC, a.fch_gelu + o4, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, n, 4 * C,
                       C, C);
        residual_forward(a.residual3 + oC, a.residual2 + oC, a.fcproj + oC, (size_t)n * C);
    }
    const T* last = a.residual3 + ((size_t)(L - 1) * N + r0) * C;
    layernorm_forward(a.lnf + r0 * C, a.lnf_mean + r0, a.lnf_rstd + r0, last, p.lnfw, p.lnfb, n, C);
    T* logits = a.logits + r0 * Vp;
    matmul_forward(logits, a.lnf + r0 * C, p.wte, (const T*)nullptr, n, C, V, Vp);
    if (Vp > V)
        for (int i = 0; i < n; i++) std::fill(logits + (size_t)i * Vp + V, logits + (size_t)(i + 1) * Vp, T(0));
}

// tokens (B, T) -> acts.logits (B, T, Vp), keeping what gpt_backward needs.
template <typename T>
void gpt_forward(GPT<T>& m, const int* tokens, int B, int Tn) {
    const GPTConfig& c = m.config;
    gpt_prepare_training(m, B, Tn);
    gpt_shape_activations(m, B, Tn);
    m.batch_B = B;
    m.batch_T = Tn;
    for (int i = 0; i < B * Tn; i++) {
        GKD_ASSERT(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id out of range");
        m.inputs[i] = tokens[i];
    }
    const int parts = row_split_threads(B);
    if (parts == 1) return gpt_forward_rows(m, 0, B);
    #pragma omp parallel num_threads(parts)
    {
        const int t = omp_get_thread_num();
        gpt_forward_rows(m, share_begin(B, t, parts), share_begin(B, t + 1, parts));
    }
}

template <typename T>
void gpt_zero_grad(GPT<T>& m) {
    std::fill(m.grads_memory.begin(), m.grads_memory.end(), T(0));
}

// The first half of gpt_backward, on rows [b0, b1): the activations' gradients, from the
// logits' (which the loss wrote over the logits) down to the embeddings'. `scratch` is
// attention_backward's, for the threads this call runs on.
template <typename T>
void gpt_backward_rows(GPT<T>& m, int b0, int b1, T* scratch) {
    const GPTConfig& c = m.config;
    const int B = m.batch_B, Tn = m.batch_T, C = c.channels, L = c.num_layers, NH = c.num_heads, N = B * Tn;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    const int nb = b1 - b0, n = nb * Tn;
    const size_t r0 = (size_t)b0 * Tn;
    const ParameterTensors<T>& p = m.params;
    const ActivationTensors<T>& a = m.acts;
    ActivationTensors<T>& d = m.grads_acts;
    // Every activation gradient is written before it is read, each tensor's first write
    // overwriting (no zeroing pass over them). The projections' output gradients are the
    // residual stream's: d.residual3 and d.residual2 serve as d.fcproj and d.attproj (which
    // the CPU leaves unused), and a residual's gradient passes through layernorm's backward
    // as its base.
    matmul_backward_input(d.lnf + r0 * C, d.logits + r0 * Vp, p.wte, n, C, V, Vp, false);
    const size_t oLast = ((size_t)(L - 1) * N + r0) * C;
    layernorm_backward_input(d.residual3 + oLast, d.lnf + r0 * C, a.residual3 + oLast, p.lnfw, a.lnf_mean + r0,
                             a.lnf_rstd + r0, n, C, (const T*)nullptr);
    for (int l = L - 1; l >= 0; l--) {
        const size_t oC = ((size_t)l * N + r0) * C, o3 = 3 * oC, o4 = 4 * oC, oN = (size_t)l * N + r0;
        const size_t oAtt = ((size_t)l * B + b0) * NH * Tn * Tn;
        const T* residual = l == 0 ? a.encoded + r0 * C : a.residual3 + oC - (size_t)N * C;
        T* dresidual = l == 0 ? d.encoded + r0 * C : d.residual3 + oC - (size_t)N * C;
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        matmul_backward_input(d.fch_gelu + o4, d.residual3 + oC, p.fcprojw + (size_t)l * C * 4 * C, n, 4 * C, C, C,
                              false);
        gelu_backward(d.fch + o4, a.fch + o4, d.fch_gelu + o4, (size_t)n * 4 * C, false);
        matmul_backward_input(d.ln2 + oC, d.fch + o4, p.fcw + (size_t)l * 4 * C * C, n, C, 4 * C, 4 * C, false);
        layernorm_backward_input(d.residual2 + oC, d.ln2 + oC, a.residual2 + oC, p.ln2w + l * C, a.ln2_mean + oN,
                                 a.ln2_rstd + oN, n, C, (const T*)(d.residual3 + oC));
        // attention: residual2 = residual + attproj(attention(qkv(ln1(residual))))
        matmul_backward_input(d.atty + oC, d.residual2 + oC, p.attprojw + (size_t)l * C * C, n, C, C, C, false);
        attention_backward(d.qkv + o3, d.atty + oC, a.qkv + o3, a.att + oAtt, scratch, nb, Tn, C, NH, false);
        matmul_backward_input(d.ln1 + oC, d.qkv + o3, p.qkvw + (size_t)l * 3 * C * C, n, C, 3 * C, 3 * C, false);
        layernorm_backward_input(dresidual, d.ln1 + oC, residual, p.ln1w + l * C, a.ln1_mean + oN, a.ln1_rstd + oN, n,
                                 C, (const T*)(d.residual2 + oC));
    }
}

// The second half of gpt_backward: every parameter's gradient, a sum over all B*T rows of
// the activations and their gradients. Part `part` of `parts` takes its share of each
// tensor's output channels (each element is summed by one thread, rows in order).
template <typename T>
void gpt_parameter_gradients(GPT<T>& m, int part, int parts) {
    const GPTConfig& c = m.config;
    const int B = m.batch_B, Tn = m.batch_T, C = c.channels, L = c.num_layers, N = B * Tn;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    ParameterTensors<T>& g = m.grads;
    const ActivationTensors<T>& a = m.acts;
    const ActivationTensors<T>& d = m.grads_acts;
    auto share = [&](int total, int& lo, int& hi) {
        lo = share_begin(total, part, parts);
        hi = share_begin(total, part + 1, parts);
    };
    int v0, v1, c0, c1, c30, c31, c40, c41;
    share(V, v0, v1);
    share(C, c0, c1);
    share(3 * C, c30, c31);
    share(4 * C, c40, c41);
    // the LM head and the embedding share wte: the same part takes the same vocabulary rows
    matmul_backward_weight(g.wte, (T*)nullptr, d.logits, a.lnf, N, C, Vp, v0, v1);
    layernorm_backward_params(g.lnfw, g.lnfb, d.lnf, a.residual3 + (size_t)(L - 1) * N * C, a.lnf_mean, a.lnf_rstd, N,
                              C, c0, c1);
    for (int l = L - 1; l >= 0; l--) {
        const size_t oC = (size_t)l * N * C, o3 = 3 * oC, o4 = 4 * oC, oN = (size_t)l * N;
        const T* residual = l == 0 ? a.encoded : a.residual3 + oC - (size_t)N * C;
        // (the projections' output gradients are the residual stream's: gpt_backward_rows)
        matmul_backward_weight(g.fcprojw + (size_t)l * C * 4 * C, g.fcprojb + l * C, d.residual3 + oC,
                               a.fch_gelu + o4, N, 4 * C, C, c0, c1);
        matmul_backward_weight(g.fcw + (size_t)l * 4 * C * C, g.fcb + l * 4 * C, d.fch + o4, a.ln2 + oC, N, C, 4 * C,
                               c40, c41);
        layernorm_backward_params(g.ln2w + l * C, g.ln2b + l * C, d.ln2 + oC, a.residual2 + oC, a.ln2_mean + oN,
                                  a.ln2_rstd + oN, N, C, c0, c1);
        matmul_backward_weight(g.attprojw + (size_t)l * C * C, g.attprojb + l * C, d.residual2 + oC, a.atty + oC, N,
                               C, C, c0, c1);
        matmul_backward_weight(g.qkvw + (size_t)l * 3 * C * C, g.qkvb + l * 3 * C, d.qkv + o3, a.ln1 + oC, N, C, 3 * C,
                               c30, c31);
        layernorm_backward_params(g.ln1w + l * C, g.ln1b + l * C, d.ln1 + oC, residual, a.ln1_mean + oN, a.ln1_rstd + oN,
                                  N, C, c0, c1);
    }
    encoder_backward(g.wte, g.wpe, d.encoded, m.inputs.data(), B, Tn, C, V, part, parts);
}

// Accumulates parameter gradients from grads_acts.logits (B, T, Vp), which the loss wrote
// over the logits. Two sweeps: the activations' gradients row by row (each thread its rows,
// as the forward), then the parameters' by output channel (each thread its channels of
// every tensor): neither sweep needs a lock or a per-thread copy of the gradients.
template <typename T>
void gpt_backward(GPT<T>& m) {
    const int B = m.batch_B, parts = row_split_threads(B), threads = omp_get_max_threads();
    const size_t scratch_per_thread = attention_scratch_per_thread<T>(m.max_T, m.config.channels / m.config.num_heads);
    if (m.attention_scratch.size() < threads * scratch_per_thread) m.attention_scratch.assign(threads * scratch_per_thread, T(0));
    if (parts == 1) {
        gpt_backward_rows(m, 0, B, m.attention_scratch.data());
        gpt_parameter_gradients(m, 0, 1);
        return;
    }
    #pragma omp parallel num_threads(parts)
    {
        const int t = omp_get_thread_num();
        gpt_backward_rows(m, share_begin(B, t, parts), share_begin(B, t + 1, parts),
                          m.attention_scratch.data() + t * scratch_per_thread);
        #pragma omp barrier
        gpt_parameter_gradients(m, t, parts);
    }
}

// ----------------------------------------------------------------------------
// forward-only inference with a KV cache: sampling, and the teacher's forward pass

template <typename T>
struct KVCache {
    int L = 0, rows = 0, maxT = 0, C = 0;
    std::vector<T> k, v;  // (L, rows, maxT, C) each
    void allocate(const GPTConfig& c, int nrows) {
        if (nrows <= rows && L == c.num_layers && C == c.channels && maxT == c.max_seq_len) return;
        L = c.num_layers; rows = nrows; maxT = c.max_seq_len; C = c.channels;
        k.assign((size_t)L * rows * maxT * C, T(0));
        v.assign((size_t)L * rows * maxT * C, T(0));
    }
    T* key(int l, int row, int pos) { return k.data() + (((size_t)l * rows + row) * maxT + pos) * C; }
    T* value(int l, int row, int pos) { return v.data() + (((size_t)l * rows + row) * maxT + pos) * C; }
};

// Scratch reused across layers: the teacher keeps no per-layer activations.
template <typename T>
struct InferScratch {
    size_t capacity_rows = 0;
    std::vector<T> x, ln, qkv, atty, proj, fch;  // (rows, C | C | 3C | C | C | 4C)
    std::vector<T> mean, rstd;                    // (rows) layernorm statistics, kept only when recording
    std::vector<T> scores;                        // (threads, NH, maxT)
    std::vector<T> block_scores;                  // (threads, Tn, maxT): the attention weights of many new tokens
    std::vector<T> head_scratch;                  // (threads, attention_head_scratch(maxT, hs)): their operands' panels
    DecodeWeights decode;                         // float only: the weights packed for one generation's decode steps
    void ensure(size_t rows, int C, int NH, int maxT, int Tn = 1) {
        size_t threads = (size_t)omp_get_max_threads();
        if (scores.size() < threads * NH * maxT) scores.assign(threads * NH * maxT, T(0));
        if (Tn > 1 && block_scores.size() < threads * Tn * maxT) block_scores.assign(threads * Tn * maxT, T(0));
        const size_t panels = threads * attention_head_scratch(maxT, C / NH);
        if (Tn > 1 && head_scratch.size() < panels) head_scratch.assign(panels, T(0));
        if (rows <= capacity_rows) return;
        capacity_rows = rows;
        x.assign(rows * C, T(0)); ln.assign(rows * C, T(0)); qkv.assign(rows * 3 * C, T(0));
        atty.assign(rows * C, T(0)); proj.assign(rows * C, T(0)); fch.assign(rows * 4 * C, T(0));
        mean.assign(rows, T(0)); rstd.assign(rows, T(0));
    }
};

// Sampling's activations in the training layout. An on-policy step's student forward over
// prompt + completion would recompute what sampling already did at every one of those
// positions (the same weights, the same tokens, the same causal context). Given a record,
// gpt_infer also writes each position it runs where gpt_forward would put it (batch row
// cache_row[b], position start[b] + t), and gpt_forward_from_record then completes the
// (B, T) activations instead of running the forward again: only the positions sampling
// never ran (padding after a row's end) and the LM head's rows it skipped (the prompt's,
// which are no targets) are filled, with zeros, which give exactly zero gradient. The
// outputs of the two projections (attproj, fcproj) are not recorded: gpt_backward never
// reads them (their weights' gradients use the projections' inputs).
template <typename T>
struct ForwardRecord {
    ActivationTensors<T>* acts = nullptr;  // the trained model's, shaped (B, maxT) for the record
    int B = 0, maxT = 0;                   // the layout: every row's longest possible input
    std::vector<int> tokens;               // (B, maxT) the input token at each recorded position, else -1
    std::vector<int> length;               // (B) positions [0, length) recorded
    std::vector<int> head_from;            // (B) the LM head (lnf, logits) recorded from this position on
    bool ready = false;                    // holds a sampling pass not yet used by a forward
};

// A decode step's attention scores: sc[h * len + j] = (q . key j) over head h's channels,
// times scale, for keys j in [0, len) (key_row(j): the key's C channels). Keys are taken
// eight at a time: each key row is read once for all heads, and with AVX the eight dot
// products of a head are summed across lanes together (hadd and a swap of halves: ten
// shuffles and adds for eight scores, where one horizontal sum per score was the cost
// of this loop). A score's rounding depends only on its position and the row's length,
// never on the batch.
template <typename T, typename KeyRow>
inline void decode_scores(T* sc, const T* q, KeyRow key_row, int len, int NH, int hs, T scale) {
    int j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float>)
        if (hs % 8 == 0)
            for (; j + 8 <= len; j += 8) {
                const float* k[8];
                for (int u = 0; u < 8; u++) k[u] = key_row(j + u);
                for (int h = 0; h < NH; h++) {
                    __m256 acc[8];
                    #pragma GCC unroll 8
                    for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
                    for (int i = h * hs; i < (h + 1) * hs; i += 8) {
                        const __m256 qv = _mm256_loadu_ps(q + i);
                        #pragma GCC unroll 8
                        for (int u = 0; u < 8; u++) acc[u] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[u] + i), acc[u]);
                    }
                    // lanes 0-3 and 4-7 of key u's partial sums, for keys 0-3 and 4-7
                    const __m256 k0123 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
                    const __m256 k4567 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
                    const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(k0123, k4567, 0x20),
                                                      _mm256_permute2f128_ps(k0123, k4567, 0x31));
                    _mm256_storeu_ps(sc + (size_t)h * len + j, _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
                }
            }
#endif
    for (; j < len; j++) {
        const T* k = key_row(j);
        for (int h = 0; h < NH; h++) {
            T dot = 0;
            #pragma omp simd reduction(+ : dot)
            for (int i = 0; i < hs; i++) dot += q[h * hs + i] * k[h * hs + i];
            sc[(size_t)h * len + j] = dot * scale;
        }
    }
}

// A decode step's attention output: o[i] = sum_j w[h * len + j] v_j[i] over values j in
// [0, len), channel i of head h = i / hs (value_row(j): the value's C channels); o (C) is
// overwritten. With AVX, 64 channels at a time stay in registers (eight accumulators, one
// head of 64 or more channels, or two of 32) while the values stream past: per value one
// load and one fma per eight channels, where accumulating in memory also loaded and
// stored o for every value. Each output is one chain over j in order, whatever the batch.
template <typename T, typename ValueRow>
inline void decode_values(T* o, const T* w, ValueRow value_row, int len, int NH, int hs) {
    const int C = NH * hs;
    int i0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float>)
        if (hs % 64 == 0 || hs == 32)
            for (; i0 + 64 <= C; i0 += 64) {
                // the block's heads: its first, and (hs = 32) the next one for its upper half
                const float* w_lo = w + (size_t)(i0 / hs) * len;
                const float* w_hi = hs == 32 ? w_lo + len : w_lo;
                __m256 acc[8];
                #pragma GCC unroll 8
                for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
                for (int j = 0; j < len; j++) {
                    const float* v = value_row(j) + i0;
                    const __m256 a = _mm256_broadcast_ss(w_lo + j), b = _mm256_broadcast_ss(w_hi + j);
                    #pragma GCC unroll 4
                    for (int u = 0; u < 4; u++) acc[u] = _mm256_fmadd_ps(a, _mm256_loadu_ps(v + 8 * u), acc[u]);
                    #pragma GCC unroll 4
                    for (int u = 4; u < 8; u++) acc[u] = _mm256_fmadd_ps(b, _mm256_loadu_ps(v + 8 * u), acc[u]);
                }
                #pragma GCC unroll 8
                for (int u = 0; u < 8; u++) _mm256_storeu_ps(o + i0 + 8 * u, acc[u]);
            }
#endif
    // the heads left (i0 ends on a head's boundary): accumulated in o, value by value
    std::fill(o + i0, o + C, T(0));
    for (int j = 0; j < len && i0 < C; j++) {
        const T* v = value_row(j);
        for (int h = i0 / hs; h < NH; h++) {
            const T wj = w[(size_t)h * len + j];
            #pragma omp simd
            for (int i = h * hs; i < (h + 1) * hs; i++) o[i] += wj * v[i];
        }
    }
}

// Whether this gpt_infer call multiplies with packed weights: a decode step (one new token
// per row) of a generation that packed this model's weights (float only).
template <typename T>
bool decode_packed(const GPT<T>& m, const InferScratch<T>& s, int Tn) {
    if constexpr (std::is_same_v<T, float>)
        return Tn == 1 && s.decode.ready && s.decode.source == m.params_memory.data();
    return false;
}

// gpt_infer (below) on batch rows [b0, b1) and their scratch rows; `slot` is the calling thread's
// score buffer, or -1 when this runs on all threads (each then uses its own).
template <typename T>
void gpt_infer_rows(const GPT<T>& m, KVCache<T>& cache, InferScratch<T>& s, int b0, int b1, int slot,
                    const int* tokens, const int* cache_row, const int* start, const int* n_new, int Tn, T* logits,
                    bool all_positions, ForwardRecord<T>* rec, const int* head_from) {
    const GPTConfig& c = m.config;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads, hs = C / NH;
    const int V = c.vocab_size, Vp = c.padded_vocab_size, Bn = b1 - b0, N = Bn * Tn;
    if (Bn <= 0) return;
    const ParameterTensors<T>& p = m.params;
    // this share's rows of the arguments and of the scratch
    tokens += (size_t)b0 * Tn; cache_row += b0; start += b0; n_new += b0;
    if (head_from) head_from += b0;
    logits += (size_t)b0 * (all_positions ? Tn : 1) * Vp;
    const size_t r0 = (size_t)b0 * Tn;
    T* x = s.x.data() + r0 * C;           // (Bn, Tn, C) the residual stream
    T* ln = s.ln.data() + r0 * C;         // (Bn, Tn, C)
    T* qkv = s.qkv.data() + r0 * 3 * C;   // (Bn, Tn, 3C)
    T* atty = s.atty.data() + r0 * C;     // (Bn, Tn, C)
    T* proj = s.proj.data() + r0 * C;     // (Bn, Tn, C)
    T* fch = s.fch.data() + r0 * 4 * C;   // (Bn, Tn, 4C)
    T* mean = rec ? s.mean.data() + r0 : nullptr;  // (Bn, Tn) layernorm statistics, for the record only
    T* rstd = rec ? s.rstd.data() + r0 : nullptr;
    auto my_slot = [slot] { return (size_t)(slot >= 0 ? slot : omp_get_thread_num()); };
    // out = in @ weight^T + bias: a decode step of a generation that packed the weights
    // multiplies the panels (layer l's weight `which`; l < 0: the LM head), all else sgemm
    const bool packed = decode_packed(m, s, Tn);
    auto linear = [&](T* out, const T* in, int l, int which, const T* weight, const T* bias, int n, int K, int OC,
                      int ld_out) {
        if constexpr (std::is_same_v<T, float>)
            if (packed)
                return matmul_forward_packed(out, in, l < 0 ? s.decode.lm_head() : s.decode.layer(l, which), bias, n,
                                             K, OC, ld_out);
        matmul_forward(out, in, weight, bias, n, K, OC, ld_out);
    };
    // Without a cache (cache.rows == 0: whole rows from position 0, as the teacher's pass),
    // keys and values are read where qkv holds them, with no copy: row b's position j of
    // layer l's keys and values, and the distance between positions
    const bool cached = cache.rows > 0;
    auto key_row = [&](int l, int b, int j) -> const T* {
        return cached ? cache.key(l, cache_row[b], j) : qkv + ((size_t)b * Tn + j) * 3 * C + C;
    };
    auto value_row = [&](int l, int b, int j) -> const T* {
        return cached ? cache.value(l, cache_row[b], j) : qkv + ((size_t)b * Tn + j) * 3 * C + 2 * C;
    };
    const int kv_stride = cached ? C : 3 * C;
    // With head_from (all positions): row b needs logits at its new positions [head_from[b],
    // n_new[b]) only. The last layer's output elsewhere feeds nothing but those unneeded
    // logits, so there the last layer computes only keys and values (for the later
    // queries): its attention queries, projections, MLP and the LM head run on the needed
    // positions, packed together (trimmed); the other logits are zeros.
    auto query_from = [&](int l, int b) {
        return head_from && l == L - 1 ? std::min(std::max(head_from[b], 0), n_new[b]) : 0;
    };
    GKD_ASSERT(!(head_from && (rec || !all_positions)), "head_from is for all-positions passes without a record");
    int head_rows = N;  // the rows the last layer ends with, which the LM head runs on
    // moves the needed positions' rows of buf (Bn, Tn, width) to its front, in order;
    // returns how many (every row moves to a lower address or stays)
    auto pack_needed = [&](T* buf, int width) {
        int kept = 0;
        for (int b = 0; b < Bn; b++)
            for (int t = query_from(L - 1, b); t < n_new[b]; t++, kept++)
                if (kept != b * Tn + t)
                    memmove(buf + (size_t)kept * width, buf + ((size_t)b * Tn + t) * width, sizeof(T) * width);
        return kept;
    };
    // With a record: the rows of src (Bn, Tn, width) at the real new positions, copied into
    // layer l's slab of a training tensor (L, B, maxT, width) at (cache_row, start + t)
    auto record = [&](T* tensor, int l, const T* src, int width) {
        T* slab = tensor + (size_t)l * rec->B * rec->maxT * width;
        for (int b = 0; b < Bn; b++)
            for (int t = 0; t < n_new[b]; t++)
                memcpy(slab + ((size_t)cache_row[b] * rec->maxT + start[b] + t) * width,
                       src + ((size_t)b * Tn + t) * width, sizeof(T) * width);
    };
    // ... and one attention row: query position pos of (row, head h), its weights over keys
    // [0, len), zeros after (as attention_forward leaves the masked part)
    auto record_attention = [&](int l, int row, int h, int pos, const T* weights, int len) {
        T* out = rec->acts->att + ((((size_t)l * rec->B + row) * NH + h) * rec->maxT + pos) * rec->maxT;
        memcpy(out, weights, sizeof(T) * len);
        std::fill(out + len, out + rec->maxT, T(0));
    };
    if (rec)
        for (int b = 0; b < Bn; b++) {
            const int row = cache_row[b];
            GKD_ASSERT(row < rec->B && start[b] + n_new[b] <= rec->maxT, "a sampled position outside the record");
            for (int t = 0; t < n_new[b]; t++) rec->tokens[(size_t)row * rec->maxT + start[b] + t] = tokens[b * Tn + t];
            if (n_new[b] > 0) rec->length[row] = std::max(rec->length[row], start[b] + n_new[b]);
        }

    #pragma omp parallel for collapse(2)
    for (int b = 0; b < Bn; b++)
        for (int t = 0; t < Tn; t++) {
            T* o = x + ((size_t)b * Tn + t) * C;
            int tok = tokens[b * Tn + t];
            if (t >= n_new[b] || tok < 0 || tok >= V) { std::fill(o, o + C, T(0)); continue; }
            const T* e = p.wte + (size_t)tok * C;
            const T* pe = p.wpe + (size_t)(start[b] + t) * C;
            for (int i = 0; i < C; i++) o[i] = e[i] + pe[i];
        }
    ActivationTensors<T>* ra = rec ? rec->acts : nullptr;
    if (rec) record(ra->encoded, 0, x, C);
    const T scale = T(1) / std::sqrt(T(hs));
    for (int l = 0; l < L; l++) {
        layernorm_forward(ln, mean, rstd, x, p.ln1w + l * C, p.ln1b + l * C, N, C);
        linear(qkv, ln, l, 0, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, N, C, 3 * C, 3 * C);
        if (rec) {
            record(ra->ln1, l, ln, C);
            record(ra->ln1_mean, l, mean, 1);
            record(ra->ln1_rstd, l, rstd, 1);
            record(ra->qkv, l, qkv, 3 * C);
        }
        for (int b = 0; b < Bn && cached; b++)
            for (int t = 0; t < n_new[b]; t++) {
                const T* q = qkv + ((size_t)b * Tn + t) * 3 * C;
                memcpy(cache.key(l, cache_row[b], start[b] + t), q + C, sizeof(T) * C);
                memcpy(cache.value(l, cache_row[b], start[b] + t), q + 2 * C, sizeof(T) * C);
            }
        if (Tn > 1 && (std::is_same_v<T, float> || HAVE_BLAS)) {
            // many new tokens (prefill, the teacher): per row and head, queries in tiles against
            // keys straight from the cache (float: attention_head_forward; else two GEMMs per
            // block of queries), the causal softmax between
            #pragma omp parallel for collapse(2) schedule(dynamic)
            for (int b = 0; b < Bn; b++)
                for (int h = 0; h < NH; h++) {
                    const int nq = n_new[b];
                    T* out = atty + (size_t)b * Tn * C + h * hs;  // (Tn, hs), row stride C
                    const int qf = query_from(l, b);
                    for (int t = 0; t < Tn; t++)
                        if (t < qf || t >= nq) std::fill(out + (size_t)t * C, out + (size_t)t * C + hs, T(0));
                    if (nq == qf) continue;
                    const T* Q = qkv + (size_t)b * Tn * 3 * C + h * hs;              // (nq, hs), stride 3C
                    T* S = s.block_scores.data() + my_slot() * Tn * c.max_seq_len;  // (queries, keys)
                    if constexpr (std::is_same_v<T, float>) {
                        const int ld = c.max_seq_len;
                        attention_head_forward(out, C, S, ld, Q, 3 * C, key_row(l, b, 0) + h * hs,
                                               value_row(l, b, 0) + h * hs, kv_stride, qf, nq, start[b], hs, scale,
                                               s.head_scratch.data() + my_slot() * attention_head_scratch(ld, hs));
                        if (rec)
                            for (int t = qf; t < nq; t++)
                                record_attention(l, cache_row[b], h, start[b] + t, S + (size_t)(t - qf) * ld,
                                                 start[b] + t + 1);
                    } else {
#ifdef GKD_BLAS
                    // query blocks of ATTENTION_QUERY_BLOCK: block [q0, q1) needs the keys up to
                    // start + q1 only, so the GEMMs skip most of the masked upper triangle
                    for (int q0 = qf; q0 < nq; q0 += ATTENTION_QUERY_BLOCK) {
                        const int q1 = std::min(nq, q0 + ATTENTION_QUERY_BLOCK), klen = start[b] + q1;
                        gemm(false, true, q1 - q0, klen, hs, Q + (size_t)q0 * 3 * C, 3 * C,
                             key_row(l, b, 0) + h * hs, kv_stride, T(0), S, klen);
                        for (int t = q0; t < q1; t++) {
                            T* row = S + (size_t)(t - q0) * klen;
                            const int valid = start[b] + t + 1;
                            T maxv = -INFINITY, sum = 0;
                            #pragma omp simd reduction(max : maxv)
                            for (int j = 0; j < valid; j++) maxv = std::max(maxv, row[j] * scale);
                            #pragma omp simd reduction(+ : sum)
                            for (int j = 0; j < valid; j++) { row[j] = exp_fast(row[j] * scale - maxv); sum += row[j]; }
                            const T inv = T(1) / sum;
                            for (int j = 0; j < valid; j++) row[j] *= inv;
                            std::fill(row + valid, row + klen, T(0));
                            if (rec) record_attention(l, cache_row[b], h, start[b] + t, row, valid);
                        }
                        gemm(false, false, q1 - q0, hs, klen, S, klen, value_row(l, b, 0) + h * hs, kv_stride, T(0),
                             out + (size_t)q0 * C, C);
                    }
#endif
                    }
                }
        } else
        // one new token against its cached rows, all heads together: each cached key and
        // value row (C values) is read once, front to back (decode is memory-bound here)
        #pragma omp parallel for collapse(2)
        for (int b = 0; b < Bn; b++)
            for (int t = 0; t < Tn; t++) {
                T* o = atty + ((size_t)b * Tn + t) * C;  // (C) = (NH, hs)
                if (t >= n_new[b] || t < query_from(l, b)) { std::fill(o, o + C, T(0)); continue; }
                const T* q = qkv + ((size_t)b * Tn + t) * 3 * C;
                T* sc = s.scores.data() + my_slot() * NH * c.max_seq_len;  // (NH, len)
                const int len = start[b] + t + 1;
                decode_scores(sc, q, [&](int j) { return key_row(l, b, j); }, len, NH, hs, scale);
                for (int h = 0; h < NH; h++) {
                    T* sh = sc + (size_t)h * len;
                    T maxv = -INFINITY, sum = 0;
                    #pragma omp simd reduction(max : maxv)
                    for (int j = 0; j < len; j++) maxv = std::max(maxv, sh[j]);
                    #pragma omp simd reduction(+ : sum)
                    for (int j = 0; j < len; j++) { sh[j] = exp_fast(sh[j] - maxv); sum += sh[j]; }
                    const T inv = T(1) / sum;
                    for (int j = 0; j < len; j++) sh[j] *= inv;
                    if (rec) record_attention(l, cache_row[b], h, start[b] + t, sh, len);
                }
                decode_values(o, sc, [&](int j) { return value_row(l, b, j); }, len, NH, hs);
            }
        // the rows this layer continues with: all, or in the trimmed last layer the needed ones
        int Nl = N;
        if (head_from && l == L - 1) {
            Nl = head_rows = pack_needed(atty, C);
            pack_needed(x, C);
        }
        linear(proj, atty, l, 1, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, Nl, C, C, C);
        if (rec) {
            record(ra->atty, l, atty, C);  // (attproj and fcproj are not kept: no backward reads them)
        }
        residual_forward(x, x, proj, (size_t)Nl * C);
        layernorm_forward(ln, mean, rstd, x, p.ln2w + l * C, p.ln2b + l * C, Nl, C);
        linear(fch, ln, l, 2, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, Nl, C, 4 * C, 4 * C);
        if (rec) {
            record(ra->residual2, l, x, C);
            record(ra->ln2, l, ln, C);
            record(ra->ln2_mean, l, mean, 1);
            record(ra->ln2_rstd, l, rstd, 1);
            record(ra->fch, l, fch, 4 * C);
        }
        gelu_forward(fch, fch, (size_t)Nl * 4 * C);
        linear(proj, fch, l, 3, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, Nl, 4 * C, C, C);
        residual_forward(x, x, proj, (size_t)Nl * C);
        if (rec) {
            record(ra->fch_gelu, l, fch, 4 * C);
            record(ra->residual3, l, x, C);
        }
    }
    if (all_positions) {
        layernorm_forward(ln, mean, rstd, x, p.lnfw, p.lnfb, head_rows, C);
        matmul_forward(logits, ln, p.wte, (const T*)nullptr, head_rows, C, V, Vp);
        for (int n = 0; n < head_rows; n++) std::fill(logits + (size_t)n * Vp + V, logits + (size_t)(n + 1) * Vp, T(0));
        if (head_from) {  // the needed rows back to their positions (last first: each moves up), zeros elsewhere
            int kept = head_rows;
            for (int b = Bn - 1; b >= 0; b--) {
                const int qf = query_from(L - 1, b);
                std::fill(logits + ((size_t)b * Tn + n_new[b]) * Vp, logits + (size_t)(b + 1) * Tn * Vp, T(0));
                for (int t = n_new[b] - 1; t >= qf; t--)
                    if (--kept != b * Tn + t)
                        memmove(logits + ((size_t)b * Tn + t) * Vp, logits + (size_t)kept * Vp, sizeof(T) * Vp);
                std::fill(logits + (size_t)b * Tn * Vp, logits + ((size_t)b * Tn + qf) * Vp, T(0));
            }
        }
        if (rec) {
            record(ra->lnf, 0, ln, C);
            record(ra->lnf_mean, 0, mean, 1);
            record(ra->lnf_rstd, 0, rstd, 1);
            record(ra->logits, 0, logits, Vp);
            for (int b = 0; b < Bn; b++)
                if (n_new[b] > 0) rec->head_from[cache_row[b]] = std::min(rec->head_from[cache_row[b]], start[b]);
        }
    } else {
        // only each row's last new position feeds the LM head: the prefill skips the rest
        for (int b = 0; b < Bn; b++) {
            int t = std::max(n_new[b] - 1, 0);
            memcpy(atty + (size_t)b * C, x + ((size_t)b * Tn + t) * C, sizeof(T) * C);
        }
        layernorm_forward(ln, mean, rstd, atty, p.lnfw, p.lnfb, Bn, C);
        linear(logits, ln, -1, 0, p.wte, (const T*)nullptr, Bn, C, V, Vp);
        for (int b = 0; b < Bn; b++) std::fill(logits + (size_t)b * Vp + V, logits + (size_t)(b + 1) * Vp, T(0));
        if (rec)
            for (int b = 0; b < Bn; b++) {
                if (n_new[b] == 0) continue;
                const int row = cache_row[b];
                const size_t at = (size_t)row * rec->maxT + start[b] + n_new[b] - 1;
                memcpy(ra->lnf + at * C, ln + (size_t)b * C, sizeof(T) * C);
                ra->lnf_mean[at] = mean[b];
                ra->lnf_rstd[at] = rstd[b];
                memcpy(ra->logits + at * Vp, logits + (size_t)b * Vp, sizeof(T) * Vp);
                rec->head_from[row] = std::min(rec->head_from[row], start[b] + n_new[b] - 1);
            }
    }
}

// Runs Tn new tokens per row through the model, appending their keys and values to the
// cache, and attending over everything the row has cached so far.
//   tokens    (Bn, Tn) new tokens, right-padded; row b has n_new[b] real ones
//   cache_row (Bn)     which cache row each batch row uses
//   start     (Bn)     the position of the row's first new token (= tokens already cached)
//   logits    all_positions ? (Bn, Tn, Vp) : (Bn, Vp) at each row's last new token
//   head_from (Bn) or null: with all_positions, row b's logits are needed at its new
//             positions [head_from[b], n_new[b]) only (a loss's targets); the others are
//             zeros, and the last layer skips what only they need (see gpt_infer_rows)
// Prefill is start = 0 with the prompts; decode is Tn = 1 with start = current length.
// Padded slots compute junk that is never stored in the cache and never read. An empty
// cache (KVCache with rows = 0) is a pass that nothing continues (the teacher's): every
// row starts at 0, and attention reads keys and values from the pass's own qkv.
//
// Rows are shared out among the threads as in the training passes (row_split_threads):
// with enough rows each thread runs its share through the whole model alone; with few
// (one prompt at a time, say) all threads work on each layer. On the reference step this
// took the teacher forward from 180 to 154 ms (best of 9 alternating rounds,
// dev/bench_ab.sh).
template <typename T>
void gpt_infer(const GPT<T>& m, KVCache<T>& cache, InferScratch<T>& s, const int* tokens, const int* cache_row,
               const int* start, const int* n_new, int Bn, int Tn, T* logits, bool all_positions,
               ForwardRecord<T>* rec = nullptr, const int* head_from = nullptr) {
    const GPTConfig& c = m.config;
    s.ensure((size_t)Bn * Tn, c.channels, c.num_heads, c.max_seq_len, Tn);
    for (int b = 0; b < Bn; b++)
        GKD_ASSERT(start[b] + n_new[b] <= c.max_seq_len && (cache.rows == 0 ? start[b] == 0 : cache_row[b] < cache.rows),
                   "sequence past the context, or a continued row without a cache");
    int parts = row_split_threads(Bn);
    // packed decode with under a register tile of rows per thread: the threads share out
    // the weights instead of each reading all of them for its one or two rows
    if (decode_packed(m, s, Tn) && Bn < DECODE_TILE_ROWS * parts) parts = 1;
    if (parts == 1)
        return gpt_infer_rows(m, cache, s, 0, Bn, -1, tokens, cache_row, start, n_new, Tn, logits, all_positions, rec,
                              head_from);
    #pragma omp parallel num_threads(parts)
    {
        const int t = omp_get_thread_num();
        gpt_infer_rows(m, cache, s, share_begin(Bn, t, parts), share_begin(Bn, t + 1, parts), t, tokens, cache_row,
                       start, n_new, Tn, logits, all_positions, rec, head_from);
    }
}

// Prepares m's training activations to record B rows of up to Tmax inputs each: the record
// that generation then passes to every gpt_infer call (rows = cache rows = batch rows).
template <typename T>
void gpt_begin_record(GPT<T>& m, ForwardRecord<T>& rec, int B, int Tmax) {
    gpt_prepare_training(m, B, Tmax);
    gpt_shape_activations(m, B, Tmax);
    rec.acts = &m.acts;
    rec.B = B;
    rec.maxT = Tmax;
    rec.tokens.assign((size_t)B * Tmax, -1);
    rec.length.assign(B, 0);
    rec.head_from.assign(B, INT_MAX);
    rec.ready = true;
}

// gpt_forward(m, tokens, B, Tn) from a record instead of a pass: when every row's recorded
// positions hold exactly its tokens and every position that has a target (from the first
// head position on) was recorded, the (B, Tmax) layout is packed down to (B, Tn) in place
// (each value moves to a lower address, and a tensor's zeros land below the next tensor's
// unmoved values, so one ascending pass is safe), the positions never run are zeroed, and
// it returns true. Otherwise (a batch that is not the
// one sampled) it returns false and changes nothing the caller relies on: run gpt_forward.
// `has_target(b, t)` says whether position t of row b is a target.
template <typename T, typename HasTarget>
bool gpt_forward_from_record(GPT<T>& m, ForwardRecord<T>& rec, const int* tokens, int B, int Tn, HasTarget has_target) {
    const bool was_ready = rec.ready;
    rec.ready = false;  // a record serves one forward
    if (!was_ready || B != rec.B || Tn > rec.maxT) return false;
    for (int b = 0; b < B; b++) {
        const int len = rec.length[b];
        for (int t = 0; t < Tn; t++) {
            const int recorded = t < len ? rec.tokens[(size_t)b * rec.maxT + t] : -1;
            if ((t < len && recorded != tokens[(size_t)b * Tn + t]) ||
                (has_target(b, t) && (t >= len || t < rec.head_from[b])))
                return false;
        }
    }
    const GPTConfig& c = m.config;
    const int L = c.num_layers, NH = c.num_heads, Tr = rec.maxT;
    size_t from[NUM_ACTIVATION_TENSORS], to[NUM_ACTIVATION_TENSORS];
    fill_activation_sizes(from, c, B, Tr);
    fill_activation_sizes(to, c, B, Tn);
    // tensor by tensor: pack its (l, b, h) blocks of Tr rows down to Tn rows (att's rows also
    // shorten, Tr keys to Tn), then zero what sampling never ran: positions at or past a
    // row's length (every tensor), and the LM head before its first recorded position.
    // Zeros there give exactly zero gradient.
    T* memory = m.acts_memory.data();
    size_t src_base = 0, dst_base = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        const bool attention = activation_is_attention(i);
        const size_t heads = attention ? NH : 1, blocks = (activation_per_layer(i) ? L : 1) * (size_t)B * heads;
        const size_t width = to[i] / blocks / Tn, src_width = attention ? Tr : width;  // values per row
        T* dst = memory + dst_base;
        for (size_t k = 0; k < blocks; k++) {
            if (Tn < Tr)
                for (int t = 0; t < Tn; t++)
                    memmove(dst + (k * Tn + t) * width, memory + src_base + (k * Tr + t) * src_width, sizeof(T) * width);
            T* rows = dst + k * Tn * width;  // (Tn, width)
            const int b = (int)(k / heads % B), from_t = std::min(rec.length[b], Tn);
            std::fill(rows + (size_t)from_t * width, rows + (size_t)Tn * width, T(0));
            if (activation_of_head(i)) std::fill(rows, rows + (size_t)std::min(rec.head_from[b], from_t) * width, T(0));
        }
        src_base += from[i];
        dst_base += to[i];
    }
    gpt_shape_activations(m, B, Tn);
    m.batch_B = B;
    m.batch_T = Tn;
    std::copy(tokens, tokens + (size_t)B * Tn, m.inputs.begin());
    return true;
}

// ----------------------------------------------------------------------------
// checkpoints (llm.c's format) and initialisation

constexpr int CHECKPOINT_MAGIC = 20240326;

// Reads and validates a checkpoint: every size is checked against the file's length
// before anything is allocated.
inline void gpt_load(GPT<float>& m, const std::string& path) {
    InputFile in(path);
    int header[256];
    if (in.size < (long long)sizeof header)
        GKD_FAIL("%s: not a gkd/llm.c checkpoint: %lld bytes is shorter than the 1024-byte header",
                 path.c_str(), in.size);
    in.read_exact(header, sizeof header, "the header");
    if (header[0] != CHECKPOINT_MAGIC)
        GKD_FAIL("%s: bad magic number %d (expected %d): not an llm.c checkpoint", path.c_str(), header[0],
                 CHECKPOINT_MAGIC);
    int version = header[1];
    if (version != 3 && version != 5)
        GKD_FAIL("%s: unsupported checkpoint version %d (3 = fp32 and 5 = bf16 are supported)", path.c_str(), version);
    GPTConfig c;
    c.max_seq_len = header[2];
    c.vocab_size = header[3];
    c.num_layers = header[4];
    c.num_heads = header[5];
    c.channels = header[6];
    c.padded_vocab_size = header[7];
    validate_config(c, path);
    size_t sizes[NUM_PARAMETER_TENSORS];
    fill_parameter_sizes(sizes, c);
    unsigned long long n = 0;
    for (size_t s : sizes) n += s;
    size_t elem = version == 3 ? 4 : 2;
    unsigned long long expected = sizeof header + n * elem;
    if ((unsigned long long)in.size != expected)
        GKD_FAIL("%s: file is %lld bytes but its header (L=%d C=%d NH=%d maxT=%d Vp=%d, version %d) needs %llu: %s",
                 path.c_str(), in.size, c.num_layers, c.channels, c.num_heads, c.max_seq_len, c.padded_vocab_size,
                 version, expected, (unsigned long long)in.size < expected ? "truncated" : "trailing bytes");
    gpt_build(m, c);
    if (version == 3) {
        in.read_exact(m.params_memory.data(), n * 4, "the parameters");
    } else {
        std::vector<uint16_t> raw(n);
        in.read_exact(raw.data(), n * 2, "the parameters");
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)raw[i] << 16;  // bf16 is the top half of an fp32
            memcpy(&m.params_memory[i], &bits, 4);
        }
    }
}

// fp32 -> bf16, rounding to nearest even (NaN stays NaN), as llm.c writes its v5 files.
inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

// Version 3 (fp32) or, with bf16, version 5 (bf16 parameters).
inline void gpt_save(const GPT<float>& m, const std::string& path, bool bf16 = false) {
    int header[256] = {0};
    header[0] = CHECKPOINT_MAGIC;
    header[1] = bf16 ? 5 : 3;
    header[2] = m.config.max_seq_len;
    header[3] = m.config.vocab_size;
    header[4] = m.config.num_layers;
    header[5] = m.config.num_heads;
    header[6] = m.config.channels;
    header[7] = m.config.padded_vocab_size;
    AtomicWriter w(path);
    w.write(header, sizeof header);
    if (!bf16) {
        w.write(m.params_memory.data(), m.num_parameters * sizeof(float));
    } else {
        std::vector<uint16_t> chunk;
        for (size_t i = 0; i < m.num_parameters; i += (1 << 20)) {  // 2 MB at a time
            size_t n = std::min(m.num_parameters - i, (size_t)1 << 20);
            chunk.resize(n);
            for (size_t k = 0; k < n; k++) chunk[k] = float_to_bf16(m.params_memory[i + k]);
            w.write(chunk.data(), n * 2);
        }
    }
    w.commit();
}

// GPT-2's initialisation: N(0, 0.02) weights and embeddings, residual projections scaled
// by 1/sqrt(2L), zero biases, unit LayerNorm gains. Padded vocabulary rows stay zero.
template <typename T>
void gpt_init_random(GPT<T>& m, uint64_t seed) {
    const GPTConfig& c = m.config;
    Rng rng(seed);
    ParameterTensors<T>& p = m.params;
    std::fill(m.params_memory.begin(), m.params_memory.end(), T(0));
    // the generator's stream is drawn in order, a chunk at a time, and Box-Muller (the
    // cost: a log, a sqrt and a cos per value) runs on all threads: the values are those of
    // rng.normal() called in sequence (tested). GPT-2 355M: 18.1 s on 1 thread, 12.9 s on
    // 2 (2-core EPYC); the in-order draws are a small part, so 16 cores take a few seconds
    std::vector<uint64_t> draws;
    auto normal = [&](T* w, size_t n, double std) {
        const size_t chunk = (size_t)1 << 18;
        draws.resize(2 * std::min(n, chunk));
        for (size_t i0 = 0; i0 < n; i0 += chunk) {
            const size_t k = std::min(chunk, n - i0);
            for (size_t j = 0; j < 2 * k; j++) draws[j] = rng.next();
            #pragma omp parallel for schedule(static)
            for (size_t j = 0; j < k; j++) w[i0 + j] = T(Rng::normal_from(draws[2 * j], draws[2 * j + 1]) * std);
        }
    };
    double residual_std = 0.02 / std::sqrt(2.0 * c.num_layers);
    size_t C = c.channels, L = c.num_layers;
    normal(p.wte, (size_t)c.vocab_size * C, 0.02);
    normal(p.wpe, (size_t)c.max_seq_len * C, 0.02);
    std::fill(p.ln1w, p.ln1w + L * C, T(1));
    normal(p.qkvw, L * 3 * C * C, 0.02);
    normal(p.attprojw, L * C * C, residual_std);
    std::fill(p.ln2w, p.ln2w + L * C, T(1));
    normal(p.fcw, L * 4 * C * C, 0.02);
    normal(p.fcprojw, L * 4 * C * C, residual_std);
    std::fill(p.lnfw, p.lnfw + C, T(1));
}
