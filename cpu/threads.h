// cpu/threads.h — how gkd's CPU passes share work among OpenMP threads: contiguous shares
// of rows, channels or prompts, and when a pass splits by batch row at all.
//
// GPU twin: none as such; on the GPU one launch covers every row (cuda/common.cuh's
// blocks_for), and these decisions are the CPU's alone.
//
// Tricks worth knowing:
// - share_begin gives shares that differ by at most one item, computed in 64 bits, so the
//   same function splits rows among threads, output channels among the parameter-gradient
//   sweep's parts and prompts among MPI ranks.
// - A pass over many independent rows runs each thread's rows through the whole model with
//   single-threaded BLAS calls and no barrier per layer (row_split_threads): no thread
//   waits for another between layers, and each sgemm is a single-threaded call on its
//   rows. Rows never interact, so the split changes no row's values.
// - Attention is shared out per (row, head) with dynamic scheduling: causal rows differ in
//   length, so static blocks would leave a thread idle.
#pragma once

#include <cmath>

#include "../utils.h"

// Where part `part` of `parts` begins in [0, total): contiguous shares that differ by at
// most one item (rows among threads, output channels, prompts among MPI ranks).
inline int share_begin(int total, int part, int parts) { return (int)((long long)total * part / parts); }

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

// f(b, h, hs, scale) for every (row, head), one per task (float attention's loop)
template <typename F>
void for_each_row_head(int B, int NH, int C, F f) {
    const int hs = C / NH;
    const float scale = 1.0f / std::sqrt((float)hs);
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) f(b, h, hs, scale);
}
