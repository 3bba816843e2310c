// model.h — GPT-2 on the CPU, as a reader of the model wants it: the parameters and
// activations, every layer's forward and backward side by side (the backward in the two
// halves that gpt_backward calls apart, and the whole layer's), the training forward and
// backward, KV-cached inference (sampling, the teacher), checkpoints in llm.c's format
// and GPT-2's initialisation. The definitions it implements are docs/algorithm.md's and
// docs/formats.md's.
//
// The machinery the layers run on lives in cpu/, one header per concern, each naming its
// GPU twin in its first lines (the GPU's model is cuda/model.cuh, its layers
// cuda/layers.cuh, in this file's order):
//   cpu/blas.h            the BLAS seam: gemm() and the matmuls (OpenBLAS or OpenMP loops)
//   cpu/packed_tile.h     gkd's 6 x 16 register tile and the panel layouts it reads
//   cpu/decode_weights.h  weights packed once per generation for decode's few-row matmuls
//   cpu/attention.h       causal attention kernels: per (row, head) tiles, decode's scores
//   cpu/inference.h       the steps of one inference pass, and sampling's record for training
//   cpu/threads.h         sharing out rows, channels and (row, head) pairs among threads
//   cpu/vector_math.h     exp and tanh that vectorize
//
// Tricks worth knowing:
// - Everything is templated on the scalar type T. Training uses float; the gradient
//   tests instantiate double so that central finite differences are accurate to ~1e-8.
// - As in llm.c, the parameters are one allocation carved into 16 named tensors, and the
//   activations one allocation carved into named tensors laid out (L, N, ...) for the N
//   positions of the current batch: allocate for the largest batch once, and any smaller
//   one fits in the same memory.
// - Batches are packed (RowLayout): the rows lie end to end, N positions in all, each
//   row's positions counted from 0; attention is causal within a row and never crosses
//   rows, its weights (NH, len, len) per row. No layer computes a padded position. A
//   rectangular (B, T) batch is the layout whose rows all have T positions.
// - The LM head computes the V real vocabulary columns only; the padded columns
//   (V..Vp-1) of the logits stay zero and never receive gradient.
// - Two forward paths: gpt_forward keeps every activation for gpt_backward (the student);
//   gpt_infer keeps only a KV cache and reusable scratch (sampling, and the teacher, which
//   never needs a backward). Tests check they agree. On-policy sampling can also record
//   what it computes in gpt_forward's layout (ForwardRecord), so that the student's
//   forward over its own samples is not run twice.
// - The teacher's pass for a loss trims its last layer to the positions with targets
//   (gpt_infer's head_from): elsewhere that layer only computes keys and values.
// - With enough rows, each thread runs its own rows through the whole model with
//   single-threaded BLAS calls and no barrier per layer (gpt_forward, gpt_infer, the first
//   sweep of gpt_backward); the parameters' gradients, sums over all rows, are then shared
//   out by output channel.
// - gpt_backward runs in two sweeps: the activations' gradients row by row (each layer's
//   *_backward_input), then the parameters' by output channel (*_backward_params,
//   matmul_backward_weight). A layer's whole backward (layernorm_backward,
//   matmul_backward, residual_backward) is what the tests check against finite
//   differences, and the CPU twin of the gpu:: layer that gpu_backward calls.
// - gpt_backward writes each activation gradient before reading it, the first write
//   overwriting (no pass zeroes them first); the projections' output gradients are the
//   residual stream's, used where they lie.
// - Every reduction is done in a fixed order, so results are identical run after run for
//   a fixed binary and thread count.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "utils.h"
#include "cpu/attention.h"
#include "cpu/blas.h"
#include "cpu/decode_weights.h"
#include "cpu/packed_tile.h"
#include "cpu/threads.h"
#include "cpu/vector_math.h"

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

// T: the stored activations; S: LayerNorm's statistics and the logits, which the CUDA
// path's bf16 mode keeps in fp32 (ActivationTensors<bf16, float>; cuda/precision.cuh).
// On the CPU both are float.
template <typename T, typename S = T>
struct ActivationTensors {
    // N: the batch's positions, its rows end to end (RowLayout); a rectangular batch has N = B T
    T* encoded;    // (N, C)
    T* ln1;        // (L, N, C)
    S* ln1_mean;   // (L, N)
    S* ln1_rstd;   // (L, N)
    T* qkv;        // (L, N, 3C)
    T* atty;       // (L, N, C)
    T* att;        // (L, A) softmaxed attention weights: row b's (NH, len_b, len_b) at its att_start
    T* attproj;    // (L, N, C)
    T* residual2;  // (L, N, C)
    T* ln2;        // (L, N, C)
    S* ln2_mean;   // (L, N)
    S* ln2_rstd;   // (L, N)
    T* fch;        // (L, N, 4C)
    T* fch_gelu;   // (L, N, 4C)
    T* fcproj;     // (L, N, C)
    T* residual3;  // (L, N, C)
    T* lnf;        // (N, C)
    S* lnf_mean;   // (N)
    S* lnf_rstd;   // (N)
    S* logits;     // (N, Vp) last; the loss overwrites it with its own gradient, so the
                   // activation gradients have no logits tensor of their own (see gpt_prepare_training)
    T** array() {
        static_assert(std::is_same<T, S>::value, "array(): one type; pointers() for ActivationTensors<T, S>");
        return &encoded;
    }
    void** pointers() { return reinterpret_cast<void**>(&encoded); }  // by array()'s index, any types
};
// the names of array()'s tensors, in its order (messages, the emulator's guard zones)
inline const char* const ACTIVATION_NAMES[NUM_ACTIVATION_TENSORS] = {
    "encoded", "ln1", "ln1_mean", "ln1_rstd", "qkv", "atty", "att", "attproj", "residual2", "ln2",
    "ln2_mean", "ln2_rstd", "fch", "fch_gelu", "fcproj", "residual3", "lnf", "lnf_mean", "lnf_rstd", "logits"};

