// safetensors.h — loads a Hugging Face GPT-2 `model.safetensors` straight into a GPT<float>,
// and `gpt_load_any`, which takes whichever checkpoint a user points at.
//
// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...} (offsets
// relative to the end of the header), then the raw little-endian tensor data.
//
// Hugging Face GPT-2 against llm.c's layout (docs/formats.md §2):
// - names are "h.3.attn.c_attn.weight" etc., with or without a "transformer." prefix;
// - its Conv1D layers store weights (in, out): c_attn, c_proj, c_fc, mlp.c_proj are
//   transposed to llm.c's (out, in);
// - the LM head is tied to wte (a stored lm_head.weight must equal it);
// - wte is (V, C) and padded with zero rows to Vp;
// - the shape comes from the tensors; the number of heads from config.json beside the
//   file when present, else C / 64 (the head size of every released GPT-2);
// - F32, F16 and BF16 tensors are read (into fp32).
// Every offset and shape is checked against the file before anything is read.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.h"
#include "tokenizer.h"  // parse_json_file
#include "utils.h"

struct SafetensorsEntry {
    std::string dtype;
    std::vector<long long> shape;
    unsigned long long begin = 0, end = 0;  // absolute file offsets
};

inline size_t safetensors_dtype_size(const std::string& dtype) {
    if (dtype == "F32") return 4;
    if (dtype == "F16" || dtype == "BF16") return 2;
    return 0;  // not a dtype we read
}

// Reads and validates the header: every tensor's bytes lie inside the file and match its shape.
inline std::map<std::string, SafetensorsEntry> safetensors_header(InputFile& in) {
    const std::string& path = in.path;
    uint64_t n = 0;
    if (in.size < 8) GKD_FAIL("%s: not a safetensors file: shorter than its 8-byte header length", path.c_str());
    in.read_exact(&n, 8, "the header length");
    if (n > (uint64_t)in.size - 8)
        GKD_FAIL("%s: safetensors header length %llu runs past the end of the file (%lld bytes)", path.c_str(),
                 (unsigned long long)n, in.size);
    if (n > (100u << 20)) GKD_FAIL("%s: safetensors header of %llu bytes is implausibly large", path.c_str(),
                                   (unsigned long long)n);
    std::string text(n, '\0');
    in.read_exact(&text[0], n, "the safetensors header");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        GKD_FAIL("%s: the safetensors header is not valid JSON: %s", path.c_str(), e.what());
    }
    if (!j.is_object()) GKD_FAIL("%s: the safetensors header is not a JSON object", path.c_str());
    const unsigned long long data_start = 8 + n, data_size = (unsigned long long)in.size - data_start;
    std::map<std::string, SafetensorsEntry> out;
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.key() == "__metadata__") continue;
        const auto& v = it.value();
        const char* name = it.key().c_str();
        if (!v.is_object() || !v.contains("dtype") || !v["dtype"].is_string() || !v.contains("shape") ||
            !v["shape"].is_array() || !v.contains("data_offsets") || !v["data_offsets"].is_array() ||
            v["data_offsets"].size() != 2)
            GKD_FAIL("%s: tensor %s: needs dtype, shape and data_offsets [begin, end]", path.c_str(), name);
        SafetensorsEntry e;
        e.dtype = v["dtype"].get<std::string>();
        unsigned long long count = 1;
        for (const auto& d : v["shape"]) {
            if (!d.is_number_unsigned() || d.get<unsigned long long>() > (1ull << 40))
                GKD_FAIL("%s: tensor %s: shape entries must be sizes", path.c_str(), name);
            e.shape.push_back(d.get<long long>());
            count *= (unsigned long long)e.shape.back();
            if (count > (1ull << 40)) GKD_FAIL("%s: tensor %s: implausibly many elements", path.c_str(), name);
        }
        const auto& off = v["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            GKD_FAIL("%s: tensor %s: data_offsets must be non-negative integers", path.c_str(), name);
        unsigned long long b = off[0].get<unsigned long long>(), en = off[1].get<unsigned long long>();
        if (b > en || en > data_size)
            GKD_FAIL("%s: tensor %s: data_offsets [%llu, %llu] lie outside the %llu data bytes", path.c_str(), name,
                     b, en, data_size);
        size_t es = safetensors_dtype_size(e.dtype);
        if (es != 0 && en - b != count * es)
            GKD_FAIL("%s: tensor %s: %llu bytes do not hold its shape of %llu %s values", path.c_str(), name, en - b,
                     count, e.dtype.c_str());
        e.begin = data_start + b;
        e.end = data_start + en;
        out[it.key()] = e;
    }
    return out;
}

inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) bits = sign | 0x7F800000 | (man << 13);  // inf, nan
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {  // subnormal: normalise
        int e = -1;
        do { e++; man <<= 1; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// One tensor into fp32, checked to be `want` in shape.
inline std::vector<float> safetensors_read(InputFile& in, const std::map<std::string, SafetensorsEntry>& header,
                                           const std::string& stored_name, const std::vector<long long>& want) {
    const SafetensorsEntry& e = header.at(stored_name);
    auto shape_text = [](const std::vector<long long>& s) {
        std::string t = "(";
        for (size_t i = 0; i < s.size(); i++) t += (i ? ", " : "") + std::to_string(s[i]);
        return t + ")";
    };
    if (e.shape != want)
        GKD_FAIL("%s: tensor %s has shape %s but this GPT-2 needs %s", in.path.c_str(), stored_name.c_str(),
                 shape_text(e.shape).c_str(), shape_text(want).c_str());
    size_t es = safetensors_dtype_size(e.dtype);
    if (es == 0)
        GKD_FAIL("%s: tensor %s has dtype %s; only F32, F16 and BF16 are read", in.path.c_str(),
                 stored_name.c_str(), e.dtype.c_str());
    size_t count = (e.end - e.begin) / es;
    std::vector<float> out(count);
    fseeko(in.f, (off_t)e.begin, SEEK_SET);
    if (es == 4) {
        in.read_exact(out.data(), count * 4, stored_name.c_str());
    } else {
        std::vector<uint16_t> raw(count);
        in.read_exact(raw.data(), count * 2, stored_name.c_str());
        for (size_t i = 0; i < count; i++) {
            if (e.dtype == "F16") out[i] = half_to_float(raw[i]);
            else { uint32_t bits = (uint32_t)raw[i] << 16; memcpy(&out[i], &bits, 4); }
        }
    }
    return out;
}

// (rows, cols) row-major -> (cols, rows): between Conv1D's (in, out) and llm.c's (out, in).
inline void transpose_into(float* dst, const float* src, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

// The config.json beside a safetensors file, checked against the tensors' shapes.
inline void apply_hf_config(GPTConfig& c, const std::string& config_path) {
    nlohmann::json j = parse_json_file(config_path);
    if (!j.is_object()) GKD_FAIL("%s: not a JSON object", config_path.c_str());
    auto get_int = [&](const char* key, int shape_value, const char* what) {
        if (!j.contains(key)) return;
        if (!j[key].is_number_integer() || j[key].get<long long>() != shape_value)
            GKD_FAIL("%s: %s = %s but the tensors give %s = %d", config_path.c_str(), key, j[key].dump().c_str(),
                     what, shape_value);
    };
    if (j.contains("model_type") && j["model_type"] != "gpt2")
        GKD_FAIL("%s: model_type is %s; only GPT-2 is supported", config_path.c_str(), j["model_type"].dump().c_str());
    get_int("vocab_size", c.vocab_size, "V");
    get_int("n_embd", c.channels, "C");
    get_int("n_layer", c.num_layers, "L");
    get_int("n_positions", c.max_seq_len, "maxT");
    if (j.contains("n_head")) {
        if (!j["n_head"].is_number_integer() || j["n_head"].get<long long>() < 1 ||
            j["n_head"].get<long long>() > c.channels)
            GKD_FAIL("%s: n_head must be a positive integer at most n_embd", config_path.c_str());
        c.num_heads = j["n_head"].get<int>();
    }
    if (j.contains("layer_norm_epsilon") &&
        (!j["layer_norm_epsilon"].is_number() || std::fabs(j["layer_norm_epsilon"].get<double>() - 1e-5) > 1e-12))
        GKD_FAIL("%s: layer_norm_epsilon must be 1e-5 (GPT-2's), not %s", config_path.c_str(),
                 j["layer_norm_epsilon"].dump().c_str());
    if (j.contains("activation_function") && j["activation_function"] != "gelu_new")
        GKD_FAIL("%s: activation_function %s is not GPT-2's tanh GELU (\"gelu_new\")", config_path.c_str(),
                 j["activation_function"].dump().c_str());
}

// One GPT-2 tensor as Hugging Face stores it: its name (without "transformer."), its shape
// there, where it lives in gkd's parameters, and whether it is a Conv1D weight, stored
// (in, out) there and (out, in) here. Import and export both walk this one list.
struct HfTensor {
    std::string name;
    std::vector<long long> shape;
    float* data;
    bool conv1d;
};

inline std::vector<HfTensor> hf_gpt2_tensors(GPT<float>& m) {
    const GPTConfig& c = m.config;
    ParameterTensors<float>& p = m.params;
    const long long C = c.channels;
    std::vector<HfTensor> t = {{"wte.weight", {c.vocab_size, C}, p.wte, false},  // rows V..Vp-1 are padding
                               {"wpe.weight", {c.max_seq_len, C}, p.wpe, false}};
    for (long long l = 0; l < c.num_layers; l++) {
        std::string h = "h." + std::to_string(l) + ".";
        t.push_back({h + "ln_1.weight", {C}, p.ln1w + l * C, false});
        t.push_back({h + "ln_1.bias", {C}, p.ln1b + l * C, false});
        t.push_back({h + "attn.c_attn.weight", {C, 3 * C}, p.qkvw + l * 3 * C * C, true});
        t.push_back({h + "attn.c_attn.bias", {3 * C}, p.qkvb + l * 3 * C, false});
        t.push_back({h + "attn.c_proj.weight", {C, C}, p.attprojw + l * C * C, true});
        t.push_back({h + "attn.c_proj.bias", {C}, p.attprojb + l * C, false});
        t.push_back({h + "ln_2.weight", {C}, p.ln2w + l * C, false});
        t.push_back({h + "ln_2.bias", {C}, p.ln2b + l * C, false});
        t.push_back({h + "mlp.c_fc.weight", {C, 4 * C}, p.fcw + l * 4 * C * C, true});
        t.push_back({h + "mlp.c_fc.bias", {4 * C}, p.fcb + l * 4 * C, false});
        t.push_back({h + "mlp.c_proj.weight", {4 * C, C}, p.fcprojw + l * 4 * C * C, true});
        t.push_back({h + "mlp.c_proj.bias", {C}, p.fcprojb + l * C, false});
    }
    t.push_back({"ln_f.weight", {C}, p.lnfw, false});
    t.push_back({"ln_f.bias", {C}, p.lnfb, false});
    return t;
}

inline void gpt_load_safetensors(GPT<float>& m, const std::string& path) {
    InputFile in(path);
    auto header = safetensors_header(in);
    // names with or without "transformer."; everything else (attn.bias masks) is ignored
    std::string prefix = header.count("transformer.wte.weight") ? "transformer." : "";
    auto name = [&](const std::string& n) { return prefix + n; };
    auto require = [&](const std::string& n) -> const SafetensorsEntry& {
        auto it = header.find(name(n));
        if (it == header.end())
            GKD_FAIL("%s: tensor %s is missing: not a Hugging Face GPT-2 checkpoint", path.c_str(), name(n).c_str());
        return it->second;
    };
    const auto& wte = require("wte.weight");
    const auto& wpe = require("wpe.weight");
    if (wte.shape.size() != 2 || wpe.shape.size() != 2 || wte.shape[1] != wpe.shape[1])
        GKD_FAIL("%s: %s and %s must be (V, C) and (maxT, C)", path.c_str(), name("wte.weight").c_str(),
                 name("wpe.weight").c_str());
    GPTConfig c;
    c.vocab_size = (int)std::min<long long>(wte.shape[0], INT_MAX);
    c.channels = (int)std::min<long long>(wte.shape[1], INT_MAX);
    c.max_seq_len = (int)std::min<long long>(wpe.shape[0], INT_MAX);
    c.num_layers = 0;
    while (header.count(name("h." + std::to_string(c.num_layers) + ".ln_1.weight"))) c.num_layers++;
    if (c.num_layers == 0) GKD_FAIL("%s: tensor %s is missing: no transformer blocks", path.c_str(),
                                    name("h.0.ln_1.weight").c_str());
    c.num_heads = c.channels % 64 == 0 ? c.channels / 64 : 0;
    std::string config_path = parent_directory(path) + "/config.json";
    if (is_file(config_path)) apply_hf_config(c, config_path);
    else if (c.num_heads == 0)
        GKD_FAIL("%s: C = %d is not a multiple of 64, so the number of heads is unknown: put its config.json "
                 "beside it", path.c_str(), c.channels);
    c.padded_vocab_size = pad_vocab(c.vocab_size);
    validate_config(c, path);
    gpt_build(m, c);

    for (const HfTensor& t : hf_gpt2_tensors(m)) {
        require(t.name);
        std::vector<float> v = safetensors_read(in, header, name(t.name), t.shape);
        if (t.conv1d) transpose_into(t.data, v.data(), t.shape[0], t.shape[1]);
        else std::copy(v.begin(), v.end(), t.data);
    }
    const long long C = c.channels, V = c.vocab_size;
    if (header.count("lm_head.weight")) {  // tied in GPT-2: refuse a head that is not wte
        auto head = safetensors_read(in, header, "lm_head.weight", {V, C});
        if (!std::equal(head.begin(), head.end(), m.params.wte))
            GKD_FAIL("%s: lm_head.weight differs from wte.weight; gkd's GPT-2 ties the LM head to the token "
                     "embedding", path.c_str());
    }
}

// Any checkpoint: llm.c's .bin (v3/v5), a model.safetensors, or a folder holding one of them.
inline void gpt_load_any(GPT<float>& m, const std::string& path) {
    if (is_directory(path)) {
        for (const char* f : {"model.safetensors", "model.bin"})
            if (is_file(path + "/" + f)) return gpt_load_any(m, path + "/" + f);
        GKD_FAIL("%s: a folder without model.safetensors or model.bin", path.c_str());
    }
    InputFile probe(path);
    unsigned char head[9] = {0};
    if (probe.size >= 9) probe.read_exact(head, 9, "the first bytes");
    int magic;
    memcpy(&magic, head, 4);
    if (magic != CHECKPOINT_MAGIC && head[8] == '{') return gpt_load_safetensors(m, path);
    gpt_load(m, path);
}

// The other way: a GPT<float> as a Hugging Face GPT-2 model.safetensors (F32, names without
// prefix, Conv1D weights (in, out), wte without its padded rows), with its config.json
// written beside it, so that a distilled student loads in transformers.
inline void gpt_save_safetensors(const GPT<float>& m, const std::string& path) {
    const GPTConfig& c = m.config;
    // the table hands out writable pointers; export only reads through them
    const std::vector<HfTensor> tensors = hf_gpt2_tensors(const_cast<GPT<float>&>(m));
    nlohmann::ordered_json header;
    header["__metadata__"] = {{"format", "pt"}};
    unsigned long long offset = 0;
    for (const auto& t : tensors) {
        unsigned long long count = 1;
        for (long long d : t.shape) count *= (unsigned long long)d;
        header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + count * 4}}};
        offset += count * 4;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // align the data to 8 bytes, as safetensors does
    uint64_t n = text.size();
    AtomicWriter w(path);
    w.write(&n, 8);
    w.write(text.data(), text.size());
    std::vector<float> buf;
    for (const auto& t : tensors) {
        size_t count = 1;
        for (long long d : t.shape) count *= (size_t)d;
        if (!t.conv1d) { w.write(t.data, count * 4); continue; }
        buf.resize(count);  // stored (out, in) here; Conv1D wants (in, out) = shape
        transpose_into(buf.data(), t.data, t.shape[1], t.shape[0]);
        w.write(buf.data(), count * 4);
    }
    nlohmann::ordered_json config = {
        {"model_type", "gpt2"}, {"architectures", {"GPT2LMHeadModel"}}, {"vocab_size", c.vocab_size},
        {"n_embd", c.channels}, {"n_layer", c.num_layers}, {"n_head", c.num_heads}, {"n_positions", c.max_seq_len},
        {"n_ctx", c.max_seq_len}, {"layer_norm_epsilon", 1e-5}, {"activation_function", "gelu_new"},
        {"bos_token_id", c.vocab_size - 1}, {"eos_token_id", c.vocab_size - 1}, {"tie_word_embeddings", true}};
    write_file_atomic(parent_directory(path) + "/config.json", config.dump(2) + "\n");
    w.commit();
}
