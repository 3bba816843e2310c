// data/convert.h — public datasets into gkd's {"prompt", "completion"} JSON lines.
//
//   gsm8k        GSM8K's {"question", "answer"} (grade-school maths, the paper's reasoning
//                task): prompt "Question: <q>\nAnswer:", completion " <worked answer>".
//                The answer keeps its final "#### <number>" line, which `--task gsm8k`
//                scores; the calculator annotations "<<48/2=24>>" are removed, since a
//                plain language model has no calculator to call.
//   instruction  Alpaca's {"instruction", "input", "output"} or Dolly's {"instruction",
//                "context", "response"} (task-agnostic distillation, as the paper's
//                instruction tuning): the Alpaca prompt template, with or without its
//                input section, and the output as the completion.
// Keys other than these are ignored. A line that is not a JSON object, or lacks a key
// that its format needs, is an error naming the file and line; nothing is written then.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../utils.h"
#include "dataset.h"

inline const char* const CONVERT_FORMATS[] = {"gsm8k", "instruction"};

// "<<48/2=24>>" annotations out of a GSM8K answer.
inline std::string strip_calculator_annotations(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
        size_t open = s.find("<<", i);
        size_t close = open == std::string::npos ? std::string::npos : s.find(">>", open + 2);
        if (close == std::string::npos) { out.append(s, i, std::string::npos); break; }
        out.append(s, i, open - i);
        i = close + 2;
    }
    return out;
}

inline std::string convert_gsm8k(const nlohmann::json& j, const std::string& where) {
    auto text = [&](const char* key) {
        if (!j.contains(key) || !j[key].is_string()) GKD_FAIL("%s: needs a string \"%s\" (GSM8K)", where.c_str(), key);
        return j[key].get<std::string>();
    };
    std::string question = text("question"), answer = text("answer");
    if (answer.find("####") == std::string::npos)
        GKD_FAIL("%s: the answer has no final \"#### <number>\" line (GSM8K)", where.c_str());
    nlohmann::ordered_json out = {{"prompt", "Question: " + question + "\nAnswer:"},
                                  {"completion", " " + strip_calculator_annotations(answer)}};
    return out.dump();
}

inline std::string convert_instruction(const nlohmann::json& j, const std::string& where) {
    auto text = [&](std::initializer_list<const char*> keys, bool required) -> std::string {
        for (const char* k : keys) {
            if (!j.contains(k)) continue;
            if (!j[k].is_string()) GKD_FAIL("%s: \"%s\" must be a string", where.c_str(), k);
            return j[k].get<std::string>();
        }
        if (required)
            GKD_FAIL("%s: needs a string \"%s\" (instruction data: instruction, input or context, output or response)",
                     where.c_str(), *keys.begin());
        return "";
    };
    std::string instruction = text({"instruction"}, true), input = text({"input", "context"}, false),
                output = text({"output", "response"}, true);
    std::string prompt =
        input.empty()
            ? "Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.\n\n### Instruction:\n" + instruction + "\n\n### Response:\n"
            : "Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n" + instruction +
              "\n\n### Input:\n" + input + "\n\n### Response:\n";
    nlohmann::ordered_json out = {{"prompt", prompt}, {"completion", output}};
    return out.dump();
}

// Converts every line of in_path; returns the output text (the caller writes it atomically).
// Blank lines are skipped, as the dataset loader does.
inline std::string convert_dataset(const std::string& format, const std::string& in_path, size_t* count = nullptr) {
    if (format != "gsm8k" && format != "instruction")
        GKD_FAIL("gkd data: --convert '%s' must be gsm8k or instruction", format.c_str());
    std::string out;
    size_t n = 0;
    for_each_jsonl_line(in_path, [&](const std::string& line, const std::string& where, int) {
        nlohmann::json j = parse_json_line(line, where);
        if (!j.is_object()) GKD_FAIL("%s: each line must be a JSON object", where.c_str());
        out += (format == "gsm8k" ? convert_gsm8k(j, where) : convert_instruction(j, where)) + "\n";
        n++;
    });
    if (n == 0) GKD_FAIL("%s: no examples", in_path.c_str());
    if (count) *count = n;
    return out;
}
