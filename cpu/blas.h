// cpu/blas.h — the BLAS seam: every large matmul of the CPU path goes through gemm()
// here, OpenBLAS's cblas_sgemm/cblas_dgemm when the Makefile finds Debian's OpenMP build
// (GKD_BLAS), else OpenMP loops written here.
//
// GPU twin: cuda/common.cuh's gemm wrappers (cuBLAS, in the same row-major terms) and
// cuda/layers.cuh's matmul_forward/backward.
//
// Tricks worth knowing:
// - Row-major throughout: weights are (out, in), as in llm.c's checkpoints, so the forward
//   is inp @ weight^T and cblas is called with CblasRowMajor and a transposed B.
// - The backward comes in halves (the input's gradient; the weight's and bias's for a
//   range of output channels) so that gpt_backward can share rows for the first and
//   channels for the second without locks.
// - accumulate = false lets the backward's first write of a tensor overwrite it, so no
//   pass zeroes the activations' gradients first.
// - OpenBLAS with OPENBLAS_CORETYPE set in the environment uses the kernel that names,
//   not the one it would detect: `gkd bench` prints which one ran.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "../utils.h"

// The floating-point operations of every matmul with a weight (2 N C OC each: the
// linear layers and the LM head, forward and backward; attention's products are not
// counted), from every thread: what the tests hold the CUDA path's matmuls to
// (tests/test_gpu.cu). One relaxed atomic add a call.
inline std::atomic<uint64_t>& matmul_flops_counted() {
    static std::atomic<uint64_t> n{0};
    return n;
}
inline void count_matmul(size_t N, size_t C, size_t OC) {
    matmul_flops_counted().fetch_add(2 * N * C * OC, std::memory_order_relaxed);
}

#ifdef GKD_BLAS
#include <cblas.h>
constexpr bool HAVE_BLAS = true;
#else
constexpr bool HAVE_BLAS = false;
#endif

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
    count_matmul(N, C, OC);
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
    count_matmul(N, C, OC);
    gemm(false, false, N, C, OC, dout, ld_dout, weight, C, T(accumulate ? 1 : 0), dinp, C);
}

template <typename T>
void matmul_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, int N, int C, int ld_dout, int o0,
                            int o1) {
    if (o1 <= o0) return;
    // dweight[o0:o1] (o1-o0, C) += dout[:, o0:o1]^T @ inp (N, C)
    count_matmul(N, C, o1 - o0);
    gemm(true, false, o1 - o0, C, N, dout + o0, ld_dout, inp, C, T(1), dweight + (size_t)o0 * C, C);
    if (dbias) {                                                               // dbias[o0:o1] += column sums of dout
        // 64 channels at a time, their sums held in a local block (summed in dbias, which
        // could alias dout, each add would be a load and a store), rows in order
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
    count_matmul(N, C, OC);
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
    count_matmul(N, C, OC);
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
    count_matmul(N, C, o1 > o0 ? o1 - o0 : 0);
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