// What each tensor of ActivationTensors::array() is laid out as (by index, as the sizes
// below): ln1 .. residual3 are one (N, ...) slab per layer; att is (L, A); lnf .. logits
// are the LM head's.
inline bool activation_per_layer(int i) { return i >= 1 && i <= 15; }
// the tensors of type S in ActivationTensors<T, S>: LayerNorm's statistics and the logits
inline bool activation_is_statistic(int i) { return i == 2 || i == 3 || i == 10 || i == 11 || i >= 17; }
inline bool activation_is_attention(int i) { return i == 6; }
inline bool activation_of_head(int i) { return i >= 16; }

// The sizes for N positions whose attention weights take A values per layer.
inline void fill_packed_activation_sizes(size_t s[NUM_ACTIVATION_TENSORS], const GPTConfig& c, size_t N, size_t A) {
    size_t C = c.channels, L = c.num_layers, Vp = c.padded_vocab_size;
    size_t sz[NUM_ACTIVATION_TENSORS] = {
        N * C, L * N * C, L * N, L * N, L * N * 3 * C, L * N * C,
        L * A, L * N * C, L * N * C, L * N * C, L * N, L * N,
        L * N * 4 * C, L * N * 4 * C, L * N * C, L * N * C, N * C, N,
        N, N * Vp};
    memcpy(s, sz, sizeof sz);
}
// ... for a rectangular batch: B rows of T positions
inline void fill_activation_sizes(size_t s[NUM_ACTIVATION_TENSORS], const GPTConfig& c, size_t B, size_t T) {
    fill_packed_activation_sizes(s, c, B * T, B * (size_t)c.num_heads * T * T);
}

// Where each row of a packed batch lies: its positions, and its attention weights within a
// layer's (A) slab. Rows of any lengths (at least 1), laid end to end.
struct RowLayout {
    int B = 0, N = 0, T = 0;        // rows, positions, the longest row
    std::vector<int> start;         // (B + 1) row b's positions are [start[b], start[b + 1])
    std::vector<size_t> att_start;  // (B + 1) row b's (NH, len, len) weights begin at att_start[b]
    int length(int b) const { return start[b + 1] - start[b]; }
    size_t att() const { return att_start[B]; }  // A: a layer's attention weights
    // B rows beginning at row_start (B + 1 offsets), NH heads (a training batch's rows have
    // a position each; an inference pass may have rows with nothing new)
    static RowLayout packed(const int* row_start, int B, int NH) {
        RowLayout r;
        r.B = B;
        r.start.assign(row_start, row_start + B + 1);
        r.att_start.assign(B + 1, 0);
        for (int b = 0; b < B; b++) {
            GKD_ASSERT(r.length(b) >= 0, "a packed batch's rows out of order");
            r.T = std::max(r.T, r.length(b));
            r.att_start[b + 1] = r.att_start[b] + (size_t)NH * r.length(b) * r.length(b);
        }
        r.N = r.start[B];
        return r;
    }
    // (N) each position's place in its row: what the position embedding reads
    std::vector<int> positions() const {
        std::vector<int> pos(N);
        for (int b = 0; b < B; b++)
            for (int n = start[b]; n < start[b + 1]; n++) pos[n] = n - start[b];
        return pos;
    }
    static RowLayout rectangle(int B, int T, int NH) {
        std::vector<int> s(B + 1);
        for (int b = 0; b <= B; b++) s[b] = b * T;
        return packed(s.data(), B, NH);
    }
};

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
    int max_N = 0, max_T = 0;          // the allocation's positions and longest row
    size_t max_att = 0;                // ... and attention weights per layer
    std::vector<T> acts_memory, grads_acts_memory;
    ActivationTensors<T> acts{}, grads_acts{};
    std::vector<T> attention_scratch;  // (threads, attention_scratch_per_thread) for attention backward
    std::vector<int> inputs;           // (N) tokens of the last gpt_forward
    RowLayout batch;                   // the rows of the last gpt_forward

    // A copy's tensors point into its own memory (a memberwise copy would point them into
    // the original's, and a trained copy would read the original's weights). Moves keep
    // the buffers, and so their pointers.
    GPT() = default;
    GPT(const GPT& o) { *this = o; }
    GPT& operator=(const GPT& o);
    GPT(GPT&&) = default;
    GPT& operator=(GPT&&) = default;
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

