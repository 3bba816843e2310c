// speculative.h — speculative sampling (Leviathan et al. 2023; Chen et al. 2023) with the
// distilled student as the draft and the teacher as the target: what a distilled student
// is for at inference, and a direct measure of how well it matches the teacher on its own
// samples (DistillSpec, Zhou et al. 2024).
//
// Each round, per row: the draft proposes up to K tokens one at a time (its KV cache), the
// target scores all of them in one forward pass (its KV cache, K + 1 new positions), and
// draft token d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)). The first one
// refused is replaced by a draw from the normalised max(0, p_i - q_i); if all K are kept,
// a bonus token is drawn from p_{K+1}. The output is distributed exactly as the target's
// own samples at the same temperature (temperature 0: exactly its greedy output).
//
// Tricks worth knowing:
// - Rolling back a refused draft costs nothing: a cache position is overwritten by the
//   next token written there, and attention reads only positions below the row's length.
//   So each model just tracks how many of the row's tokens its cache holds: the target
//   always all but the last; the draft the same, or one fewer after a round whose drafts
//   were all kept (it never saw its own last draft), and then it reads two tokens.
// - The loop runs on the host, so the CPU and the GPU share it; each device's models keep
//   the logits where they compute them and hand the loop only tokens and, for the judging,
//   per-position numbers (GpuSpeculativeModels: p(d), q(d) and the overlap, then the
//   replacement draws, computed on the device). Every random draw comes from the row's own
//   generator, in the same order on both devices: a row's output does not depend on the
//   batch.
// - The acceptance rate is counted two ways: the draws themselves (accepted / judged)
//   and its expectation, sum_x min(p(x), q(x)) at each judged position (1 - the total
//   variation distance); the tests hold one to the other.
//
// Part of gkd.cu's single translation unit: after sampling.h (pick_token, Generator).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

// What a speculative run counts. A verification is one row's share of a target forward
// pass; plain sampling emits one token per verification, speculative up to K + 1.
struct SpeculativeStats {
    long long judged = 0;         // draft tokens the target judged (up to the first refused)
    long long accepted = 0;       // of those, kept
    double expected_sum = 0;      // sum over judged positions of sum_x min(p(x), q(x))
    long long verifications = 0;  // row-rounds: one target forward per row
    long long emitted = 0;        // tokens in the output
    double acceptance_rate() const { return judged ? (double)accepted / judged : NAN; }
    double expected_acceptance() const { return judged ? expected_sum / judged : NAN; }
    double tokens_per_verification() const { return verifications ? (double)emitted / verifications : NAN; }
    void add(const SpeculativeStats& o) {
        judged += o.judged; accepted += o.accepted; expected_sum += o.expected_sum;
        verifications += o.verifications; emitted += o.emitted;
    }
};

// probs (V) = softmax(logits / temperature) over the V real tokens, in double; temperature
// 0: one-hot at the argmax (the lowest id on ties, as pick_token).
static void token_distribution(const float* logits, int V, double temperature, std::vector<double>& probs) {
    probs.assign(V, 0.0);
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature == 0.0) { probs[best] = 1.0; return; }
    double total = 0;
    for (int i = 0; i < V; i++) total += probs[i] = std::exp(((double)logits[i] - logits[best]) / temperature);
    for (double& x : probs) x /= total;
}

// A draw from weights w (V, non-negative, not all zero) by inverse CDF.
static int draw_from(const std::vector<double>& w, Rng& rng) {
    double total = 0;
    int last_positive = 0;
    for (size_t i = 0; i < w.size(); i++) {
        total += w[i];
        if (w[i] > 0) last_positive = (int)i;
    }
    double u = rng.uniform() * total, cum = 0;
    for (size_t i = 0; i < w.size(); i++) {
        cum += w[i];
        if (cum > u && w[i] > 0) return (int)i;
    }
    return last_positive;
}

