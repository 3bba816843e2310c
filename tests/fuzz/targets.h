// tests/fuzz/targets.h — the fuzz targets: each feeds arbitrary bytes to one of the
// places where outside data enters gkd. Input that is refused must be refused with a
// GkdError (one clear line), never a crash, a hang or an unbounded allocation. Shared by
// the libFuzzer harnesses (fuzz_main.cpp) and by the unit tests, which replay every
// committed regression input in tests/fuzz/regressions/.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#define GKD_NO_MAIN
#include "../../gkd.cu"

namespace fuzz {

// The bytes as a file: an anonymous in-memory file, reached by its /proc path.
struct MemoryFile {
    int fd;
    std::string path;
    MemoryFile(const uint8_t* data, size_t size) {
        fd = memfd_create("gkd-fuzz", 0);
        if (fd < 0) { perror("memfd_create"); abort(); }
        for (size_t done = 0; done < size;) {
            ssize_t n = write(fd, data + done, size - done);
            if (n <= 0) { perror("write"); abort(); }
            done += (size_t)n;
        }
        path = "/proc/self/fd/" + std::to_string(fd);
    }
    ~MemoryFile() { close(fd); }
};

// llm.c checkpoints (gpt_load)
inline void checkpoint(const uint8_t* data, size_t size) {
    MemoryFile f(data, size);
    try {
        GPT<float> m;
        gpt_load(m, f.path);
        if (m.num_parameters * 4 + 1024 != size && m.num_parameters * 2 + 1024 != size) abort();  // sizes were checked
    } catch (const GkdError&) {
    }
}

// training-state checkpoints (--resume)
inline void training_state(const uint8_t* data, size_t size) {
    MemoryFile f(data, size);
    try {
        Trainer tr;
        load_training_state(tr, f.path);
    } catch (const GkdError&) {
    }
}

// one JSONL line (the dataset loader), byte tokenizer, context 64
inline void jsonl_line(const uint8_t* data, size_t size) {
    ByteTokenizer tok;
    std::string line((const char*)data, size);
    try {
        Example ex = parse_example(line, tok, 64, false, "fuzz:1");
        for (int id : ex.prompt) if (id < 0 || id >= 257) abort();
        for (int id : ex.completion) if (id < 0 || id >= 257) abort();
        if (ex.prompt.empty() || ex.prompt.size() + ex.completion.size() > 64) abort();
    } catch (const GkdError&) {
    }
}

// the tokenizer: ids in (tokenize --decode), and encode/decode round trips
inline void tokenizer(const uint8_t* data, size_t size) {
    ByteTokenizer tok;
    std::string text((const char*)data, size);
    if (tok.decode(tok.encode(text)) != text) abort();
    try {
        std::vector<int> ids = parse_id_array(text, tok.vocab_size(), "fuzz");
        tok.decode(ids);
    } catch (const GkdError&) {
    }
}

// A small GPT-2-style byte-level BPE, built in memory: the 256 byte tokens, a few merges
// in rank order, and <|endoftext|>. Shared with the unit tests.
inline const BpeTokenizer& handmade_bpe() {
    static std::unique_ptr<BpeTokenizer> tok = [] {
        auto spell = gpt2_byte_to_unicode();
        auto text = [&](const std::string& raw) {
            std::string s;
            for (unsigned char b : raw) {
                uint32_t cp = spell[b];  // UTF-8 of a code point below 0x800
                if (cp < 0x80) s += (char)cp;
                else { s += (char)(0xC0 | (cp >> 6)); s += (char)(0x80 | (cp & 0x3F)); }
            }
            return s;
        };
        nlohmann::json vocab = nlohmann::json::object();
        for (int b = 0; b < 256; b++) vocab[text(std::string(1, (char)b))] = b;
        std::vector<std::pair<std::string, std::string>> merges;
        int next = 256;
        for (auto [l, r] : std::vector<std::pair<std::string, std::string>>{
                 {"h", "e"}, {"l", "l"}, {" ", "t"}, {"he", "ll"}, {" t", "he"}, {"hell", "o"}, {"a", "a"},
                 {"aa", "a"}, {"aa", "aa"}, {"'", "s"}, {" ", "w"}, {" w", "o"}, {"\n", "\n"}}) {
            merges.push_back({text(l), text(r)});
            if (!vocab.contains(text(l + r))) vocab[text(l + r)] = next++;
        }
        vocab[END_OF_TEXT] = next;
        return build_bpe("handmade", vocab, merges, [](size_t r) { return strf("handmade merge %zu", r); });
    }();
    return *tok;
}

// GPT-2's pre-tokenizer and BPE on arbitrary bytes (the handmade vocabulary): the
// pre-tokens tile the text, and decode(encode(text)) == text with or without specials.
inline void bpe_text(const uint8_t* data, size_t size) {
    std::string text((const char*)data, size);
    size_t at = 0;
    for (auto [b, e] : gpt2_pretokenize(text)) {
        if (b != at || e <= b) abort();
        at = e;
    }
    if (at != text.size()) abort();
    const BpeTokenizer& tok = handmade_bpe();
    if (tok.decode(tok.encode(text, false)) != text) abort();
    if (tok.decode(tok.encode(text, true)) != text) abort();
}

// a Hugging Face tokenizer.json
inline void tokenizer_json(const uint8_t* data, size_t size) {
    MemoryFile f(data, size);
    try {
        auto tok = load_tokenizer_json(f.path);
        std::string text = "Hello world, it's 3 o'clock.\n";
        if (tok->decode(tok->encode(text, false)) != text) abort();
    } catch (const GkdError&) {
    }
}

// a Hugging Face model.safetensors
inline void safetensors(const uint8_t* data, size_t size) {
    MemoryFile f(data, size);
    try {
        GPT<float> m;
        gpt_load_safetensors(m, f.path);
    } catch (const GkdError&) {
    }
}

}  // namespace fuzz
