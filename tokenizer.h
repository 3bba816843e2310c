// tokenizer.h — text <-> token ids: the byte-level tokenizer and GPT-2's BPE.
//
// Byte-level (docs/formats.md §5, the built-in default): ids 0..255 are bytes, 256 is
// <|endoftext|>, V = 257. Lossless for any input, valid UTF-8 or not.
//
// GPT-2 BPE (V = 50257, EOS = 50256), exactly as OpenAI's encoder.py:
//   1. pre-tokenize with the pattern
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      written out by hand below (first alternative that matches wins, as in a regex);
//   2. for each pre-token, start from its bytes and repeatedly merge every occurrence of
//      the adjacent pair with the lowest merge rank, left to right, until none has a rank.
// Non-obvious choices:
// - The vocabulary files spell tokens through GPT-2's byte-to-unicode map (every byte gets
//   a printable character). We undo the map once at load, so tokens are raw byte strings
//   and a merge is a pair of ids: no unicode strings in the hot loop.
// - Pre-tokens repeat a lot in real text ("the", " of"), so their ids are cached.
// - Invalid UTF-8 is not an error: each invalid byte is its own code point of the class
//   "neither letter, number nor space" (as U+FFFD would be), and BPE over bytes encodes it
//   losslessly. decode(encode(s)) == s for any bytes s.
// - "<|endoftext|>" in the text is the EOS token when `special` is true (Hugging Face's
//   default for GPT-2); otherwise it is 13 ordinary bytes. The byte tokenizer keeps it
//   literal by default (its ids are bytes), the BPE tokenizer makes it special.
// - Files read: Hugging Face tokenizer.json or vocab.json + merges.txt, OpenAI's
//   encoder.json + vocab.bpe, and llm.c's gpt2_tokenizer.bin (decode only: it has no
//   merges).
#pragma once

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "unicode_tables.h"
#include "utils.h"

inline const std::string END_OF_TEXT = "<|endoftext|>";

struct Tokenizer {
    virtual ~Tokenizer() = default;
    virtual std::string name() const = 0;
    virtual int vocab_size() const = 0;
    virtual int eos_id() const = 0;
    // Whether "<|endoftext|>" in text is EOS unless the caller says otherwise.
    virtual bool special_by_default() const = 0;
    virtual std::vector<int> encode(const std::string& text, bool special) const = 0;
    std::vector<int> encode(const std::string& text) const { return encode(text, special_by_default()); }
    // EOS decodes to "<|endoftext|>"; ids outside [0, V) are an error.
    virtual std::string decode(const std::vector<int>& ids) const = 0;
};

// Calls encode_plain on the text between "<|endoftext|>" markers and puts EOS for each.
template <typename F>
void split_on_end_of_text(const std::string& text, bool special, int eos, std::vector<int>& out, F encode_plain) {
    size_t start = 0;
    while (special) {
        size_t at = text.find(END_OF_TEXT, start);
        if (at == std::string::npos) break;
        encode_plain(text.substr(start, at - start), out);
        out.push_back(eos);
        start = at + END_OF_TEXT.size();
    }
    encode_plain(start == 0 ? text : text.substr(start), out);
}

struct ByteTokenizer : Tokenizer {
    static constexpr int EOS = 256;
    std::string name() const override { return "byte"; }
    int vocab_size() const override { return 257; }
    int eos_id() const override { return EOS; }
    bool special_by_default() const override { return false; }
    using Tokenizer::encode;
    std::vector<int> encode(const std::string& text, bool special) const override {
        std::vector<int> ids;
        ids.reserve(text.size());
        split_on_end_of_text(text, special, EOS, ids, [](const std::string& s, std::vector<int>& out) {
            for (unsigned char b : s) out.push_back(b);
        });
        return ids;
    }
    std::string decode(const std::vector<int>& ids) const override {
        std::string out;
        out.reserve(ids.size());
        for (int id : ids) {
            if (id == EOS) out += END_OF_TEXT;
            else if (id >= 0 && id < 256) out += (char)id;
            else GKD_FAIL("byte tokenizer: id %d is outside [0, 257)", id);
        }
        return out;
    }
};

// ----------------------------------------------------------------------------
// GPT-2's pre-tokenizer

enum class CharClass { Letter, Number, Space, Other };

inline bool in_ranges(uint32_t cp, const CodePointRange* r, size_t n) {
    size_t lo = 0, hi = n;  // first range with last >= cp
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r[mid].last < cp) lo = mid + 1; else hi = mid;
    }
    return lo < n && r[lo].first <= cp;
}

