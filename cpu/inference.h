// cpu/inference.h — the steps of one CPU inference pass (gpt_infer) over a share of its
// rows, and the record through which a training forward reuses what sampling computed.
// model.h includes it in its inference section, after the layers and the training
// passes it builds on; model.h's gpt_infer_rows runs these steps in gpt_forward's order.
//
// GPU twin: cuda/sampling.cuh (the device-resident decode) and cuda/model.cuh's forward.
//
// Tricks worth knowing:
// - Keys and values of a pass with no cache (the teacher's) are read where qkv holds
//   them: no copy into a cache that nothing continues.
// - A decode step of a generation multiplies weights packed once for it
//   (cpu/decode_weights.h); with fewer rows than a register tile per thread, the threads
//   share out the weights instead of the rows (gpt_infer).
// - The teacher's pass for a loss trims its last layer to the positions that have targets
//   (head_from): elsewhere that layer only computes the keys and values later queries read.
// - With a ForwardRecord, every position the pass runs is also written where gpt_forward
//   would put it, so an on-policy step's student forward is not run a second time.
#pragma once

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

// Whether this gpt_infer call multiplies with packed weights: a decode step (one new token
// per row) of a generation that packed this model's weights (float only).
template <typename T>
bool decode_packed(const GPT<T>& m, const InferScratch<T>& s, int Tn) {
    if constexpr (std::is_same_v<T, float>)
        return Tn == 1 && s.decode.ready && s.decode.source == m.params_memory.data();
    return false;
}

// One gpt_infer call's work on a share of its rows, batch rows [b0, b1): that share's rows
// of the arguments and of the scratch, and the pass's steps, which gpt_infer_rows runs in
// gpt_forward's order. `slot` is the calling thread's score buffer, or -1 when the share
// runs on all threads (each then uses its own).
template <typename T>
struct InferShare {
    const GPT<T>& m;
    const ParameterTensors<T>& p;
    KVCache<T>& cache;
    InferScratch<T>& s;
    const int C, L, NH, hs, V, Vp, Bn, Tn, slot;
    int N;                             // the share's new positions: its rows' n_new, end to end
    const int *tokens, *cache_row, *start, *n_new, *head_from;  // tokens as io says, then (Bn) each; head_from may be null
    const int* io_start;               // (Bn) row b's tokens and logits begin at io_start[b] (packed), or null: b Tn (padded)
    std::vector<int> row0;             // (Bn + 1) row b's new positions are scratch rows [row0[b], row0[b + 1])
    T* logits;                         // all_positions ? as tokens, (., Vp) : (Bn, Vp)
    const bool all_positions;
    ForwardRecord<T>* rec;             // null, or where sampling's activations are recorded
    ActivationTensors<T>* ra;          // rec's activations
    T *x, *ln, *qkv, *atty, *proj, *fch;  // (N, C | C | 3C | C | C | 4C): x is the residual stream
    T *mean, *rstd;                    // (N) layernorm statistics, for the record only
    T *last_x, *last_ln, *last_mean, *last_rstd;  // (Bn, C | C | 1 | 1): the LM head at each row's last position
    const bool packed;                 // a decode step on weights packed for this generation
    const bool cached;                 // keys and values go to (and come from) the KV cache
    const T scale;                     // 1 / sqrt(hs)
    int head_rows;                     // the rows the last layer ends with, which the LM head runs on