// ----------------------------------------------------------------------------
// layers: forward and backward side by side. Backward functions accumulate (+=); those
// gpt_backward writes a tensor with first can overwrite instead (accumulate = false), so
// that no pass zeroes the activations' gradients beforehand. Where gpt_backward needs the
// input's gradient and the parameters' in different sweeps, the backward comes in halves
// (*_backward_input, *_backward_params), and the whole layer's backward is both halves in
// one call: the tests' and the GPU twins' reference, which gpt_backward does not call.

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

// The same over a packed batch (RowLayout): out (N, C), each row's positions from 0.
template <typename T>
void encoder_forward(T* out, const int* inp, const T* wte, const T* wpe, const RowLayout& rows, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < rows.N; n++) {
        const int b = int(std::upper_bound(rows.start.begin(), rows.start.end(), n) - rows.start.begin()) - 1;
        const T* e = wte + (size_t)inp[n] * C;
        const T* pe = wpe + (size_t)(n - rows.start[b]) * C;
        T* o = out + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = e[i] + pe[i];
    }
}
// Part `part` of `parts` (gpt_parameter_gradients splits the work this way): the wte rows
// of tokens in the part's share of [0, V) and the wpe rows of its share of positions
// [0, longest row). Serial over positions within a part: two positions may share a token,
// and a fixed order keeps it exact.
template <typename T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int* inp, const RowLayout& rows, int C, int V, int part,
                      int parts) {
    const int v0 = share_begin(V, part, parts), v1 = share_begin(V, part + 1, parts);
    const int t0 = share_begin(rows.T, part, parts), t1 = share_begin(rows.T, part + 1, parts);
    for (int b = 0; b < rows.B; b++)
        for (int t = 0; t < rows.length(b); t++) {
            const size_t n = (size_t)rows.start[b] + t;
            const T* d = dout + n * C;
            const int token = inp[n];
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
// ... over a rectangular batch (B, T), every row T long (tests, and gpu::encoder_backward's reference)
template <typename T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int* inp, int B, int Tn, int C, int V = INT_MAX,
                      int part = 0, int parts = 1) {
    encoder_backward(dwte, dwpe, dout, inp, RowLayout::rectangle(B, Tn, 1), C, V, part, parts);
}

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, int N, int C) {
    // out (N,C), mean/rstd (N): normalise each row, biased variance, eps 1e-5
    // (the sums are `omp simd` reductions: without -ffast-math the compiler may not
    // reorder a float sum by itself, and would leave these loops scalar)
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

// The whole layer (tests, and gpu::layernorm_backward's reference): dinp += the input's
// gradient; dweight, dbias += the parameters'.
template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                        const T* mean, const T* rstd, int N, int C) {
    layernorm_backward_input(dinp, dout, inp, weight, mean, rstd, N, C);
    layernorm_backward_params(dweight, dbias, dout, inp, mean, rstd, N, C, 0, C);
}

// matmul_forward, matmul_backward_input and matmul_backward_weight are the BLAS seam's
// (cpu/blas.h): OpenBLAS or OpenMP loops.

// The whole layer (tests, and gpu::matmul_backward's reference): dinp (N, C) += dout @
// weight; dweight (OC, C) += dout^T @ inp; dbias (OC) += dout's column sums.
template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int C, int OC, int ld_dout) {
    matmul_backward_input(dinp, dout, weight, N, C, OC, ld_dout);
    matmul_backward_weight(dweight, dbias, dout, inp, N, C, ld_dout, 0, OC);
}

// qkv (B,T,3C) holds [q | k | v]; out (B,T,C); att (B,NH,T,T) causal softmax weights.
// One (row, head) per task: float on the packed tile, fp64 on the generic kernel
// (cpu/attention.h).
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

// The same over a packed batch (RowLayout): row b's qkv (len, 3C) and out (len, C) begin at
// position rows.start[b], its weights (NH, len, len) at rows.att_start[b] of att (A). Each
// row is its own causal block: no position attends across rows.
template <typename T>
void attention_forward(T* out, T* att, const T* qkv, const RowLayout& rows, int C, int NH) {
    if constexpr (!std::is_same_v<T, float>) {
        for (int b = 0; b < rows.B; b++)
            attention_forward_any(out + (size_t)rows.start[b] * C, att + rows.att_start[b],
                                  qkv + (size_t)rows.start[b] * 3 * C, 1, rows.length(b), C, NH);
    } else {
        for_each_row_head(rows.B, NH, C, [&](int b, int h, int hs, float scale) {
            static thread_local std::vector<float> scratch;  // grows once, reused
            const int len = rows.length(b);
            if (scratch.size() < attention_head_scratch(len, hs)) scratch.resize(attention_head_scratch(len, hs));
            const float* q = qkv + (size_t)rows.start[b] * 3 * C + h * hs;
            attention_head_forward(out + (size_t)rows.start[b] * C + h * hs, C, att + rows.att_start[b] + (size_t)h * len * len,
                                   len, q, 3 * C, q + C, q + 2 * C, 3 * C, 0, len, 0, hs, scale, scratch.data());
        });
    }
}

