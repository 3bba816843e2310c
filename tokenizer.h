// tokenizer.h — text <-> token ids.
//
// The interface is what the rest of gkd sees; the byte-level tokenizer (SPEC section 4:
// ids 0..255 are bytes, 256 is <|endoftext|>, V = 257) is the built-in default. The GPT-2
// BPE tokenizer will be a second implementation of the same interface.
//
// Byte-level encoding is lossless for any input, valid UTF-8 or not: text is bytes. The
// literal string "<|endoftext|>" in input text is just its 13 bytes; only id 256 is EOS.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "utils.h"

struct Tokenizer {
    virtual ~Tokenizer() = default;
    virtual std::string name() const = 0;
    virtual int vocab_size() const = 0;
    virtual int eos_id() const = 0;
    virtual std::vector<int> encode(const std::string& text) const = 0;
    // EOS decodes to "<|endoftext|>"; ids outside [0, V) are an error.
    virtual std::string decode(const std::vector<int>& ids) const = 0;
};

struct ByteTokenizer : Tokenizer {
    static constexpr int EOS = 256;
    std::string name() const override { return "byte"; }
    int vocab_size() const override { return 257; }
    int eos_id() const override { return EOS; }
    std::vector<int> encode(const std::string& text) const override {
        std::vector<int> ids(text.size());
        for (size_t i = 0; i < text.size(); i++) ids[i] = (unsigned char)text[i];
        return ids;
    }
    std::string decode(const std::vector<int>& ids) const override {
        std::string out;
        out.reserve(ids.size());
        for (int id : ids) {
            if (id == EOS) out += "<|endoftext|>";
            else if (id >= 0 && id < 256) out += (char)id;
            else GKD_FAIL("byte tokenizer: id %d is outside [0, 257)", id);
        }
        return out;
    }
};

// Picks the tokenizer: `spec` is "byte", a path, or "" (follow the model's vocabulary).
// model_vocab = 0 means no model to agree with.
inline std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec, int model_vocab) {
    if (spec.empty() || spec == "byte") {
        if (model_vocab != 0 && model_vocab != 257) {
            if (spec.empty())
                GKD_FAIL("the model has a vocabulary of %d tokens, so it needs a tokenizer file: pass --tokenizer PATH "
                         "(only the byte-level tokenizer, V = 257, is built in)", model_vocab);
            GKD_FAIL("--tokenizer byte has 257 tokens but the model has %d", model_vocab);
        }
        return std::make_unique<ByteTokenizer>();
    }
    GKD_FAIL("--tokenizer %s: only the byte-level tokenizer (\"byte\") is supported in this build; GPT-2 BPE files "
             "are not read yet", spec.c_str());
}