    // first (b1 + 1): every row's first scratch row, the prefix sums of n_new (gpt_infer)
    InferShare(const GPT<T>& m_, KVCache<T>& cache_, InferScratch<T>& s_, int b0, int b1, int slot_,
               const int* tokens_, const int* io_start_, const int* cache_row_, const int* start_, const int* n_new_,
               int Tn_, T* logits_, bool all_positions_, ForwardRecord<T>* rec_, const int* head_from_,
               const int* first)
        : m(m_), p(m_.params), cache(cache_), s(s_), C(m_.config.channels), L(m_.config.num_layers),
          NH(m_.config.num_heads), hs(C / NH), V(m_.config.vocab_size), Vp(m_.config.padded_vocab_size),
          Bn(b1 - b0), Tn(Tn_), slot(slot_), N(first[b1] - first[b0]),
          tokens(io_start_ ? tokens_ : tokens_ + (size_t)b0 * Tn_),
          cache_row(cache_row_ + b0), start(start_ + b0), n_new(n_new_ + b0),
          head_from(head_from_ ? head_from_ + b0 : nullptr), io_start(io_start_ ? io_start_ + b0 : nullptr),
          logits(io_start_ && all_positions_ ? logits_
                                             : logits_ + (size_t)b0 * (all_positions_ ? Tn_ : 1) * m_.config.padded_vocab_size),
          all_positions(all_positions_), rec(rec_), ra(rec_ ? rec_->acts : nullptr),
          packed(decode_packed(m_, s_, Tn_)), cached(cache_.rows > 0), scale(T(1) / std::sqrt(T(hs))), head_rows(N) {
        GKD_ASSERT(!(head_from && (rec || !all_positions)), "head_from is for all-positions passes without a record");
        row0.resize(Bn + 1);
        for (int b = 0; b <= Bn; b++) row0[b] = first[b0 + b] - first[b0];
        const size_t r0 = (size_t)first[b0];
        x = s.x.data() + r0 * C;
        ln = s.ln.data() + r0 * C;
        qkv = s.qkv.data() + r0 * 3 * C;
        atty = s.atty.data() + r0 * C;
        proj = s.proj.data() + r0 * C;
        fch = s.fch.data() + r0 * 4 * C;
        mean = rec ? s.mean.data() + r0 : nullptr;
        last_x = s.last_x.data() + (size_t)b0 * C;
        last_ln = s.last_ln.data() + (size_t)b0 * C;
        last_mean = s.last_mean.data() + b0;
        last_rstd = s.last_rstd.data() + b0;
        rstd = rec ? s.rstd.data() + r0 : nullptr;
    }

    // row b's new position t: its scratch row, and its place in tokens (and all-positions logits)
    size_t at(int b, int t) const { return (size_t)row0[b] + t; }
    size_t io(int b, int t) const { return io_start ? (size_t)io_start[b] + t : (size_t)b * Tn + t; }

    size_t my_slot() const { return (size_t)(slot >= 0 ? slot : omp_get_thread_num()); }

    // out = in @ weight^T + bias: a decode step of a generation that packed the weights
    // multiplies the panels (layer l's weight `which`; l < 0: the LM head), all else sgemm
    void linear(T* out, const T* in, int l, int which, const T* weight, const T* bias, int n, int K, int OC,
                int ld_out) {
        if constexpr (std::is_same_v<T, float>)
            if (packed)
                return matmul_forward_packed(out, in, l < 0 ? s.decode.lm_head() : s.decode.layer(l, which), bias, n,
                                             K, OC, ld_out);
        matmul_forward(out, in, weight, bias, n, K, OC, ld_out);
    }

    // Row b's position j of layer l's keys and values. Without a cache (cache.rows == 0:
    // whole rows from position 0, as the teacher's pass) they are read where qkv holds
    // them, with no copy; kv_stride() is the distance between positions.
    const T* key_row(int l, int b, int j) const {
        return cached ? cache.key(l, cache_row[b], j) : qkv + at(b, j) * 3 * C + C;
    }
    const T* value_row(int l, int b, int j) const {
        return cached ? cache.value(l, cache_row[b], j) : qkv + at(b, j) * 3 * C + 2 * C;
    }
    int kv_stride() const { return cached ? C : 3 * C; }

    // With head_from (all positions): row b needs logits at its new positions [head_from[b],
    // n_new[b]) only. The last layer's output elsewhere feeds nothing but those unneeded
    // logits, so there the last layer computes only keys and values (for the later
    // queries): its attention queries, projections, MLP and the LM head run on the needed
    // positions, packed together (trimmed); the other logits are zeros.
    int query_from(int l, int b) const {
        return head_from && l == L - 1 ? std::min(std::max(head_from[b], 0), n_new[b]) : 0;
    }
    // moves the needed positions' rows of buf (N, width) to its front, in order;
    // returns how many (every row moves to a lower address or stays)
    int pack_needed(T* buf, int width) const {
        int kept = 0;
        for (int b = 0; b < Bn; b++)
            for (int t = query_from(L - 1, b); t < n_new[b]; t++, kept++)
                if ((size_t)kept != at(b, t))
                    memmove(buf + (size_t)kept * width, buf + at(b, t) * width, sizeof(T) * width);
        return kept;
    }