// ... and its backward; scratch: (omp_get_max_threads(), per_thread) values, per_thread at
// least attention_scratch_per_thread(rows.T, hs)
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, T* scratch, size_t per_thread,
                        const RowLayout& rows, int C, int NH, bool accumulate = true) {
    if constexpr (!std::is_same_v<T, float>) {
        for (int b = 0; b < rows.B; b++) {
            const size_t at = (size_t)rows.start[b];
            attention_backward_any(dqkv + at * 3 * C, dout + at * C, qkv + at * 3 * C, att + rows.att_start[b], scratch,
                                   1, rows.length(b), C, NH, accumulate);
        }
    } else {
        for_each_row_head(rows.B, NH, C, [&](int b, int h, int hs, float scale) {
            const int len = rows.length(b);
            float* sc = scratch + (size_t)omp_get_thread_num() * per_thread;
            const size_t at = (size_t)rows.start[b];
            const float* q = qkv + at * 3 * C + h * hs;
            float* dq = dqkv + at * 3 * C + h * hs;
            const float* d = dout + at * C + h * hs;
            const float* a = att + rows.att_start[b] + (size_t)h * len * len;
            auto run = accumulate ? attention_head_backward<true> : attention_head_backward<false>;
            run(dq, dq + C, dq + 2 * C, 3 * C, d, C, q, q + C, q + 2 * C, 3 * C, a, len, hs, scale, sc);
        });
    }
}

// GELU, tanh approximation (GPT-2's)
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

// (tests, and gpu::residual_backward's reference: gpt_backward passes a residual's gradient
// on as layernorm_backward_input's base instead)
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
                                T* grads_memory, const GPTConfig& c, size_t N, size_t A) {
    size_t sizes[NUM_ACTIVATION_TENSORS];
    fill_packed_activation_sizes(sizes, c, N, A);
    point_activations(acts, acts_memory, sizes);
    sizes[NUM_ACTIVATION_TENSORS - 1] = 0;
    point_activations(grads, grads_memory, sizes);
    grads.logits = acts.logits;
}

// Re-points the activation tensors for a batch of these rows inside the allocation.
template <typename T>
void gpt_shape_activations(GPT<T>& m, const RowLayout& rows) {
    point_training_activations(m.acts, m.grads_acts, m.acts_memory.data(), m.grads_acts_memory.data(), m.config,
                               rows.N, rows.att());
}

template <typename T>
GPT<T>& GPT<T>::operator=(const GPT<T>& o) {
    if (this == &o) return *this;
    config = o.config;
    memcpy(param_sizes, o.param_sizes, sizeof param_sizes);
    num_parameters = o.num_parameters;
    params_memory = o.params_memory;
    grads_memory = o.grads_memory;
    max_N = o.max_N;
    max_T = o.max_T;
    max_att = o.max_att;
    acts_memory = o.acts_memory;
    grads_acts_memory = o.grads_acts_memory;
    attention_scratch = o.attention_scratch;
    inputs = o.inputs;
    batch = o.batch;
    params = {};
    grads = {};
    acts = {};
    grads_acts = {};
    if (!params_memory.empty()) point_parameters(params, params_memory.data(), param_sizes);
    if (!grads_memory.empty()) point_parameters(grads, grads_memory.data(), param_sizes);
    if (!acts_memory.empty())
        point_training_activations(acts, grads_acts, acts_memory.data(), grads_acts_memory.data(), config,
                                   batch.B ? batch.N : max_N, batch.B ? batch.att() : max_att);
    return *this;
}

// The gradients, and activations for a batch of these rows: allocated when the largest
// batch so far does not hold them (positions, attention weights or longest row).
template <typename T>
void gpt_prepare_training(GPT<T>& m, const RowLayout& rows) {
    GKD_ASSERT(rows.T <= m.config.max_seq_len, "batch longer than the context");
    if (m.grads_memory.empty()) {
        m.grads_memory.assign(m.num_parameters, T(0));
        point_parameters(m.grads, m.grads_memory.data(), m.param_sizes);
    }
    if (rows.N <= m.max_N && rows.att() <= m.max_att && rows.T <= m.max_T) return;
    m.max_N = std::max(rows.N, m.max_N);
    m.max_T = std::max(rows.T, m.max_T);
    m.max_att = std::max(rows.att(), m.max_att);
    size_t sizes[NUM_ACTIVATION_TENSORS], total = 0;
    fill_packed_activation_sizes(sizes, m.config, m.max_N, m.max_att);
    for (size_t s : sizes) total += s;
    m.acts_memory.assign(total, T(0));
    m.grads_acts_memory.assign(total - sizes[NUM_ACTIVATION_TENSORS - 1], T(0));  // all but the logits
    m.batch = RowLayout();
    point_training_activations(m.acts, m.grads_acts, m.acts_memory.data(), m.grads_acts_memory.data(), m.config,
                               m.max_N, m.max_att);
    m.inputs.assign((size_t)m.max_N, 0);
}
template <typename T>
void gpt_prepare_training(GPT<T>& m, int B, int Tn) {
    gpt_prepare_training(m, RowLayout::rectangle(B, Tn, m.config.num_heads));
}