// Judges row b's drafts against the target's rows and appends what it keeps, plus the
// replacement or bonus token, to out; returns how many drafts were kept.
//   draft_logits  (k, Vp_draft)     the draft's logits that produced drafts[0..k-1]
//   target_logits (k + 1, Vp_target) the target's logits at the same positions, and one more
static int judge_drafts(const std::vector<int>& drafts, const float* draft_logits, int Vp_draft, const float* target_logits,
                        int Vp_target, int V, double temperature, Rng& rng, std::vector<int>& out, SpeculativeStats& stats) {
    static thread_local std::vector<double> p, q;
    const int k = (int)drafts.size();
    for (int i = 0; i < k; i++) {
        token_distribution(target_logits + (size_t)i * Vp_target, V, temperature, p);
        token_distribution(draft_logits + (size_t)i * Vp_draft, V, temperature, q);
        double overlap = 0;
        for (int x = 0; x < V; x++) overlap += std::min(p[x], q[x]);
        stats.judged++;
        stats.expected_sum += overlap;
        const int d = drafts[i];
        // One uniform per judged draft, drawn even when p >= q keeps it for sure: the draws a
        // row makes then never depend on last-bit rounding of its logits (which a batch's
        // shape can change). Greedy: p and q are one-hot, so d is kept iff it is p's argmax.
        const double u = rng.uniform();
        const bool keep = p[d] >= q[d] || u * q[d] < p[d];
        if (keep) {
            stats.accepted++;
            out.push_back(d);
            continue;
        }
        for (int x = 0; x < V; x++) p[x] = std::max(0.0, p[x] - q[x]);  // the residual max(0, p - q)
        out.push_back(draw_from(p, rng));
        return i;
    }
    token_distribution(target_logits + (size_t)k * Vp_target, V, temperature, p);  // every draft kept: a bonus token
    out.push_back(draw_from(p, rng));
    return k;
}