    // With a record: the rows of src (N, width) at the new positions, copied into
    // layer l's slab of a training tensor (L, B, maxT, width) at (cache_row, start + t)
    void record(T* tensor, int l, const T* src, int width) const {
        T* slab = tensor + (size_t)l * rec->B * rec->maxT * width;
        for (int b = 0; b < Bn; b++)
            for (int t = 0; t < n_new[b]; t++)
                memcpy(slab + ((size_t)cache_row[b] * rec->maxT + start[b] + t) * width,
                       src + at(b, t) * width, sizeof(T) * width);
    }
    // ... and one attention row: query position pos of (row, head h), its weights over keys
    // [0, len), zeros after (as attention_forward leaves the masked part)
    void record_attention(int l, int row, int h, int pos, const T* weights, int len) const {
        T* out = rec->acts->att + ((((size_t)l * rec->B + row) * NH + h) * rec->maxT + pos) * rec->maxT;
        memcpy(out, weights, sizeof(T) * len);
        std::fill(out + len, out + rec->maxT, T(0));
    }
    // the record's tokens and lengths: which positions this pass covers
    void record_positions() const {
        for (int b = 0; b < Bn; b++) {
            const int row = cache_row[b];
            GKD_ASSERT(row < rec->B && start[b] + n_new[b] <= rec->maxT, "a sampled position outside the record");
            for (int t = 0; t < n_new[b]; t++) rec->tokens[(size_t)row * rec->maxT + start[b] + t] = tokens[io(b, t)];
            if (n_new[b] > 0) rec->length[row] = std::max(rec->length[row], start[b] + n_new[b]);
        }
    }

    // x = wte[token] + wpe[start + t] at each new position (an id out of range: zeros)
    void embed() {
        #pragma omp parallel for schedule(static)
        for (int b = 0; b < Bn; b++)
            for (int t = 0; t < n_new[b]; t++) {
                T* o = x + at(b, t) * C;
                int tok = tokens[io(b, t)];
                if (tok < 0 || tok >= V) { std::fill(o, o + C, T(0)); continue; }
                const T* e = p.wte + (size_t)tok * C;
                const T* pe = p.wpe + (size_t)(start[b] + t) * C;
                for (int i = 0; i < C; i++) o[i] = e[i] + pe[i];
            }
        if (rec) record(ra->encoded, 0, x, C);
    }