// The code point starting at s[i] and its length in bytes. An invalid or truncated
// sequence, an overlong form or a surrogate is one byte of class Other (ok = false).
inline uint32_t next_code_point(const std::string& s, size_t i, int& len, bool& ok) {
    const unsigned char* p = (const unsigned char*)s.data() + i;
    size_t left = s.size() - i;
    unsigned char b = p[0];
    len = 1;
    ok = true;
    if (b < 0x80) return b;
    int n = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 ? (b <= 0xEF ? 3 : 0) : b >= 0xC2 ? 2 : 0;
    if (n == 0 || (size_t)n > left) { ok = false; return b; }
    uint32_t cp = b & (0xFF >> (n + 1));
    for (int k = 1; k < n; k++) {
        if ((p[k] & 0xC0) != 0x80) { ok = false; return b; }
        cp = (cp << 6) | (p[k] & 0x3F);
    }
    static const uint32_t min_for_length[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) { ok = false; return b; }
    len = n;
    return cp;
}

inline CharClass char_class(const std::string& s, size_t i, int& len) {
    bool ok;
    uint32_t cp = next_code_point(s, i, len, ok);
    if (!ok) return CharClass::Other;
    if (cp < 0x80) {  // fast path for ASCII
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return CharClass::Letter;
        if (cp >= '0' && cp <= '9') return CharClass::Number;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::Space;
        return CharClass::Other;
    }
    if (in_ranges(cp, LETTER_RANGES, std::size(LETTER_RANGES))) return CharClass::Letter;
    if (in_ranges(cp, NUMBER_RANGES, std::size(NUMBER_RANGES))) return CharClass::Number;
    if (in_ranges(cp, WHITESPACE_RANGES, std::size(WHITESPACE_RANGES))) return CharClass::Space;
    return CharClass::Other;
}

// Splits text into GPT-2 pre-tokens, as [begin, end) byte offsets.
inline std::vector<std::pair<size_t, size_t>> gpt2_pretokenize(const std::string& s) {
    std::vector<std::pair<size_t, size_t>> out;
    const size_t n = s.size();
    // end of the run of class c starting at j
    auto run_end = [&](size_t j, CharClass c) {
        while (j < n) {
            int len;
            if (char_class(s, j, len) != c) break;
            j += len;
        }
        return j;
    };
    size_t i = 0;
    while (i < n) {
        // 's|'t|'re|'ve|'m|'ll|'d
        if (s[i] == '\'' && i + 1 < n) {
            size_t k = 0;
            char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
            if (a == 's' || a == 't' || a == 'm' || a == 'd') k = 2;
            else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) k = 3;
            if (k) { out.push_back({i, i + k}); i += k; continue; }
        }
        // ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+'
        size_t j = s[i] == ' ' && i + 1 < n ? i + 1 : i;
        int len;
        CharClass c = char_class(s, j, len);
        if (c != CharClass::Space) {
            size_t end = run_end(j, c);
            out.push_back({i, end});
            i = end;
            continue;
        }
        // '\s+(?!\S)|\s+': a run of spaces gives its last one to the word that follows
        size_t end = i, last = i;
        while (end < n && char_class(s, end, len) == CharClass::Space) { last = end; end += len; }
        if (end < n && last > i) end = last;
        out.push_back({i, end});
        i = end;
    }
    return out;
}

// ----------------------------------------------------------------------------
// GPT-2 byte-level BPE

// GPT-2's byte-to-unicode map: printable bytes stand for themselves, the other 68 bytes
// are shifted to code points 256.. so that every token is printable text.
inline std::vector<uint32_t> gpt2_byte_to_unicode() {
    std::vector<uint32_t> map(256, 0);
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; b++) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
    int shifted = 0;
    for (int b = 0; b < 256; b++) map[b] = printable[b] ? b : 256 + shifted++;
    return map;
}

struct BpeTokenizer : Tokenizer {
    std::string source;                        // the file(s) it came from, for messages
    std::vector<std::string> token_bytes;      // (V) id -> raw bytes
    std::unordered_map<std::string, int> id_of;
    std::unordered_map<uint64_t, std::pair<int, int>> merges;  // (left id, right id) -> (rank, merged id)
    int byte_token[256];
    int eos = -1;
    bool can_encode = true;
    mutable std::unordered_map<std::string, std::vector<int>> cache;  // pre-token -> ids