// Rows [b0, b1) of a packed batch: a RowLayout of those rows alone, their positions and
// weights from 0 (where a share's slice of the batch's tensors begins is the batch's
// start[b0] and att_start[b0]).
inline RowLayout rows_slice(const RowLayout& r, int b0, int b1, int NH) {
    std::vector<int> start(r.start.begin() + b0, r.start.begin() + b1 + 1);
    for (int& s : start) s -= r.start[b0];
    return RowLayout::packed(start.data(), b1 - b0, NH);
}

// Where part `part` of `parts` of the threads begins among a batch's rows: contiguous
// shares of rows that hold about equal positions (rows are never split).
inline int row_share_begin(const RowLayout& r, int part, int parts) {
    if (part >= parts) return r.B;
    const long long goal = (long long)r.N * part / parts;
    return int(std::lower_bound(r.start.begin(), r.start.begin() + r.B, goal) - r.start.begin());
}

// gpt_forward on rows [b0, b1) of the batch (the activations' positions of those rows).
template <typename T>
void gpt_forward_rows(GPT<T>& m, int b0, int b1) {
    if (b1 <= b0) return;
    const GPTConfig& c = m.config;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads, N = m.batch.N;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    const RowLayout rows = rows_slice(m.batch, b0, b1, NH);
    const int n = rows.N;                       // this share: its rows' positions
    const size_t r0 = (size_t)m.batch.start[b0];  // its first position
    const size_t A = m.batch.att();             // a layer's attention weights
    ParameterTensors<T>& p = m.params;
    ActivationTensors<T>& a = m.acts;
    encoder_forward(a.encoded + r0 * C, m.inputs.data() + r0, p.wte, p.wpe, rows, C);
    for (int l = 0; l < L; l++) {
        // where this share starts in layer l's slabs: (N, C), (N, 3C), (N, 4C), the (N)
        // layernorm statistics, and the (A) attention weights
        const size_t at_C = ((size_t)l * N + r0) * C, at_3C = 3 * at_C, at_4C = 4 * at_C, at_stat = (size_t)l * N + r0;
        const size_t at_att = (size_t)l * A + m.batch.att_start[b0];
        const T* residual = l == 0 ? a.encoded + r0 * C : a.residual3 + at_C - (size_t)N * C;
        layernorm_forward(a.ln1 + at_C, a.ln1_mean + at_stat, a.ln1_rstd + at_stat, residual, p.ln1w + l * C,
                          p.ln1b + l * C, n, C);
        matmul_forward(a.qkv + at_3C, a.ln1 + at_C, p.qkvw + (size_t)l * 3 * C * C, p.qkvb + l * 3 * C, n, C, 3 * C,
                       3 * C);
        attention_forward(a.atty + at_C, a.att + at_att, a.qkv + at_3C, rows, C, NH);
        matmul_forward(a.attproj + at_C, a.atty + at_C, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, n, C, C, C);
        residual_forward(a.residual2 + at_C, residual, a.attproj + at_C, (size_t)n * C);
        layernorm_forward(a.ln2 + at_C, a.ln2_mean + at_stat, a.ln2_rstd + at_stat, a.residual2 + at_C, p.ln2w + l * C,
                          p.ln2b + l * C, n, C);
        matmul_forward(a.fch + at_4C, a.ln2 + at_C, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, n, C, 4 * C, 4 * C);
        gelu_forward(a.fch_gelu + at_4C, a.fch + at_4C, (size_t)n * 4 * C);
        matmul_forward(a.fcproj + at_C, a.fch_gelu + at_4C, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, n,
                       4 * C, C, C);
        residual_forward(a.residual3 + at_C, a.residual2 + at_C, a.fcproj + at_C, (size_t)n * C);
    }
    const T* last = a.residual3 + ((size_t)(L - 1) * N + r0) * C;
    layernorm_forward(a.lnf + r0 * C, a.lnf_mean + r0, a.lnf_rstd + r0, last, p.lnfw, p.lnfb, n, C);
    T* logits = a.logits + r0 * Vp;
    matmul_forward(logits, a.lnf + r0 * C, p.wte, (const T*)nullptr, n, C, V, Vp);
    if (Vp > V)
        for (int i = 0; i < n; i++) std::fill(logits + (size_t)i * Vp + V, logits + (size_t)(i + 1) * Vp, T(0));
}

