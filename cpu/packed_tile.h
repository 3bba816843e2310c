// cpu/packed_tile.h — gkd's own register-tiled matmul kernel: up to 6 rows x 16 output
// channels held in 12 AVX accumulators, over operands laid out in panels of 16.
//
// GPU twin: none; the GPU's small products are cuBLAS's (cuda/common.cuh) and its decode
// matmuls cuda/sampling.cuh's.
//
// Tricks worth knowing:
// - Each output is one fma chain over k in order, then + bias. Its rounding therefore
//   depends on neither the rows around it, nor the tile it lands in, nor the thread
//   split: a row's sample does not depend on its batch. The scalar fallback (no AVX2/FMA)
//   uses std::fma and rounds exactly the same; a unit test holds both to the chain.
// - The tile is AVX2 (256-bit). On a CPU with AVX-512 it still runs AVX2 code: gkd does
//   not use 512-bit registers in its own kernels (OpenBLAS does, for sgemm, where its
//   kernel for that CPU has them). `gkd bench` says so.
// - x is read through two strides (ldx between rows, ldk between k), so a transpose is
//   read in place, and a panel has a row stride, so 16 columns of a matrix whose width is
//   a multiple of 16 serve as a panel without a copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#ifdef __CUDACC__
// nvcc's front end does not know GCC's unroll pragma (packed_tile); it hands it on to the
// host compiler, which unrolls as asked, so its warning is only noise
#pragma nv_diag_suppress 1675
#endif

// What the tile compiles to in this build, for gkd bench's report.
inline const char* packed_tile_isa() {
#if defined(__AVX2__) && defined(__FMA__)
    return "AVX2 + FMA (256-bit)";
#else
    return "scalar std::fma (no AVX2 in this build)";
#endif
}

// The tile's shape: panels of 16 output channels, tiles of up to 6 rows.
constexpr int DECODE_PANEL = 16;
constexpr int DECODE_TILE_ROWS = 6;

inline int panel_count(int OC) { return (OC + DECODE_PANEL - 1) / DECODE_PANEL; }

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