    std::string name() const override { return "gpt2-bpe"; }
    int vocab_size() const override { return (int)token_bytes.size(); }
    int eos_id() const override { return eos; }
    bool special_by_default() const override { return true; }

    static uint64_t pair_key(int a, int b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

    // One pre-token's ids: start from bytes, merge the lowest-ranked pair everywhere.
    void bpe(const std::string& piece, std::vector<int>& out) const {
        auto hit = cache.find(piece);
        if (hit != cache.end()) { out.insert(out.end(), hit->second.begin(), hit->second.end()); return; }
        std::vector<int> word(piece.size());
        for (size_t k = 0; k < piece.size(); k++) word[k] = byte_token[(unsigned char)piece[k]];
        while (word.size() > 1) {
            int best_rank = INT_MAX, left = -1, right = -1, merged = -1;
            for (size_t k = 0; k + 1 < word.size(); k++) {
                auto m = merges.find(pair_key(word[k], word[k + 1]));
                if (m != merges.end() && m->second.first < best_rank) {
                    best_rank = m->second.first; left = word[k]; right = word[k + 1]; merged = m->second.second;
                }
            }
            if (merged < 0) break;
            size_t w = 0;
            for (size_t k = 0; k < word.size(); k++) {
                if (k + 1 < word.size() && word[k] == left && word[k + 1] == right) { word[w++] = merged; k++; }
                else word[w++] = word[k];
            }
            word.resize(w);
        }
        if (cache.size() > (1u << 20)) cache.clear();  // bound memory on endless text
        cache.emplace(piece, word);
        out.insert(out.end(), word.begin(), word.end());
    }

    using Tokenizer::encode;
    std::vector<int> encode(const std::string& text, bool special) const override {
        if (!can_encode)
            GKD_FAIL("%s: llm.c's tokenizer file can only decode (it has no merges); to encode text pass "
                     "--tokenizer with tokenizer.json, or a folder holding vocab.json + merges.txt or "
                     "encoder.json + vocab.bpe", source.c_str());
        std::vector<int> ids;
        ids.reserve(text.size() / 3 + 1);
        split_on_end_of_text(text, special, eos, ids, [&](const std::string& s, std::vector<int>& out) {
            for (auto [b, e] : gpt2_pretokenize(s)) bpe(s.substr(b, e - b), out);
        });
        return ids;
    }

    std::string decode(const std::vector<int>& ids) const override {
        std::string out;
        for (int id : ids) {
            if (id < 0 || id >= vocab_size())
                GKD_FAIL("%s: id %d is outside the vocabulary [0, %d)", source.c_str(), id, vocab_size());
            out += token_bytes[id];
        }
        return out;
    }
};

// Undoes GPT-2's byte-to-unicode map on one token as spelled in a vocabulary file.
inline bool gpt2_unicode_to_bytes(const std::string& spelled, std::string& raw) {
    static const std::vector<int> byte_of = [] {
        std::vector<int> inv(512, -1);
        auto fwd = gpt2_byte_to_unicode();
        for (int b = 0; b < 256; b++) inv[fwd[b]] = b;
        return inv;
    }();
    raw.clear();
    for (size_t i = 0; i < spelled.size();) {
        int len;
        bool ok;
        uint32_t cp = next_code_point(spelled, i, len, ok);
        if (!ok || cp >= byte_of.size() || byte_of[cp] < 0) return false;
        raw += (char)byte_of[cp];
        i += len;
    }
    return true;
}

// Builds a BPE tokenizer from a vocabulary (spelled token -> id) and merges ("a b" pairs in
// rank order). where(i) names merge i's place in its file for error messages.
template <typename Where>
std::unique_ptr<BpeTokenizer> build_bpe(const std::string& source, const nlohmann::json& vocab,
                                        const std::vector<std::pair<std::string, std::string>>& merge_list,
                                        Where where) {
    auto t = std::make_unique<BpeTokenizer>();
    t->source = source;
    if (!vocab.is_object() || vocab.empty())
        GKD_FAIL("%s: the vocabulary must be a non-empty JSON object of token -> id", source.c_str());
    size_t V = vocab.size();
    t->token_bytes.assign(V, std::string());
    std::vector<bool> seen(V, false);
    std::string raw;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        if (!it.value().is_number_integer())
            GKD_FAIL("%s: the id of token \"%s\" is not an integer", source.c_str(), it.key().c_str());
        long long id = it.value().get<long long>();
        if (id < 0 || id >= (long long)V || seen[id])
            GKD_FAIL("%s: token \"%s\" has id %lld, but the %zu ids must be 0..%zu, each once", source.c_str(),
                     it.key().c_str(), id, V, V - 1);
        seen[id] = true;
        if (it.key() == END_OF_TEXT) { t->eos = (int)id; raw = END_OF_TEXT; }
        else if (!gpt2_unicode_to_bytes(it.key(), raw))
            GKD_FAIL("%s: token \"%s\" (id %lld) is not spelled in GPT-2's byte-to-unicode alphabet: not a GPT-2 "
                     "byte-level BPE vocabulary", source.c_str(), it.key().c_str(), id);
        t->token_bytes[id] = raw;
        if (it.key() != END_OF_TEXT) t->id_of[raw] = (int)id;
    }
    if (t->eos < 0) GKD_FAIL("%s: the vocabulary has no \"<|endoftext|>\" token", source.c_str());
    for (int b = 0; b < 256; b++) {
        auto it = t->id_of.find(std::string(1, (char)b));
        if (it == t->id_of.end()) GKD_FAIL("%s: the vocabulary has no token for byte 0x%02X: not byte-level", source.c_str(), b);
        t->byte_token[b] = it->second;
    }
    std::string left_raw, right_raw;
    for (size_t r = 0; r < merge_list.size(); r++) {
        const auto& [l, rgt] = merge_list[r];
        if (!gpt2_unicode_to_bytes(l, left_raw) || !gpt2_unicode_to_bytes(rgt, right_raw))
            GKD_FAIL("%s: merge \"%s %s\" is not spelled in GPT-2's byte-to-unicode alphabet", where(r).c_str(),
                     l.c_str(), rgt.c_str());
        auto a = t->id_of.find(left_raw), b = t->id_of.find(right_raw), ab = t->id_of.find(left_raw + right_raw);
        if (a == t->id_of.end() || b == t->id_of.end() || ab == t->id_of.end())
            GKD_FAIL("%s: merge \"%s %s\" uses or makes a token that is not in the vocabulary", where(r).c_str(),
                     l.c_str(), rgt.c_str());
        t->merges.emplace(BpeTokenizer::pair_key(a->second, b->second), std::make_pair((int)r, ab->second));
    }
    return t;
}