// The model's activations shaped for a packed batch: B rows beginning at row_start
// (B + 1 offsets into tokens (N)), the tokens checked and kept for the backward.
template <typename T>
void gpt_shape_batch(GPT<T>& m, const int* tokens, const int* row_start, int B) {
    const GPTConfig& c = m.config;
    RowLayout rows = RowLayout::packed(row_start, B, c.num_heads);
    for (int b = 0; b < B; b++) GKD_ASSERT(rows.length(b) >= 1, "a row of a training batch with no position");
    gpt_prepare_training(m, rows);
    gpt_shape_activations(m, rows);
    for (int i = 0; i < rows.N; i++) {
        GKD_ASSERT(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id out of range");
        m.inputs[i] = tokens[i];
    }
    m.batch = std::move(rows);
}

// tokens (N), B rows end to end from row_start (B + 1) -> acts.logits (N, Vp), keeping
// what gpt_backward needs.
template <typename T>
void gpt_forward(GPT<T>& m, const int* tokens, const int* row_start, int B) {
    gpt_shape_batch(m, tokens, row_start, B);
    const int parts = row_split_threads(B);
    if (parts == 1) return gpt_forward_rows(m, 0, B);
    #pragma omp parallel num_threads(parts)
    {
        const int t = omp_get_thread_num();
        gpt_forward_rows(m, row_share_begin(m.batch, t, parts), row_share_begin(m.batch, t + 1, parts));
    }
}
// ... a rectangular batch: tokens (B, T)
template <typename T>
void gpt_forward(GPT<T>& m, const int* tokens, int B, int Tn) {
    const RowLayout r = RowLayout::rectangle(B, Tn, m.config.num_heads);
    gpt_forward(m, tokens, r.start.data(), B);
}

template <typename T>
void gpt_zero_grad(GPT<T>& m) {
    std::fill(m.grads_memory.begin(), m.grads_memory.end(), T(0));
}

// The first half of gpt_backward, on rows [b0, b1): the activations' gradients, from the
// logits' (which the loss wrote over the logits) down to the embeddings'. `scratch` is
// attention_backward's, per_thread values for each thread this call runs on.
template <typename T>
void gpt_backward_rows(GPT<T>& m, int b0, int b1, T* scratch, size_t per_thread) {
    if (b1 <= b0) return;
    const GPTConfig& c = m.config;
    const int C = c.channels, L = c.num_layers, NH = c.num_heads, N = m.batch.N;
    const int V = c.vocab_size, Vp = c.padded_vocab_size;
    const RowLayout rows = rows_slice(m.batch, b0, b1, NH);
    const int n = rows.N;
    const size_t r0 = (size_t)m.batch.start[b0], A = m.batch.att();
    const ParameterTensors<T>& p = m.params;
    const ActivationTensors<T>& a = m.acts;
    ActivationTensors<T>& d = m.grads_acts;
    // Every activation gradient is written before it is read, each tensor's first write
    // overwriting (no zeroing pass over them). The projections' output gradients are the
    // residual stream's: d.residual3 and d.residual2 serve as d.fcproj and d.attproj (which
    // the CPU leaves unused), and a residual's gradient passes through layernorm's backward
    // as its base.
    matmul_backward_input(d.lnf + r0 * C, d.logits + r0 * Vp, p.wte, n, C, V, Vp, false);
    const size_t at_last_C = ((size_t)(L - 1) * N + r0) * C;
    layernorm_backward_input(d.residual3 + at_last_C, d.lnf + r0 * C, a.residual3 + at_last_C, p.lnfw, a.lnf_mean + r0,
                             a.lnf_rstd + r0, n, C, (const T*)nullptr);
    for (int l = L - 1; l >= 0; l--) {
        // where this share starts in layer l's slabs, as in gpt_forward_rows
        const size_t at_C = ((size_t)l * N + r0) * C, at_3C = 3 * at_C, at_4C = 4 * at_C, at_stat = (size_t)l * N + r0;
        const size_t at_att = (size_t)l * A + m.batch.att_start[b0];
        const T* residual = l == 0 ? a.encoded + r0 * C : a.residual3 + at_C - (size_t)N * C;
        T* dresidual = l == 0 ? d.encoded + r0 * C : d.residual3 + at_C - (size_t)N * C;
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        matmul_backward_input(d.fch_gelu + at_4C, d.residual3 + at_C, p.fcprojw + (size_t)l * C * 4 * C, n, 4 * C, C, C,
                              false);
        gelu_backward(d.fch + at_4C, a.fch + at_4C, d.fch_gelu + at_4C, (size_t)n * 4 * C, false);
        matmul_backward_input(d.ln2 + at_C, d.fch + at_4C, p.fcw + (size_t)l * 4 * C * C, n, C, 4 * C, 4 * C, false);
        layernorm_backward_input(d.residual2 + at_C, d.ln2 + at_C, a.residual2 + at_C, p.ln2w + l * C,
                                 a.ln2_mean + at_stat, a.ln2_rstd + at_stat, n, C, (const T*)(d.residual3 + at_C));
        // attention: residual2 = residual + attproj(attention(qkv(ln1(residual))))
        matmul_backward_input(d.atty + at_C, d.residual2 + at_C, p.attprojw + (size_t)l * C * C, n, C, C, C, false);
        attention_backward(d.qkv + at_3C, d.atty + at_C, a.qkv + at_3C, a.att + at_att, scratch, per_thread, rows, C, NH,
                           false);
        matmul_backward_input(d.ln1 + at_C, d.qkv + at_3C, p.qkvw + (size_t)l * 3 * C * C, n, C, 3 * C, 3 * C, false);
        layernorm_backward_input(dresidual, d.ln1 + at_C, residual, p.ln1w + l * C, a.ln1_mean + at_stat,
                                 a.ln1_rstd + at_stat, n,
                                 C, (const T*)(d.residual2 + at_C));
    }
}

// The second half of gpt_backward: every parameter's gradient, a sum over all N positions
// of the activations and their gradients. Part `part` of `parts` takes its share of each
// tensor's output channels (each element is summed by one thread, positions in order).
template <typename T>
void gpt_parameter_gradients(GPT<T>& m, int part, int parts) {
    const GPTConfig& c = m.config;
    const int C = c.channels, L = c.num_layers, N = m.batch.N;
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
        // where layer l starts in its slabs: (N, C), (N, 3C), (N, 4C), (N)
        const size_t at_C = (size_t)l * N * C, at_3C = 3 * at_C, at_4C = 4 * at_C, at_stat = (size_t)l * N;
        const T* residual = l == 0 ? a.encoded : a.residual3 + at_C - (size_t)N * C;
        // (the projections' output gradients are the residual stream's: gpt_backward_rows)
        matmul_backward_weight(g.fcprojw + (size_t)l * C * 4 * C, g.fcprojb + l * C, d.residual3 + at_C,
                               a.fch_gelu + at_4C, N, 4 * C, C, c0, c1);
        matmul_backward_weight(g.fcw + (size_t)l * 4 * C * C, g.fcb + l * 4 * C, d.fch + at_4C, a.ln2 + at_C, N, C, 4 * C,
                               c40, c41);
        layernorm_backward_params(g.ln2w + l * C, g.ln2b + l * C, d.ln2 + at_C, a.residual2 + at_C, a.ln2_mean + at_stat,
                                  a.ln2_rstd + at_stat, N, C, c0, c1);
        matmul_backward_weight(g.attprojw + (size_t)l * C * C, g.attprojb + l * C, d.residual2 + at_C, a.atty + at_C, N,
                               C, C, c0, c1);
        matmul_backward_weight(g.qkvw + (size_t)l * 3 * C * C, g.qkvb + l * 3 * C, d.qkv + at_3C, a.ln1 + at_C, N, C,
                               3 * C, c30, c31);
        layernorm_backward_params(g.ln1w + l * C, g.ln1b + l * C, d.ln1 + at_C, residual, a.ln1_mean + at_stat,
                                  a.ln1_rstd + at_stat, N, C, c0, c1);
    }
    encoder_backward(g.wte, g.wpe, d.encoded, m.inputs.data(), m.batch, C, V, part, parts);
}

