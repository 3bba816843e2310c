// cpu/attention.h — causal attention's CPU kernels: per (row, head) on the packed tile
// (float), the generic GEMM or loop code (fp64, the tests' reference), and a decode step's
// scores and weighted values against a KV cache.
//
// GPU twin: cuda/layers.cuh's attention_forward/backward (batched cuBLAS GEMMs and a
// causal softmax kernel) and cuda/sampling.cuh's decode attention.
//
// Tricks worth knowing:
// - Every softmax subtracts its row's max before exp.
// - Float attention over many positions packs K^T (V^T in the backward) into panels of 16
//   and runs packed_tile, skipping the tiles above the causal diagonal; the masked zeros a
//   chain runs over add exactly nothing. Each output is one fma chain, so a row's values
//   do not depend on its batch.
// - dS^T and A^T are read down the columns of dS and A (packed_tile's ldk), never
//   transposed in memory.
// - Decode scores eight keys at a time (AVX-512: sixteen, two per register), summed across
//   lanes together (hadd and a swap of halves); decode's values are accumulated in
//   registers, 64 channels at a time (AVX-512: 128). The AVX-512 and AVX2 variants (picked
//   at run time, cpu/packed_tile.h's cpu_kernels()) sum in the same order: the same bits.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../utils.h"
#include "blas.h"
#include "packed_tile.h"
#include "vector_math.h"

// ----------------------------------------------------------------------------
// causal attention of one (row, head) on the packed tile (float)
//
// Attention at T <= a few hundred is many small products per (row, head): (T, hs) x (hs, T)
// and back, four of them per (row, head) in the backward. As sgemm calls each one pays
// sgemm's per-call cost (its own packing of both operands) on a product too small to
// hide it. Here each (row, head) packs its operands into panels of 16 (keys or channels; a copy of
// O(T hs) values against O(T^2 hs) work) and runs packed_tile over them, skipping the
// blocks above the causal diagonal. Each output is one fma chain in order, so a row's
// values do not depend on the batch. The zeros of the masked part, where a chain runs
// over them, add exactly nothing.