inline nlohmann::json parse_json_file(const std::string& path) {
    std::string text = read_whole_file(path);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        GKD_FAIL("%s: not valid JSON: %s", path.c_str(), e.what());
    }
}

// One merge spelled "left right": two non-empty tokens and exactly one space.
inline bool split_merge(const std::string& text, std::pair<std::string, std::string>& merge) {
    size_t sp = text.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == text.size() || text.find(' ', sp + 1) != std::string::npos)
        return false;
    merge = {text.substr(0, sp), text.substr(sp + 1)};
    return true;
}

// merges.txt / vocab.bpe: an optional "#version" line, then one "left right" pair per line.
inline std::unique_ptr<BpeTokenizer> load_bpe_pair(const std::string& vocab_path, const std::string& merges_path) {
    nlohmann::json vocab = parse_json_file(vocab_path);
    std::vector<std::pair<std::string, std::string>> merge_list;
    std::vector<int> line_of;
    for_each_line(read_whole_file(merges_path), [&](const std::string& l, int line) {
        if (l.empty() || (line == 1 && l.rfind("#version", 0) == 0)) return;
        merge_list.emplace_back();
        if (!split_merge(l, merge_list.back()))
            GKD_FAIL("%s:%d: a merge line must be two tokens separated by one space", merges_path.c_str(), line);
        line_of.push_back(line);
    });
    return build_bpe(vocab_path + " + " + merges_path, vocab, merge_list,
                     [&](size_t r) { return strf("%s:%d", merges_path.c_str(), line_of[r]); });
}

