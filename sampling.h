// sampling.h — batched generation on the CPU with a KV cache: prefill every prompt at once,
// then one token per step for the rows still going; and the run's random streams.
//
// GPU twin: cuda/sampling.cuh (gpu_generate, the same bookkeeping on the device).
//
// Tricks worth knowing:
// - Randomness is counter-based: the lambda coin of step k and the sampling RNG of
//   (step k, row b) are derived from (seed, stream, k, b). A run is reproducible, the
//   samples do not depend on batch composition, and a resumed run needs no RNG state but
//   the step.
// - generation_loop holds the bookkeeping alone (which rows are still going, where each
//   one's next token goes in the cache); the model call and the draw are its callbacks,
//   so the CPU's generate and speculative.h use the same loop.
// - A generation's decode steps multiply weights packed once for it (DecodeWeights,
//   cpu/decode_weights.h); an on-policy step can record every position it runs in the
//   training layout (ForwardRecord, cpu/inference.h), so the student's forward over its
//   own samples is not run twice.
//
// Part of gkd.cu's single translation unit, after loss.h (exp_vectorizable).
#pragma once

#include <algorithm>
#include <vector>

#include "model.h"
#include "utils.h"

// The independent random streams of a run, each derived from (seed, stream, ...).
enum RngStream : uint64_t {
    STREAM_COIN = 1, STREAM_SHUFFLE = 2, STREAM_STUDENT_SAMPLES = 3, STREAM_TEACHER_SAMPLES = 4,
    STREAM_SPECULATIVE = 1ull << 40,  // evaluation's drafting: past its sampled completions' streams 0..K-1
};

// softmax(logits / temperature) over the V real tokens; temperature 0 is argmax (the
// lowest id wins ties).
static int pick_token(const float* logits, int V, double temperature, Rng& rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature == 0.0) return best;
    // the unnormalised weights once (one exp each, the loss's vectorizable exp: within a
    // few ulp of libm's), then the inverse CDF at u * total
    static thread_local std::vector<double> w;  // (V) one per thread, reused
    w.resize(V);
    const double mx = logits[best];
    for (int i = 0; i < V; i++) w[i] = exp_vectorizable(((double)logits[i] - mx) / temperature);
    double total = 0;
    for (int i = 0; i < V; i++) total += w[i];
    double u = rng.uniform() * total, cum = 0;
    int last_positive = best;
    for (int i = 0; i < V; i++) {
        if (w[i] > 0) last_positive = i;
        cum += w[i];
        if (cum > u) return i;
    }
    return last_positive;  // u landed on rounding slack at the very end
}

// One generator per row, from (seed, stream, the row's id) alone: a row's draws do not
// depend on the batch around it.
static std::vector<Rng> row_generators(uint64_t seed, uint64_t stream, const std::vector<uint64_t>& row_ids) {
    std::vector<Rng> rngs;
    for (uint64_t id : row_ids) rngs.emplace_back(derive_seed(seed, stream, id));
    return rngs;
}

// Reusable buffers for batched generation from one model.
struct Generator {
    KVCache<float> cache;
    InferScratch<float> scratch;
    std::vector<float> logits;                       // (rows, Vp)
};

// The bookkeeping of batched generation, whichever device runs the model: prefill all
// prompts at once, then decode one token per step for the rows still going. Row b stops
// at its first EOS (kept) or after budgets[b] tokens.
//   run(tokens, cache_row, start, n_new, Bn, Tn): gpt_infer's arguments; leaves each
//       row's next-token logits in slot order
//   pick(active, draws): the next token of each slot i (batch row active[i], its draws[i]-th)
template <typename Run, typename Pick>
static std::vector<std::vector<int>> generation_loop(const std::vector<const std::vector<int>*>& prompts,
                                                     const std::vector<int>& budgets, int eos, int context, Run run,
                                                     Pick pick) {
    const int Bn = (int)prompts.size();
    std::vector<std::vector<int>> out(Bn);
    if (Bn == 0) return out;
    int Pmax = 0;
    for (auto* p : prompts) Pmax = std::max(Pmax, (int)p->size());
    std::vector<int> tokens((size_t)Bn * Pmax, eos), cache_row(Bn), start(Bn, 0), n_new(Bn), draws(Bn);
    for (int b = 0; b < Bn; b++) {
        const std::vector<int>& p = *prompts[b];
        GKD_ASSERT(budgets[b] >= 1 && (int)p.size() + budgets[b] <= context, "budget past the context");
        std::copy(p.begin(), p.end(), tokens.begin() + (size_t)b * Pmax);
        cache_row[b] = b;
        n_new[b] = (int)p.size();
    }
    run(tokens.data(), cache_row.data(), start.data(), n_new.data(), Bn, Pmax);
    std::vector<int> active(Bn);  // active[i] = the batch row whose logits are in slot i
    for (int b = 0; b < Bn; b++) active[b] = b;
    while (!active.empty()) {
        for (size_t i = 0; i < active.size(); i++) draws[i] = (int)out[active[i]].size();
        std::vector<int> picked = pick(active, draws), still;
        for (size_t i = 0; i < active.size(); i++) {
            int b = active[i];
            out[b].push_back(picked[i]);
            if (picked[i] != eos && (int)out[b].size() < budgets[b]) still.push_back(b);
        }
        active.swap(still);
        if (active.empty()) break;
        int n = (int)active.size();
        for (int i = 0; i < n; i++) {
            int b = active[i];
            tokens[i] = out[b].back();
            cache_row[i] = b;
            start[i] = (int)(prompts[b]->size() + out[b].size()) - 1;
            n_new[i] = 1;
        }
        run(tokens.data(), cache_row.data(), start.data(), n_new.data(), n, 1);
    }
    return out;
}

// Samples a completion for every prompt (generation_loop) on the CPU. Row b's randomness
// comes from (seed, stream, row_ids[b]) alone. With a record (begun for these rows), every
// position run is also kept in the training layout (ForwardRecord, cpu/inference.h).
static std::vector<std::vector<int>> generate(const GPT<float>& m, Generator& g,
                                              const std::vector<const std::vector<int>*>& prompts,
                                              const std::vector<int>& budgets, double temperature, int eos,
                                              uint64_t seed, uint64_t stream, const std::vector<uint64_t>& row_ids,
                                              ForwardRecord<float>* record = nullptr) {
    const int Bn = (int)prompts.size(), Vp = m.config.padded_vocab_size, V = m.config.vocab_size;
    std::vector<Rng> rngs = row_generators(seed, stream, row_ids);
    g.cache.allocate(m.config, Bn);
    g.logits.resize((size_t)Bn * Vp);
    // the decode steps multiply weights packed once here (DecodeWeights, cpu/decode_weights.h)
    pack_decode_weights(g.scratch.decode, m);
    auto run = [&](const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn) {
        gpt_infer(m, g.cache, g.scratch, tokens, cache_row, start, n_new, n, Tn, g.logits.data(), false, record);
    };
    auto pick = [&](const std::vector<int>& active, const std::vector<int>&) {
        std::vector<int> picked(active.size());
        #pragma omp parallel for schedule(static)  // each row draws from its own generator
        for (size_t i = 0; i < active.size(); i++)
            picked[i] = pick_token(g.logits.data() + i * Vp, V, temperature, rngs[active[i]]);
        return picked;
    };
    auto out = generation_loop(prompts, budgets, eos, m.config.max_seq_len, run, pick);
    g.scratch.decode.ready = false;  // the weights change before the next generation
    return out;
}