// Accumulates parameter gradients from grads_acts.logits (N, Vp), which the loss wrote
// over the logits. Two sweeps: the activations' gradients row by row (each thread its rows,
// as the forward), then the parameters' by output channel (each thread its channels of
// every tensor): neither sweep needs a lock or a per-thread copy of the gradients.
template <typename T>
void gpt_backward(GPT<T>& m) {
    const int B = m.batch.B, parts = row_split_threads(B), threads = omp_get_max_threads();
    const size_t per_thread = attention_scratch_per_thread<T>(m.max_T, m.config.channels / m.config.num_heads);
    if (m.attention_scratch.size() < threads * per_thread) m.attention_scratch.assign(threads * per_thread, T(0));
    if (parts == 1) {
        gpt_backward_rows(m, 0, B, m.attention_scratch.data(), per_thread);
        gpt_parameter_gradients(m, 0, 1);
        return;
    }
    #pragma omp parallel num_threads(parts)
    {
        const int t = omp_get_thread_num();
        gpt_backward_rows(m, row_share_begin(m.batch, t, parts), row_share_begin(m.batch, t + 1, parts),
                          m.attention_scratch.data() + t * per_thread, per_thread);
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
    std::vector<T> x, ln, qkv, atty, proj, fch;  // (rows, C | C | 3C | C | C | 4C): every new position
    std::vector<T> mean, rstd;                    // (rows) layernorm statistics, kept only when recording
    std::vector<T> last_x, last_ln, last_mean, last_rstd;  // (batch rows, C | C | 1 | 1): the LM head at last positions
    std::vector<T> scores;                        // (threads, NH, maxT)
    std::vector<T> block_scores;                  // (threads, Tn, maxT): the attention weights of many new tokens
    std::vector<T> head_scratch;                  // (threads, attention_head_scratch(maxT, hs)): their operands' panels
    DecodeWeights decode;                         // float only: the weights packed for one generation's decode steps
    void ensure(size_t rows, int C, int NH, int maxT, int Tn = 1, size_t batch_rows = 1) {
        size_t threads = (size_t)omp_get_max_threads();
        if (last_x.size() < batch_rows * C) {
            last_x.assign(batch_rows * C, T(0)); last_ln.assign(batch_rows * C, T(0));
            last_mean.assign(batch_rows, T(0)); last_rstd.assign(batch_rows, T(0));
        }
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

// The steps of one inference pass over a share of rows (InferShare), and the record that
// lets a training forward reuse sampling's activations: cpu/inference.h.
#include "cpu/inference.h"

// gpt_infer (below) on batch rows [b0, b1): the layer loop of gpt_forward, on scratch
template <typename T>
void gpt_infer_rows(const GPT<T>& m, KVCache<T>& cache, InferScratch<T>& s, int b0, int b1, int slot,
                    const int* tokens, const int* io_start, const int* cache_row, const int* start, const int* n_new,
                    int Tn, T* logits, bool all_positions, ForwardRecord<T>* rec, const int* head_from,
                    const int* first) {
    if (b1 <= b0) return;
    InferShare<T> r(m, cache, s, b0, b1, slot, tokens, io_start, cache_row, start, n_new, Tn, logits, all_positions,
                    rec, head_from, first);
    if (rec) r.record_positions();
    r.embed();
    // many new tokens run the tiled attention (float, or fp64 through a BLAS), one the decode
    const bool many = Tn > 1 && (std::is_same_v<T, float> || HAVE_BLAS);
    for (int l = 0; l < m.config.num_layers; l++) {
        r.qkv_projection(l);
        if (many) r.attention_many(l); else r.attention_decode(l);
        const int n = r.rows_after_attention(l);
        r.attention_projection(l, n);
        r.mlp(l, n);
    }
    if (all_positions) r.head_all_positions(); else r.head_last_position();
}

// Runs n_new[b] new tokens of each row b through the model, appending their keys and
// values to the cache, and attending over everything the row has cached so far. Only the
// new tokens are computed: the rows lie end to end in the scratch (sum of n_new rows), so
// rows of different lengths (prompts in a prefill) spend nothing on padding.
//   tokens    row b's new tokens: at io_start[b] (packed), or with io_start null at b Tn
//             ((Bn, Tn), right-padded; Tn >= every n_new)
//   cache_row (Bn)     which cache row each batch row uses
//   start     (Bn)     the position of the row's first new token (= tokens already cached)
//   logits    all_positions ? laid out as tokens, Vp per position : (Bn, Vp) at each row's
//             last new token. Padded: the positions past n_new[b] get zeros; packed: each
//             row's span from io_start[b] must hold its n_new[b] rows, and only those are written.
//   head_from (Bn) or null: with all_positions, row b's logits are needed at its new
//             positions [head_from[b], n_new[b]) only (a loss's targets); the others are
//             zeros, and the last layer skips what only they need (see gpt_infer_rows)
// Prefill is start = 0 with the prompts; decode is Tn = 1 with start = current length. An
// empty cache (KVCache with rows = 0) is a pass that nothing continues (the teacher's):
// every row starts at 0, and attention reads keys and values from the pass's own qkv.
//
// Rows are shared out among the threads as in the training passes (row_split_threads):
// with enough rows each thread runs its share through the whole model alone; with few
// (one prompt at a time, say) all threads work on each layer.
template <typename T>
void gpt_infer(const GPT<T>& m, KVCache<T>& cache, InferScratch<T>& s, const int* tokens, const int* io_start,
               const int* cache_row, const int* start, const int* n_new, int Bn, int Tn, T* logits,
               bool all_positions, ForwardRecord<T>* rec = nullptr, const int* head_from = nullptr) {
    const GPTConfig& c = m.config;
    std::vector<int> first(Bn + 1, 0);  // row b's first scratch row
    for (int b = 0; b < Bn; b++) {
        GKD_ASSERT(start[b] + n_new[b] <= c.max_seq_len && (cache.rows == 0 ? start[b] == 0 : cache_row[b] < cache.rows),
                   "sequence past the context, or a continued row without a cache");
        GKD_ASSERT(n_new[b] >= 0 && (io_start || n_new[b] <= Tn), "a row with more new tokens than its room");
        first[b + 1] = first[b] + n_new[b];
    }
    s.ensure((size_t)std::max(first[Bn], 1), c.channels, c.num_heads, c.max_seq_len, Tn, (size_t)std::max(Bn, 1));
    int parts = row_split_threads(Bn);
    // packed decode with under a register tile of rows per thread: the threads share out
    // the weights instead of each reading all of them for its one or two rows
    if (decode_packed(m, s, Tn) && Bn < tile_rows() * parts) parts = 1;
    if (parts == 1)
        return gpt_infer_rows(m, cache, s, 0, Bn, -1, tokens, io_start, cache_row, start, n_new, Tn, logits,
                              all_positions, rec, head_from, first.data());
    #pragma omp parallel num_threads(parts)
    {
        const int t = omp_get_thread_num();
        gpt_infer_rows(m, cache, s, share_begin(Bn, t, parts), share_begin(Bn, t + 1, parts), t, tokens, io_start,
                       cache_row, start, n_new, Tn, logits, all_positions, rec, head_from, first.data());
    }
}
// ... with the tokens (Bn, Tn), right-padded
template <typename T>
void gpt_infer(const GPT<T>& m, KVCache<T>& cache, InferScratch<T>& s, const int* tokens, const int* cache_row,
               const int* start, const int* n_new, int Bn, int Tn, T* logits, bool all_positions,
               ForwardRecord<T>* rec = nullptr, const int* head_from = nullptr) {
    gpt_infer(m, cache, s, tokens, (const int*)nullptr, cache_row, start, n_new, Bn, Tn, logits, all_positions, rec,
              head_from);
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
    // rng.normal() called in sequence (tested); the in-order draws are the small part
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