// The bookkeeping of batched speculative sampling, whichever device runs the models.
// Row b stops at its first EOS (kept) or after budgets[b] tokens; both models' contexts
// must hold prompt + budget. `models` runs the passes and keeps their logits where they
// are computed (CpuSpeculativeModels below, GpuSpeculativeModels in cuda/sampling.cuh):
//   models.draft(tokens, cache_row, start, n_new, n, Tn, rows, i, rngs) -> the draft's pass
//       over Tn new tokens per row (gpt_infer's arguments: right-padded, row r has n_new[r]
//       real ones from position start[r] of cache row cache_row[r]); with rows (batch row of
//       each r), each row's next draft token, draft i of its round, drawn from its logits
//       with rngs[rows[r]] (pick_token), those logits kept for the judging; without, nothing
//   models.target(tokens, cache_row, start, n_new, n, Tn, all_positions) -> the target's
//       pass; with all_positions, its logits at every new position kept for the judging
//   models.judge(active, drafts, rngs, kept, stats) -> judge_drafts for each row r of the
//       last verification (batch row active[r]): kept[r] gets what it keeps, then the
//       replacement or bonus token; returns the drafts kept per row. Each row's uniforms
//       are drawn from its generator in judge_drafts' order on either device.
template <typename Models>
static std::vector<std::vector<int>> speculative_loop(const std::vector<const std::vector<int>*>& prompts,
                                                      const std::vector<int>& budgets, int K, int eos,
                                                      std::vector<Rng>& rngs, Models& models, SpeculativeStats& stats) {
    const int Bn = (int)prompts.size();
    std::vector<std::vector<int>> out(Bn), seq(Bn);  // seq: prompt + out
    if (Bn == 0) return out;
    std::vector<int> draft_cached(Bn), tokens, cache_row, start, n_new;
    auto resize = [&](int n, int Tn) {
        tokens.assign((size_t)n * Tn, eos);
        cache_row.assign(n, 0); start.assign(n, 0); n_new.assign(n, 0);
    };
    // prefill: both caches take every prompt token but the last, which each round reads first
    int Pmax = 0;
    for (int b = 0; b < Bn; b++) {
        GKD_ASSERT(budgets[b] >= 1 && !prompts[b]->empty(), "speculative sampling: an empty prompt or budget");
        seq[b] = *prompts[b];
        draft_cached[b] = (int)seq[b].size() - 1;
        Pmax = std::max(Pmax, draft_cached[b]);
    }
    if (Pmax > 0) {
        resize(Bn, Pmax);
        for (int b = 0; b < Bn; b++) {
            std::copy(seq[b].begin(), seq[b].end() - 1, tokens.begin() + (size_t)b * Pmax);
            cache_row[b] = b;
            n_new[b] = draft_cached[b];
        }
        models.draft(tokens.data(), cache_row.data(), start.data(), n_new.data(), Bn, Pmax, {}, 0, rngs);
        models.target(tokens.data(), cache_row.data(), start.data(), n_new.data(), Bn, Pmax, false);
    }
    std::vector<int> active(Bn);
    for (int b = 0; b < Bn; b++) active[b] = b;
    std::vector<std::vector<int>> drafts(Bn), kept;
    std::vector<int> wanted(Bn);  // drafts a row asks for this round
    while (!active.empty()) {
        const int n = (int)active.size();
        // 1. the draft proposes, one token per step; a row stops at EOS or at what it may emit
        int Kmax = 0;
        for (int b : active) {
            drafts[b].clear();
            wanted[b] = std::min(K, budgets[b] - (int)out[b].size());
            Kmax = std::max(Kmax, wanted[b]);
        }
        for (int i = 0; i < Kmax; i++) {
            std::vector<int> going;
            for (int b : active)
                if ((int)drafts[b].size() == i && i < wanted[b] && (i == 0 || drafts[b].back() != eos))
                    going.push_back(b);
            if (going.empty()) break;
            int Tn = 1;  // the first step reads the tokens the draft's cache lacks: 1 or 2 per row
            if (i == 0)
                for (int b : going) Tn = std::max(Tn, (int)seq[b].size() - draft_cached[b]);
            resize((int)going.size(), Tn);
            for (size_t r = 0; r < going.size(); r++) {
                const int b = going[r], len = (int)seq[b].size();
                cache_row[r] = b;
                if (i == 0) {
                    start[r] = draft_cached[b];
                    n_new[r] = len - draft_cached[b];
                    std::copy(seq[b].begin() + start[r], seq[b].end(), tokens.begin() + r * Tn);
                } else {
                    start[r] = len - 1 + i;
                    n_new[r] = 1;
                    tokens[r] = drafts[b].back();
                }
            }
            const std::vector<int> picked = models.draft(tokens.data(), cache_row.data(), start.data(), n_new.data(),
                                                         (int)going.size(), Tn, going, i, rngs);
            for (size_t r = 0; r < going.size(); r++) {
                const int b = going[r];
                drafts[b].push_back(picked[r]);
                draft_cached[b] = start[r] + n_new[r];
            }
        }
        // 2. the target scores each row's last token and its drafts in one pass
        int Tn = 0;
        for (int b : active) Tn = std::max(Tn, 1 + (int)drafts[b].size());
        resize(n, Tn);
        for (int r = 0; r < n; r++) {
            const int b = active[r], len = (int)seq[b].size();
            cache_row[r] = b;
            start[r] = len - 1;
            n_new[r] = 1 + (int)drafts[b].size();
            tokens[(size_t)r * Tn] = seq[b].back();
            std::copy(drafts[b].begin(), drafts[b].end(), tokens.begin() + (size_t)r * Tn + 1);
        }
        models.target(tokens.data(), cache_row.data(), start.data(), n_new.data(), n, Tn, true);
        // 3. judge, keep, and cut at EOS or the budget
        const std::vector<int> accepted = models.judge(active, drafts, rngs, kept, stats);
        std::vector<int> still;
        for (int r = 0; r < n; r++) {
            const int b = active[r], len = (int)seq[b].size();
            stats.verifications++;
            // the draft's cache is good up to the last token it read that the row kept
            draft_cached[b] = std::min(draft_cached[b], len + accepted[r]);
            bool done = false;
            for (int x : kept[r]) {
                out[b].push_back(x);
                seq[b].push_back(x);
                stats.emitted++;
                if (x == eos || (int)out[b].size() >= budgets[b]) { done = true; break; }
            }
            if (!done) still.push_back(b);
        }
        active.swap(still);
    }
    return out;
}

