// cpu/packed_tile.h — gkd's own register-tiled matmul kernel: up to 8 rows x 32 (AVX-512)
// or 6 rows x 16 (AVX2) output channels held in vector accumulators, over operands laid out
// in panels of 16.
//
// GPU twin: none; the GPU's small products are cuBLAS's (cuda/common.cuh) and its decode
// matmuls cuda/sampling.cuh's.
//
// Tricks worth knowing:
// - Each output is one fma chain over k in order, then + bias. Its rounding therefore
//   depends on neither the rows around it, nor the tile it lands in, nor the thread
//   split, nor the vector width: a row's sample does not depend on its batch, and the
//   three variants below give the same bits (a unit test holds them to it).
// - Three variants, picked at run time (cpu_kernels()): AVX-512 (two panels per tile,
//   8 rows x 32 channels in 16 zmm accumulators, a partial panel stored through a mask),
//   AVX2 + FMA (one panel per tile, 6 x 16 in 12 ymm accumulators), and std::fma loops.
//   The vector variants are compiled for their ISA by function attribute, whatever
//   -march says, so one binary carries both; the CPU's widest wins unless the environment
//   names another (GKD_CPU_KERNELS=avx2 switches AVX-512 off, for comparisons and tests).
// - x is read through two strides (ldx between rows, ldk between k), so a transpose is
//   read in place, and a panel has a row stride, so 16 columns of a matrix whose width is
//   a multiple of 16 serve as a panel without a copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define GKD_X86_KERNELS 1
#include <immintrin.h>
#define GKD_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define GKD_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif
#ifdef __CUDACC__
// nvcc's front end does not know GCC's unroll pragma (packed_tile); it hands it on to the
// host compiler, which unrolls as asked, so its warning is only noise
#pragma nv_diag_suppress 1675
#endif

// ----------------------------------------------------------------------------
// which variant of gkd's own CPU kernels runs

enum class CpuKernels { portable, avx2, avx512 };

inline const char* cpu_kernels_name(CpuKernels k) {
    return k == CpuKernels::avx512 ? "avx512" : k == CpuKernels::avx2 ? "avx2" : "portable";
}
// The widest variant this CPU runs (and this compiler built).
inline CpuKernels cpu_kernels_widest() {
#ifdef GKD_X86_KERNELS
    if (__builtin_cpu_supports("avx512f")) return CpuKernels::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuKernels::avx2;
#endif
    return CpuKernels::portable;
}
// The variant in use: the widest, until select_cpu_kernels says otherwise.
inline CpuKernels g_cpu_kernels = cpu_kernels_widest();
inline CpuKernels cpu_kernels() { return g_cpu_kernels; }

// Sets the variant from GKD_CPU_KERNELS's value (avx512, avx2, portable; empty or null:
// the widest). Returns "" or why the value cannot be used.
inline std::string select_cpu_kernels(const char* value) {
    const CpuKernels widest = cpu_kernels_widest();
    if (!value || !*value) {
        g_cpu_kernels = widest;
        return "";
    }
    for (CpuKernels k : {CpuKernels::portable, CpuKernels::avx2, CpuKernels::avx512})
        if (strcmp(value, cpu_kernels_name(k)) == 0) {
            if (k > widest)
                return std::string("GKD_CPU_KERNELS=") + value + ": this CPU runs at most " + cpu_kernels_name(widest);
            g_cpu_kernels = k;
            return "";
        }
    return std::string("GKD_CPU_KERNELS=") + value + ": expected avx512, avx2 or portable";
}

// What the tile runs in this process, for gkd bench's report.
inline const char* packed_tile_isa() {
    switch (cpu_kernels()) {
        case CpuKernels::avx512: return "AVX-512 (512-bit, 8 x 32 tiles)";
        case CpuKernels::avx2: return "AVX2 + FMA (256-bit, 6 x 16 tiles)";
        default: return "portable std::fma loops";
    }
}

// ----------------------------------------------------------------------------
// the tile

// The tile's shape: panels of 16 output channels; tiles of up to 6 rows (AVX2: 12 of the
// 16 ymm registers hold accumulators) or 8 (AVX-512: two panels, 16 of the 32 zmm).
constexpr int DECODE_PANEL = 16;
constexpr int AVX2_TILE_ROWS = 6, AVX512_TILE_ROWS = 8;
constexpr int MAX_TILE_ROWS = std::max(AVX2_TILE_ROWS, AVX512_TILE_ROWS);
// Rows per tile of the variant in use: callers step through their rows this many at a time.
inline int tile_rows() { return cpu_kernels() == CpuKernels::avx512 ? AVX512_TILE_ROWS : AVX2_TILE_ROWS; }

inline int panel_count(int OC) { return (OC + DECODE_PANEL - 1) / DECODE_PANEL; }

// Every variant computes, for rows [0, R) x channels [0, cols) of one or two panels:
//   out[i][j] = chain_k(x[i][k] * w[k][j]) + bias[j]   (ACCUMULATE: out[i][j] += the chain, no bias)
//   x (R, K): x[i][k] at x + i * ldx + k * ldk (ldk 1: rows; ldx 1: a transpose, read in place)
//   panel (K, 16), row stride ldp (16: packed; wider: 16 columns of a matrix, read in place),
//   the next panel panel_step floats on; out row stride ld_out; bias (cols) or null

template <int R, bool ACCUMULATE>
inline void packed_tile_portable(float* out, size_t ld_out, const float* x, size_t ldx, size_t ldk, int K,
                                 const float* panel, size_t ldp, const float* bias, int cols) {
    for (int i = 0; i < R; i++)
        for (int j = 0; j < cols; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc = std::fma(x[(size_t)i * ldx + (size_t)k * ldk], panel[(size_t)k * ldp + j], acc);
            float* o = out + (size_t)i * ld_out + j;
            *o = (ACCUMULATE ? *o : bias ? bias[j] : 0.0f) + acc;
        }
}