    // qkv = ln1(x) @ qkvw^T + qkvb, and the new keys and values appended to the cache
    void qkv_projection(int l) {
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
                const T* q = qkv + at(b, t) * 3 * C;
                memcpy(cache.key(l, cache_row[b], start[b] + t), q + C, sizeof(T) * C);
                memcpy(cache.value(l, cache_row[b], start[b] + t), q + 2 * C, sizeof(T) * C);
            }
    }

    // Many new tokens (prefill, the teacher): per row and head, queries in tiles against the
    // keys [0, start + t] (float: attention_head_forward; fp64: GEMMs per block of queries)
    void attention_many(int l) {
        const int maxT = m.config.max_seq_len;
        #pragma omp parallel for collapse(2) schedule(dynamic)
        for (int b = 0; b < Bn; b++)
            for (int h = 0; h < NH; h++) {
                const int nq = n_new[b], qf = query_from(l, b);
                T* out = atty + at(b, 0) * C + h * hs;  // (nq, hs), row stride C
                for (int t = 0; t < qf; t++) std::fill(out + (size_t)t * C, out + (size_t)t * C + hs, T(0));
                if (nq == qf) continue;
                const T* Q = qkv + at(b, 0) * 3 * C + h * hs;         // (nq, hs), stride 3C
                T* S = s.block_scores.data() + my_slot() * Tn * maxT;  // (queries, keys)
                auto on_weights = [&](int t, const T* weights) {       // query t's softmaxed row
                    if (rec) record_attention(l, cache_row[b], h, start[b] + t, weights, start[b] + t + 1);
                };
                if constexpr (std::is_same_v<T, float>) {
                    attention_head_forward(out, C, S, maxT, Q, 3 * C, key_row(l, b, 0) + h * hs,
                                           value_row(l, b, 0) + h * hs, kv_stride(), qf, nq, start[b], hs, scale,
                                           s.head_scratch.data() + my_slot() * attention_head_scratch(maxT, hs));
                    for (int t = qf; t < nq; t++) on_weights(t, S + (size_t)(t - qf) * maxT);
                } else if constexpr (HAVE_BLAS) {
                    attention_head_forward_blocks(out, C, S, Q, 3 * C, key_row(l, b, 0) + h * hs,
                                                  value_row(l, b, 0) + h * hs, kv_stride(), qf, nq, start[b], hs,
                                                  scale, on_weights);
                }
            }
    }

    // One new token against its cached rows, all heads together: each cached key and value
    // row (C values) is read once, front to back (decode is memory-bound here)
    void attention_decode(int l) {
        #pragma omp parallel for collapse(2)
        for (int b = 0; b < Bn; b++)
            for (int t = 0; t < Tn; t++) {
                if (t >= n_new[b]) continue;
                T* o = atty + at(b, t) * C;  // (C) = (NH, hs)
                if (t < query_from(l, b)) { std::fill(o, o + C, T(0)); continue; }
                const T* q = qkv + at(b, t) * 3 * C;
                T* sc = s.scores.data() + my_slot() * NH * m.config.max_seq_len;  // (NH, len)
                const int len = start[b] + t + 1;
                decode_scores(sc, q, [&](int j) { return key_row(l, b, j); }, len, NH, hs, scale);
                for (int h = 0; h < NH; h++) {
                    decode_softmax(sc + (size_t)h * len, len);
                    if (rec) record_attention(l, cache_row[b], h, start[b] + t, sc + (size_t)h * len, len);
                }
                decode_values(o, sc, [&](int j) { return value_row(l, b, j); }, len, NH, hs);
            }
    }

    // The rows layer l continues with after its attention: all, or in the trimmed last layer
    // the needed ones, moved to the front of atty and x
    int rows_after_attention(int l) {
        if (!(head_from && l == L - 1)) return N;
        head_rows = pack_needed(atty, C);
        pack_needed(x, C);
        return head_rows;
    }

    // x += atty @ attprojw^T + attprojb, on the first n rows
    void attention_projection(int l, int n) {
        linear(proj, atty, l, 1, p.attprojw + (size_t)l * C * C, p.attprojb + l * C, n, C, C, C);
        if (rec) record(ra->atty, l, atty, C);  // (attproj and fcproj are not kept: no backward reads them)
        residual_forward(x, x, proj, (size_t)n * C);
    }

    // x += fcproj(gelu(fc(ln2(x)))), on the first n rows
    void mlp(int l, int n) {
        layernorm_forward(ln, mean, rstd, x, p.ln2w + l * C, p.ln2b + l * C, n, C);
        linear(fch, ln, l, 2, p.fcw + (size_t)l * 4 * C * C, p.fcb + l * 4 * C, n, C, 4 * C, 4 * C);
        if (rec) {
            record(ra->residual2, l, x, C);
            record(ra->ln2, l, ln, C);
            record(ra->ln2_mean, l, mean, 1);
            record(ra->ln2_rstd, l, rstd, 1);
            record(ra->fch, l, fch, 4 * C);
        }
        gelu_forward(fch, fch, (size_t)n * 4 * C);
        linear(proj, fch, l, 3, p.fcprojw + (size_t)l * C * 4 * C, p.fcprojb + l * C, n, 4 * C, C, C);
        residual_forward(x, x, proj, (size_t)n * C);
        if (rec) {
            record(ra->fch_gelu, l, fch, 4 * C);
            record(ra->residual3, l, x, C);
        }
    }

    // The LM head at every new position (head_rows of them, packed in scratch order; trimmed:
    // the needed ones), each row then moved to its place in logits (as tokens: packed or
    // padded), zeros at the positions without logits. Rows move to equal or higher
    // addresses, so they go last first.
    void head_all_positions() {
        T* head = logits + io(0, 0) * Vp;  // the share's first row of logits: the head's rows land here first
        layernorm_forward(ln, mean, rstd, x, p.lnfw, p.lnfb, head_rows, C);
        matmul_forward(head, ln, p.wte, (const T*)nullptr, head_rows, C, V, Vp);
        for (int n = 0; n < head_rows; n++) std::fill(head + (size_t)n * Vp + V, head + (size_t)(n + 1) * Vp, T(0));
        size_t kept = io(0, 0) + head_rows;
        for (int b = Bn - 1; b >= 0; b--) {
            const int qf = query_from(L - 1, b);
            if (!io_start) std::fill(logits + io(b, n_new[b]) * Vp, logits + io(b, Tn) * Vp, T(0));
            for (int t = n_new[b] - 1; t >= qf; t--)
                if (--kept != io(b, t)) memmove(logits + io(b, t) * Vp, logits + kept * Vp, sizeof(T) * Vp);
            std::fill(logits + io(b, 0) * Vp, logits + io(b, qf) * Vp, T(0));
        }
        if (rec) {
            // (a record's pass has no head_from: logits hold row b's new positions at io(b, t))
            for (int b = 0; b < Bn; b++)
                for (int t = 0; t < n_new[b]; t++) {
                    const size_t to = (size_t)cache_row[b] * rec->maxT + start[b] + t, from = at(b, t);
                    memcpy(ra->lnf + to * C, ln + from * C, sizeof(T) * C);
                    ra->lnf_mean[to] = mean[from];
                    ra->lnf_rstd[to] = rstd[from];
                    memcpy(ra->logits + to * Vp, logits + io(b, t) * Vp, sizeof(T) * Vp);
                }
            for (int b = 0; b < Bn; b++)
                if (n_new[b] > 0) rec->head_from[cache_row[b]] = std::min(rec->head_from[cache_row[b]], start[b]);
        }
    }

    // The LM head at each row's last new position only: a prefill skips the rest
    void head_last_position() {
        for (int b = 0; b < Bn; b++) {
            if (n_new[b] == 0) { std::fill(last_x + (size_t)b * C, last_x + (size_t)(b + 1) * C, T(0)); continue; }
            memcpy(last_x + (size_t)b * C, x + at(b, n_new[b] - 1) * C, sizeof(T) * C);
        }
        layernorm_forward(last_ln, last_mean, last_rstd, last_x, p.lnfw, p.lnfb, Bn, C);
        linear(logits, last_ln, -1, 0, p.wte, (const T*)nullptr, Bn, C, V, Vp);
        for (int b = 0; b < Bn; b++) std::fill(logits + (size_t)b * Vp + V, logits + (size_t)(b + 1) * Vp, T(0));
        if (rec)
            for (int b = 0; b < Bn; b++) {
                if (n_new[b] == 0) continue;
                const int row = cache_row[b];
                const size_t at = (size_t)row * rec->maxT + start[b] + n_new[b] - 1;
                memcpy(ra->lnf + at * C, last_ln + (size_t)b * C, sizeof(T) * C);
                ra->lnf_mean[at] = last_mean[b];
                ra->lnf_rstd[at] = last_rstd[b];
                memcpy(ra->logits + at * Vp, logits + (size_t)b * Vp, sizeof(T) * Vp);
                rec->head_from[row] = std::min(rec->head_from[row], start[b] + n_new[b] - 1);
            }
    }
};