// Hugging Face tokenizer.json: model.vocab, model.merges ("a b" strings or [a, b] pairs),
// and <|endoftext|> among added_tokens.
inline std::unique_ptr<BpeTokenizer> load_tokenizer_json(const std::string& path) {
    nlohmann::json j = parse_json_file(path);
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
        GKD_FAIL("%s: not a Hugging Face tokenizer.json (no \"model\" object)", path.c_str());
    const auto& model = j["model"];
    if (model.value("type", std::string()) != "BPE")
        GKD_FAIL("%s: model.type is not \"BPE\": only GPT-2 byte-level BPE is supported", path.c_str());
    if (!model.contains("vocab") || !model.contains("merges") || !model["merges"].is_array())
        GKD_FAIL("%s: model.vocab or model.merges is missing", path.c_str());
    nlohmann::json vocab = model["vocab"];
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
        for (const auto& a : j["added_tokens"])
            if (a.is_object() && a.value("content", std::string()) == END_OF_TEXT && a.contains("id") &&
                a["id"].is_number_integer() && !vocab.contains(END_OF_TEXT))
                vocab[END_OF_TEXT] = a["id"];
    std::vector<std::pair<std::string, std::string>> merge_list;
    const auto& ms = model["merges"];
    for (size_t r = 0; r < ms.size(); r++) {
        const auto& m = ms[r];
        if (m.is_string()) {
            merge_list.emplace_back();
            if (!split_merge(m.get<std::string>(), merge_list.back()))
                GKD_FAIL("%s: model.merges[%zu] must be two tokens separated by one space", path.c_str(), r);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
            merge_list.push_back({m[0].get<std::string>(), m[1].get<std::string>()});
        } else {
            GKD_FAIL("%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", path.c_str(), r);
        }
    }
    return build_bpe(path, vocab, merge_list, [&](size_t r) { return strf("%s: model.merges[%zu]", path.c_str(), r); });
}

// llm.c's gpt2_tokenizer.bin: 256 uint32 header (magic 20240328, version 1 or 2, vocab
// size, EOS in version 2), then per token a length byte and its bytes.
constexpr uint32_t LLMC_TOKENIZER_MAGIC = 20240328;

inline std::unique_ptr<BpeTokenizer> load_llmc_tokenizer(const std::string& path) {
    InputFile in(path);
    uint32_t header[256];
    if (in.size < (long long)sizeof header)
        GKD_FAIL("%s: not an llm.c tokenizer file: shorter than its 1024-byte header", path.c_str());
    in.read_exact(header, sizeof header, "the header");
    if (header[0] != LLMC_TOKENIZER_MAGIC)
        GKD_FAIL("%s: bad magic number %u (expected %u): not an llm.c tokenizer file", path.c_str(), header[0],
                 LLMC_TOKENIZER_MAGIC);
    if (header[1] != 1 && header[1] != 2)
        GKD_FAIL("%s: unsupported llm.c tokenizer version %u (1 and 2 are known)", path.c_str(), header[1]);
    uint32_t V = header[2];
    if (V == 0 || (long long)V > in.size)
        GKD_FAIL("%s: vocabulary size %u does not fit a file of %lld bytes", path.c_str(), V, in.size);
    auto t = std::make_unique<BpeTokenizer>();
    t->source = path;
    t->can_encode = false;
    t->eos = header[1] == 2 ? (int)header[3] : 50256;
    if (t->eos < 0 || t->eos >= (int)V)
        GKD_FAIL("%s: end-of-text id %d is outside the vocabulary of %u", path.c_str(), t->eos, V);
    t->token_bytes.resize(V);
    for (uint32_t i = 0; i < V; i++) {
        unsigned char len;
        in.read_exact(&len, 1, strf("the length of token %u", i).c_str());
        if (len == 0) GKD_FAIL("%s: token %u has length 0", path.c_str(), i);
        t->token_bytes[i].resize(len);
        in.read_exact(&t->token_bytes[i][0], len, strf("token %u", i).c_str());
    }
    if (ftello(in.f) != in.size) GKD_FAIL("%s: trailing bytes after the %u tokens", path.c_str(), V);
    return t;
}

// The tokenizer files a folder holds, in order of preference; "" if none.
inline std::string find_tokenizer_in(const std::string& dir) {
    for (const char* f : {"tokenizer.json", "vocab.json", "encoder.json", "gpt2_tokenizer.bin"}) {
        std::string p = dir + "/" + f;
        if (!is_file(p)) continue;
        if (std::string(f) == "vocab.json" && !is_file(dir + "/merges.txt")) continue;
        if (std::string(f) == "encoder.json" && !is_file(dir + "/vocab.bpe")) continue;
        return p;
    }
    return "";
}

// The tokenizer file a --tokenizer path stands for: the path itself, or the file a folder holds.
inline std::string tokenizer_file(const std::string& path) {
    if (!is_directory(path)) return path;
    std::string found = find_tokenizer_in(path);
    if (found.empty())
        GKD_FAIL("%s: no tokenizer in this folder: expected tokenizer.json, vocab.json + merges.txt, "
                 "encoder.json + vocab.bpe, or gpt2_tokenizer.bin", path.c_str());
    return found;
}

