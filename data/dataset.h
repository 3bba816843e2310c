// data/dataset.h — the JSONL loader of docs/formats.md §4.
//
// One example per line, either text ({"prompt": ..., "completion": ...}, tokenized with
// the model's tokenizer) or ids ({"prompt_ids": [...], "completion_ids": [...]}).
// Everything is validated at load time, so training never meets a bad example: each
// refusal names the file and line. Blank lines are skipped; unknown keys are ignored.
//
// Lengths: a training row is prompt + completion + EOS, and the model reads all of it but
// the final EOS, so prompt + completion must fit in the context (docs/algorithm.md §2). A prompt
// on its own (for sampling) must leave room for at least one new token.
#pragma once

#include <string>
#include <vector>
#include <nlohmann/json.hpp>

#include "../tokenizer.h"
#include "../utils.h"

struct Example {
    std::vector<int> prompt;      // (P) token ids, P >= 1
    std::vector<int> completion;  // (n) token ids, without the EOS that ends it
    bool has_completion = false;
    int line = 0;                 // 1-based line in the file, for messages
};

struct Dataset {
    std::string path;
    std::vector<Example> examples;
};

namespace dataset_detail {

inline std::string short_json_error(const std::exception& e) {
    std::string s = e.what();
    size_t k = s.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] " prefix
    return (s.rfind("[json.exception", 0) == 0 && k != std::string::npos) ? s.substr(k + 2) : s;
}

inline std::vector<int> read_ids(const nlohmann::json& j, const char* key, int vocab, const std::string& where) {
    if (!j.is_array()) GKD_FAIL("%s: \"%s\" must be an array of integers", where.c_str(), key);
    std::vector<int> ids;
    ids.reserve(j.size());
    for (size_t i = 0; i < j.size(); i++) {
        const auto& v = j[i];
        if (!v.is_number_integer())
            GKD_FAIL("%s: \"%s\"[%zu] is not an integer", where.c_str(), key, i);
        long long id = v.get<long long>();
        if (id < 0 || id >= vocab)
            GKD_FAIL("%s: \"%s\"[%zu] = %lld is outside the vocabulary [0, %d)", where.c_str(), key, i, id, vocab);
        ids.push_back((int)id);
    }
    return ids;
}

// Reads "<name>" (text) or "<name>_ids" (ids); returns false when neither is present.
inline bool read_field(const nlohmann::json& obj, const std::string& name, const Tokenizer& tok,
                       const std::string& where, std::vector<int>& out) {
    std::string ids_key = name + "_ids";
    bool has_text = obj.contains(name), has_ids = obj.contains(ids_key);
    if (has_text && has_ids)
        GKD_FAIL("%s: has both \"%s\" and \"%s\"; give one", where.c_str(), name.c_str(), ids_key.c_str());
    if (has_text) {
        const auto& v = obj[name];
        if (!v.is_string()) GKD_FAIL("%s: \"%s\" must be a string", where.c_str(), name.c_str());
        out = tok.encode(v.get<std::string>());
        return true;
    }
    if (has_ids) {
        out = read_ids(obj[ids_key], ids_key.c_str(), tok.vocab_size(), where);
        return true;
    }
    return false;
}

}  // namespace dataset_detail

// One JSON Lines line; malformed JSON is an error naming `where` ("file:line").
inline nlohmann::json parse_json_line(const std::string& text, const std::string& where) {
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        GKD_FAIL("%s: malformed JSON: %s", where.c_str(), dataset_detail::short_json_error(e).c_str());
    }
}

// Calls fn(line, "file:line", line_number) for each line of a JSON Lines file that is
// not blank.
template <typename F>
void for_each_jsonl_line(const std::string& path, F fn) {
    for_each_line(read_whole_file(path), [&](const std::string& line, int line_no) {
        if (line.find_first_not_of(" \t") == std::string::npos) return;
        fn(line, path + ":" + std::to_string(line_no), line_no);
    });
}

// Parses one JSONL line into an example; `where` is "file:line" for messages.
inline Example parse_example(const std::string& text, const Tokenizer& tok, int max_seq_len, bool need_completion,
                             const std::string& where) {
    nlohmann::json obj = parse_json_line(text, where);
    if (!obj.is_object()) GKD_FAIL("%s: expected a JSON object with \"prompt\" and \"completion\"", where.c_str());
    Example ex;
    if (!dataset_detail::read_field(obj, "prompt", tok, where, ex.prompt))
        GKD_FAIL("%s: missing \"prompt\" (or \"prompt_ids\")", where.c_str());
    ex.has_completion = dataset_detail::read_field(obj, "completion", tok, where, ex.completion);
    if (need_completion && !ex.has_completion)
        GKD_FAIL("%s: missing \"completion\" (or \"completion_ids\"), which this command needs", where.c_str());
    if (ex.prompt.empty())
        GKD_FAIL("%s: the prompt is empty; the first target needs at least one prompt token to condition on",
                 where.c_str());
    size_t P = ex.prompt.size(), n = ex.completion.size();
    if (ex.has_completion && P + n > (size_t)max_seq_len)
        GKD_FAIL("%s: prompt (%zu tokens) + completion (%zu tokens) is longer than the model's context of %d tokens",
                 where.c_str(), P, n, max_seq_len);
    if (P >= (size_t)max_seq_len)
        GKD_FAIL("%s: the prompt (%zu tokens) leaves no room in the model's context of %d tokens", where.c_str(), P,
                 max_seq_len);
    return ex;
}

inline Dataset load_jsonl(const std::string& path, const Tokenizer& tok, int max_seq_len, bool need_completion) {
    Dataset d;
    d.path = path;
    for_each_jsonl_line(path, [&](const std::string& line, const std::string& where, int line_no) {
        Example ex = parse_example(line, tok, max_seq_len, need_completion, where);
        ex.line = line_no;
        d.examples.push_back(std::move(ex));
    });
    if (d.examples.empty()) GKD_FAIL("%s: no examples (the file is empty)", path.c_str());
    return d;
}