// Prepares m's training activations to record B rows of up to Tmax inputs each: the record
// that generation then passes to every gpt_infer call (rows = cache rows = batch rows). The
// record is the rectangle (B, Tmax); gpt_forward_from_record packs it to the batch's rows.
template <typename T>
void gpt_begin_record(GPT<T>& m, ForwardRecord<T>& rec, int B, int Tmax) {
    const RowLayout rect = RowLayout::rectangle(B, Tmax, m.config.num_heads);
    gpt_prepare_training(m, rect);
    gpt_shape_activations(m, rect);
    rec.acts = &m.acts;
    rec.B = B;
    rec.maxT = Tmax;
    rec.tokens.assign((size_t)B * Tmax, -1);
    rec.length.assign(B, 0);
    rec.head_from.assign(B, INT_MAX);
    rec.ready = true;
}

// gpt_forward(m, tokens, row_start, B) from a record instead of a pass: when every row's
// recorded positions hold exactly its tokens and every position that has a target (from
// the first head position on) was recorded, the record's (B, Tmax) rectangle is packed
// down to the batch's rows in place (each row of a row's block moves to a lower address or
// stays, and a block's zeros land below the next block's unmoved values, so one ascending
// pass is safe), the positions never run are zeroed, and it returns true. Otherwise (a
// batch that is not the one sampled) it returns false and changes nothing the caller
// relies on: run gpt_forward. `has_target(n)` says whether position n of the batch is a
// target.
template <typename T, typename HasTarget>
bool gpt_forward_from_record(GPT<T>& m, ForwardRecord<T>& rec, const int* tokens, const int* row_start, int B,
                             HasTarget has_target) {
    const bool was_ready = rec.ready;
    rec.ready = false;  // a record serves one forward
    if (!was_ready || B != rec.B) return false;
    for (int b = 0; b < B; b++) {
        const int len = rec.length[b], n0 = row_start[b];
        if (row_start[b + 1] - n0 > rec.maxT) return false;
        for (int t = 0; t < row_start[b + 1] - n0; t++) {
            const int recorded = t < len ? rec.tokens[(size_t)b * rec.maxT + t] : -1;
            if ((t < len && recorded != tokens[n0 + t]) || (has_target(n0 + t) && (t >= len || t < rec.head_from[b])))
                return false;
        }
    }
    const GPTConfig& c = m.config;
    const int L = c.num_layers, NH = c.num_heads, Tr = rec.maxT;
    const RowLayout rows = RowLayout::packed(row_start, B, NH);
    size_t from[NUM_ACTIVATION_TENSORS], to[NUM_ACTIVATION_TENSORS];
    fill_activation_sizes(from, c, B, Tr);
    fill_packed_activation_sizes(to, c, rows.N, rows.att());
    // tensor by tensor, block by block ((l, b), or (l, b, h) for the attention weights):
    // row b's first len rows of its Tr (att: len by len of Tr by Tr) move to the batch's
    // place for them, then what sampling never ran is zeroed: positions at or past the
    // row's recorded length (every tensor), and the LM head before its first recorded
    // position. Zeros there give exactly zero gradient.
    T* memory = m.acts_memory.data();
    size_t src_base = 0, dst_base = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        const bool attention = activation_is_attention(i);
        const int layers = activation_per_layer(i) ? L : 1;
        const size_t width = attention ? 0 : from[i] / ((size_t)layers * B * Tr);  // values per position
        for (int l = 0; l < layers; l++)
            for (int b = 0; b < B; b++) {
                const int len = rows.length(b), ran = std::min(rec.length[b], len);
                if (attention) {
                    for (int h = 0; h < NH; h++) {
                        T* dst = memory + dst_base + l * rows.att() + rows.att_start[b] + (size_t)h * len * len;
                        const T* src = memory + src_base + (((size_t)l * B + b) * NH + h) * Tr * Tr;
                        for (int t = 0; t < len; t++)
                            if (dst + (size_t)t * len != src + (size_t)t * Tr)
                                memmove(dst + (size_t)t * len, src + (size_t)t * Tr, sizeof(T) * len);
                        std::fill(dst + (size_t)ran * len, dst + (size_t)len * len, T(0));
                    }
                    continue;
                }
                T* dst = memory + dst_base + ((size_t)l * rows.N + rows.start[b]) * width;
                const T* src = memory + src_base + ((size_t)l * B + b) * Tr * width;
                if (dst != src) memmove(dst, src, sizeof(T) * len * width);
                std::fill(dst + (size_t)ran * width, dst + (size_t)len * width, T(0));
                if (activation_of_head(i)) std::fill(dst, dst + (size_t)std::min(rec.head_from[b], ran) * width, T(0));
            }
        src_base += from[i];
        dst_base += to[i];
    }
    gpt_shape_activations(m, rows);
    std::copy(tokens, tokens + rows.N, m.inputs.begin());
    m.batch = rows;
    return true;
}
