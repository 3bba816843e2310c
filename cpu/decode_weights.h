// cpu/decode_weights.h — decode's matmuls: a few rows against weights packed once per
// generation, on cpu/packed_tile.h's register tile.
//
// GPU twin: cuda/sampling.cuh, whose decode step runs the same matmuls on the device.
//
// A decode step runs one new token per row: matmuls of a few rows (16 per thread at the
// reference step, 1-2 per thread for the GPT-2 pair) against every weight. Through sgemm
// each call first repacks the whole weight into its own panel layout, every decode step
// again, and with two rows per thread each thread reads every weight from memory. So a generation packs the weights once
// (DecodeWeights, filled by cpu/inference.h's pack_decode_weights) in panels of
// DECODE_PANEL output channels, (ceil(OC / 16), K, 16) with zeros past OC, and its decode
// steps multiply with matmul_forward_packed.
//
// Tricks worth knowing:
// - the register tile of cpu/packed_tile.h (AVX-512: up to 8 rows x 32 channels; AVX2:
//   6 x 16): per k, one load per panel and one broadcast per row;
// - each output is one fma chain over k in order, then + bias: its rounding does not
//   depend on the rows around it, on the tile it lands in, on the thread split or on the
//   variant (AVX-512, AVX2, the portable std::fma loops), so a row's sample does not
//   depend on its batch or on the CPU; unit tests hold every variant to that chain exactly;
// - panels are taken in groups that fit in L2, each group against every row tile; with
//   few rows and all threads on one call, threads take groups (each weight read once).
#pragma once

#include <cstddef>
#include <vector>

#include "../utils.h"
#include "packed_tile.h"

// Floats one packed (OC, K) weight takes: whole panels, zeros past OC.
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

// out (N, ld_out)[:, :OC] = inp (N, K) @ weight (OC, K)^T + bias (OC), weight as packed
// by pack_weight_panels. Runs on all threads, or on the caller's alone inside a parallel region.
inline void matmul_forward_packed(float* out, const float* inp, const float* panels, const float* bias, int N, int K,
                                  int OC, int ld_out) {
    count_matmul(N, K, OC);
    const int np = panel_count(OC);
    const size_t panel_size = (size_t)K * DECODE_PANEL;
    int group = std::max(1, (int)((256 << 10) / (panel_size * sizeof(float))));  // panels per 256 KB
    if (!omp_in_parallel()) group = std::min(group, (np + omp_get_max_threads() - 1) / omp_get_max_threads());
    const int ngroups = (np + group - 1) / group;
    #pragma omp parallel for schedule(static)
    for (int g = 0; g < ngroups; g++) {
        const int p0 = g * group, cols = std::min(OC, (g + 1) * group * DECODE_PANEL) - p0 * DECODE_PANEL;
        for (int n = 0; n < N; n += tile_rows())
            packed_tiles(std::min(tile_rows(), N - n), out + (size_t)n * ld_out + (size_t)p0 * DECODE_PANEL, ld_out,
                         inp + (size_t)n * K, K, 1, K, panels + p0 * panel_size, DECODE_PANEL, panel_size,
                         bias ? bias + (size_t)p0 * DECODE_PANEL : nullptr, cols);
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