#ifdef GKD_X86_KERNELS
// One panel, 12 ymm accumulators: per k, two loads of the panel and one broadcast per row.
template <int R, bool ACCUMULATE>
GKD_TARGET_AVX2 inline void packed_tile_avx2(float* out, size_t ld_out, const float* x, size_t ldx, size_t ldk,
                                             int K, const float* panel, size_t ldp, const float* bias, int cols) {
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
}

// P (1 or 2) panels, R x P zmm accumulators: per k, P loads and one broadcast per row;
// columns past cols are neither read nor written (masked).
template <int R, int P, bool ACCUMULATE>
GKD_TARGET_AVX512 inline void packed_tile_avx512(float* out, size_t ld_out, const float* x, size_t ldx, size_t ldk,
                                                 int K, const float* panel, size_t ldp, size_t panel_step,
                                                 const float* bias, int cols) {
    __m512 acc[P][R];
    #pragma GCC unroll 12
    for (int q = 0; q < P; q++)
        for (int i = 0; i < R; i++) acc[q][i] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 w[P];
        #pragma GCC unroll 2
        for (int q = 0; q < P; q++) w[q] = _mm512_loadu_ps(panel + q * panel_step + (size_t)k * ldp);
        const float* xk = x + (size_t)k * ldk;
        #pragma GCC unroll 12
        for (int i = 0; i < R; i++) {
            const __m512 xi = _mm512_set1_ps(xk[(size_t)i * ldx]);
            #pragma GCC unroll 2
            for (int q = 0; q < P; q++) acc[q][i] = _mm512_fmadd_ps(xi, w[q], acc[q][i]);
        }
    }
    #pragma GCC unroll 2
    for (int q = 0; q < P; q++) {
        const int c = std::min(DECODE_PANEL, cols - q * DECODE_PANEL);
        const __mmask16 m = c == DECODE_PANEL ? (__mmask16)0xffff : (__mmask16)((1u << c) - 1);
        #pragma GCC unroll 12
        for (int i = 0; i < R; i++) {
            float* o = out + (size_t)i * ld_out + q * DECODE_PANEL;
            // what the chain is added to: out itself, the bias, or nothing
            const float* base = ACCUMULATE ? o : bias ? bias + q * DECODE_PANEL : nullptr;
            const __m512 b = base ? _mm512_maskz_loadu_ps(m, base) : _mm512_setzero_ps();
            _mm512_mask_storeu_ps(o, m, _mm512_add_ps(b, acc[q][i]));
        }
    }
}
#endif

// f(std::integral_constant<int, R>()) for R = min(rows, MAX): the row count as a template
// argument, so that a tile's accumulators are registers
template <int MAX, typename F>
inline void with_tile_rows(int rows, F&& f) {
    if constexpr (MAX == 1) f(std::integral_constant<int, 1>());
    else if (rows >= MAX) f(std::integral_constant<int, MAX>());
    else with_tile_rows<MAX - 1>(rows, f);
}

// out rows [0, rows) x channels [0, cols) over the panels that cover cols (panel p at
// panel + p * panel_step), on the variant cpu_kernels() names. Callers take their rows
// tile_rows() at a time (more are done in tiles of that many, in order).
template <bool ACCUMULATE = false>
inline void packed_tiles(int rows, float* out, size_t ld_out, const float* x, size_t ldx, size_t ldk, int K,
                         const float* panel, size_t ldp, size_t panel_step, const float* bias, int cols) {
    const CpuKernels kernels = cpu_kernels();
    const int most = tile_rows();
    for (int r0 = 0; r0 < rows; r0 += most) {
        const int R = std::min(most, rows - r0);
        float* out_r = out + (size_t)r0 * ld_out;
        const float* x_r = x + (size_t)r0 * ldx;
        const float* p = panel;
        for (int c0 = 0; c0 < cols;) {
            const int left = cols - c0;
            float* o = out_r + c0;
            const float* b = bias ? bias + c0 : nullptr;
#ifdef GKD_X86_KERNELS
            if (kernels == CpuKernels::avx512) {
                const bool two = left > DECODE_PANEL;  // two panels per tile; the last one alone
                with_tile_rows<AVX512_TILE_ROWS>(R, [&](auto n) {
                    constexpr int N = decltype(n)::value;
                    if (two) packed_tile_avx512<N, 2, ACCUMULATE>(o, ld_out, x_r, ldx, ldk, K, p, ldp, panel_step, b, left);
                    else packed_tile_avx512<N, 1, ACCUMULATE>(o, ld_out, x_r, ldx, ldk, K, p, ldp, panel_step, b, left);
                });
                p += (two ? 2 : 1) * panel_step;
                c0 += (two ? 2 : 1) * DECODE_PANEL;
                continue;
            }
#endif
            const int c = std::min(DECODE_PANEL, left);
            with_tile_rows<AVX2_TILE_ROWS>(R, [&](auto n) {
                constexpr int N = decltype(n)::value;
#ifdef GKD_X86_KERNELS
                if (kernels == CpuKernels::avx2)
                    return packed_tile_avx2<N, ACCUMULATE>(o, ld_out, x_r, ldx, ldk, K, p, ldp, b, c);
#endif
                packed_tile_portable<N, ACCUMULATE>(o, ld_out, x_r, ldx, ldk, K, p, ldp, b, c);
            });
            p += panel_step;
            c0 += DECODE_PANEL;
        }
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