// Scratch (floats) one (row, head) of the kernels below needs, for up to T positions.
inline size_t attention_head_scratch(int T, int hs) {
    return (size_t)T * T + (size_t)panel_round(T) * panel_round(hs) * 2;
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
    for (int t0 = q0; t0 < q1; t0 += tile_rows()) {
        const int R = std::min(tile_rows(), q1 - t0), kc = kbase + t0 + R;  // the tile's keys
        float* S = att + (size_t)(t0 - q0) * ld_att;                               // (R, kc)
        packed_tiles(R, S, ld_att, q + (size_t)t0 * ldq, ldq, 1, hs, key_panels, DECODE_PANEL,
                     (size_t)hs * DECODE_PANEL, nullptr, kc);
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
        packed_tiles(R, out + (size_t)t0 * ldo, ldo, S, ld_att, 1, kc, value_panels, ldv, v_step, nullptr, hs);
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
    for (int t0 = 0; t0 < T; t0 += tile_rows()) {
        const int R = std::min(tile_rows(), T - t0), kc = t0 + R;
        packed_tiles(R, g + (size_t)t0 * T, T, dout + (size_t)t0 * ldo, ldo, 1, hs, room, DECODE_PANEL,
                     (size_t)hs * DECODE_PANEL, nullptr, kc);
    }
    causal_softmax_backward(g, att, T, scale);
    // dQ = dS K: query t sums over keys [0, t] (its tile's keys: zeros past t)
    // dK = dS^T Q and dV = A^T dO: key j sums over queries [j, T) (from its tile's first key:
    // zeros before j), reading dS and A down their columns
    size_t ldk_, k_step, ldq_, q_step, ldo_, o_step;
    const float* kp = columns_as_panels(k, ldqkv, T, hs, room, &ldk_, &k_step);
    const float* qp = columns_as_panels(q, ldqkv, T, hs, room + P, &ldq_, &q_step);
    for (int t0 = 0; t0 < T; t0 += tile_rows()) {
        const int R = std::min(tile_rows(), T - t0);
        packed_tiles<ACCUMULATE>(R, dq + (size_t)t0 * ld_d, ld_d, g + (size_t)t0 * T, T, 1, t0 + R, kp, ldk_, k_step,
                                 nullptr, hs);
        packed_tiles<ACCUMULATE>(R, dk + (size_t)t0 * ld_d, ld_d, g + (size_t)t0 * T + t0, 1, T, T - t0,
                                 qp + (size_t)t0 * ldq_, ldq_, q_step, nullptr, hs);
    }
    const float* op = columns_as_panels(dout, ldo, T, hs, room, &ldo_, &o_step);
    for (int t0 = 0; t0 < T; t0 += tile_rows()) {
        const int R = std::min(tile_rows(), T - t0);
        packed_tiles<ACCUMULATE>(R, dv + (size_t)t0 * ld_d, ld_d, att + (size_t)t0 * T + t0, 1, T, T - t0,
                                 op + (size_t)t0 * ldo_, ldo_, o_step, nullptr, hs);
    }
}

// ----------------------------------------------------------------------------
// generic attention, any T: fp64's (the tests' reference, gpt_infer's fp64 prefill)

#ifdef GKD_BLAS
// Queries per block in the GEMM attention of many new tokens (gpt_infer in fp64; float
// runs attention_head_forward): block [q0, q1) multiplies keys [0, q1) only, so a block
// skips the keys after its last query (whole squares would compute them and mask them).
constexpr int ATTENTION_QUERY_BLOCK = 32;

// Queries t in [q0, q1) of one (row, head), at positions kbase + t, against keys
// [0, kbase + t], as GEMMs per block of ATTENTION_QUERY_BLOCK queries (block [b0, b1)
// multiplies keys [0, kbase + b1) only, skipping most of the masked triangle): q (rows t,
// stride ldq), k and v (rows j, stride ldkv), out (rows t, stride ldo). S is one block's
// scores (ATTENTION_QUERY_BLOCK, kbase + q1); on_weights(t, row) sees query t's softmaxed
// weights over its keys. gpt_infer's fp64 prefill (float runs attention_head_forward).
template <typename T, typename OnWeights>
void attention_head_forward_blocks(T* out, size_t ldo, T* S, const T* q, size_t ldq, const T* k, const T* v,
                                   size_t ldkv, int q0, int q1, int kbase, int hs, T scale, OnWeights on_weights) {
    for (int b0 = q0; b0 < q1; b0 += ATTENTION_QUERY_BLOCK) {
        const int b1 = std::min(q1, b0 + ATTENTION_QUERY_BLOCK), klen = kbase + b1;
        gemm(false, true, b1 - b0, klen, hs, q + (size_t)b0 * ldq, ldq, k, ldkv, T(0), S, klen);
        for (int t = b0; t < b1; t++) {
            T* row = S + (size_t)(t - b0) * klen;
            const int valid = kbase + t + 1;
            T maxv = -INFINITY, sum = 0;
            #pragma omp simd reduction(max : maxv)
            for (int j = 0; j < valid; j++) maxv = std::max(maxv, row[j] * scale);
            #pragma omp simd reduction(+ : sum)
            for (int j = 0; j < valid; j++) { row[j] = exp_fast(row[j] * scale - maxv); sum += row[j]; }
            const T inv = T(1) / sum;
            for (int j = 0; j < valid; j++) row[j] *= inv;
            std::fill(row + valid, row + klen, T(0));
            on_weights(t, row);
        }
        gemm(false, false, b1 - b0, hs, klen, S, klen, v, ldkv, T(0), out + (size_t)b0 * ldo, ldo);
    }
}

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

// Scratch (values) attention_backward needs per thread, for up to Tn positions.
template <typename T>
size_t attention_scratch_per_thread(int Tn, int hs) {
    if constexpr (std::is_same_v<T, float>) return attention_head_scratch(Tn, hs);  // which holds a (T, T) first
    return (size_t)Tn * Tn;
}


// ----------------------------------------------------------------------------
// a decode step: one new token per row against its KV cache, all heads at once

// A decode step's attention scores: sc[h * len + j] = (q . key j) over head h's channels,
// times scale, for keys j in [0, len) (key_row(j): the key's C channels). Keys are taken
// eight at a time (AVX-512: sixteen): each key row is read once for all heads, and a
// head's eight dot products are summed across lanes together (hadd and a swap of halves:
// ten shuffles and adds for eight scores, against a horizontal sum of its own per score).
// AVX-512 holds two keys per register (keys u and u + 8 in its halves) and sums them in
// the same tree, so both variants give the same bits. A score's rounding depends only on
// its position and the row's length, never on the batch.
#ifdef GKD_X86_KERNELS
// keys [j0, j1) (j1 - j0 a multiple of 8), eight at a time
template <typename KeyRow>
GKD_TARGET_AVX2 inline void decode_scores_avx2(float* sc, const float* q, KeyRow& key_row, int j0, int j1, int len,
                                              int NH, int hs, float scale) {
    for (int j = j0; j < j1; j += 8) {
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
}
// [lo | hi] (AVX512F alone: no DQ's float insert)
GKD_TARGET_AVX512 inline __m512 two_halves(__m256 lo, __m256 hi) {
    // (the masked forms, all lanes on, name a source for the lanes they keep: GCC 12 warns
    // that the plain forms' "undefined" source may be used uninitialized)
    const __m512d zero = _mm512_setzero_pd();
    const __m512d low = _mm512_mask_insertf64x4(zero, 0xff, zero, _mm256_castps_pd(lo), 0);
    return _mm512_castpd_ps(_mm512_mask_insertf64x4(low, 0xff, low, _mm256_castps_pd(hi), 1));
}
// _mm256_hadd_ps in each 256-bit half: [a0+a1, a2+a3, b0+b1, b2+b3] per 128-bit lane
GKD_TARGET_AVX512 inline __m512 hadd_halves(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xdd));
}
// keys [0, 16 floor(len / 16)), sixteen at a time: register u holds keys u (low half) and
// u + 8 (high half), and the tree of decode_scores_avx2 runs on both halves at once.
// Returns the keys done.
template <typename KeyRow>
GKD_TARGET_AVX512 inline int decode_scores_avx512(float* sc, const float* q, KeyRow& key_row, int len, int NH, int hs,
                                                 float scale) {
    int j = 0;
    for (; j + 16 <= len; j += 16) {
        const float* k[16];
        for (int u = 0; u < 16; u++) k[u] = key_row(j + u);
        for (int h = 0; h < NH; h++) {
            __m512 acc[8];
            #pragma GCC unroll 8
            for (int u = 0; u < 8; u++) acc[u] = _mm512_setzero_ps();
            for (int i = h * hs; i < (h + 1) * hs; i += 8) {
                const __m512 qv = two_halves(_mm256_loadu_ps(q + i), _mm256_loadu_ps(q + i));
                #pragma GCC unroll 8
                for (int u = 0; u < 8; u++)
                    acc[u] = _mm512_fmadd_ps(qv, two_halves(_mm256_loadu_ps(k[u] + i), _mm256_loadu_ps(k[u + 8] + i)), acc[u]);
            }
            // 128-bit lanes of the tree: [keys 0-3 low, keys 0-3 high, keys 8-11 low, keys 8-11 high]
            const __m512 k0123 = hadd_halves(hadd_halves(acc[0], acc[1]), hadd_halves(acc[2], acc[3]));
            const __m512 k4567 = hadd_halves(hadd_halves(acc[4], acc[5]), hadd_halves(acc[6], acc[7]));
            // low + high of each: keys 0-3, 4-7, 8-11, 12-15
            const __m512 lo = _mm512_mask_shuffle_f32x4(k0123, 0xffff, k0123, k4567, 0x88);  // lanes 0, 2 of each
            const __m512 hi = _mm512_mask_shuffle_f32x4(k0123, 0xffff, k0123, k4567, 0xdd);  // lanes 1, 3 of each
            // lo + hi holds keys [0-3, 8-11, 4-7, 12-15]: put them in order
            const __m512 mixed = _mm512_add_ps(lo, hi);
            const __m512 sums = _mm512_mask_permutexvar_ps(
                mixed, 0xffff, _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15), mixed);
            _mm512_storeu_ps(sc + (size_t)h * len + j, _mm512_mul_ps(sums, _mm512_set1_ps(scale)));
        }
    }
    return j;
}
#endif
template <typename T, typename KeyRow>
inline void decode_scores(T* sc, const T* q, KeyRow key_row, int len, int NH, int hs, T scale) {
    int j = 0;
#ifdef GKD_X86_KERNELS
    if constexpr (std::is_same_v<T, float>)
        if (hs % 8 == 0) {
            if (cpu_kernels() == CpuKernels::avx512) j = decode_scores_avx512(sc, q, key_row, len, NH, hs, scale);
            if (cpu_kernels() >= CpuKernels::avx2) {
                const int j1 = len - len % 8;
                decode_scores_avx2(sc, q, key_row, j, j1, len, NH, hs, scale);
                j = std::max(j, j1);
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
// overwritten. With AVX2 64 channels at a time stay in registers (eight accumulators, one
// head of 64 or more channels, or two of 32), with AVX-512 128 (eight zmm, each within one
// head), while the values stream past: per value one load and one fma per register,
// where accumulating in memory also loaded and stored o for every value. Each output is
// one chain over j in order, whatever the batch and the variant.
#ifdef GKD_X86_KERNELS
// The head sizes whose channels both vector variants keep in registers (a register never
// spans two heads' weights); others are summed in o by the loop of decode_values, in both
// variants alike, so that every variant makes the same chains.
inline bool decode_values_in_registers(int hs) { return hs % 64 == 0 || hs == 32; }
// channels [i0, C) in blocks of 64 while they last; returns where it stopped
template <typename ValueRow>
GKD_TARGET_AVX2 inline int decode_values_avx2(float* o, const float* w, ValueRow& value_row, int i0, int len, int C,
                                             int hs) {
    if (!decode_values_in_registers(hs)) return i0;
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
    return i0;
}
// channels [0, C) in blocks of 128 while they last; returns where it stopped
template <typename ValueRow>
GKD_TARGET_AVX512 inline int decode_values_avx512(float* o, const float* w, ValueRow& value_row, int len, int C,
                                                 int hs) {
    int i0 = 0;
    if (!decode_values_in_registers(hs)) return 0;
    for (; i0 + 128 <= C; i0 += 128) {
        const float* wu[8];  // register u's head's weights
        for (int u = 0; u < 8; u++) wu[u] = w + (size_t)((i0 + 16 * u) / hs) * len;
        __m512 acc[8];
        #pragma GCC unroll 8
        for (int u = 0; u < 8; u++) acc[u] = _mm512_setzero_ps();
        for (int j = 0; j < len; j++) {
            const float* v = value_row(j) + i0;
            #pragma GCC unroll 8
            for (int u = 0; u < 8; u++)
                acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(wu[u][j]), _mm512_loadu_ps(v + 16 * u), acc[u]);
        }
        #pragma GCC unroll 8
        for (int u = 0; u < 8; u++) _mm512_storeu_ps(o + i0 + 16 * u, acc[u]);
    }
    return i0;
}
#endif
template <typename T, typename ValueRow>
inline void decode_values(T* o, const T* w, ValueRow value_row, int len, int NH, int hs) {
    const int C = NH * hs;
    int i0 = 0;
#ifdef GKD_X86_KERNELS
    if constexpr (std::is_same_v<T, float>) {
        if (cpu_kernels() == CpuKernels::avx512) i0 = decode_values_avx512(o, w, value_row, len, C, hs);
        if (cpu_kernels() >= CpuKernels::avx2) i0 = decode_values_avx2(o, w, value_row, i0, len, C, hs);
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

// A decode step's softmax over one head's scores row (len), in place, max subtracted.
template <typename T>
inline void decode_softmax(T* row, int len) {
    T maxv = -INFINITY, sum = 0;
    #pragma omp simd reduction(max : maxv)
    for (int j = 0; j < len; j++) maxv = std::max(maxv, row[j]);
    #pragma omp simd reduction(+ : sum)
    for (int j = 0; j < len; j++) { row[j] = exp_fast(row[j] - maxv); sum += row[j]; }
    const T inv = T(1) / sum;
    for (int j = 0; j < len; j++) row[j] *= inv;
}