inline std::unique_ptr<Tokenizer> load_tokenizer_file(const std::string& spec) {
    const std::string path = tokenizer_file(spec);
    std::string base = path.substr(path.find_last_of('/') + 1);
    std::string dir = parent_directory(path);
    if (base == "vocab.json" && is_file(dir + "/merges.txt")) return load_bpe_pair(path, dir + "/merges.txt");
    if (base == "encoder.json" && is_file(dir + "/vocab.bpe")) return load_bpe_pair(path, dir + "/vocab.bpe");
    InputFile probe(path);
    char first = 0;
    if (probe.size > 0) probe.read_exact(&first, 1, "the first byte");
    if (probe.size >= 4) {
        uint32_t magic = 0;
        fseeko(probe.f, 0, SEEK_SET);
        probe.read_exact(&magic, 4, "the magic number");
        if (magic == LLMC_TOKENIZER_MAGIC) return load_llmc_tokenizer(path);
    }
    if (first == '{') return load_tokenizer_json(path);
    GKD_FAIL("%s: not a tokenizer file: expected tokenizer.json, gpt2_tokenizer.bin, or a folder holding "
             "vocab.json + merges.txt or encoder.json + vocab.bpe", path.c_str());
}

// Picks the tokenizer: `spec` is "byte", a file or folder, or "" (follow the model: V = 257
// is byte-level; otherwise look for tokenizer files beside the model). model_vocab = 0
// means no model to agree with.
inline std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec, int model_vocab,
                                                 const std::string& model_path = "", std::string* used = nullptr) {
    if (spec == "byte" || (spec.empty() && (model_vocab == 0 || model_vocab == 257))) {
        if (model_vocab != 0 && model_vocab != 257)
            GKD_FAIL("--tokenizer byte has 257 tokens but the model %s has %d", model_path.c_str(), model_vocab);
        return std::make_unique<ByteTokenizer>();
    }
    std::string path = spec;
    if (path.empty()) {
        if (!model_path.empty())
            path = find_tokenizer_in(model_folder(model_path));
        if (path.empty())
            GKD_FAIL("the model %s has a vocabulary of %d tokens, so it needs a tokenizer: pass --tokenizer PATH "
                     "(tokenizer.json, gpt2_tokenizer.bin, or a folder with vocab.json + merges.txt or "
                     "encoder.json + vocab.bpe), or put one of those beside the model",
                     model_path.c_str(), model_vocab);
    }
    const std::string file = tokenizer_file(path);
    auto tok = load_tokenizer_file(file);
    if (used) *used = file;
    if (model_vocab != 0 && tok->vocab_size() != model_vocab)
        GKD_FAIL("vocabulary mismatch: tokenizer %s has %d tokens but the model %s has V = %d", path.c_str(),
                 tok->vocab_size(), model_path.c_str(), model_vocab);
    return tok;
}

// Whether two tokenizers are the same vocabulary: the same ids for the same bytes, the same
// EOS, and (when both can encode) the same merges. Used to check that a teacher's
// tokenizer files agree with the student's.
inline bool tokenizers_agree(const Tokenizer& a, const Tokenizer& b) {
    if (a.vocab_size() != b.vocab_size() || a.eos_id() != b.eos_id()) return false;
    auto* x = dynamic_cast<const BpeTokenizer*>(&a);
    auto* y = dynamic_cast<const BpeTokenizer*>(&b);
    if (!x || !y) return !x && !y;  // two byte-level tokenizers of one size
    if (x->token_bytes != y->token_bytes) return false;
    return !x->can_encode || !y->can_encode || x->merges == y->merges;
}

// The teacher's tokenizer files, when it has some beside it, must agree with the
// tokenizer in use (`tok`, from `tok_source`).
inline void check_shared_tokenizer(const Tokenizer& tok, const std::string& tok_source,
                                    const std::string& teacher_path, const char* role = "teacher") {
    if (tok.vocab_size() == 257) return;  // byte-level: nothing to compare with
    std::string beside = find_tokenizer_in(model_folder(teacher_path));
    if (beside.empty() || beside == tok_source) return;
    if (!tokenizers_agree(tok, *load_tokenizer_file(beside)))
        GKD_FAIL("tokenizer mismatch: %s (beside the %s %s) is not the same vocabulary and merges as %s; "
                 "%s", beside.c_str(), role, teacher_path.c_str(), tok_source.c_str(),
                 strcmp(role, "teacher") == 0 ? "teacher and student must share one tokenizer"
                                              : "the two models must share one tokenizer");
}