// The CPU's models for speculative_loop: the draft and the target each with their own
// generator (cache and scratch), their logits on the host, judged by judge_drafts.
struct CpuSpeculativeModels {
    const GPT<float>& draft_model;
    Generator& dg;
    const GPT<float>& target_model;
    Generator& tg;
    double temperature;
    int V, Vp_draft, Vp_target, Tn_target = 0;
    std::vector<std::vector<float>> draft_rows;  // (Bn) (k, Vp_draft) per row: the logits behind its drafts
    CpuSpeculativeModels(const GPT<float>& d, Generator& dgen, const GPT<float>& t, Generator& tgen, double temp, int Bn)
        : draft_model(d), dg(dgen), target_model(t), tg(tgen), temperature(temp), V(d.config.vocab_size),
          Vp_draft(d.config.padded_vocab_size), Vp_target(t.config.padded_vocab_size), draft_rows(Bn) {}
    std::vector<int> draft(const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn,
                           const std::vector<int>& rows, int i, std::vector<Rng>& rngs) {
        dg.logits.resize((size_t)n * Vp_draft);
        gpt_infer(draft_model, dg.cache, dg.scratch, tokens, cache_row, start, n_new, n, Tn, dg.logits.data(), false);
        std::vector<int> picked(rows.size());
        for (size_t r = 0; r < rows.size(); r++) {
            const float* row = dg.logits.data() + r * Vp_draft;
            std::vector<float>& kept = draft_rows[rows[r]];
            if (i == 0) kept.clear();
            kept.insert(kept.end(), row, row + Vp_draft);
            picked[r] = pick_token(row, V, temperature, rngs[rows[r]]);
        }
        return picked;
    }
    void target(const int* tokens, const int* cache_row, const int* start, const int* n_new, int n, int Tn,
                bool all_positions) {
        tg.logits.resize((size_t)n * (all_positions ? Tn : 1) * Vp_target);
        gpt_infer(target_model, tg.cache, tg.scratch, tokens, cache_row, start, n_new, n, Tn, tg.logits.data(),
                  all_positions);
        Tn_target = Tn;
    }
    std::vector<int> judge(const std::vector<int>& active, const std::vector<std::vector<int>>& drafts,
                           std::vector<Rng>& rngs, std::vector<std::vector<int>>& kept, SpeculativeStats& stats) {
        const int n = (int)active.size();
        std::vector<int> accepted(n);
        kept.assign(n, {});
        for (int r = 0; r < n; r++) {
            const int b = active[r];
            accepted[r] = judge_drafts(drafts[b], draft_rows[b].data(), Vp_draft,
                                       tg.logits.data() + (size_t)r * Tn_target * Vp_target, Vp_target, V, temperature,
                                       rngs[b], kept[r], stats);
        }
        return accepted;
    }
};

// Speculative sampling on the CPU. Row b's draws come from (seed, stream, row_ids[b]).
static std::vector<std::vector<int>> speculative_generate(const GPT<float>& draft, Generator& dg,
                                                          const GPT<float>& target, Generator& tg,
                                                          const std::vector<const std::vector<int>*>& prompts,
                                                          const std::vector<int>& budgets, int K, double temperature,
                                                          int eos, uint64_t seed, uint64_t stream,
                                                          const std::vector<uint64_t>& row_ids,
                                                          SpeculativeStats& stats) {
    const int Bn = (int)prompts.size();
    GKD_ASSERT(draft.config.vocab_size == target.config.vocab_size, "speculative sampling: vocabularies differ");
    std::vector<Rng> rngs = row_generators(seed, stream, row_ids);
    dg.cache.allocate(draft.config, Bn);
    tg.cache.allocate(target.config, Bn);
    // the draft's one-token steps multiply packed weights, as plain generation's do
    pack_decode_weights(dg.scratch.decode, draft);
    CpuSpeculativeModels models(draft, dg, target, tg, temperature, Bn);
    auto out = speculative_loop(prompts, budgets, K, eos, rngs, models, stats);
    dg.scratch.decode.ready = false;
    return out;
}
